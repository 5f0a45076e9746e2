//! The lock file beside a recipe (`<recipe>.lock.json`): what was asked (so a changed recipe
//! is noticed), the suites that were verified (InRelease sha256, date, key fingerprints) and
//! every package of the closure pinned by sha256 with why it is there. Stable JSON: the same
//! archive and recipe give the same bytes. After `lock`, these pins are the trust root.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Version of the lock format.
pub const LOCK_VERSION: u32 = 1;

/// A lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// [`LOCK_VERSION`].
    pub lock_version: u32,
    /// What the recipe asked for when it was locked.
    pub request: LockRequest,
    /// The verified suites.
    pub sources: Vec<LockSource>,
    /// The closure, sorted by name.
    pub packages: Vec<LockedPackage>,
}

/// The `[debian]` fields that decide the closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    /// Suites, in order.
    pub suites: Vec<String>,
    /// Components.
    pub components: Vec<String>,
    /// Architecture.
    pub architecture: String,
    /// Packages wanted.
    pub packages: Vec<String>,
    /// Essential packages added.
    pub essential: Vec<String>,
    /// Packages left out.
    pub exclude: Vec<String>,
    /// Keyring file as named by the recipe (or the default).
    pub keyring: String,
}

/// One verified suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSource {
    /// Suite name.
    pub suite: String,
    /// sha256 of its `InRelease` as fetched.
    pub inrelease_sha256: String,
    /// `Date:` of the `InRelease`.
    pub date: String,
    /// Fingerprints of the keys whose signatures verified.
    pub fingerprints: Vec<String>,
}

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture (`amd64` or `all`).
    pub architecture: String,
    /// Suite it came from.
    pub suite: String,
    /// Path in the archive.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the `.deb`.
    pub sha256: String,
    /// `wanted`, `essential`, `needed by X`, sorted.
    pub why: Vec<String>,
}

impl LockedPackage {
    /// `name version (sha256 …)` for messages.
    pub fn described(&self) -> String {
        format!("{} {} (sha256 {})", self.name, self.version, self.sha256)
    }
}

/// Where the lock of recipe file `recipe` lives: `x.toml` → `x.lock.json`.
pub fn lock_path(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock.json")
}

impl Lock {
    /// The stable bytes of the lock (pretty JSON, fixed field order, final newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a lock serialises");
        v.push(b'\n');
        v
    }

    /// Read a lock file.
    pub fn read(path: &Path) -> Result<Lock> {
        let data =
            std::fs::read(path).with_context(|| format!("reading lock file {}", path.display()))?;
        let lock: Lock = serde_json::from_slice(&data)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), e.line()))?;
        anyhow::ensure!(
            lock.lock_version == LOCK_VERSION,
            "{}: lock_version {} is not {LOCK_VERSION} (made by another reemo-bundle)",
            path.display(),
            lock.lock_version
        );
        Ok(lock)
    }

    /// What differs between the request of this lock and `req` (empty: it matches).
    pub fn request_changes(&self, req: &LockRequest) -> Vec<String> {
        let a = &self.request;
        let mut out = Vec::new();
        let mut cmp = |field: &str, old: &[String], new: &[String]| {
            if old != new {
                out.push(format!("{field}: locked {old:?}, recipe {new:?}"));
            }
        };
        cmp("suites", &a.suites, &req.suites);
        cmp("components", &a.components, &req.components);
        cmp(
            "architecture",
            std::slice::from_ref(&a.architecture),
            std::slice::from_ref(&req.architecture),
        );
        cmp("packages", &a.packages, &req.packages);
        cmp("essential", &a.essential, &req.essential);
        cmp("exclude", &a.exclude, &req.exclude);
        cmp(
            "keyring",
            std::slice::from_ref(&a.keyring),
            std::slice::from_ref(&req.keyring),
        );
        out
    }
}

/// What changed between two locks, package by package (for `lock --update`/`--check`).
pub fn diff(old: &Lock, new: &Lock) -> Vec<String> {
    use std::collections::BTreeMap;
    let o: BTreeMap<&str, &LockedPackage> =
        old.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let n: BTreeMap<&str, &LockedPackage> =
        new.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut out = Vec::new();
    for (name, p) in &o {
        match n.get(name) {
            None => out.push(format!("- {name} {}", p.version)),
            Some(q) if q.version != p.version => {
                out.push(format!("~ {name} {} → {}", p.version, q.version))
            }
            Some(q) if q.sha256 != p.sha256 => out.push(format!(
                "~ {name} {}: sha256 {} → {}",
                p.version, p.sha256, q.sha256
            )),
            _ => {}
        }
    }
    for (name, q) in &n {
        if !o.contains_key(name) {
            out.push(format!("+ {name} {}", q.version));
        }
    }
    out
}

/// A small lock for tests of other modules.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// One package, one suite.
    pub(crate) fn sample() -> Lock {
        Lock {
            lock_version: 1,
            request: LockRequest {
                suites: vec!["bookworm".into()],
                components: vec!["main".into()],
                architecture: "amd64".into(),
                packages: vec!["hello".into()],
                essential: vec![],
                exclude: vec![],
                keyring: "/usr/share/keyrings/debian-archive-keyring.gpg".into(),
            },
            sources: vec![LockSource {
                suite: "bookworm".into(),
                inrelease_sha256: "1".repeat(64),
                date: "Sat, 10 May 2025 09:00:00 UTC".into(),
                fingerprints: vec!["ABCD".into()],
            }],
            packages: vec![LockedPackage {
                name: "hello".into(),
                version: "2.10-3".into(),
                architecture: "amd64".into(),
                suite: "bookworm".into(),
                filename: "pool/main/h/hello/hello_2.10-3_amd64.deb".into(),
                size: 56_000,
                sha256: "2".repeat(64),
                why: vec!["wanted".into()],
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;

    #[test]
    fn lock_bytes_are_stable_and_round_trip() {
        let l = sample();
        let b = l.to_bytes();
        // Field order and layout are part of the format.
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.starts_with("{\n  \"lock_version\": 1,\n  \"request\": {\n    \"suites\": [\n      \"bookworm\"\n    ],"), "{text}");
        assert!(text.ends_with("}\n"));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock.json");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(Lock::read(&p).unwrap(), l);
        assert_eq!(Lock::read(&p).unwrap().to_bytes(), b);
        std::fs::write(&p, text.replace("\"size\"", "\"sise\"")).unwrap();
        let e = Lock::read(&p).unwrap_err().to_string();
        assert!(e.contains("x.lock.json:") && e.contains("sise"), "{e}");
    }

    #[test]
    fn request_changes_and_diffs() {
        let l = sample();
        let mut r = l.request.clone();
        assert!(l.request_changes(&r).is_empty());
        r.packages.push("curl".into());
        r.exclude.push("adduser".into());
        assert_eq!(
            l.request_changes(&r),
            [
                "packages: locked [\"hello\"], recipe [\"hello\", \"curl\"]",
                "exclude: locked [], recipe [\"adduser\"]"
            ]
        );
        let mut n = l.clone();
        n.packages[0].version = "2.10-4".into();
        n.packages.push(LockedPackage {
            name: "zz".into(),
            ..n.packages[0].clone()
        });
        assert_eq!(diff(&l, &n), ["~ hello 2.10-3 → 2.10-4", "+ zz 2.10-4"]);
        assert_eq!(
            lock_path(Path::new("recipes/haproxy.toml")),
            Path::new("recipes/haproxy.lock.json")
        );
    }
}
