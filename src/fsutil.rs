//! Durable file-system writes, in one place: every file this tool publishes (store entries,
//! state files, bundle files, key files, build outputs) is written under a temporary name in
//! the folder it goes to, fsynced, renamed over its final name, and the folder is fsynced, so
//! that after a crash or a power loss a reader finds either the old content or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// The folder `path` goes into (`.` for a bare file name, whose parent is empty).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `path` with `.` components dropped and `dir/..` pairs folded, without touching the
/// file system (`bundles/../recipes/x` → `recipes/x`); a leading `..` stays.
pub fn normalize(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return std::path::PathBuf::from(".");
    }
    out.iter().collect()
}

/// fsync a folder, so that the names created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))
}

/// A temporary file in `dir` created with `mode` (before any data is in it).
pub fn temp_in(dir: &Path, mode: u32) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".tmp-")
        .make_in(dir, |p| {
            OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(mode)
                .open(p)
        })
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// A temporary file beside `dest`, to be [`persist`]ed as `dest`.
pub fn temp_beside(dest: &Path, mode: u32) -> Result<tempfile::NamedTempFile> {
    temp_in(parent_dir(dest), mode)
}

/// fsync a written temporary file, rename it to `dest` and fsync the folder.
pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", dest.display()))?;
    sync_dir(parent_dir(dest))
}

/// Write `data` to `path` atomically with `mode`.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut tmp = temp_beside(path, mode)?;
    tmp.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    persist(tmp, path)
}

/// Write `data` to `path` atomically (mode 0644).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// fsync every file and folder under `root` (and `root` itself), deepest first.
pub fn sync_tree(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        let p = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("reading {}", p.display()))?;
        if kind.is_dir() {
            sync_tree(&p)?;
        } else if kind.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
        }
    }
    sync_dir(root)
}

/// Clone `src` into `dst` (an open, empty file) without copying its blocks when the file
/// system shares extents (btrfs, XFS: `FICLONE`); false when it cannot.
fn reflink(src: &File, dst: &File) -> bool {
    use std::os::fd::AsRawFd;
    // _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE reads the source descriptor number passed by value; both descriptors
    // are owned and open for the duration of the call.
    unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) == 0 }
}

/// Put an independent copy of `src` at `dest` atomically (a reflink where the file system
/// supports it, else a copy): later edits of either file never show in the other.
pub fn copy_atomic(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let tmp = temp_beside(dest, mode)?;
    if !reflink(&from, tmp.as_file()) {
        let mut from = &from;
        std::io::copy(&mut from, &mut tmp.as_file())
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    }
    persist(tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn atomic_writes_leave_no_temporary_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a");
        write_atomic_mode(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        let e = write_atomic(&d.path().join("missing/x"), b"").unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
    }

    #[test]
    fn paths_are_normalised_lexically() {
        for (p, want) in [
            ("bundles/../recipes/x", "recipes/x"),
            ("./a/./b", "a/b"),
            ("../a", "../a"),
            ("/x/../../y", "/y"),
            ("a/..", "."),
        ] {
            assert_eq!(normalize(Path::new(p)), Path::new(want), "{p}");
        }
    }

    #[test]
    fn a_copy_is_independent_of_its_source() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        fs::write(&a, vec![5u8; 100_000]).unwrap();
        copy_atomic(&a, &b, 0o644).unwrap();
        assert_ne!(
            fs::metadata(&a).unwrap().ino(),
            fs::metadata(&b).unwrap().ino()
        );
        fs::OpenOptions::new()
            .write(true)
            .open(&b)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(fs::read(&a).unwrap(), vec![5u8; 100_000]);
        sync_tree(d.path()).unwrap();
    }
}
