//! Writing a bundle file: `bundle.json` first, then every file sorted by path, with the fixed
//! tar headers of [`super::tarfmt`] (mode 0644/0755, owner 0:0, mtime SOURCE_DATE_EPOCH), into
//! a temporary file that is fsynced and renamed only when complete. Also re-packs a verified bundle with a new
//! `bundle.json.sig` entry, every other byte copied unchanged.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use sha2::{Digest, Sha256};

use super::manifest::{BundleManifest, FileEntry, MANIFEST_NAME, SIGNATURE_NAME};
use super::reader::BundleFile;
use super::tarfmt::{entry_header, padding, BLOCK, END_MARKER};
use crate::fsutil;

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

/// Write one entry: its header, its data, its padding.
fn write_entry(
    w: &mut impl Write,
    path: &str,
    data: &mut dyn Read,
    size: u64,
    executable: bool,
    mtime: u64,
) -> Result<()> {
    let h = entry_header(path, size, executable, mtime).map_err(anyhow::Error::msg)?;
    w.write_all(&h)?;
    let n = std::io::copy(&mut data.take(size), w)?;
    anyhow::ensure!(n == size, "{path}: {n} bytes read, {size} expected");
    w.write_all(&[0u8; BLOCK][..padding(size)])?;
    Ok(())
}

/// Write the bundle to `dest` atomically. `items` must match `manifest.files` one to one,
/// and `mtime` must be the manifest's.
pub fn write_bundle(
    dest: &Path,
    manifest: &BundleManifest,
    items: &[BundleItem],
    mtime: u64,
) -> Result<()> {
    anyhow::ensure!(
        manifest.mtime == Some(mtime),
        "bundle.json records mtime {:?}, the entries would get {mtime}",
        manifest.mtime
    );
    let tmp = fsutil::temp_beside(dest, 0o644)?;
    let manifest_bytes = manifest_bytes(manifest);
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        write_entry(
            &mut w,
            MANIFEST_NAME,
            &mut manifest_bytes.as_slice(),
            manifest_bytes.len() as u64,
            false,
            mtime,
        )
        .context("writing bundle.json")?;
        for item in items {
            let e = &item.entry;
            match &item.source {
                Source::Bytes(data) => write_entry(
                    &mut w,
                    &e.path,
                    &mut data.as_slice(),
                    e.size,
                    e.executable,
                    mtime,
                ),
                Source::File(p) => {
                    let mut f = std::fs::File::open(p)
                        .with_context(|| format!("opening {} for {}", p.display(), e.path))?;
                    write_entry(&mut w, &e.path, &mut f, e.size, e.executable, mtime)
                }
            }
            .with_context(|| format!("writing {} into the bundle", e.path))?;
        }
        w.write_all(&[0u8; END_MARKER])
            .and_then(|()| w.flush())
            .context("finishing the bundle tar")?;
    }
    fsutil::persist(tmp, dest).context("writing the bundle")
}

/// The exact bytes of `bundle.json` for a manifest (pretty, trailing newline).
pub fn manifest_bytes(manifest: &BundleManifest) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(manifest).expect("serialising a manifest cannot fail");
    v.push(b'\n');
    v
}

/// Write a copy of the verified `bundle` to `dest` with `signature` as its `bundle.json.sig`
/// entry (second in the tar, replacing any it has; none when `signature` is None). The
/// manifest and every other entry are copied byte for byte, so signing keeps the bundle's
/// content and signing again with the same key gives the same file. Written to a temporary
/// file in `dest`'s folder, verified again, fsynced and renamed: `dest` may be the bundle
/// itself. Returns the new file's sha256 (hex).
pub fn write_with_signature(
    bundle: &BundleFile,
    dest: &Path,
    signature: Option<&[u8]>,
) -> Result<String> {
    let src_path = bundle.path();
    let layout = bundle.layout();
    let tmp = fsutil::temp_beside(dest, 0o644)?;
    let mut src =
        std::fs::File::open(src_path).with_context(|| format!("opening {}", src_path.display()))?;
    let mut hasher = Sha256::new();
    {
        let mut out = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, tmp.as_file()),
            hasher: &mut hasher,
        };
        let copy_err = || {
            format!(
                "copying {} into {}",
                src_path.display(),
                tmp.path().display()
            )
        };
        let head = std::io::copy(&mut (&mut src).take(layout.manifest_end), &mut out)
            .with_context(copy_err)?;
        anyhow::ensure!(
            head == layout.manifest_end,
            "{} changed since it was verified (shorter than its bundle.json entry)",
            src_path.display()
        );
        if let Some(sig) = signature {
            write_entry(
                &mut out,
                SIGNATURE_NAME,
                &mut &sig[..],
                sig.len() as u64,
                false,
                layout.mtime,
            )
            .with_context(|| format!("writing {SIGNATURE_NAME}"))?;
        }
        let rest = layout.signature_end.unwrap_or(layout.manifest_end);
        std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(rest))
            .with_context(|| format!("reading {}", src_path.display()))?;
        std::io::copy(&mut src, &mut out).with_context(copy_err)?;
        out.inner.flush().context("flushing the bundle")?;
    }
    tmp.as_file().sync_all().context("syncing the bundle")?;
    // Nothing becomes visible before the copy verifies as a whole, with the entry we wrote.
    let check = BundleFile::open(tmp.path())
        .with_context(|| format!("verifying the re-packed copy of {}", src_path.display()))?;
    anyhow::ensure!(
        check.manifest_bytes() == bundle.manifest_bytes() && check.signature() == signature,
        "{} changed while it was being re-packed",
        src_path.display()
    );
    fsutil::persist(tmp, dest)?;
    Ok(hex::encode(hasher.finalize()))
}

struct HashingWriter<'a, W: Write> {
    inner: W,
    hasher: &'a mut Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::BUNDLE_FORMAT;
    use crate::hash::sha256_hex;
    use crate::sign::{evaluate, SecretKey, TrustedKey, Verdict};

    /// A small bundle with a few files (one of them a long name, one larger than a block).
    fn small_bundle(dir: &Path) -> PathBuf {
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("configs/a.conf", b"a=1\n".to_vec()),
            (
                "oci/blobs/sha256/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                vec![7u8; 1300],
            ),
            ("stack/docker-stack.yml", b"version: \"3.8\"\n".to_vec()),
        ];
        let items: Vec<BundleItem> = files
            .into_iter()
            .map(|(p, d)| BundleItem {
                entry: FileEntry {
                    path: p.into(),
                    sha256: sha256_hex(&d),
                    size: d.len() as u64,
                    executable: false,
                },
                source: Source::Bytes(d),
            })
            .collect();
        let manifest = BundleManifest {
            format: BUNDLE_FORMAT,
            mtime: Some(1_700_000_000),
            name: "t".into(),
            version: "1.0.0".into(),
            identity: "ab".repeat(32),
            stack: "t".into(),
            stack_file: "stack/docker-stack.yml".into(),
            pinned: Default::default(),
            images: vec![],
            services: vec![],
            files: items.iter().map(|i| i.entry.clone()).collect(),
            inputs: vec![],
            parameters: vec![],
        };
        let dest = dir.join("t.bundle");
        write_bundle(&dest, &manifest, &items, 1_700_000_000).unwrap();
        dest
    }

    #[test]
    fn sign_resign_and_unsign_keep_every_other_byte() {
        let d = tempfile::tempdir().unwrap();
        let plain = small_bundle(d.path());
        let plain_bytes = std::fs::read(&plain).unwrap();
        let b = BundleFile::open(&plain).unwrap();
        assert_eq!(b.signature(), None);
        let (k1, k2) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
        );

        let signed = d.path().join("signed.bundle");
        let sig1 = k1.sign_manifest(b.manifest_bytes());
        let sha = write_with_signature(&b, &signed, Some(&sig1)).unwrap();
        let signed_bytes = std::fs::read(&signed).unwrap();
        assert_eq!(sha, sha256_hex(&signed_bytes));
        let s = BundleFile::open(&signed).unwrap();
        assert_eq!(s.signature(), Some(sig1.as_slice()));
        assert_eq!(s.manifest_bytes(), b.manifest_bytes());
        // the signature entry is inserted right after bundle.json: the rest is unchanged
        let head = b.layout().manifest_end as usize;
        let sig_end = s.layout().signature_end.unwrap() as usize;
        assert_eq!(signed_bytes[..head], plain_bytes[..head]);
        assert_eq!(signed_bytes[sig_end..], plain_bytes[head..]);
        assert_eq!(
            evaluate(s.manifest_bytes(), s.signature(), &[]),
            Ok(Verdict::SignedUnchecked {
                key_id: k1.key_id()
            })
        );
        // deterministic: signing again gives the same file
        let again = d.path().join("again.bundle");
        write_with_signature(&b, &again, Some(&sig1)).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), signed_bytes);

        // re-signing in place with another key replaces the entry
        let sig2 = k2.sign_manifest(s.manifest_bytes());
        write_with_signature(&s, &signed, Some(&sig2)).unwrap();
        let s2 = BundleFile::open(&signed).unwrap();
        let trusted = [TrustedKey {
            key: k2.public(),
            source: "k2.pub".into(),
        }];
        assert!(matches!(
            evaluate(s2.manifest_bytes(), s2.signature(), &trusted),
            Ok(Verdict::Trusted { .. })
        ));

        // removing the signature gives back the unsigned bundle, byte for byte
        let unsigned = d.path().join("unsigned.bundle");
        write_with_signature(&s2, &unsigned, None).unwrap();
        assert_eq!(std::fs::read(&unsigned).unwrap(), plain_bytes);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "no temporary files left: {names:?}");
    }

    #[test]
    fn oversized_or_misplaced_signature_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        let plain = small_bundle(d.path());
        let b = BundleFile::open(&plain).unwrap();
        let big = d.path().join("big.bundle");
        let e = write_with_signature(&b, &big, Some(&[b'x'; 5000])).unwrap_err();
        assert!(
            format!("{e:#}").contains("5000 bytes is too large for a signature"),
            "{e:#}"
        );
        assert!(
            !big.exists(),
            "a copy that does not verify is never renamed into place"
        );
        // a signature entry after a file entry is not the detached signature
        let mut data = Vec::new();
        for (name, body) in [
            ("bundle.json", b.manifest_bytes().to_vec()),
            ("configs/a.conf", b"a=1\n".to_vec()),
            ("bundle.json.sig", b"x".to_vec()),
        ] {
            let size = body.len() as u64;
            write_entry(&mut data, name, &mut &body[..], size, false, 1_700_000_000).unwrap();
        }
        data.extend_from_slice(&[0u8; END_MARKER]);
        let late = d.path().join("late.bundle");
        std::fs::write(&late, data).unwrap();
        let e = BundleFile::open(&late).map(|_| ());
        assert_eq!(
            e.unwrap_err().to_string(),
            "entry \"bundle.json.sig\": not listed in bundle.json"
        );
    }
}
