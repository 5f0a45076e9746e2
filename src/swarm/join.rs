//! `swarm join` inputs, validated before anything touches an engine: the join token (a
//! secret, read from a file by the loader and never shown), the managers to join through,
//! and this node's listen, advertise and data path addresses.
//!
//! A manager token and a worker token have the same shape (the swarm CA's digest and a
//! random secret); only the swarm knows which role a token grants. So the format is checked
//! here, and the role once the node has joined (`crate::loader::cluster`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use thiserror::Error;

/// The swarm's control port (raft and the node API), Docker's default.
pub const SWARM_PORT: u16 = 2377;

/// Length of the CA digest part of a token (base 36, zero-padded).
const DIGEST_LEN: usize = 50;
/// Length of the secret part of a token (base 36, zero-padded).
const SECRET_LEN: usize = 25;

/// Why a text is not a swarm join token. The messages describe the shape found, never the
/// characters: a token that is slightly wrong is still mostly a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Nothing but white space.
    #[error("is empty")]
    Empty,
    /// More than one non-empty line.
    #[error("holds {0} lines; expected the token alone on one line")]
    Lines(usize),
    /// It does not start with `SWMTKN-`.
    #[error("does not hold a swarm join token (one starts with SWMTKN-)")]
    NotSwarm,
    /// A token version this tool does not know.
    #[error("holds a join token of an unknown version (SWMTKN-1 and SWMTKN-2 are known)")]
    Version,
    /// The parts after the version do not have the expected number or lengths.
    #[error("holds a malformed join token: {0}")]
    Shape(String),
}

/// A swarm join token (`SWMTKN-1-<CA digest>-<secret>`, or `SWMTKN-2-<FIPS flag>-…`). Its
/// `Debug` and `Display` never show it; [`JoinToken::expose`] is for the engine request and
/// the token file only.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(********)")
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

fn base36(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

fn part(what: &str, s: &str, len: usize) -> Result<(), TokenError> {
    if s.len() != len {
        return Err(TokenError::Shape(format!(
            "its {what} has {} characters, expected {len}",
            s.len()
        )));
    }
    if !base36(s) {
        return Err(TokenError::Shape(format!(
            "its {what} is not base 36 (0-9, a-z)"
        )));
    }
    Ok(())
}

impl JoinToken {
    /// Parse the content of a token file: the token alone, surrounding white space ignored.
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let token = match lines.as_slice() {
            [] => return Err(TokenError::Empty),
            [one] => *one,
            more => return Err(TokenError::Lines(more.len())),
        };
        let Some(rest) = token.strip_prefix("SWMTKN-") else {
            return Err(TokenError::NotSwarm);
        };
        let parts: Vec<&str> = rest.split('-').collect();
        let (digest, secret) = match parts.as_slice() {
            ["1", d, s] => (*d, *s),
            ["2", fips, d, s] => {
                if !matches!(*fips, "0" | "1") {
                    return Err(TokenError::Shape(
                        "its FIPS flag (after SWMTKN-2-) is not 0 or 1".into(),
                    ));
                }
                (*d, *s)
            }
            ["1" | "2", ..] => {
                return Err(TokenError::Shape(format!(
                    "{} parts separated by '-', expected SWMTKN-1-<CA digest>-<secret>",
                    parts.len() + 1
                )))
            }
            _ => return Err(TokenError::Version),
        };
        part("CA digest", digest, DIGEST_LEN)?;
        part("secret", secret, SECRET_LEN)?;
        Ok(JoinToken(token.to_string()))
    }

    /// The token itself, for the engine request and the token file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token (and of its secret part) replaced, for
    /// messages that come back from a daemon.
    pub fn scrub(&self, text: &str) -> String {
        let secret = self.0.rsplit('-').next().unwrap_or_default();
        let t = text.replace(&self.0, "<join token>");
        if secret.is_empty() {
            t
        } else {
            t.replace(secret, "<join token secret>")
        }
    }
}

/// An IP address or an interface name, as Docker takes them in `--advertise-addr`,
/// `--listen-addr` and `--data-path-addr`.
fn ip_or_interface(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
        || (!s.is_empty()
            && s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// A DNS host name (labels of letters, digits and '-').
fn host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn port(option: &str, value: &str, p: &str) -> Result<u16> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{option} {value:?}: port {p:?} is not a number from 1 to 65535"),
    }
}

/// Split `HOST[:PORT]` (`[V6]:PORT` for IPv6); the host as given (brackets kept off).
fn split_port<'a>(option: &str, value: &'a str) -> Result<(&'a str, Option<u16>)> {
    if let Some(rest) = value.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            bail!("{option} {value:?}: expected [IPV6]:PORT");
        };
        if host.parse::<Ipv6Addr>().is_err() {
            bail!("{option} {value:?}: {host:?} is not an IPv6 address");
        }
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(port(option, value, p)?))),
            None if after.is_empty() => Ok((host, None)),
            None => bail!("{option} {value:?}: expected [IPV6]:PORT"),
        };
    }
    if value.parse::<Ipv6Addr>().is_ok() {
        // a bare IPv6 address has no port
        return Ok((value, None));
    }
    match value.rsplit_once(':') {
        Some((h, p)) => Ok((h, Some(port(option, value, p)?))),
        None => Ok((value, None)),
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One `--remote ADDR[:PORT]`: a manager's IP address or host name, port 2377 by default.
pub fn remote_addr(value: &str) -> Result<String> {
    let option = "--remote";
    let (host, p) = split_port(option, value)?;
    let ok = host.parse::<IpAddr>().is_ok() || host_name(host);
    if !ok {
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !host.is_empty() {
            bail!("{option} {value:?}: {host:?} is not an IPv4 address");
        }
        bail!("{option} {value:?}: expected a manager's IP address or host name, with an optional :PORT (default {SWARM_PORT})");
    }
    if host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_unspecified()) {
        bail!("{option} {value:?}: 0.0.0.0 is not a manager's address");
    }
    Ok(join_host_port(host, p.unwrap_or(SWARM_PORT)))
}

/// `--listen-addr` / `--advertise-addr` values: `IP|INTERFACE[:PORT]`.
fn node_addr(option: &str, value: &str) -> Result<String> {
    let (host, p) = split_port(option, value)?;
    if !ip_or_interface(host) {
        bail!("{option} {value:?}: expected an IP address or an interface name (e.g. eth0), with an optional :PORT");
    }
    Ok(match p {
        Some(p) => join_host_port(host, p),
        None => host.to_string(),
    })
}

/// What `swarm join` is given, before validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinOptions {
    /// `--remote` values: managers of the swarm to join.
    pub remotes: Vec<String>,
    /// `--advertise-addr`: the address other nodes reach this one at.
    pub advertise: Option<String>,
    /// `--listen-addr`: where this manager listens for swarm traffic (default
    /// `0.0.0.0:2377`).
    pub listen: Option<String>,
    /// `--data-path-addr`: the address for overlay (VXLAN) traffic.
    pub data_path: Option<String>,
}

/// A validated join request (the Engine API's `SwarmJoinRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// `RemoteAddrs`: `HOST:PORT` of the managers.
    pub remotes: Vec<String>,
    /// `ListenAddr`.
    pub listen: String,
    /// `AdvertiseAddr`.
    pub advertise: Option<String>,
    /// `DataPathAddr`.
    pub data_path: Option<String>,
    /// `JoinToken` (hidden from `Debug`).
    pub token: JoinToken,
}

impl JoinOptions {
    /// Check every address and make the request; nothing has touched an engine yet.
    pub fn request(&self, token: JoinToken) -> Result<JoinRequest> {
        if self.remotes.is_empty() {
            bail!("--remote: give the address of at least one manager of the swarm to join (ADDR[:PORT], port {SWARM_PORT} by default)");
        }
        let mut remotes = Vec::new();
        for r in &self.remotes {
            let r = remote_addr(r)?;
            if !remotes.contains(&r) {
                remotes.push(r);
            }
        }
        let listen = match &self.listen {
            Some(l) => node_addr("--listen-addr", l)?,
            None => format!("0.0.0.0:{SWARM_PORT}"),
        };
        let advertise = match &self.advertise {
            Some(a) => Some(node_addr("--advertise-addr", a)?),
            None => None,
        };
        let data_path = match &self.data_path {
            Some(d) if ip_or_interface(d) => Some(d.clone()),
            Some(d) => bail!(
                "--data-path-addr {d:?}: expected an IP address or an interface name (e.g. eth1), without a port"
            ),
            None => None,
        };
        Ok(JoinRequest {
            remotes,
            listen,
            advertise,
            data_path,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token of the right shape (made up: digits and letters in the right counts).
    fn sample(version: &str) -> String {
        format!(
            "SWMTKN-{version}{}-{}",
            "0a1b2c3d4e".repeat(5),
            "zyxwv".repeat(5)
        )
    }

    #[test]
    fn tokens_of_both_versions_parse_and_never_show() {
        let t = JoinToken::parse(&format!("\n  {}  \n", sample("1-"))).unwrap();
        assert_eq!(t.expose(), sample("1-"));
        assert_eq!(format!("{t:?} {t}"), "JoinToken(********) ********");
        assert!(JoinToken::parse(&sample("2-1-")).is_ok());
        let scrubbed = t.scrub(&format!(
            "daemon: bad token {} (secret zyxwvzyxwvzyxwvzyxwvzyxwv)",
            t.expose()
        ));
        assert_eq!(
            scrubbed,
            "daemon: bad token <join token> (secret <join token secret>)"
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let good = sample("1-");
        let table: Vec<(String, &str)> = vec![
            ("".into(), "is empty"),
            (" \n\t\n".into(), "is empty"),
            (format!("{good}\n{good}\n"), "holds 2 lines"),
            (
                "docker swarm join --token x".into(),
                "one starts with SWMTKN-",
            ),
            (good.replace("SWMTKN-1-", "SWMTKN-3-"), "unknown version"),
            (format!("{good}-extra"), "5 parts"),
            (
                good.replacen("0a1b", "0a1", 1),
                "CA digest has 49 characters, expected 50",
            ),
            (good.replacen("0a1b", "0A1B", 1), "CA digest is not base 36"),
            (format!("{good}q"), "secret has 26 characters, expected 25"),
            (sample("2-7-"), "FIPS flag"),
        ];
        for (text, want) in table {
            let e = JoinToken::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("zyxwv") && !e.contains("0a1b2c"), "{e}");
        }
    }

    fn opts(remotes: &[&str]) -> JoinOptions {
        JoinOptions {
            remotes: remotes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn token() -> JoinToken {
        JoinToken::parse(&sample("1-")).unwrap()
    }

    #[test]
    fn remotes_get_the_swarm_port_and_bad_ones_are_named() {
        let r = opts(&[
            "10.0.0.1",
            "10.0.0.2:4000",
            "mgr-3.example",
            "[fd00::1]",
            "10.0.0.1:2377",
        ])
        .request(token())
        .unwrap();
        assert_eq!(
            r.remotes,
            [
                "10.0.0.1:2377",
                "10.0.0.2:4000",
                "mgr-3.example:2377",
                "[fd00::1]:2377"
            ]
        );
        assert_eq!(r.listen, "0.0.0.0:2377");
        let table = [
            ("10.0.0.1:0", "port \"0\""),
            ("10.0.0.1:http", "port \"http\""),
            ("10.0.0.300", "not an IPv4 address"),
            (
                "-bad-.example",
                "expected a manager's IP address or host name",
            ),
            ("a b", "expected a manager's IP address or host name"),
            ("[fd00::1", "expected [IPV6]:PORT"),
            ("0.0.0.0", "not a manager's address"),
        ];
        for (v, want) in table {
            let e = opts(&[v]).request(token()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--remote {v:?}")), "{e}");
            assert!(e.contains(want), "{v}: {e}");
        }
        let e = opts(&[]).request(token()).unwrap_err().to_string();
        assert!(
            e.contains("--remote: give the address of at least one manager"),
            "{e}"
        );
    }

    #[test]
    fn node_addresses_are_ips_or_interfaces() {
        let mut o = opts(&["10.0.0.1"]);
        o.advertise = Some("eth0:2377".into());
        o.listen = Some("10.0.0.5".into());
        o.data_path = Some("eth1".into());
        let r = o.request(token()).unwrap();
        assert_eq!(
            (
                r.advertise.as_deref(),
                r.listen.as_str(),
                r.data_path.as_deref()
            ),
            (Some("eth0:2377"), "10.0.0.5", Some("eth1"))
        );
        for (field, value, want) in [
            ("advertise", "not an interface!", "--advertise-addr"),
            ("advertise", "10.0.0.1:99999", "--advertise-addr"),
            ("listen", "10.1.2", "--listen-addr"),
            ("data", "10.0.0.1:4789", "--data-path-addr"),
        ] {
            let mut o = opts(&["10.0.0.1"]);
            let v = Some(value.to_string());
            match field {
                "advertise" => o.advertise = v,
                "listen" => o.listen = v,
                _ => o.data_path = v,
            }
            let e = o.request(token()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{value}: {e}");
        }
        assert!(format!("{:?}", o_req()).contains("JoinToken(********)"));
    }

    fn o_req() -> JoinRequest {
        opts(&["10.0.0.1"]).request(token()).unwrap()
    }
}
