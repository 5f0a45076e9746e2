//! The desired state of a stack as data: everything a generation needs to be re-applied
//! exactly. Built by `desired`, turned into Engine-API specs by `spec`, diffed by `plan`;
//! stored verbatim in each generation record.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Which bundle a desired state came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    /// Appliance name.
    pub name: String,
    /// Appliance version.
    pub version: String,
    /// Bundle identity (64 hex).
    pub identity: String,
    /// Pinned component versions.
    pub pinned: BTreeMap<String, String>,
}

/// An image the stack needs on every engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredImage {
    /// Recipe name.
    pub name: String,
    /// `repository:tag`.
    pub reference: String,
    /// Image ID `sha256:…`: the config digest (the ID on the classic store).
    pub id: String,
    /// `sha256:` of the OCI manifest (the ID on the containerd store); absent in
    /// generations recorded before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// Where the content of a config or secret comes from on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectSource {
    /// A file of an imported bundle: `store/<identity>/<path>`.
    Store {
        /// Bundle identity.
        identity: String,
        /// Entry path inside the bundle.
        path: String,
    },
    /// A host-generated secret: `secrets/<key>` in the state directory.
    Generated {
        /// Secret key (compose name).
        key: String,
    },
    /// A secret given as a site value (`x-reemo-value`): `secrets/values/<sha256>` in the
    /// state directory, kept for as long as a generation names it.
    Value {
        /// Secret key (compose name).
        key: String,
    },
    /// A certificate part or the CA certificate made by the host's PKI:
    /// `pki/objects/<sha256>` files concatenated in order.
    Pki {
        /// The PEM objects, in order.
        objects: Vec<String>,
    },
}

/// A Swarm config or secret, named by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredObject {
    /// Compose name.
    pub key: String,
    /// Swarm name `<stack>_<key>_<hash8>`.
    pub name: String,
    /// sha256 hex of the content.
    pub sha256: String,
    /// Content source.
    pub source: ObjectSource,
}

/// A network of the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredNetwork {
    /// Compose name.
    pub key: String,
    /// Engine name (`<stack>_<key>` unless named explicitly).
    pub name: String,
    /// Driver.
    pub driver: String,
    /// Attachable.
    pub attachable: bool,
    /// Pre-existing (not created or removed by the loader).
    pub external: bool,
}

/// One service, with its complete Engine-API spec (IDs of configs and secrets are filled
/// in at apply time from their names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredService {
    /// Short name.
    pub name: String,
    /// `<stack>_<name>`.
    pub full_name: String,
    /// Phase.
    pub phase: u32,
    /// One-shot job.
    pub job: bool,
    /// Its node role when that role names nodes (`x-reemo-role`): its tasks run only on
    /// nodes labelled with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Tags naming it for `activate --only` besides its name (`x-reemo-tags`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Image ID.
    pub image_id: String,
    /// Swarm names of the configs it mounts.
    pub configs: Vec<String>,
    /// Swarm names of the secrets it mounts.
    pub secrets: Vec<String>,
    /// Hash of `spec` (before the hash label was added).
    pub spec_hash: String,
    /// Hash of its `TaskTemplate` alone, the label its tasks carry: a change of the replica
    /// count (or of anything else outside the task template) restarts no task. Empty in
    /// generations made before it existed (their tasks carry `spec_hash`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task_hash: String,
    /// `ServiceSpec` JSON.
    pub spec: serde_json::Value,
}

impl DesiredService {
    /// The label value its tasks carry (see `task_hash`).
    pub fn task_hash(&self) -> &str {
        if self.task_hash.is_empty() {
            &self.spec_hash
        } else {
            &self.task_hash
        }
    }
}

/// The complete desired state of a stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredStack {
    /// Stack name.
    pub stack: String,
    /// Source bundle.
    pub bundle: BundleInfo,
    /// Images.
    pub images: Vec<DesiredImage>,
    /// Networks.
    pub networks: Vec<DesiredNetwork>,
    /// Configs.
    pub configs: Vec<DesiredObject>,
    /// Secrets.
    pub secrets: Vec<DesiredObject>,
    /// Services in deployment order.
    pub services: Vec<DesiredService>,
    /// Certificates issued for the stack by the host's internal CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<crate::pki::Issued>,
    /// Site parameter values the stack was rendered with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub site: BTreeMap<String, crate::site::SiteValue>,
    /// Node roles that name nodes (`x-reemo-node-roles`): role → host names, node IDs or
    /// addresses, resolved against the swarm's nodes when the host is planned.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_roles: BTreeMap<String, Vec<String>>,
    /// Host folders of bind mounts that the loader creates when missing (`x-reemo-create`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_dirs: Vec<HostDir>,
}

/// A bind mount's host folder to create when missing (`x-reemo-create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDir {
    /// Absolute path on the host.
    pub path: String,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    /// The service that mounts it.
    pub service: String,
}

impl DesiredStack {
    /// The CAs (sha256 of their certificate PEM) of the trust bundle its `x-reemo-ca`
    /// configs carry, the signing CA first (the only configs the PKI makes); empty when it
    /// has none.
    pub fn trust(&self) -> Vec<String> {
        self.configs
            .iter()
            .find_map(|c| match &c.source {
                ObjectSource::Pki { objects } => Some(objects.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Look up a service by short name.
    pub fn service(&self, name: &str) -> Option<&DesiredService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Image IDs used by services.
    pub fn image_ids(&self) -> BTreeSet<String> {
        self.services.iter().map(|s| s.image_id.clone()).collect()
    }

    /// Keep only what the services use (after merging with `--only`).
    pub(crate) fn prune(&mut self) {
        let used_images = self.image_ids();
        self.images.retain(|i| used_images.contains(&i.id));
        let cfg: BTreeSet<&String> = self.services.iter().flat_map(|s| &s.configs).collect();
        self.configs.retain(|c| cfg.contains(&c.name));
        let sec: BTreeSet<&String> = self.services.iter().flat_map(|s| &s.secrets).collect();
        self.secrets.retain(|c| sec.contains(&c.name));
        self.configs.sort_by(|a, b| a.name.cmp(&b.name));
        self.configs.dedup_by(|a, b| a.name == b.name);
        self.secrets.sort_by(|a, b| a.name.cmp(&b.name));
        self.secrets.dedup_by(|a, b| a.name == b.name);
        self.images.sort_by(|a, b| a.id.cmp(&b.id));
        self.images.dedup_by(|a, b| a.id == b.id);
    }
}
