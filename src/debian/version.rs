//! Debian package versions (`[epoch:]upstream[-revision]`) in dpkg's order, and the relation
//! operators of `Depends` fields. Pure; used by the index and the resolver.

use std::cmp::Ordering;
use std::fmt;

/// A parsed version; ordered as dpkg orders versions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    /// Epoch (0 when absent).
    pub epoch: u64,
    /// Upstream part.
    pub upstream: String,
    /// Debian revision (empty when absent).
    pub revision: String,
    text: String,
}

impl Version {
    /// Parse a version string; `Err` says what is wrong.
    pub fn parse(s: &str) -> Result<Version, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty version".into());
        }
        let (epoch, rest) = match t.split_once(':') {
            Some((e, r)) => (
                e.parse::<u64>()
                    .map_err(|_| format!("version {t:?}: epoch {e:?} is not a number"))?,
                r,
            ),
            None => (0, t),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() || !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "version {t:?}: upstream part must start with a digit"
            ));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || ".+~-:".contains(c);
        if !upstream.chars().all(ok) || !revision.chars().all(|c| ok(c) && c != '-' && c != ':') {
            return Err(format!("version {t:?} has an invalid character"));
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
            text: t.to_string(),
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| compare_part(&self.revision, &other.revision))
    }
}

/// Weight of a character in the non-digit runs: `~` sorts before everything (even the end),
/// letters before other characters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

/// dpkg's `verrevcmp`: alternate non-digit runs (compared by [`weight`]) and digit runs
/// (compared numerically).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            let (wa, wb) = (weight(ca), weight(cb));
            if wa != wb {
                return wa.cmp(&wb);
            }
            if ca.is_some() {
                i += 1;
            }
            if cb.is_some() {
                j += 1;
            }
        }
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let da = trim_zeros(&a[si..i]);
        let db = trim_zeros(&b[sj..j]);
        let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n..]
}

/// A relation operator of a dependency (`<<`, `<=`, `=`, `>=`, `>>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Lt,
    /// `<=` (also the obsolete `<`)
    Le,
    /// `=`
    Eq,
    /// `>=` (also the obsolete `>`)
    Ge,
    /// `>>`
    Gt,
}

impl Op {
    /// Parse an operator.
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    /// Whether `have OP want` holds.
    pub fn holds(self, have: &Version, want: &Version) -> bool {
        let o = have.cmp(want);
        match self {
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Eq => o == Ordering::Equal,
            Op::Ge => o != Ordering::Less,
            Op::Gt => o == Ordering::Greater,
        }
    }

    /// As written in control files.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn dpkg_order() {
        // Each row: a < b, as `dpkg --compare-versions a lt b` says.
        for (a, b) in [
            ("1.0", "1.1"),
            ("1.0~rc1", "1.0"),
            ("1.0~~", "1.0~"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0+"),
            ("1.0-1", "1.0-2"),
            ("1.0-9", "1.0-10"),
            ("2.6.12-1", "2.6.12-1+deb12u1"),
            ("2.6.12-1+deb12u1", "2.6.12-1+deb12u2"),
            ("9.9", "1:0.1"),
            ("1.2.3", "1.2.10"),
            ("1.0", "1.0-0.1"),
            ("3.0.11-1~deb12u2", "3.0.11-1"),
            ("10.11.6-0+deb12u1", "1:10.11.6-0+deb12u1"),
            ("2.36-9", "2.36-9+deb12u10"),
            ("007", "8"),
        ] {
            assert!(v(a) < v(b), "{a} < {b}");
            assert!(v(b) > v(a), "{b} > {a}");
        }
        assert_eq!(v("1.0").cmp(&v("1.00")), Ordering::Equal);
        assert_eq!(v("0:1.0").cmp(&v("1.0")), Ordering::Equal);
    }

    #[test]
    fn parse_errors_and_operators() {
        assert!(Version::parse("").is_err());
        assert!(Version::parse("a1").is_err());
        assert!(Version::parse("x:1").is_err());
        assert!(Version::parse("1 2").is_err());
        let p = v("1:2.3-4-5");
        assert_eq!(
            (p.epoch, p.upstream.as_str(), p.revision.as_str()),
            (1, "2.3-4", "5")
        );
        assert!(Op::parse(">=").unwrap().holds(&v("1.1"), &v("1.0")));
        assert!(!Op::parse("<<").unwrap().holds(&v("1.0"), &v("1.0")));
        assert!(Op::parse("=").unwrap().holds(&v("1.0"), &v("1.00")));
        assert!(Op::parse("!").is_none());
    }
}
