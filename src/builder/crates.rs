//! The Rust crates linked into a `binary` recipe's executable, for its SBOM: the normal
//! (not build, not dev) dependency closure of its package in `cargo metadata` for the
//! build target, leaving out proc-macro crates (they run in the compiler, nothing of them
//! is linked); checksums from `Cargo.lock`, licences from the crates' manifests. Written
//! as `crates.json` in the binary's store entry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One linked crate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Crate {
    /// Crate name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `registry+https://…` for crates.io, none for workspace crates.
    pub source: Option<String>,
    /// sha256 of the `.crate` file, from `Cargo.lock`.
    pub checksum: Option<String>,
    /// SPDX licence expression from its manifest.
    pub license: Option<String>,
}

/// The crates linked into `package`, sorted, from `cargo metadata` output and the text of
/// `Cargo.lock`.
pub fn linked(metadata: &Value, cargo_lock: &str, package: &str) -> Result<Vec<Crate>> {
    let lock: toml::Table = toml::from_str(cargo_lock).context("parsing Cargo.lock")?;
    let mut sums = BTreeMap::new();
    for p in lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v), Some(c)) = (
            p.get("name").and_then(|x| x.as_str()),
            p.get("version").and_then(|x| x.as_str()),
            p.get("checksum").and_then(|x| x.as_str()),
        ) {
            sums.insert((n.to_string(), v.to_string()), c.to_string());
        }
    }
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .collect();
    let root = members
        .iter()
        .find(|id| packages.get(*id).is_some_and(|p| p["name"] == package))
        .with_context(|| format!("cargo metadata: no workspace package {package}"))?;
    let proc_macro = |id: &str| {
        packages.get(id).is_some_and(|p| {
            p["targets"].as_array().is_some_and(|ts| {
                ts.iter().all(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "proc-macro"))
                })
            })
        })
    };
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([*root]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        let Some(n) = nodes.get(id) else { continue };
        for d in n["deps"].as_array().into_iter().flatten() {
            let normal = d["dep_kinds"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()));
            if let Some(pkg) = d["pkg"].as_str() {
                if normal && !proc_macro(pkg) {
                    queue.push_back(pkg);
                }
            }
        }
    }
    let mut out: Vec<Crate> = seen
        .into_iter()
        .filter_map(|id| packages.get(id))
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let version = p["version"].as_str().unwrap_or_default().to_string();
            Crate {
                checksum: sums.get(&(name.clone(), version.clone())).cloned(),
                source: p["source"].as_str().map(String::from),
                license: p["license"].as_str().map(String::from),
                name,
                version,
            }
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `cargo metadata` of the workspace at `ws` for `target`, `--locked` like the build (not
/// `--offline`: metadata may need manifests of crates the build for this target did not
/// download).
pub fn metadata(ws: &Path, target: &str) -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .current_dir(ws)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            target,
        ])
        .output()
        .with_context(|| format!("running {cargo} metadata in {}", ws.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{cargo} metadata in {} failed: {}",
        ws.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("parsing cargo metadata output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_links_its_normal_dependencies_only() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR"));
        let m = metadata(ws, super::super::realise::TARGET).unwrap();
        let lock = std::fs::read_to_string(ws.join("Cargo.lock")).unwrap();
        let c = linked(&m, &lock, "ws-relay-server").unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert!(
            names.contains(&"ws-relay-server") && names.contains(&"tokio"),
            "{names:?}"
        );
        // proc-macro crates (and what only they use) are not linked; dev-dependencies neither.
        assert!(
            !names.contains(&"tokio-macros") && !names.contains(&"syn"),
            "{names:?}"
        );
        assert!(!names.contains(&"bollard"), "{names:?}");
        let tokio = c.iter().find(|c| c.name == "tokio").unwrap();
        assert_eq!(tokio.checksum.as_ref().map(|s| s.len()), Some(64));
        assert_eq!(tokio.license.as_deref(), Some("MIT"));
        assert!(c
            .iter()
            .find(|c| c.name == "ws-relay-server")
            .unwrap()
            .checksum
            .is_none());
    }
}
