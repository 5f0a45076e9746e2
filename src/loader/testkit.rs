//! Test fixtures for the loader's unit tests: desired states made by the real pure builder
//! (`swarm::desired::build`) from a small compose text, and hosts over the in-memory engine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Host, Timing};
use crate::bundle::manifest::{BlobRef, BundleManifest, ImageEntry, BUNDLE_FORMAT};
use crate::engine::fake::FakeEngine;
use crate::engine::Engine;
use crate::events::Recorder;
use crate::hash::sha256_hex;
use crate::swarm::desired::{self, Contents, DesiredStack};

/// The image ID of the one image (`img`) of every test bundle of `stack`.
pub fn image_id(stack: &str) -> String {
    format!(
        "sha256:{}",
        sha256_hex(format!("image of {stack}").as_bytes())
    )
}

/// A manifest of bundle `stack` `version` with one image named `img`.
pub fn manifest(stack: &str, version: &str) -> BundleManifest {
    let blob = |d: String| BlobRef {
        digest: format!("sha256:{d}"),
        size: 1,
        media_type: "x".into(),
        ..Default::default()
    };
    let id = image_id(stack);
    let hex = id.trim_start_matches("sha256:").to_string();
    BundleManifest {
        format: BUNDLE_FORMAT,
        mtime: Some(0),
        name: stack.into(),
        version: version.into(),
        identity: sha256_hex(format!("{stack} {version}").as_bytes()),
        stack: stack.into(),
        stack_file: "stack/stack.yml".into(),
        pinned: BTreeMap::new(),
        images: vec![ImageEntry {
            name: "img".into(),
            repository: format!("test/{stack}"),
            tag: format!("1-{}", &hex[..12]),
            config_digest: id,
            manifest_digest: format!("sha256:{}", "d".repeat(64)),
            layers: vec![blob("e".repeat(64))],
            config: blob(hex),
            size: 2,
        }],
        services: vec![],
        files: vec![],
        inputs: vec![],
        parameters: vec![],
    }
}

/// The desired state of `compose` (a compose text whose services use `image: img`).
pub fn desired_yaml(stack: &str, version: &str, compose: &str) -> DesiredStack {
    desired_files(stack, version, compose, &BTreeMap::new())
}

/// As [`desired_yaml`], with config files by bundle path (`stack/NAME` for `./NAME`).
pub fn desired_files(
    stack: &str,
    version: &str,
    compose: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> DesiredStack {
    let c = crate::stack::parse(compose, "stack/stack.yml").expect("test compose parses");
    desired::build(
        &manifest(stack, version),
        &c,
        &Contents {
            values: &BTreeMap::new(),
            files,
            generated: &BTreeMap::new(),
            pki: &BTreeMap::new(),
        },
    )
    .expect("test desired state builds")
}

/// A stack of replicated services `(name, replicas)`, all on image `img`.
pub fn desired(stack: &str, services: &[(&str, u64)]) -> DesiredStack {
    desired_version(stack, "1.0.0", services)
}

/// As [`desired`], with a bundle version (a new version changes no spec by itself; use
/// distinct replica counts or commands to make specs differ).
pub fn desired_version(stack: &str, version: &str, services: &[(&str, u64)]) -> DesiredStack {
    let mut y = String::from("version: \"3.8\"\nservices:\n");
    for (name, replicas) in services {
        y.push_str(&format!(
            "  {name}:\n    image: img\n    deploy:\n      replicas: {replicas}\n"
        ));
    }
    desired_yaml(stack, version, &y)
}

/// Short timing for the in-memory engine.
pub fn timing() -> Timing {
    Timing {
        timeout: Duration::from_secs(5),
        monitor: Duration::from_millis(20),
        poll: Duration::from_millis(5),
    }
}

/// A host over in-memory engines (the first is the manager), recording events.
pub fn host(engines: &[&FakeEngine], state_dir: &Path) -> (Host, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let host = Host {
        engines: engines
            .iter()
            .map(|e| Arc::new((*e).clone()) as Arc<dyn Engine>)
            .collect(),
        state_dir: state_dir.to_path_buf(),
        events: rec.clone(),
    };
    (host, rec)
}
