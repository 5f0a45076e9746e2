//! A tiny Debian archive made by the tests themselves: a few `.deb`s built with
//! `dpkg-deb --build` (or crafted byte by byte for hostile ones), `Packages` indices and an
//! `InRelease` clear-signed by a throw-away key (`gpg --batch`, temporary GNUPGHOME),
//! served from a `file://` folder. The gpg agent is stopped when the fixture drops.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One package of the archive.
pub struct ArchiveDeb {
    /// Control stanza fields (Package, Version, Architecture, Depends, …).
    pub control: String,
    /// Suite whose index lists it.
    pub suite: String,
    /// Path under the archive root.
    pub filename: String,
    /// The `.deb` bytes.
    pub bytes: Vec<u8>,
}

/// The archive fixture.
pub struct TinyArchive {
    /// Temporary folder holding everything.
    pub dir: tempfile::TempDir,
    /// GNUPGHOME of the throw-away key.
    pub gnupg: PathBuf,
    /// Keyring (binary export of the public key) that verifies the suites.
    pub keyring: PathBuf,
    /// Archive root (the `--mirror` folder).
    pub root: PathBuf,
    /// Packages.
    pub debs: Vec<ArchiveDeb>,
}

fn run(cmd: &mut Command) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (install gpg, dpkg-dev, xz-utils)"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A throw-away signing key in a fresh GNUPGHOME; returns the exported keyring path.
pub fn make_key(gnupg: &Path, uid: &str, keyring: &Path) {
    std::fs::create_dir_all(gnupg).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    run(Command::new("gpg").arg("--homedir").arg(gnupg).args([
        "--batch",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-generate-key",
        uid,
        "ed25519",
        "sign",
        "never",
    ]));
    let o = Command::new("gpg")
        .arg("--homedir")
        .arg(gnupg)
        .arg("--export")
        .output()
        .unwrap();
    assert!(o.status.success() && !o.stdout.is_empty(), "gpg --export");
    std::fs::write(keyring, o.stdout).unwrap();
}

/// Stop the gpg agent of a GNUPGHOME.
pub fn stop_agent(gnupg: &Path) {
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(gnupg)
        .args(["--kill", "gpg-agent"])
        .output();
}

impl Drop for TinyArchive {
    fn drop(&mut self) {
        stop_agent(&self.gnupg);
    }
}

impl TinyArchive {
    /// An empty archive with its key.
    pub fn new() -> TinyArchive {
        let dir = tempfile::tempdir().unwrap();
        let gnupg = dir.path().join("gnupg");
        let keyring = dir.path().join("archive-keyring.gpg");
        make_key(&gnupg, "Tiny Archive <tiny@example.invalid>", &keyring);
        let root = dir.path().join("archive");
        std::fs::create_dir_all(&root).unwrap();
        TinyArchive {
            dir,
            gnupg,
            keyring,
            root,
            debs: Vec::new(),
        }
    }

    /// Build a package with `dpkg-deb --build -Z<compression>` from `control` (without
    /// Architecture, added as amd64), filling its tree with `fill`.
    pub fn deb(&mut self, control: &str, suite: &str, compression: &str, fill: impl FnOnce(&Path)) {
        let name = field(control, "Package");
        let version = field(control, "Version");
        let tree = self
            .dir
            .path()
            .join("build")
            .join(format!("{name}_{version}"));
        std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
        let control = format!("{}\nArchitecture: amd64\nMaintainer: Tests <t@example.invalid>\nDescription: test package\n", control.trim_end());
        std::fs::write(tree.join("DEBIAN/control"), &control).unwrap();
        fill(&tree);
        let out = self
            .dir
            .path()
            .join("build")
            .join(format!("{name}_{version}_amd64.deb"));
        run(Command::new("dpkg-deb")
            .arg(format!("-Z{compression}"))
            .arg("--build")
            .arg(&tree)
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", "1700000000"));
        let bytes = std::fs::read(&out).unwrap();
        self.raw(&control, suite, bytes);
    }

    /// Add a package whose `.deb` bytes are given as they are (hostile or broken ones).
    pub fn raw(&mut self, control: &str, suite: &str, bytes: Vec<u8>) {
        let name = field(control, "Package");
        let version = field(control, "Version");
        let mut control = control.trim_end().to_string();
        if !control.contains("Architecture:") {
            control.push_str("\nArchitecture: amd64");
        }
        self.debs.push(ArchiveDeb {
            control,
            suite: suite.into(),
            filename: format!("pool/main/{name}_{version}_amd64.deb"),
            bytes,
        });
    }

    /// Write the pool, the indices and the signed `InRelease` of every suite.
    pub fn publish(&self) {
        let mut suites: Vec<&str> = self.debs.iter().map(|d| d.suite.as_str()).collect();
        suites.sort();
        suites.dedup();
        for suite in suites {
            let dists = self.root.join("dists").join(suite);
            let bin = dists.join("main/binary-amd64");
            std::fs::create_dir_all(&bin).unwrap();
            let mut index = String::new();
            for d in self.debs.iter().filter(|d| d.suite == suite) {
                let p = self.root.join(&d.filename);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, &d.bytes).unwrap();
                index.push_str(&format!(
                    "{}\nFilename: {}\nSize: {}\nSHA256: {}\n\n",
                    d.control,
                    d.filename,
                    d.bytes.len(),
                    super::sha256_of(&p)
                ));
            }
            std::fs::write(bin.join("Packages"), &index).unwrap();
            let _ = std::fs::remove_file(bin.join("Packages.xz"));
            run(Command::new("xz")
                .args(["-k", "-9"])
                .arg(bin.join("Packages")));
            let mut release = format!(
                "Origin: Tiny\nLabel: Tiny\nSuite: {suite}\nCodename: {suite}\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nValid-Until: Fri, 02 Jan 2026 00:00:00 UTC\nArchitectures: amd64\nComponents: main\nSHA256:\n"
            );
            for f in [
                "main/binary-amd64/Packages",
                "main/binary-amd64/Packages.xz",
            ] {
                let p = dists.join(f);
                release.push_str(&format!(
                    " {} {} {f}\n",
                    super::sha256_of(&p),
                    std::fs::metadata(&p).unwrap().len()
                ));
            }
            std::fs::write(dists.join("Release"), &release).unwrap();
            self.sign(
                &dists.join("Release"),
                &dists.join("InRelease"),
                &self.gnupg,
            );
        }
    }

    /// Clear-sign `release` into `inrelease` with the key of `gnupg`.
    pub fn sign(&self, release: &Path, inrelease: &Path, gnupg: &Path) {
        run(Command::new("gpg")
            .arg("--homedir")
            .arg(gnupg)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--clearsign",
                "--output",
            ])
            .arg(inrelease)
            .arg(release));
    }

    /// The standard tiny archive: `tiny-app` (wanted; a merged-/usr script, a symlink, a
    /// setuid file, a hard link, a file owned by group 42) depending on `libtiny1` (1.0 in
    /// `stable`, 1.1 in `stable-security`: the higher wins) and on `adduser | tiny-users`
    /// (excluded), `tiny-other` (a second wanted package, gzip), plus packages used by the
    /// error tests (`tiny-clash` shipping another content at one of tiny-app's paths,
    /// `tiny-broken` with an unsatisfiable dependency).
    pub fn standard() -> TinyArchive {
        let mut a = TinyArchive::new();
        a.deb(
            "Package: tiny-app\nVersion: 1.0-1\nDepends: libtiny1 (>= 1.1), adduser | tiny-users",
            "stable",
            "xz",
            |t| {
                write(t, "bin/tiny-app", "#!/bin/sh\necho tiny\n", 0o755);
                symlink(t, "usr/bin/tiny", "tiny-app");
                write(t, "usr/bin/tiny-su", "setuid\n", 0o4755);
                write(t, "usr/share/tiny/data", "shared data\n", 0o644);
                std::fs::hard_link(
                    t.join("usr/share/tiny/data"),
                    t.join("usr/share/tiny/data-link"),
                )
                .unwrap();
                write(t, "usr/share/tiny/group42", "x\n", 0o640);
                std::os::unix::fs::chown(t.join("usr/share/tiny/group42"), Some(0), Some(42))
                    .unwrap();
            },
        );
        a.deb("Package: libtiny1\nVersion: 1.0-1", "stable", "gzip", |t| {
            write(t, "lib/x86_64-linux-gnu/libtiny.txt", "1.0\n", 0o644);
        });
        a.deb(
            "Package: libtiny1\nVersion: 1.1-1",
            "stable-security",
            "zstd",
            |t| {
                write(t, "lib/x86_64-linux-gnu/libtiny.txt", "1.1\n", 0o644);
            },
        );
        a.deb("Package: adduser\nVersion: 3.0", "stable", "xz", |t| {
            write(t, "usr/sbin/adduser", "#!/bin/sh\n", 0o755);
        });
        a.deb("Package: tiny-other\nVersion: 2.0", "stable", "gzip", |t| {
            write(t, "usr/share/tiny/data", "shared data\n", 0o644);
            write(t, "etc/tiny-other.conf", "conf\n", 0o644);
        });
        a.deb("Package: tiny-clash\nVersion: 1.0", "stable", "xz", |t| {
            write(t, "usr/share/tiny/data", "other data\n", 0o644);
        });
        a.deb(
            "Package: tiny-broken\nVersion: 1.0\nDepends: tiny-app, libtiny1 (>= 9)",
            "stable",
            "xz",
            |_| {},
        );
        a
    }

    /// `file://` URL of the archive.
    pub fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    /// The `.deb` of a package, by name and version.
    pub fn deb_path(&self, name: &str, version: &str) -> PathBuf {
        self.root
            .join(format!("pool/main/{name}_{version}_amd64.deb"))
    }
}

fn field(control: &str, name: &str) -> String {
    control
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("control without {name}"))
        .trim()
        .to_string()
}

/// Write a file with a mode in a package tree.
pub fn write(tree: &Path, rel: &str, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = tree.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A symlink in a package tree.
pub fn symlink(tree: &Path, rel: &str, target: &str) {
    let p = tree.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// A `.deb` made byte by byte: `ar` with `debian-binary`, an uncompressed `control.tar` and
/// an uncompressed `data.tar` whose entries are `(name, type, link target, data)` written
/// with raw header names (so `..` and escaping link targets can be expressed).
pub fn crafted_deb(control: &str, entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let tar_of = |items: &[(&str, tar::EntryType, &str, &[u8])]| {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in items {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    };
    let control_tar = tar_of(&[("./control", tar::EntryType::Regular, "", control.as_bytes())]);
    let data_tar = tar_of(entries);
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar", control_tar),
        ("data.tar", data_tar),
    ] {
        out.extend_from_slice(
            format!(
                "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                0,
                0,
                0,
                "100644",
                data.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

/// Write `recipes/tiny-deb.toml` (an image of `packages` from the archive, with `extra`
/// appended to its `[debian]` section), a stack using it and `bundles/tiny-deb.toml` into
/// `dir`; returns (bundle definition, recipe).
pub fn write_recipe(
    dir: &Path,
    a: &TinyArchive,
    packages: &[&str],
    extra: &str,
) -> (PathBuf, PathBuf) {
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let list: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    let recipe = recipes.join("tiny-deb.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"kind = "image"
repository = "reemo-test/tiny-deb"
version = "1.0"

[debian]
suites = ["stable", "stable-security"]
packages = [{}]
exclude = ["adduser"]
base = ["libtiny1"]
keyring = "{}"
{extra}

[[debian.user]]
name = "tiny"
uid = 101
home = "/var/lib/tiny"

[[debian.dir]]
path = "/run/tiny"
owner = "tiny"
mode = 0o750

[[layer]]
entries = [{{ dest = "/etc/motd", text = "hello\n" }}]

[config]
entrypoint = ["/usr/bin/tiny"]
user = "tiny"
"#,
            list.join(", "),
            a.keyring.display()
        ),
    )
    .unwrap();
    std::fs::write(
        recipes.join("tiny-deb-stack.toml"),
        "kind = \"stack\"\ntemplate = \"tiny-deb-stack.yml\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("tiny-deb-stack.yml"),
        "version: \"3.8\"\nservices:\n  app:\n    image: ${image:tiny-deb}\n",
    )
    .unwrap();
    let def = dir.join("bundles/tiny-deb.toml");
    std::fs::write(
        &def,
        "name = \"tiny-deb\"\nversion = \"1.0.0\"\nstack_name = \"tinydeb\"\nstack = \"tiny-deb-stack\"\n",
    )
    .unwrap();
    (def, recipe)
}
