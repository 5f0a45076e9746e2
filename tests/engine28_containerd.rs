//! The engine matrix, Docker 28 (API 1.51: image inspection carries the image's descriptor)
//! with the containerd image store, Docker 29's default for new installs: load, activate,
//! rollback and gc of the relay, then the default appliance, on one namespaced Docker 28.5.2
//! engine with containerd 2.1 (one engine per file).

mod common;

use common::nodes::EngineKind;

#[test]
fn docker28_containerd_store_load_activate_rollback() {
    common::require_docker();
    common::matrix::engine_walk(
        EngineKind::Docker28 { containerd: true },
        "d28-containerd",
        "m28ctrd",
        18484,
    );
}
