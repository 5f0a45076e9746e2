//! Writing a bundle file: `bundle.json` first, then every file sorted by path, with fixed
//! tar headers (mode 0644/0755, uid/gid 0, mtime SOURCE_DATE_EPOCH), into a temporary file
//! that is fsynced and renamed only when complete.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::manifest::{BundleManifest, FileEntry, MANIFEST_NAME};

/// Where a bundle file's content comes from.
pub enum Source {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file on disk (streamed).
    File(PathBuf),
}

/// A file to put into the bundle.
pub struct BundleItem {
    /// Manifest entry (path, hash, size, executable).
    pub entry: FileEntry,
    /// Its content.
    pub source: Source,
}

fn header(size: u64, executable: bool, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(if executable { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h
}

/// Write the bundle to `dest` atomically. `items` must match `manifest.files` one to one.
pub fn write_bundle(
    dest: &Path,
    manifest: &BundleManifest,
    items: &[BundleItem],
    mtime: u64,
) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let manifest_bytes = manifest_bytes(manifest);
    {
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
        let mut h = header(manifest_bytes.len() as u64, false, mtime);
        b.append_data(&mut h, MANIFEST_NAME, manifest_bytes.as_slice())
            .context("writing bundle.json")?;
        for item in items {
            let e = &item.entry;
            let mut h = header(e.size, e.executable, mtime);
            match &item.source {
                Source::Bytes(data) => b.append_data(&mut h, &e.path, data.as_slice()),
                Source::File(p) => {
                    let f = std::fs::File::open(p)
                        .with_context(|| format!("opening {} for {}", p.display(), e.path))?;
                    b.append_data(&mut h, &e.path, f.take(e.size))
                }
            }
            .with_context(|| format!("writing {} into the bundle", e.path))?;
        }
        let mut w = b.into_inner().context("finishing the bundle tar")?;
        w.flush().context("flushing the bundle")?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .context("setting bundle permissions")?;
    }
    tmp.as_file().sync_all().context("syncing the bundle")?;
    tmp.persist(dest)
        .with_context(|| format!("renaming the bundle into {}", dest.display()))?;
    Ok(())
}

/// The exact bytes of `bundle.json` for a manifest (pretty, trailing newline).
pub fn manifest_bytes(manifest: &BundleManifest) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(manifest).expect("serialising a manifest cannot fail");
    v.push(b'\n');
    v
}
