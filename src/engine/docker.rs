//! The engine seam over the Docker Engine API: the only module that uses bollard. Answers
//! are turned into the plain data of `crate::swarm::observed` and errors into
//! [`EngineError`] kinds, here and nowhere else.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use bollard::models::{
    ConfigSpec, LocalNodeState, NetworkCreateRequest, SecretSpec, ServiceSpec, SwarmInitRequest,
    SwarmJoinRequest,
};
use bollard::query_parameters::{
    ImportImageOptionsBuilder, ListConfigsOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptions, RemoveImageOptionsBuilder,
    UpdateServiceOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;

use super::{
    ArchiveStream, Engine, EngineError, EngineFacts, EngineResult, ImageFacts, ImageKey,
    JoinRequest, JoinToken,
};
use crate::swarm::labels::{SPEC_LABEL, STACK_LABEL, TASK_LABEL};
use crate::swarm::observed::{
    Id, LiveService, ManagerNode, NodeInfo, SwarmFacts, SwarmState, TaskInfo, TaskState,
    UpdateState,
};

/// Request timeout in seconds (image loads and long polls are streamed within it).
const TIMEOUT_SECS: u64 = 600;

/// A connection to one Docker engine.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    /// Address as given (`unix:///var/run/docker.sock`, `tcp://host:2376`).
    url: String,
    /// Directory of the TLS client certificates, for `tcp://` engines that use TLS.
    tls_dir: Option<std::path::PathBuf>,
    /// Version, API and store, read at first use.
    facts: std::sync::Arc<tokio::sync::OnceCell<EngineFacts>>,
}

fn stack_filter(stack: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{STACK_LABEL}={stack}")])])
}

/// Convert Engine-API JSON into a bollard model.
fn from_json<T: serde::de::DeserializeOwned>(v: &serde_json::Value, op: &str) -> EngineResult<T> {
    serde_json::from_value(v.clone()).map_err(|e| EngineError::Other {
        op: op.to_string(),
        message: format!("the request does not fit the Engine API: {e}"),
    })
}

/// The network a daemon message says is missing: "network NAME not found" (404 on create,
/// or the 500 a manager answers when a network a node still lists is gone from the swarm).
fn missing_network(message: &str) -> Option<String> {
    let at = message.rfind("network ")?;
    let rest = &message[at + "network ".len()..];
    let name = rest.split_whitespace().next()?;
    rest[name.len()..]
        .trim_start()
        .starts_with("not found")
        .then(|| name.trim_matches(|c| c == '"' || c == '\'').to_string())
}

/// An error with its sources (bollard's own message often hides the cause, e.g. a TLS
/// alert).
fn error_chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// The one place a daemon answer becomes an [`EngineError`] kind: by HTTP status, and for
/// the two 500s Swarm gives without a status of their own, by the daemon's own message
/// (never by text we added, such as object names).
fn classify(status: u16, message: String, op: &str) -> EngineError {
    let op = op.to_string();
    if message.contains("update out of sequence") {
        return EngineError::OutOfSequence { op, message };
    }
    if matches!(status, 404 | 500) {
        if let Some(network) = missing_network(&message) {
            return EngineError::NetworkGone { op, network };
        }
    }
    match status {
        404 => EngineError::NotFound { op, message },
        409 => EngineError::Conflict { op, message },
        _ => EngineError::Other { op, message },
    }
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
        id: Id(s.id.unwrap_or_default()),
        name: spec.name.unwrap_or_default(),
        spec_hash: spec.labels.and_then(|l| l.get(SPEC_LABEL).cloned()),
        version: s.version.and_then(|v| v.index).unwrap_or(0),
        replicas,
        update_state: us
            .as_ref()
            .and_then(|u| u.state.map(|st| UpdateState::parse(st.as_ref()))),
        update_message: us.and_then(|u| u.message),
    }
}

fn task_state(s: Option<bollard::models::TaskState>) -> TaskState {
    TaskState::parse(&s.map(|s| s.to_string()).unwrap_or_default())
}

fn task_info(t: bollard::models::Task) -> TaskInfo {
    let status = t.status.unwrap_or_default();
    let spec_hash = t
        .spec
        .and_then(|s| s.container_spec)
        .and_then(|c| c.labels)
        .and_then(|l| l.get(SPEC_LABEL).cloned());
    TaskInfo {
        id: Id(t.id.unwrap_or_default()),
        spec_hash,
        state: task_state(status.state),
        desired: task_state(t.desired_state),
        message: status.message.unwrap_or_default(),
        err: status.err,
        exit_code: status.container_status.and_then(|c| c.exit_code),
        created: t.created_at.map(|d| d.to_string()).unwrap_or_default(),
        node_id: t.node_id.unwrap_or_default(),
    }
}

fn node_info(n: bollard::models::Node) -> NodeInfo {
    let id = n.id.unwrap_or_default();
    let hostname = n.description.and_then(|d| d.hostname).unwrap_or_default();
    let addr = n.status.and_then(|s| s.addr).unwrap_or_default();
    NodeInfo {
        manager: n.manager_status.map(|m| ManagerNode {
            id: id.clone(),
            hostname: hostname.clone(),
            addr: m.addr.unwrap_or_default(),
            reachability: m.reachability.map(|r| r.to_string()).unwrap_or_default(),
            leader: m.leader.unwrap_or(false),
        }),
        labels: n
            .spec
            .and_then(|s| s.labels)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        id,
        hostname,
        addr,
    }
}

impl DockerEngine {
    /// Connect to `url` (`unix://PATH`, `tcp://HOST:PORT`; TLS per [`tls_cert_dir`]), or
    /// to `$DOCKER_HOST` or the local socket when `None`. Checks that the TLS client
    /// certificate files exist but does not contact the daemon yet.
    pub fn connect(url: Option<&str>) -> Result<DockerEngine> {
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
        Ok(DockerEngine {
            docker,
            url,
            tls_dir,
            facts: Default::default(),
        })
    }

    /// Map a bollard error of operation `op`: daemon answers by kind, everything that is
    /// not an answer as unreachable, with advice.
    fn err(&self, e: bollard::errors::Error, op: &str) -> EngineError {
        use bollard::errors::Error as B;
        match e {
            B::DockerResponseServerError {
                status_code,
                message,
            } => classify(status_code, message, op),
            e @ (B::JsonDataError { .. }
            | B::JsonSerdeError { .. }
            | B::DockerStreamError { .. }
            | B::StrParseError { .. }
            | B::StrFmtError { .. }
            | B::URLEncodedError { .. }
            | B::Base64DecodeError { .. }) => EngineError::Other {
                op: op.to_string(),
                message: error_chain(e),
            },
            e => {
                let chain = error_chain(e);
                EngineError::Unreachable(match &self.tls_dir {
                    Some(dir) => format!(
                        "{op}: cannot talk to the docker daemon at {} over TLS ({chain}); {}",
                        self.url,
                        tls_advice(&chain, dir)
                    ),
                    None => format!(
                        "{op}: the docker daemon at {} is unreachable ({chain}); is dockerd running?",
                        self.url
                    ),
                })
            }
        }
    }

    /// `Ok(())` also for `NotFound`: removing what is absent is fine.
    fn absent_ok(&self, r: Result<(), bollard::errors::Error>, op: &str) -> EngineResult<()> {
        match r.map_err(|e| self.err(e, op)) {
            Err(EngineError::NotFound { .. }) => Ok(()),
            r => r,
        }
    }
}

#[async_trait]
impl Engine for DockerEngine {
    fn url(&self) -> &str {
        &self.url
    }

    async fn swarm_facts(&self) -> EngineResult<SwarmFacts> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.err(e, "reading the engine's swarm state"))?;
        let sw = info.swarm.unwrap_or_default();
        let state = match sw.local_node_state {
            Some(LocalNodeState::ACTIVE) => SwarmState::Active,
            Some(LocalNodeState::PENDING) => SwarmState::Pending,
            Some(LocalNodeState::ERROR) => SwarmState::Error,
            Some(LocalNodeState::LOCKED) => SwarmState::Locked,
            _ => SwarmState::Inactive,
        };
        Ok(SwarmFacts {
            state,
            manager: sw.control_available.unwrap_or(false),
            node_id: sw.node_id.unwrap_or_default(),
            managers: sw.managers.unwrap_or(0),
            nodes: sw.nodes.unwrap_or(0),
            server_version: info.server_version.unwrap_or_default(),
        })
    }

    async fn nodes(&self) -> EngineResult<Vec<NodeInfo>> {
        let nodes = self
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .map_err(|e| self.err(e, "listing swarm nodes"))?;
        Ok(nodes.into_iter().map(node_info).collect())
    }

    async fn node(&self, id: &str) -> EngineResult<NodeInfo> {
        self.docker
            .inspect_node(id)
            .await
            .map(node_info)
            .map_err(|e| self.err(e, &format!("inspecting node {id}")))
    }

    /// Node specs are small and carry no healthcheck, so this one is read, changed and
    /// written back (retried when stale).
    async fn set_node_label(&self, id: &str, key: &str, value: Option<&str>) -> EngineResult<()> {
        let op = format!("labelling node {id}");
        for attempt in 0..5 {
            let node = self
                .docker
                .inspect_node(id)
                .await
                .map_err(|e| self.err(e, &op))?;
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
            match self.docker.update_node(id, spec, opts).await {
                Ok(()) => return Ok(()),
                Err(e) => match self.err(e, &op) {
                    EngineError::OutOfSequence { .. } if attempt < 4 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    e => return Err(e),
                },
            }
        }
        Ok(())
    }

    async fn init_swarm(&self, req: &serde_json::Value) -> EngineResult<String> {
        let op = format!("initialising a swarm on {}", self.url);
        let r: SwarmInitRequest = from_json(req, &op)?;
        self.docker
            .init_swarm(r)
            .await
            .map_err(|e| self.err(e, &op))
    }

    async fn join_swarm(&self, req: &JoinRequest) -> EngineResult<()> {
        let op = format!(
            "joining the engine at {} to the swarm of {}",
            self.url,
            req.remotes.join(", ")
        );
        let r = SwarmJoinRequest {
            listen_addr: Some(req.listen.clone()),
            advertise_addr: req.advertise.clone(),
            data_path_addr: req.data_path.clone(),
            remote_addrs: Some(req.remotes.clone()),
            join_token: Some(req.token.expose().to_string()),
        };
        self.docker
            .join_swarm(r)
            .await
            .map_err(|e| self.err(e, &op).map_text(|t| req.token.scrub(t)))
    }

    async fn leave_swarm(&self, force: bool) -> EngineResult<()> {
        let opts = bollard::query_parameters::LeaveSwarmOptionsBuilder::default()
            .force(force)
            .build();
        self.docker
            .leave_swarm(Some(opts))
            .await
            .map_err(|e| self.err(e, &format!("leaving the swarm on {}", self.url)))
    }

    async fn manager_join_token(&self) -> EngineResult<JoinToken> {
        let op = format!("reading the manager join token on {}", self.url);
        let sw = self
            .docker
            .inspect_swarm()
            .await
            .map_err(|e| self.err(e, &op))?;
        let text = sw.join_tokens.and_then(|t| t.manager).unwrap_or_default();
        JoinToken::parse(&text).map_err(|e| EngineError::Other {
            op,
            message: format!("the token the engine gave {e}"),
        })
    }

    async fn facts(&self) -> EngineResult<EngineFacts> {
        let f = self
            .facts
            .get_or_try_init(|| async {
                let op = format!("reading the version of the engine at {}", self.url);
                let v = self.docker.version().await.map_err(|e| self.err(e, &op))?;
                let info = self.docker.info().await.map_err(|e| self.err(e, &op))?;
                EngineFacts::negotiate(
                    &self.url,
                    v.version.as_deref().unwrap_or_default(),
                    v.api_version.as_deref().unwrap_or_default(),
                    &info.driver_status.unwrap_or_default(),
                )
                .map_err(|message| EngineError::Other { op, message })
            })
            .await?;
        Ok(f.clone())
    }

    async fn inspect_image(&self, reference: &str) -> EngineResult<Option<ImageFacts>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some(ImageFacts {
                id: i.id.unwrap_or_default(),
                descriptor: i.descriptor.and_then(|d| d.digest),
                layers: i.root_fs.and_then(|r| r.layers).unwrap_or_default(),
                repo_tags: i.repo_tags.unwrap_or_default(),
            })),
            Err(e) => match self.err(e, &format!("inspecting image {reference} on {}", self.url)) {
                EngineError::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn has_image(&self, image: &ImageKey) -> EngineResult<bool> {
        let f = self.facts().await?;
        let Some(id) = image.id_on(f.store) else {
            return Ok(false);
        };
        Ok(self
            .inspect_image(id)
            .await?
            .is_some_and(|i| super::holds(&f, image, &i)))
    }

    async fn load_archive(&self, archive: ArchiveStream) -> EngineResult<()> {
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut out = self.docker.import_image_stream(opts, archive, None);
        while let Some(item) = out.next().await {
            item.map_err(|e| self.err(e, &format!("loading images into {}", self.url)))?;
        }
        Ok(())
    }

    async fn remove_image(&self, image: &ImageKey) -> EngineResult<bool> {
        let store = self.facts().await?.store;
        let Some(id) = image.id_on(store) else {
            return Ok(false);
        };
        let opts = RemoveImageOptionsBuilder::default().build();
        match self.docker.remove_image(id, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) => match self.err(e, &format!("removing image {id} from {}", self.url)) {
                EngineError::NotFound { .. } | EngineError::Conflict { .. } => Ok(false),
                e => Err(e),
            },
        }
    }

    async fn remove_stopped_task_containers(
        &self,
        image: &ImageKey,
        stacks: &std::collections::BTreeSet<String>,
    ) -> EngineResult<usize> {
        let store = self.facts().await?.store;
        let Some(id) = image.id_on(store) else {
            return Ok(0);
        };
        let filters = HashMap::from([
            ("label".to_string(), vec![TASK_LABEL.to_string()]),
            (
                "status".to_string(),
                ["created", "exited", "dead"].map(String::from).to_vec(),
            ),
        ]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(|e| {
            self.err(
                e,
                &format!("listing stopped task containers on {}", self.url),
            )
        })?;
        let mut removed = 0;
        for c in list {
            let ours = c
                .labels
                .as_ref()
                .and_then(|l| l.get(STACK_LABEL))
                .is_some_and(|s| stacks.contains(s));
            let (Some(cid), true) = (c.id, ours && c.image_id.as_deref() == Some(id)) else {
                continue;
            };
            match self
                .docker
                .remove_container(&cid, None::<RemoveContainerOptions>)
                .await
            {
                Ok(()) => removed += 1,
                Err(e) => match self.err(e, &format!("removing container {cid} from {}", self.url))
                {
                    // gone meanwhile (Swarm prunes its task history too), or started again
                    EngineError::NotFound { .. } | EngineError::Conflict { .. } => {}
                    e => return Err(e),
                },
            }
        }
        Ok(removed)
    }

    async fn stack_services(&self, stack: &str) -> EngineResult<Vec<LiveService>> {
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
            .map_err(|e| self.err(e, &format!("listing services of stack {stack}")))?;
        Ok(list.into_iter().map(live_service).collect())
    }

    async fn create_service(&self, spec: &serde_json::Value) -> EngineResult<String> {
        let s: ServiceSpec = from_json(spec, "creating a service")?;
        let op = format!("creating service {}", s.name.clone().unwrap_or_default());
        let r = self
            .docker
            .create_service(s, None)
            .await
            .map_err(|e| self.err(e, &op))?;
        Ok(r.id.unwrap_or_default())
    }

    async fn update_service(&self, spec: &serde_json::Value, version: u64) -> EngineResult<()> {
        let s: ServiceSpec = from_json(spec, "updating a service")?;
        let name = s.name.clone().unwrap_or_default();
        let opts = UpdateServiceOptionsBuilder::default()
            .version(version as i32)
            .build();
        self.docker
            .update_service(&name, s, opts, None)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e, &format!("updating service {name}")))
    }

    async fn remove_service(&self, name: &str) -> EngineResult<()> {
        let r = self.docker.delete_service(name).await;
        self.absent_ok(r, &format!("removing service {name}"))
    }

    async fn tasks(&self, service: &str) -> EngineResult<Vec<TaskInfo>> {
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        let opts = ListTasksOptionsBuilder::default().filters(&filters).build();
        let list = self
            .docker
            .list_tasks(Some(opts))
            .await
            .map_err(|e| self.err(e, &format!("listing tasks of service {service}")))?;
        Ok(list.into_iter().map(task_info).collect())
    }

    async fn task_logs(&self, task_id: &str, lines: usize) -> String {
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

    async fn stack_configs(&self, stack: &str) -> EngineResult<BTreeMap<String, String>> {
        let opts = ListConfigsOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .build();
        let list = self
            .docker
            .list_configs(Some(opts))
            .await
            .map_err(|e| self.err(e, &format!("listing configs of stack {stack}")))?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.spec?.name?, c.id?)))
            .collect())
    }

    async fn stack_secrets(&self, stack: &str) -> EngineResult<BTreeMap<String, String>> {
        let opts = ListSecretsOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .build();
        let list = self
            .docker
            .list_secrets(Some(opts))
            .await
            .map_err(|e| self.err(e, &format!("listing secrets of stack {stack}")))?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.spec?.name?, c.id?)))
            .collect())
    }

    async fn create_config(
        &self,
        name: &str,
        data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> EngineResult<String> {
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
            .map_err(|e| self.err(e, &format!("creating config {name}")))?;
        Ok(r.id)
    }

    async fn create_secret(
        &self,
        name: &str,
        data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> EngineResult<String> {
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
            .map_err(|e| self.err(e, &format!("creating secret {name}")))?;
        Ok(r.id)
    }

    async fn remove_config(&self, name: &str) -> EngineResult<()> {
        let r = self.docker.delete_config(name).await;
        self.absent_ok(r, &format!("removing config {name}"))
    }

    async fn remove_secret(&self, name: &str) -> EngineResult<()> {
        let r = self.docker.delete_secret(name).await;
        self.absent_ok(r, &format!("removing secret {name}"))
    }

    async fn stack_networks(&self, stack: &str) -> EngineResult<Vec<String>> {
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .build();
        let list = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(|e| self.err(e, &format!("listing networks of stack {stack}")))?;
        Ok(list.into_iter().filter_map(|n| n.name).collect())
    }

    async fn create_network(&self, req: &serde_json::Value) -> EngineResult<()> {
        let r: NetworkCreateRequest = from_json(req, "creating a network")?;
        let op = format!("creating network {}", r.name);
        self.docker
            .create_network(r)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e, &op))
    }

    async fn remove_network(&self, name: &str) -> EngineResult<()> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) => match self.err(e, &format!("removing network {name}")) {
                EngineError::NotFound { .. } | EngineError::NetworkGone { .. } => Ok(()),
                e => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_answers_are_classified_by_status_and_daemon_message() {
        let c = |status, m: &str| classify(status, m.to_string(), "op");
        assert!(matches!(
            c(404, "no such network"),
            EngineError::NotFound { .. }
        ));
        assert_eq!(
            c(500, "network k7i00ae3tkhjp085xf1bt009i not found"),
            EngineError::NetworkGone {
                op: "op".into(),
                network: "k7i00ae3tkhjp085xf1bt009i".into()
            }
        );
        assert_eq!(
            c(404, "network lstackrm_default not found"),
            EngineError::NetworkGone {
                op: "op".into(),
                network: "lstackrm_default".into()
            }
        );
        assert!(matches!(
            c(
                500,
                "error while removing network: network s_default id x has active endpoints"
            ),
            EngineError::Other { .. }
        ));
        assert!(matches!(c(409, "conflict"), EngineError::Conflict { .. }));
        assert!(matches!(
            c(
                500,
                "rpc error: code = Unknown desc = update out of sequence"
            ),
            EngineError::OutOfSequence { .. }
        ));
        // a 409 in a name or a hash is not a conflict: only the status counts
        assert!(matches!(
            c(500, "config s_app_4090a1b2: rpc error: code = Unavailable"),
            EngineError::Other { .. }
        ));
        assert!(matches!(
            c(400, "No such image: sha256:aa"),
            EngineError::Other { .. }
        ));
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
