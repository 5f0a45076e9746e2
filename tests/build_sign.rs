//! Signing on the build side: `keygen`, `build --sign-key` (reproducible, unsigned builds
//! unchanged), `sign` of an existing bundle, and `verify`/`inspect` reporting the signer and
//! catching a flipped byte in the signature or in bundle.json. Uses the tiny busybox
//! appliance: no cargo build, no Docker.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Build the tiny appliance; returns the bundle path and the `--json` result.
fn build(def: &Path, store: &Path, out: &Path, key: Option<&Path>) -> (PathBuf, serde_json::Value) {
    let mut c = common::bin_cmd(&["build", "--json", "--store"]);
    c.arg(store).arg("--out").arg(out).arg(def);
    if let Some(k) = key {
        c.arg("--sign-key").arg(k);
    }
    let v: serde_json::Value = serde_json::from_str(&common::run_ok(&mut c)).unwrap();
    (PathBuf::from(v["bundle"].as_str().unwrap()), v)
}

#[test]
fn keygen_writes_a_key_pair_and_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("site-key");
    let id = common::keygen(&k);
    assert_eq!(id.len(), 16, "{id}");
    let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let private = std::fs::read_to_string(&k).unwrap();
    let public = std::fs::read_to_string(d.path().join("site-key.pub")).unwrap();
    assert!(
        private.starts_with("reemo-bundle private key v1\n"),
        "{private}"
    );
    assert!(
        public.starts_with("reemo-bundle public key v1\n"),
        "{public}"
    );
    assert!(public.contains(&format!("\nkey-id: {id}\n")), "{public}");
    assert!(!public.contains("secret"), "{public}");

    let err = common::fails(common::bin_cmd(&["keygen", "--out"]).arg(&k));
    assert!(
        err.contains("already exists; refusing to overwrite a key"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&k).unwrap(),
        private,
        "key unchanged"
    );

    // a damaged key is named, with its line, when a build is asked to use it
    let bad = d.path().join("bad-key");
    std::fs::write(
        &bad,
        private.replace("algorithm: ed25519", "algorithm: rsa"),
    )
    .unwrap();
    let err = common::fails(
        common::bin_cmd(&["build", "nonexistent.toml", "--sign-key"])
            .arg(&bad)
            .arg("--store")
            .arg(d.path().join("store")),
    );
    assert!(
        err.contains(&format!(
            "{}: line 2: algorithm \"rsa\" is not supported",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn signed_build_is_reproducible_and_reports_its_signer() {
    let d = tempfile::tempdir().unwrap();
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "signed");
    let key = d.path().join("k");
    let id = common::keygen(&key);
    let other = d.path().join("other");
    let other_id = common::keygen(&other);
    let store = d.path().join("store");

    let (unsigned, u) = build(&def, &store, &d.path().join("u"), None);
    assert!(u["signed_by"].is_null(), "{u}");
    let unsigned_sha = common::sha256_of(&unsigned);
    let (signed, s) = build(&def, &store, &d.path().join("s"), Some(&key));
    assert_eq!(s["signed_by"], id.as_str());
    let signed_sha = common::sha256_of(&signed);
    assert_eq!(
        s["sha256"],
        signed_sha.as_str(),
        "reported hash is the signed file's"
    );
    assert_ne!(signed_sha, unsigned_sha);
    assert_eq!(
        signed.file_name(),
        unsigned.file_name(),
        "same conventional name"
    );
    // the unsigned build is untouched by signing: same bytes as before, from the store
    let (again, _) = build(&def, &store, &d.path().join("u2"), None);
    assert_eq!(common::sha256_of(&again), unsigned_sha);
    // the signed build is reproducible: cached rebuild, and a fresh store
    let (s2, _) = build(&def, &store, &d.path().join("s2"), Some(&key));
    assert_eq!(common::sha256_of(&s2), signed_sha);
    let (s3, v3) = build(
        &def,
        &d.path().join("store2"),
        &d.path().join("s3"),
        Some(&key),
    );
    assert!(v3["cached"].as_array().unwrap().is_empty(), "{v3}");
    assert_eq!(common::sha256_of(&s3), signed_sha);
    // `sign` of the unsigned bundle gives the same file as `build --sign-key`
    let copy = d.path().join("copy.bundle");
    let out = common::run_ok(
        common::bin_cmd(&["sign", "--key"])
            .arg(&key)
            .arg(&unsigned)
            .arg("--out")
            .arg(&copy),
    );
    assert!(out.contains(&format!("signed by key id {id}")), "{out}");
    assert_eq!(common::sha256_of(&copy), signed_sha);
    assert_eq!(
        common::sha256_of(&unsigned),
        unsigned_sha,
        "--out leaves FILE"
    );
    // in place, with another key: replaces the signature, atomically
    common::run_ok(common::bin_cmd(&["sign", "--key"]).arg(&other).arg(&copy));
    let out = common::run_ok(common::bin_cmd(&["verify"]).arg(&copy));
    assert!(
        out.contains(&format!("signature: signed by key id {other_id};")),
        "{out}"
    );

    // signing the build output in place (a hard link into the store) leaves the store's
    // unsigned bundle alone
    common::run_ok(common::bin_cmd(&["sign", "--key"]).arg(&key).arg(&again));
    assert_eq!(common::sha256_of(&again), signed_sha);
    let (u3, _) = build(&def, &store, &d.path().join("u3"), None);
    assert_ne!(u3, again);
    assert_eq!(common::sha256_of(&u3), unsigned_sha);

    // verify and inspect report the signer
    let out = common::run_ok(common::bin_cmd(&["verify"]).arg(&signed));
    assert!(out.starts_with("ok: tiny 1.0.0"), "{out}");
    assert!(
        out.contains(&format!(
            "signature: signed by key id {id}; the signature matches the key it carries"
        )),
        "{out}"
    );
    let out = common::run_ok(common::bin_cmd(&["verify"]).arg(&unsigned));
    assert!(out.contains("signature: unsigned"), "{out}");
    let out = common::run_ok(common::bin_cmd(&["inspect"]).arg(&signed));
    assert!(
        out.contains(&format!("signature: signed by key id {id}")),
        "{out}"
    );
    let out = common::run_ok(common::bin_cmd(&["inspect"]).arg(&unsigned));
    assert!(out.contains("signature: unsigned"), "{out}");
    // --trusted-key: trusted signer accepted; other signer, or unsigned, refused
    let public = d.path().join("k.pub");
    let out = common::run_ok(
        common::bin_cmd(&["verify", "--trusted-key"])
            .arg(&public)
            .arg(&signed),
    );
    assert!(
        out.contains(&format!(
            "signature: signed by key id {id}, trusted ({})",
            public.display()
        )),
        "{out}"
    );
    let other_pub = d.path().join("other.pub");
    let err = common::fails(
        common::bin_cmd(&["verify", "--trusted-key"])
            .arg(&other_pub)
            .arg(&signed),
    );
    assert!(
        err.contains(&format!("bundle {}: it is signed by key id {id}, which is not a trusted key here ({other_id} from {})", signed.display(), other_pub.display())),
        "{err}"
    );
    let err = common::fails(
        common::bin_cmd(&["verify", "--trusted-key"])
            .arg(&public)
            .arg(&unsigned),
    );
    assert!(
        err.contains(&format!("bundle {}: it is unsigned", unsigned.display())),
        "{err}"
    );
}

/// Position and length of an entry's data in an uncompressed tar.
fn entry_data(bundle: &Path, name: &str) -> (usize, usize) {
    let mut a = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            return (e.raw_file_position() as usize, e.size() as usize);
        }
    }
    panic!("no {name} in {}", bundle.display());
}

#[test]
fn a_flipped_byte_in_the_signature_or_the_manifest_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "tamper");
    let key = d.path().join("k");
    let id = common::keygen(&key);
    let (signed, _) = build(
        &def,
        &d.path().join("store"),
        &d.path().join("out"),
        Some(&key),
    );
    let bytes = std::fs::read(&signed).unwrap();
    let public = d.path().join("k.pub");

    // one bit of the signature value (a base64 character changed to another valid one)
    let (off, len) = entry_data(&signed, "bundle.json.sig");
    let sig = std::str::from_utf8(&bytes[off..off + len]).unwrap();
    let pos = off + sig.find("signature: ").unwrap() + "signature: ".len() + 5;
    let mut bad_sig = bytes.clone();
    bad_sig[pos] = if bad_sig[pos] == b'A' { b'B' } else { b'A' };
    // the manifest: same length, still valid JSON, every file hash still matches
    let (off, len) = entry_data(&signed, "bundle.json");
    let manifest = std::str::from_utf8(&bytes[off..off + len]).unwrap();
    let pos = off + manifest.find("\"name\": \"tiny\"").unwrap() + "\"name\": \"tin".len();
    let mut bad_manifest = bytes.clone();
    bad_manifest[pos] = b'z';

    for (what, data) in [("signature", bad_sig), ("bundle.json", bad_manifest)] {
        let p = d.path().join(format!("bad-{what}.bundle"));
        std::fs::write(&p, data).unwrap();
        let want = format!(
            "bundle {}: its signature by key id {id} does not verify: bundle.json or bundle.json.sig was altered after signing",
            p.display()
        );
        let err = common::fails(common::bin_cmd(&["verify"]).arg(&p));
        assert!(err.contains(&want), "{what}: {err}");
        let err = common::fails(
            common::bin_cmd(&["verify", "--trusted-key"])
                .arg(&public)
                .arg(&p),
        );
        assert!(err.contains(&want), "{what} (trusted key): {err}");
        let out = common::run_ok(common::bin_cmd(&["inspect"]).arg(&p));
        assert!(
            out.contains("signature: INVALID: its signature by key id"),
            "{what}: {out}"
        );
    }
    // the untouched file still verifies
    common::run_ok(
        common::bin_cmd(&["verify", "--trusted-key"])
            .arg(&public)
            .arg(&signed),
    );
}
