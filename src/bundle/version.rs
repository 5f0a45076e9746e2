//! Bundle versions and the downgrade guard: the loader's verify step compares the version
//! of the bundle being activated with the current generation's (pure; no state access).
//!
//! A version is dotted numeric with an optional pre-release and build metadata, compared
//! with semver precedence: `1.2.3-rc.1+build`. Any number of numeric components (`2`,
//! `1.4`, `2.14.0.1`); missing trailing components count as 0 (`1.4` = `1.4.0`); a
//! pre-release sorts before its release (`1.0.0-rc.1` < `1.0.0`), its dot-separated
//! identifiers compared numerically when numeric, else in ASCII order, numeric before
//! alphanumeric, a shorter list first when all else is equal; build metadata is ignored.

use std::cmp::Ordering;

use thiserror::Error;

/// A version string that does not follow the rules above.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("version {version:?} is malformed: {reason} (expected dotted numbers with an optional -pre-release, e.g. 1.2.0 or 1.2.0-rc.1)")]
pub struct VersionError {
    /// The string.
    pub version: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed version.
#[derive(Debug, Clone)]
pub struct Version {
    release: Vec<u64>,
    pre: Vec<Ident>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ident {
    Num(u64),
    Alpha(String),
}

impl Ord for Ident {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Ident::Num(a), Ident::Num(b)) => a.cmp(b),
            (Ident::Num(_), Ident::Alpha(_)) => Ordering::Less,
            (Ident::Alpha(_), Ident::Num(_)) => Ordering::Greater,
            (Ident::Alpha(a), Ident::Alpha(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Ident {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn number(s: &str, what: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not a number"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(format!("{what} {s:?} has a leading zero"));
    }
    s.parse().map_err(|_| format!("{what} {s:?} is too large"))
}

impl Version {
    /// Parse a version string.
    pub fn parse(s: &str) -> Result<Version, VersionError> {
        let err = |reason: String| VersionError {
            version: s.to_string(),
            reason,
        };
        let core_pre = match s.split_once('+') {
            Some((c, build)) => {
                if build.is_empty()
                    || build
                        .split('.')
                        .any(|p| p.is_empty() || !p.bytes().all(is_ident_byte))
                {
                    return Err(err(format!(
                        "build metadata {build:?} is not dot-separated [0-9A-Za-z-] identifiers"
                    )));
                }
                c
            }
            None => s,
        };
        let (core, pre) = match core_pre.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (core_pre, None),
        };
        if core.is_empty() {
            return Err(err("empty release part".into()));
        }
        let release = core
            .split('.')
            .map(|p| number(p, "component"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let mut ids = Vec::new();
        if let Some(pre) = pre {
            for p in pre.split('.') {
                if p.is_empty() {
                    return Err(err(format!("empty identifier in pre-release {pre:?}")));
                }
                if !p.bytes().all(is_ident_byte) {
                    return Err(err(format!(
                        "pre-release identifier {p:?} has characters other than [0-9A-Za-z-]"
                    )));
                }
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    ids.push(Ident::Num(
                        number(p, "pre-release identifier").map_err(err)?,
                    ));
                } else {
                    ids.push(Ident::Alpha(p.to_string()));
                }
            }
        }
        Ok(Version { release, pre: ids })
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.release.len().max(other.release.len());
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        for i in 0..n {
            match at(&self.release, i).cmp(&at(&other.release, i)) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.pre.cmp(&other.pre),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

/// A bundle as the guard sees it: the one being activated, or the one a generation runs.
#[derive(Debug, Clone, Copy)]
pub struct BundleRef<'a> {
    /// Bundle name.
    pub name: &'a str,
    /// Bundle version.
    pub version: &'a str,
    /// Bundle identity.
    pub identity: &'a str,
}

/// How an accepted activation relates to the current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing is current yet.
    First,
    /// A different bundle name runs now: versions are not comparable.
    OtherBundle {
        /// Name of the bundle that runs now.
        current: String,
    },
    /// A higher version.
    Upgrade {
        /// Version now.
        from: String,
        /// Version activated.
        to: String,
    },
    /// The very same bundle (same identity).
    Same,
    /// Same version, different identity: a rebuild.
    Rebuild {
        /// The version.
        version: String,
        /// Identity now.
        from: String,
        /// Identity activated.
        to: String,
    },
    /// A lower version, allowed by `--allow-downgrade`.
    Downgrade {
        /// Version now.
        from: String,
        /// Version activated.
        to: String,
    },
    /// Not compared (a version is malformed), allowed by `--allow-downgrade`.
    Unchecked {
        /// Why.
        reason: String,
    },
}

impl Transition {
    /// A line for the plan output, when there is something worth saying.
    pub fn note(&self) -> Option<String> {
        let short = |s: &str| s[..s.len().min(12)].to_string();
        match self {
            Transition::First | Transition::Same | Transition::Upgrade { .. } => None,
            Transition::OtherBundle { current } => Some(format!(
                "the current generation runs bundle {current}; versions of different bundles are not compared"
            )),
            Transition::Rebuild { version, from, to } => Some(format!(
                "same version {version} as the current generation, different build (identity {} replaces {})",
                short(to),
                short(from)
            )),
            Transition::Downgrade { from, to } => Some(format!(
                "downgrade from {from} to {to} (allowed by --allow-downgrade)"
            )),
            Transition::Unchecked { reason } => Some(format!(
                "version not compared (allowed by --allow-downgrade): {reason}"
            )),
        }
    }
}

/// Why the guard refused an activation.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum GuardError {
    /// A lower version than the current generation's.
    #[error("{name} {to} is older than {name} {from} of the current generation {generation}: refusing to downgrade without --allow-downgrade (`reemo-bundle rollback` returns to an earlier generation)")]
    Downgrade {
        /// Bundle name.
        name: String,
        /// Current version.
        from: String,
        /// Version being activated.
        to: String,
        /// Current generation.
        generation: u64,
    },
    /// A version that does not parse, so no comparison is possible.
    #[error("{field}: {error}; cannot compare it with the current generation's (--allow-downgrade skips the version check)")]
    Malformed {
        /// Which field: the bundle's or the current generation's.
        field: String,
        /// The parse error.
        error: VersionError,
    },
}

/// The downgrade guard: compare the candidate `new` with what the current generation
/// (`current`: its number and bundle) runs.
pub fn check_transition(
    current: Option<(u64, BundleRef)>,
    new: BundleRef,
    allow_downgrade: bool,
) -> Result<Transition, GuardError> {
    let Some((generation, cur)) = current else {
        return Ok(Transition::First);
    };
    if cur.name != new.name {
        return Ok(Transition::OtherBundle {
            current: cur.name.to_string(),
        });
    }
    if cur.identity == new.identity {
        return Ok(Transition::Same);
    }
    let parse = || -> Result<(Version, Version), GuardError> {
        let n = Version::parse(new.version).map_err(|error| GuardError::Malformed {
            field: format!("bundle.json field \"version\" of {}", new.name),
            error,
        })?;
        let c = Version::parse(cur.version).map_err(|error| GuardError::Malformed {
            field: format!("the bundle version of the current generation {generation}"),
            error,
        })?;
        Ok((c, n))
    };
    let (c, n) = match parse() {
        Ok(v) => v,
        Err(e) if allow_downgrade => {
            return Ok(Transition::Unchecked {
                reason: e.to_string(),
            })
        }
        Err(e) => return Err(e),
    };
    match n.cmp(&c) {
        Ordering::Greater => Ok(Transition::Upgrade {
            from: cur.version.into(),
            to: new.version.into(),
        }),
        Ordering::Equal => Ok(Transition::Rebuild {
            version: new.version.into(),
            from: cur.identity.into(),
            to: new.identity.into(),
        }),
        Ordering::Less if allow_downgrade => Ok(Transition::Downgrade {
            from: cur.version.into(),
            to: new.version.into(),
        }),
        Ordering::Less => Err(GuardError::Downgrade {
            name: new.name.into(),
            from: cur.version.into(),
            to: new.version.into(),
            generation,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        // Each version is lower than the next (semver §11's example chain, then ours).
        let chain = [
            "0.9",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.2",
            "1.10.0",
            "2.14.0",
            "2.14.0.1",
            "10.0.0",
        ];
        for w in chain.windows(2) {
            let (a, b) = (Version::parse(w[0]).unwrap(), Version::parse(w[1]).unwrap());
            assert!(a < b, "{} < {}", w[0], w[1]);
            assert!(b > a, "{} > {}", w[1], w[0]);
        }
        let eq = [
            ("1.4", "1.4.0"),
            ("1", "1.0.0.0"),
            ("1.0.0+build.5", "1.0.0"),
            ("1.0.0-rc.1+x", "1.0.0-rc.1"),
        ];
        for (a, b) in eq {
            assert_eq!(
                Version::parse(a).unwrap().cmp(&Version::parse(b).unwrap()),
                Ordering::Equal,
                "{a} = {b}"
            );
        }
    }

    #[test]
    fn malformed() {
        let cases = [
            ("", "empty release part"),
            ("latest", "component \"latest\" is not a number"),
            ("v1.0.0", "component \"v1\" is not a number"),
            ("1..0", "empty component"),
            ("1.0.", "empty component"),
            ("01.0", "component \"01\" has a leading zero"),
            ("1.0.0-", "empty identifier in pre-release \"\""),
            ("1.0.0-rc..1", "empty identifier in pre-release \"rc..1\""),
            (
                "1.0.0-rc.01",
                "pre-release identifier \"01\" has a leading zero",
            ),
            (
                "1.0.0-rc_1",
                "pre-release identifier \"rc_1\" has characters",
            ),
            ("1.0.0+", "build metadata \"\""),
            ("-rc.1", "empty release part"),
            ("99999999999999999999", "is too large"),
        ];
        for (v, want) in cases {
            let e = Version::parse(v).unwrap_err();
            assert_eq!(e.version, v);
            let msg = e.to_string();
            assert!(msg.contains(want), "{v:?}: {msg}");
            assert!(
                msg.starts_with(&format!("version {v:?} is malformed: ")),
                "{msg}"
            );
        }
    }

    fn cur<'a>(version: &'a str, identity: &'a str) -> Option<(u64, BundleRef<'a>)> {
        Some((4, new(version, identity)))
    }

    fn new<'a>(version: &'a str, identity: &'a str) -> BundleRef<'a> {
        BundleRef {
            name: "relayws",
            version,
            identity,
        }
    }

    #[test]
    fn guard() {
        let t = |c, n, allow| check_transition(c, n, allow);
        assert_eq!(t(None, new("1.0.0", "a"), false), Ok(Transition::First));
        assert_eq!(
            t(None, new("not-a-version", "a"), false),
            Ok(Transition::First),
            "nothing to compare with"
        );
        assert_eq!(
            t(cur("1.0.0", "a"), new("2.0.0", "b"), false),
            Ok(Transition::Upgrade {
                from: "1.0.0".into(),
                to: "2.0.0".into()
            })
        );
        assert_eq!(
            t(cur("2.0.0", "a"), new("2.0.0", "a"), false),
            Ok(Transition::Same)
        );
        let rebuild = t(cur("2.0.0", "aaaa"), new("2.0.0", "bbbb"), false).unwrap();
        assert_eq!(
            rebuild.note().unwrap(),
            "same version 2.0.0 as the current generation, different build (identity bbbb replaces aaaa)"
        );
        let e = t(cur("2.0.0", "a"), new("1.0.0", "b"), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "relayws 1.0.0 is older than relayws 2.0.0 of the current generation 4: refusing to downgrade without --allow-downgrade (`reemo-bundle rollback` returns to an earlier generation)"
        );
        assert_eq!(
            t(cur("2.0.0", "a"), new("2.0.0-rc.1", "b"), false),
            Err(GuardError::Downgrade {
                name: "relayws".into(),
                from: "2.0.0".into(),
                to: "2.0.0-rc.1".into(),
                generation: 4
            })
        );
        assert_eq!(
            t(cur("2.0.0", "a"), new("1.0.0", "b"), true),
            Ok(Transition::Downgrade {
                from: "2.0.0".into(),
                to: "1.0.0".into()
            })
        );
        let other = check_transition(
            cur("9.0.0", "a"),
            BundleRef {
                name: "infra",
                version: "1.0.0",
                identity: "b",
            },
            false,
        );
        assert_eq!(
            other,
            Ok(Transition::OtherBundle {
                current: "relayws".into()
            })
        );
        // malformed: the field is named, and --allow-downgrade skips the comparison
        let e = t(cur("1.0.0", "a"), new("next", "b"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "bundle.json field \"version\" of relayws: version \"next\" is malformed"
            ),
            "{e}"
        );
        assert!(
            e.contains("--allow-downgrade skips the version check"),
            "{e}"
        );
        let e = t(cur("old", "a"), new("1.0.0", "b"), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "the bundle version of the current generation 4: version \"old\" is malformed"
            ),
            "{e}"
        );
        assert!(matches!(
            t(cur("old", "a"), new("1.0.0", "b"), true),
            Ok(Transition::Unchecked { .. })
        ));
    }
}
