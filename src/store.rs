//! The content-addressed build store: one folder per identity under `objects/`, published
//! by an atomic rename of a fully written temporary folder, so that concurrent builds on the
//! same store never see (or leave) a half-written entry. Also a cache of compressed layers
//! keyed by their uncompressed digest, so a layer is never recompressed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A store folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive advisory lock on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Block until the lock on `path` is held.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a valid, owned descriptor has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(FileLock { _file: file })
    }
}

/// Default store location: `$XDG_CACHE_HOME/reemo-bundle/store` or
/// `~/.cache/reemo-bundle/store`.
pub fn default_store_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("reemo-bundle").join("store")
}

impl Store {
    /// Open (creating) a store folder.
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["objects", "tmp", "locks", "layers"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating store folder {}", root.join(sub).display()))?;
        }
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving store {}", root.display()))?;
        Ok(Store { root })
    }

    /// Store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of a published entry.
    pub fn object(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(id)
    }

    /// Whether an entry is published.
    pub fn has(&self, id: &str) -> bool {
        self.object(id).join(".complete").exists()
    }

    /// Lock one identity while building it, so two builds do not do the same work.
    pub fn lock(&self, id: &str) -> Result<FileLock> {
        FileLock::acquire(&self.root.join("locks").join(format!("{id}.lock")))
    }

    /// A fresh temporary folder inside the store (same file system as `objects/`).
    pub fn temp_dir(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(self.root.join("tmp"))
            .context("creating a temporary folder in the store")
    }

    /// Publish a fully written folder as entry `id`: fsync a completion marker, then rename.
    /// If another build published the same identity first, ours is discarded.
    pub fn publish(&self, id: &str, dir: tempfile::TempDir) -> Result<PathBuf> {
        let marker = dir.path().join(".complete");
        let f = File::create(&marker).context("writing store completion marker")?;
        f.sync_all().context("syncing store completion marker")?;
        let dest = self.object(id);
        let src = dir.keep();
        match fs::rename(&src, &dest) {
            Ok(()) => {
                if let Ok(d) = File::open(self.root.join("objects")) {
                    let _ = d.sync_all();
                }
                Ok(dest)
            }
            Err(_) if self.has(id) => {
                let _ = fs::remove_dir_all(&src);
                Ok(dest)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&src);
                Err(e).with_context(|| format!("publishing store entry {id}"))
            }
        }
    }

    /// Path of a cached compressed layer, by the hex digest of its uncompressed tar.
    pub fn layer_cache(&self, diff_id_hex: &str) -> PathBuf {
        self.root.join("layers").join(diff_id_hex)
    }

    /// Cargo target folder used for binary recipes of this store.
    pub fn cargo_target(&self) -> PathBuf {
        self.root.join("cargo-target")
    }
}

/// The folder `path` goes into (`.` for a bare file name, whose parent is empty).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Write a file atomically: temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = parent_dir(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_is_atomic_and_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(!s.has("abc"));
        let t = s.temp_dir().unwrap();
        fs::write(t.path().join("out"), b"1").unwrap();
        s.publish("abc", t).unwrap();
        assert!(s.has("abc"));
        // A second builder that lost the race keeps the first result.
        let t2 = s.temp_dir().unwrap();
        fs::write(t2.path().join("out"), b"2").unwrap();
        let p = s.publish("abc", t2).unwrap();
        assert_eq!(fs::read(p.join("out")).unwrap(), b"1");
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }
}
