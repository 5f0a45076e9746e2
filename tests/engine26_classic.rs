//! The engine matrix, Docker 26 with the classic image store: load, activate, rollback and gc
//! of the relay, then the default appliance, on one namespaced Docker 26.1.5 engine (one
//! engine per file).

mod common;

use common::nodes::EngineKind;

#[test]
fn docker26_classic_store_load_activate_rollback() {
    common::require_docker();
    common::matrix::engine_walk(
        EngineKind::Docker26 { containerd: false },
        "d26-classic",
        "m26classic",
        18481,
    );
}
