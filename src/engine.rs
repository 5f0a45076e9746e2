//! Docker Engine access: the only module that talks to a daemon (bollard stays inside it).
//! Everything above it works on the plain data types defined here; service, config and
//! secret specs arrive as Engine-API JSON built from desired state (see `swarm::spec`) and
//! are never read back, modified and re-sent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bollard::models::{
    ConfigSpec, LocalNodeState, NetworkCreateRequest, SecretSpec, ServiceSpec, SwarmInitRequest,
    TaskState,
};
use bollard::query_parameters::{
    ImportImageOptionsBuilder, InspectServiceOptionsBuilder, ListConfigsOptionsBuilder,
    ListNetworksOptionsBuilder, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, LogsOptionsBuilder, RemoveImageOptionsBuilder,
    UpdateServiceOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// Label that marks objects of a stack (what `docker stack` filters on).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
/// Label holding the hash of the desired spec a service or task was built from.
pub const SPEC_LABEL: &str = "com.reemo-bundle.spec";

/// Request timeout in seconds (image loads and long polls are streamed within it).
const TIMEOUT_SECS: u64 = 600;

/// A connection to one Docker engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    /// Address as given (`unix:///var/run/docker.sock`, `tcp://host:2376`).
    pub url: String,
    /// Directory of the TLS client certificates, for `tcp://` engines that use TLS.
    tls_dir: Option<std::path::PathBuf>,
}

/// Swarm facts of the engine's node, from `GET /info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwarmFacts {
    /// `inactive`, `pending`, `active`, `error`, `locked`.
    pub state: String,
    /// Whether this node is a manager (control plane available).
    pub manager: bool,
    /// This node's id.
    pub node_id: String,
    /// Managers in the swarm.
    pub managers: i64,
    /// Nodes in the swarm.
    pub nodes: i64,
    /// Daemon version.
    pub server_version: String,
}

/// A manager node of the swarm.
#[derive(Debug, Clone, Serialize)]
pub struct ManagerNode {
    /// Node id.
    pub id: String,
    /// `reachable`, `unreachable`, `unknown`.
    pub reachability: String,
    /// Whether it is the raft leader.
    pub leader: bool,
}

/// A service of the stack as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveService {
    /// Service id.
    pub id: String,
    /// Full name `<stack>_<name>`.
    pub name: String,
    /// Value of [`SPEC_LABEL`], if set.
    pub spec_hash: Option<String>,
    /// Object version for updates.
    pub version: u64,
    /// Desired tasks: replicas (replicated), completions (job), or for a global service the
    /// tasks Swarm wants running (one per eligible node); None when unknown.
    pub replicas: Option<u64>,
    /// Update status state (`updating`, `completed`, `paused`, `rollback_*`), if any.
    pub update_state: Option<String>,
    /// Update status message.
    pub update_message: Option<String>,
}

/// One task of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Task id.
    pub id: String,
    /// [`SPEC_LABEL`] of the task's container spec.
    pub spec_hash: Option<String>,
    /// Observed state (`running`, `failed`, `complete`, …).
    pub state: String,
    /// Desired state.
    pub desired: String,
    /// Status message.
    pub message: String,
    /// Error, if any.
    pub err: Option<String>,
    /// Container exit code, if it exited.
    pub exit_code: Option<i64>,
    /// Creation timestamp (RFC 3339 text).
    pub created: String,
    /// Node id.
    pub node_id: String,
}

fn state_name(s: Option<TaskState>) -> String {
    s.map(|s| s.to_string()).unwrap_or_default()
}

fn stack_filter(stack: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{STACK_LABEL}={stack}")])])
}

/// Convert Engine-API JSON into a bollard model.
fn from_json<T: serde::de::DeserializeOwned>(v: &serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone()).with_context(|| format!("building {what}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A network removal that found nothing to remove: 404, or the 500 "network ID not found"
/// a manager answers when the network a node still lists is already gone from the swarm
/// (seen right after `docker stack rm`).
fn network_gone(e: &bollard::errors::Error) -> bool {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message,
        } => message.starts_with("network ") && message.ends_with(" not found"),
        _ => is_not_found(e),
    }
}

/// An error with its sources (bollard's own message often hides the cause, e.g. a TLS
/// alert).
fn error_chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// Whether a `tcp://`/`https://` engine uses TLS, and with which client certificate
/// directory: TLS for `https://`, for port 2376 (Docker's TLS port), or when
/// `DOCKER_CERT_PATH` or `DOCKER_TLS_VERIFY` is set (as the docker CLI does); the files are
/// taken from `DOCKER_CERT_PATH`, else `~/.docker`. One client certificate serves every
/// engine: the engines of a swarm trust the same CA.
pub fn tls_cert_dir(
    url: &str,
    cert_path: Option<&str>,
    tls_verify: Option<&str>,
    home: Option<&str>,
) -> Option<std::path::PathBuf> {
    let authority = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("https://"))?
        .split('/')
        .next()
        .unwrap_or_default();
    let port_2376 = authority.rsplit_once(':').is_some_and(|(_, p)| p == "2376");
    let tls =
        url.starts_with("https://") || port_2376 || cert_path.is_some() || tls_verify.is_some();
    tls.then(|| match cert_path {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(home.unwrap_or("/root")).join(".docker"),
    })
}

/// What to check after a TLS connection failed with error text `chain`, using the client
/// certificates in `dir`.
fn tls_advice(chain: &str, dir: &std::path::Path) -> String {
    let (ca, cert) = (dir.join("ca.pem"), dir.join("cert.pem"));
    if chain.contains("invalid peer certificate") {
        format!(
            "the daemon's certificate is not accepted: it must be signed by {} and name this host (IP or DNS subject alternative name)",
            ca.display()
        )
    } else if [
        "BadCertificate",
        "UnknownCA",
        "CertificateRequired",
        "bad certificate",
    ]
    .iter()
    .any(|a| chain.contains(a))
    {
        format!(
            "the daemon rejected the client certificate {}: it must be signed by the CA the daemon trusts (dockerd --tlscacert)",
            cert.display()
        )
    } else {
        format!(
            "check that dockerd listens there with --tlsverify, that its certificate is signed by {} and names this host, and that the client certificate {} is signed by the CA the daemon trusts",
            ca.display(),
            cert.display()
        )
    }
}

/// `[ca.pem, cert.pem, key.pem]` in `dir`, each present and PEM, or an error naming the
/// engine and what is missing.
fn check_cert_files(url: &str, dir: &std::path::Path) -> Result<[std::path::PathBuf; 3]> {
    let files = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
    let mut problems = Vec::new();
    for f in &files {
        match std::fs::read(f) {
            Ok(b) if b.windows(11).any(|w| w == b"-----BEGIN ") => {}
            Ok(_) => problems.push(format!("{} is not a PEM file", f.display())),
            Err(e) => problems.push(format!("{}: {e}", f.display())),
        }
    }
    if !problems.is_empty() {
        bail!(
            "engine {url} uses TLS, but its client certificates are not usable: {}; put the daemon's CA (ca.pem) and a client certificate signed by it (cert.pem, key.pem) in {} or point DOCKER_CERT_PATH at them",
            problems.join("; "),
            dir.display()
        );
    }
    Ok(files)
}

/// A listed service (listed with `status=true`) as [`LiveService`].
fn live_service(s: bollard::models::Service) -> LiveService {
    let spec = s.spec.unwrap_or_default();
    let mode = spec.mode.unwrap_or_default();
    let global = mode.global.is_some();
    let replicas = mode
        .replicated
        .and_then(|r| r.replicas)
        .or_else(|| mode.replicated_job.and_then(|j| j.total_completions))
        .map(|n| n.max(0) as u64)
        .or_else(|| {
            global
                .then(|| s.service_status.as_ref()?.desired_tasks)
                .flatten()
        });
    let us = s.update_status;
    LiveService {
        id: s.id.unwrap_or_default(),
        name: spec.name.unwrap_or_default(),
        spec_hash: spec.labels.and_then(|l| l.get(SPEC_LABEL).cloned()),
        version: s.version.and_then(|v| v.index).unwrap_or(0),
        replicas,
        update_state: us.as_ref().and_then(|u| u.state.map(|st| st.to_string())),
        update_message: us.and_then(|u| u.message),
    }
}

impl Engine {
    /// Connect to `url` (`unix://PATH`, `tcp://HOST:PORT`; TLS per [`tls_cert_dir`]), or
    /// to `$DOCKER_HOST` or the local socket when `None`. Checks that the TLS client
    /// certificate files exist but does not contact the daemon yet.
    pub fn connect(url: Option<&str>) -> Result<Engine> {
        let url = url
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut tls_dir = None;
        let docker = if let Some(path) = url.strip_prefix("unix://") {
            Docker::connect_with_socket(path, TIMEOUT_SECS, API_DEFAULT_VERSION).map_err(|e| {
                anyhow!("the docker daemon at {url} is unreachable ({e}); is dockerd running?")
            })?
        } else if url.starts_with("tcp://") || url.starts_with("https://") {
            match tls_cert_dir(
                &url,
                env("DOCKER_CERT_PATH").as_deref(),
                env("DOCKER_TLS_VERIFY").as_deref(),
                env("HOME").as_deref(),
            ) {
                Some(dir) => {
                    let [ca, cert, key] = check_cert_files(&url, &dir)?;
                    let d = Docker::connect_with_ssl(
                        &url,
                        &key,
                        &cert,
                        &ca,
                        TIMEOUT_SECS,
                        API_DEFAULT_VERSION,
                    )
                    .map_err(|e| {
                        anyhow!(
                            "engine {url}: cannot use the TLS certificates in {} ({})",
                            dir.display(),
                            error_chain(e)
                        )
                    })?;
                    tls_dir = Some(dir);
                    d
                }
                None => Docker::connect_with_http(&url, TIMEOUT_SECS, API_DEFAULT_VERSION)
                    .map_err(|e| anyhow!("engine {url}: {}", error_chain(e)))?,
            }
        } else {
            bail!("engine {url:?}: expected unix:///PATH or tcp://HOST:PORT");
        };
        Ok(Engine {
            docker,
            url,
            tls_dir,
        })
    }

    /// The error for a request that did not get an answer from the daemon.
    fn unreachable(&self, e: bollard::errors::Error) -> anyhow::Error {
        match &self.tls_dir {
            Some(dir) => {
                let chain = error_chain(e);
                anyhow!(
                    "cannot talk to the docker daemon at {} over TLS ({chain}); {}",
                    self.url,
                    tls_advice(&chain, dir)
                )
            }
            None => anyhow!(
                "the docker daemon at {} is unreachable ({}); is dockerd running?",
                self.url,
                error_chain(e)
            ),
        }
    }

    /// Swarm facts from `GET /info`; an error that says the daemon is unreachable.
    pub async fn swarm_facts(&self) -> Result<SwarmFacts> {
        let info = self.docker.info().await.map_err(|e| self.unreachable(e))?;
        let sw = info.swarm.unwrap_or_default();
        let state = match sw.local_node_state {
            Some(LocalNodeState::ACTIVE) => "active",
            Some(LocalNodeState::PENDING) => "pending",
            Some(LocalNodeState::ERROR) => "error",
            Some(LocalNodeState::LOCKED) => "locked",
            _ => "inactive",
        };
        Ok(SwarmFacts {
            state: state.to_string(),
            manager: sw.control_available.unwrap_or(false),
            node_id: sw.node_id.unwrap_or_default(),
            managers: sw.managers.unwrap_or(0),
            nodes: sw.nodes.unwrap_or(0),
            server_version: info.server_version.unwrap_or_default(),
        })
    }

    /// Fail unless this engine is an active swarm manager, with advice.
    pub async fn require_manager(&self) -> Result<SwarmFacts> {
        let f = self.swarm_facts().await?;
        if f.state != "active" {
            bail!(
                "the engine at {} is not part of an active swarm (state {}); run `reemo-bundle swarm init` first",
                self.url,
                f.state
            );
        }
        if !f.manager {
            bail!(
                "the engine at {} is a swarm worker; run this command on a manager node",
                self.url
            );
        }
        Ok(f)
    }

    /// Every manager node.
    pub async fn managers(&self) -> Result<Vec<ManagerNode>> {
        let nodes = self.list_nodes().await?;
        Ok(nodes
            .into_iter()
            .filter_map(|n| {
                let m = n.manager_status?;
                Some(ManagerNode {
                    id: n.id.unwrap_or_default(),
                    reachability: m.reachability.map(|r| r.to_string()).unwrap_or_default(),
                    leader: m.leader.unwrap_or(false),
                })
            })
            .collect())
    }

    async fn list_nodes(&self) -> Result<Vec<bollard::models::Node>> {
        self.docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .context("listing swarm nodes")
    }

    /// Ids of the swarm's nodes whose label `key` is `present`.
    pub async fn nodes_labelled(&self, key: &str) -> Result<Vec<String>> {
        let nodes = self.list_nodes().await?;
        Ok(nodes
            .into_iter()
            .filter(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(key))
                    .is_some_and(|v| v == "present")
            })
            .filter_map(|n| n.id)
            .collect())
    }

    /// Check, on this manager, that `node_id` (the node behind engine `engine_url`) is a
    /// node of its swarm.
    pub async fn require_node(&self, node_id: &str, engine_url: &str) -> Result<()> {
        let what = format!("engine {engine_url}");
        self.member(node_id, &what).await.map(|_| ())
    }

    /// Node `node_id` of this manager's swarm; `what` names it in errors.
    async fn member(&self, node_id: &str, what: &str) -> Result<bollard::models::Node> {
        if node_id.is_empty() {
            bail!(
                "{what} is not part of a swarm; join it to the swarm managed by {} first",
                self.url
            );
        }
        match self.docker.inspect_node(node_id).await {
            Ok(n) => Ok(n),
            Err(e) if is_not_found(&e) => bail!(
                "{what} (node {node_id}) is not a node of the swarm managed by {}: every --engine must be a node of that swarm",
                self.url
            ),
            Err(e) => Err(e).with_context(|| format!("inspecting node {node_id}")),
        }
    }

    /// Set (`Some`) or remove (`None`) a label on a node. Node specs are small and carry no
    /// healthcheck, so this one is read, changed and written back (retried when stale).
    pub async fn set_node_label(
        &self,
        node_id: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        for attempt in 0..5 {
            let node = self.member(node_id, &format!("node {node_id:?}")).await?;
            let mut spec = node.spec.unwrap_or_default();
            let labels = spec.labels.get_or_insert_with(HashMap::new);
            let changed = match value {
                Some(v) => labels.insert(key.to_string(), v.to_string()).as_deref() != Some(v),
                None => labels.remove(key).is_some(),
            };
            if !changed {
                return Ok(());
            }
            let version = node.version.and_then(|v| v.index).unwrap_or(0) as i64;
            let opts = bollard::query_parameters::UpdateNodeOptionsBuilder::default()
                .version(version)
                .build();
            match self.docker.update_node(node_id, spec, opts).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 4 && e.to_string().contains("out of sequence") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("labelling node {node_id}")),
            }
        }
        Ok(())
    }

    /// Initialise a swarm. `req` is Engine-API JSON (`SwarmInitRequest`).
    pub async fn init_swarm(&self, req: &serde_json::Value) -> Result<String> {
        let r: SwarmInitRequest = from_json(req, "swarm init request")?;
        self.docker
            .init_swarm(r)
            .await
            .with_context(|| format!("initialising a swarm on {}", self.url))
    }

    /// Whether the engine holds an image with this ID (`sha256:…`).
    pub async fn has_image(&self, id: &str) -> Result<bool> {
        match self.docker.inspect_image(id).await {
            Ok(i) => Ok(i.id.as_deref() == Some(id)),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("inspecting image {id} on {}", self.url)),
        }
    }

    /// Stream a docker-archive tar into `POST /images/load`. `chunks` yields the archive.
    pub async fn load_archive(
        &self,
        chunks: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    ) -> Result<()> {
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut out = self.docker.import_image_stream(opts, chunks, None);
        while let Some(item) = out.next().await {
            item.with_context(|| format!("loading images into {}", self.url))?;
        }
        Ok(())
    }

    /// Remove an image by ID; `Ok(false)` when it is absent or still in use.
    pub async fn remove_image(&self, id: &str) -> Result<bool> {
        let opts = RemoveImageOptionsBuilder::default().build();
        match self.docker.remove_image(id, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing image {id} from {}", self.url)),
        }
    }

    /// Services labelled with the stack namespace.
    pub async fn stack_services(&self, stack: &str) -> Result<Vec<LiveService>> {
        // `status` adds ServiceStatus: for a global service, DesiredTasks is what Swarm
        // wants running (one task per eligible node).
        let opts = ListServicesOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .status(true)
            .build();
        let list = self
            .docker
            .list_services(Some(opts))
            .await
            .with_context(|| format!("listing services of stack {stack}"))?;
        Ok(list.into_iter().map(live_service).collect())
    }

    /// One service by name, if it exists.
    pub async fn service(&self, stack: &str, name: &str) -> Result<Option<LiveService>> {
        Ok(self
            .stack_services(stack)
            .await?
            .into_iter()
            .find(|s| s.name == name))
    }

    /// Create a service from Engine-API JSON; returns its id.
    pub async fn create_service(&self, spec: &serde_json::Value) -> Result<String> {
        let s: ServiceSpec = from_json(spec, "service spec")?;
        let name = s.name.clone().unwrap_or_default();
        let r = self
            .docker
            .create_service(s, None)
            .await
            .with_context(|| format!("creating service {name}"))?;
        Ok(r.id.unwrap_or_default())
    }

    /// Replace a service's spec with `spec` (built from desired state). Re-inspects for the
    /// current version and retries when the daemon says "update out of sequence".
    pub async fn update_service(&self, spec: &serde_json::Value) -> Result<()> {
        let s: ServiceSpec = from_json(spec, "service spec")?;
        let name = s.name.clone().unwrap_or_default();
        let mut attempt = 0;
        loop {
            let current = self
                .docker
                .inspect_service(&name, Some(InspectServiceOptionsBuilder::default().build()))
                .await
                .with_context(|| format!("inspecting service {name}"))?;
            let version = current.version.and_then(|v| v.index).unwrap_or(0);
            let opts = UpdateServiceOptionsBuilder::default()
                .version(version as i32)
                .build();
            match self
                .docker
                .update_service(&name, s.clone(), opts, None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 5 && e.to_string().contains("out of sequence") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("updating service {name}")),
            }
        }
    }

    /// Remove a service; absent is fine.
    pub async fn remove_service(&self, name: &str) -> Result<()> {
        match self.docker.delete_service(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing service {name}")),
        }
    }

    /// Tasks of a service (by name).
    pub async fn tasks(&self, service: &str) -> Result<Vec<TaskInfo>> {
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        let opts = ListTasksOptionsBuilder::default().filters(&filters).build();
        let list = self
            .docker
            .list_tasks(Some(opts))
            .await
            .with_context(|| format!("listing tasks of service {service}"))?;
        Ok(list
            .into_iter()
            .map(|t| {
                let status = t.status.unwrap_or_default();
                let spec_hash = t
                    .spec
                    .and_then(|s| s.container_spec)
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(SPEC_LABEL).cloned());
                TaskInfo {
                    id: t.id.unwrap_or_default(),
                    spec_hash,
                    state: state_name(status.state),
                    desired: state_name(t.desired_state),
                    message: status.message.unwrap_or_default(),
                    err: status.err,
                    exit_code: status.container_status.and_then(|c| c.exit_code),
                    created: t.created_at.map(|d| d.to_string()).unwrap_or_default(),
                    node_id: t.node_id.unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The last `lines` log lines of a task (stdout and stderr), best effort.
    pub async fn task_logs(&self, task_id: &str, lines: usize) -> String {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut out = String::new();
        let mut s = self.docker.task_logs(task_id, Some(opts));
        let read = async {
            while let Some(Ok(chunk)) = s.next().await {
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
        out
    }

    /// Configs of the stack: name → id.
    pub async fn stack_configs(&self, stack: &str) -> Result<BTreeMap<String, String>> {
        let opts = ListConfigsOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .build();
        let list = self
            .docker
            .list_configs(Some(opts))
            .await
            .with_context(|| format!("listing configs of stack {stack}"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.spec?.name?, c.id?)))
            .collect())
    }

    /// Secrets of the stack: name → id.
    pub async fn stack_secrets(&self, stack: &str) -> Result<BTreeMap<String, String>> {
        let opts = ListSecretsOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .build();
        let list = self
            .docker
            .list_secrets(Some(opts))
            .await
            .with_context(|| format!("listing secrets of stack {stack}"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.spec?.name?, c.id?)))
            .collect())
    }

    /// Create a config; returns its id.
    pub async fn create_config(
        &self,
        name: &str,
        data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        use base64::Engine as _;
        let spec = ConfigSpec {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            templating: None,
        };
        let r = self
            .docker
            .create_config(spec)
            .await
            .with_context(|| format!("creating config {name}"))?;
        Ok(r.id)
    }

    /// Create a secret; returns its id.
    pub async fn create_secret(
        &self,
        name: &str,
        data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        use base64::Engine as _;
        let spec = SecretSpec {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            driver: None,
            templating: None,
        };
        let r = self
            .docker
            .create_secret(spec)
            .await
            .with_context(|| format!("creating secret {name}"))?;
        Ok(r.id)
    }

    /// Remove a config by name or id; absent is fine, in use is an error.
    pub async fn remove_config(&self, name: &str) -> Result<()> {
        match self.docker.delete_config(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing config {name}")),
        }
    }

    /// Remove a secret by name or id; absent is fine, in use is an error.
    pub async fn remove_secret(&self, name: &str) -> Result<()> {
        match self.docker.delete_secret(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing secret {name}")),
        }
    }

    /// Networks of the stack by name.
    pub async fn stack_networks(&self, stack: &str) -> Result<Vec<String>> {
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .build();
        let list = self
            .docker
            .list_networks(Some(opts))
            .await
            .with_context(|| format!("listing networks of stack {stack}"))?;
        Ok(list.into_iter().filter_map(|n| n.name).collect())
    }

    /// Create a network from Engine-API JSON (`NetworkCreateRequest`).
    pub async fn create_network(&self, req: &serde_json::Value) -> Result<()> {
        let r: NetworkCreateRequest = from_json(req, "network")?;
        let name = r.name.clone();
        self.docker
            .create_network(r)
            .await
            .with_context(|| format!("creating network {name}"))?;
        Ok(())
    }

    /// Remove a network; absent is fine.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if network_gone(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing network {name}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_already_gone_from_the_swarm_counts_as_removed() {
        use bollard::errors::Error::DockerResponseServerError as E;
        let e = |status_code, message: &str| E {
            status_code,
            message: message.into(),
        };
        assert!(network_gone(&e(404, "no such network")));
        assert!(network_gone(&e(
            500,
            "network k7i00ae3tkhjp085xf1bt009i not found"
        )));
        assert!(!network_gone(&e(
            500,
            "error while removing network: network s_default id x has active endpoints"
        )));
        assert!(!network_gone(&e(409, "conflict")));
    }

    #[test]
    fn tls_is_chosen_like_the_docker_cli() {
        let p = |s: &str| Some(std::path::PathBuf::from(s));
        // port 2376 means TLS; certificates from ~/.docker unless DOCKER_CERT_PATH is set
        assert_eq!(
            tls_cert_dir("tcp://10.0.0.2:2376", None, None, Some("/home/u")),
            p("/home/u/.docker")
        );
        assert_eq!(
            tls_cert_dir("tcp://10.0.0.2:2376/", Some("/certs"), None, None),
            p("/certs")
        );
        assert_eq!(
            tls_cert_dir("https://node2:9999", None, None, None),
            p("/root/.docker")
        );
        // plain port: TLS only when asked for
        assert_eq!(tls_cert_dir("tcp://10.0.0.2:2375", None, None, None), None);
        assert_eq!(
            tls_cert_dir("tcp://10.0.0.2:2375", Some("/c"), None, None),
            p("/c")
        );
        assert_eq!(
            tls_cert_dir("tcp://10.0.0.2:2375", None, Some("1"), Some("/h")),
            p("/h/.docker")
        );
        // a port merely containing 2376 is not 2376; unix sockets never use TLS
        assert_eq!(tls_cert_dir("tcp://h:23760", None, None, None), None);
        assert_eq!(
            tls_cert_dir("unix:///var/run/docker.sock", Some("/c"), None, None),
            None
        );
    }

    #[test]
    fn missing_or_bad_client_certificates_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = check_cert_files("tcp://n2:2376", d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine tcp://n2:2376 uses TLS"), "{e}");
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            assert!(e.contains(f), "{e}");
        }
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        std::fs::write(d.path().join("ca.pem"), pem).unwrap();
        std::fs::write(d.path().join("cert.pem"), pem).unwrap();
        std::fs::write(d.path().join("key.pem"), "not a key").unwrap();
        let e = check_cert_files("tcp://n2:2376", d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("key.pem is not a PEM file"), "{e}");
        assert!(!e.contains("ca.pem:"), "{e}");
        std::fs::write(d.path().join("key.pem"), pem).unwrap();
        let files = check_cert_files("tcp://n2:2376", d.path()).unwrap();
        assert_eq!(files[0], d.path().join("ca.pem"));
    }

    #[test]
    fn tls_failures_say_which_side_is_refused() {
        let d = std::path::Path::new("/c");
        let a = tls_advice("connection error: received fatal alert: BadCertificate", d);
        assert!(
            a.contains("rejected the client certificate /c/cert.pem"),
            "{a}"
        );
        let a = tls_advice("invalid peer certificate: UnknownIssuer", d);
        assert!(
            a.contains("daemon's certificate is not accepted") && a.contains("/c/ca.pem"),
            "{a}"
        );
        let a = tls_advice("tcp connect error: Connection refused", d);
        assert!(a.contains("listens there"), "{a}");
    }

    /// A global service's desired task count comes from ServiceStatus.DesiredTasks.
    #[test]
    fn global_service_desired_tasks() {
        let svc: bollard::models::Service = serde_json::from_value(serde_json::json!({
            "ID": "x",
            "Spec": {"Name": "s_app", "Mode": {"Global": {}}},
            "ServiceStatus": {"RunningTasks": 1, "DesiredTasks": 2},
        }))
        .unwrap();
        assert_eq!(live_service(svc).replicas, Some(2));
        let svc: bollard::models::Service = serde_json::from_value(serde_json::json!({
            "ID": "y",
            "Spec": {"Name": "s_app", "Mode": {"Replicated": {"Replicas": 3}}},
            "ServiceStatus": {"RunningTasks": 1, "DesiredTasks": 3},
        }))
        .unwrap();
        assert_eq!(live_service(svc).replicas, Some(3));
    }

    /// Specs built as JSON survive the trip through bollard's model (nothing dropped).
    #[test]
    fn service_spec_json_round_trips_through_bollard() {
        let spec = serde_json::json!({
            "Name": "s_relay",
            "Labels": {"a": "b"},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "sha256:00",
                    "Env": ["A=1"],
                    "Configs": [{"File": {"Name": "/c", "UID": "0", "GID": "0", "Mode": 292},
                                 "ConfigID": "id", "ConfigName": "n"}],
                },
                "RestartPolicy": {"Condition": "any", "Delay": 1},
            },
            "Mode": {"Replicated": {"Replicas": 1}},
            "UpdateConfig": {"Order": "stop-first", "FailureAction": "pause"},
            "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 8080,
                                         "PublishedPort": 8080, "PublishMode": "host"}]},
        });
        let s: ServiceSpec = from_json(&spec, "x").unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), spec);
    }
}
