//! `verify` catches every kind of damage to a bundle file and names the entry; the store
//! caches (no-op rebuild does nothing, a change rebuilds only dependents) and tolerates two
//! builds at once. Uses the tiny busybox appliance: no cargo build, no Docker.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

fn build_tiny(dir: &Path, store: &Path) -> (PathBuf, String) {
    let def = common::write_tiny_appliance(dir, "1.0.0", "hello");
    let o = Command::new(common::bin())
        .arg("build")
        .arg(&def)
        .arg("--store")
        .arg(store)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (
        PathBuf::from(v["bundle"].as_str().unwrap()),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Write `list` as a damaged bundle in `dir`, verify it, expect a rejection, return the
/// message.
fn rejected(dir: &Path, list: &[(tar::Header, String, Vec<u8>)]) -> String {
    let bad = dir.join("bad.bundle");
    write_entries(&bad, list);
    let (ok, out) = verify(&bad);
    assert!(!ok, "damaged bundle accepted");
    out
}

/// Run `reemo-bundle build DEF --store STORE --out DIR/out`.
fn run_build(def: &Path, store: &Path, dir: &Path) -> std::process::Output {
    Command::new(common::bin())
        .arg("build")
        .arg(def)
        .arg("--store")
        .arg(store)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap()
}

fn verify(file: &Path) -> (bool, String) {
    let o = Command::new(common::bin())
        .arg("verify")
        .arg(file)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Entries of a tar: (header bytes, name, data).
fn entries(file: &Path) -> Vec<(tar::Header, String, Vec<u8>)> {
    let mut ar = tar::Archive::new(std::fs::File::open(file).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.header().clone(), name, data)
        })
        .collect()
}

/// Write entries back, with raw names (so `..` and absolute names can be written).
fn write_entries(file: &Path, list: &[(tar::Header, String, Vec<u8>)]) {
    let mut out = Vec::new();
    for (h, name, data) in list {
        let mut h = h.clone();
        let raw = &mut h.as_old_mut().name;
        raw.fill(0);
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    std::fs::File::create(file)
        .unwrap()
        .write_all(&out)
        .unwrap();
}

#[test]
fn good_bundle_verifies_and_inspects() {
    let d = tempfile::tempdir().unwrap();
    let (b, _) = build_tiny(d.path(), &d.path().join("store"));
    let (ok, out) = verify(&b);
    assert!(ok, "{out}");
    let o = Command::new(common::bin())
        .arg("inspect")
        .arg(&b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("tiny 1.0.0"), "{text}");
    assert!(text.contains("TINY = 1.0.0"), "{text}");
    assert!(text.contains("reemo-test/tiny:1.0.0-"), "{text}");
    assert!(text.contains("tiny_app"), "{text}");
    let o = Command::new(common::bin())
        .args(["inspect", "--json"])
        .arg(&b)
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["images"][0]["repository"], "reemo-test/tiny");
    assert_eq!(m["services"][0]["name"], "app");
}

#[test]
fn every_flipped_byte_is_caught_and_named() {
    let d = tempfile::tempdir().unwrap();
    let (b, _) = build_tiny(d.path(), &d.path().join("store"));
    let list = entries(&b);
    assert!(list.len() > 5);
    for i in 0..list.len() {
        let mut l = list.clone();
        let name = l[i].1.clone();
        if l[i].2.is_empty() {
            continue;
        }
        let mid = l[i].2.len() / 2;
        l[i].2[mid] ^= 0x01;
        let out = rejected(d.path(), &l);
        if name == "bundle.json" {
            assert!(
                out.contains("bundle.json") || out.contains("does not match"),
                "{out}"
            );
        } else {
            assert!(
                out.contains(&format!("{name:?}")),
                "error for {name} does not name it: {out}"
            );
        }
    }
}

#[test]
fn truncated_file_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let (b, _) = build_tiny(d.path(), &d.path().join("store"));
    let data = std::fs::read(&b).unwrap();
    for cut in [data.len() / 2, data.len() - 2048, 700] {
        let bad = d.path().join("cut.bundle");
        std::fs::write(&bad, &data[..cut]).unwrap();
        let (ok, out) = verify(&bad);
        assert!(!ok, "truncation at {cut} not caught");
        assert!(
            out.contains("entry \"") || out.contains("malformed"),
            "{out}"
        );
    }
}

#[test]
fn extra_entry_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let (b, _) = build_tiny(d.path(), &d.path().join("store"));
    let mut l = entries(&b);
    let h = l[1].0.clone();
    l.push((h, "configs/extra.conf".into(), b"x".to_vec()));
    let out = rejected(d.path(), &l);
    assert!(
        out.contains("\"configs/extra.conf\": not listed in bundle.json"),
        "{out}"
    );
}

#[test]
fn unsafe_names_and_escaping_links_are_caught() {
    let d = tempfile::tempdir().unwrap();
    let (b, _) = build_tiny(d.path(), &d.path().join("store"));
    let base = entries(&b);
    for (name, want) in [
        (
            "../evil",
            "\"../evil\": unsafe path (parent directory component)",
        ),
        ("/etc/evil", "\"/etc/evil\": unsafe path (absolute path)"),
        ("oci/../../evil", "\"oci/../../evil\": unsafe path"),
    ] {
        let mut l = base.clone();
        let h = l[1].0.clone();
        l.insert(2, (h, name.into(), b"x".to_vec()));
        let out = rejected(d.path(), &l);
        assert!(out.contains(want), "{name}: {out}");
    }
    // A symlink escaping the root.
    let mut l = base.clone();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_link_name("../../etc/shadow").unwrap();
    h.set_mode(0o777);
    l.insert(2, (h, "configs/link".into(), Vec::new()));
    let out = rejected(d.path(), &l);
    assert!(
        out.contains("\"configs/link\": link to \"../../etc/shadow\" escapes the bundle root"),
        "{out}"
    );
}

#[test]
fn store_caches_and_rebuilds_only_dependents() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let (b1, err1) = build_tiny(d.path(), &store);
    assert!(err1.contains("building busybox"), "{err1}");
    let (b2, err2) = build_tiny(d.path(), &store);
    assert_eq!(b1, b2);
    assert!(err2.contains("nothing to do"), "{err2}");
    assert!(!err2.contains("building"), "{err2}");
    // Change one layer's text: the image, the stack and the bundle rebuild; busybox does not.
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "changed");
    let o = run_build(&def, &store, d.path());
    let err3 = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err3}");
    assert!(err3.contains("building tiny-image"), "{err3}");
    assert!(err3.contains("building tiny-stack"), "{err3}");
    assert!(!err3.contains("building busybox"), "{err3}");
}

#[test]
fn concurrent_builds_on_one_store_agree() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let dirs: Vec<_> = (0..3).map(|i| d.path().join(format!("w{i}"))).collect();
    let children: Vec<_> = dirs
        .iter()
        .map(|w| {
            let def = common::write_tiny_appliance(w, "1.0.0", "same");
            Command::new(common::bin())
                .arg("build")
                .arg(&def)
                .arg("--store")
                .arg(&store)
                .arg("--out")
                .arg(w.join("out"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut shas = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let path = String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap()
            .to_string();
        let (ok, out) = verify(Path::new(&path));
        assert!(ok, "{out}");
        shas.push(common::sha256_of(Path::new(&path)));
    }
    assert!(shas.windows(2).all(|w| w[0] == w[1]), "{shas:?}");
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
}

/// A vendor's `docker save` archive enters a bundle as a fixed-output input and serves as
/// the base of an image: its layers are kept byte for byte (never recompressed), its config
/// is inherited and extended.
#[test]
fn vendor_docker_archive_is_an_image_base() {
    let d = tempfile::tempdir().unwrap();
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "hello");
    // A docker-archive as `docker save` (20.10) writes it: uncompressed layer.tar files.
    let mut layer = Vec::new();
    {
        let mut b = tar::Builder::new(&mut layer);
        let mut h = tar::Header::new_ustar();
        h.set_size(6);
        h.set_mode(0o644);
        b.append_data(&mut h, "vendor.txt", &b"vendor"[..]).unwrap();
        b.finish().unwrap();
    }
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&layer))
    );
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "VENDOR=1"], "Cmd": ["vendor"], "Labels": {"vendor": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "vendor build"}],
    });
    let archive = d.path().join("recipes/files/vendor.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("abc/layer.tar", &layer);
        add("cfg.json", &serde_json::to_vec(&config).unwrap());
        add(
            "manifest.json",
            br#"[{"Config":"cfg.json","RepoTags":["vendor/app:2.11"],"Layers":["abc/layer.tar"]}]"#,
        );
        b.finish().unwrap();
    }
    std::fs::write(
        d.path().join("recipes/vendor.toml"),
        format!(
            "kind = \"fixed\"\npath = \"files/vendor.tar\"\nsha256 = \"{}\"\nformat = \"docker-archive\"\n",
            common::sha256_of(&archive)
        ),
    )
    .unwrap();
    let img = d.path().join("recipes/tiny-image.toml");
    let t = std::fs::read_to_string(&img).unwrap();
    std::fs::write(
        &img,
        t.replace(
            "version = \"1.0.0\"\n",
            "version = \"1.0.0\"\nbase = \"vendor\"\n",
        ),
    )
    .unwrap();
    let o = run_build(&def, &d.path().join("store"), d.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let b = reemo_bundle::bundle::reader::BundleFile::open(Path::new(&path)).unwrap();
    let image = b.manifest().image("tiny-image").unwrap().clone();
    assert_eq!(image.layers.len(), 3);
    assert_eq!(
        image.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(
        b.read_entry(&image.layers[0].path()).unwrap(),
        layer,
        "vendor layer must be kept as is"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&b.read_entry(&image.config.path()).unwrap()).unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"][0], diff_id);
    let env: Vec<&str> = cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"VENDOR=1") && env.contains(&"TINY=1"),
        "{env:?}"
    );
    assert_eq!(cfg["config"]["Labels"]["vendor"], "yes");
    assert_eq!(
        cfg["config"]["Cmd"][0], "sh",
        "the recipe's cmd overrides the base's (vendor)"
    );
}

#[test]
fn output_is_an_independent_file_and_cache_hits_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let (out, _) = build_tiny(d.path(), &store);
    let good = std::fs::read(&out).unwrap();
    let sha = common::sha256_of(&out);
    // an in-place edit of the output (same size) leaves the store alone ...
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(700)).unwrap();
        f.write_all(b"X").unwrap();
    }
    assert!(!verify(&out).0);
    // ... so the next build hands out the good file again, with its true sha256
    let (out2, err) = build_tiny(d.path(), &store);
    assert!(err.contains("nothing to do"), "{err}");
    assert_eq!(std::fs::read(&out2).unwrap(), good);
    assert_eq!(common::sha256_of(&out2), sha);
    // a store entry edited in place is noticed (size/mtime), reported and rebuilt
    let objects = store.join("objects");
    let stored = std::fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path().join("bundle"))
        .find(|p| p.is_file())
        .unwrap();
    std::fs::write(&stored, b"corrupted").unwrap();
    let (out3, err) = build_tiny(d.path(), &store);
    assert!(
        err.contains("changed after it was stored (bundle is 9 bytes"),
        "{err}"
    );
    assert!(err.contains("packing bundle"), "{err}");
    assert_eq!(common::sha256_of(&out3), sha, "rebuilt reproducibly");
    let (_, err) = build_tiny(d.path(), &store);
    assert!(err.contains("nothing to do"), "{err}");
}

#[test]
fn fixed_inputs_that_vanish_or_change_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "hello");
    let input = d.path().join("busybox-copy");
    std::fs::copy("/bin/busybox", &input).unwrap();
    std::fs::write(
        d.path().join("recipes/busybox.toml"),
        format!(
            "kind = \"fixed\"\npath = \"../busybox-copy\"\nsha256 = \"{}\"\n",
            common::sha256_of(&input)
        ),
    )
    .unwrap();
    let o = run_build(&def, &store, d.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(&input).unwrap();
    let o = run_build(&def, &store, d.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let shown = d.path().join("busybox-copy");
    assert!(
        err.contains(&format!(
            "warning: recipe busybox: fixed input {} is missing; using the store copy",
            shown.display()
        )),
        "{err}"
    );
    std::fs::write(&input, b"another file").unwrap();
    let o = run_build(&def, &store, d.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("has changed (sha256 "), "{err}");
}

#[test]
fn a_setuid_header_in_a_signed_bundle_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (out, _) = build_tiny(d.path(), &d.path().join("store"));
    let key = d.path().join("site.key");
    let run = |args: &[&std::ffi::OsStr]| Command::new(common::bin()).args(args).output().unwrap();
    assert!(run(&["keygen".as_ref(), "--out".as_ref(), key.as_os_str()])
        .status
        .success());
    let signed = d.path().join("signed.bundle");
    let o = run(&[
        "sign".as_ref(),
        out.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "--out".as_ref(),
        signed.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let public = d.path().join("site.key.pub");
    let check = || {
        let o = run(&[
            "verify".as_ref(),
            signed.as_os_str(),
            "--trusted-key".as_ref(),
            public.as_os_str(),
        ]);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(check().0, "{}", check().1);
    // make the first executable setuid root, fix the header checksum
    let mut data = std::fs::read(&signed).unwrap();
    let mut at = 0;
    let name = loop {
        let h = tar::Header::from_byte_slice(&data[at..at + 512]);
        let size = h.size().unwrap() as usize;
        if h.mode().unwrap() == 0o755 {
            break String::from_utf8_lossy(&h.path_bytes()).into_owned();
        }
        at += 512 + size.div_ceil(512) * 512;
    };
    let mut h = tar::Header::from_byte_slice(&data[at..at + 512]).clone();
    h.set_mode(0o4755);
    h.set_cksum();
    data[at..at + 512].copy_from_slice(h.as_bytes());
    std::fs::write(&signed, data).unwrap();
    let (ok, err) = check();
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "entry {name:?}: tar header mode is 04755, bundle.json requires 0755"
        )),
        "{err}"
    );
}
