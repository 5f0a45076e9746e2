//! The Infra appliance (`bundles/infra.toml`) on three managers, as the README's
//! three-manager walk-through does it: three engines in network namespaces
//! (tests/common/nodes.rs) joined with the loader alone (`swarm init`, `swarm join-token
//! --out`, `swarm join --token-file`), node 1 of the portal part (PORTAL_NODES: portal,
//! signals, entry), nodes 2 and 3 of the API part (API_NODES: api, crons, provisioning
//! APIs, db job, MariaDB). Then:
//! - every image is loaded on exactly the nodes that may run one of its tasks (the portal's
//!   image not on the API nodes, MariaDB's not on the portal node), and every task runs on
//!   a node of its role;
//! - the portal answers OK through the entry on node 1 (the site certificate verified
//!   against the site CA), with the api and the database behind it on the other nodes over
//!   the overlay and mutual TLS; a re-activation has nothing to do;
//! - a vendor api update during which one API manager's engine is SIGKILLed: the portal
//!   keeps answering, the activation completes or reverts as a whole (no journal left, one
//!   current generation), the next `activate` on the two survivors finishes the job, the
//!   rows written to MariaDB before are still there, and `status` reports the lost manager
//!   and a tolerance of 0.
//!
//! The manager killed is the API node that does not run MariaDB: the seed's database is
//! one task on one node's folder, so losing that node interrupts the platform until the
//! task runs elsewhere (with replicated storage, as the seed asks for /opt/reemo).
//!
//! Needs Docker, iproute2, iptables, curl and the Debian archive (MariaDB, haproxy).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::infra::{build_variant, vendor_image};
use common::multinode::{
    bundle_images, engine_args, join_managers, running_tasks, KilledActivation,
};
use common::nodes::{poll, Cluster, Node};
use common::*;

const STACK: &str = "infraha";
const LICENSE: &str = "API_LICENSE=license-of-the-site";

fn lap(what: &str, t: &mut Instant) {
    eprintln!("[infra-ha] {what}: {:.1}s", t.elapsed().as_secs_f64());
    *t = Instant::now();
}

/// The site's values of this walk: the roles by node address, the data folder.
struct Site {
    state: PathBuf,
    values: Vec<String>,
}

impl Site {
    /// `activate BUNDLE` through the engines of `nodes` with the site's values.
    fn activate(&self, bundle: &Path, nodes: &[&Node], timeout: &str) -> Command {
        let mut c = loader(&self.state);
        c.arg("activate")
            .arg(bundle)
            .args(engine_args(nodes))
            .args(["--timeout", timeout]);
        for v in &self.values {
            c.arg("--set").arg(v);
        }
        c
    }

    fn activate_ok(&self, bundle: &Path, nodes: &[&Node]) -> String {
        run_ok(&mut self.activate(bundle, nodes, "300s"))
    }

    /// `GET PATH` on the entry of node `n` at `port`, as `localhost` verified with the site
    /// CA: (HTTP status, body), or the curl error.
    fn get(&self, n: &Node, port: u16, path: &str) -> Result<(u16, String), String> {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(self.state.join("pki/ca.pem"))
            .arg("--resolve")
            .arg(format!("localhost:{port}:{}", n.ip))
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() {
            return Err(format!("{}{out}", String::from_utf8_lossy(&o.stderr)));
        }
        let (body, code) = out.rsplit_once('\n').unwrap();
        Ok((code.trim().parse().unwrap(), body.to_string()))
    }

    /// The portal's health through the entry on `n`, once it is OK within `limit`.
    fn portal_ok(&self, n: &Node, limit: Duration) -> Result<serde_json::Value, String> {
        let mut last = String::new();
        poll(limit, || match self.get(n, 443, "/api/healthcheck") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            Ok((code, body)) => {
                last = format!("{code} {body}");
                None
            }
            Err(e) => {
                last = e;
                None
            }
        })
        .ok_or(last)
    }
}

/// The node a service's running tasks are on, each as its index in `nodes`, sorted.
fn task_nodes(manager: &Node, nodes: &[&Node], service: &str) -> Vec<usize> {
    let ids: Vec<String> = nodes.iter().map(|n| n.node_id()).collect();
    let mut v: Vec<usize> = running_tasks(manager, &format!("{STACK}_{service}"))
        .into_iter()
        .filter(|(_, s)| s == "running")
        .map(|(node, _)| nodes[ids.iter().position(|i| *i == node).expect("a known node")].index)
        .collect();
    v.sort();
    v
}

/// Run SQL in the MariaDB task on node `n`.
fn sql(n: &Node, query: &str) -> String {
    common::infra::sql(&|| n.docker(), STACK, query)
}

#[test]
fn the_infra_appliance_on_three_managers() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Instant::now();
    let dir = tmp.path().to_path_buf();
    let builder = std::thread::spawn(move || {
        fetch_debian(&repo_root().join("bundles/infra.toml"));
        (
            build_variant(&dir.join("v1"), STACK, "1.0.0", &[]),
            build_variant(
                &dir.join("v2"),
                STACK,
                "1.0.1",
                &[vendor_image("api", "2.15.3-standin", "")],
            ),
        )
    });
    let cluster = Cluster::start(3, false);
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));
    let all = [n1, n2, n3];
    let state = tmp.path().join("state");
    lap("engines started", &mut t);

    // --- three managers, set up with the loader alone
    join_managers(&state, &all, &tmp.path().join("manager.token"));
    lap("three managers", &mut t);

    let site = Site {
        state,
        values: vec![
            LICENSE.to_string(),
            format!("PORTAL_NODES={}", n1.ip),
            format!("API_NODES={},{}", n2.ip, n3.ip),
            format!("DB_DATA_DIR={}", tmp.path().join("opt-reemo").display()),
        ],
    };
    let (v1, v2) = builder.join().expect("building the bundles");
    lap("bundles built (in parallel with the engines)", &mut t);

    // --- first install on the three managers
    let cold = Instant::now();
    site.activate_ok(&v1, &all);
    eprintln!(
        "[infra-ha] cold activation on three managers: {:.1}s",
        cold.elapsed().as_secs_f64()
    );
    lap("v1 activated", &mut t);

    // every image on exactly the nodes that may run one of its tasks
    let portal_part = ["infra-portal", "infra-signal", "infra-entry"];
    for (reference, id) in bundle_images(&v1) {
        let slot = reference
            .split(':')
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let on: Vec<usize> = all
            .iter()
            .filter(|n| {
                n.docker()
                    .args(["image", "inspect", &id])
                    .output()
                    .unwrap()
                    .status
                    .success()
            })
            .map(|n| n.index)
            .collect();
        let want = if portal_part.contains(&slot.as_str()) {
            vec![1]
        } else if slot.starts_with("infra-") {
            vec![2, 3]
        } else {
            panic!("image {reference}: no service of the stack uses it")
        };
        assert_eq!(on, want, "image {reference} ({slot}) is on nodes {on:?}");
    }
    // every task on a node of its role
    for (service, want) in [
        ("portal", vec![1, 1]),
        ("entry", vec![1]),
        ("signal1", vec![1]),
        ("signal2", vec![1]),
    ] {
        assert_eq!(task_nodes(n1, &all, service), want, "{service}");
    }
    for (service, count) in [
        ("api", 4),
        ("mysql", 1),
        ("apicron", 1),
        ("apicronldap", 1),
        ("apicronlog", 1),
        ("proapi", 2),
        ("prorelayapi", 2),
    ] {
        let on = task_nodes(n1, &all, service);
        assert!(
            on.len() == count && on.iter().all(|i| *i == 2 || *i == 3),
            "{service} runs on nodes {on:?}"
        );
    }

    // the portal through the entry on node 1, the api and MariaDB behind it elsewhere
    let h = site
        .portal_ok(n1, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the portal does not answer OK: {e}"));
    assert_eq!(h["services"]["api"]["version"], "2.15.2-standin", "{h}");
    assert_eq!(
        h["services"]["api"]["services"]["db"]["status"], "OK",
        "{h}"
    );
    let (code, body) = site.get(n1, 8443, "/api/healthcheck").unwrap();
    assert_eq!(code, 200, "a signal on the agents' port: {body}");
    let db_node = task_nodes(n1, &all, "mysql")[0];
    let db = all[db_node - 1];
    sql(db, "CREATE DATABASE IF NOT EXISTS reemo; CREATE TABLE IF NOT EXISTS reemo.t (v VARCHAR(64)); INSERT INTO reemo.t VALUES ('written-before-the-loss')");
    let noop = Instant::now();
    let out = site.activate_ok(&v1, &all);
    assert!(out.contains("nothing to do"), "{out}");
    eprintln!(
        "[infra-ha] re-activation with nothing to do: {} ms",
        noop.elapsed().as_millis()
    );
    lap("v1 checked", &mut t);

    // --- the api update, and an API manager's engine killed at its first Swarm step
    let victim = if db_node == 2 { n3 } else { n2 };
    let survivors: Vec<&Node> = all
        .iter()
        .copied()
        .filter(|n| n.index != victim.index)
        .collect();
    let run = KilledActivation::start(site.activate(&v2, &all, "60s").arg("--json"), victim);
    lap(&format!("node {}'s engine killed", victim.index), &mut t);
    // the platform keeps answering through the entry while the activation goes on
    let during = site.portal_ok(n1, Duration::from_secs(90));
    assert!(
        during.is_ok(),
        "the portal stopped answering after the loss: {during:?}"
    );
    let (exit, log, _) = run.finish(Duration::from_secs(240));
    eprintln!("[infra-ha] activation under loss: {exit}\n{log}");
    assert!(
        !site.state.join("journal.json").exists(),
        "a journal is left: {log}"
    );
    let gens = loader_json(loader(&site.state).arg("generations"))["generations"].clone();
    let current: Vec<&serde_json::Value> = gens
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["current"] == true)
        .collect();
    assert_eq!(current.len(), 1, "{gens}");
    match exit.code() {
        Some(0) => assert_eq!(current[0]["version"], "1.0.1", "{gens}"),
        Some(1) => {
            assert_eq!(current[0]["version"], "1.0.0", "{gens}");
            assert!(log.contains("revert"), "{log}");
        }
        other => panic!("the activation ended with {other:?}: {log}"),
    }
    lap("activation under loss ended, consistent", &mut t);

    // --- the next command, on the two survivors, finishes the job
    let out = site.activate_ok(&v2, &survivors);
    eprintln!("[infra-ha] next activate: {out}");
    let h = site
        .portal_ok(n1, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("the portal does not answer OK: {e}"));
    assert_eq!(h["services"]["api"]["version"], "2.15.3-standin", "{h}");
    let api_on = task_nodes(n1, &survivors, "api");
    assert!(
        api_on.len() == 4 && api_on.iter().all(|i| *i == db_node),
        "the api runs on the surviving API node only: {api_on:?}"
    );
    assert_eq!(
        sql(db, "SELECT v FROM reemo.t").trim(),
        "written-before-the-loss"
    );
    lap("next activate finished the job", &mut t);

    // --- status: the lost manager, no tolerance left
    let s = poll(Duration::from_secs(60), || {
        let s = loader_json(loader(&site.state).arg("status").args(engine_args(&all)));
        (s["quorum"]["reachable"] == 2).then_some(s)
    })
    .expect("status reports the lost manager as unreachable");
    assert_eq!(
        (&s["quorum"]["managers"], &s["quorum"]["tolerates"]),
        (&serde_json::json!(3), &serde_json::json!(0)),
        "{s}"
    );
    assert!(
        s["warnings"]
            .to_string()
            .contains(&format!("at {}:2377 is unreachable", victim.ip)),
        "{s}"
    );
    assert!(
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["health"] == "healthy" || v["health"] == "completed"),
        "{s}"
    );
    lap("status after the loss", &mut t);
    drop(cluster);
}
