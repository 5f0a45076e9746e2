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
    /// Desired replicas (replicated) or completions (job); None for global.
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

impl Engine {
    /// Connect to `url` (`unix://PATH`, `tcp://HOST:PORT`; TLS for port 2376 or when
    /// `DOCKER_CERT_PATH` is set), or to the local socket when `None`. Does not contact
    /// the daemon yet.
    pub fn connect(url: Option<&str>) -> Result<Engine> {
        let url = url
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let docker = if let Some(path) = url.strip_prefix("unix://") {
            Docker::connect_with_socket(path, TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else if url.starts_with("tcp://") || url.starts_with("https://") {
            let cert_dir = std::env::var("DOCKER_CERT_PATH").ok();
            if url.ends_with(":2376") || url.starts_with("https://") || cert_dir.is_some() {
                let dir = std::path::PathBuf::from(cert_dir.unwrap_or_else(|| {
                    format!("{}/.docker", std::env::var("HOME").unwrap_or_default())
                }));
                Docker::connect_with_ssl(
                    &url,
                    &dir.join("key.pem"),
                    &dir.join("cert.pem"),
                    &dir.join("ca.pem"),
                    TIMEOUT_SECS,
                    API_DEFAULT_VERSION,
                )
            } else {
                Docker::connect_with_http(&url, TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
        } else {
            bail!("engine {url:?}: expected unix:///PATH or tcp://HOST:PORT");
        }
        .map_err(|e| {
            anyhow!("the docker daemon at {url} is unreachable ({e}); is dockerd running?")
        })?;
        Ok(Engine { docker, url })
    }

    /// Swarm facts from `GET /info`; an error that says the daemon is unreachable.
    pub async fn swarm_facts(&self) -> Result<SwarmFacts> {
        let info = self.docker.info().await.map_err(|e| {
            anyhow!(
                "the docker daemon at {} is unreachable ({e}); is dockerd running?",
                self.url
            )
        })?;
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

    /// `(id, reachability, leader)` of every manager node.
    pub async fn managers(&self) -> Result<Vec<(String, String, bool)>> {
        let nodes = self
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .context("listing swarm nodes")?;
        Ok(nodes
            .into_iter()
            .filter_map(|n| {
                let m = n.manager_status?;
                Some((
                    n.id.unwrap_or_default(),
                    m.reachability.map(|r| r.to_string()).unwrap_or_default(),
                    m.leader.unwrap_or(false),
                ))
            })
            .collect())
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
            let node = self
                .docker
                .inspect_node(node_id)
                .await
                .with_context(|| format!("inspecting node {node_id}"))?;
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
        let opts = ListServicesOptionsBuilder::default()
            .filters(&stack_filter(stack))
            .build();
        let list = self
            .docker
            .list_services(Some(opts))
            .await
            .with_context(|| format!("listing services of stack {stack}"))?;
        Ok(list
            .into_iter()
            .map(|s| {
                let spec = s.spec.unwrap_or_default();
                let mode = spec.mode.unwrap_or_default();
                let replicas = mode
                    .replicated
                    .and_then(|r| r.replicas)
                    .or_else(|| mode.replicated_job.and_then(|j| j.total_completions))
                    .map(|n| n.max(0) as u64);
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
            })
            .collect())
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
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing network {name}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
