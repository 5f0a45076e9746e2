//! The host state directory (default `/var/lib/reemo-bundle`): the only module that writes
//! there. Layout:
//! ```text
//! lock                  flock held by the running command (pid inside)
//! store/<identity>/     verified bundle files (manifest, stack, configs), read-only
//! secrets/<key>         host-generated secrets (0600), reused by every generation
//! generations/<n>.json  generation records (desired state, result)
//! current               number of the current generation
//! journal.json          the activation in progress, if any
//! ```
//! Every write is atomic: temp file, fsync, rename, fsync of the directory.

pub mod journal;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::swarm::desired::DesiredStack;

/// A file to import into the host store, with the sha256 its manifest records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFile {
    /// Path inside the bundle.
    pub path: String,
    /// Content.
    pub data: Vec<u8>,
    /// Expected lowercase hex sha256.
    pub sha256: String,
}

impl StoreFile {
    /// A file whose expected hash is that of `data` (for content already verified whole,
    /// such as `bundle.json`, whose own hash the signature and identity cover).
    pub fn verified(path: &str, data: Vec<u8>) -> StoreFile {
        StoreFile {
            path: path.into(),
            sha256: crate::hash::sha256_hex(&data),
            data,
        }
    }
}

/// Default state directory.
pub const DEFAULT_DIR: &str = "/var/lib/reemo-bundle";

/// Outcome of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GenResult {
    /// Being activated.
    Pending,
    /// Activated successfully.
    Succeeded,
    /// Activation failed and was reverted.
    Failed,
}

impl std::fmt::Display for GenResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GenResult::Pending => "pending",
            GenResult::Succeeded => "succeeded",
            GenResult::Failed => "failed",
        })
    }
}

/// A generation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// Number (1, 2, …).
    pub number: u64,
    /// Unix time of creation.
    pub created: u64,
    /// Outcome.
    pub result: GenResult,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The complete desired state.
    pub desired: DesiredStack,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// The exclusive lock; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Unix time now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Write `data` to `path` atomically (temp, fsync, rename, fsync dir).
pub use crate::fsutil::write_atomic_mode as atomic_write;

impl StateDir {
    /// Open (and create) the state directory. Creates nothing else.
    pub fn open(root: &Path) -> Result<StateDir> {
        for d in ["", "store", "secrets", "generations"] {
            let p = root.join(d);
            fs::create_dir_all(&p)
                .with_context(|| format!("creating state directory {}", p.display()))?;
            if d == "secrets" || d == "generations" {
                // generated secrets, and site values marked secret in the generations
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("restricting {} to its owner", p.display()))?;
            }
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// Open without creating anything (read-only commands on a fresh host).
    pub fn open_existing(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    /// Root path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the exclusive lock, or say who holds it.
    pub fn lock(&self) -> Result<Lock> {
        let path = self.root.join("lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an open descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another reemo-bundle command (pid {}) is working on {}; wait for it to finish",
                holder.trim(),
                self.root.display()
            );
        }
        f.set_len(0).ok();
        let _ = writeln!(f, "{}", std::process::id());
        Ok(Lock { _file: f })
    }

    fn gen_path(&self, n: u64) -> PathBuf {
        self.root.join("generations").join(format!("{n}.json"))
    }

    /// All generation records, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>> {
        let dir = self.root.join("generations");
        let mut v = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(n) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            v.push(self.generation(n)?);
        }
        v.sort_by_key(|g| g.number);
        Ok(v)
    }

    /// One generation record.
    pub fn generation(&self, n: u64) -> Result<Generation> {
        let p = self.gen_path(n);
        let data =
            fs::read(&p).with_context(|| format!("generation {n}: reading {}", p.display()))?;
        serde_json::from_slice(&data)
            .with_context(|| format!("generation {n}: parsing {}", p.display()))
    }

    /// Write a generation record.
    pub fn put_generation(&self, g: &Generation) -> Result<()> {
        let data = serde_json::to_vec_pretty(g)?;
        atomic_write(&self.gen_path(g.number), &data, 0o644)
            .with_context(|| format!("recording generation {}", g.number))
    }

    /// Remove a generation record.
    pub fn remove_generation(&self, n: u64) -> Result<()> {
        fs::remove_file(self.gen_path(n)).with_context(|| format!("removing generation {n}"))
    }

    /// Next free generation number.
    pub fn next_number(&self) -> Result<u64> {
        Ok(self
            .generations()?
            .last()
            .map(|g| g.number + 1)
            .unwrap_or(1))
    }

    /// Number of the current generation.
    pub fn current(&self) -> Result<Option<u64>> {
        let p = self.root.join("current");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().parse().with_context(|| {
                format!("{}: not a generation number", p.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The current generation record.
    pub fn current_generation(&self) -> Result<Option<Generation>> {
        self.current()?.map(|n| self.generation(n)).transpose()
    }

    /// Atomically switch `current`.
    pub fn set_current(&self, n: u64) -> Result<()> {
        atomic_write(
            &self.root.join("current"),
            format!("{n}\n").as_bytes(),
            0o644,
        )
        .with_context(|| format!("switching current to generation {n}"))
    }

    /// Directory of an imported bundle.
    pub fn store_path(&self, identity: &str) -> PathBuf {
        self.root.join("store").join(identity)
    }

    /// Identities present in the store.
    pub fn store_entries(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join("store")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !n.starts_with('.') {
                    v.push(n);
                }
            }
        }
        v.sort();
        Ok(v)
    }

    /// Import files of a verified bundle into `store/<identity>/` (all or nothing: written
    /// into a temp directory, fsynced, renamed). Every file is re-checked against the
    /// sha256 its manifest records, so that bytes read after verification (a bundle file
    /// changed on its medium meanwhile) never enter the store.
    pub fn import(&self, identity: &str, files: &[StoreFile]) -> Result<bool> {
        let dest = self.store_path(identity);
        if dest.is_dir() {
            return Ok(false);
        }
        for f in files {
            let got = crate::hash::sha256_hex(&f.data);
            if got != f.sha256 {
                bail!(
                    "importing bundle {identity}: {} has sha256 {got}, but its manifest says {}; the bundle file changed after it was verified, nothing was imported",
                    f.path,
                    f.sha256
                );
            }
        }
        let tmp = self
            .root
            .join("store")
            .join(format!(".{identity}.tmp-{}", std::process::id()));
        let res = (|| -> Result<()> {
            let _ = fs::remove_dir_all(&tmp);
            for StoreFile { path, data, .. } in files {
                let p = tmp.join(path);
                fs::create_dir_all(p.parent().context("entry without parent")?)?;
                let mut f = File::create(&p).with_context(|| format!("writing {}", p.display()))?;
                f.write_all(data)
                    .with_context(|| format!("writing {}", p.display()))?;
                f.sync_all()?;
            }
            crate::fsutil::sync_tree(&tmp)?;
            fs::rename(&tmp, &dest)?;
            crate::fsutil::sync_dir(&self.root.join("store"))?;
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e).with_context(|| {
                format!("importing bundle {identity} into {}", self.root.display())
            });
        }
        Ok(true)
    }

    /// Read a file of an imported bundle.
    pub fn store_file(&self, identity: &str, path: &str) -> Result<Vec<u8>> {
        let p = self.store_path(identity).join(path);
        fs::read(&p).with_context(|| format!("reading {} from the host store", p.display()))
    }

    /// Remove an imported bundle.
    pub fn remove_store(&self, identity: &str) -> Result<()> {
        fs::remove_dir_all(self.store_path(identity))
            .with_context(|| format!("removing store entry {identity}"))
    }

    /// A generated secret, if it exists.
    pub fn generated_secret(&self, key: &str) -> Result<Option<Vec<u8>>> {
        read_if_there(&self.root.join("secrets").join(key))
    }

    /// Store a generated secret (0600).
    pub fn put_generated_secret(&self, key: &str, data: &[u8]) -> Result<()> {
        atomic_write(&self.root.join("secrets").join(key), data, 0o600)
            .with_context(|| format!("storing generated secret {key}"))
    }

    /// A secret given as a site value, by the sha256 of its content.
    pub fn secret_value(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        read_if_there(&self.root.join("secrets/values").join(sha256))
    }

    /// Keep a secret given as a site value (0600), by the sha256 of its content.
    pub fn put_secret_value(&self, sha256: &str, data: &[u8]) -> Result<()> {
        let dir = self.root.join("secrets/values");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        atomic_write(&dir.join(sha256), data, 0o600).context("storing a secret site value")
    }

    /// The sha256s of the secret site values kept.
    pub fn secret_values(&self) -> Result<Vec<String>> {
        let dir = self.root.join("secrets/values");
        match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<_>>>()
                .with_context(|| format!("listing {}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
        }
    }

    /// Forget a secret site value no generation names any more.
    pub fn remove_secret_value(&self, sha256: &str) -> Result<()> {
        let p = self.root.join("secrets/values").join(sha256);
        fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
    }

    /// Path of a generated secret (for operators and tests).
    pub fn generated_secret_path(&self, key: &str) -> PathBuf {
        self.root.join("secrets").join(key)
    }
}

/// The bytes of file `p`; `None` when it does not exist.
fn read_if_there(p: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(p) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        atomic_write(&p, b"one", 0o644).unwrap();
        atomic_write(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let l = s.lock().unwrap();
        let e = s.lock().unwrap_err().to_string();
        assert!(e.contains("another reemo-bundle command"), "{e}");
        drop(l);
        s.lock().unwrap();
    }

    #[test]
    fn current_and_import() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert_eq!(s.current().unwrap(), None);
        s.set_current(3).unwrap();
        assert_eq!(s.current().unwrap(), Some(3));
        assert!(s
            .import("abc", &[StoreFile::verified("configs/a", b"x".to_vec())])
            .unwrap());
        assert!(!s.import("abc", &[]).unwrap());
        assert_eq!(s.store_file("abc", "configs/a").unwrap(), b"x");
        assert_eq!(s.store_entries().unwrap(), vec!["abc"]);
    }
}
