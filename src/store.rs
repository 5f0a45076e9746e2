//! The content-addressed build store: one folder per identity under `objects/`, published
//! by an atomic rename of a fully written temporary folder, so that concurrent builds on the
//! same store never see (or leave) a half-written entry. Also a cache of compressed layers
//! keyed by their uncompressed digest, so a layer is never recompressed.

use std::collections::BTreeMap;
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
        for sub in ["objects", "tmp", "locks", "layers", "fixed/sha256"] {
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

    /// Publish a fully written folder as entry `id`: fsync every file and folder in it, then
    /// write and fsync a completion marker recording each file's size and mtime, then rename
    /// it into `objects/` and fsync that. A marked entry is therefore never half-written after
    /// a power loss. If another build published the same identity first, ours is discarded.
    pub fn publish(&self, id: &str, dir: tempfile::TempDir) -> Result<PathBuf> {
        crate::fsutil::sync_tree(dir.path())
            .with_context(|| format!("syncing store entry {id} before publishing it"))?;
        let record = Record::of(dir.path())?;
        let marker = dir.path().join(MARKER);
        let mut f = File::create(&marker).context("writing store completion marker")?;
        std::io::Write::write_all(
            &mut f,
            &serde_json::to_vec(&record).expect("a record serialises"),
        )
        .and_then(|()| f.sync_all())
        .context("writing store completion marker")?;
        crate::fsutil::sync_dir(dir.path())?;
        let dest = self.object(id);
        let src = dir.keep();
        match fs::rename(&src, &dest) {
            Ok(()) => {
                crate::fsutil::sync_dir(&self.root.join("objects"))?;
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

    /// Whether the published entry `id` still holds what was recorded when it was published
    /// (every file present with its recorded size and mtime, nothing added). `Ok(None)` when it
    /// does; `Ok(Some(why))` names the first difference; an entry that is not published is an
    /// error.
    pub fn check(&self, id: &str) -> Result<Option<String>> {
        let dir = self.object(id);
        let text = fs::read(dir.join(MARKER))
            .with_context(|| format!("reading the completion marker of store entry {id}"))?;
        let Ok(recorded) = serde_json::from_slice::<Record>(&text) else {
            return Ok(Some(
                "its completion marker records no file sizes (written by an older reemo-bundle)"
                    .into(),
            ));
        };
        let found = Record::of(&dir)?;
        Ok(recorded.difference(&found))
    }

    /// Take a published entry out of the store (renamed away first, so that no reader sees it
    /// half-removed).
    pub fn evict(&self, id: &str) -> Result<()> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("evict-{id}-{}", std::process::id()));
        fs::rename(self.object(id), &tmp).with_context(|| format!("removing store entry {id}"))?;
        crate::fsutil::sync_dir(&self.root.join("objects"))?;
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))
    }

    /// Path of a cached compressed layer, by the hex digest of its uncompressed tar.
    pub fn layer_cache(&self, diff_id_hex: &str) -> PathBuf {
        self.root.join("layers").join(diff_id_hex)
    }

    /// Path of a fixed input (a locked `.deb`) kept in the store by its sha256 (hex).
    pub fn fixed_input(&self, sha256: &str) -> PathBuf {
        self.root.join("fixed").join("sha256").join(sha256)
    }

    /// Keep `data` as the fixed input `sha256`: checked first (a mismatch is an error naming
    /// `what` and both hashes, and nothing is written), then written atomically.
    pub fn put_fixed(&self, sha256: &str, data: &[u8], what: &str) -> Result<PathBuf> {
        let found = crate::hash::sha256_hex(data);
        anyhow::ensure!(
            found == sha256,
            "{what}: sha256 {found}, but the lock says {sha256} (nothing stored)"
        );
        let p = self.fixed_input(sha256);
        crate::fsutil::write_atomic(&p, data)?;
        Ok(p)
    }

    /// Cargo target folder used for binary recipes of this store.
    pub fn cargo_target(&self) -> PathBuf {
        self.root.join("cargo-target")
    }
}

/// Name of the completion marker of a store entry.
const MARKER: &str = ".complete";

/// What a store entry held when it was published: relative path → (size, mtime in ns).
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    files: BTreeMap<String, (u64, i128)>,
}

impl Record {
    fn of(dir: &Path) -> Result<Record> {
        let mut files = BTreeMap::new();
        walk(dir, "", &mut files)?;
        files.remove(MARKER);
        Ok(Record { files })
    }

    fn difference(&self, found: &Record) -> Option<String> {
        for (path, (size, mtime)) in &self.files {
            match found.files.get(path) {
                None => return Some(format!("{path} is missing")),
                Some((s, _)) if s != size => {
                    return Some(format!("{path} is {s} bytes, {size} when it was stored"))
                }
                Some((_, m)) if m != mtime => {
                    return Some(format!("{path} was modified after it was stored"))
                }
                _ => {}
            }
        }
        found
            .files
            .keys()
            .find(|p| !self.files.contains_key(*p))
            .map(|p| format!("{p} was added after it was stored"))
    }
}

fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, (u64, i128)>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let md = fs::symlink_metadata(e.path())
            .with_context(|| format!("reading {}", e.path().display()))?;
        if md.is_dir() {
            walk(&e.path(), &rel, out)?;
        } else {
            let mtime = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
            out.insert(rel, (md.len(), mtime));
        }
    }
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
        assert_eq!(s.check("abc").unwrap(), None);
    }

    #[test]
    fn check_finds_every_change_after_publishing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let publish = |id: &str| {
            let t = s.temp_dir().unwrap();
            fs::create_dir(t.path().join("sub")).unwrap();
            fs::write(t.path().join("sub/out"), b"12345").unwrap();
            s.publish(id, t).unwrap()
        };
        let o = publish("a");
        fs::write(o.join("sub/out"), b"123").unwrap();
        assert_eq!(
            s.check("a").unwrap().unwrap(),
            "sub/out is 3 bytes, 5 when it was stored"
        );
        let o = publish("b");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(o.join("sub/out"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            s.check("b").unwrap().unwrap(),
            "sub/out was modified after it was stored"
        );
        let o = publish("c");
        fs::remove_file(o.join("sub/out")).unwrap();
        assert_eq!(s.check("c").unwrap().unwrap(), "sub/out is missing");
        let o = publish("d");
        fs::write(o.join("new"), b"").unwrap();
        assert_eq!(
            s.check("d").unwrap().unwrap(),
            "new was added after it was stored"
        );
        // an entry of an older version has an empty marker: reported, so it is rebuilt
        let o = publish("e");
        fs::write(o.join(".complete"), b"").unwrap();
        assert!(s.check("e").unwrap().unwrap().contains("older"));
        s.evict("e").unwrap();
        assert!(!s.has("e"));
    }
}
