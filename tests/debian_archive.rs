//! Images from pinned Debian packages, end to end against a tiny archive the test makes
//! (dpkg-deb, gpg, xz; served from a file:// folder): lock (InRelease verified, index
//! checked, closure resolved, lock stable), fetch into a second store, offline and
//! bit-reproducible builds in two folders, the image's root filesystem (merged /usr,
//! links, modes, owners, users, status.d, base layer) and the SBOM. No Docker needed.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use common::debian::{write_recipe, TinyArchive};
use common::{assert_valid_spdx, bin_cmd, require_pyspdxtools, run_ok};

/// One entry of a layer: type, mode, uid, gid, link target, content.
type Listing = BTreeMap<String, (char, u32, u64, u64, String, Vec<u8>)>;

fn layers_of(bundle: &Path) -> Vec<Listing> {
    let x = tempfile::tempdir().unwrap();
    run_ok(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(x.path()),
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.path().join("bundle.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for l in m["images"][0]["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let f = std::fs::File::open(x.path().join("oci/blobs/sha256").join(hex)).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let mut listing = Listing::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!(h.mtime().unwrap(), 0, "every mtime is SOURCE_DATE_EPOCH");
            let kind = match h.entry_type() {
                tar::EntryType::Regular => 'f',
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Link => 'h',
                other => panic!("unexpected {other:?}"),
            };
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let path = e.path().unwrap().display().to_string();
            listing.insert(
                path.trim_end_matches('/').to_string(),
                (
                    kind,
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    link,
                    data,
                ),
            );
        }
        out.push(listing);
    }
    out
}

fn build(def: &Path, store: &Path, out: &Path) -> std::path::PathBuf {
    let stdout = run_ok(
        bin_cmd(&["build"])
            .arg(def)
            .arg("--store")
            .arg(store)
            .arg("--out")
            .arg(out),
    );
    std::path::PathBuf::from(stdout.lines().next().unwrap().trim())
}

#[test]
fn lock_fetch_and_build_offline_reproducibly() {
    let a = TinyArchive::standard();
    a.publish();
    let d = tempfile::tempdir().unwrap();
    let (def, recipe) = write_recipe(d.path(), &a, &["tiny-app", "tiny-other"], "");
    let store1 = d.path().join("store1");
    let out = run_ok(
        bin_cmd(&["lock"])
            .arg(&recipe)
            .args(["--mirror", &a.url()])
            .arg("--store")
            .arg(&store1),
    );
    assert!(out.contains("tiny-deb.lock.json: 3 packages"), "{out}");
    let lock_path = d.path().join("recipes/tiny-deb.lock.json");
    let bytes = std::fs::read(&lock_path).unwrap();
    let lock: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let pkgs: Vec<String> = lock["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {} {} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["suite"].as_str().unwrap(),
                p["why"]
            )
        })
        .collect();
    assert_eq!(
        pkgs,
        [
            "libtiny1 1.1-1 stable-security [\"needed by tiny-app\"]",
            "tiny-app 1.0-1 stable [\"wanted\"]",
            "tiny-other 2.0 stable [\"wanted\"]",
        ]
    );
    for s in lock["sources"].as_array().unwrap() {
        assert_eq!(s["fingerprints"].as_array().unwrap().len(), 1, "{s}");
        assert_eq!(s["date"], "Thu, 01 Jan 2026 00:00:00 UTC");
    }
    // Locking again against the same archive gives the same bytes.
    let out = run_ok(
        bin_cmd(&["lock", "--update"])
            .arg(&recipe)
            .args(["--mirror", &a.url()])
            .arg("--store")
            .arg(&store1),
    );
    assert!(out.contains("no package changed"), "{out}");
    assert_eq!(std::fs::read(&lock_path).unwrap(), bytes);
    let out = run_ok(bin_cmd(&["lock", "--check"]).arg(&recipe));
    assert!(out.starts_with("ok: "), "{out}");
    // The same through the appliance definition (the Debian images its stack uses).
    let out = run_ok(bin_cmd(&["lock", "--check"]).arg(&def));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("ok: ") && out.contains("tiny-deb.lock.json"),
        "{out}"
    );

    // Offline build: the archive is gone.
    let archive = a.root.clone();
    let moved = a.dir.path().join("archive-away");
    std::fs::rename(&archive, &moved).unwrap();
    let b1 = build(&def, &store1, &d.path().join("out"));

    // A second folder and store: fetch what the lock names, build, same bytes.
    std::fs::rename(&moved, &archive).unwrap();
    let d2 = tempfile::tempdir().unwrap();
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(d.path().join("recipes"))
            .arg(d.path().join("bundles"))
            .arg(d2.path()),
    );
    let store2 = d2.path().join("store2");
    let out = run_ok(
        bin_cmd(&["fetch"])
            .arg(d2.path().join("recipes/tiny-deb.toml"))
            .args(["--mirror", &a.url()])
            .arg("--store")
            .arg(&store2),
    );
    assert!(out.contains("3 fetched, 0 already in the store"), "{out}");
    let b2 = build(
        &d2.path().join("bundles/tiny-deb.toml"),
        &store2,
        &d2.path().join("out"),
    );
    assert_eq!(b1.file_name(), b2.file_name());
    assert_eq!(
        common::sha256_of(&b1),
        common::sha256_of(&b2),
        "bit-reproducible"
    );
    run_ok(bin_cmd(&["verify"]).arg(&b1));

    // The root filesystem: base layer, packages, setup, then the recipe's own layer.
    let layers = layers_of(&b1);
    assert_eq!(layers.len(), 4);
    let base = &layers[0];
    assert_eq!(base["lib"].0, 'l');
    assert_eq!(base["lib"].4, "usr/lib");
    assert_eq!(base["usr/lib/x86_64-linux-gnu/libtiny.txt"].5, b"1.1\n");
    assert!(base.contains_key("var/lib/dpkg/status.d/libtiny1"));
    let pk = &layers[1];
    assert_eq!(
        (pk["usr/bin/tiny-app"].0, pk["usr/bin/tiny-app"].1),
        ('f', 0o755),
        "merged /usr"
    );
    assert_eq!(
        (pk["usr/bin/tiny"].0, pk["usr/bin/tiny"].4.as_str()),
        ('l', "tiny-app")
    );
    assert_eq!(pk["usr/bin/tiny-su"].1, 0o4755, "setuid kept");
    assert_eq!(pk["usr/share/tiny/group42"].3, 42, "numeric group kept");
    assert_eq!(pk["usr/share/tiny/data"].5, b"shared data\n");
    assert_eq!(pk["usr/share/tiny/data-link"].0, 'h', "hard link kept");
    assert_eq!(pk["usr/share/tiny/data-link"].4, "usr/share/tiny/data");
    assert!(!pk.contains_key("usr/sbin/adduser"), "excluded");
    let status = String::from_utf8(pk["var/lib/dpkg/status.d/tiny-app"].5.clone()).unwrap();
    assert!(
        status.starts_with("Package: tiny-app\nStatus: install ok installed\n"),
        "{status}"
    );
    let setup = &layers[2];
    assert_eq!(
        String::from_utf8(setup["etc/passwd"].5.clone()).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\ntiny:x:101:101::/var/lib/tiny:/usr/sbin/nologin\n"
    );
    assert_eq!(
        String::from_utf8(setup["etc/group"].5.clone()).unwrap(),
        "root:x:0:\ntiny:x:101:\n"
    );
    let run = &setup["run/tiny"];
    assert_eq!((run.0, run.1, run.2, run.3), ('d', 0o750, 101, 101));

    // The SBOM names every package with its purl and .deb sha256.
    let sbom = run_ok(bin_cmd(&["sbom"]).arg(&b1).args(["--image", "tiny-deb"]));
    let doc: serde_json::Value = serde_json::from_str(&sbom).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let lib = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "libtiny1")
        .unwrap();
    assert_eq!(
        lib["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/libtiny1@1.1-1?arch=amd64"
    );
    assert_eq!(
        lib["checksums"][0]["checksumValue"],
        common::sha256_of(&a.deb_path("libtiny1", "1.1-1"))
    );
    let inspect = run_ok(bin_cmd(&["inspect"]).arg(&b1));
    assert!(inspect.contains("3 Debian packages"), "{inspect}");

    // A rebuild with nothing changed builds nothing.
    let o = bin_cmd(&["build"])
        .arg(&def)
        .arg("--store")
        .arg(&store1)
        .arg("--out")
        .arg(d.path().join("out"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to do"));
}

#[test]
fn sboms_validate_with_independent_validators() {
    require_pyspdxtools();
    let a = TinyArchive::standard();
    a.publish();
    let d = tempfile::tempdir().unwrap();
    let (def, recipe) = write_recipe(d.path(), &a, &["tiny-app"], "");
    let store = d.path().join("store");
    run_ok(
        bin_cmd(&["lock"])
            .arg(&recipe)
            .args(["--mirror", &a.url()])
            .arg("--store")
            .arg(&store),
    );
    let b = build(&def, &store, &d.path().join("out"));
    let sbom = run_ok(bin_cmd(&["sbom"]).arg(&b).args(["--image", "tiny-deb"]));
    let f = d.path().join("tiny-deb.spdx.json");
    std::fs::write(&f, sbom).unwrap();
    assert_valid_spdx(&f);

    // The CycloneDX form, against the CycloneDX 1.5 schema (PyPI cyclonedx-python-lib).
    let cdx = run_ok(
        bin_cmd(&["sbom", "--format", "cyclonedx"])
            .arg(&b)
            .args(["--image", "tiny-deb"]),
    );
    let f = d.path().join("tiny-deb.cdx.json");
    std::fs::write(&f, &cdx).unwrap();
    let check = "import sys\nfrom cyclonedx.validation.json import JsonStrictValidator\nfrom cyclonedx.schema import SchemaVersion\ne = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())\nprint(e or 'valid')\nsys.exit(1 if e else 0)\n";
    let o = std::process::Command::new("python3")
        .args(["-c", check])
        .arg(&f)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !text.contains("ModuleNotFoundError"),
        "this test needs cyclonedx-python-lib (`pip install 'cyclonedx-python-lib[json-validation]'`; scripts/test.sh installs it): {text}"
    );
    assert!(
        o.status.success(),
        "the CycloneDX document does not validate: {text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&cdx).unwrap();
    assert!(doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["purl"] == "pkg:deb/debian/libtiny1@1.1-1?arch=amd64"));
}
