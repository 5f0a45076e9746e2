//! The engine matrix (tests/engine26_*.rs, tests/engine_mixed_swarm.rs): what an engine of a
//! given kind must show after `load`, `activate`, `rollback` and `gc` of the relay alone and
//! of the default appliance (entry proxy + relay replicas), and the steps the matrix files
//! share.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::nodes::{EngineKind, Node};
use super::{build_relay_variant_with, loader, loader_json, run_ok};

/// One image of a bundle, as bundle.json names it.
#[derive(Debug, Clone)]
pub struct BundleImage {
    /// `repository:tag`.
    pub reference: String,
    /// Config digest.
    pub config: String,
    /// Manifest digest.
    pub manifest: String,
}

/// The images of a bundle file.
pub fn bundle_images(bundle: &Path) -> Vec<BundleImage> {
    let o = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(bundle)
        .arg("bundle.json")
        .output()
        .expect("tar -xOf bundle.json");
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bundle.json");
    m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| BundleImage {
            reference: format!(
                "{}:{}",
                i["repository"].as_str().unwrap(),
                i["tag"].as_str().unwrap()
            ),
            config: i["config_digest"].as_str().unwrap().to_string(),
            manifest: i["manifest_digest"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// The image ID an engine of `kind` gives `img` once loaded.
pub fn expected_id(kind: EngineKind, img: &BundleImage) -> &str {
    if kind.containerd_store() {
        &img.manifest
    } else {
        &img.config
    }
}

/// The store label the loader puts on a node running `kind`.
pub fn store_name(kind: EngineKind) -> &'static str {
    if kind.containerd_store() {
        "containerd"
    } else {
        "classic"
    }
}

/// The relay appliance as stack `stack` on `port`, `version`, with `mark` in its relay
/// configuration (so that versions differ in a config), in global mode when `global`
/// (a task on every node).
pub fn relay_bundle(
    dir: &Path,
    stack: &str,
    port: u16,
    version: &str,
    mark: &str,
    global: bool,
) -> PathBuf {
    let mark = mark.to_string();
    build_relay_variant_with(
        dir,
        stack,
        port,
        version,
        move |c| format!("{c}\n# {mark}\n"),
        move |s| {
            if global {
                let g = s.replace("mode: replicated\n      replicas: 1", "mode: global");
                assert_ne!(g, s, "the relay stack template changed: no replicated mode");
                g
            } else {
                s
            }
        },
    )
}

/// `--engine URL` for each node.
pub fn engine_args(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|n| ["--engine".to_string(), n.url()])
        .collect()
}

/// `reemo-bundle swarm init` on `n` (advertising its bridge address).
pub fn swarm_init(state: &Path, n: &Node) {
    run_ok(
        loader(state)
            .args(["swarm", "init", "--engine", &n.url()])
            .args(["--advertise-addr", &n.ip]),
    );
}

/// `reemo-bundle activate` through `nodes` (the first is the manager); the JSON result. The
/// relay's certificate names the nodes' addresses (site values PUBLIC_HOST and PUBLIC_IP:
/// the first node's and the last one's), so that probes at either verify.
pub fn activate(state: &Path, bundle: &Path, nodes: &[&Node]) -> serde_json::Value {
    activate_with(state, bundle, nodes, &[])
}

/// [`activate`] with more site values (`NAME=VALUE`).
pub fn activate_with(
    state: &Path,
    bundle: &Path,
    nodes: &[&Node],
    sets: &[String],
) -> serde_json::Value {
    let (first, last) = (nodes[0], nodes[nodes.len() - 1]);
    let r = loader_json(
        loader(state)
            .arg("activate")
            .arg(bundle)
            .args(engine_args(nodes))
            .args(["--timeout", "180s", "--monitor", "1s"])
            .arg(format!("--set=PUBLIC_HOST={}", first.ip))
            .arg(format!("--set=PUBLIC_IP={}", last.ip))
            .args(sets.iter().map(|s| format!("--set={s}"))),
    );
    assert_eq!(r["result"], "activated", "{r}");
    r
}

/// `reemo-bundle rollback` through `nodes`; the JSON result.
pub fn rollback(state: &Path, nodes: &[&Node]) -> serde_json::Value {
    loader_json(
        loader(state)
            .arg("rollback")
            .args(engine_args(nodes))
            .args(["--timeout", "120s"]),
    )
}

/// What `n` reports for `reference`: `Id`, or None when it does not hold it.
pub fn image_id_on(n: &Node, reference: &str) -> Option<String> {
    let o = n
        .docker()
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The image reference of a service's spec, and the configs its tasks get.
pub fn service_image_and_configs(manager: &Node, service: &str) -> (String, String) {
    let out = manager.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}} {{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}}{{end}}",
        service,
    ]);
    let (img, cfg) = out.split_once(' ').unwrap_or((&out, ""));
    (img.to_string(), cfg.to_string())
}

/// Node labels of `node_id`, as `docker node inspect` prints them (JSON).
pub fn node_labels(manager: &Node, node_id: &str) -> serde_json::Value {
    let out = manager.docker_ok(&[
        "node",
        "inspect",
        "--format",
        "{{json .Spec.Labels}}",
        node_id,
    ]);
    serde_json::from_str(&out).unwrap_or_default()
}

/// Print how long a step took (CI time guidance).
pub fn lap(tag: &str, what: &str, t: &mut Instant) {
    eprintln!("[{tag}] {what}: {:.1}s", t.elapsed().as_secs_f64());
    *t = Instant::now();
}

/// The tiny appliance (tests/common: busybox, one service) as stack `stack`, built.
fn tiny(dir: &Path, version: &str, motd: &str, stack: &str) -> PathBuf {
    let def = super::tiny_appliance_on(dir, version, motd, stack, None);
    super::build_def(&def, &dir.join("out"))
}

/// The single-engine walk of the matrix on one namespaced node running `kind` (tagged `tag`
/// in the output): `load` (ID as the store gives it, then skipped), `activate` v1 (the relay
/// serves; the service is pinned by what that store resolves), `activate` v2, `rollback` to
/// v1, `gc` (v2's image leaves the store); then the default appliance's [`appliance_walk`].
pub fn engine_walk(kind: EngineKind, tag: &str, stack: &'static str, port: u16) {
    use super::nodes::Cluster;
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Instant::now();
    let dir = tmp.path().to_path_buf();
    let builder = std::thread::spawn(move || {
        (
            relay_bundle(&dir.join("v1"), stack, port, "1.0.0", "v1", false),
            relay_bundle(&dir.join("v2"), stack, port, "2.0.0", "v2", false),
            super::appliance::build(&dir.join("appliance"), &format!("{stack}app")),
            tiny(&dir.join("t1"), "1.0.0", "one", &format!("{stack}tiny")),
            tiny(&dir.join("t2"), "2.0.0", "two", &format!("{stack}tiny")),
        )
    });
    let cluster = Cluster::start_engines(&[kind], false);
    let n = cluster.node(1);
    let info = n.docker_ok(&[
        "info",
        "--format",
        "{{.ServerVersion}} {{.Driver}} {{json .DriverStatus}}",
    ]);
    let (version, api) = kind.versions();
    assert!(info.starts_with(version), "{info}");
    assert_eq!(
        info.contains("io.containerd.snapshotter.v1"),
        kind.containerd_store(),
        "the engine runs the store asked for: {info}"
    );
    lap(tag, "engine started", &mut t);
    let (v1, v2, app, t1, t2) = builder.join().expect("building the bundles");
    lap(tag, "bundles built (waited)", &mut t);
    let img = bundle_images(&v1).remove(0);
    let state = tmp.path().join("state");

    // load: the ID the engine's store gives our image, then nothing to do
    let r = loader_json(loader(&state).arg("load").arg(&v1).args(engine_args(&[n])));
    assert_eq!(r["engines"][0]["loaded"], 1, "{r}");
    assert_eq!(
        image_id_on(n, &img.reference).as_deref(),
        Some(expected_id(kind, &img)),
        "{tag}: the loaded image's ID"
    );
    if kind.versions().1 >= "1.48" {
        // what the loader reads there: the image's descriptor names our manifest
        let o = run_ok(
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "--unix-socket"])
                .arg(&n.sock)
                .arg(format!(
                    "http://engine/v{}/images/{}/json",
                    kind.versions().1,
                    img.reference
                )),
        );
        let v: serde_json::Value = serde_json::from_str(&o).expect("image inspect JSON");
        assert_eq!(
            v["Descriptor"]["digest"], img.manifest,
            "{tag}: the image's descriptor: {o}"
        );
    }
    let r = loader_json(loader(&state).arg("load").arg(&v1).args(engine_args(&[n])));
    assert_eq!(r["engines"][0]["skipped"], 1, "{r}");
    lap(tag, "loaded", &mut t);

    // activate v1, v2, rollback
    swarm_init(&state, n);
    activate(&state, &v1, &[n]);
    let pin = pin(&[kind], &img);
    let (image, cfg_v1) = service_image_and_configs(n, &format!("{stack}_relay"));
    assert_eq!(
        image, pin,
        "{tag}: the service is pinned by what its store resolves"
    );
    let labels = node_labels(n, &n.node_id());
    assert_eq!(
        labels["com.reemo-bundle.image-store"],
        store_name(kind),
        "{labels}"
    );
    let st = loader_json(loader(&state).arg("status").args(engine_args(&[n])));
    assert_eq!(
        (&st["engines"][0]["store"], &st["engines"][0]["api"]),
        (
            &serde_json::json!(store_name(kind)),
            &serde_json::json!(api)
        ),
        "{st}"
    );
    assert_eq!(st["images"][0]["present"], true, "{st}");
    let relay = super::extract_relay(&v1, tmp.path());
    super::relay_probe_at(&relay, &n.ip, port, &state).expect("v1 serves");
    lap(tag, "v1 activated and probed", &mut t);

    activate(&state, &v2, &[n]);
    let (_, cfg_v2) = service_image_and_configs(n, &format!("{stack}_relay"));
    assert_ne!(cfg_v1, cfg_v2, "v2 runs its own config");
    super::relay_probe_at(&relay, &n.ip, port, &state).expect("v2 serves");
    lap(tag, "v2 activated and probed", &mut t);

    rollback(&state, &[n]);
    let (image, cfg) = service_image_and_configs(n, &format!("{stack}_relay"));
    assert_eq!((image, cfg), (pin, cfg_v1), "{tag}: back on v1");
    super::relay_probe_at(&relay, &n.ip, port, &state).expect("v1 serves after rollback");
    lap(tag, "rolled back and probed", &mut t);

    // gc: an image only a removed generation used leaves this store, the current one's
    // stays (the tiny appliance: its two versions differ in an image layer)
    let tiny_state = tmp.path().join("tiny-state");
    let tiny = |tb: &Path| {
        loader_json(
            loader(&tiny_state)
                .arg("activate")
                .arg(tb)
                .args(engine_args(&[n]))
                .args(["--timeout", "120s", "--monitor", "1s"]),
        )
    };
    assert_eq!(tiny(&t1)["result"], "activated");
    assert_eq!(tiny(&t2)["result"], "activated");
    rollback(&tiny_state, &[n]);
    let (i1, i2) = (bundle_images(&t1).remove(0), bundle_images(&t2).remove(0));
    assert_ne!(i1.config, i2.config, "the tiny appliance's versions differ");
    let r = loader_json(
        loader(&tiny_state)
            .args(["gc", "--keep", "1"])
            .args(engine_args(&[n])),
    );
    assert_eq!(
        image_id_on(n, &i2.reference),
        None,
        "{tag}: gc removed the image only generation 2 used: {r}"
    );
    assert_eq!(
        image_id_on(n, &i1.reference).as_deref(),
        Some(expected_id(kind, &i1)),
        "{tag}: gc kept the current generation's image: {r}"
    );
    lap(tag, "gc", &mut t);

    // the default appliance (entry proxy + relay replicas) on the same engine
    appliance_walk(
        tag,
        &tmp.path().join("app-state"),
        &app,
        &format!("{stack}app"),
        &[n],
        &[kind],
    );
    drop(cluster);
    lap(tag, "engine stopped", &mut t);
}

/// The reference the loader pins a service's image by, on a swarm whose engines are `kinds`:
/// the config digest when every engine has the classic store, `repository:tag@manifest
/// digest` when every one has the containerd store, `repository:tag` when they are mixed.
pub fn pin(kinds: &[EngineKind], img: &BundleImage) -> String {
    if kinds.iter().all(|k| k.containerd_store()) {
        format!("{}@{}", img.reference, img.manifest)
    } else if kinds.iter().any(|k| k.containerd_store()) {
        img.reference.clone()
    } else {
        img.config.clone()
    }
}

/// The node ID of the task Swarm runs for a single-replica `service`.
pub fn task_node(manager: &Node, service: &str) -> String {
    let ids = manager.docker_ok(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        service,
    ]);
    let id = ids
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no task for {service}"));
    manager.docker_ok(&["inspect", "--format", "{{.NodeID}}", id])
}

/// Sessions the running containers of `service` on `n` have paired (their logs).
pub fn sessions_paired(n: &Node, service: &str) -> usize {
    let ids = n.docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ]);
    ids.lines()
        .map(|id| {
            let o = n.docker().args(["logs", id]).output().unwrap();
            let all = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&all)
                .lines()
                .filter(|l| l.contains("session paired"))
                .count()
        })
        .sum()
}

/// Replicas a replicated service's spec asks for.
pub fn replicas(manager: &Node, service: &str) -> String {
    manager.docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}}",
        service,
    ])
}

/// The shipped RELAYWS appliance (haproxy entry proxy + relay replicas, `bundle`, stack
/// `stack`) on the swarm of `nodes` (the first is its manager; their engines are `kinds`):
/// activation with the defaults (the nodes' addresses as PUBLIC_HOST and PUBLIC_IP), each
/// node holding each image under the ID its store gives it, both services pinned as the
/// swarm's stores resolve, a session made through the mTLS control port and paired through
/// TLS on 443 (verified against the site CA); a second generation with 3 relay replicas,
/// probed; rollback to 2, probed.
pub fn appliance_walk(
    tag: &str,
    state: &Path,
    bundle: &Path,
    stack: &str,
    nodes: &[&Node],
    kinds: &[EngineKind],
) {
    let mut t = Instant::now();
    let manager = nodes[0];
    let bin_dir = state.with_extension("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let relay = super::extract_relay(bundle, &bin_dir);
    let probe = |what: &str| {
        let on = task_node(manager, &format!("{stack}_proxy"));
        let n = nodes
            .iter()
            .find(|n| n.node_id() == on)
            .expect("the proxy runs on a node of the test");
        super::appliance::probe_at(&relay, &n.ip, 443, 8443, state)
            .unwrap_or_else(|e| panic!("{tag} {what}: the appliance serves at {}: {e}", n.ip));
    };
    activate_with(state, bundle, nodes, &[]);
    let images = bundle_images(bundle);
    assert_eq!(images.len(), 2, "haproxy and the relay");
    for img in &images {
        for (n, kind) in nodes.iter().zip(kinds) {
            assert_eq!(
                image_id_on(n, &img.reference).as_deref(),
                Some(expected_id(*kind, img)),
                "{tag}: node {} ({kind:?}) holds {} under the ID its store gives",
                n.index,
                img.reference
            );
        }
    }
    let pinned: Vec<String> = ["proxy", "relay"]
        .iter()
        .map(|s| service_image_and_configs(manager, &format!("{stack}_{s}")).0)
        .collect();
    let mut want: Vec<String> = images.iter().map(|i| pin(kinds, i)).collect();
    let mut got = pinned.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{tag}: the appliance's services are pinned");
    probe("defaults");
    if nodes.len() > 1 {
        // the proxy reaches the replicas on every node (the overlay spans the engines):
        // probes until a relay task on each node has paired a session, at most 16
        let relay_service = format!("{stack}_relay");
        let mut paired = vec![0; nodes.len()];
        for _ in 0..16 {
            paired = nodes
                .iter()
                .map(|n| sessions_paired(n, &relay_service))
                .collect();
            if paired.iter().all(|&p| p > 0) {
                break;
            }
            probe("across the nodes");
        }
        assert!(
            paired.iter().all(|&p| p > 0),
            "{tag}: sessions paired per node {paired:?}: the relay tasks of some node got none through the proxy"
        );
    }
    lap(tag, "appliance activated and probed", &mut t);

    activate_with(state, bundle, nodes, &["RELAY_REPLICAS=3".into()]);
    assert_eq!(replicas(manager, &format!("{stack}_relay")), "3");
    probe("3 relay replicas");
    lap(tag, "appliance with 3 relay replicas", &mut t);

    let r = rollback(state, nodes);
    assert_eq!(replicas(manager, &format!("{stack}_relay")), "2", "{r}");
    probe("rolled back");
    lap(tag, "appliance rolled back and probed", &mut t);
}
