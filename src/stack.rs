//! The compose v3 stack model: the subset of `docker-stack.yml` that reemo-bundle deploys,
//! parsed strictly (unknown fields are errors naming the service and field) and shared by
//! the build side (validation, `bundle.json` services) and the loader (service specs).
//!
//! Extensions (all ignored by plain `docker stack deploy`, which accepts `x-` fields in
//! services, configs and secrets since compose 3.7):
//! - `x-reemo-phase: N` on a service: deployment phase, lower first (default 0). Every
//!   service of a phase converges (jobs complete) before the next phase starts.
//! - `x-reemo-node-roles: {ROLE: "node,node", …}` at the top level and `x-reemo-role: ROLE`
//!   on a service: the service's tasks run only on the nodes of its role (host names, node
//!   IDs or addresses, usually site parameters; the loader labels them
//!   `com.reemo-bundle.role.ROLE=true`, checking each against the swarm's nodes). A role
//!   whose list is empty puts no constraint: every node has it.
//! - `x-reemo-repeat: N` on service NAME (usually a site parameter): N services NAME1 …
//!   NAMEN in its place, each a copy with `{n}` in its strings replaced by its number and
//!   tagged NAME (seed 001's signal1, signal2, …). Plain `docker stack deploy` does not know
//!   it: such a stack is deployed by the loader only.
//! - `x-reemo-tags: [NAME, …]` on a service: more names for it in `activate --only` (a tag
//!   several services carry, such as `signal` for signal1, signal2, …, names them all).
//! - `deploy.mode: replicated-job` (or `global-job`) makes a one-shot job; `x-reemo-job: true`
//!   is the same as `replicated-job`. A job must complete before the next phase.
//! - `x-reemo-generate: "TEMPLATE"` on a secret: the loader generates the content on the
//!   host once (kept in the state directory, reused by every later generation); each
//!   `{hex32}` in the template becomes 32 random bytes in hex, and a newline is appended.
//!   Such a secret is declared `external: true` so that plain `docker stack deploy` expects
//!   the operator to create it (`docker secret create NAME FILE`).
//! - `x-reemo-value: "${NAME}"` on an external secret: its content is that site value (a
//!   secret parameter: masked in plans, status and logs, never in a service spec); when the
//!   value is empty, the secret's `x-reemo-generate` makes it on the host, and without one
//!   the activation is refused. Plain `docker stack deploy` expects the operator to create it.
//!   With `x-reemo-split: ","` the content is the value's items, one per line (a list
//!   parameter as a pattern file, such as haproxy's `acl … src -f FILE`).
//! - `x-reemo-aliases: [NAME, …]` on a service: more DNS names for its tasks on its
//!   networks; services sharing an alias are found together (the entry proxy reaches
//!   signal1 … signalN as `signals`). Plain `docker stack deploy` does not know it (compose's
//!   own `networks: {default: {aliases: […]}}` form is not parsed).
//! - `x-reemo-create: {uid, gid, mode}` on a bind mount: the loader creates the host folder
//!   when it is missing, on the host it runs on, before deploying (MariaDB's data folder).
//! - `x-reemo-overlay: false` on a service: the service joins no overlay network (not even
//!   `<stack>_default`); its tasks use the node's default bridge and are reached only through
//!   `mode: host` published ports. Swarm stops such a task without the 2 s pause it takes for
//!   tasks attached to a network (moby's gossip-converge delay in the cluster executor's
//!   `Shutdown`), so a stop-first update or a rollback of the service is about 2 s faster.
//!   It cannot be combined with `networks:` or with ingress-mode ports. Plain `docker stack
//!   deploy` ignores it and attaches the service to `<stack>_default` as usual.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A parsed and validated stack file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// Compose file format version; must be 3.x.
    pub version: String,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Networks by name (`default` is implicit).
    #[serde(default)]
    pub networks: BTreeMap<String, Option<NetworkDef>>,
    /// Named volumes.
    #[serde(default)]
    pub volumes: BTreeMap<String, Option<VolumeDef>>,
    /// Swarm configs by name.
    #[serde(default)]
    pub configs: BTreeMap<String, ConfigDef>,
    /// Swarm secrets by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretDef>,
    /// Certificates the host's internal CA issues for the stack (extension), by name; a
    /// secret delivers one with `x-reemo-certificate: NAME.cert|key|chain|pem`.
    #[serde(
        rename = "x-reemo-certificates",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub certificates: BTreeMap<String, CertificateDef>,
    /// Node roles (extension): role name → the nodes that have it, comma-separated host
    /// names, node IDs or addresses (usually a site parameter); empty: every node.
    #[serde(
        rename = "x-reemo-node-roles",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub node_roles: BTreeMap<String, String>,
}

impl ComposeFile {
    /// The nodes `x-reemo-node-roles` gives each role, for the roles that name nodes.
    pub fn role_nodes(&self) -> BTreeMap<String, Vec<String>> {
        self.node_roles
            .iter()
            .map(|(role, list)| {
                let nodes: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect();
                (role.clone(), nodes)
            })
            .filter(|(_, nodes)| !nodes.is_empty())
            .collect()
    }
}

/// A certificate of `x-reemo-certificates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateDef {
    /// `server`, `client` or `both`.
    pub usage: crate::pki::Usage,
    /// DNS names and IP addresses (the first is also the subject's common name).
    pub sans: Vec<String>,
    /// Lifetime, e.g. `397d` (the default), `30d`, `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
    /// The site's public certificate: issued by the internal CA until the operator brings
    /// their own with `cert import NAME` (then that one is served, and not re-issued).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

impl CertificateDef {
    /// Its names in order, each once (site values may name the same address twice, e.g.
    /// `PUBLIC_HOST` and `PUBLIC_IP` both `127.0.0.1`).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.sans {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// Lifetime in seconds.
    pub fn lifetime_secs(&self) -> Result<i64> {
        match self.lifetime.as_deref() {
            None => Ok(crate::pki::LEAF_LIFETIME_DAYS * 86_400),
            Some(s) => lifetime_secs(s),
        }
    }
}

/// A certificate lifetime such as `397d`, `30d` or `10m`, in seconds.
pub fn lifetime_secs(s: &str) -> Result<i64> {
    match s.strip_suffix('d').and_then(|d| d.parse::<i64>().ok()) {
        Some(days) if days > 0 => Ok(days * 86_400),
        _ => Ok(parse_duration(s)? / 1_000_000_000),
    }
}

/// A string or a list of strings (`command`, `entrypoint`, `healthcheck.test`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// Shell-style string, split on whitespace.
    String(String),
    /// Exec-style list.
    List(Vec<String>),
}

impl StringOrList {
    /// The argument vector.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StringOrList::String(s) => s.split_whitespace().map(str::to_string).collect(),
            StringOrList::List(l) => l.clone(),
        }
    }
}

/// `KEY: value` map or `KEY=value` list (`environment`, `labels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MapOrList {
    /// Map form; values may be strings, numbers or booleans.
    Map(BTreeMap<String, Option<serde_yaml::Value>>),
    /// List form.
    List(Vec<String>),
}

impl MapOrList {
    /// Normalised sorted `(key, value)` pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = match self {
            MapOrList::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    let s = match v {
                        None | Some(serde_yaml::Value::Null) => String::new(),
                        Some(serde_yaml::Value::String(s)) => s.clone(),
                        Some(serde_yaml::Value::Bool(b)) => b.to_string(),
                        Some(serde_yaml::Value::Number(n)) => n.to_string(),
                        Some(other) => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (k.clone(), s)
                })
                .collect(),
            MapOrList::List(l) => l
                .iter()
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (e.clone(), String::new()),
                })
                .collect(),
        };
        v.sort();
        v
    }
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Image reference (the bundle fills in `repository:tag`).
    pub image: String,
    /// Command (arguments to the entrypoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<StringOrList>,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<StringOrList>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<MapOrList>,
    /// Container labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<MapOrList>,
    /// User to run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Container hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Run an init process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Read-only root filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Time to wait after the stop signal (duration such as `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<String>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Configs mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// Secrets mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Networks (list form); `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Volume mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Healthcheck; absent = inherit the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Swarm deployment settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// Deployment phase (extension).
    #[serde(
        rename = "x-reemo-phase",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub phase: Option<u32>,
    /// The node role whose nodes run it (extension; a key of `x-reemo-node-roles`).
    #[serde(
        rename = "x-reemo-role",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub role: Option<String>,
    /// Tags naming the service for `activate --only` besides its name (extension).
    #[serde(
        rename = "x-reemo-tags",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    /// One-shot job (extension), same as `deploy.mode: replicated-job`.
    #[serde(
        rename = "x-reemo-job",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub job: Option<bool>,
    /// `false`: join no overlay network (extension, see the module docs).
    #[serde(
        rename = "x-reemo-overlay",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub overlay: Option<bool>,
    /// More DNS names for its tasks on every network it joins (extension): several
    /// services with one alias are found together (seed 001's signals behind the entry).
    #[serde(
        rename = "x-reemo-aliases",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub aliases: Vec<String>,
}

/// A config or secret reference: short (`name`) or long form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileRef {
    /// Just the name.
    Short(String),
    /// Long form.
    Long(FileRefLong),
}

/// Long form of a config or secret reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRefLong {
    /// Name of the top-level config or secret.
    pub source: String,
    /// Path in the container (configs: absolute, default `/<source>`; secrets: under
    /// `/run/secrets/`, default `<source>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Owner uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Owner gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// File mode (decimal in YAML, e.g. 0o444 = 292).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl FileRef {
    /// Source name.
    pub fn source(&self) -> &str {
        match self {
            FileRef::Short(s) => s,
            FileRef::Long(l) => &l.source,
        }
    }
    /// Long form view.
    pub fn long(&self) -> FileRefLong {
        match self {
            FileRef::Short(s) => FileRefLong {
                source: s.clone(),
                target: None,
                uid: None,
                gid: None,
                mode: None,
            },
            FileRef::Long(l) => l.clone(),
        }
    }
}

/// A published port: `"8080:80/tcp"` or long form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Port {
    /// Short form `PUBLISHED:TARGET[/PROTO]` (ingress mode).
    Short(String),
    /// Long form.
    Long(PortLong),
}

/// Long form of a published port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortLong {
    /// Container port.
    pub target: u16,
    /// Published port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// `tcp` (default), `udp` or `sctp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `ingress` (default) or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl Port {
    /// Normalised long form.
    pub fn long(&self) -> Result<PortLong> {
        match self {
            Port::Long(l) => Ok(l.clone()),
            Port::Short(s) => {
                let (ports, proto) = match s.split_once('/') {
                    Some((p, proto)) => (p, Some(proto.to_string())),
                    None => (s.as_str(), None),
                };
                let (published, target) = match ports.split_once(':') {
                    Some((p, t)) => (Some(p), t),
                    None => (None, ports),
                };
                let num = |x: &str| {
                    x.parse::<u16>()
                        .with_context(|| format!("port {s:?}: {x:?} is not a port number"))
                };
                Ok(PortLong {
                    target: num(target)?,
                    published: published.map(num).transpose()?,
                    protocol: proto,
                    mode: None,
                })
            }
        }
    }
}

/// A volume mount: `"name:/path[:ro]"` or long form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VolumeMount {
    /// Short form.
    Short(String),
    /// Long form.
    Long(VolumeMountLong),
}

/// Long form of a volume mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMountLong {
    /// `volume` (default), `bind` or `tmpfs`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Volume name or host path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Path in the container.
    pub target: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// A bind mount's host folder, created by the loader when missing (extension).
    #[serde(
        rename = "x-reemo-create",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub create: Option<HostDirSpec>,
}

/// `x-reemo-create: {uid: 999, gid: 999, mode: 488}` on a bind mount: the loader creates
/// the host folder (and its parents) with that owner and mode when it does not exist, on
/// the host it runs on, before deploying. An existing folder is left as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDirSpec {
    /// Owner user id.
    #[serde(default)]
    pub uid: u32,
    /// Owner group id.
    #[serde(default)]
    pub gid: u32,
    /// Permission bits (decimal in YAML: 488 is 0750).
    #[serde(default = "default_dir_mode")]
    pub mode: u32,
}

fn default_dir_mode() -> u32 {
    0o755
}

impl VolumeMount {
    /// Normalised long form.
    pub fn long(&self) -> Result<VolumeMountLong> {
        match self {
            VolumeMount::Long(l) => Ok(l.clone()),
            VolumeMount::Short(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target, ro) = match parts.as_slice() {
                    [t] => (None, *t, false),
                    [s, t] => (Some(*s), *t, false),
                    [s, t, "ro"] => (Some(*s), *t, true),
                    [s, t, "rw"] => (Some(*s), *t, false),
                    _ => bail!("volume {s:?}: expected SOURCE:TARGET[:ro]"),
                };
                let kind = match source {
                    Some(src) if src.starts_with('/') || src.starts_with('.') => "bind",
                    _ => "volume",
                };
                Ok(VolumeMountLong {
                    kind: Some(kind.into()),
                    source: source.map(str::to_string),
                    target: target.to_string(),
                    read_only: ro.then_some(true),
                    create: None,
                })
            }
        }
    }
}

/// Healthcheck settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// `["CMD", …]`, `["CMD-SHELL", "…"]`, `["NONE"]` or a shell string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<StringOrList>,
    /// Interval between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Timeout of one check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Grace period after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    /// Disable the image's healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable: Option<bool>,
}

/// `deploy:` section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// `replicated` (default), `global`, `replicated-job`, `global-job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Replicas (replicated) or completions (replicated-job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// Service labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<MapOrList>,
    /// Rolling update settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    /// Swarm's own per-service rollback settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    /// Restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Resource limits and reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Placement constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// `vip` (default) or `dnsrr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<String>,
}

/// `update_config` / `rollback_config`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Tasks updated at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u64>,
    /// Delay between batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// `pause`, `continue` or `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    /// Time a task is watched after an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    /// Tolerated failure ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
    /// `stop-first` or `start-first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// `restart_policy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Delay between restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Maximum attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
    /// Window used to evaluate the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// `resources`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Hard limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceSpec>,
    /// Reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceSpec>,
}

/// CPU and memory amounts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// CPUs as a decimal string, e.g. `"0.5"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Memory, e.g. `64M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// `placement`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Constraints such as `node.role == manager`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Maximum replicas per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
}

/// Top-level network definition.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    /// Driver (default `overlay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Whether standalone containers may attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachable: Option<bool>,
    /// Pre-existing network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
    /// Explicit name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Top-level volume definition.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    /// Driver (default `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Pre-existing volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
    /// Explicit name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Top-level config definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDef {
    /// File relative to the stack file (in a bundle: `../configs/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Pre-existing config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
    /// Explicit name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The host's internal CA certificate (extension; with `external: true`).
    #[serde(
        rename = "x-reemo-ca",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ca: Option<bool>,
}

/// Top-level secret definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDef {
    /// File relative to the stack file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Pre-existing secret (with `x-reemo-generate`: created by the loader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
    /// Explicit name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Generate on the host from this template (extension); see the module docs.
    #[serde(
        rename = "x-reemo-generate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub generate: Option<String>,
    /// Content from a site value (extension, `external: true`): `x-reemo-value:
    /// "${NAME}"`, NAME a secret parameter. Empty: generated from `x-reemo-generate` when
    /// the secret has one, refused otherwise.
    #[serde(
        rename = "x-reemo-value",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<String>,
    /// With `x-reemo-value`: a separator; the secret's content is then the value's items,
    /// one per line (a list parameter as a pattern file, e.g. haproxy's `src -f`).
    #[serde(
        rename = "x-reemo-split",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub split: Option<String>,
    /// A part of a certificate of `x-reemo-certificates`: `NAME.cert`, `NAME.key`,
    /// `NAME.chain` or `NAME.pem` (extension; with `external: true`).
    #[serde(
        rename = "x-reemo-certificate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate: Option<String>,
}

impl SecretDef {
    /// The content a site value gives this secret (`x-reemo-value`, split into lines by
    /// `x-reemo-split` when it has one).
    pub fn value_content(&self, value: &str) -> Vec<u8> {
        match self.split.as_deref().filter(|s| !s.is_empty()) {
            None => value.as_bytes().to_vec(),
            Some(sep) => value
                .split(sep)
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .flat_map(|i| [i, "\n"])
                .collect::<String>()
                .into_bytes(),
        }
    }

    /// The certificate name and part of `x-reemo-certificate`.
    pub fn certificate_part(&self) -> Option<(String, Option<crate::pki::Part>)> {
        let c = self.certificate.as_deref()?;
        let (name, part) = c.rsplit_once('.').unwrap_or((c, ""));
        Some((name.to_string(), crate::pki::Part::parse(part)))
    }
}

/// What the build side records per service in `bundle.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSummary<'a> {
    /// Service name without the stack prefix.
    pub name: &'a str,
    /// Image reference as written in the stack file.
    pub image: &'a str,
    /// Deployment phase.
    pub phase: u32,
    /// Whether it is a one-shot job.
    pub job: bool,
}

/// Swarm service mode of a compose service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Long-running, N replicas.
    Replicated,
    /// Long-running, one per node.
    Global,
    /// One-shot, N completions.
    ReplicatedJob,
    /// One-shot, once per node.
    GlobalJob,
}

impl Mode {
    /// Whether the mode is a one-shot job.
    pub fn is_job(self) -> bool {
        matches!(self, Mode::ReplicatedJob | Mode::GlobalJob)
    }
}

impl Service {
    /// Swarm mode (validated by [`parse`]).
    pub fn mode(&self) -> Mode {
        let explicit = self.deploy.as_ref().and_then(|d| d.mode.as_deref());
        match explicit {
            Some("global") => Mode::Global,
            Some("replicated-job") => Mode::ReplicatedJob,
            Some("global-job") => Mode::GlobalJob,
            _ if self.job == Some(true) => Mode::ReplicatedJob,
            _ => Mode::Replicated,
        }
    }

    /// Deployment phase (default 0).
    pub fn phase(&self) -> u32 {
        self.phase.unwrap_or(0)
    }

    /// Networks the service joins (`default` when none are listed, none with
    /// `x-reemo-overlay: false`).
    pub fn network_names(&self) -> Vec<String> {
        match &self.networks {
            _ if self.overlay == Some(false) => Vec::new(),
            Some(n) if !n.is_empty() => n.clone(),
            _ => vec!["default".to_string()],
        }
    }
}

impl ComposeFile {
    /// Services in deployment order: phase, then name.
    pub fn services(&self) -> impl Iterator<Item = ServiceSummary<'_>> {
        let mut v: Vec<ServiceSummary<'_>> = self
            .services
            .iter()
            .map(|(name, s)| ServiceSummary {
                name,
                image: &s.image,
                phase: s.phase(),
                job: s.mode().is_job(),
            })
            .collect();
        v.sort_by(|a, b| (a.phase, a.name).cmp(&(b.phase, b.name)));
        v.into_iter()
    }

    /// Networks used by services, including the implicit `default` (unless every service
    /// opts out with `x-reemo-overlay: false`).
    pub fn used_networks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .services
            .values()
            .flat_map(|s| s.network_names())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Parse a duration such as `10s`, `1m30s`, `500ms`, `1h` into nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    if s.is_empty() {
        bail!("empty duration");
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            bail!("duration {s:?}: expected a number");
        }
        let n: f64 = rest[..num_end]
            .parse()
            .with_context(|| format!("duration {s:?}: bad number"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let mult = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => bail!("duration {s:?}: missing unit (s, m, h, ms)"),
            other => bail!("duration {s:?}: unknown unit {other:?}"),
        };
        total += n * mult;
    }
    Ok(total as i64)
}

/// Parse a memory amount such as `64M`, `1g`, `512k` or plain bytes.
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("memory amount {s:?} is not a number with k/m/g"))?;
    Ok((n * mult as f64) as i64)
}

/// Resolve a `file:` path written relative to the stack file into a bundle entry path
/// (`stack/docker-stack.yml` + `../configs/a.toml` = `configs/a.toml`).
pub fn resolve_relative(stack_file: &str, file: &str) -> Option<String> {
    if file.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = stack_file.split('/').collect();
    parts.pop();
    for p in file.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// The relay test fixture's stack template with `image` for its image and every site parameter at
/// its default, as the host renders it (for tests).
#[cfg(test)]
pub(crate) fn relay_template(image: &str) -> String {
    include_str!("../tests/fixtures/relay-stack.yml")
        .replace("${image:relay-image}", image)
        .replace("${RELAY_PORT}", "8080")
        .replace("${RELAY_MAX_CONNECTIONS}", "100000")
}

/// Parse and validate a stack file. `origin` names it in errors (a path or recipe name).
/// Unknown fields are rejected with the service and field named.
pub fn parse(text: &str, origin: &str) -> Result<ComposeFile> {
    let file: ComposeFile = if text.contains(REPEAT_KEY) {
        // expanded as a YAML tree (serde's errors then carry no line)
        let mut v: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        expand_repeats(&mut v).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        serde_yaml::from_value(v).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?
    } else {
        serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?
    };
    validate(&file).map_err(|(path, needle, e)| {
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        match locate(text, &keys, needle.as_deref()) {
            Some(line) => e.context(format!("{origin}:{line}")),
            None => e.context(origin.to_string()),
        }
    })?;
    Ok(file)
}

/// The service key that makes numbered copies of a service.
const REPEAT_KEY: &str = "x-reemo-repeat";
/// Most copies `x-reemo-repeat` makes.
const MAX_REPEAT: u64 = 99;

/// `x-reemo-repeat: N` on service NAME: N services NAME1 … NAMEN in its place, each a copy
/// with `{n}` in every string (keys and values) replaced by its number, and tagged NAME (so
/// that `--only NAME` names them all). Seed 001's signals: signal1, signal2, …
/// Replace `{n}` with `n` in every string of `v`, keys and values (one copy of an
/// `x-reemo-repeat` service).
pub fn number_copy(v: &mut serde_yaml::Value, n: u64) {
    use serde_yaml::Value as Y;
    match v {
        Y::String(s) => *s = s.replace("{n}", &n.to_string()),
        Y::Sequence(items) => items.iter_mut().for_each(|i| number_copy(i, n)),
        Y::Mapping(m) => {
            let old = std::mem::take(m);
            for (mut k, mut val) in old {
                number_copy(&mut k, n);
                number_copy(&mut val, n);
                m.insert(k, val);
            }
        }
        _ => {}
    }
}

fn expand_repeats(v: &mut serde_yaml::Value) -> Result<()> {
    use serde_yaml::Value as Y;
    let Some(services) = v.get_mut("services").and_then(Y::as_mapping_mut) else {
        return Ok(());
    };
    let old = std::mem::take(services);
    let names: BTreeSet<String> = old
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    for (key, mut svc) in old {
        let Some(count) = svc.as_mapping_mut().and_then(|m| m.remove(REPEAT_KEY)) else {
            services.insert(key, svc);
            continue;
        };
        let name = key.as_str().unwrap_or_default().to_string();
        let n = match &count {
            Y::Number(x) => x.as_u64(),
            Y::String(t) => t.trim().parse().ok(),
            _ => None,
        }
        .filter(|n| (1..=MAX_REPEAT).contains(n))
        .with_context(|| {
            format!("service {name}: {REPEAT_KEY} {count:?}: expected a number of copies from 1 to {MAX_REPEAT}")
        })?;
        let m = svc.as_mapping_mut().expect("checked above");
        let tags = m
            .entry(Y::String("x-reemo-tags".into()))
            .or_insert_with(|| Y::Sequence(vec![]));
        let Some(tags) = tags.as_sequence_mut() else {
            bail!("service {name}: x-reemo-tags must be a list");
        };
        tags.push(Y::String(name.clone()));
        for i in 1..=n {
            let copy = format!("{name}{i}");
            if names.contains(&copy) {
                bail!("service {name}: {REPEAT_KEY} makes {copy}, which the stack already has");
            }
            let mut c = svc.clone();
            number_copy(&mut c, i);
            services.insert(Y::String(copy), c);
        }
    }
    Ok(())
}

/// A reference from a service to a top-level object that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name:?} is not defined under top-level {kind}s")]
struct Undefined {
    kind: &'static str,
    name: String,
}

/// The 1-based line of the key at `path` in a block-style YAML text (`["services", "web",
/// "configs"]`), or, with `needle`, of the first line inside that key's block that mentions
/// `needle`. None when the text does not have the key in block style.
pub fn locate(text: &str, path: &[&str], needle: Option<&str>) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_of = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ");
        let k = t
            .split(':')
            .next()?
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        (t.contains(':') && !t.starts_with('#')).then_some(k.to_string())
    };
    let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    let (mut from, mut to) = (0, lines.len());
    let mut found = None;
    for key in path {
        // keys of this level have the indentation of the block's first line
        let level = (from..to)
            .find(|&i| !blank(lines[i]))
            .map(|i| indent(lines[i]))?;
        let (i, ind) = (from..to)
            .filter(|&i| !blank(lines[i]) && indent(lines[i]) == level)
            .find(|&i| key_of(lines[i]).as_deref() == Some(key))
            .map(|i| (i, level))?;
        found = Some(i);
        from = i + 1;
        to = (i + 1..lines.len())
            .find(|&j| !lines[j].trim().is_empty() && indent(lines[j]) <= ind)
            .unwrap_or(lines.len());
    }
    let line = found?;
    if let Some(n) = needle {
        // the key's own line (flow style `configs: [a, b]`) or a line of its block
        let mentions = |l: &str| {
            l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
                .any(|w| w == n)
        };
        if let Some(j) = (line..to).find(|&j| mentions(lines[j])) {
            return Some(j + 1);
        }
    }
    Some(line + 1)
}

type Located = (Vec<String>, Option<String>, anyhow::Error);

fn at_key(path: &[&str]) -> impl FnOnce(anyhow::Error) -> Located {
    let path = path.iter().map(|s| s.to_string()).collect();
    move |e| (path, None, e)
}

fn validate(file: &ComposeFile) -> std::result::Result<(), Located> {
    if !file.version.starts_with('3') {
        return Err(at_key(&["version"])(anyhow::anyhow!(
            "version {:?}: only compose file format 3.x is supported",
            file.version
        )));
    }
    validate_objects(file)
        .map_err(|(p, e)| at_key(&p.iter().map(String::as_str).collect::<Vec<_>>())(e))?;
    for (name, s) in &file.services {
        check_name("service", name).map_err(at_key(&["services", name]))?;
        if let Err(e) = validate_service(file, s) {
            let e = e.context(format!("service {name}"));
            if let Some(u) = e.downcast_ref::<Undefined>() {
                let path = vec!["services".into(), name.clone(), format!("{}s", u.kind)];
                let needle = Some(u.name.clone());
                return Err((path, needle, e));
            }
            return Err(at_key(&["services", name])(e));
        }
    }
    Ok(())
}

/// Top-level configs and secrets; the error carries the key path of the object at fault.
fn validate_objects(file: &ComposeFile) -> std::result::Result<(), (Vec<String>, anyhow::Error)> {
    if file.services.is_empty() {
        return Err((vec!["services".into()], anyhow::anyhow!("no services")));
    }
    for role in file.node_roles.keys() {
        check_name("role", role)
            .map_err(|e| (vec!["x-reemo-node-roles".into(), role.clone()], e))?;
    }
    fn at(kind: &str, name: &str) -> impl FnOnce(anyhow::Error) -> (Vec<String>, anyhow::Error) {
        let path = vec![kind.to_string(), name.to_string()];
        move |e| (path, e)
    }
    for (name, def) in &file.certificates {
        check_name("certificate", name).map_err(at("x-reemo-certificates", name))?;
        if def.sans.is_empty() {
            return Err(at("x-reemo-certificates", name)(anyhow::anyhow!(
                "certificate {name}: needs at least one name in `sans`"
            )));
        }
        def.lifetime_secs()
            .map_err(|e| e.context(format!("certificate {name}: lifetime")))
            .map_err(at("x-reemo-certificates", name))?;
    }
    for (name, def) in &file.configs {
        check_name("config", name).map_err(at("configs", name))?;
        if def.ca == Some(true) && (def.file.is_some() || def.external != Some(true)) {
            return Err(at("configs", name)(anyhow::anyhow!(
                "config {name}: `x-reemo-ca: true` needs `external: true` and no `file:`"
            )));
        }
        if def.file.is_none() && def.external != Some(true) {
            return Err(at("configs", name)(anyhow::anyhow!(
                "config {name}: needs `file:` or `external: true`"
            )));
        }
    }
    for (name, def) in &file.secrets {
        check_secret(name, def).map_err(at("secrets", name))?;
        if let Some((cert, part)) = def.certificate_part() {
            let bad = |m: String| Err(at("secrets", name)(anyhow::anyhow!("secret {name}: {m}")));
            if part.is_none() {
                return bad(format!(
                    "x-reemo-certificate {:?}: write NAME.cert, NAME.key, NAME.chain or NAME.pem",
                    def.certificate.as_deref().unwrap_or_default()
                ));
            }
            if !file.certificates.contains_key(&cert) {
                return bad(format!(
                    "certificate {cert:?} is not defined under x-reemo-certificates"
                ));
            }
        }
    }
    Ok(())
}

fn check_secret(name: &str, def: &SecretDef) -> Result<()> {
    check_name("secret", name)?;
    if def.certificate.is_some() {
        if def.file.is_some() || def.generate.is_some() || def.external != Some(true) {
            bail!("secret {name}: `x-reemo-certificate` needs `external: true` and neither `file:` nor `x-reemo-generate`");
        }
        return Ok(());
    }
    if def.split.is_some() && def.value.is_none() {
        bail!("secret {name}: `x-reemo-split` needs `x-reemo-value`");
    }
    if def.value.is_some() && (def.file.is_some() || def.external != Some(true)) {
        bail!("secret {name}: `x-reemo-value` needs `external: true` and no `file:`");
    }
    match (&def.file, &def.generate, def.external) {
        (Some(_), None, None | Some(false)) => {}
        (None, Some(t), _) => {
            if !t.contains("{hex32}") {
                bail!("secret {name}: x-reemo-generate template {t:?} has no {{hex32}}");
            }
        }
        (None, None, Some(true)) => {}
        (Some(_), Some(_), _) => {
            bail!("secret {name}: `file:` and `x-reemo-generate` exclude each other")
        }
        _ => bail!("secret {name}: needs `file:`, `external: true` or `x-reemo-generate`"),
    }
    Ok(())
}

pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("{kind} name {name:?}: use letters, digits, '_', '-' and '.'");
    }
    Ok(())
}

fn validate_service(file: &ComposeFile, s: &Service) -> Result<()> {
    if s.image.trim().is_empty() {
        bail!("image is empty");
    }
    if let Some(r) = &s.role {
        if !file.node_roles.contains_key(r) {
            let roles: Vec<&str> = file.node_roles.keys().map(String::as_str).collect();
            bail!(
                "x-reemo-role: {r:?} is not a role of x-reemo-node-roles (roles: {})",
                if roles.is_empty() {
                    "none".to_string()
                } else {
                    roles.join(", ")
                }
            );
        }
    }
    for t in &s.tags {
        check_name("tag", t).context("x-reemo-tags")?;
        if file.services.contains_key(t) {
            bail!(
                "x-reemo-tags: tag {t:?} is the name of a service (--only {t} would be ambiguous)"
            );
        }
    }
    let deploy = s.deploy.clone().unwrap_or_default();
    if let Some(m) = &deploy.mode {
        if !["replicated", "global", "replicated-job", "global-job"].contains(&m.as_str()) {
            bail!("deploy.mode {m:?}: expected replicated, global, replicated-job or global-job");
        }
        if s.job == Some(true) && !m.ends_with("-job") {
            bail!("x-reemo-job: true contradicts deploy.mode {m:?}");
        }
    }
    if s.mode().is_job() {
        if let Some(u) = &deploy.update_config {
            if u.order.is_some() {
                bail!("deploy.update_config.order makes no sense for a job");
            }
        }
    }
    if let Some(u) = &deploy.update_config {
        check_update(u, "deploy.update_config")?;
    }
    if let Some(u) = &deploy.rollback_config {
        check_update(u, "deploy.rollback_config")?;
    }
    if let Some(r) = &deploy.restart_policy {
        if let Some(c) = &r.condition {
            if !["none", "on-failure", "any"].contains(&c.as_str()) {
                bail!("deploy.restart_policy.condition {c:?}: expected none, on-failure or any");
            }
        }
        for d in [&r.delay, &r.window].into_iter().flatten() {
            parse_duration(d).context("deploy.restart_policy")?;
        }
    }
    if let Some(res) = &deploy.resources {
        for r in [&res.limits, &res.reservations].into_iter().flatten() {
            if let Some(c) = &r.cpus {
                c.parse::<f64>()
                    .with_context(|| format!("deploy.resources: cpus {c:?}"))?;
            }
            if let Some(m) = &r.memory {
                parse_bytes(m).context("deploy.resources")?;
            }
        }
    }
    if let Some(e) = &deploy.endpoint_mode {
        if e != "vip" && e != "dnsrr" {
            bail!("deploy.endpoint_mode {e:?}: expected vip or dnsrr");
        }
    }
    for d in [&s.stop_grace_period].into_iter().flatten() {
        parse_duration(d).context("stop_grace_period")?;
    }
    if let Some(h) = &s.healthcheck {
        for d in [&h.interval, &h.timeout, &h.start_period]
            .into_iter()
            .flatten()
        {
            parse_duration(d).context("healthcheck")?;
        }
    }
    for c in &s.configs {
        if !file.configs.contains_key(c.source()) {
            return Err(Undefined {
                kind: "config",
                name: c.source().to_string(),
            }
            .into());
        }
    }
    for c in &s.secrets {
        if !file.secrets.contains_key(c.source()) {
            return Err(Undefined {
                kind: "secret",
                name: c.source().to_string(),
            }
            .into());
        }
    }
    for p in &s.ports {
        let p = p.long()?;
        if let Some(m) = &p.mode {
            if m != "host" && m != "ingress" {
                bail!("port {}: mode {m:?}: expected host or ingress", p.target);
            }
        }
        if let Some(pr) = &p.protocol {
            if !["tcp", "udp", "sctp"].contains(&pr.as_str()) {
                bail!(
                    "port {}: protocol {pr:?}: expected tcp, udp or sctp",
                    p.target
                );
            }
        }
    }
    if s.overlay == Some(false) {
        if s.networks.as_ref().is_some_and(|n| !n.is_empty()) {
            bail!("x-reemo-overlay: false contradicts networks: (it joins no network)");
        }
        for p in &s.ports {
            let p = p.long()?;
            if p.mode.as_deref() != Some("host") {
                bail!(
                    "port {}: x-reemo-overlay: false needs `mode: host` (ingress ports use the ingress overlay network)",
                    p.target
                );
            }
        }
    }
    for n in s.network_names() {
        if n != "default" && !file.networks.contains_key(&n) {
            bail!("network {n:?} is not defined under top-level networks");
        }
    }
    for v in &s.volumes {
        let v = v.long()?;
        if v.kind.as_deref().unwrap_or("volume") == "volume" {
            if let Some(src) = &v.source {
                if !file.volumes.contains_key(src) {
                    bail!("volume {src:?} is not defined under top-level volumes");
                }
            }
        }
        if let Some(c) = &v.create {
            let bind = v.kind.as_deref() == Some("bind");
            if !bind || !v.source.as_deref().is_some_and(|p| p.starts_with('/')) {
                bail!(
                    "volume {}: x-reemo-create needs `type: bind` with an absolute source folder",
                    v.target
                );
            }
            if c.mode > 0o7777 {
                bail!(
                    "volume {}: x-reemo-create: mode {} is not a permission (0 to 4095, 488 is 0750)",
                    v.target,
                    c.mode
                );
            }
        }
    }
    for a in &s.aliases {
        check_name("alias", a).context("x-reemo-aliases")?;
        if file.services.contains_key(a) {
            bail!("x-reemo-aliases: {a:?} is the name of a service");
        }
    }
    Ok(())
}

fn check_update(u: &UpdateConfig, what: &str) -> Result<()> {
    if let Some(o) = &u.order {
        if o != "stop-first" && o != "start-first" {
            bail!("{what}.order {o:?}: expected stop-first or start-first");
        }
    }
    if let Some(f) = &u.failure_action {
        if !["pause", "continue", "rollback"].contains(&f.as_str()) {
            bail!("{what}.failure_action {f:?}: expected pause, continue or rollback");
        }
    }
    for d in [&u.delay, &u.monitor].into_iter().flatten() {
        parse_duration(d).with_context(|| what.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = r#"
version: "3.8"
services:
  relay:
    image: reemo/ws-relay-server:1.0.0-abc
    configs:
      - source: relay_config
        target: /etc/ws-relay-server/config.toml
    secrets: [relay_token_keys]
    ports:
      - target: 8080
        published: 8080
        mode: host
    deploy:
      replicas: 1
      update_config: { order: stop-first }
  migrate:
    image: busybox:1
    x-reemo-phase: 0
    deploy: { mode: replicated-job }
  portal:
    image: busybox:1
    x-reemo-phase: 2
configs:
  relay_config: { file: ../configs/relay.toml }
secrets:
  relay_token_keys:
    external: true
    x-reemo-generate: "k1={hex32}"
"#;

    #[test]
    fn parses_and_orders_services() {
        let f = parse(RELAY, "test.yml").unwrap();
        let v: Vec<_> = f.services().map(|s| (s.name, s.phase, s.job)).collect();
        assert_eq!(
            v,
            vec![
                ("migrate", 0, true),
                ("relay", 0, false),
                ("portal", 2, false)
            ]
        );
        assert_eq!(f.used_networks(), vec!["default"]);
    }

    #[test]
    fn overlay_opt_out_joins_no_network() {
        let f = parse(
            &RELAY.replace(
                "  relay:\n    image:",
                "  relay:\n    x-reemo-overlay: false\n    image:",
            ),
            "t.yml",
        )
        .unwrap();
        assert!(f.services["relay"].network_names().is_empty());
        // the other services still use the default network
        assert_eq!(f.used_networks(), vec!["default"]);
        let only = r#"
version: "3.8"
services:
  relay:
    image: r
    x-reemo-overlay: false
    ports: [{ target: 8080, published: 8080, mode: host }]
"#;
        assert!(parse(only, "t.yml").unwrap().used_networks().is_empty());
        let e = format!(
            "{:#}",
            parse(&only.replace("mode: host", "mode: ingress"), "t.yml").unwrap_err()
        );
        assert!(
            e.contains("relay") && e.contains("needs `mode: host`"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse(&only.replace(", mode: host }]", " }]"), "t.yml").unwrap_err()
        );
        assert!(e.contains("needs `mode: host`"), "{e}");
        let e = format!(
            "{:#}",
            parse(&format!("{only}    networks: [default]\n"), "t.yml").unwrap_err()
        );
        assert!(e.contains("contradicts networks"), "{e}");
    }

    #[test]
    fn unknown_field_names_service_and_field() {
        let bad = RELAY.replace(
            "    deploy:\n      replicas: 1",
            "    entrypont: x\n    deploy:\n      replicas: 1",
        );
        let e = format!("{:#}", parse(&bad, "stack.yml").unwrap_err());
        assert!(e.contains("stack.yml"), "{e}");
        assert!(e.contains("services.relay"), "{e}");
        assert!(e.contains("entrypont"), "{e}");
    }

    #[test]
    fn undefined_references_are_errors() {
        let bad = RELAY.replace("secrets: [relay_token_keys]", "secrets: [nope]");
        let e = format!("{:#}", parse(&bad, "s").unwrap_err());
        assert!(e.contains("service relay") && e.contains("nope"), "{e}");
        let line = bad.lines().position(|l| l.contains("[nope]")).unwrap() + 1;
        assert!(
            e.starts_with(&format!("s:{line}: service relay: secret \"nope\"")),
            "{e}"
        );
    }

    #[test]
    fn certificate_extensions_are_checked() {
        let base = "version: \"3.8\"\nservices:\n  web:\n    image: x\n    secrets: [tls]\n";
        let ok = format!("{base}secrets:\n  tls:\n    external: true\n    x-reemo-certificate: web.pem\nconfigs:\n  ca:\n    external: true\n    x-reemo-ca: true\nx-reemo-certificates:\n  web:\n    usage: server\n    sans: [web, \"127.0.0.1\"]\n    lifetime: 30d\n");
        let f = parse(&ok, "t.yml").unwrap();
        assert_eq!(f.certificates["web"].lifetime_secs().unwrap(), 30 * 86_400);
        assert_eq!(
            f.secrets["tls"].certificate_part(),
            Some(("web".into(), Some(crate::pki::Part::Combined)))
        );
        for (from, to, want) in [
            (
                "web.pem",
                "web.crt",
                "write NAME.cert, NAME.key, NAME.chain or NAME.pem",
            ),
            (
                "web.pem",
                "other.key",
                "certificate \"other\" is not defined under x-reemo-certificates",
            ),
            (
                "    external: true\n    x-reemo-certificate",
                "    x-reemo-certificate",
                "needs `external: true`",
            ),
            (
                "sans: [web, \"127.0.0.1\"]",
                "sans: []",
                "needs at least one name",
            ),
            ("usage: server", "usage: peer", "peer"),
        ] {
            let bad = ok.replacen(from, to, 1);
            let e = format!("{:#}", parse(&bad, "t.yml").unwrap_err());
            assert!(e.contains(want), "{to}: {e}");
            assert!(e.starts_with("t.yml"), "{e}");
        }
    }

    #[test]
    fn a_repeated_service_becomes_numbered_copies() {
        let text = "version: \"3.8\"\nservices:\n  signal:\n    image: x\n    x-reemo-repeat: 3\n    environment:\n      SIGNAL_ID: \"signal{n}\"\n      PEER_{n}: \"on\"\n    command: [\"--id\", \"{n}\"]\n  portal:\n    image: x\n";
        let f = parse(text, "t.yml").unwrap();
        let names: Vec<&str> = f.services.keys().map(String::as_str).collect();
        assert_eq!(names, vec!["portal", "signal1", "signal2", "signal3"]);
        let s2 = &f.services["signal2"];
        assert_eq!(s2.tags, vec!["signal"]);
        let env = serde_json::to_value(&s2.environment).unwrap().to_string();
        assert!(
            env.contains("\"SIGNAL_ID\":\"signal2\"") && env.contains("PEER_2"),
            "{env}"
        );
        assert_eq!(
            serde_json::to_value(&s2.command).unwrap(),
            serde_json::json!(["--id", "2"])
        );
        for (to, want) in [
            (
                "x-reemo-repeat: 0",
                "x-reemo-repeat Number(0): expected a number of copies from 1 to 99",
            ),
            ("x-reemo-repeat: many", "expected a number of copies"),
            ("x-reemo-repeat: \"2\"", ""),
        ] {
            let r = parse(&text.replace("x-reemo-repeat: 3", to), "t.yml");
            match want {
                "" => assert_eq!(
                    r.unwrap().services.len(),
                    3,
                    "a quoted number (a site value) is a number"
                ),
                w => {
                    let e = format!("{:#}", r.unwrap_err());
                    assert!(
                        e.starts_with("t.yml: service signal: ") && e.contains(w),
                        "{to}: {e}"
                    );
                }
            }
        }
        let clash = text.replace("  portal:\n", "  signal2:\n");
        let e = format!("{:#}", parse(&clash, "t.yml").unwrap_err());
        assert!(
            e.contains("makes signal2, which the stack already has"),
            "{e}"
        );
    }

    #[test]
    fn roles_and_tags_are_checked() {
        let ok = "version: \"3.8\"\nx-reemo-node-roles:\n  portal: \"n1, n2\"\n  api: \"\"\nservices:\n  portal:\n    image: x\n    x-reemo-role: portal\n    x-reemo-tags: [front]\n  signal1:\n    image: x\n    x-reemo-tags: [signal]\n";
        let f = parse(ok, "t.yml").unwrap();
        assert_eq!(
            f.role_nodes(),
            BTreeMap::from([(
                "portal".to_string(),
                vec!["n1".to_string(), "n2".to_string()]
            )]),
            "an empty role names no node"
        );
        assert_eq!(f.services["signal1"].tags, vec!["signal"]);
        for (from, to, want) in [
            (
                "x-reemo-role: portal",
                "x-reemo-role: infra",
                "x-reemo-role: \"infra\" is not a role of x-reemo-node-roles (roles: api, portal)",
            ),
            (
                "[signal]",
                "[portal]",
                "x-reemo-tags: tag \"portal\" is the name of a service",
            ),
            ("[front]", "[\"-x\"]", "tag name \"-x\""),
            ("  api: \"\"", "  \"a b\": \"\"", "role name \"a b\""),
        ] {
            let bad = ok.replacen(from, to, 1);
            let e = format!("{:#}", parse(&bad, "t.yml").unwrap_err());
            assert!(e.contains(want), "{to}: {e}");
            assert!(e.starts_with("t.yml"), "{e}");
        }
    }

    #[test]
    fn validation_errors_carry_a_line() {
        let bad = RELAY.replace("version: \"3.8\"", "version: \"2.4\"");
        let e = format!("{:#}", parse(&bad, "s.yml").unwrap_err());
        let line = bad.lines().position(|l| l.starts_with("version:")).unwrap() + 1;
        assert_eq!(
            e,
            format!("s.yml:{line}: version \"2.4\": only compose file format 3.x is supported")
        );
        let text = "version: \"3.8\"\nservices:\n  web:\n    image: x\n    configs:\n      - source: other\n        target: /a\n      - source: missing\n        target: /b\nconfigs:\n  other:\n    file: a\n";
        let e = format!("{:#}", parse(text, "t.yml").unwrap_err());
        assert_eq!(
            e,
            "t.yml:8: service web: config \"missing\" is not defined under top-level configs"
        );
        assert_eq!(locate(text, &["configs", "other"], None), Some(11));
        assert_eq!(locate(text, &["services", "nope"], None), None);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s").unwrap(), 10_000_000_000);
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500_000_000);
        assert!(parse_duration("10").is_err());
        assert_eq!(parse_bytes("64M").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
    }

    #[test]
    fn relative_files() {
        assert_eq!(
            resolve_relative("stack/docker-stack.yml", "../configs/relay.toml").as_deref(),
            Some("configs/relay.toml")
        );
        assert_eq!(resolve_relative("a.yml", "../x"), None);
    }

    #[test]
    fn relay_template_is_valid() {
        let text = relay_template("reemo/ws-relay-server:1.0.0-0123456789ab");
        let f = parse(&text, "tests/fixtures/relay-stack.yml").unwrap();
        let relay = &f.services["relay"];
        assert_eq!(relay.secrets.len(), 4);
        assert_eq!(relay.configs[0].long().mode, Some(0o444));
        // two generated secrets, two parts of the relay's certificate
        assert_eq!(
            f.secrets.values().filter(|s| s.generate.is_some()).count(),
            2
        );
        let parts: Vec<_> = f
            .secrets
            .values()
            .filter_map(|s| s.certificate.clone())
            .collect();
        assert_eq!(parts, ["relay.chain", "relay.key"]);
        assert_eq!(f.certificates["relay"].usage, crate::pki::Usage::Server);
    }

    #[test]
    fn short_ports() {
        let p = Port::Short("8080:80/udp".into()).long().unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_deref()),
            (Some(8080), 80, Some("udp"))
        );
    }

    #[test]
    fn aliases_and_host_folders_are_checked() {
        let base = "version: \"3.8\"\nservices:\n  signal:\n    image: x\n    x-reemo-aliases: [signals]\n    volumes:\n      - { type: bind, source: /opt/reemo, target: /data, x-reemo-create: { uid: 999, gid: 999, mode: 488 } }\n";
        let f = parse(base, "t.yml").unwrap();
        assert_eq!(f.services["signal"].aliases, ["signals"]);
        let v = f.services["signal"].volumes[0].long().unwrap();
        assert_eq!(
            v.create,
            Some(HostDirSpec {
                uid: 999,
                gid: 999,
                mode: 0o750
            })
        );
        for (edit, want) in [
            (
                base.replace(
                    "type: bind, source: /opt/reemo",
                    "type: bind, source: ./rel",
                ),
                "x-reemo-create needs `type: bind` with an absolute source folder",
            ),
            (
                base.replace("mode: 488", "mode: 9999"),
                "x-reemo-create: mode 9999 is not a permission",
            ),
            (
                base.replace("[signals]", "[signal]"),
                "x-reemo-aliases: \"signal\" is the name of a service",
            ),
            (base.replace("[signals]", "[\"a b\"]"), "alias name \"a b\""),
        ] {
            let e = format!("{:#}", parse(&edit, "t.yml").unwrap_err());
            assert!(e.contains(want) && e.contains("signal"), "{e}");
        }
    }

    #[test]
    fn a_split_value_becomes_one_item_per_line() {
        let text = "version: \"3.8\"\nservices:\n  a:\n    image: x\n    secrets: [allow]\nsecrets:\n  allow:\n    external: true\n    x-reemo-value: \"10.1.1.1, 10.2.2.0/24,\"\n    x-reemo-split: \",\"\n";
        let f = parse(text, "t.yml").unwrap();
        let d = &f.secrets["allow"];
        assert_eq!(
            d.value_content(d.value.as_deref().unwrap()),
            b"10.1.1.1\n10.2.2.0/24\n"
        );
        let plain = SecretDef {
            split: None,
            ..d.clone()
        };
        assert_eq!(plain.value_content("a,b"), b"a,b");
        let e = parse(
            &text.replace("    x-reemo-value: \"10.1.1.1, 10.2.2.0/24,\"\n", ""),
            "t.yml",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("secret allow: `x-reemo-split` needs `x-reemo-value`"),
            "{e:#}"
        );
    }
}
