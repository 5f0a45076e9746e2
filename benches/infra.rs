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
//! Three rounds each; prints the medians and the ratio. Run on an otherwise idle machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nodes::{make_ca, make_cert};
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

/// HTTP status of `GET /api/healthcheck` on `port` through the entry (verified with `ca`).
fn health(port: u16, ca: &Path) -> Option<u16> {
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
        .arg(format!("https://localhost:{port}/api/healthcheck"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// Whether every service of `stack` has its replicas (a job: completed; the baseline's db
/// service, which Docker 20.10's `stack deploy` cannot make a job, has a completed task).
fn converged(stack: &str) -> bool {
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

/// Wait until the stack serves (see the module docs); the instant it did.
fn wait_serving(stack: &str, https: u16, signal: u16, ca: &Path, since: Instant) -> Instant {
    loop {
        if ca.exists()
            && health(https, ca) == Some(200)
            && health(signal, ca) == Some(200)
            && converged(stack)
        {
            return Instant::now();
        }
        assert!(
            since.elapsed() < LIMIT,
            "{stack}: not serving within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The baseline's PKI, made by hand as an operator without the loader would: a CA
/// (`bench-ca.pem`), and per certificate of the stack a key, a certificate, its chain and
/// a PEM bundle (`NAME.key`, `NAME.cert`, `NAME.chain`, `NAME.pem`).
fn make_pki(dir: &Path, certs: &[(String, Vec<String>)]) {
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
/// compose network aliases, every other `x-reemo-*` key removed. Returns it with the
/// secrets (key → part `NAME.PART`, or None for plain values) and the certificates (name →
/// SANs) it needs.
#[allow(clippy::type_complexity)]
fn plain_compose(
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
    let services = doc["services"].as_mapping_mut().unwrap();
    let mut out = Mapping::new();
    for (name, mut svc) in std::mem::take(services) {
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

fn main() {
    require_swarm_manager();
    assert!(try_remove_stack(STACK));
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
    let [https, http, signal] = free_ports::<3>();
    let license = "bench-license";
    let values = [
        ("HTTPS_PORT", https.to_string()),
        ("HTTP_PORT", http.to_string()),
        ("SIGNAL_PORT", signal.to_string()),
        ("API_LICENSE", license.to_string()),
    ];

    let (unpacked, archive) = unpack_for_docker_load(&bundle, work);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("bundle.json")).unwrap()).unwrap();
    let ids: Vec<String> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["config_digest"].as_str().unwrap().to_string())
        .collect();
    let remove_images = || {
        for id in &ids {
            let _ = docker().args(["image", "rm", "-f", id]).output();
        }
    };

    // 1 + 3: ours, cold, then the no-op
    let mut ours = Vec::new();
    let mut ours_done = Vec::new();
    let mut noop = Vec::new();
    for round in 0..3 {
        assert!(try_remove_stack(STACK));
        remove_images();
        let state = work.join(format!("state-{round}"));
        let data = work.join(format!("data-{round}"));
        let mut c = loader(&state);
        c.arg("activate").arg(&bundle).args(["--timeout", "300s"]);
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
        let served = wait_serving(STACK, https, signal, &state.join("pki/ca.pem"), t);
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
    assert!(try_remove_stack(STACK));

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
    env.extend(values.iter().map(|(k, v)| (k.to_string(), v.clone())));
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
    let mut base = Vec::new();
    for round in 0..3 {
        assert!(try_remove_stack(STACK));
        remove_images();
        let data = work.join(format!("base-data-{round}"));
        let mysql = data.join("mysql");
        std::fs::create_dir_all(&mysql).unwrap();
        std::os::unix::fs::chown(&mysql, Some(999), Some(999)).unwrap();
        for (key, part) in &secrets {
            let _ = docker().args(["secret", "rm", key]).output();
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
            run_ok(docker().args(["secret", "create", key]).arg(file));
        }
        let _ = docker().args(["config", "rm", "site_ca"]).output();
        run_ok(
            docker()
                .args(["config", "create", "site_ca"])
                .arg(pki.join("bench-ca.pem")),
        );
        let t = Instant::now();
        run_ok(docker().arg("load").arg("-i").arg(&archive));
        run_ok(
            docker()
                .args(["stack", "deploy", "-c"])
                .arg(&compose)
                .arg(STACK)
                .env("DB_DATA_DIR", data.display().to_string()),
        );
        let served = wait_serving(STACK, https, signal, &pki.join("bench-ca.pem"), t);
        base.push(served - t);
        assert!(try_remove_stack(STACK));
        for (key, _) in &secrets {
            let _ = docker().args(["secret", "rm", key]).output();
        }
        let _ = docker().args(["config", "rm", "site_ca"]).output();
    }
    let (o, b) = (median(ours), median(base));
    println!(
        "Infra cold activate until serving ({} services): median {} (activate returned after {}) vs docker load + stack deploy {}: ratio {:.2}",
        manifest["services"].as_array().map_or(0, Vec::len),
        ms(o),
        ms(median(ours_done)),
        ms(b),
        o.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "Infra re-activate current bundle (nothing to do): median {} over 5",
        ms(median(noop))
    );
}
