//! A `Packages` index: binary package stanzas (name, version, architecture, file, size,
//! sha256, Depends/Pre-Depends/Provides, Essential), parsed and grouped for the resolver.

use std::collections::BTreeMap;

use super::deb822;
use super::version::{Op, Version};

/// One binary package of an index.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: Version,
    /// Architecture (`amd64`, `all`).
    pub arch: String,
    /// Suite whose index listed it.
    pub suite: String,
    /// Path in the archive (`pool/main/h/haproxy/haproxy_….deb`).
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (hex) of the `.deb`.
    pub sha256: String,
    /// `Pre-Depends` then `Depends`, as groups of alternatives.
    pub depends: Vec<Vec<Relation>>,
    /// Virtual packages it provides, with their optional `=` version.
    pub provides: Vec<(String, Option<Version>)>,
    /// `Essential: yes`.
    pub essential: bool,
}

/// One alternative of a dependency: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Package (or virtual package) name.
    pub name: String,
    /// Version constraint.
    pub constraint: Option<(Op, Version)>,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            None => f.write_str(&self.name),
            Some((op, v)) => write!(f, "{} ({} {v})", self.name, op.as_str()),
        }
    }
}

/// Render a group of alternatives as in a control file.
pub fn group_text(g: &[Relation]) -> String {
    g.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Parse a `Depends`-style field into groups of alternatives. Architecture qualifiers
/// (`:any`, `:native`) are dropped; `[arch]` and `<profile>` restrictions are ignored (binary
/// indices do not carry them).
pub fn parse_relations(field: &str) -> Result<Vec<Vec<Relation>>, String> {
    let mut out = Vec::new();
    for group in field.split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            let alt = alt.trim();
            let (name_part, rest) = match alt.find('(') {
                Some(i) => (alt[..i].trim(), Some(&alt[i..])),
                None => (alt, None),
            };
            let name_part = name_part.split(['[', '<']).next().unwrap_or("").trim();
            let name = name_part.split(':').next().unwrap_or("").to_string();
            if name.is_empty() {
                return Err(format!("empty package name in {group:?}"));
            }
            let constraint = match rest {
                None => None,
                Some(r) => {
                    let inner = r
                        .strip_prefix('(')
                        .and_then(|r| r.split_once(')'))
                        .map(|(i, _)| i.trim())
                        .ok_or_else(|| format!("unclosed version constraint in {alt:?}"))?;
                    let split = inner
                        .find(|c: char| !"<>=".contains(c))
                        .ok_or_else(|| format!("no version in {alt:?}"))?;
                    let op = Op::parse(inner[..split].trim())
                        .ok_or_else(|| format!("unknown operator in {alt:?}"))?;
                    Some((op, Version::parse(inner[split..].trim())?))
                }
            };
            alts.push(Relation { name, constraint });
        }
        out.push(alts);
    }
    Ok(out)
}

/// All packages of the indices of one lock run, by name (several versions across suites).
#[derive(Debug, Default)]
pub struct Index {
    /// Real packages by name.
    pub packages: BTreeMap<String, Vec<Package>>,
    /// Virtual package name → (provider name, provider version, provided version).
    pub providers: BTreeMap<String, Vec<(String, Version, Option<Version>)>>,
}

impl Index {
    /// Add the stanzas of one `Packages` file of `suite`; stanzas of another architecture
    /// than `arch` or `all` are skipped. `origin` names the file in errors.
    pub fn add(&mut self, text: &str, suite: &str, arch: &str, origin: &str) -> Result<(), String> {
        let paras = deb822::parse(text).map_err(|e| format!("{origin}: {e}"))?;
        for p in paras {
            let field = |n: &str| {
                p.get(n)
                    .ok_or_else(|| format!("{origin}:{}: stanza without {n}", p.line))
            };
            let a = field("Architecture")?;
            if a != arch && a != "all" {
                continue;
            }
            let name = field("Package")?.to_string();
            let at = |e: String| format!("{origin}:{}: package {name}: {e}", p.line);
            let version = Version::parse(field("Version")?).map_err(at)?;
            let mut depends = Vec::new();
            for f in ["Pre-Depends", "Depends"] {
                if let Some(d) = p.get(f) {
                    depends.extend(parse_relations(d).map_err(|e| at(format!("{f}: {e}")))?);
                }
            }
            let mut provides = Vec::new();
            if let Some(pv) = p.get("Provides") {
                for g in parse_relations(pv).map_err(|e| at(format!("Provides: {e}")))? {
                    for r in g {
                        provides.push((r.name, r.constraint.map(|(_, v)| v)));
                    }
                }
            }
            let sha256 = field("SHA256")?.to_string();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(at(format!("SHA256 {sha256:?} is not 64 hex digits")));
            }
            let pkg = Package {
                name: name.clone(),
                version,
                arch: a.to_string(),
                suite: suite.to_string(),
                filename: field("Filename")?.to_string(),
                size: field("Size")?
                    .parse()
                    .map_err(|_| at("Size is not a number".into()))?,
                sha256: sha256.to_ascii_lowercase(),
                depends,
                provides,
                essential: p.get("Essential") == Some("yes"),
            };
            for (v, pv) in &pkg.provides {
                self.providers.entry(v.clone()).or_default().push((
                    name.clone(),
                    pkg.version.clone(),
                    pv.clone(),
                ));
            }
            self.packages.entry(name).or_default().push(pkg);
        }
        Ok(())
    }

    /// Names closest to `name` (edit distance ≤ 2, or containing it), at most 5, for "did
    /// you mean".
    pub fn close_names(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, &String)> = self
            .packages
            .keys()
            .chain(self.providers.keys())
            .filter_map(|k| {
                let d = distance(k, name);
                if d <= 2 || (name.len() >= 3 && k.contains(name)) {
                    Some((d, k))
                } else {
                    None
                }
            })
            .collect();
        scored.sort();
        scored.dedup_by(|a, b| a.1 == b.1);
        scored.into_iter().take(5).map(|(_, k)| k.clone()).collect()
    }
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations() {
        let g = parse_relations(
            "libc6 (>= 2.34), libssl3 (>= 3.0.0) | libssl-alt, debconf (>= 0.5) | debconf-2.0, python3:any, x [amd64]",
        )
        .unwrap();
        assert_eq!(g.len(), 5);
        assert_eq!(group_text(&g[1]), "libssl3 (>= 3.0.0) | libssl-alt");
        assert_eq!(g[3][0].name, "python3");
        assert_eq!(g[4][0].name, "x");
        assert!(parse_relations("a (>= 1").is_err());
        assert!(parse_relations("a (~ 1)").is_err());
    }

    #[test]
    fn index_and_close_names() {
        let mut ix = Index::default();
        let sha = "a".repeat(64);
        let text = format!(
            "Package: haproxy\nVersion: 2.6.12-1\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nProvides: proxy (= 1)\nFilename: pool/h.deb\nSize: 10\nSHA256: {sha}\n\nPackage: other\nVersion: 1\nArchitecture: arm64\nFilename: x\nSize: 1\nSHA256: {sha}\n"
        );
        ix.add(&text, "bookworm", "amd64", "Packages").unwrap();
        assert_eq!(ix.packages.len(), 1);
        assert_eq!(ix.providers["proxy"][0].0, "haproxy");
        assert_eq!(ix.close_names("haproxi"), ["haproxy"]);
        assert_eq!(ix.close_names("hap"), ["haproxy"]);
        let e = ix
            .add(
                "Package: x\nVersion: 1\nArchitecture: all\n",
                "s",
                "amd64",
                "P",
            )
            .unwrap_err();
        assert!(e.contains("P:1: stanza without"), "{e}");
    }
}
