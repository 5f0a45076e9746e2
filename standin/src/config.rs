//! Configuration from the environment, parsed and checked without touching any file
//! ([`Config::from_lookup`]); then [`Config::load`] reads the secrets and certificates it
//! names. Every error names the variable (and the file) at fault.

use std::fmt;
use std::path::{Path, PathBuf};

/// A Reemo Infra service a stand-in plays (seed 001's `docker service ls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API (needs the database, HMACSECRET and API_LICENSE).
    Api,
    /// Cron tasks of the API.
    Apicron,
    /// LDAP synchronisation cron.
    Apicronldap,
    /// Log cron.
    Apicronlog,
    /// The one-shot database migration job: checks the database and exits.
    Db,
    /// The database itself: a tiny row store on a data folder.
    Mysql,
    /// The user portal (calls the API).
    Portal,
    /// Provision API.
    Proapi,
    /// Provision relay API.
    Prorelayapi,
    /// A signal service (`signal1`, `signal2`, …).
    Signal,
}

/// Every role with its name, in the order the usage lists them.
pub const ROLES: [(&str, Role); 10] = [
    ("api", Role::Api),
    ("apicron", Role::Apicron),
    ("apicronldap", Role::Apicronldap),
    ("apicronlog", Role::Apicronlog),
    ("db", Role::Db),
    ("mysql", Role::Mysql),
    ("portal", Role::Portal),
    ("proapi", Role::Proapi),
    ("prorelayapi", Role::Prorelayapi),
    ("signal", Role::Signal),
];

impl Role {
    /// The role's name as written in `STANDIN_ROLE`.
    pub fn name(self) -> &'static str {
        ROLES
            .iter()
            .find(|(_, r)| *r == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Whether the role cannot be healthy without the database.
    pub fn needs_db(self) -> bool {
        !matches!(self, Role::Mysql | Role::Portal | Role::Signal)
    }

    /// Secrets the role reads (as the real services take them from the inventory).
    pub fn secrets(self) -> &'static [&'static str] {
        match self {
            Role::Api => &["HMACSECRET", "API_LICENSE"],
            Role::Portal | Role::Signal => &["HMACSECRET"],
            _ => &[],
        }
    }

    /// Port listened on when `STANDIN_PORT` is not set.
    pub fn default_port(self) -> u16 {
        match self {
            Role::Mysql => 3306,
            _ => 8443,
        }
    }

    /// Whether the role serves HTTP (the health JSON); `mysql` speaks its row protocol and
    /// `db` serves nothing.
    pub fn serves_http(self) -> bool {
        !matches!(self, Role::Mysql | Role::Db)
    }
}

/// A `host:port` to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A service whose health this one includes, called over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name: the key in the health JSON and the name its certificate must carry.
    pub name: String,
    /// Where it listens.
    pub endpoint: Endpoint,
}

/// A secret the role needs and the file it is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Secret name (`HMACSECRET`).
    pub name: String,
    /// `NAME_FILE` if set, else `/run/secrets/NAME`.
    pub path: PathBuf,
}

/// PEM files of the listener's certificate, its key and the site CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// Certificate (and chain), `STANDIN_TLS_CERT`.
    pub cert: PathBuf,
    /// Private key, `STANDIN_TLS_KEY`.
    pub key: PathBuf,
    /// Site CA, `STANDIN_TLS_CA`: clients and peers must present a certificate it issued.
    pub ca: PathBuf,
}

/// The checked configuration of one stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What it plays.
    pub role: Role,
    /// Its service name (default the role's): the name its certificate carries.
    pub name: String,
    /// Version reported in the health JSON.
    pub version: String,
    /// Port it listens on.
    pub port: u16,
    /// The database it needs.
    pub db: Option<Endpoint>,
    /// Services it calls.
    pub peers: Vec<Peer>,
    /// Mutual TLS on its listener and to its peers (plain HTTP when absent).
    pub tls: Option<TlsPaths>,
    /// Secrets it reads.
    pub secrets: Vec<SecretRef>,
    /// `mysql`: where rows are kept.
    pub data_dir: PathBuf,
}

/// A configuration error: the variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

fn role_list() -> String {
    ROLES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// A TCP port `1..=65535`.
pub fn parse_port(var: &str, text: &str) -> Result<u16, ConfigError> {
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => err(format!("{var}: {text:?} is not a port (1-65535)")),
    }
}

/// `host:port`.
pub fn parse_endpoint(var: &str, text: &str) -> Result<Endpoint, ConfigError> {
    let Some((host, port)) = text.trim().rsplit_once(':') else {
        return err(format!("{var}: {text:?} is not host:port"));
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return err(format!("{var}: {text:?} has no valid host before the port"));
    }
    Ok(Endpoint {
        host: host.to_string(),
        port: parse_port(var, port)?,
    })
}

/// `name=host:port,name=host:port`.
pub fn parse_peers(var: &str, text: &str) -> Result<Vec<Peer>, ConfigError> {
    let mut out: Vec<Peer> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, addr)) = item.split_once('=') else {
            return err(format!("{var}: {item:?} is not name=host:port"));
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return err(format!(
                "{var}: peer name {name:?} must be lowercase letters, digits, - and _"
            ));
        }
        if name == "db" || out.iter().any(|p| p.name == name) {
            return err(format!(
                "{var}: peer {name:?} is named twice (db is the database's)"
            ));
        }
        out.push(Peer {
            name: name.to_string(),
            endpoint: parse_endpoint(var, addr)?,
        });
    }
    Ok(out)
}

impl Config {
    /// The configuration `get` gives (the process environment in `main`); checks values only.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let role = match get("STANDIN_ROLE") {
            None => return err(format!("STANDIN_ROLE is not set (one of: {})", role_list())),
            Some(r) => match ROLES.iter().find(|(n, _)| *n == r.trim()) {
                Some((_, role)) => *role,
                None => {
                    return err(format!(
                        "STANDIN_ROLE: unknown role {r:?} (one of: {})",
                        role_list()
                    ))
                }
            },
        };
        let port = match get("STANDIN_PORT") {
            Some(p) => parse_port("STANDIN_PORT", &p)?,
            None => role.default_port(),
        };
        let db = get("STANDIN_DB")
            .map(|d| parse_endpoint("STANDIN_DB", &d))
            .transpose()?;
        match (&db, role) {
            (Some(_), Role::Mysql) => {
                return err("STANDIN_DB: the mysql role is the database and connects to none")
            }
            (None, r) if r.needs_db() => {
                return err(format!(
                    "STANDIN_DB is not set: the {} role needs its database (host:port)",
                    r.name()
                ))
            }
            _ => {}
        }
        let peers = match get("STANDIN_PEERS") {
            Some(p) => parse_peers("STANDIN_PEERS", &p)?,
            None => Vec::new(),
        };
        let tls = match (
            get("STANDIN_TLS_CERT"),
            get("STANDIN_TLS_KEY"),
            get("STANDIN_TLS_CA"),
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsPaths {
                cert: cert.into(),
                key: key.into(),
                ca: ca.into(),
            }),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    ("STANDIN_TLS_CERT", cert.is_none()),
                    ("STANDIN_TLS_KEY", key.is_none()),
                    ("STANDIN_TLS_CA", ca.is_none()),
                ]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(v, _)| v)
                .collect();
                return err(format!(
                    "{} not set: mutual TLS needs the certificate, its key and the site CA",
                    missing.join(", ")
                ));
            }
        };
        if !role.serves_http() && tls.is_some() {
            return err(format!(
                "STANDIN_TLS_CERT: the {} role serves no TLS",
                role.name()
            ));
        }
        if !peers.is_empty() && tls.is_none() {
            return err("STANDIN_PEERS: peers are called over mutual TLS: set STANDIN_TLS_CERT, STANDIN_TLS_KEY and STANDIN_TLS_CA");
        }
        if !role.serves_http() && !peers.is_empty() {
            return err(format!(
                "STANDIN_PEERS: the {} role calls no peer",
                role.name()
            ));
        }
        let secrets_dir = get("STANDIN_SECRETS_DIR").unwrap_or_else(|| "/run/secrets".into());
        let secrets = role
            .secrets()
            .iter()
            .map(|name| SecretRef {
                name: name.to_string(),
                path: get(&format!("{name}_FILE"))
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Path::new(&secrets_dir).join(name)),
            })
            .collect();
        Ok(Config {
            role,
            name: get("STANDIN_NAME").unwrap_or_else(|| role.name().to_string()),
            version: get("STANDIN_VERSION").unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
            port,
            db,
            peers,
            tls,
            secrets,
            data_dir: get("STANDIN_DATA_DIR")
                .unwrap_or_else(|| "/var/lib/standin".into())
                .into(),
        })
    }

    /// Read every secret the role needs: each must be a readable, non-empty file. Returns
    /// the values by name (they are never printed).
    pub fn read_secrets(&self) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
        self.secrets
            .iter()
            .map(|s| {
                let data = std::fs::read(&s.path).map_err(|e| {
                    ConfigError(format!(
                        "secret {}: cannot read {} ({e}); give it as a Swarm secret or set {}_FILE",
                        s.name,
                        s.path.display(),
                        s.name
                    ))
                })?;
                if data.iter().all(u8::is_ascii_whitespace) {
                    return err(format!("secret {}: {} is empty", s.name, s.path.display()));
                }
                Ok((s.name.clone(), data))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    const TLS: [(&str, &str); 3] = [
        ("STANDIN_TLS_CERT", "/run/secrets/api_cert"),
        ("STANDIN_TLS_KEY", "/run/secrets/api_key"),
        ("STANDIN_TLS_CA", "/etc/reemo/ca.pem"),
    ];

    #[test]
    fn an_api_with_its_database_secrets_and_tls() {
        let mut v = vec![
            ("STANDIN_ROLE", "api"),
            ("STANDIN_DB", "mysql:3306"),
            ("STANDIN_VERSION", "2.15.2"),
            ("API_LICENSE_FILE", "/etc/license"),
        ];
        v.extend(TLS);
        let c = cfg(&v).unwrap();
        assert_eq!(c.role, Role::Api);
        assert_eq!(c.name, "api");
        assert_eq!(c.port, 8443);
        assert_eq!(c.version, "2.15.2");
        assert_eq!(
            c.db,
            Some(Endpoint {
                host: "mysql".into(),
                port: 3306
            })
        );
        assert_eq!(
            c.secrets,
            vec![
                SecretRef {
                    name: "HMACSECRET".into(),
                    path: "/run/secrets/HMACSECRET".into()
                },
                SecretRef {
                    name: "API_LICENSE".into(),
                    path: "/etc/license".into()
                },
            ]
        );
        assert_eq!(c.tls.unwrap().ca, PathBuf::from("/etc/reemo/ca.pem"));
    }

    #[test]
    fn the_database_role_and_its_defaults() {
        let c = cfg(&[("STANDIN_ROLE", "mysql")]).unwrap();
        assert_eq!((c.port, c.db, c.tls), (3306, None, None));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/standin"));
        assert!(c.secrets.is_empty());
        let c = cfg(&[("STANDIN_ROLE", "signal"), ("STANDIN_NAME", "signal2")]).unwrap();
        assert_eq!((c.name.as_str(), c.db), ("signal2", None));
    }

    #[test]
    fn peers_parse_and_need_tls() {
        let mut v = vec![
            ("STANDIN_ROLE", "portal"),
            ("STANDIN_PEERS", "api=api:8443, signal1=signal1:8443"),
        ];
        let e = cfg(&v).unwrap_err();
        assert!(
            e.0.starts_with("STANDIN_PEERS: peers are called over mutual TLS"),
            "{e}"
        );
        v.extend(TLS);
        let c = cfg(&v).unwrap();
        assert_eq!(
            c.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["api", "signal1"]
        );
        assert_eq!(c.peers[1].endpoint.to_string(), "signal1:8443");
    }

    #[test]
    fn bad_configurations_name_the_variable() {
        for (vars, want) in [
            (vec![], "STANDIN_ROLE is not set (one of: api, apicron,"),
            (
                vec![("STANDIN_ROLE", "traefik")],
                "STANDIN_ROLE: unknown role \"traefik\" (one of: api,",
            ),
            (
                vec![("STANDIN_ROLE", "signal"), ("STANDIN_PORT", "99999")],
                "STANDIN_PORT: \"99999\" is not a port (1-65535)",
            ),
            (
                vec![("STANDIN_ROLE", "signal"), ("STANDIN_PORT", "0")],
                "STANDIN_PORT: \"0\" is not a port",
            ),
            (
                vec![("STANDIN_ROLE", "api")],
                "STANDIN_DB is not set: the api role needs its database",
            ),
            (
                vec![("STANDIN_ROLE", "api"), ("STANDIN_DB", "mysql")],
                "STANDIN_DB: \"mysql\" is not host:port",
            ),
            (
                vec![("STANDIN_ROLE", "api"), ("STANDIN_DB", ":3306")],
                "STANDIN_DB: \":3306\" has no valid host",
            ),
            (
                vec![("STANDIN_ROLE", "mysql"), ("STANDIN_DB", "x:1")],
                "STANDIN_DB: the mysql role is the database",
            ),
            (
                vec![("STANDIN_ROLE", "signal"), ("STANDIN_TLS_CERT", "/c")],
                "STANDIN_TLS_KEY, STANDIN_TLS_CA not set",
            ),
            (
                vec![("STANDIN_ROLE", "portal"), ("STANDIN_PEERS", "api")],
                "STANDIN_PEERS: \"api\" is not name=host:port",
            ),
            (
                vec![("STANDIN_ROLE", "portal"), ("STANDIN_PEERS", "API=a:1")],
                "STANDIN_PEERS: peer name \"API\" must be lowercase",
            ),
            (
                vec![
                    ("STANDIN_ROLE", "portal"),
                    ("STANDIN_PEERS", "api=a:1,api=b:2"),
                ],
                "STANDIN_PEERS: peer \"api\" is named twice",
            ),
        ] {
            let e = cfg(&vars).unwrap_err();
            assert!(e.0.starts_with(want), "{vars:?}: {e}");
        }
        let mut v = vec![("STANDIN_ROLE", "mysql")];
        v.extend(TLS);
        assert_eq!(
            cfg(&v).unwrap_err().0,
            "STANDIN_TLS_CERT: the mysql role serves no TLS"
        );
    }

    #[test]
    fn secrets_must_be_readable_and_not_empty() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        let c = cfg(&[("STANDIN_ROLE", "signal"), ("STANDIN_SECRETS_DIR", dir)]).unwrap();
        let e = c.read_secrets().unwrap_err().0;
        assert!(
            e.starts_with(&format!(
                "secret HMACSECRET: cannot read {dir}/HMACSECRET ("
            )),
            "{e}"
        );
        assert!(e.ends_with("or set HMACSECRET_FILE"), "{e}");
        std::fs::write(d.path().join("HMACSECRET"), "\n").unwrap();
        assert_eq!(
            c.read_secrets().unwrap_err().0,
            format!("secret HMACSECRET: {dir}/HMACSECRET is empty")
        );
        std::fs::write(d.path().join("HMACSECRET"), "k\n").unwrap();
        assert_eq!(
            c.read_secrets().unwrap(),
            vec![("HMACSECRET".to_string(), b"k\n".to_vec())]
        );
    }
}
