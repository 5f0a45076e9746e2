//! Where the archive is: the mirror URL of each suite (from `--mirror`, a `file://` folder,
//! or apt's sources), and the one seam that reads from it (plain file reads for `file://`,
//! a small blocking HTTP client for `http://`). Only `lock` and `fetch` come here.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Largest file read from a mirror (a `Packages.xz` is ~9 MB, a `.deb` rarely 100 MB).
const MAX_BYTES: u64 = 1 << 30;

/// Read `url` (`file://…` or `http://…`) into memory.
pub fn get(url: &str) -> Result<Vec<u8>> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).with_context(|| format!("reading {url}"));
    }
    // Plain HTTP is enough: integrity comes from the signed InRelease and the hashes it pins.
    if url.starts_with("http://") {
        let resp = ureq::get(url)
            .timeout(std::time::Duration::from_secs(120))
            .call()
            .map_err(|e| match e {
                ureq::Error::Status(code, _) => anyhow::anyhow!("fetching {url}: HTTP {code}"),
                other => anyhow::anyhow!("fetching {url}: {other}"),
            })?;
        let mut data = Vec::new();
        resp.into_reader()
            .take(MAX_BYTES)
            .read_to_end(&mut data)
            .with_context(|| format!("fetching {url}"))?;
        return Ok(data);
    }
    bail!("mirror URL {url:?}: only file:// and http:// are supported (no TLS client is built in; the archive's signatures protect the content)")
}

/// Turn `--mirror` into a URL: a plain folder becomes `file://<absolute folder>`.
pub fn mirror_url(arg: &str) -> Result<String> {
    if arg.contains("://") {
        return Ok(arg.trim_end_matches('/').to_string());
    }
    let p = Path::new(arg)
        .canonicalize()
        .with_context(|| format!("mirror folder {arg}"))?;
    Ok(format!("file://{}", p.display()))
}

/// Mirror URL per suite from apt's sources (`/etc/apt/sources.list.d/*.sources` in deb822
/// form and one-line `*.list` / `/etc/apt/sources.list`), first one wins.
pub fn apt_mirrors(etc_apt: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if f.extension().is_some_and(|e| e == "sources") {
            let Ok(paras) = super::deb822::parse(&text) else {
                continue;
            };
            for p in paras {
                if !p
                    .get("Types")
                    .unwrap_or("")
                    .split_whitespace()
                    .any(|t| t == "deb")
                {
                    continue;
                }
                let Some(uri) = p.get("URIs").and_then(|u| u.split_whitespace().next()) else {
                    continue;
                };
                for s in p.get("Suites").unwrap_or("").split_whitespace() {
                    out.entry(s.to_string())
                        .or_insert_with(|| uri.trim_end_matches('/').to_string());
                }
            }
        } else {
            for line in text.lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("deb") {
                    continue;
                }
                let mut uri = w.next();
                if let Some(u) = uri.filter(|u| u.starts_with('[')) {
                    if !u.ends_with(']') {
                        w.find(|x| x.ends_with(']'));
                    }
                    uri = w.next();
                }
                if let (Some(u), Some(s)) = (uri, w.next()) {
                    out.entry(s.to_string())
                        .or_insert_with(|| u.trim_end_matches('/').to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_sources_in_both_forms() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://deb.debian.org/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list"),
            "# x\ndeb [arch=amd64] http://m.example/debian sid main\ndeb-src http://s bookworm main\n",
        )
        .unwrap();
        let m = apt_mirrors(d.path());
        assert_eq!(m["bookworm"], "http://deb.debian.org/debian");
        assert_eq!(
            m["bookworm-security"],
            "http://deb.debian.org/debian-security"
        );
        assert_eq!(m["sid"], "http://m.example/debian");
        assert_eq!(m.len(), 4);
    }
}
