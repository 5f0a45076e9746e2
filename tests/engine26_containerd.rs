//! The engine matrix, Docker 26 with the containerd image store (Docker 29's default): load
//! (our manifest digest is the image's ID there), activate (services pinned by
//! `repository:tag@manifest digest`) and rollback of the relay appliance on one namespaced
//! Docker 26.1.5 engine (one engine per file).

mod common;

#[test]
fn docker26_containerd_store_load_activate_rollback() {
    common::require_docker();
    common::matrix::docker26_walk(true, "m26ctrd", 18482);
}
