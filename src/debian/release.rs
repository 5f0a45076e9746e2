//! The trust chain of one suite, checked at `lock` time: `InRelease` verified by `gpgv`
//! against a keyring (the only thing trusted), its `SHA256:` block pinning the `Packages`
//! index, which is fetched and checked against it. `Valid-Until` is deliberately not
//! enforced: the lock's own pins are the trust root afterwards.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::hash::sha256_hex;

/// A verified suite.
#[derive(Debug, Clone)]
pub struct Suite {
    /// Suite name (`bookworm-security`).
    pub suite: String,
    /// Mirror URL (the folder holding `dists/`).
    pub mirror: String,
    /// sha256 of the `InRelease` file as fetched.
    pub inrelease_sha256: String,
    /// Its `Date:` field.
    pub date: String,
    /// Fingerprints of the keys whose signatures `gpgv` found valid (VALIDSIG), sorted.
    pub fingerprints: Vec<String>,
    /// `SHA256:` block: path → (sha256, size).
    pub sha256: BTreeMap<String, (String, u64)>,
}

/// What `gpgv` reported about one signed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpgvReport {
    /// VALIDSIG fingerprints.
    pub valid: Vec<String>,
    /// Problems: `BADSIG <key>`, `NO_PUBKEY <key>`, `EXPKEYSIG <key>`, `ERRSIG <key>`, ….
    pub problems: Vec<String>,
}

/// Parse `gpgv --status-fd` lines.
pub fn parse_status(status: &str) -> GpgvReport {
    let mut r = GpgvReport::default();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let kw = w.next().unwrap_or("");
        let arg = w.next().unwrap_or("").to_string();
        match kw {
            "VALIDSIG" => r.valid.push(arg),
            "BADSIG" | "NO_PUBKEY" | "EXPKEYSIG" | "REVKEYSIG" | "EXPSIG" | "ERRSIG" => {
                r.problems.push(format!("{kw} {arg}"))
            }
            _ => {}
        }
    }
    r.valid.sort();
    r.valid.dedup();
    r
}

/// Verify the clear-signed `data` (fetched from `what`) with `gpgv --keyring keyring`;
/// returns the signed text (only what the signature covers) and the valid fingerprints.
pub fn gpgv_verify(data: &[u8], what: &str, keyring: &Path) -> Result<(String, Vec<String>)> {
    // gpgv looks a keyring name without a slash up in its home folder: pass an absolute path.
    let keyring = &keyring
        .canonicalize()
        .with_context(|| format!("{what}: keyring {} does not exist", keyring.display()))?;
    let dir = tempfile::tempdir().context("creating a temporary folder for gpgv")?;
    let input = dir.path().join("InRelease");
    let output = dir.path().join("signed");
    std::fs::write(&input, data).context("writing InRelease for gpgv")?;
    let out = std::process::Command::new("gpgv")
        .arg("--status-fd")
        .arg("1")
        .arg("--keyring")
        .arg(keyring)
        .arg("--output")
        .arg(&output)
        .arg(&input)
        .env("LC_ALL", "C")
        .output()
        .context("running gpgv (install the gpgv package)")?;
    let report = parse_status(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() || report.valid.is_empty() || !report.problems.is_empty() {
        let why = if report.problems.is_empty() {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no valid signature")
                .to_string()
        } else {
            report.problems.join(", ")
        };
        bail!(
            "{what}: signature not valid with keyring {}: {why} (NO_PUBKEY: the key is not in the keyring; BADSIG: the file was altered)",
            keyring.display()
        );
    }
    let text = std::fs::read_to_string(&output)
        .with_context(|| format!("{what}: reading what gpgv verified"))?;
    Ok((text, report.valid))
}

/// `SHA256:` block of a Release file: path → (sha256, size).
pub type Sums = BTreeMap<String, (String, u64)>;

/// Parse the verified text of an `InRelease`: its `Date:` and `SHA256:` block.
pub fn parse_release(text: &str, what: &str, suite: &str) -> Result<(String, Sums)> {
    let paras = super::deb822::parse(text).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let p = paras
        .first()
        .with_context(|| format!("{what}: empty Release"))?;
    // A validly signed InRelease of another suite (replayed by a mirror) is not this one.
    if p.get("Suite") != Some(suite) && p.get("Codename") != Some(suite) {
        bail!(
            "{what}: this is the InRelease of suite {:?} (codename {:?}), not {suite:?}",
            p.get("Suite").unwrap_or(""),
            p.get("Codename").unwrap_or("")
        );
    }
    let date = p
        .get("Date")
        .with_context(|| format!("{what}: no Date field"))?
        .to_string();
    let block = p
        .get("SHA256")
        .with_context(|| format!("{what}: no SHA256 field"))?;
    let mut sums = BTreeMap::new();
    for l in block.lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let [hash, size, path] = w[..] else {
            bail!("{what}: SHA256 line {l:?} is not `hash size path`");
        };
        let size = size
            .parse()
            .with_context(|| format!("{what}: SHA256 line {l:?}: bad size"))?;
        sums.insert(path.to_string(), (hash.to_ascii_lowercase(), size));
    }
    Ok((date, sums))
}

/// Fetch and verify `dists/<suite>/InRelease` of `mirror`.
pub fn fetch_suite(mirror: &str, suite: &str, keyring: &Path) -> Result<Suite> {
    let url = format!("{mirror}/dists/{suite}/InRelease");
    let data = super::mirror::get(&url)?;
    let (text, fingerprints) = gpgv_verify(&data, &url, keyring)?;
    let (date, sha256) = parse_release(&text, &url, suite)?;
    Ok(Suite {
        suite: suite.to_string(),
        mirror: mirror.to_string(),
        inrelease_sha256: sha256_hex(&data),
        date,
        fingerprints,
        sha256,
    })
}

/// Fetch the `Packages` index of `component`/`arch`, checked against the suite's `SHA256:`
/// block (`.xz`, else `.gz`, else plain), and return it decompressed.
pub fn fetch_index(s: &Suite, component: &str, arch: &str) -> Result<String> {
    let base = format!("{component}/binary-{arch}/Packages");
    for ext in [".xz", ".gz", ""] {
        let path = format!("{base}{ext}");
        let Some((want, size)) = s.sha256.get(&path) else {
            continue;
        };
        let url = format!("{}/dists/{}/{path}", s.mirror, s.suite);
        let data = super::mirror::get(&url)?;
        let found = sha256_hex(&data);
        if &found != want || data.len() as u64 != *size {
            bail!(
                "index {url}: sha256 {found} ({} bytes), but InRelease of {} says {want} ({size} bytes)",
                data.len(),
                s.suite
            );
        }
        let mut text = String::new();
        let res = match ext {
            ".xz" => liblzma::read::XzDecoder::new(&data[..]).read_to_string(&mut text),
            ".gz" => flate2::read::GzDecoder::new(&data[..]).read_to_string(&mut text),
            _ => (&data[..]).read_to_string(&mut text),
        };
        res.with_context(|| format!("decompressing {url}"))?;
        return Ok(text);
    }
    bail!(
        "InRelease of {} at {} lists no {base}(.xz|.gz) index",
        s.suite,
        s.mirror
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpgv_status_lines() {
        let r = parse_status(
            "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 6ED0E7B82643E131 Debian\n[GNUPG:] VALIDSIG 4CB50190207B4758A3F73A796ED0E7B82643E131 2025 x 0 4 0 1 10 01 A7236886F3CCCAAD148A27F80E98404D386FA1D9\n[GNUPG:] NO_PUBKEY 254CF3B5AEC0A8F0\n",
        );
        assert_eq!(r.valid, ["4CB50190207B4758A3F73A796ED0E7B82643E131"]);
        assert_eq!(r.problems, ["NO_PUBKEY 254CF3B5AEC0A8F0"]);
    }

    #[test]
    fn release_sha256_block() {
        let (date, s) = parse_release(
            "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 May 2025 09:00:00 UTC\nSHA256:\n 0123 10 main/binary-amd64/Packages\n ABCD 5 main/binary-amd64/Packages.xz\n",
            "InRelease",
            "bookworm",
        )
        .unwrap();
        assert_eq!(date, "Sat, 10 May 2025 09:00:00 UTC");
        assert_eq!(s["main/binary-amd64/Packages.xz"], ("abcd".into(), 5));
        assert!(parse_release("Suite: s\nDate: x\nSHA256:\n 1 x y\n", "R", "s").is_err());
        let e = parse_release(
            "Suite: stable-updates\nDate: x\nSHA256:\n",
            "R",
            "stable-security",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("InRelease of suite \"stable-updates\""), "{e}");
        assert!(parse_release("Suite: s\nOrigin: x\n", "R", "s")
            .unwrap_err()
            .to_string()
            .contains("no Date"));
    }
}
