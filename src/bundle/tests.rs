//! Hostile bundles: every way of changing a byte that `tar -x` or the loader would act on is
//! refused with the entry and the reason named.

use std::path::{Path, PathBuf};

use super::layers::{CheckedReader, FORMAT1_LAYER_LIMIT};
use super::manifest::{BlobRef, BundleManifest, FileEntry, ImageEntry, BUNDLE_FORMAT};
use super::reader::BundleFile;
use super::tarfmt::END_MARKER;
use super::writer::{manifest_bytes, write_bundle, write_with_signature, BundleItem, Source};
use crate::hash::{sha256_digest, sha256_hex};
use crate::oci::{gzip, MT_CONFIG, MT_LAYER_GZIP, MT_MANIFEST};
use crate::sign::{evaluate, SecretKey, TrustedKey, Verdict};

const MTIME: u64 = 1_700_000_000;

/// What the fixture bundle is made of; tests change one thing.
struct Fixture {
    /// Uncompressed layer content.
    layer: Vec<u8>,
    /// Declared uncompressed size (None: the real one).
    declared: Option<u64>,
    /// Image tag (None: `1.0.0-<id12>`).
    tag: Option<String>,
    /// Bundle format (1 leaves out mtime and the layer facts).
    format: u32,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture {
            layer: b"layer content ".repeat(100),
            declared: None,
            tag: None,
            format: BUNDLE_FORMAT,
        }
    }
}

fn blob(data: &[u8], media_type: &str) -> BlobRef {
    BlobRef {
        digest: sha256_digest(data),
        size: data.len() as u64,
        media_type: media_type.into(),
        ..Default::default()
    }
}

impl Fixture {
    fn write(&self, dest: &Path) {
        let gz = gzip(&self.layer);
        let diff_id = sha256_digest(&self.layer);
        let config = serde_json::to_vec(
            &serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}),
        )
        .unwrap();
        let mut layer = blob(&gz, MT_LAYER_GZIP);
        if self.format >= 2 {
            layer.diff_id = Some(diff_id);
            layer.uncompressed_size = Some(self.declared.unwrap_or(self.layer.len() as u64));
        }
        let cfg = blob(&config, MT_CONFIG);
        let oci_manifest = serde_json::to_vec(&serde_json::json!({
            "config": {"digest": cfg.digest}, "layers": [{"digest": layer.digest}]
        }))
        .unwrap();
        let man = blob(&oci_manifest, MT_MANIFEST);
        let image = ImageEntry {
            name: "img".into(),
            repository: "t/img".into(),
            tag: self
                .tag
                .clone()
                .unwrap_or_else(|| format!("1.0.0-{}", &cfg.digest[7..19])),
            config_digest: cfg.digest.clone(),
            manifest_digest: man.digest.clone(),
            size: cfg.size + layer.size,
            layers: vec![layer.clone()],
            config: cfg.clone(),
        };
        let mut files: Vec<(String, Vec<u8>, bool)> = vec![
            ("bin/tool".into(), b"#!/bin/sh\necho hi\n".to_vec(), true),
            ("configs/a.conf".into(), b"a=1\n".to_vec(), false),
            (layer.path(), gz, false),
            (cfg.path(), config, false),
            (man.path(), oci_manifest, false),
            (
                "stack/docker-stack.yml".into(),
                b"version: \"3.8\"\n".to_vec(),
                false,
            ),
        ];
        files.sort();
        let items: Vec<BundleItem> = files
            .into_iter()
            .map(|(path, data, executable)| BundleItem {
                entry: FileEntry {
                    path,
                    sha256: sha256_hex(&data),
                    size: data.len() as u64,
                    executable,
                },
                source: Source::Bytes(data),
            })
            .collect();
        let manifest = BundleManifest {
            format: self.format,
            mtime: Some(MTIME),
            name: "t".into(),
            version: "1.0.0".into(),
            identity: "ab".repeat(32),
            stack: "t".into(),
            stack_file: "stack/docker-stack.yml".into(),
            pinned: Default::default(),
            images: vec![image],
            services: vec![],
            files: items.iter().map(|i| i.entry.clone()).collect(),
            inputs: vec![],
            parameters: vec![],
        };
        if self.format >= 2 {
            write_bundle(dest, &manifest, &items, MTIME).unwrap();
        } else {
            // a format 1 writer: no mtime in bundle.json, the headers carry it
            let mut m1 = manifest.clone();
            m1.mtime = None;
            write_bundle(dest, &manifest, &items, MTIME).unwrap();
            let old = manifest_bytes(&m1);
            let mut data = std::fs::read(dest).unwrap();
            let end = 512 + manifest_bytes(&manifest).len().div_ceil(512) * 512;
            let mut h = tar::Header::from_byte_slice(&data[..512]).clone();
            h.set_size(old.len() as u64);
            h.set_cksum();
            let mut head = h.as_bytes().to_vec();
            head.extend_from_slice(&old);
            head.resize(512 + old.len().div_ceil(512) * 512, 0);
            data.splice(..end, head);
            std::fs::write(dest, data).unwrap();
        }
    }
}

fn key() -> SecretKey {
    SecretKey::from_seed(&[9; 32])
}

/// The fixture written and signed: (dir, path).
fn signed(f: &Fixture) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let plain = d.path().join("plain.bundle");
    f.write(&plain);
    let b = BundleFile::open(&plain).unwrap();
    let path = d.path().join("signed.bundle");
    write_with_signature(&b, &path, Some(&key().sign_manifest(b.manifest_bytes()))).unwrap();
    (d, path)
}

fn trusted(path: &Path) -> bool {
    let Ok(b) = BundleFile::open(path) else {
        return false;
    };
    let keys = [TrustedKey {
        key: key().public(),
        source: "k.pub".into(),
    }];
    matches!(
        evaluate(b.manifest_bytes(), b.signature(), &keys),
        Ok(Verdict::Trusted { .. })
    ) && b.check_layers().is_ok()
}

fn refusal(path: &Path) -> String {
    match BundleFile::open(path).and_then(|b| b.check_layers()) {
        Ok(()) => panic!("{} was accepted", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Offset of the header of entry `name` (0 for bundle.json).
fn header_offset(path: &Path, name: &str) -> usize {
    let b = BundleFile::open(path).unwrap();
    match name {
        "bundle.json" => 0,
        "bundle.json.sig" => b.layout().manifest_end as usize,
        other => b.entry(other).unwrap().offset as usize - 512,
    }
}

/// Change one header with `edit`, fix its checksum, write it back.
fn patch_header(path: &Path, name: &str, edit: impl Fn(&mut tar::Header)) {
    let at = header_offset(path, name);
    let mut data = std::fs::read(path).unwrap();
    let mut h = tar::Header::from_byte_slice(&data[at..at + 512]).clone();
    edit(&mut h);
    h.set_cksum();
    data[at..at + 512].copy_from_slice(h.as_bytes());
    std::fs::write(path, data).unwrap();
}

#[test]
fn the_fixture_verifies_signed_and_unsigned() {
    let (_d, path) = signed(&Fixture::default());
    assert!(trusted(&path));
    let b = BundleFile::open(&path).unwrap();
    assert_eq!(b.manifest().format, 2);
    assert_eq!(b.manifest().mtime, Some(MTIME));
}

#[test]
fn header_metadata_changes_are_refused_with_the_field_named() {
    type Edit = Box<dyn Fn(&mut tar::Header)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "setuid",
            Box::new(|h| h.set_mode(0o4755)),
            "mode is 04755, bundle.json requires 0755",
        ),
        (
            "world-writable",
            Box::new(|h| h.set_mode(0o777)),
            "mode is 0777, bundle.json requires 0755",
        ),
        (
            "owner",
            Box::new(|h| h.set_uid(1000)),
            "uid is 01750, bundle.json requires 0",
        ),
        (
            "group",
            Box::new(|h| h.set_gid(5)),
            "gid is 05, bundle.json requires 0",
        ),
        (
            "owner name",
            Box::new(|h| h.set_username("bin").unwrap()),
            "owner name is \"bin\", bundle.json requires \"\"",
        ),
        (
            "group name",
            Box::new(|h| h.set_groupname("root").unwrap()),
            "group name is \"root\"",
        ),
        ("mtime", Box::new(|h| h.set_mtime(MTIME + 1)), "mtime is"),
        (
            "device",
            Box::new(|h| h.set_device_major(1).unwrap()),
            "device major",
        ),
    ];
    for (what, edit, want) in &cases {
        let (_d, path) = signed(&Fixture::default());
        patch_header(&path, "bin/tool", edit);
        let out = refusal(&path);
        assert!(
            out.starts_with("entry \"bin/tool\": tar header ") && out.contains(want),
            "{what}: {out}"
        );
        assert!(!trusted(&path), "{what}");
    }
    // non-executable files, bundle.json and the signature entry are held to 0644 too
    for name in ["configs/a.conf", "bundle.json", "bundle.json.sig"] {
        let (_d, path) = signed(&Fixture::default());
        patch_header(&path, name, |h| h.set_mode(0o755));
        let out = refusal(&path);
        assert_eq!(
            out,
            format!("entry {name:?}: tar header mode is 0755, bundle.json requires 0644")
        );
        let (_d, path) = signed(&Fixture::default());
        patch_header(&path, name, |h| h.set_mtime(0));
        assert!(refusal(&path).contains("tar header mtime is 0"), "{name}");
    }
    // an executable file stored as 0644 is refused as well (the bit is part of the entry)
    let (_d, path) = signed(&Fixture::default());
    patch_header(&path, "bin/tool", |h| h.set_mode(0o644));
    assert!(refusal(&path).contains("mode is 0644, bundle.json requires 0755"));
    // a changed checksum alone
    let (_d, path) = signed(&Fixture::default());
    let at = header_offset(&path, "configs/a.conf");
    let mut data = std::fs::read(&path).unwrap();
    data[at + 150] ^= 0x01;
    std::fs::write(&path, data).unwrap();
    assert!(refusal(&path)
        .starts_with("malformed tar header after entry \"bin/tool\": header checksum"));
}

#[test]
fn extension_headers_and_other_types_are_refused() {
    for (kind, want) in [
        (tar::EntryType::XHeader, "pax extended header"),
        (tar::EntryType::XGlobalHeader, "pax global header"),
        (tar::EntryType::GNULongName, "GNU long name"),
        (tar::EntryType::Directory, "Directory"),
        (tar::EntryType::Fifo, "Fifo"),
    ] {
        let (_d, path) = signed(&Fixture::default());
        patch_header(&path, "configs/a.conf", |h| h.set_entry_type(kind));
        assert_eq!(
            refusal(&path),
            format!("entry \"configs/a.conf\": unexpected entry type {want}")
        );
    }
}

#[test]
fn nothing_may_follow_the_end_marker() {
    let (_d, path) = signed(&Fixture::default());
    let good = std::fs::read(&path).unwrap();
    // junk appended
    let mut data = good.clone();
    data.extend_from_slice(b"junk");
    std::fs::write(&path, &data).unwrap();
    let out = refusal(&path);
    assert!(
        out.contains("4 bytes after the end-of-archive marker")
            && out.contains("after entry \"stack/docker-stack.yml\""),
        "{out}"
    );
    // a second tar with a script, which `tar -i` would extract
    let mut second = Vec::new();
    {
        let mut t = tar::Builder::new(&mut second);
        let mut h = tar::Header::new_gnu();
        h.set_size(9);
        h.set_mode(0o755);
        t.append_data(&mut h, "evil.sh", &b"rm -rf /\n"[..])
            .unwrap();
        t.finish().unwrap();
    }
    let mut data = good.clone();
    data.extend_from_slice(&second);
    std::fs::write(&path, &data).unwrap();
    assert!(refusal(&path).contains("bytes after the end-of-archive marker"));
    // zeros appended (tar's record padding) are not ours either
    let mut data = good.clone();
    data.extend_from_slice(&[0u8; 512]);
    std::fs::write(&path, &data).unwrap();
    assert!(refusal(&path).contains("512 bytes after the end-of-archive marker"));
    // the same file without the junk verifies again
    std::fs::write(&path, &good).unwrap();
    assert!(trusted(&path));
    // data hidden in an entry's padding
    let loc = BundleFile::open(&path)
        .unwrap()
        .entry("configs/a.conf")
        .unwrap();
    let mut data = good.clone();
    data[(loc.offset + loc.size) as usize + 3] = b'x';
    std::fs::write(&path, &data).unwrap();
    assert_eq!(
        refusal(&path),
        "after entry \"configs/a.conf\": non-zero bytes in the padding of the entry"
    );
}

#[test]
fn truncation_anywhere_says_truncated_and_names_the_entry() {
    let (_d, path) = signed(&Fixture::default());
    let good = std::fs::read(&path).unwrap();
    let n = good.len();
    // every byte of the last 1024 (the end marker), and every 97th byte before
    let cuts: Vec<usize> = (n - END_MARKER..n)
        .chain((1..n - END_MARKER).step_by(97))
        .collect();
    for cut in cuts {
        std::fs::write(&path, &good[..cut]).unwrap();
        let out = refusal(&path);
        assert!(out.contains("truncated"), "cut at {cut}: {out}");
        assert!(
            out.contains("entry \"") || out.contains("at the start of the file"),
            "cut at {cut} names no entry: {out}"
        );
        assert!(!out.contains("Some(") && !out.contains("None"), "{out}");
    }
    std::fs::write(&path, &good[..n - 1]).unwrap();
    assert_eq!(
        refusal(&path),
        "truncated after entry \"stack/docker-stack.yml\": the file ends inside the end-of-archive marker (1023 of 1024 bytes)"
    );
    std::fs::write(&path, &good[..n - END_MARKER]).unwrap();
    assert_eq!(
        refusal(&path),
        "truncated after entry \"stack/docker-stack.yml\": the file ends without the end-of-archive marker"
    );
    let loc = BundleFile::open(&{
        std::fs::write(&path, &good).unwrap();
        path.clone()
    })
    .unwrap()
    .entry("bin/tool")
    .unwrap();
    std::fs::write(&path, &good[..loc.offset as usize + 5]).unwrap();
    assert_eq!(
        refusal(&path),
        "entry \"bin/tool\": truncated (the file ends after 5 of its 18 bytes)"
    );
}

#[test]
fn a_layer_bomb_is_refused_by_verify_and_while_loading() {
    // 16 MiB of zeros compresses to ~16 KiB; the bundle declares 1 MiB
    let bomb = Fixture {
        layer: vec![0u8; 16 << 20],
        declared: Some(1 << 20),
        ..Fixture::default()
    };
    let (_d, path) = signed(&bomb);
    // every hash of the bundle is right: the structure verifies ...
    let b = BundleFile::open(&path).unwrap();
    // ... but the expansion does not
    let out = b.check_layers().unwrap_err().to_string();
    let layer = b.manifest().images[0].layers[0].path();
    assert_eq!(
        out,
        format!(
            "entry {layer:?} (layer of image t/img:{}): expands to more than 1048576 bytes",
            b.manifest().images[0].tag
        )
    );
    // and the stream the loader hands to the engine ends in an error
    let (_, expected) = b
        .layer_expectations(&b.manifest().images[0])
        .unwrap()
        .remove(0);
    let mut sink = Vec::new();
    let err = std::io::copy(
        &mut CheckedReader::new(b.open_entry(&layer).unwrap(), expected),
        &mut sink,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("refused, the layer expands to more than 1048576 bytes"),
        "{err}"
    );

    // a layer declared larger than it is
    let (_d, path) = signed(&Fixture {
        declared: Some(5),
        layer: b"abc".to_vec(),
        ..Fixture::default()
    });
    assert!(refusal(&path).ends_with("expands to 3 bytes, bundle.json declares 5"));
}

#[test]
fn a_tag_that_is_not_the_image_id_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("t.bundle");
    Fixture {
        tag: Some("1.0.0-a0452bf7f296".into()),
        ..Fixture::default()
    }
    .write(&path);
    let out = refusal(&path);
    assert!(
        out.starts_with("image t/img:1.0.0-a0452bf7f296: tag \"1.0.0-a0452bf7f296\" does not end with its image ID's first 12 digits"),
        "{out}"
    );
}

#[test]
fn format_1_bundles_still_verify_and_newer_formats_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f1.bundle");
    Fixture {
        format: 1,
        ..Fixture::default()
    }
    .write(&p);
    let b = BundleFile::open(&p).unwrap();
    assert_eq!(b.manifest().format, 1);
    assert_eq!(b.manifest().mtime, None);
    assert_eq!(b.layout().mtime, MTIME);
    b.check_layers().unwrap();
    let (_, e) = b
        .layer_expectations(&b.manifest().images[0])
        .unwrap()
        .remove(0);
    assert_eq!(
        e.size, None,
        "format 1 declares no size: bounded at {FORMAT1_LAYER_LIMIT}"
    );

    // format 3 is refused with a clear message, before anything else is looked at
    let data = std::fs::read(&p).unwrap();
    let text = String::from_utf8_lossy(&data[512..512 + 20]).into_owned();
    assert!(text.contains("\"format\": 1"), "{text}");
    let mut data = data;
    let at = 512 + text.find("\"format\": 1").unwrap() + 10;
    data[at] = b'3';
    std::fs::write(&p, data).unwrap();
    assert_eq!(
        refusal(&p),
        "bundle.json: format 3 is newer than this reemo-bundle reads (formats 1 to 2); install a newer reemo-bundle"
    );
}

#[test]
fn the_loader_loads_a_good_image_and_refuses_a_bomb() {
    use crate::engine::{fake::FakeEngine, Engine};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let load = |f: &Fixture| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.bundle");
        f.write(&p);
        let b = Arc::new(BundleFile::open(&p).unwrap());
        let key = crate::engine::ImageKey::from(&b.manifest().images[0]);
        let engine = Arc::new(FakeEngine::manager("m"));
        let res = rt.block_on(crate::loader::images::load_into(
            b,
            engine.clone() as Arc<dyn Engine>,
            None,
            Arc::new(crate::events::Quiet),
        ));
        let present = rt.block_on(engine.has_image(&key)).unwrap();
        (res.map(|_| ()), present)
    };
    let (res, present) = load(&Fixture::default());
    res.unwrap();
    assert!(present);
    let (res, present) = load(&Fixture {
        layer: vec![0u8; 4 << 20],
        declared: Some(1 << 20),
        ..Fixture::default()
    });
    let e = format!("{:#}", res.unwrap_err());
    assert!(
        e.contains("refused, the layer expands to more than 1048576 bytes"),
        "{e}"
    );
    assert!(!present, "the engine holds no image from a refused layer");
}
