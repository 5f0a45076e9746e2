//! Configuration: a TOML file (optional) overridden by `RELAY_*` environment variables, then
//! the secrets it names read from files (Swarm mounts them under /run/secrets/).

use crate::token::KeySet;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default config path, read only if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ws-relay-server/config.toml";

/// Every setting of the server; see relay/README.md for the reference.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the single listener (relay, control API, health, metrics).
    pub listen: SocketAddr,
    /// Base URL put in the URLs returned by the control API (e.g. `wss://relay.example.com`);
    /// empty: derived from the request's Host header.
    pub public_url: String,
    /// File with one `KEYID=SECRET` per line; the first key signs minted tokens.
    pub token_keys_file: PathBuf,
    /// File holding the control API secret; control API disabled when it does not exist.
    pub control_secret_file: PathBuf,
    /// How long the first side waits for the other, seconds.
    pub pair_timeout_secs: u64,
    /// Time allowed for TLS and the HTTP request head, seconds (at most 10).
    pub handshake_timeout_secs: u64,
    /// A paired session with no message either way for this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// A peer that does not take one message within this time is disconnected, seconds.
    pub stall_timeout_secs: u64,
    /// After SIGTERM, running sessions get this long to end, seconds.
    pub drain_timeout_secs: u64,
    /// Lifetime of tokens minted by the control API, seconds.
    pub session_ttl_secs: u64,
    /// Largest accepted frame payload, bytes.
    pub max_frame_bytes: usize,
    /// Largest accepted message, bytes.
    pub max_message_bytes: usize,
    /// Bytes read from a WebSocket connection's socket at once, bytes (into a buffer per
    /// thread: an idle connection holds none, see `spill`).
    pub read_buffer_bytes: usize,
    /// Budget for bytes read from senders and not yet written to their peers, all sessions
    /// together; beyond it reading pauses (backpressure), bytes.
    pub max_bytes_in_flight: u64,
    /// Maximum number of open client connections.
    pub max_connections: usize,
    /// Maximum number of open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// `error`, `warn`, `info` or `debug`.
    pub log_level: String,
    /// TLS; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

/// Certificate and key for rustls.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: String::new(),
            token_keys_file: PathBuf::from("/run/secrets/relay_token_keys"),
            control_secret_file: PathBuf::from("/run/secrets/relay_control_secret"),
            pair_timeout_secs: 30,
            handshake_timeout_secs: 5,
            idle_timeout_secs: 600,
            stall_timeout_secs: 20,
            drain_timeout_secs: 3600,
            session_ttl_secs: 3600,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 4 << 20,
            read_buffer_bytes: 4096,
            max_bytes_in_flight: 256 << 20,
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            log_level: "info".into(),
            tls: None,
        }
    }
}

impl Config {
    /// Loads `path` (or the default path if it exists), then applies `env` overrides.
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    /// Applies `RELAY_<FIELD>` (and `RELAY_TLS_CERT_FILE` / `RELAY_TLS_KEY_FILE`) overrides.
    pub fn apply_env(&mut self, env: &[(String, String)]) -> Result<()> {
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T> {
            v.parse()
                .map_err(|_| anyhow::anyhow!("environment {k}={v:?}: expected a number"))
        }
        let mut cert = None;
        let mut key = None;
        for (k, v) in env {
            let Some(field) = k.strip_prefix("RELAY_") else {
                continue;
            };
            match field {
                "LISTEN" => {
                    self.listen = v
                        .parse()
                        .with_context(|| format!("environment {k}={v:?}: expected IP:PORT"))?
                }
                "PUBLIC_URL" => self.public_url = v.clone(),
                "TOKEN_KEYS_FILE" => self.token_keys_file = v.into(),
                "CONTROL_SECRET_FILE" => self.control_secret_file = v.into(),
                "PAIR_TIMEOUT_SECS" => self.pair_timeout_secs = num(k, v)?,
                "HANDSHAKE_TIMEOUT_SECS" => self.handshake_timeout_secs = num(k, v)?,
                "IDLE_TIMEOUT_SECS" => self.idle_timeout_secs = num(k, v)?,
                "STALL_TIMEOUT_SECS" => self.stall_timeout_secs = num(k, v)?,
                "DRAIN_TIMEOUT_SECS" => self.drain_timeout_secs = num(k, v)?,
                "SESSION_TTL_SECS" => self.session_ttl_secs = num(k, v)?,
                "MAX_FRAME_BYTES" => self.max_frame_bytes = num(k, v)?,
                "MAX_MESSAGE_BYTES" => self.max_message_bytes = num(k, v)?,
                "READ_BUFFER_BYTES" => self.read_buffer_bytes = num(k, v)?,
                "MAX_BYTES_IN_FLIGHT" => self.max_bytes_in_flight = num(k, v)?,
                "MAX_CONNECTIONS" => self.max_connections = num(k, v)?,
                "MAX_CONNECTIONS_PER_IP" => self.max_connections_per_ip = num(k, v)?,
                "LOG_LEVEL" => self.log_level = v.clone(),
                "TLS_CERT_FILE" => cert = Some(PathBuf::from(v)),
                "TLS_KEY_FILE" => key = Some(PathBuf::from(v)),
                _ => bail!("unknown environment variable {k}"),
            }
        }
        match (cert, key, &mut self.tls) {
            (None, None, _) => {}
            (c, k, Some(tls)) => {
                if let Some(c) = c {
                    tls.cert_file = c;
                }
                if let Some(k) = k {
                    tls.key_file = k;
                }
            }
            (Some(cert_file), Some(key_file), None) => {
                self.tls = Some(TlsConfig {
                    cert_file,
                    key_file,
                })
            }
            _ => bail!("RELAY_TLS_CERT_FILE and RELAY_TLS_KEY_FILE must be set together"),
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if self.handshake_timeout_secs == 0 || self.handshake_timeout_secs > 10 {
            bail!("handshake_timeout_secs must be between 1 and 10");
        }
        for (name, v) in [
            ("pair_timeout_secs", self.pair_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("stall_timeout_secs", self.stall_timeout_secs),
            ("session_ttl_secs", self.session_ttl_secs),
        ] {
            if v == 0 {
                bail!("{name} must be positive");
            }
        }
        if self.max_frame_bytes == 0 || self.max_message_bytes < self.max_frame_bytes {
            bail!("max_message_bytes must be at least max_frame_bytes (and both positive)");
        }
        if self.max_bytes_in_flight < self.max_message_bytes as u64 {
            bail!("max_bytes_in_flight must be at least max_message_bytes");
        }
        if !(256..=1 << 20).contains(&self.read_buffer_bytes) {
            bail!("read_buffer_bytes must be between 256 and 1048576");
        }
        if !["error", "warn", "info", "debug"].contains(&self.log_level.as_str()) {
            bail!("log_level must be error, warn, info or debug");
        }
        if !self.public_url.is_empty()
            && !["ws://", "wss://", "http://", "https://"]
                .iter()
                .any(|p| self.public_url.starts_with(p))
        {
            bail!("public_url must start with ws://, wss://, http:// or https://");
        }
        Ok(())
    }

    /// Duration helper.
    pub fn secs(v: u64) -> Duration {
        Duration::from_secs(v)
    }
}

/// Reads the token keys; a missing file is a startup error naming it.
pub fn read_keys(path: &Path) -> Result<KeySet> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading token keys file {} (set token_keys_file or RELAY_TOKEN_KEYS_FILE; there is no default key)",
            path.display()
        )
    })?;
    KeySet::parse(&text).with_context(|| format!("parsing token keys file {}", path.display()))
}

/// Reads the control secret: `None` when the file does not exist (control API disabled).
pub fn read_control_secret(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim();
            if s.len() < 16 {
                bail!(
                    "control secret in {} is shorter than 16 characters",
                    path.display()
                );
            }
            Ok(Some(s.as_bytes().to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading control secret {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:9000\"\npair_timeout_secs = 5\n[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&p),
            &env(&[
                ("RELAY_PAIR_TIMEOUT_SECS", "7"),
                ("RELAY_TLS_KEY_FILE", "/k2"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(cfg.pair_timeout_secs, 7);
        assert_eq!(cfg.max_message_bytes, 4 << 20);
        let tls = cfg.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/c"));
        assert_eq!(tls.key_file, PathBuf::from("/k2"));
    }

    #[test]
    fn errors_table() {
        let dir = tempfile::tempdir().unwrap();
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            ("listn = \"x\"", vec![], "unknown field"),
            ("pair_timeout_secs = \"5\"", vec![], "invalid type"),
            ("", vec![("RELAY_LISTEN", "nope")], "expected IP:PORT"),
            (
                "",
                vec![("RELAY_IDLE_TIMEOUT_SECS", "x")],
                "expected a number",
            ),
            (
                "",
                vec![("RELAY_BOGUS", "1")],
                "unknown environment variable",
            ),
            (
                "",
                vec![("RELAY_TLS_CERT_FILE", "/c")],
                "must be set together",
            ),
            ("handshake_timeout_secs = 30", vec![], "between 1 and 10"),
            ("max_message_bytes = 10", vec![], "at least max_frame_bytes"),
            (
                "",
                vec![("RELAY_MAX_BYTES_IN_FLIGHT", "1000")],
                "max_bytes_in_flight must be at least max_message_bytes",
            ),
            ("log_level = \"loud\"", vec![], "log_level"),
            ("public_url = \"relay.example\"", vec![], "public_url"),
        ];
        for (i, (text, e, want)) in cases.into_iter().enumerate() {
            let p = dir.path().join(format!("{i}.toml"));
            std::fs::write(&p, text).unwrap();
            let err = format!("{:#}", Config::load(Some(&p), &env(&e)).unwrap_err());
            assert!(err.contains(want), "case {i}: {err}");
        }
    }

    #[test]
    fn missing_files() {
        let err = format!(
            "{:#}",
            read_keys(Path::new("/nonexistent/keys")).unwrap_err()
        );
        assert!(err.contains("/nonexistent/keys"), "{err}");
        assert!(read_control_secret(Path::new("/nonexistent/secret"))
            .unwrap()
            .is_none());
    }
}
