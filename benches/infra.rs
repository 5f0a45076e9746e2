//! The Infra appliance on one node (`cargo bench --bench infra`), against the real engine:
//! 1. cold `activate` of `bundles/infra.toml` (fresh state directory, none of its images on
//!    the engine) until the whole stack serves: the portal answers OK through the entry
//!    (api and database behind it), a signal answers on the agents' port, every service has
//!    its replicas and the db job has completed;
//! 2. the same images loaded with `docker load` and the same stack file deployed with
//!    `docker stack deploy`, until the same checks pass — with what the loader does by
//!    itself done by hand beforehand and not timed (certificates made with openssl, secrets
//!    and the CA config created, the data folder made, the signals written out as
//!    signal1…N with their alias, the db job as a task restarted only on failure — Docker
//!    20.10's `stack deploy` knows no jobs —, the loader's `x-reemo-*` keys taken out);
//! 3. re-activating the current bundle (nothing to do), wall time.
//!
//! First on the host's engine (one node), then on three managers on namespaced engines
//! (tests/common/nodes.rs, joined with the loader): node 1 of the portal part, nodes 2 and
//! 3 of the API part (PORTAL_NODES / API_NODES). There the loader loads each node's images
//! (every engine at once); the baseline loads the whole archive into each engine (at once
//! too) after node labels set by hand, and its services carry those labels as placement
//! constraints. Three rounds each; prints the medians and the ratios. Run on an otherwise
//! idle machine. `INFRA_BENCH=one` or `INFRA_BENCH=three` runs one place only.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::infra::{make_pki, plain_compose, wait_serving};
use common::multinode::{engine_args, join_managers};
use common::nodes::Cluster;
use common::*;

const STACK: &str = "ibench";
/// Every wait gives up (and fails) after this long.
const LIMIT: Duration = Duration::from_secs(300);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}
/// Where a run happens: the docker CLI of the manager and of every node, the loader's
/// `--engine` arguments, the address the entry publishes on, the site values of the node
/// roles, and the labels an operator sets by hand for the baseline (node ID, label).
struct Place<'a> {
    name: &'static str,
    manager: Box<dyn Fn() -> Command + 'a>,
    engines: Vec<Box<dyn Fn() -> Command + 'a>>,
    engine_args: Vec<String>,
    addr: String,
    roles: Vec<(String, String)>,
    hand_labels: Vec<(String, String)>,
}

/// What one place measured: ours until serving, until `activate` returned, the no-op, the
/// baseline (medians).
struct Figures {
    ours: Duration,
    ours_done: Duration,
    noop: Duration,
    base: Duration,
    services: usize,
}

fn bench(place: &Place, bundle: &Path, work: &Path) -> Figures {
    let manager = &place.manager;
    let remove_stack = || {
        let engines: Vec<&dyn Fn() -> Command> = place.engines.iter().map(|e| &**e).collect();
        assert!(try_remove_stack_on(&**manager, &engines, STACK));
    };
    remove_stack();
    let [https, http, signal] = free_ports::<3>();
    let license = "bench-license";
    let mut values = vec![
        ("HTTPS_PORT".to_string(), https.to_string()),
        ("HTTP_PORT".to_string(), http.to_string()),
        ("SIGNAL_PORT".to_string(), signal.to_string()),
        ("API_LICENSE".to_string(), license.to_string()),
    ];
    values.extend(place.roles.iter().cloned());
    let entry = (place.addr.as_str(), https, signal);

    let (unpacked, archive) = unpack_for_docker_load(bundle, work);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("bundle.json")).unwrap()).unwrap();
    let ids: Vec<String> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["config_digest"].as_str().unwrap().to_string())
        .collect();
    let remove_images = || {
        for e in &place.engines {
            for id in &ids {
                let _ = e().args(["image", "rm", "-f", id]).output();
            }
        }
    };

    // 1 + 3: ours, cold, then the no-op
    let mut ours = Vec::new();
    let mut ours_done = Vec::new();
    let mut noop = Vec::new();
    for round in 0..3 {
        remove_stack();
        remove_images();
        let state = work.join(format!("state-{round}"));
        let data = work.join(format!("data-{round}"));
        let mut c = loader(&state);
        c.arg("activate")
            .arg(bundle)
            .args(&place.engine_args)
            .args(["--timeout", "300s"]);
        for (k, v) in &values {
            c.arg("--set").arg(format!("{k}={v}"));
        }
        c.arg("--set")
            .arg(format!("DB_DATA_DIR={}", data.display()));
        let t = Instant::now();
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let served = wait_serving(
            &**manager,
            STACK,
            entry,
            &state.join("pki/ca.pem"),
            t,
            LIMIT,
        );
        assert!(child.wait().unwrap().success(), "activate failed");
        ours.push(served - t);
        ours_done.push(t.elapsed());
        if round == 0 {
            for _ in 0..5 {
                let t = Instant::now();
                run_ok(c.stdout(Stdio::piped()).stderr(Stdio::piped()));
                noop.push(t.elapsed());
            }
        }
    }
    remove_stack();

    // 2: the baseline
    let stack_text =
        std::fs::read_to_string(unpacked.join(manifest["stack_file"].as_str().unwrap())).unwrap();
    let mut env: std::collections::BTreeMap<String, String> = manifest["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p.get("default")?.as_str()?.to_string(),
            ))
        })
        .collect();
    env.extend(values.iter().cloned());
    let mut rendered = stack_text.clone();
    // DB_DATA_DIR stays for `docker stack deploy` to fill from the environment (a folder
    // per round)
    for (k, v) in env.iter().filter(|(k, _)| *k != "DB_DATA_DIR") {
        rendered = rendered.replace(&format!("${{{k}}}"), v);
    }
    let (plain, secrets, certs) = plain_compose(&rendered);
    let compose = unpacked.join("stack/baseline.yml");
    std::fs::write(&compose, plain).unwrap();
    let pki = work.join("base-pki");
    make_pki(&pki, &certs);
    for (node, label) in &place.hand_labels {
        run_ok(manager().args(["node", "update", "--label-add", label, node]));
    }
    let mut base = Vec::new();
    for round in 0..3 {
        remove_stack();
        remove_images();
        let data = work.join(format!("base-data-{round}"));
        let mysql = data.join("mysql");
        std::fs::create_dir_all(&mysql).unwrap();
        std::os::unix::fs::chown(&mysql, Some(999), Some(999)).unwrap();
        for (key, part) in &secrets {
            let _ = manager().args(["secret", "rm", key]).output();
            let file = match part {
                Some(p) => pki.join(p),
                None => {
                    let f = work.join(format!("secret-{key}"));
                    let content = match key.as_str() {
                        "api_license" => format!("{license}\n"),
                        "portal_allow" => "0.0.0.0/0\n::/0\n".to_string(),
                        _ => "0123456789abcdef0123456789abcdef\n".to_string(),
                    };
                    std::fs::write(&f, content).unwrap();
                    f
                }
            };
            run_ok(manager().args(["secret", "create", key]).arg(file));
        }
        let _ = manager().args(["config", "rm", "site_ca"]).output();
        run_ok(
            manager()
                .args(["config", "create", "site_ca"])
                .arg(pki.join("bench-ca.pem")),
        );
        let t = Instant::now();
        // every engine at once, as the loader does
        let loads: Vec<_> = place
            .engines
            .iter()
            .map(|e| {
                e().arg("load")
                    .arg("-i")
                    .arg(&archive)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut l in loads {
            assert!(l.wait().unwrap().success(), "docker load failed");
        }
        run_ok(
            manager()
                .args(["stack", "deploy", "-c"])
                .arg(&compose)
                .arg(STACK)
                .env("DB_DATA_DIR", data.display().to_string()),
        );
        let served = wait_serving(
            &**manager,
            STACK,
            entry,
            &pki.join("bench-ca.pem"),
            t,
            LIMIT,
        );
        base.push(served - t);
        remove_stack();
        for (key, _) in &secrets {
            let _ = manager().args(["secret", "rm", key]).output();
        }
        let _ = manager().args(["config", "rm", "site_ca"]).output();
    }
    for (node, label) in &place.hand_labels {
        let key = label.split('=').next().unwrap();
        run_ok(manager().args(["node", "update", "--label-rm", key, node]));
    }
    Figures {
        ours: median(ours),
        ours_done: median(ours_done),
        noop: median(noop),
        base: median(base),
        services: manifest["services"].as_array().map_or(0, Vec::len),
    }
}

fn report(name: &str, f: &Figures) {
    println!(
        "Infra on {name}: cold activate until serving ({} services): median {} (activate returned after {}) vs docker load + stack deploy {}: ratio {:.2}",
        f.services,
        ms(f.ours),
        ms(f.ours_done),
        ms(f.base),
        f.ours.as_secs_f64() / f.base.as_secs_f64()
    );
    println!(
        "Infra on {name}: re-activate current bundle (nothing to do): median {} over 5",
        ms(f.noop)
    );
}

fn main() {
    require_swarm_manager();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    fetch_debian(&repo_root().join("bundles/infra.toml"));
    let def = shipped_def(work, "infra", "reemo", STACK, |t| {
        t.replace(
            "recipes = [\"../vendor\", \"../recipes\"]",
            &format!(
                "recipes = [{:?}]",
                repo_root().join("recipes").display().to_string()
            ),
        )
    });
    let bundle = build_def(&def, &work.join("out"));
    let only = std::env::var("INFRA_BENCH").unwrap_or_default();
    let mut figures = Vec::new();

    let one = Place {
        name: "one node",
        manager: Box::new(docker),
        engines: vec![Box::new(docker)],
        engine_args: vec![],
        addr: "127.0.0.1".into(),
        roles: vec![],
        hand_labels: vec![],
    };
    if only != "three" {
        std::fs::create_dir_all(work.join("one")).unwrap();
        let f = bench(&one, &bundle, &work.join("one"));
        report(one.name, &f);
        figures.push((one.name, f));
    }
    if only == "one" {
        return;
    }

    // three managers, joined with the loader
    let cluster = Cluster::start(3, false);
    let nodes = [cluster.node(1), cluster.node(2), cluster.node(3)];
    join_managers(
        &work.join("cluster-state"),
        &nodes,
        &work.join("manager.token"),
    );
    let cli = |i: usize| -> Box<dyn Fn() -> Command + '_> {
        let n = nodes[i];
        Box::new(move || n.docker())
    };
    let three = Place {
        name: "three managers",
        manager: cli(0),
        engines: (0..3).map(cli).collect(),
        engine_args: engine_args(&nodes),
        addr: nodes[0].ip.clone(),
        roles: vec![
            ("PORTAL_NODES".into(), nodes[0].ip.clone()),
            (
                "API_NODES".into(),
                format!("{},{}", nodes[1].ip, nodes[2].ip),
            ),
        ],
        hand_labels: vec![
            (nodes[0].node_id(), "role.portal=true".into()),
            (nodes[1].node_id(), "role.api=true".into()),
            (nodes[2].node_id(), "role.api=true".into()),
        ],
    };
    std::fs::create_dir_all(work.join("three")).unwrap();
    let f = bench(&three, &bundle, &work.join("three"));
    figures.push((three.name, f));
    drop(three);
    drop(cluster);
    for (name, f) in &figures {
        report(name, f);
    }
}
