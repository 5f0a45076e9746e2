//! Reproducibility: the default bundle built from scratch in a fresh store, from a copy of
//! the checkout in another folder, with another umask and TZ, at another time, has the same
//! sha256 as the tests' shared build of the checkout (itself built from scratch once).
//! Needs the Rust toolchain, not Docker.

mod common;

use std::path::Path;
use std::process::Command;

/// Copy the files git knows (tracked and untracked-but-not-ignored) into `dest`.
fn copy_tree(dest: &Path) {
    let root = common::repo_root();
    let out = common::run_ok(Command::new("git").current_dir(&root).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]));
    for rel in out.split('\0').filter(|s| !s.is_empty()) {
        let src = root.join(rel);
        if !src.is_file() {
            continue; // deleted in the work tree
        }
        let d = dest.join(rel);
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        std::fs::copy(&src, &d).unwrap();
    }
}

fn build_in(src: &Path, store: &Path, out: &Path, umask: &str, tz: &str) -> String {
    // the .debs its haproxy image's lock names (inputs, not builds: the store stays empty of
    // built entries)
    common::run_ok(
        Command::new(common::bin())
            .current_dir(src)
            .args(["fetch", "bundles/relayws.toml", "--store"])
            .arg(store),
    );
    let cmd = format!(
        "umask {umask} && exec {} build bundles/relayws.toml --json --store {} --out {}",
        common::bin().display(),
        store.display(),
        out.display()
    );
    let o = Command::new("sh")
        .current_dir(src)
        .args(["-c", &cmd])
        .env("TZ", tz)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build in {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["cached"].as_array().unwrap().is_empty(),
        "a build from scratch must not find anything in a fresh store: {v}"
    );
    v["bundle"].as_str().unwrap().to_string()
}

#[test]
fn default_bundle_is_bit_reproducible() {
    // A: the tests' shared build of the checkout (built from scratch once per checkout, in
    // the shared store; most test files use it, so it costs this file nothing more).
    let bundle_a = common::default_bundle().display().to_string();
    // B: a copy of the checkout in a folder of another name and depth, built from scratch
    // in a fresh store with another umask and time zone.
    let b = tempfile::Builder::new()
        .prefix("reproducible-build-b-longer-")
        .tempdir()
        .unwrap();
    let src_b = b.path().join("nested").join("checkout");
    copy_tree(&src_b);
    let bundle_b = build_in(
        &src_b,
        &b.path().join("store"),
        &b.path().join("out"),
        "077",
        "Asia/Tokyo",
    );
    let name_a = Path::new(&bundle_a).file_name().unwrap().to_owned();
    let name_b = Path::new(&bundle_b).file_name().unwrap().to_owned();
    assert_eq!(name_a, name_b, "identities differ");
    let (sha_a, sha_b) = (
        common::sha256_of(Path::new(&bundle_a)),
        common::sha256_of(Path::new(&bundle_b)),
    );
    if sha_a != sha_b {
        // Name the entries that differ, to make a failure actionable.
        let list = |p: &str| {
            let o = Command::new(common::bin())
                .args(["inspect", "--json", p])
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["files"].clone()
        };
        panic!(
            "bundles differ: {sha_a} vs {sha_b}\nA files: {}\nB files: {}",
            list(&bundle_a),
            list(&bundle_b)
        );
    }
    // The bundle carries both static executables.
    let o = Command::new(common::bin())
        .args(["inspect", "--json", &bundle_a])
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"bin/reemo-bundle") && files.contains(&"bin/ws-relay-server"),
        "{files:?}"
    );
}
