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

pub use crate::swarm::join::{JoinRequest, JoinToken};
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

impl EngineError {
    /// The same error with `f` applied to every text it carries (to scrub a secret out of
    /// what a daemon answered).
    pub fn map_text(self, f: impl Fn(&str) -> String) -> EngineError {
        match self {
            EngineError::NotFound { op, message } => EngineError::NotFound {
                op: f(&op),
                message: f(&message),
            },
            EngineError::Conflict { op, message } => EngineError::Conflict {
                op: f(&op),
                message: f(&message),
            },
            EngineError::OutOfSequence { op, message } => EngineError::OutOfSequence {
                op: f(&op),
                message: f(&message),
            },
            EngineError::NetworkGone { op, network } => EngineError::NetworkGone {
                op: f(&op),
                network: f(&network),
            },
            EngineError::Unreachable(m) => EngineError::Unreachable(f(&m)),
            EngineError::Other { op, message } => EngineError::Other {
                op: f(&op),
                message: f(&message),
            },
        }
    }
}

/// Where an engine keeps its images: what its image IDs mean and how it is asked for ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStore {
    /// The graph-driver store (overlay2, …) of Docker up to 28: an image's ID is the
    /// digest of its config.
    Classic,
    /// The containerd image store (`"containerd-snapshotter": true`, the default from
    /// Docker 29): an image's ID is the digest of its manifest (or index).
    Containerd,
}

impl ImageStore {
    /// The store an engine uses, from its `GET /info` answer: the containerd store lists
    /// `["driver-type", "io.containerd.snapshotter.v1"]` in `DriverStatus` (what
    /// `docker info` prints under "Storage Driver").
    pub fn from_driver_status(status: &[Vec<String>]) -> ImageStore {
        let containerd = status.iter().any(|kv| {
            kv.first().map(String::as_str) == Some("driver-type")
                && kv
                    .get(1)
                    .is_some_and(|v| v.starts_with("io.containerd.snapshotter"))
        });
        if containerd {
            ImageStore::Containerd
        } else {
            ImageStore::Classic
        }
    }

    /// `classic` or `containerd` (the value of [`crate::swarm::labels::STORE_LABEL`]).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStore::Classic => "classic",
            ImageStore::Containerd => "containerd",
        }
    }

    /// The store a node label names; a node labelled before stores were recorded was
    /// checked by config digest, which only the classic store answers.
    pub fn from_label(v: Option<&str>) -> ImageStore {
        match v {
            Some("containerd") => ImageStore::Containerd,
            _ => ImageStore::Classic,
        }
    }
}

impl std::fmt::Display for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An Engine API version, `major.minor` (serialized as `"1.45"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl serde::Serialize for ApiVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ApiVersion {
    /// Docker 20.10: the oldest engine the loader supports.
    pub const MIN: ApiVersion = ApiVersion(1, 41);
    /// Docker 28: `GET /images/{name}/json` carries the image's `Descriptor`.
    pub const IMAGE_DESCRIPTOR: ApiVersion = ApiVersion(1, 48);

    /// Parse `1.45`.
    pub fn parse(s: &str) -> Option<ApiVersion> {
        let (a, b) = s.trim().split_once('.')?;
        Some(ApiVersion(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// What an engine says about itself, read once per connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineFacts {
    /// `26.1.5+dfsg1`.
    pub version: String,
    /// The API version used with this engine: the engine's own (requests go unversioned,
    /// so the engine answers in its newest version).
    pub api: ApiVersion,
    /// Its image store.
    pub store: ImageStore,
}

impl EngineFacts {
    /// Negotiate from `GET /version` (`ApiVersion`, `MinAPIVersion`) and `GET /info`
    /// (`DriverStatus`): an engine older than [`ApiVersion::MIN`] is refused, naming it.
    pub fn negotiate(
        url: &str,
        version: &str,
        api: &str,
        driver_status: &[Vec<String>],
    ) -> Result<EngineFacts, String> {
        let api_v = ApiVersion::parse(api)
            .ok_or_else(|| format!("engine {url} reports API version {api:?}, not major.minor"))?;
        if api_v < ApiVersion::MIN {
            return Err(format!(
                "engine {url} is Docker {version} with API {api_v}; the loader needs API {} (Docker 20.10) or newer",
                ApiVersion::MIN
            ));
        }
        Ok(EngineFacts {
            version: version.to_string(),
            api: api_v,
            store: ImageStore::from_driver_status(driver_status),
        })
    }

    /// Whether image inspection carries the image's descriptor (manifest digest).
    pub fn has_image_descriptor(&self) -> bool {
        self.api >= ApiVersion::IMAGE_DESCRIPTOR
    }
}

/// One image of a bundle as the engines know it: the config digest identifies it on the
/// classic store, the manifest digest on the containerd store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKey {
    /// `sha256:` of the config (the image's identity in bundle.json, labels, plans).
    pub config: String,
    /// `sha256:` of the OCI manifest, when known (generations recorded before it was kept
    /// lack it).
    pub manifest: Option<String>,
    /// `repository:tag`.
    pub reference: String,
}

impl ImageKey {
    /// The ID an engine with `store` gives this image, if known.
    pub fn id_on(&self, store: ImageStore) -> Option<&str> {
        match store {
            ImageStore::Classic => Some(&self.config),
            ImageStore::Containerd => self.manifest.as_deref(),
        }
    }
}

impl From<&crate::bundle::manifest::ImageEntry> for ImageKey {
    fn from(i: &crate::bundle::manifest::ImageEntry) -> ImageKey {
        ImageKey {
            config: i.config_digest.clone(),
            manifest: Some(i.manifest_digest.clone()),
            reference: i.reference(),
        }
    }
}

impl From<&crate::swarm::model::DesiredImage> for ImageKey {
    fn from(i: &crate::swarm::model::DesiredImage) -> ImageKey {
        ImageKey {
            config: i.id.clone(),
            manifest: i.manifest.clone(),
            reference: i.reference.clone(),
        }
    }
}

/// What an engine reports about one image (`GET /images/{name}/json`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFacts {
    /// `Id`: the config digest on the classic store, the manifest digest on containerd.
    pub id: String,
    /// `Descriptor.digest` (API 1.48+): the digest of what the image name points at.
    pub descriptor: Option<String>,
    /// `RootFS.Layers`: the diff IDs, bottom first.
    pub layers: Vec<String>,
    /// `RepoTags`.
    pub repo_tags: Vec<String>,
}

/// Whether what an engine reports about an image (`i`, inspected by the ID its store gives
/// it) is `image`: the config digest on the classic store; on the containerd store the
/// manifest digest, from the image's descriptor when the API has it, else its ID.
pub fn holds(f: &EngineFacts, image: &ImageKey, i: &ImageFacts) -> bool {
    match f.store {
        ImageStore::Classic => i.id == image.config,
        ImageStore::Containerd => {
            let target = match &i.descriptor {
                Some(d) if f.has_image_descriptor() => d,
                _ => &i.id,
            };
            image.manifest.as_deref() == Some(target.as_str())
        }
    }
}

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
    /// Join this engine's node to a swarm (`POST /swarm/join`). The token is in no error.
    async fn join_swarm(&self, req: &JoinRequest) -> EngineResult<()>;
    /// Leave the swarm (`POST /swarm/leave`); a manager needs `force`.
    async fn leave_swarm(&self, force: bool) -> EngineResult<()>;
    /// The token that joins a node as a manager (`GET /swarm`, manager only).
    async fn manager_join_token(&self) -> EngineResult<JoinToken>;

    /// Version, negotiated API version and image store (read once, then remembered).
    async fn facts(&self) -> EngineResult<EngineFacts>;
    /// What the engine reports about `reference` (an ID or a name); `None` when absent.
    async fn inspect_image(&self, reference: &str) -> EngineResult<Option<ImageFacts>>;
    /// Whether the engine holds this image under the ID its store gives it.
    async fn has_image(&self, image: &ImageKey) -> EngineResult<bool>;
    /// Stream an image archive (docker-archive `manifest.json` and OCI layout `index.json`
    /// over the same blobs) into `POST /images/load`.
    async fn load_archive(&self, archive: ArchiveStream) -> EngineResult<()>;
    /// Remove an image; `Ok(false)` when it is absent or in use.
    async fn remove_image(&self, image: &ImageKey) -> EngineResult<bool>;
    /// Remove the stopped containers of Swarm tasks of `stacks` (the tasks' history, which
    /// Swarm keeps) that were made from `image`, so that the image can go; how many. Running
    /// containers, and containers that are not tasks of these stacks, are left alone.
    async fn remove_stopped_task_containers(
        &self,
        image: &ImageKey,
        stacks: &std::collections::BTreeSet<String>,
    ) -> EngineResult<usize>;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(api: &str, status: &[(&str, &str)]) -> Result<EngineFacts, String> {
        let status: Vec<Vec<String>> = status
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()])
            .collect();
        EngineFacts::negotiate("unix:///e.sock", "x", api, &status)
    }

    #[test]
    fn the_store_and_api_are_read_from_what_the_engine_reports() {
        // Docker 20.10 (overlay2), 26.1.5 classic and containerd store, as they answer
        let d20 = facts("1.41", &[("Backing Filesystem", "extfs")]).unwrap();
        assert_eq!(
            (d20.api, d20.store),
            (ApiVersion(1, 41), ImageStore::Classic)
        );
        assert!(!d20.has_image_descriptor());
        let c26 = facts("1.45", &[("driver-type", "io.containerd.snapshotter.v1")]).unwrap();
        assert_eq!(c26.store, ImageStore::Containerd);
        assert!(!c26.has_image_descriptor());
        assert!(facts("1.48", &[]).unwrap().has_image_descriptor());
        let e = facts("1.40", &[]).unwrap_err();
        assert!(e.contains("needs API 1.41 (Docker 20.10) or newer"), "{e}");
        assert!(facts("one", &[]).unwrap_err().contains("not major.minor"));
        assert!(ApiVersion(1, 100) > ApiVersion(1, 45));
        assert_eq!(
            serde_json::to_value(&c26).unwrap(),
            serde_json::json!({"version": "x", "api": "1.45", "store": "containerd"})
        );
    }

    #[test]
    fn an_image_is_recognised_by_the_id_its_store_gives_it() {
        let key = ImageKey {
            config: "sha256:cc".into(),
            manifest: Some("sha256:mm".into()),
            reference: "r:t".into(),
        };
        let img = |id: &str, d: Option<&str>| ImageFacts {
            id: id.into(),
            descriptor: d.map(str::to_string),
            ..Default::default()
        };
        let classic = facts("1.41", &[]).unwrap();
        let c26 = facts("1.45", &[("driver-type", "io.containerd.snapshotter.v1")]).unwrap();
        let c28 = facts("1.48", &[("driver-type", "io.containerd.snapshotter.v1")]).unwrap();
        assert!(holds(&classic, &key, &img("sha256:cc", None)));
        assert!(!holds(&classic, &key, &img("sha256:mm", None)));
        assert!(holds(&c26, &key, &img("sha256:mm", None)));
        // what a docker-archive becomes on the containerd store: a manifest of its own
        assert!(!holds(&c26, &key, &img("sha256:56d3", None)));
        assert!(holds(&c28, &key, &img("sha256:idx", Some("sha256:mm"))));
        assert!(!holds(&c28, &key, &img("sha256:mm", Some("sha256:other"))));
        let old = ImageKey {
            manifest: None,
            ..key.clone()
        };
        assert_eq!(old.id_on(ImageStore::Containerd), None);
        assert!(!holds(&c26, &old, &img("sha256:mm", None)));
    }
}
