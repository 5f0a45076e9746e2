//! The closure of the packages a recipe wants: `Pre-Depends` and `Depends` with version
//! constraints, alternatives (first satisfiable one, unless one is already chosen), virtual
//! packages (`Provides`), the highest version across the listed suites, exclusions (a
//! dependency naming an excluded package is left out) and the Essential packages the recipe
//! names. Pure: an [`Index`] in, a sorted list out; no backtracking, so an impossible
//! choice is an error that names the chain that led to it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::index::{group_text, Index, Package, Relation};

/// What to resolve.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Packages wanted.
    pub wanted: Vec<String>,
    /// Essential packages added on purpose (never pulled in by dependencies).
    pub essential: Vec<String>,
    /// Packages never installed; a dependency group naming one is dropped.
    pub exclude: Vec<String>,
    /// Suites in order of preference (for equal versions).
    pub suites: Vec<String>,
}

/// One package of the closure and why it is there (`wanted`, `essential`, `needed by X`).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The package chosen.
    pub package: Package,
    /// Sorted reasons.
    pub why: BTreeSet<String>,
}

/// A resolution error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A wanted (or essential) package is in no index.
    #[error("{what} package {name:?} is not in {suites}{}", close_hint(.close))]
    Unknown {
        /// "wanted" or "essential".
        what: &'static str,
        /// Name asked for.
        name: String,
        /// Suites searched.
        suites: String,
        /// Close names.
        close: Vec<String>,
    },
    /// A name is both wanted and excluded.
    #[error("package {0:?} is both wanted and excluded")]
    WantedAndExcluded(String),
    /// No package satisfies a dependency.
    #[error(
        "unsatisfiable dependency: {chain} needs {needs}, which {suites} cannot satisfy{found}"
    )]
    Unsatisfiable {
        /// `wanted a → b → c`.
        chain: String,
        /// The dependency group.
        needs: String,
        /// Suites searched.
        suites: String,
        /// What versions exist, if any.
        found: String,
    },
    /// A chosen package does not satisfy a later constraint on it.
    #[error("conflicting versions: {chain} needs {needs}, but {name} {version} was already chosen (needed by {by})")]
    Conflict {
        /// Chain of the later requirement.
        chain: String,
        /// The requirement.
        needs: String,
        /// The package.
        name: String,
        /// Its chosen version.
        version: String,
        /// Who chose it.
        by: String,
    },
}

fn close_hint(close: &[String]) -> String {
    if close.is_empty() {
        " (no similar name either)".into()
    } else {
        format!(" (close names: {})", close.join(", "))
    }
}

/// Resolve the closure of `req` in `index`; packages sorted by name.
pub fn resolve(index: &Index, req: &Request) -> Result<Vec<Resolved>, ResolveError> {
    let suites = req.suites.join(", ");
    let excluded: BTreeSet<&str> = req.exclude.iter().map(String::as_str).collect();
    let mut chosen: BTreeMap<String, Resolved> = BTreeMap::new();
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::new();
    let rank = |p: &Package| {
        let s = req
            .suites
            .iter()
            .position(|x| *x == p.suite)
            .unwrap_or(usize::MAX);
        (p.version.clone(), std::cmp::Reverse(s))
    };
    let best_real = |name: &str, rel: &Relation| -> Option<Package> {
        index
            .packages
            .get(name)?
            .iter()
            .filter(|p| satisfies(&p.version, rel))
            .max_by_key(|p| rank(p))
            .cloned()
    };
    for (what, list) in [("wanted", &req.wanted), ("essential", &req.essential)] {
        for name in list {
            if excluded.contains(name.as_str()) {
                return Err(ResolveError::WantedAndExcluded(name.clone()));
            }
            let any = Relation {
                name: name.clone(),
                constraint: None,
            };
            let Some(p) = best_real(name, &any) else {
                return Err(ResolveError::Unknown {
                    what,
                    name: name.clone(),
                    suites: suites.clone(),
                    close: index.close_names(name),
                });
            };
            let e = chosen.entry(name.clone()).or_insert_with(|| {
                queue.push_back(name.clone());
                Resolved {
                    package: p,
                    why: BTreeSet::new(),
                }
            });
            e.why.insert(what.to_string());
        }
    }
    let chain =
        |parent: &BTreeMap<String, String>, chosen: &BTreeMap<String, Resolved>, n: &str| {
            let mut names = vec![n.to_string()];
            let mut cur = n.to_string();
            while let Some(p) = parent.get(&cur) {
                if names.contains(p) {
                    break;
                }
                names.push(p.clone());
                cur = p.clone();
            }
            names.reverse();
            let head = chosen
                .get(&names[0])
                .and_then(|r| r.why.iter().next().cloned())
                .unwrap_or_default();
            format!("{head} {}", names.join(" → "))
        };
    while let Some(name) = queue.pop_front() {
        let deps = chosen[&name].package.depends.clone();
        'groups: for group in deps {
            if group.iter().any(|r| {
                excluded.contains(r.name.as_str())
                    || index.providers.get(&r.name).is_some_and(|ps| {
                        !ps.is_empty() && ps.iter().all(|(p, _, _)| excluded.contains(p.as_str()))
                    })
            }) {
                continue;
            }
            // Already satisfied by something chosen?
            for rel in &group {
                if let Some(by) = satisfied_by(&chosen, index, rel) {
                    chosen
                        .get_mut(&by)
                        .expect("chosen")
                        .why
                        .insert(format!("needed by {name}"));
                    continue 'groups;
                }
            }
            // A real package of that name chosen in a version that does not fit.
            for rel in &group {
                if let Some(c) = chosen.get(&rel.name) {
                    if group.len() == 1 {
                        return Err(ResolveError::Conflict {
                            chain: chain(&parent, &chosen, &name),
                            needs: rel.to_string(),
                            name: rel.name.clone(),
                            version: c.package.version.to_string(),
                            by: c.why.iter().cloned().collect::<Vec<_>>().join(", "),
                        });
                    }
                }
            }
            let mut pick = None;
            for rel in &group {
                if let Some(p) = best_real(&rel.name, rel) {
                    pick = Some(p);
                    break;
                }
                let mut provs: Vec<&(String, _, _)> = index
                    .providers
                    .get(&rel.name)
                    .map(|v| v.iter().collect())
                    .unwrap_or_default();
                provs.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                for (pname, pver, provided) in provs {
                    let ok = match (&rel.constraint, provided) {
                        (None, _) => true,
                        (Some((op, v)), Some(pv)) => op.holds(pv, v),
                        (Some(_), None) => false,
                    };
                    if !ok || excluded.contains(pname.as_str()) || chosen.contains_key(pname) {
                        continue;
                    }
                    if let Some(p) = index
                        .packages
                        .get(pname)
                        .and_then(|ps| ps.iter().find(|p| &p.version == pver))
                    {
                        pick = Some(p.clone());
                        break;
                    }
                }
                if pick.is_some() {
                    break;
                }
            }
            let Some(p) = pick else {
                let found: Vec<String> = group
                    .iter()
                    .flat_map(|r| index.packages.get(&r.name).into_iter().flatten())
                    .map(|p| format!("{} {} in {}", p.name, p.version, p.suite))
                    .collect();
                return Err(ResolveError::Unsatisfiable {
                    chain: chain(&parent, &chosen, &name),
                    needs: group_text(&group),
                    suites: suites.clone(),
                    found: if found.is_empty() {
                        String::new()
                    } else {
                        format!(" (found {})", found.join(", "))
                    },
                });
            };
            parent.insert(p.name.clone(), name.clone());
            queue.push_back(p.name.clone());
            let mut why = BTreeSet::new();
            why.insert(format!("needed by {name}"));
            chosen.insert(p.name.clone(), Resolved { package: p, why });
        }
    }
    Ok(chosen.into_values().collect())
}

fn satisfies(v: &super::version::Version, rel: &Relation) -> bool {
    rel.constraint
        .as_ref()
        .is_none_or(|(op, want)| op.holds(v, want))
}

/// Name of a chosen package that satisfies `rel` (itself or through Provides).
fn satisfied_by(
    chosen: &BTreeMap<String, Resolved>,
    index: &Index,
    rel: &Relation,
) -> Option<String> {
    if let Some(c) = chosen.get(&rel.name) {
        if satisfies(&c.package.version, rel) {
            return Some(rel.name.clone());
        }
    }
    let provs = index.providers.get(&rel.name)?;
    provs
        .iter()
        .find(|(pname, pver, provided)| {
            chosen
                .get(pname)
                .is_some_and(|c| &c.package.version == pver)
                && match (&rel.constraint, provided) {
                    (None, _) => true,
                    (Some((op, v)), Some(pv)) => op.holds(pv, v),
                    (Some(_), None) => false,
                }
        })
        .map(|(p, _, _)| p.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index from rows `suite name version depends [provides]`.
    fn index(rows: &[(&str, &str, &str, &str, &str)]) -> Index {
        let mut by_suite: BTreeMap<&str, String> = BTreeMap::new();
        for (suite, name, version, deps, provides) in rows {
            let t = by_suite.entry(suite).or_default();
            t.push_str(&format!(
                "Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: pool/{name}_{version}.deb\nSize: 1\nSHA256: {}\n",
                "0".repeat(64)
            ));
            if !deps.is_empty() {
                t.push_str(&format!("Depends: {deps}\n"));
            }
            if !provides.is_empty() {
                t.push_str(&format!("Provides: {provides}\n"));
            }
            t.push('\n');
        }
        let mut ix = Index::default();
        for (s, t) in by_suite {
            ix.add(&t, s, "amd64", "Packages").unwrap();
        }
        ix
    }

    fn req(wanted: &[&str], exclude: &[&str]) -> Request {
        Request {
            wanted: wanted.iter().map(|s| s.to_string()).collect(),
            essential: vec![],
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            suites: vec!["main".into(), "security".into()],
        }
    }

    fn table(r: &[Resolved]) -> String {
        r.iter()
            .map(|r| {
                format!(
                    "{} {} {} [{}]",
                    r.package.name,
                    r.package.version,
                    r.package.suite,
                    r.why.iter().cloned().collect::<Vec<_>>().join("; ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn closure_with_versions_alternatives_virtuals_and_exclusions() {
        let ix = index(&[
            (
                "main",
                "app",
                "1.0",
                "libc (>= 2), adduser, mta | mail-transport, awk",
                "",
            ),
            ("main", "libc", "2.36-9", "", ""),
            ("security", "libc", "2.36-9+deb12u1", "", ""),
            ("main", "adduser", "3", "perl", ""),
            ("main", "perl", "5", "", ""),
            ("main", "exim", "4", "libc", "mail-transport"),
            ("main", "mawk", "1.3", "", "awk"),
            ("main", "gawk", "5", "", "awk"),
        ]);
        let r = resolve(&ix, &req(&["app"], &["adduser"])).unwrap();
        assert_eq!(
            table(&r),
            "app 1.0 main [wanted]\n\
             exim 4 main [needed by app]\n\
             gawk 5 main [needed by app]\n\
             libc 2.36-9+deb12u1 security [needed by app; needed by exim]"
        );
    }

    #[test]
    fn already_chosen_alternative_is_preferred() {
        let ix = index(&[
            ("main", "a", "1", "x | y", ""),
            ("main", "b", "1", "y", ""),
            ("main", "x", "1", "", ""),
            ("main", "y", "1", "", ""),
        ]);
        let r = resolve(&ix, &req(&["b", "a"], &[])).unwrap();
        assert_eq!(
            table(&r),
            "a 1 main [wanted]\nb 1 main [wanted]\ny 1 main [needed by a; needed by b]"
        );
    }

    #[test]
    fn errors_name_the_chain_and_close_names() {
        let ix = index(&[
            ("main", "haproxy", "2.6", "libssl3 (>= 3)", ""),
            ("main", "libssl3", "3.0", "libfoo (>= 9)", ""),
            ("main", "libfoo", "1.0", "", ""),
        ]);
        let e = resolve(&ix, &req(&["haproxi"], &[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "wanted package \"haproxi\" is not in main, security (close names: haproxy)"
        );
        let e = resolve(&ix, &req(&["haproxy"], &[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unsatisfiable dependency: wanted haproxy → libssl3 needs libfoo (>= 9), which main, security cannot satisfy (found libfoo 1.0 in main)"
        );
        let e = resolve(&ix, &req(&["haproxy"], &["haproxy"])).unwrap_err();
        assert_eq!(e, ResolveError::WantedAndExcluded("haproxy".into()));
        let ix = index(&[
            ("main", "a", "1", "c (= 1)", ""),
            ("main", "b", "1", "c (= 2)", ""),
            ("main", "c", "1", "", ""),
            ("main", "c", "2", "", ""),
        ]);
        let e = resolve(&ix, &req(&["a", "b"], &[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "conflicting versions: wanted b needs c (= 2), but c 1 was already chosen"
            ),
            "{e}"
        );
    }
}
