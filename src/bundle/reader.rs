//! Reading a bundle file: one streaming pass that checks the structure and every hash
//! against `bundle.json`, and an index of entry offsets so that later steps (image loading)
//! can stream single entries straight out of the uncompressed tar without unpacking it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::manifest::{BundleManifest, BUNDLE_FORMAT, MANIFEST_NAME, SIGNATURE_NAME};

/// Largest `bundle.json` accepted (a manifest is a few KiB; this bounds a hostile one).
const MAX_MANIFEST_SIZE: u64 = 16 << 20;
/// Largest `bundle.json.sig` accepted (one is about 250 bytes).
const MAX_SIGNATURE_SIZE: u64 = 4096;

/// Why a bundle file was rejected; every variant names the entry at fault.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The file could not be opened or read at all.
    #[error("cannot read bundle {path}: {source}")]
    Io {
        /// Bundle file path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The tar structure itself is broken (bad header, checksum) around an entry.
    #[error("malformed tar after entry {after:?}: {reason}")]
    Malformed {
        /// Last good entry, if any.
        after: Option<String>,
        /// What the tar reader said.
        reason: String,
    },
    /// The first entry is not `bundle.json`.
    #[error("first entry is {found:?}, expected bundle.json")]
    ManifestNotFirst {
        /// What was found instead.
        found: String,
    },
    /// `bundle.json` does not parse or has an unsupported format.
    #[error("bundle.json: {0}")]
    BadManifest(String),
    /// An entry name is absolute, contains `..`, or is otherwise unsafe.
    #[error("entry {path:?}: unsafe path ({why})")]
    UnsafePath {
        /// Entry name as found.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A link entry points outside the bundle root.
    #[error("entry {path:?}: link to {target:?} escapes the bundle root")]
    LinkEscapes {
        /// Entry name.
        path: String,
        /// Link target.
        target: String,
    },
    /// An entry of a type bundles never contain (link, device, fifo, directory).
    #[error("entry {path:?}: unexpected entry type {kind}")]
    UnexpectedType {
        /// Entry name.
        path: String,
        /// Type description.
        kind: String,
    },
    /// An entry not listed in `bundle.json`, or listed twice in the tar.
    #[error("entry {path:?}: not listed in bundle.json")]
    UnexpectedEntry {
        /// Entry name.
        path: String,
    },
    /// An entry appears twice.
    #[error("entry {path:?}: appears twice")]
    Duplicate {
        /// Entry name.
        path: String,
    },
    /// Size in the tar disagrees with `bundle.json`.
    #[error("entry {path:?}: size {found} does not match bundle.json ({expected})")]
    SizeMismatch {
        /// Entry name.
        path: String,
        /// Size in the manifest.
        expected: u64,
        /// Size in the tar header.
        found: u64,
    },
    /// Content hash disagrees with `bundle.json`.
    #[error("entry {path:?}: sha256 {found} does not match bundle.json ({expected})")]
    DigestMismatch {
        /// Entry name.
        path: String,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the content.
        found: String,
    },
    /// The file ends inside an entry.
    #[error("entry {path:?}: truncated ({reason})")]
    Truncated {
        /// Entry name.
        path: String,
        /// Reader error.
        reason: String,
    },
    /// The signature entry is larger than any signature.
    #[error("entry \"bundle.json.sig\": {size} bytes is too large for a signature (at most {MAX_SIGNATURE_SIZE})")]
    SignatureTooLarge {
        /// Its size.
        size: u64,
    },
    /// A file listed in `bundle.json` is absent.
    #[error("entry {path:?}: listed in bundle.json but missing from the bundle")]
    Missing {
        /// Entry name.
        path: String,
    },
}

/// Where an entry's data lies in the bundle file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryLoc {
    /// Byte offset of the data.
    pub offset: u64,
    /// Data size in bytes.
    pub size: u64,
}

/// A bundle file that passed verification.
#[derive(Debug)]
pub struct BundleFile {
    path: PathBuf,
    manifest: BundleManifest,
    manifest_bytes: Vec<u8>,
    signature: Option<Vec<u8>>,
    entries: BTreeMap<String, EntryLoc>,
    layout: Layout,
}

/// Where the head entries end in the bundle file (for re-packing with another signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// End of the `bundle.json` entry (its headers start at 0; data padded to 512).
    pub manifest_end: u64,
    /// End of the `bundle.json.sig` entry, if there is one (it starts at `manifest_end`).
    pub signature_end: Option<u64>,
    /// mtime of the `bundle.json` header (SOURCE_DATE_EPOCH of the build).
    pub mtime: u64,
}

fn padded_end(offset: u64, size: u64) -> u64 {
    offset + size.div_ceil(512) * 512
}

/// Check that an entry name is a plain relative path inside the root.
pub fn check_entry_path(path: &str) -> Result<(), VerifyError> {
    let bad = |why| {
        Err(VerifyError::UnsafePath {
            path: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return bad("empty name");
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    if path.contains('\\') || path.contains('\0') {
        return bad("backslash or NUL in name");
    }
    for part in path.split('/') {
        match part {
            ".." => return bad("parent directory component"),
            "" | "." => return bad("empty or '.' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a link at `path` pointing to `target` stays inside the root.
fn link_stays_inside(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: i64 = path.split('/').count() as i64 - 1;
    for part in target.split('/') {
        match part {
            ".." => depth -= 1,
            "" | "." => {}
            _ => depth += 1,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl BundleFile {
    /// Open `path`, read it once from start to end and check every entry against the
    /// manifest. Returns the first problem found, naming the entry.
    pub fn open(path: &Path) -> Result<Self, VerifyError> {
        let io = |source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
        let malformed = |after: &Option<String>, e: std::io::Error| VerifyError::Malformed {
            after: after.clone(),
            reason: e.to_string(),
        };
        let mut last: Option<String> = None;
        let mut manifest: Option<(BundleManifest, Vec<u8>)> = None;
        let mut signature = None;
        let mut layout = Layout {
            manifest_end: 0,
            signature_end: None,
            mtime: 0,
        };
        let mut entries = BTreeMap::new();
        let iter = archive.entries().map_err(|e| malformed(&last, e))?;
        let mut buf = vec![0u8; 1 << 20];
        for entry in iter {
            let mut entry = entry.map_err(|e| malformed(&last, e))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            check_entry_path(&name)?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if !link_stays_inside(&name, &target) {
                    return Err(VerifyError::LinkEscapes { path: name, target });
                }
                return Err(VerifyError::UnexpectedType {
                    path: name,
                    kind: "link".into(),
                });
            }
            if !kind.is_file() {
                return Err(VerifyError::UnexpectedType {
                    path: name,
                    kind: format!("{kind:?}"),
                });
            }
            let size = entry.header().size().map_err(|e| malformed(&last, e))?;
            let offset = entry.raw_file_position();
            let truncated = |e: std::io::Error, name: &str| VerifyError::Truncated {
                path: name.to_string(),
                reason: e.to_string(),
            };
            match (&manifest, name.as_str()) {
                (None, MANIFEST_NAME) => {
                    if size > MAX_MANIFEST_SIZE {
                        return Err(VerifyError::BadManifest(format!(
                            "too large ({size} bytes)"
                        )));
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(|e| truncated(e, &name))?;
                    if bytes.len() as u64 != size {
                        return Err(VerifyError::Truncated {
                            path: name,
                            reason: "short read".into(),
                        });
                    }
                    let m: BundleManifest = serde_json::from_slice(&bytes)
                        .map_err(|e| VerifyError::BadManifest(e.to_string()))?;
                    if m.format != BUNDLE_FORMAT {
                        return Err(VerifyError::BadManifest(format!(
                            "format {} is not supported (this loader reads format {BUNDLE_FORMAT})",
                            m.format
                        )));
                    }
                    for f in &m.files {
                        check_entry_path(&f.path)?;
                    }
                    if m.files.windows(2).any(|w| w[0].path >= w[1].path) {
                        return Err(VerifyError::BadManifest(
                            "files are not sorted by path or not unique".into(),
                        ));
                    }
                    manifest = Some((m, bytes));
                    layout.manifest_end = padded_end(offset, size);
                    layout.mtime = entry.header().mtime().map_err(|e| malformed(&last, e))?;
                }
                (None, other) => {
                    return Err(VerifyError::ManifestNotFirst {
                        found: other.to_string(),
                    })
                }
                (Some(_), SIGNATURE_NAME) if signature.is_none() && entries.is_empty() => {
                    if size > MAX_SIGNATURE_SIZE {
                        return Err(VerifyError::SignatureTooLarge { size });
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(|e| truncated(e, &name))?;
                    if bytes.len() as u64 != size {
                        return Err(VerifyError::Truncated {
                            path: name,
                            reason: "short read".into(),
                        });
                    }
                    signature = Some(bytes);
                    layout.signature_end = Some(padded_end(offset, size));
                }
                (Some((m, _)), _) => {
                    let Some(expect) = m.file(&name) else {
                        return Err(VerifyError::UnexpectedEntry { path: name });
                    };
                    if entries.contains_key(&name) {
                        return Err(VerifyError::Duplicate { path: name });
                    }
                    if size != expect.size {
                        return Err(VerifyError::SizeMismatch {
                            path: name,
                            expected: expect.size,
                            found: size,
                        });
                    }
                    let mut hasher = Sha256::new();
                    let mut seen = 0u64;
                    loop {
                        let n = entry.read(&mut buf).map_err(|e| truncated(e, &name))?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        seen += n as u64;
                    }
                    if seen != size {
                        return Err(VerifyError::Truncated {
                            path: name,
                            reason: format!("{seen} of {size} bytes present"),
                        });
                    }
                    let found = hex::encode(hasher.finalize());
                    if found != expect.sha256 {
                        return Err(VerifyError::DigestMismatch {
                            path: name,
                            expected: expect.sha256.clone(),
                            found,
                        });
                    }
                    entries.insert(name.clone(), EntryLoc { offset, size });
                }
            }
            last = Some(name);
        }
        let Some((manifest, manifest_bytes)) = manifest else {
            return Err(VerifyError::Missing {
                path: MANIFEST_NAME.into(),
            });
        };
        if let Some(f) = manifest
            .files
            .iter()
            .find(|f| !entries.contains_key(&f.path))
        {
            return Err(VerifyError::Missing {
                path: f.path.clone(),
            });
        }
        Ok(BundleFile {
            path: path.to_path_buf(),
            manifest,
            manifest_bytes,
            signature,
            entries,
            layout,
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    /// The exact bytes of `bundle.json` (what a signature covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// sha256 hex of `bundle.json`.
    pub fn manifest_sha256(&self) -> String {
        hex_sha256(&self.manifest_bytes)
    }

    /// The detached signature, if the bundle carries one.
    pub fn signature(&self) -> Option<&[u8]> {
        self.signature.as_deref()
    }

    /// Where the head entries end.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Path of the bundle file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Location of an entry's data.
    pub fn entry(&self, path: &str) -> Option<EntryLoc> {
        self.entries.get(path).copied()
    }

    /// A reader over one entry's data, straight from the bundle file.
    pub fn open_entry(&self, path: &str) -> std::io::Result<std::io::Take<File>> {
        let loc = self.entry(path).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no entry {path:?} in {}", self.path.display()),
            )
        })?;
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(loc.offset))?;
        Ok(f.take(loc.size))
    }

    /// Read one entry fully and check its hash again (the file may have changed since
    /// [`BundleFile::open`]).
    pub fn read_entry(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        use anyhow::Context;
        let mut data = Vec::new();
        self.open_entry(path)
            .and_then(|mut r| r.read_to_end(&mut data))
            .with_context(|| format!("reading {path} from {}", self.path.display()))?;
        let expect = self
            .manifest
            .file(path)
            .with_context(|| format!("{path} is not listed in bundle.json"))?;
        let found = hex_sha256(&data);
        if found != expect.sha256 {
            anyhow::bail!(
                "{path} in {} changed since verification: sha256 {found}, expected {}",
                self.path.display(),
                expect.sha256
            );
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        let cases = [
            ("bundle.json", true),
            ("oci/blobs/sha256/ab", true),
            ("/etc/passwd", false),
            ("../x", false),
            ("a/../../x", false),
            ("a//b", false),
            ("./a", false),
            ("", false),
            ("a\\b", false),
        ];
        for (p, ok) in cases {
            assert_eq!(check_entry_path(p).is_ok(), ok, "{p}");
        }
    }

    #[test]
    fn link_targets() {
        assert!(link_stays_inside("a/b", "c"));
        assert!(link_stays_inside("a/b", "../c"));
        assert!(!link_stays_inside("a/b", "../../c"));
        assert!(!link_stays_inside("a", "/etc/shadow"));
        assert!(!link_stays_inside("a", "x/../../y"));
    }
}
