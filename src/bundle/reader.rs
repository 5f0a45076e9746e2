//! Reading a bundle file: one streaming pass that checks the structure and every hash
//! against `bundle.json`, and an index of entry offsets so that later steps (image loading)
//! can stream single entries straight out of the uncompressed tar without unpacking it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::layers::{self, Compression, Expected};
use super::manifest::{
    BlobRef, BundleManifest, ImageEntry, BUNDLE_FORMAT, MANIFEST_NAME, OLDEST_FORMAT,
    SIGNATURE_NAME,
};
use super::tarfmt::{difference, entry_header, padding, BLOCK};

/// Largest `bundle.json` accepted (a manifest is a few KiB; this bounds a hostile one).
const MAX_MANIFEST_SIZE: u64 = 16 << 20;
/// Largest `bundle.json.sig` accepted (one is about 250 bytes).
const MAX_SIGNATURE_SIZE: u64 = 4096;

/// Where in the archive a problem lies when no entry can be named yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Before the first entry.
    Start,
    /// After the named entry.
    After(String),
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Start => write!(f, "at the start of the file"),
            Position::After(name) => write!(f, "after entry {name:?}"),
        }
    }
}

/// Why a bundle file was rejected; every variant names the entry at fault.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The file could not be opened or read at all.
    #[error("cannot read bundle {path}: {cause}")]
    Io {
        /// Bundle file path.
        path: PathBuf,
        /// Underlying error (printed in the message, so not a `source` that would print twice).
        cause: std::io::Error,
    },
    /// A tar header that cannot be parsed (bad checksum or number).
    #[error("malformed tar header {at}: {reason}")]
    Malformed {
        /// Where the header is.
        at: Position,
        /// What is wrong.
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
    /// An entry of a type bundles never contain (link, device, fifo, directory, extension).
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
    /// A header field (mode, owner, mtime, names, …) differs from the one header a bundle
    /// entry may have.
    #[error("entry {path:?}: tar header {field} is {found}, bundle.json requires {expected}")]
    HeaderMismatch {
        /// Entry name.
        path: String,
        /// Header field.
        field: String,
        /// Value found.
        found: String,
        /// Value required.
        expected: String,
    },
    /// The file ends inside an entry.
    #[error("entry {path:?}: truncated ({reason})")]
    Truncated {
        /// Entry name.
        path: String,
        /// What is missing.
        reason: String,
    },
    /// The file ends between entries, inside a header or inside the end-of-archive marker.
    #[error("truncated {at}: {reason}")]
    TruncatedArchive {
        /// Where.
        at: Position,
        /// What is missing.
        reason: String,
    },
    /// Bytes that the archive does not account for (non-zero padding, data after the end).
    #[error("{at}: {reason}")]
    Uncovered {
        /// Where.
        at: Position,
        /// What was found.
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
    /// An image of `bundle.json` contradicts itself or its blobs.
    #[error("image {image}: {reason}")]
    BadImage {
        /// `repository:tag`.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer does not expand to what `bundle.json` and the image config declare.
    #[error("entry {path:?} (layer of image {image}): {reason}")]
    BadLayer {
        /// Blob entry name.
        path: String,
        /// `repository:tag`.
        image: String,
        /// What is wrong.
        reason: String,
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

/// What an entry of the archive is, by its place and name.
enum Slot {
    /// `bundle.json`, first.
    Manifest,
    /// `bundle.json.sig`, second.
    Signature,
    /// A file listed in `bundle.json`.
    File {
        /// Mode 0755 instead of 0644.
        executable: bool,
        /// Its listed sha256.
        sha256: String,
    },
}

/// Read until `buf` is full or the file ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parse `bundle.json` and check what it says about itself.
fn parse_manifest(bytes: &[u8]) -> Result<BundleManifest, VerifyError> {
    #[derive(serde::Deserialize)]
    struct Head {
        format: u32,
    }
    let bad = |s: String| VerifyError::BadManifest(s);
    let head: Head = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if head.format > BUNDLE_FORMAT {
        return Err(bad(format!(
            "format {} is newer than this reemo-bundle reads (formats {OLDEST_FORMAT} to {BUNDLE_FORMAT}); install a newer reemo-bundle",
            head.format
        )));
    }
    if head.format < OLDEST_FORMAT {
        return Err(bad(format!(
            "format {} is not supported (this reemo-bundle reads formats {OLDEST_FORMAT} to {BUNDLE_FORMAT})",
            head.format
        )));
    }
    let m: BundleManifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if m.format >= 2 {
        if m.mtime.is_none() {
            return Err(bad(format!("format {} requires field mtime", m.format)));
        }
        for i in &m.images {
            for l in &i.layers {
                if l.diff_id.is_none() || l.uncompressed_size.is_none() {
                    return Err(bad(format!(
                        "image {}: layer {} lacks diff_id or uncompressed_size (required by format {})",
                        i.reference(),
                        l.digest,
                        m.format
                    )));
                }
            }
        }
    } else if m.mtime.is_some() {
        return Err(bad("format 1 has no field mtime".into()));
    }
    for f in &m.files {
        check_entry_path(&f.path)?;
    }
    if m.files.windows(2).any(|w| w[0].path >= w[1].path) {
        return Err(bad("files are not sorted by path or not unique".into()));
    }
    Ok(m)
}

/// Whether `d` is `sha256:` and 64 lowercase hex digits.
fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Each image agrees with itself and with the files: its blobs are files of the bundle with
/// the digest as their sha256 and the size it declares, its config is its ID, and its tag ends
/// with the ID's first 12 hex digits.
pub fn check_images(m: &BundleManifest) -> Result<(), VerifyError> {
    for i in &m.images {
        let bad = |reason: String| VerifyError::BadImage {
            image: i.reference(),
            reason,
        };
        if i.config.digest != i.config_digest {
            return Err(bad(format!(
                "config blob {} is not its image ID {}",
                i.config.digest, i.config_digest
            )));
        }
        let blobs =
            std::iter::once(("config", &i.config)).chain(i.layers.iter().map(|l| ("layer", l)));
        for (what, b) in blobs {
            if !is_digest(&b.digest) {
                return Err(bad(format!(
                    "{what} digest {:?} is not sha256:<64 hex>",
                    b.digest
                )));
            }
            let Some(f) = m.file(&b.path()) else {
                return Err(bad(format!(
                    "{what} blob {} is not a file of the bundle",
                    b.digest
                )));
            };
            if f.sha256 != b.digest[7..] || f.size != b.size {
                return Err(bad(format!(
                    "{what} blob {} ({} bytes) does not match its file {} (sha256 {}, {} bytes)",
                    b.digest, b.size, f.path, f.sha256, f.size
                )));
            }
        }
        if !is_digest(&i.manifest_digest)
            || m.file(&format!("oci/blobs/sha256/{}", &i.manifest_digest[7..]))
                .is_none()
        {
            return Err(bad(format!(
                "manifest blob {} is not a file of the bundle",
                i.manifest_digest
            )));
        }
        let short = &i.config_digest[7..19];
        let tag_hash = i.tag.rsplit('-').next().unwrap_or("");
        if tag_hash != short {
            return Err(bad(format!(
                "tag {:?} does not end with its image ID's first 12 digits ({short}); the image ID is {}",
                i.tag, i.config_digest
            )));
        }
        let size = i.config.size + i.layers.iter().map(|l| l.size).sum::<u64>();
        if size != i.size {
            return Err(bad(format!(
                "size {} is not the sum of its blobs ({size})",
                i.size
            )));
        }
    }
    Ok(())
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

use crate::hash::sha256_hex as hex_sha256;

impl BundleFile {
    /// Open `path`, read it once from start to end and check every byte of it: each
    /// header against the one header its entry may have, each entry's size and sha256
    /// against `bundle.json`, zero padding, the end-of-archive marker and nothing after it,
    /// and the images' consistency. Returns the first problem found, naming the entry.
    /// Layer expansion is checked by [`BundleFile::check_layers`].
    pub fn open(path: &Path) -> Result<Self, VerifyError> {
        let io = |cause| VerifyError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let file = File::open(path).map_err(io)?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut at = Position::Start;
        let mut pos: u64 = 0;
        let mut manifest: Option<(BundleManifest, Vec<u8>)> = None;
        let mut signature = None;
        let mut layout = Layout {
            manifest_end: 0,
            signature_end: None,
            mtime: 0,
        };
        let mut entries = BTreeMap::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut block = [0u8; BLOCK];
            let n = read_full(&mut r, &mut block).map_err(io)?;
            if n == 0 {
                return Err(VerifyError::TruncatedArchive {
                    at,
                    reason: "the file ends without the end-of-archive marker".into(),
                });
            }
            if n < BLOCK {
                return Err(VerifyError::TruncatedArchive {
                    at,
                    reason: format!("the file ends inside the next tar header ({n} of 512 bytes)"),
                });
            }
            pos += BLOCK as u64;
            if block.iter().all(|b| *b == 0) {
                let n = read_full(&mut r, &mut block).map_err(io)?;
                if n < BLOCK {
                    return Err(VerifyError::TruncatedArchive {
                        at,
                        reason: format!(
                            "the file ends inside the end-of-archive marker ({} of 1024 bytes)",
                            512 + n
                        ),
                    });
                }
                if block.iter().any(|b| *b != 0) {
                    return Err(VerifyError::Uncovered {
                        at,
                        reason: format!("a single zero block, then data at byte {pos}"),
                    });
                }
                pos += BLOCK as u64;
                let mut rest = 0u64;
                loop {
                    let n = r.read(&mut buf).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    rest += n as u64;
                }
                if rest > 0 {
                    return Err(VerifyError::Uncovered {
                        at,
                        reason: format!(
                            "{rest} bytes after the end-of-archive marker (at byte {pos}); a bundle ends with its marker"
                        ),
                    });
                }
                break;
            }
            let header = tar::Header::from_byte_slice(&block);
            let name_bytes = header.path_bytes().into_owned();
            let name = match String::from_utf8(name_bytes) {
                Ok(n) => n,
                Err(e) => {
                    return Err(VerifyError::UnsafePath {
                        path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        why: "name is not UTF-8",
                    })
                }
            };
            let cksum_ok = header.cksum().is_ok_and(|c| {
                let mut b = block;
                b[148..156].fill(b' ');
                b.iter().map(|x| u32::from(*x)).sum::<u32>() == c
            });
            if !cksum_ok {
                return Err(VerifyError::Malformed {
                    at,
                    reason: format!("header checksum does not match (entry name {name:?})"),
                });
            }
            check_entry_path(&name)?;
            let kind = header.entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = header
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
            if kind != tar::EntryType::Regular {
                let what = match kind {
                    tar::EntryType::XHeader => "pax extended header".to_string(),
                    tar::EntryType::XGlobalHeader => "pax global header".to_string(),
                    tar::EntryType::GNULongName => "GNU long name".to_string(),
                    tar::EntryType::GNULongLink => "GNU long link name".to_string(),
                    other => format!("{other:?}"),
                };
                return Err(VerifyError::UnexpectedType {
                    path: name,
                    kind: what,
                });
            }
            let size = header.size().map_err(|e| VerifyError::Malformed {
                at: at.clone(),
                reason: format!("entry {name:?}: size field: {e}"),
            })?;
            let offset = pos;
            // What the entry must be, from what is known before reading its data.
            let slot = match (&manifest, name.as_str()) {
                (None, MANIFEST_NAME) => {
                    if size > MAX_MANIFEST_SIZE {
                        return Err(VerifyError::BadManifest(format!(
                            "too large ({size} bytes)"
                        )));
                    }
                    Slot::Manifest
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
                    Slot::Signature
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
                    Slot::File {
                        executable: expect.executable,
                        sha256: expect.sha256.clone(),
                    }
                }
            };
            let executable = matches!(
                slot,
                Slot::File {
                    executable: true,
                    ..
                }
            );
            // Data: kept for the two head entries (small, bounded above), hashed for files.
            let keep = !matches!(slot, Slot::File { .. });
            let mut kept = Vec::with_capacity(if keep { size as usize } else { 0 });
            let mut hasher = Sha256::new();
            let mut left = size;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = read_full(&mut r, &mut buf[..want]).map_err(io)?;
                if keep {
                    kept.extend_from_slice(&buf[..n]);
                } else {
                    hasher.update(&buf[..n]);
                }
                left -= n as u64;
                if n < want {
                    return Err(VerifyError::Truncated {
                        path: name,
                        reason: format!("the file ends after {} of its {size} bytes", size - left),
                    });
                }
            }
            let pad = padding(size);
            let n = read_full(&mut r, &mut buf[..pad]).map_err(io)?;
            if n < pad {
                return Err(VerifyError::Truncated {
                    path: name,
                    reason: format!("the file ends inside its padding ({n} of {pad} bytes)"),
                });
            }
            if buf[..pad].iter().any(|b| *b != 0) {
                return Err(VerifyError::Uncovered {
                    at: Position::After(name),
                    reason: "non-zero bytes in the padding of the entry".into(),
                });
            }
            pos += size + pad as u64;
            match slot {
                Slot::Manifest => {
                    let m = parse_manifest(&kept)?;
                    let mtime = match m.mtime {
                        Some(t) => t,
                        None => header.mtime().map_err(|e| VerifyError::Malformed {
                            at: at.clone(),
                            reason: format!("entry {name:?}: mtime field: {e}"),
                        })?,
                    };
                    layout.manifest_end = pos;
                    layout.mtime = mtime;
                    manifest = Some((m, kept));
                }
                Slot::Signature => {
                    signature = Some(kept);
                    layout.signature_end = Some(pos);
                }
                Slot::File { sha256, .. } => {
                    let found = hex::encode(hasher.finalize_reset());
                    if found != sha256 {
                        return Err(VerifyError::DigestMismatch {
                            path: name,
                            expected: sha256,
                            found,
                        });
                    }
                    entries.insert(name.clone(), EntryLoc { offset, size });
                }
            }
            let want = entry_header(&name, size, executable, layout.mtime).map_err(|why| {
                VerifyError::UnsafePath {
                    path: name.clone(),
                    why: if why.contains("too long") {
                        "name too long for a bundle entry"
                    } else {
                        "name cannot be a bundle entry"
                    },
                }
            })?;
            if let Some((field, found, expected)) = difference(&block, &want) {
                return Err(VerifyError::HeaderMismatch {
                    path: name,
                    field,
                    found,
                    expected,
                });
            }
            at = Position::After(name);
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
        check_images(&manifest)?;
        Ok(BundleFile {
            path: path.to_path_buf(),
            manifest,
            manifest_bytes,
            signature,
            entries,
            layout,
        })
    }

    /// What each layer of `image` must expand to, from `bundle.json` (format 2) and the
    /// image config's `rootfs.diff_ids` (which must agree with it).
    pub fn layer_expectations(
        &self,
        image: &ImageEntry,
    ) -> Result<Vec<(BlobRef, Expected)>, VerifyError> {
        let reference = image.reference();
        let bad = |reason: String| VerifyError::BadImage {
            image: reference.clone(),
            reason,
        };
        let config = self
            .read_entry(&image.config.path())
            .map_err(|e| bad(format!("{e:#}")))?;
        let config: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| bad(format!("config blob is not JSON: {e}")))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .ok_or_else(|| bad("config blob has no rootfs.diff_ids".into()))?;
        if diff_ids.len() != image.layers.len() {
            return Err(bad(format!(
                "config lists {} layers, bundle.json {}",
                diff_ids.len(),
                image.layers.len()
            )));
        }
        let mut out = Vec::new();
        for (layer, diff_id) in image.layers.iter().zip(diff_ids) {
            if let Some(declared) = &layer.diff_id {
                if *declared != diff_id {
                    return Err(VerifyError::BadLayer {
                        path: layer.path(),
                        image: reference.clone(),
                        reason: format!(
                            "bundle.json declares diff-id {declared}, the image config {diff_id}"
                        ),
                    });
                }
            }
            let compression = Compression::of_media_type(&layer.media_type).map_err(|reason| {
                VerifyError::BadLayer {
                    path: layer.path(),
                    image: reference.clone(),
                    reason,
                }
            })?;
            out.push((
                layer.clone(),
                Expected {
                    what: format!("image {reference}: layer {}", layer.path()),
                    diff_id,
                    size: layer.uncompressed_size,
                    compression,
                },
            ));
        }
        Ok(out)
    }

    /// Expand every layer (streaming, each bounded by its declared size) and check its size
    /// and diff-id against `bundle.json` and the image config. Reads each layer once.
    pub fn check_layers(&self) -> Result<(), VerifyError> {
        let mut seen = std::collections::BTreeSet::new();
        for image in &self.manifest.images {
            for (layer, expected) in self.layer_expectations(image)? {
                if !seen.insert(layer.digest.clone()) {
                    continue;
                }
                let r = self
                    .open_entry(&layer.path())
                    .map_err(|cause| VerifyError::Io {
                        path: self.path.clone(),
                        cause,
                    })?;
                layers::check_blob(r, &expected).map_err(|reason| VerifyError::BadLayer {
                    path: layer.path(),
                    image: image.reference(),
                    reason,
                })?;
            }
        }
        Ok(())
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
    fn a_missing_file_is_reported_once() {
        let e = anyhow::Error::new(BundleFile::open(Path::new("/nonexistent.bundle")).unwrap_err());
        assert_eq!(
            format!("{e:#}"),
            "cannot read bundle /nonexistent.bundle: No such file or directory (os error 2)"
        );
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
