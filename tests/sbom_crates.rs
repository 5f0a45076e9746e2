//! The SBOM of an image carrying a `binary` recipe: the crates linked into the relay (from
//! this workspace's `cargo metadata` and `Cargo.lock`) as `pkg:cargo` packages, validated
//! by the independent SPDX validator `pyspdxtools` (PyPI `spdx-tools`). No Docker, no build.

mod common;

use reemo_bundle::builder::crates;
use reemo_bundle::sbom;

#[test]
fn relay_crates_make_a_valid_spdx_document() {
    common::require_pyspdxtools();
    let ws = common::repo_root();
    let m = crates::metadata(&ws, "x86_64-unknown-linux-gnu").unwrap();
    let lock = std::fs::read_to_string(ws.join("Cargo.lock")).unwrap();
    let linked = crates::linked(&m, &lock, "ws-relay-server").unwrap();
    assert!(linked.len() > 20, "{linked:?}");
    let doc = sbom::document(
        &sbom::Image {
            name: "relay-image",
            repository: "reemo/ws-relay-server",
            version: "1.0.0",
            identity: &"0".repeat(64),
            created: "1970-01-01T00:00:00Z",
        },
        None,
        &[sbom::Binary {
            path: "/usr/local/bin/ws-relay-server".into(),
            package: "ws-relay-server".into(),
            sha256: "1".repeat(64),
            crates: linked,
        }],
    );
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("relay.spdx.json");
    std::fs::write(&f, sbom::to_bytes(&doc)).unwrap();
    common::assert_valid_spdx(&f);
}
