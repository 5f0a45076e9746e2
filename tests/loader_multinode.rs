//! The loader against several real engines: extra dockerd engines in network namespaces
//! (tests/common/nodes.rs, docs/swarm-notes.md) form a 2-node swarm made with `reemo-bundle swarm
//! init`; `load` fans out to both in parallel; placement follows the images; `status`
//! reports the swarm's managers; the relay serves through a node's address; and a
//! `tcp://…:2376` engine is used with TLS client certificates.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::multinode::{build_global_tiny, bundle_images, engine_args, running_tasks};
use common::nodes::{http_get, poll, Cluster, Node};
use common::*;

/// Port the tiny appliance's httpd is published on (host mode, on every node).
const TINY_PORT: u16 = 8081;
/// Port the relay is published on.
const RELAY_PORT: u16 = 8080;

/// `reemo-bundle activate` through the given engines (the first is the manager).
fn activate(state: &Path, bundle: &Path, nodes: &[&Node]) -> String {
    run_ok(
        loader(state)
            .arg("activate")
            .arg(bundle)
            .args(engine_args(nodes))
            .args(["--timeout", "120s", "--monitor", "1s"]),
    )
}

fn lap(what: &str, t: &mut Instant) {
    eprintln!("[multinode] {what}: {:.1}s", t.elapsed().as_secs_f64());
    *t = Instant::now();
}

/// The whole multi-node walk: swarm init (success, refusal, options in effect), join,
/// placement restricted to nodes holding the images, parallel load, a task per node,
/// status's manager facts, a default-bridge service, and the relay on a node address.
#[test]
fn two_node_swarm_init_load_placement_status_and_relay() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Instant::now();
    // the bundles are built while the engines start
    let dir = tmp.path().to_path_buf();
    let builder = std::thread::spawn(move || {
        let b1 = build_global_tiny(&dir.join("v1"), "tiny", TINY_PORT, "1.0.0", "multinode-v1");
        let b2 = build_global_tiny(&dir.join("v2"), "tiny", TINY_PORT, "2.0.0", "multinode-v2");
        let relay = build_relay_variant(&dir.join("relay"), "mnrelay", RELAY_PORT, "1.0.0", |c| c);
        (b1, b2, relay)
    });
    let cluster = Cluster::start(2, false);
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    lap("engines started", &mut t);

    let state = tmp.path().join("state");

    let (b1, b2, relay_bundle) = builder.join().expect("building the bundles");
    lap("bundles built (waited)", &mut t);

    // --- swarm init: the success path, then the refusal ---
    let init = |pool: &str, port: &str| {
        loader(&state)
            .args(["swarm", "init", "--engine", &n1.url()])
            .args(["--advertise-addr", &n1.ip])
            .args(["--default-addr-pool", pool, "--data-path-port", port])
            .output()
            .unwrap()
    };
    let o = init("10.77.0.0/16", "4790");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "swarm init failed: {out}{err}");
    assert!(out.contains("swarm initialised"), "{out}");
    assert!(!err.contains("NSX"), "no NSX warning for port 4790: {err}");
    let n1_id = n1.node_id();
    assert!(out.contains(&n1_id), "names the node: {out}");
    let facts = "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeAddr}} {{json .Swarm.Cluster.DefaultAddrPool}} {{.Swarm.Cluster.SubnetSize}} {{.Swarm.Cluster.DataPathPort}}";
    let expected = format!("active true {} [\"10.77.0.0/16\"] 24 4790", n1.ip);
    assert_eq!(n1.docker_ok(&["info", "--format", facts]), expected);
    let o = init("10.88.0.0/16", "4791");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "second init must be refused: {err}"
    );
    assert!(
        err.contains("already part of a swarm") && err.contains("cannot change"),
        "{err}"
    );
    assert!(err.contains(&n1.url()), "names the engine: {err}");
    assert_eq!(
        n1.docker_ok(&["info", "--format", facts]),
        expected,
        "the refused init changed nothing"
    );
    // overlay networks really come from the pool
    n1.docker_ok(&["network", "create", "-d", "overlay", "poolcheck"]);
    let subnet = n1.docker_ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        "poolcheck",
    ]);
    assert!(
        subnet.starts_with("10.77.") && subnet.ends_with("/24"),
        "{subnet}"
    );
    n1.docker_ok(&["network", "rm", "poolcheck"]);

    // an --engine outside the manager's swarm: refused before any service changes
    let (v1, v2) = (&bundle_images(&b1)[0], &bundle_images(&b2)[0]);
    let o = loader(&state)
        .arg("activate")
        .arg(&b1)
        .args(engine_args(&[n1, n2]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("not part of a swarm"), "{err}");
    assert_eq!(
        n1.docker_ok(&["service", "ls", "-q"]),
        "",
        "nothing deployed"
    );
    let gens = loader_json(loader(&state).arg("generations"))["generations"].clone();
    assert_eq!(gens, serde_json::json!([]), "no generation recorded");
    for n in [n1, n2] {
        assert!(
            !n.docker()
                .args(["image", "inspect", &v1.1])
                .output()
                .unwrap()
                .status
                .success(),
            "the refused activation loaded an image on {}",
            n.ip
        );
    }

    let token = n1.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    n2.docker_ok(&[
        "swarm",
        "join",
        "--token",
        &token,
        &format!("{}:2377", n1.ip),
    ]);
    let n2_id = n2.node_id();
    let ready = poll(Duration::from_secs(60), || {
        let s = n1.docker_ok(&["node", "ls", "--format", "{{.Status}}"]);
        (s.lines().filter(|l| *l == "Ready").count() == 2).then_some(())
    });
    assert!(ready.is_some(), "node2 did not become Ready");
    // a real worker as the first engine: told to run on a manager, nothing changed
    let o = loader(&state)
        .arg("activate")
        .arg(&b1)
        .args(engine_args(&[n2]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("worker") && err.contains("manager"), "{err}");
    assert_eq!(
        n1.docker_ok(&["service", "ls", "-q"]),
        "",
        "nothing deployed"
    );
    lap("swarm init + join", &mut t);

    // --- placement: activating through node1 only loads node1 only; node2 gets no task ---
    activate(&state, &b1, &[n1]);
    let tasks = running_tasks(n1, "tiny_app");
    assert_eq!(
        tasks,
        vec![(n1_id.clone(), "running".to_string())],
        "only node1 holds the image, so only node1 runs a task"
    );
    assert!(
        !n2.docker()
            .args(["image", "inspect", &v1.1])
            .output()
            .unwrap()
            .status
            .success(),
        "node2 was not given the v1 image"
    );
    assert_eq!(
        http_get(&n1.ip, TINY_PORT, "/motd").as_deref(),
        Ok("multinode-v1\n")
    );
    assert!(http_get(&n2.ip, TINY_PORT, "/motd").is_err());
    lap("activate v1 on node1", &mut t);

    // --- load: both engines in parallel, IDs as bundle.json says; then nothing to do ---
    let both = [n1, n2];
    let o = loader(&state)
        .arg("load")
        .arg(&b2)
        .args(engine_args(&both))
        .arg("--json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let r = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["engines"].clone();
    for (i, n) in both.iter().enumerate() {
        assert_eq!(r[i]["engine"], n.url(), "{r}");
        assert_eq!(r[i]["loaded"], 1, "{r}");
        assert_eq!(r[i]["skipped"], 0, "{r}");
        assert!(r[i]["bytes"].as_u64().unwrap() > 100_000, "{r}");
        assert!(
            err.contains(&format!("into {}", n.url())),
            "progress: {err}"
        );
        let id = n.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &v2.0]);
        assert_eq!(
            id, v2.1,
            "node {} holds the v2 image under its bundle ID",
            n.index
        );
    }
    let r = loader_json(loader(&state).arg("load").arg(&b2).args(engine_args(&both)))["engines"]
        .clone();
    for i in 0..2 {
        assert_eq!(r[i]["loaded"], 0, "{r}");
        assert_eq!(r[i]["skipped"], 1, "{r}");
    }
    lap("load v2 into both", &mut t);

    // --- activate through both engines: a task on each node as soon as it returns ---
    activate(&state, &b2, &both);
    let mut tasks = running_tasks(n1, "tiny_app");
    tasks.sort();
    let mut want = vec![
        (n1_id.clone(), "running".to_string()),
        (n2_id.clone(), "running".to_string()),
    ];
    want.sort();
    assert_eq!(
        tasks, want,
        "a running task on each node when activate returns"
    );
    for n in both {
        assert_eq!(
            http_get(&n.ip, TINY_PORT, "/motd").as_deref(),
            Ok("multinode-v2\n"),
            "node {} serves v2",
            n.index
        );
    }
    lap("activate v2 on both", &mut t);

    // --- status: nodes, managers, quorum warnings, images per engine ---
    let status = |state: &Path| loader_json(loader(state).arg("status").args(engine_args(&both)));
    let s = status(&state);
    assert_eq!(s["nodes"], 2, "{s}");
    assert_eq!(s["managers"], 1, "{s}");
    assert_eq!(s["tolerated_failures"], 0, "{s}");
    assert_eq!(s["manager_nodes"][0]["id"], n1_id.as_str(), "{s}");
    assert_eq!(s["manager_nodes"][0]["leader"], true, "{s}");
    let warnings = s["warnings"].to_string();
    assert!(warnings.contains("single manager"), "{s}");
    assert_eq!(s["services"][0]["name"], "tiny_app", "{s}");
    assert_eq!(s["services"][0]["running"], 2, "{s}");
    assert_eq!(s["services"][0]["desired"], 2, "{s}");
    assert_eq!(s["services"][0]["health"], "healthy", "{s}");
    let images = s["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{s}");
    for (img, n) in images.iter().zip(both) {
        assert_eq!(img["engine"], n.url(), "{s}");
        assert_eq!(img["id"], v2.1.as_str(), "{s}");
        assert_eq!(img["present"], true, "{s}");
    }

    n1.docker_ok(&["node", "promote", &n2_id]);
    let s = poll(Duration::from_secs(60), || {
        let s = status(&state);
        let nodes = s["manager_nodes"].as_array()?;
        (nodes.len() == 2 && nodes.iter().all(|m| m["reachability"] == "reachable")).then_some(s)
    })
    .expect("node2 did not become a reachable manager");
    assert_eq!(s["managers"], 2, "{s}");
    assert_eq!(s["tolerated_failures"], 0, "{s}");
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains("2 managers (even)") && !warnings.contains("single manager"),
        "{s}"
    );
    // status through node2 (a manager now, once its own engine says so) sees the same swarm
    let s2 = poll(Duration::from_secs(60), || {
        let o = loader(&state)
            .args(["status", "--json", "--engine", &n2.url()])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
    })
    .expect("status through node2 never succeeded after its promotion");
    assert_eq!(s2["managers"], 2, "{s2}");
    assert_eq!(s2["nodes"], 2, "{s2}");
    lap("status + promote", &mut t);

    // --- the default bridge: a service outside any overlay publishes on each node ---
    n1.docker_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "bridgecheck",
        "--mode",
        "global",
        "--publish",
        "mode=host,target=8080,published=8090",
        &v2.1,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/etc",
    ]);
    for n in both {
        let body = poll(Duration::from_secs(60), || {
            http_get(&n.ip, 8090, "/motd").ok()
        });
        assert_eq!(
            body.as_deref(),
            Some("multinode-v2\n"),
            "a default-bridge task with a host-mode port answers on node {}'s address {}:8090; engine log:\n{}",
            n.index,
            n.ip,
            n.log_tail(20)
        );
        let nets = n.docker_ok(&[
            "ps",
            "--filter",
            "label=com.docker.swarm.service.name=bridgecheck",
            "--format",
            "{{.Networks}}",
        ]);
        assert_eq!(
            nets, "bridge",
            "node {}: the task is on the default bridge",
            n.index
        );
    }
    n1.docker_ok(&["service", "rm", "bridgecheck"]);
    lap("default bridge service", &mut t);

    // --- the relay appliance on the 2-node swarm, served through a node's address ---
    let rstate = tmp.path().join("relay-state");
    // the relay's certificate names both node addresses (site values), whichever runs it
    run_ok(
        loader(&rstate)
            .arg("activate")
            .arg(&relay_bundle)
            .args(engine_args(&both))
            .args(["--timeout", "120s", "--monitor", "1s"])
            .arg(format!("--set=PUBLIC_HOST={}", n1.ip))
            .arg(format!("--set=PUBLIC_IP={}", n2.ip)),
    );
    let tasks = running_tasks(n1, "mnrelay_relay");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let node = if tasks[0].0 == n1_id { n1 } else { n2 };
    assert_eq!(tasks[0].0, node.node_id());
    let relay_bin = extract_relay(&relay_bundle, tmp.path());
    let probe = relay_probe_at(&relay_bin, &node.ip, RELAY_PORT, &rstate);
    assert!(
        probe.is_ok(),
        "a WebSocket session relays through {}:{RELAY_PORT}: {probe:?}",
        node.ip
    );
    lap("relay activated and probed", &mut t);
}

/// A `tcp://IP:2376` engine with `--tlsverify`: `load` works with DOCKER_CERT_PATH pointing
/// at a client certificate of the engine's CA, and fails clearly (naming the engine URL)
/// with a client certificate of another CA, an engine certificate we do not trust, or no
/// certificates at all.
#[test]
fn tls_engine_load_with_and_without_valid_client_certificates() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let builder = std::thread::spawn(move || {
        let def = write_tiny_appliance(&dir, "1.0.0", "multinode-tls");
        build_def(&def, &dir.join("out"))
    });
    let cluster = Cluster::start(1, true);
    let n = cluster.node(1);
    let certs = cluster.tls.as_ref().unwrap();
    let bundle = builder.join().expect("building the bundle");
    let (reference, id) = bundle_images(&bundle).remove(0);
    let state = tmp.path().join("state");
    let url = n.tcp_url();
    let load = |cert_dir: &Path, engines: &[&str]| {
        let mut c = loader(&state);
        c.env("DOCKER_CERT_PATH", cert_dir)
            .env("HOME", tmp.path())
            .env_remove("DOCKER_TLS_VERIFY")
            .arg("load")
            .arg(&bundle)
            .arg("--json");
        for e in engines {
            c.args(["--engine", e]);
        }
        c.output().unwrap()
    };

    // the engine really requires a client certificate: plain HTTP is refused
    let plain = docker()
        .args(["-H", &format!("tcp://{}:2376", n.ip), "version"])
        .output()
        .unwrap();
    let perr = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && perr.contains("HTTPS server"),
        "the TLS port must not answer plain HTTP: {perr}"
    );

    // a client certificate of another CA: refused, clearly
    let o = load(&certs.wrong_client, &[&url]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    eprintln!("[multinode] wrong client certificate: {err}");
    assert!(err.contains(&url) && err.contains("TLS"), "{err}");
    // With TLS 1.3 the daemon's rejection alert arrives after the client's handshake is done:
    // depending on timing the client sees the alert ("the daemon rejected the client
    // certificate …") or only a closed connection (the general advice, which also names the
    // client certificate to check).
    let cert = certs.wrong_client.join("cert.pem").display().to_string();
    assert!(
        err.contains(&format!("rejected the client certificate {cert}"))
            || err.contains(&format!("the client certificate {cert} is signed by")),
        "{err}"
    );
    // the engine's certificate signed by a CA we do not trust: refused, clearly
    let o = load(&certs.wrong_ca, &[&url]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("[multinode] untrusted engine certificate: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&url) && err.contains("daemon's certificate is not accepted"),
        "{err}"
    );
    // no certificates at all: refused before any connection, naming what is missing
    let o = load(&certs.empty, &[&url]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    eprintln!("[multinode] no client certificate: {err}");
    assert!(
        err.contains(&format!("engine {url} uses TLS")) && err.contains("cert.pem"),
        "{err}"
    );
    assert!(
        !n.docker()
            .args(["image", "inspect", &id])
            .output()
            .unwrap()
            .status
            .success(),
        "nothing was loaded by the refused attempts"
    );

    // the engine's CA and a client certificate it signed: loaded, ID as bundle.json says
    let o = load(&certs.good, &[&url]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "load over TLS failed: {err}");
    let r = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["engines"].clone();
    assert_eq!(r[0]["engine"], url.as_str(), "{r}");
    assert_eq!(r[0]["loaded"], 1, "{r}");
    assert_eq!(
        n.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &reference]),
        id
    );
    // the same engine over TLS and over its unix socket, in one load: nothing to do
    let sock = n.url();
    let o = load(&certs.good, &[&sock, &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["engines"].clone();
    assert_eq!(r[0]["skipped"], 1, "{r}");
    assert_eq!(r[1]["skipped"], 1, "{r}");
}
