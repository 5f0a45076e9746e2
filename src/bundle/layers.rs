//! Checking what an image layer expands to: its uncompressed size and digest (the diff-id),
//! computed while streaming and cut off as soon as the expansion passes its bound, so that a
//! small blob that inflates to gigabytes (a "layer bomb") is refused after reading at most the
//! declared size, by `verify` and by the loader while it streams the layer to an engine.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Bound on a layer's expansion when the bundle (format 1) declares none: 16 GiB.
pub const FORMAT1_LAYER_LIMIT: u64 = 16 << 30;

/// Counts and hashes the uncompressed bytes; fails once more than `limit` arrive.
struct Expansion {
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Write for Expansion {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let size = self.size + buf.len() as u64;
        if size > self.limit {
            return Err(io::Error::other(format!(
                "expands to more than {} bytes",
                self.limit
            )));
        }
        self.size = size;
        self.hasher.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a layer blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// A gzipped tar (one or more gzip members).
    Gzip,
}

impl Compression {
    /// From an OCI or Docker layer media type.
    pub fn of_media_type(media_type: &str) -> Result<Compression, String> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Ok(Compression::Gzip)
        } else if media_type.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            Err(format!("layer media type {media_type:?} is not supported"))
        }
    }
}

enum Sink {
    Plain(Expansion),
    Gzip(Box<flate2::write::MultiGzDecoder<Expansion>>),
}

/// Streaming check of one layer: feed it the blob's bytes in order, then [`LayerCheck::finish`].
pub struct LayerCheck {
    sink: Sink,
}

/// What a layer expanded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// Uncompressed size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

impl LayerCheck {
    /// A check that fails once the expansion exceeds `limit` bytes.
    pub fn new(compression: Compression, limit: u64) -> LayerCheck {
        let e = Expansion {
            hasher: Sha256::new(),
            size: 0,
            limit,
        };
        LayerCheck {
            sink: match compression {
                Compression::None => Sink::Plain(e),
                Compression::Gzip => Sink::Gzip(Box::new(flate2::write::MultiGzDecoder::new(e))),
            },
        }
    }

    /// Feed the next bytes of the blob.
    pub fn feed(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Plain(e) => e.write_all(data),
            Sink::Gzip(d) => d.write_all(data),
        }
    }

    /// The whole blob was fed: its expansion.
    pub fn finish(self) -> io::Result<Expanded> {
        let e = match self.sink {
            Sink::Plain(e) => e,
            Sink::Gzip(d) => d.finish()?,
        };
        Ok(Expanded {
            size: e.size,
            diff_id: format!("sha256:{}", hex::encode(e.hasher.finalize())),
        })
    }
}

/// What a layer must expand to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Image and blob, for messages.
    pub what: String,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Declared uncompressed size (format 2), else None (bounded by [`FORMAT1_LAYER_LIMIT`]).
    pub size: Option<u64>,
    /// How the blob is stored.
    pub compression: Compression,
}

impl Expected {
    /// Check a finished expansion against what was declared.
    pub fn check(&self, found: &Expanded) -> Result<(), String> {
        if let Some(size) = self.size {
            if found.size != size {
                return Err(format!(
                    "expands to {} bytes, bundle.json declares {size}",
                    found.size
                ));
            }
        }
        if found.diff_id != self.diff_id {
            return Err(format!(
                "expands to {}, its diff-id is {}",
                found.diff_id, self.diff_id
            ));
        }
        Ok(())
    }

    fn limit(&self) -> u64 {
        self.size.unwrap_or(FORMAT1_LAYER_LIMIT)
    }

    /// A fresh streaming check bounded by the declared size.
    pub fn start(&self) -> LayerCheck {
        LayerCheck::new(self.compression, self.limit())
    }
}

/// Expand a whole blob from `r` and check it.
pub fn check_blob(mut r: impl Read, expected: &Expected) -> Result<Expanded, String> {
    let mut check = expected.start();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        check.feed(&buf[..n]).map_err(|e| e.to_string())?;
    }
    let found = check.finish().map_err(|e| e.to_string())?;
    expected.check(&found)?;
    Ok(found)
}

/// A reader that passes a layer blob through unchanged while checking its expansion: it
/// fails (so the consumer never sees the end of the blob) once the expansion passes its bound,
/// or at the end if the expansion is not the declared one.
pub struct CheckedReader<R> {
    inner: R,
    check: Option<LayerCheck>,
    expected: Expected,
}

impl<R: Read> CheckedReader<R> {
    /// Wrap `inner`, the blob's bytes.
    pub fn new(inner: R, expected: Expected) -> CheckedReader<R> {
        CheckedReader {
            inner,
            check: Some(expected.start()),
            expected,
        }
    }
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let refuse = |what: &str, why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: refused, the layer {why}"),
            )
        };
        let n = self.inner.read(buf)?;
        let Some(check) = self.check.as_mut() else {
            return Ok(n);
        };
        if n > 0 {
            check
                .feed(&buf[..n])
                .map_err(|e| refuse(&self.expected.what, e.to_string()))?;
            return Ok(n);
        }
        let found = self
            .check
            .take()
            .expect("checked above")
            .finish()
            .map_err(|e| refuse(&self.expected.what, format!("does not decompress: {e}")))?;
        self.expected
            .check(&found)
            .map_err(|why| refuse(&self.expected.what, why))?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(data: &[u8], size: Option<u64>, compression: Compression) -> Expected {
        Expected {
            what: "image x: layer y".into(),
            diff_id: crate::hash::sha256_digest(data),
            size,
            compression,
        }
    }

    #[test]
    fn a_layer_expands_to_what_is_declared() {
        let tar = vec![3u8; 100_000];
        let gz = crate::oci::gzip(&tar);
        let e = expected(&tar, Some(100_000), Compression::Gzip);
        assert_eq!(check_blob(&gz[..], &e).unwrap().size, 100_000);
        let mut out = Vec::new();
        CheckedReader::new(&gz[..], e.clone())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, gz, "the reader passes the blob through");
        // plain tar layers too
        let e = expected(&tar, Some(100_000), Compression::None);
        assert!(check_blob(&tar[..], &e).is_ok());
    }

    #[test]
    fn a_layer_bomb_stops_at_the_declared_size() {
        // 64 MiB of zeros is ~64 KiB compressed; declared as 1 MiB
        let tar = vec![0u8; 64 << 20];
        let gz = crate::oci::gzip(&tar);
        let e = expected(&tar, Some(1 << 20), Compression::Gzip);
        let err = check_blob(&gz[..], &e).unwrap_err();
        assert_eq!(err, "expands to more than 1048576 bytes");
        let mut out = Vec::new();
        let err = CheckedReader::new(&gz[..], e)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("image x: layer y: refused, the layer expands to more than"),
            "{err}"
        );
        assert!(
            out.len() < gz.len(),
            "the consumer never gets the whole blob"
        );
    }

    #[test]
    fn a_wrong_size_or_diff_id_is_named() {
        let tar = vec![1u8; 5000];
        let gz = crate::oci::gzip(&tar);
        let mut e = expected(&tar, Some(6000), Compression::Gzip);
        assert_eq!(
            check_blob(&gz[..], &e).unwrap_err(),
            "expands to 5000 bytes, bundle.json declares 6000"
        );
        e.size = None;
        e.diff_id = crate::hash::sha256_digest(b"other");
        assert!(check_blob(&gz[..], &e)
            .unwrap_err()
            .starts_with("expands to sha256:"));
        // garbage that is not gzip
        e.diff_id = crate::hash::sha256_digest(&tar);
        let err = check_blob(&b"not gzip at all"[..], &e).unwrap_err();
        assert!(!err.is_empty());
        assert!(Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd").is_err());
    }
}
