//! The engine matrix, a swarm in the middle of an upgrade: a Docker 20.10 manager (classic
//! store) and a Docker 26.1.5 worker with the containerd image store, both namespaced. The
//! relay appliance (global: a task on each node) activates, updates and rolls back; each
//! engine holds the image under the ID its store gives it, and the services are pinned by
//! `repository:tag`, the one reference both stores resolve. Then the default appliance
//! (entry proxy + relay replicas on an overlay network across both engines) activates,
//! scales and rolls back.

mod common;

use std::time::{Duration, Instant};

use common::matrix::*;
use common::nodes::{poll, Cluster, EngineKind};
use common::*;

const STACK: &str = "mmixed";
const PORT: u16 = 18483;
/// The default appliance's stack on the same swarm.
const APP_STACK: &str = "mmixedapp";

/// `(node id, state)` of the tasks Swarm wants running for `service`.
fn running_nodes(manager: &common::nodes::Node, service: &str) -> Vec<String> {
    let out = manager.docker_ok(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
        service,
    ]);
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.contains("Running"))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn mixed_swarm_of_docker20_and_docker26_containerd_runs_the_relay() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Instant::now();
    let dir = tmp.path().to_path_buf();
    let builder = std::thread::spawn(move || {
        (
            relay_bundle(&dir.join("v1"), STACK, PORT, "1.0.0", "v1", true),
            relay_bundle(&dir.join("v2"), STACK, PORT, "2.0.0", "v2", true),
            appliance::build(&dir.join("appliance"), APP_STACK),
        )
    });
    let kinds = [
        EngineKind::System,
        EngineKind::Docker26 { containerd: true },
    ];
    let cluster = Cluster::start_engines(&kinds, false);
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    lap("mixed", "engines started", &mut t);

    let state = tmp.path().join("state");
    swarm_init(&state, n1);
    let token = n1.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    n2.docker_ok(&[
        "swarm",
        "join",
        "--token",
        &token,
        &format!("{}:2377", n1.ip),
    ]);
    let ready = poll(Duration::from_secs(60), || {
        let s = n1.docker_ok(&["node", "ls", "--format", "{{.Status}}"]);
        (s.lines().filter(|l| *l == "Ready").count() == 2).then_some(())
    });
    assert!(ready.is_some(), "the Docker 26 node did not become Ready");
    let versions = n1.docker_ok(&["node", "ls", "--format", "{{.EngineVersion}}"]);
    assert!(
        versions.contains("20.10.") && versions.contains("26.1.5"),
        "{versions}"
    );
    let (v1, v2, app) = builder.join().expect("building the bundles");
    lap("mixed", "swarm formed, bundles built", &mut t);

    let img = bundle_images(&v1).remove(0);
    let relay = extract_relay(&v1, tmp.path());
    let service = format!("{STACK}_relay");
    let serves_on_both = |what: &str| {
        let nodes = poll(Duration::from_secs(60), || {
            let r = running_nodes(n1, &service);
            (r.len() == 2).then_some(r)
        });
        assert!(
            nodes.is_some(),
            "{what}: a task runs on each node: {:?}",
            running_nodes(n1, &service)
        );
        for n in [n1, n2] {
            relay_probe_at(&relay, &n.ip, PORT, &state)
                .unwrap_or_else(|e| panic!("{what}: the relay serves on {}: {e}", n.ip));
        }
    };

    activate(&state, &v1, &[n1, n2]);
    for (n, kind) in [n1, n2].iter().zip(kinds) {
        assert_eq!(
            image_id_on(n, &img.reference).as_deref(),
            Some(expected_id(kind, &img)),
            "node {} ({kind:?}): the ID its store gives our image",
            n.index
        );
        let labels = node_labels(n1, &n.node_id());
        assert_eq!(
            labels["com.reemo-bundle.image-store"],
            store_name(kind),
            "{labels}"
        );
    }
    let st = loader_json(loader(&state).arg("status").args(engine_args(&[n1, n2])));
    let stores: Vec<_> = st["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["api"].clone(), e["store"].clone()))
        .collect();
    assert_eq!(
        stores,
        vec![
            (serde_json::json!("1.41"), serde_json::json!("classic")),
            (serde_json::json!("1.45"), serde_json::json!("containerd")),
        ],
        "{st}"
    );
    assert!(
        st["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["present"] == true),
        "{st}"
    );
    let (image, cfg_v1) = service_image_and_configs(n1, &service);
    assert_eq!(image, img.reference, "a mixed swarm pins by repository:tag");
    serves_on_both("v1");
    lap("mixed", "v1 activated on both nodes and probed", &mut t);

    activate(&state, &v2, &[n1, n2]);
    let (_, cfg_v2) = service_image_and_configs(n1, &service);
    assert_ne!(cfg_v1, cfg_v2);
    serves_on_both("v2");
    lap("mixed", "v2 activated and probed", &mut t);

    rollback(&state, &[n1, n2]);
    assert_eq!(
        service_image_and_configs(n1, &service),
        (img.reference.clone(), cfg_v1),
        "back on v1"
    );
    serves_on_both("rollback");
    lap("mixed", "rolled back and probed", &mut t);

    // the default appliance: entry proxy and relay replicas over an overlay network that
    // spans both engines
    appliance_walk(
        "mixed",
        &tmp.path().join("app-state"),
        &app,
        APP_STACK,
        &[n1, n2],
        &kinds,
    );
    drop(cluster);
    lap("mixed", "engines stopped", &mut t);
}
