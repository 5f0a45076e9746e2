//! The engine matrix, Docker 26 with the containerd image store: load (our manifest digest
//! is the image's ID there), activate (services pinned by `repository:tag@manifest digest`),
//! rollback and gc of the relay, then the default appliance, on one namespaced Docker 26.1.5
//! engine (one engine per file).

mod common;

use common::nodes::EngineKind;

#[test]
fn docker26_containerd_store_load_activate_rollback() {
    common::require_docker();
    common::matrix::engine_walk(
        EngineKind::Docker26 { containerd: true },
        "d26-containerd",
        "m26ctrd",
        18482,
    );
}
