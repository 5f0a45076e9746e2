//! The engine matrix, Docker 26 with the classic image store: load, activate and rollback
//! of the relay appliance on one namespaced Docker 26.1.5 engine (one engine per file).

mod common;

#[test]
fn docker26_classic_store_load_activate_rollback() {
    common::require_docker();
    common::matrix::docker26_walk(false, "m26classic", 18481);
}
