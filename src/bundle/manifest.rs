//! `bundle.json`: the manifest at the head of every bundle file, the contract between the
//! build side (which writes it) and the loader (which trusts nothing that it does not list).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the bundle format this code writes; a loader refuses formats it does not know.
/// Format 2 added `mtime` (bound to every tar header) and each layer's `diff_id` and
/// `uncompressed_size`; format 1 bundles are still read.
pub const BUNDLE_FORMAT: u32 = 2;
/// Oldest bundle format this code reads.
pub const OLDEST_FORMAT: u32 = 1;

/// Name of the manifest entry; always the first entry of the tar.
pub const MANIFEST_NAME: &str = "bundle.json";
/// Name of the optional detached signature entry, second when present.
pub const SIGNATURE_NAME: &str = "bundle.json.sig";

/// The manifest of one bundle file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Always [`BUNDLE_FORMAT`] for bundles this code writes.
    pub format: u32,
    /// mtime of every tar header of the bundle (the build's SOURCE_DATE_EPOCH); format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<u64>,
    /// Appliance name, e.g. `relayws`.
    pub name: String,
    /// Appliance version, e.g. `1.0.0`.
    pub version: String,
    /// Content identity of the bundle definition and all its inputs (64 hex).
    pub identity: String,
    /// Swarm stack name (`com.docker.stack.namespace`).
    pub stack: String,
    /// Path of the compose v3 stack file inside the bundle, e.g. `stack/docker-stack.yml`.
    pub stack_file: String,
    /// Pinned component versions, like the seeds' `DOCKER_VERSION_*` table.
    pub pinned: BTreeMap<String, String>,
    /// Every image the stack uses, all stored in the one OCI layout under `oci/`.
    pub images: Vec<ImageEntry>,
    /// Services of the stack, in deployment order (phase, then name).
    pub services: Vec<ServiceEntry>,
    /// Every file of the bundle other than `bundle.json` and `bundle.json.sig`, sorted by path.
    pub files: Vec<FileEntry>,
    /// Recipes that went into the bundle: name, kind and identity.
    pub inputs: Vec<InputEntry>,
    /// Site parameters the stack uses as `${NAME}`, set on the host (format 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<crate::site::Parameter>,
}

/// One image of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Recipe name the image was built from.
    pub name: String,
    /// Repository, e.g. `reemo/ws-relay-server`.
    pub repository: String,
    /// Tag, `<version>-<hash12>`.
    pub tag: String,
    /// `sha256:<hex>` of the config blob: the Docker image ID after loading.
    pub config_digest: String,
    /// `sha256:<hex>` of the OCI manifest blob.
    pub manifest_digest: String,
    /// Layer blobs, bottom first; paths are `oci/blobs/sha256/<hex>`. In format 2 each
    /// carries its `diff_id` and `uncompressed_size`.
    pub layers: Vec<BlobRef>,
    /// Config blob reference.
    pub config: BlobRef,
    /// Sum of config and layer sizes in bytes.
    pub size: u64,
}

impl ImageEntry {
    /// `repository:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// A blob of the OCI layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// OCI media type.
    pub media_type: String,
    /// Layers (format 2): `sha256:<hex>` of the uncompressed tar, as in the image config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// Layers (format 2): size of the uncompressed tar in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
}

impl BlobRef {
    /// Path of the blob inside the bundle.
    pub fn path(&self) -> String {
        format!(
            "oci/blobs/sha256/{}",
            self.digest.trim_start_matches("sha256:")
        )
    }
}

/// A service of the stack as the manifest summarises it (the stack file has the details).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// Service name without the stack prefix.
    pub name: String,
    /// Image recipe name (key into `images`).
    pub image: String,
    /// Deployment phase (lower first).
    pub phase: u32,
    /// Whether the service is a one-shot job.
    pub job: bool,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path, `/`-separated, no `..`.
    pub path: String,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether the file is executable (mode 0755 instead of 0644).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// A build input recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEntry {
    /// Recipe name.
    pub name: String,
    /// Recipe kind.
    pub kind: String,
    /// Recipe identity (64 hex).
    pub identity: String,
}

impl BundleManifest {
    /// Short identity used in file names.
    pub fn hash12(&self) -> &str {
        &self.identity[..12.min(self.identity.len())]
    }

    /// Conventional file name: `<name>-<version>-<hash12>.bundle`.
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}.bundle", self.name, self.version, self.hash12())
    }

    /// Look up a file entry by path.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// Look up an image by recipe name.
    pub fn image(&self, name: &str) -> Option<&ImageEntry> {
        self.images.iter().find(|i| i.name == name)
    }
}
