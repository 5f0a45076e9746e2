//! The engine seam: every operation the loader needs from a Docker engine, as one trait.
//! `docker` implements it over the Engine API (bollard stays inside that file); `fake` is an
//! in-memory swarm for tests. Everything above the seam works on the plain data of
//! `crate::swarm::observed`; specs arrive as Engine-API JSON built from desired state and
//! are never read back, modified and re-sent.

pub mod docker;
pub mod fake;

use std::collections::BTreeMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;

pub use crate::swarm::observed::{
    LiveService, ManagerNode, NodeInfo, SwarmFacts, SwarmState, TaskInfo,
};

/// What went wrong talking to an engine, by kind: callers branch on the variant, never on
/// the text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// The object does not exist (HTTP 404).
    #[error("{op}: not found ({message})")]
    NotFound {
        /// What was being done.
        op: String,
        /// The daemon's message.
        message: String,
    },
    /// The object exists already, or is in use (HTTP 409).
    #[error("{op}: {message}")]
    Conflict {
        /// What was being done.
        op: String,
        /// The daemon's message.
        message: String,
    },
    /// The object changed since its version was read ("update out of sequence").
    #[error("{op}: update out of sequence ({message})")]
    OutOfSequence {
        /// What was being done.
        op: String,
        /// The daemon's message.
        message: String,
    },
    /// A network the request refers to is gone (e.g. removed by `docker stack rm`).
    #[error("{op}: network {network} not found")]
    NetworkGone {
        /// What was being done.
        op: String,
        /// The network's name or id.
        network: String,
    },
    /// No answer from the daemon; the message carries advice.
    #[error("{0}")]
    Unreachable(String),
    /// Anything else the daemon answered.
    #[error("{op}: {message}")]
    Other {
        /// What was being done.
        op: String,
        /// The daemon's message.
        message: String,
    },
}

/// A result of an engine operation.
pub type EngineResult<T> = Result<T, EngineError>;

/// A stream of archive bytes for `POST /images/load`.
pub type ArchiveStream =
    Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

/// The operations the loader needs from one Docker engine.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Address as given (`unix:///var/run/docker.sock`, `tcp://host:2376`, `fake://…`).
    fn url(&self) -> &str;

    /// Swarm facts of this engine's node (`GET /info`).
    async fn swarm_facts(&self) -> EngineResult<SwarmFacts>;
    /// Every node of the swarm (manager only).
    async fn nodes(&self) -> EngineResult<Vec<NodeInfo>>;
    /// One node by id; `NotFound` when it is not a node of this manager's swarm.
    async fn node(&self, id: &str) -> EngineResult<NodeInfo>;
    /// Set (`Some`) or remove (`None`) a label on a node.
    async fn set_node_label(&self, id: &str, key: &str, value: Option<&str>) -> EngineResult<()>;
    /// Initialise a swarm from Engine-API JSON (`SwarmInitRequest`); returns the node id.
    async fn init_swarm(&self, req: &serde_json::Value) -> EngineResult<String>;

    /// Whether the engine holds an image with this ID (`sha256:…`).
    async fn has_image(&self, id: &str) -> EngineResult<bool>;
    /// Stream a docker-archive tar into `POST /images/load`.
    async fn load_archive(&self, archive: ArchiveStream) -> EngineResult<()>;
    /// Remove an image by ID; `Ok(false)` when it is absent or in use.
    async fn remove_image(&self, id: &str) -> EngineResult<bool>;

    /// Services labelled with the stack namespace.
    async fn stack_services(&self, stack: &str) -> EngineResult<Vec<LiveService>>;
    /// Create a service from Engine-API JSON (`ServiceSpec`); returns its id.
    async fn create_service(&self, spec: &serde_json::Value) -> EngineResult<String>;
    /// Replace a service's spec; `version` is the object version last read
    /// ([`LiveService::version`]). `OutOfSequence` when it changed since.
    async fn update_service(&self, spec: &serde_json::Value, version: u64) -> EngineResult<()>;
    /// Remove a service; absent is fine.
    async fn remove_service(&self, name: &str) -> EngineResult<()>;
    /// Tasks of a service (by name).
    async fn tasks(&self, service: &str) -> EngineResult<Vec<TaskInfo>>;
    /// The last `lines` log lines of a task (stdout and stderr), best effort.
    async fn task_logs(&self, task_id: &str, lines: usize) -> String;

    /// Configs of the stack: name → id.
    async fn stack_configs(&self, stack: &str) -> EngineResult<BTreeMap<String, String>>;
    /// Secrets of the stack: name → id.
    async fn stack_secrets(&self, stack: &str) -> EngineResult<BTreeMap<String, String>>;
    /// Create a config; returns its id. `Conflict` when the name exists.
    async fn create_config(
        &self,
        name: &str,
        data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> EngineResult<String>;
    /// Create a secret; returns its id. `Conflict` when the name exists.
    async fn create_secret(
        &self,
        name: &str,
        data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> EngineResult<String>;
    /// Remove a config; absent is fine, in use is `Conflict`.
    async fn remove_config(&self, name: &str) -> EngineResult<()>;
    /// Remove a secret; absent is fine, in use is `Conflict`.
    async fn remove_secret(&self, name: &str) -> EngineResult<()>;

    /// Networks of the stack by name.
    async fn stack_networks(&self, stack: &str) -> EngineResult<Vec<String>>;
    /// Create a network from Engine-API JSON (`NetworkCreateRequest`).
    async fn create_network(&self, req: &serde_json::Value) -> EngineResult<()>;
    /// Remove a network; absent (or already gone from the swarm) is fine.
    async fn remove_network(&self, name: &str) -> EngineResult<()>;
}

/// Checks over the trait's operations, shared by every implementation.
impl dyn Engine + '_ {
    /// Fail unless this engine is an active swarm manager, with advice.
    pub async fn require_manager(&self) -> anyhow::Result<SwarmFacts> {
        let f = self.swarm_facts().await?;
        if f.state != SwarmState::Active {
            anyhow::bail!(
                "the engine at {} is not part of an active swarm (state {}); run `reemo-bundle swarm init` first",
                self.url(),
                f.state
            );
        }
        if !f.manager {
            anyhow::bail!(
                "the engine at {} is a swarm worker; run this command on a manager node",
                self.url()
            );
        }
        Ok(f)
    }

    /// Check, on this manager, that `node_id` (the node behind engine `engine_url`) is a
    /// node of its swarm.
    pub async fn require_node(&self, node_id: &str, engine_url: &str) -> anyhow::Result<()> {
        if node_id.is_empty() {
            anyhow::bail!(
                "engine {engine_url} is not part of a swarm; join it to the swarm managed by {} first",
                self.url()
            );
        }
        match self.node(node_id).await {
            Ok(_) => Ok(()),
            Err(EngineError::NotFound { .. }) => anyhow::bail!(
                "engine {engine_url} (node {node_id}) is not a node of the swarm managed by {}: every --engine must be a node of that swarm",
                self.url()
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Every manager node.
    pub async fn managers(&self) -> EngineResult<Vec<ManagerNode>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .filter_map(|n| n.manager)
            .collect())
    }
}
