//! Bad inputs of Debian images, each refused with an error that names the file, package or
//! key at fault, and nothing written to the store, the lock or the output: an unknown
//! package (with close names), an unsatisfiable dependency, a bad or unknown signature, a
//! signed InRelease of another suite, an index that differs from InRelease, a .deb that
//! differs from the lock (archive or store), a .deb missing from the store, a lock that no
//! longer matches its recipe, a corrupt or truncated .deb, entries escaping the root, two
//! packages at one path, a missing library.

mod common;

use std::path::{Path, PathBuf};

use common::debian::{crafted_deb, make_key, stop_agent, write, write_recipe, TinyArchive};
use common::{bin_cmd, fails, run_ok};

/// Files under `dir` (recursively), none if it does not exist.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// `lock` of `packages` (with `libtiny1` as the base package, so tiny-app's closure) fails with every needle, and writes neither the lock nor the store.
fn lock_fails(a: &TinyArchive, packages: &[&str], needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let (_, recipe) = write_recipe(d.path(), a, packages, "");
    let store = d.path().join("store");
    let err = fails(
        bin_cmd(&["lock"])
            .arg(&recipe)
            .args(["--mirror", &a.url()])
            .arg("--store")
            .arg(&store),
    );
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    assert!(
        !d.path().join("recipes/tiny-deb.lock.json").exists(),
        "no lock written"
    );
    assert_eq!(
        files_under(&store.join("fixed")),
        Vec::<PathBuf>::new(),
        "nothing stored"
    );
}

/// A locked tiny-deb recipe: (folder, bundle definition, recipe, store).
fn locked(a: &TinyArchive) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let (def, recipe) = write_recipe(d.path(), a, &["tiny-app"], "");
    let store = d.path().join("store");
    run_ok(
        bin_cmd(&["lock"])
            .arg(&recipe)
            .args(["--mirror", &a.url()])
            .arg("--store")
            .arg(&store),
    );
    (d, def, recipe, store)
}

fn build_fails(def: &Path, store: &Path, out: &Path, needles: &[&str]) {
    let err = fails(
        bin_cmd(&["build"])
            .arg(def)
            .arg("--store")
            .arg(store)
            .arg("--out")
            .arg(out),
    );
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    assert_eq!(files_under(out), Vec::<PathBuf>::new(), "no bundle written");
}

fn standard() -> TinyArchive {
    let a = TinyArchive::standard();
    a.publish();
    a
}

#[test]
fn unknown_package_is_named_with_close_names() {
    let a = standard();
    lock_fails(
        &a,
        &["tiny-ap"],
        &[
            "tiny-deb.toml",
            "wanted package \"tiny-ap\" is not in stable, stable-security (close names: tiny-app",
        ],
    );
}

#[test]
fn unsatisfiable_dependency_names_the_chain() {
    let a = standard();
    lock_fails(
        &a,
        &["tiny-broken"],
        &["unsatisfiable dependency: wanted tiny-broken needs libtiny1 (>= 9), which stable, stable-security cannot satisfy (found libtiny1 1.0-1 in stable, libtiny1 1.1-1 in stable-security)"],
    );
}

#[test]
fn altered_inrelease_is_a_bad_signature() {
    let a = standard();
    let p = a.root.join("dists/stable/InRelease");
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, t.replace("Origin: Tiny", "Origin: Evil")).unwrap();
    lock_fails(
        &a,
        &["tiny-app"],
        &[
            "dists/stable/InRelease: signature not valid with keyring",
            "archive-keyring.gpg",
            "BADSIG",
        ],
    );
}

#[test]
fn unknown_signing_key_is_named() {
    let a = standard();
    let other = a.dir.path().join("other-gnupg");
    make_key(
        &other,
        "Other <other@example.invalid>",
        &a.dir.path().join("other.gpg"),
    );
    let dists = a.root.join("dists/stable-security");
    a.sign(&dists.join("Release"), &dists.join("InRelease"), &other);
    stop_agent(&other);
    lock_fails(
        &a,
        &["tiny-app"],
        &[
            "dists/stable-security/InRelease: signature not valid",
            "NO_PUBKEY",
        ],
    );
}

#[test]
fn inrelease_of_another_suite_is_refused() {
    let a = standard();
    let dists = a.root.join("dists");
    std::fs::copy(
        dists.join("stable/InRelease"),
        dists.join("stable-security/InRelease"),
    )
    .unwrap();
    lock_fails(
        &a,
        &["tiny-app"],
        &["dists/stable-security/InRelease: this is the InRelease of suite \"stable\""],
    );
}

#[test]
fn index_differing_from_inrelease_is_refused() {
    let a = standard();
    let bin = a.root.join("dists/stable/main/binary-amd64");
    let t = std::fs::read_to_string(bin.join("Packages")).unwrap();
    std::fs::write(
        bin.join("Packages"),
        t.replace("Version: 1.0-1", "Version: 9.0"),
    )
    .unwrap();
    std::fs::remove_file(bin.join("Packages.xz")).unwrap();
    run_ok(
        std::process::Command::new("xz")
            .args(["-k", "-9"])
            .arg(bin.join("Packages")),
    );
    lock_fails(
        &a,
        &["tiny-app"],
        &[
            "dists/stable/main/binary-amd64/Packages.xz: sha256",
            "but InRelease of stable says",
        ],
    );
}

#[test]
fn deb_differing_from_the_lock_names_both_hashes() {
    let a = standard();
    let (d, def, recipe, store) = locked(&a);
    let want = common::sha256_of(&a.deb_path("tiny-app", "1.0-1"));
    // In the archive: fetch into a fresh store refuses it and stores nothing.
    std::fs::write(a.deb_path("tiny-app", "1.0-1"), b"not the locked deb").unwrap();
    let store2 = d.path().join("store2");
    let err = fails(
        bin_cmd(&["fetch"])
            .arg(&recipe)
            .args(["--mirror", &a.url()])
            .arg("--store")
            .arg(&store2),
    );
    let found = common::sha256_of(&a.deb_path("tiny-app", "1.0-1"));
    assert!(err.contains(&format!("tiny-app from {}", a.url())), "{err}");
    assert!(
        err.contains(&format!("sha256 {found}, but the lock says {want}")),
        "{err}"
    );
    assert_eq!(files_under(&store2.join("fixed")), Vec::<PathBuf>::new());
    // In the store: the build refuses the altered copy.
    let copy = store.join("fixed/sha256").join(&want);
    std::fs::write(&copy, b"altered").unwrap();
    let altered = common::sha256_of(&copy);
    build_fails(
        &def,
        &store,
        &d.path().join("out"),
        &[
            "tiny-deb.lock.json: package tiny-app 1.0-1",
            &format!("has sha256 {altered}, the lock says {want}"),
        ],
    );
}

#[test]
fn deb_missing_from_the_store_names_the_fetch_command() {
    let a = standard();
    let (d, def, recipe, _) = locked(&a);
    let want = common::sha256_of(&a.deb_path("libtiny1", "1.1-1"));
    build_fails(
        &def,
        &d.path().join("empty-store"),
        &d.path().join("out"),
        &[
            &format!("package libtiny1 1.1-1 (sha256 {want}) is not in the store"),
            &format!("run `reemo-bundle fetch {}`", recipe.display()),
        ],
    );
}

#[test]
fn lock_not_matching_its_recipe() {
    let a = standard();
    let (d, def, recipe, store) = locked(&a);
    let t = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        t.replace(
            "packages = [\"tiny-app\"]",
            "packages = [\"tiny-app\", \"tiny-other\"]",
        ),
    )
    .unwrap();
    build_fails(
        &def,
        &store,
        &d.path().join("out"),
        &[
            "tiny-deb.lock.json: lock no longer matches its recipe",
            "packages: locked [\"tiny-app\"], recipe [\"tiny-app\", \"tiny-other\"]",
            "lock --update",
        ],
    );
    let o = bin_cmd(&["lock", "--check"]).arg(&recipe).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("stale: "));
}

#[test]
fn truncated_and_corrupt_debs_are_refused() {
    let mut a = TinyArchive::standard();
    a.publish();
    let good = std::fs::read(a.deb_path("tiny-app", "1.0-1")).unwrap();
    a.raw(
        "Package: tiny-trunc\nVersion: 1.0",
        "stable",
        good[..good.len() / 2].to_vec(),
    );
    let mut corrupt = good.clone();
    let n = corrupt.len();
    for b in &mut corrupt[n - 200..n - 100] {
        *b ^= 0x55;
    }
    a.raw("Package: tiny-corrupt\nVersion: 1.0", "stable", corrupt);
    a.publish();
    lock_fails(
        &a,
        &["tiny-app", "tiny-trunc"],
        &[
            "tiny-trunc 1.0 (pool/main/tiny-trunc_1.0_amd64.deb)",
            "truncated",
        ],
    );
    lock_fails(
        &a,
        &["tiny-app", "tiny-corrupt"],
        &[
            "tiny-corrupt 1.0 (pool/main/tiny-corrupt_1.0_amd64.deb)",
            "corrupt",
        ],
    );
}

#[test]
fn entries_escaping_the_root_are_refused() {
    let mut a = TinyArchive::standard();
    let ctl = "Package: tiny-escape\nVersion: 1.0\nArchitecture: amd64\n";
    a.raw(
        ctl,
        "stable",
        crafted_deb(
            ctl,
            &[("./../../etc/evil", tar::EntryType::Regular, "", b"x")],
        ),
    );
    let ctl2 = "Package: tiny-badlink\nVersion: 1.0\nArchitecture: amd64\n";
    a.raw(
        ctl2,
        "stable",
        crafted_deb(
            ctl2,
            &[("./etc/x", tar::EntryType::Symlink, "../../../outside", b"")],
        ),
    );
    let ctl3 = "Package: tiny-badhard\nVersion: 1.0\nArchitecture: amd64\n";
    a.raw(
        ctl3,
        "stable",
        crafted_deb(
            ctl3,
            &[("./etc/y", tar::EntryType::Link, "./etc/shadow", b"")],
        ),
    );
    a.publish();
    lock_fails(
        &a,
        &["tiny-app", "tiny-escape"],
        &[
            "tiny-escape 1.0",
            "data.tar: entry \"./../../etc/evil\" escapes the root",
        ],
    );
    lock_fails(
        &a,
        &["tiny-app", "tiny-badlink"],
        &[
            "tiny-badlink 1.0",
            "symlink \"./etc/x\" points outside the root (\"../../../outside\")",
        ],
    );
    lock_fails(
        &a,
        &["tiny-app", "tiny-badhard"],
        &[
            "tiny-badhard 1.0",
            "hard link ./etc/y points to \"./etc/shadow\", which is not an earlier file",
        ],
    );
}

#[test]
fn two_packages_at_one_path_are_named() {
    let a = standard();
    lock_fails(&a, &["tiny-app", "tiny-clash"], &["/usr/share/tiny/data is shipped by both tiny-app 1.0-1 and tiny-clash 1.0 with different content"]);
}

#[test]
fn missing_shared_library_names_binary_soname_and_package() {
    let mut a = TinyArchive::standard();
    let exe = std::fs::read("/usr/bin/true").unwrap();
    a.deb("Package: tiny-elf\nVersion: 1.0", "stable", "xz", |t| {
        write(t, "usr/bin/tiny-true", "", 0o755);
        std::fs::write(t.join("usr/bin/tiny-true"), &exe).unwrap();
    });
    a.deb("Package: libc6\nVersion: 2.36-9", "stable", "xz", |_| {});
    a.publish();
    lock_fails(
        &a,
        &["tiny-app", "tiny-elf"],
        &["/usr/bin/tiny-true needs libc.so.6, which is not in the image (Debian package libc6 ships it; it is not in the closure)", "/usr/bin/tiny-true needs /lib64/ld-linux-x86-64.so.2"],
    );
}
