//! Helpers of the Infra appliance tests and benches (`bundles/infra.toml`): variants of
//! the shipped definition with a vendor folder of their own, the vendor's stand-in image
//! recipes, and what the benches' baseline (`docker load` + `docker stack deploy`) needs:
//! the stack file made plain, a PKI made by hand, the wait until the stack serves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::nodes::{make_ca, make_cert};
use super::{build_def, repo_root, shipped_def};

/// A variant of the shipped Infra definition in `dir`, as stack `stack` at `version`: its
/// vendor folder holds `vendor` (file name → recipe text), as a vendor delivery does.
/// Returns the bundle file.
pub fn build_variant(dir: &Path, stack: &str, version: &str, vendor: &[(&str, String)]) -> PathBuf {
    let vendor_dir = dir.join("vendor");
    std::fs::create_dir_all(&vendor_dir).unwrap();
    for (name, text) in vendor {
        std::fs::write(vendor_dir.join(name), text).unwrap();
    }
    let def = shipped_def(dir, "infra", "reemo", stack, |t| {
        t.replace(
            "recipes = [\"../vendor\", \"../recipes\"]",
            &format!(
                "recipes = [{:?}, {:?}]",
                vendor_dir.display().to_string(),
                repo_root().join("recipes").display().to_string()
            ),
        )
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""))
    });
    build_def(&def, &dir.join("out"))
}

/// Run SQL in the MariaDB task of `stack` on the engine of `docker` (socket
/// authentication as the image's `mysql` user), retried for 30 s while it fails.
pub fn sql(docker: &dyn Fn() -> Command, stack: &str, query: &str) -> String {
    let id = super::run_ok(docker().args([
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={stack}_mysql"),
    ]));
    let id = id.lines().next().expect("a running mysql task").to_string();
    let mut last = String::new();
    for _ in 0..60 {
        let o = docker()
            .args(["exec", &id, "mariadb", "-umysql", "-N", "-B", "-e", query])
            .output()
            .unwrap();
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("SQL {query:?} failed: {last}");
}

/// A vendor's stand-in image for `role` at `version` (what `vendor/infra-ROLE.toml` holds),
/// with more environment `env` (TOML inline-table entries).
pub fn vendor_image(role: &str, version: &str, env: &str) -> (&'static str, String) {
    let name: &'static str = Box::leak(format!("infra-{role}.toml").into_boxed_str());
    (
        name,
        format!(
            "kind = \"image\"\nrepository = \"reemo/infra-{role}\"\nversion = \"{version}\"\nbase = \"standin-image\"\n\n[config]\nenv = {{ STANDIN_ROLE = \"{role}\", STANDIN_VERSION = \"{version}\"{env} }}\n"
        ),
    )
}

/// HTTP status of `GET /api/healthcheck` on `port` of `addr` through the entry (as
/// `localhost`, verified with `ca`).
pub fn health(addr: &str, port: u16, ca: &Path) -> Option<u16> {
    let o = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:{addr}"))
        .arg(format!("https://localhost:{port}/api/healthcheck"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// Whether every service of `stack` has its replicas (a job: completed; the baseline's db
/// service, which Docker 20.10's `stack deploy` cannot make a job, has a completed task),
/// asked through the manager's docker CLI `docker`.
pub fn converged(docker: &dyn Fn() -> Command, stack: &str) -> bool {
    let o = docker()
        .args(["service", "ls", "--filter"])
        .arg(format!("label=com.docker.stack.namespace={stack}"))
        .args(["--format", "{{.Name}} {{.Replicas}}"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    !out.trim().is_empty()
        && out.lines().all(|l| {
            let (name, r) = l.trim().split_once(' ').unwrap_or((l, ""));
            if let Some(done) = r.split_once('(').map(|(_, d)| d) {
                if done.contains("completed") {
                    let d = done.trim_end_matches(" completed)");
                    return d.split_once('/').is_some_and(|(a, b)| a == b);
                }
            }
            let n = r.split_whitespace().next().unwrap_or("");
            match n.split_once('/') {
                Some((a, b)) if a == b && a != "0" => true,
                Some(("0", _)) => {
                    let o = docker()
                        .args(["service", "ps", name, "--format", "{{.CurrentState}}"])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(|s| s.starts_with("Complete"))
                }
                _ => false,
            }
        })
}

/// Wait until the Infra stack serves: the portal answers OK through the entry at `addr`
/// (api and database behind it), a signal answers on the agents' port, every service has
/// its replicas and the db job has completed. The instant it did; panics after `limit`.
pub fn wait_serving(
    docker: &dyn Fn() -> Command,
    stack: &str,
    (addr, https, signal): (&str, u16, u16),
    ca: &Path,
    since: Instant,
    limit: Duration,
) -> Instant {
    loop {
        if ca.exists()
            && health(addr, https, ca) == Some(200)
            && health(addr, signal, ca) == Some(200)
            && converged(docker, stack)
        {
            return Instant::now();
        }
        assert!(
            since.elapsed() < limit,
            "{stack}: not serving within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The baseline's PKI, made by hand as an operator without the loader would: a CA
/// (`bench-ca.pem`), and per certificate of the stack a key, a certificate, its chain and
/// a PEM bundle (`NAME.key`, `NAME.cert`, `NAME.chain`, `NAME.pem`).
pub fn make_pki(dir: &Path, certs: &[(String, Vec<String>)]) {
    std::fs::create_dir_all(dir).unwrap();
    make_ca(dir, "bench");
    let ca = std::fs::read_to_string(dir.join("bench-ca.pem")).unwrap();
    for (serial, (name, sans)) in (1..).zip(certs) {
        let san = sans
            .iter()
            .map(|s| {
                if s.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{s}")
                } else {
                    format!("DNS:{s}")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let ext = format!(
            "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
        );
        make_cert(dir, "bench", name, name, &ext, serial);
        let c = std::fs::read_to_string(dir.join(format!("{name}-cert.pem"))).unwrap();
        let k = std::fs::read_to_string(dir.join(format!("{name}-key.pem"))).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &k).unwrap();
        std::fs::write(dir.join(format!("{name}.cert")), &c).unwrap();
        std::fs::write(dir.join(format!("{name}.chain")), format!("{c}{ca}")).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), format!("{c}{ca}{k}")).unwrap();
    }
}

/// The stack file as plain `docker stack deploy` takes it: `x-reemo-repeat` written out
/// (with `{n}` numbered and the repeat's name as a tag dropped), `x-reemo-aliases` as
/// compose network aliases, an `x-reemo-role` whose role names nodes as the placement
/// constraint `node.labels.role.ROLE==true` (labels an operator sets by hand), every other
/// `x-reemo-*` key removed. Returns it with the secrets (key → part `NAME.PART`, or None
/// for plain values) and the certificates (name → SANs) it needs.
#[allow(clippy::type_complexity)]
pub fn plain_compose(
    text: &str,
) -> (
    String,
    Vec<(String, Option<String>)>,
    Vec<(String, Vec<String>)>,
) {
    use serde_yaml::{Mapping, Value as Y};
    fn strip(v: &mut Y) {
        match v {
            Y::Mapping(m) => {
                let keys: Vec<Y> = m
                    .keys()
                    .filter(|k| k.as_str().is_some_and(|k| k.starts_with("x-reemo")))
                    .cloned()
                    .collect();
                for k in keys {
                    m.remove(&k);
                }
                m.values_mut().for_each(strip);
            }
            Y::Sequence(s) => s.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut doc: Y = serde_yaml::from_str(text).unwrap();
    let mut certs = Vec::new();
    if let Some(c) = doc.get("x-reemo-certificates").and_then(Y::as_mapping) {
        for (name, def) in c {
            let sans = def["sans"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            certs.push((name.as_str().unwrap().to_string(), sans));
        }
    }
    let mut secrets = Vec::new();
    for (k, def) in doc["secrets"].as_mapping().unwrap() {
        let part = def
            .get("x-reemo-certificate")
            .and_then(Y::as_str)
            .map(str::to_string);
        secrets.push((k.as_str().unwrap().to_string(), part));
    }
    let named_roles: Vec<String> = doc
        .get("x-reemo-node-roles")
        .and_then(Y::as_mapping)
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_str().is_some_and(|v| !v.trim().is_empty()))
                .map(|(k, _)| k.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    let services = doc["services"].as_mapping_mut().unwrap();
    let mut out = Mapping::new();
    for (name, mut svc) in std::mem::take(services) {
        let role = svc
            .get("x-reemo-role")
            .and_then(Y::as_str)
            .map(str::to_string);
        if let Some(role) = role.filter(|r| named_roles.contains(r)) {
            let deploy = svc
                .as_mapping_mut()
                .unwrap()
                .entry("deploy".into())
                .or_insert_with(|| Y::Mapping(Mapping::new()));
            let placement = deploy
                .as_mapping_mut()
                .unwrap()
                .entry("placement".into())
                .or_insert_with(|| Y::Mapping(Mapping::new()));
            placement.as_mapping_mut().unwrap().insert(
                "constraints".into(),
                Y::Sequence(vec![format!("node.labels.role.{role}==true").into()]),
            );
        }
        let aliases = svc.get("x-reemo-aliases").cloned();
        if let Some(a) = aliases {
            svc.as_mapping_mut().unwrap().insert(
                "networks".into(),
                serde_yaml::from_str::<Y>(&format!(
                    "{{default: {{aliases: {}}}}}",
                    serde_json::to_string(&a).unwrap()
                ))
                .unwrap(),
            );
        }
        // Docker 20.10's `stack deploy` knows no jobs: a task restarted only when it fails
        // (a start the engine fails, "network sandbox does not exist", is tried again)
        if svc["deploy"]["mode"].as_str() == Some("replicated-job") {
            let d = svc["deploy"].as_mapping_mut().unwrap();
            d.insert("mode".into(), "replicated".into());
            d.insert(
                "restart_policy".into(),
                serde_yaml::from_str::<Y>("{condition: on-failure}").unwrap(),
            );
        }
        match svc.get("x-reemo-repeat").and_then(Y::as_u64) {
            Some(count) => {
                for n in 1..=count {
                    let mut copy = svc.clone();
                    reemo_bundle::stack::number_copy(&mut copy, n);
                    out.insert(format!("{}{n}", name.as_str().unwrap()).into(), copy);
                }
            }
            None => {
                out.insert(name, svc);
            }
        }
    }
    *services = out;
    strip(&mut doc);
    (serde_yaml::to_string(&doc).unwrap(), secrets, certs)
}
