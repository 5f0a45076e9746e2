//! The Reemo Infra appliance (`bundles/infra.toml`, issue 13) on the real engine and swarm,
//! on one node: seed 001's services with their replica counts and per-node limits, phase by
//! phase (mysql as MariaDB from Debian with its data in a host folder the loader creates,
//! the db migration job, the api, the crons, the provisioning APIs, the signals, the
//! portal) behind the entry proxy (haproxy from Debian): the portal on HTTPS with the
//! site's certificate verified against the site CA, 80 redirected, the signals on the
//! agents' port, mutual TLS inside. Then what an operator does with it:
//! - site values that are wrong or missing are refused before anything changes;
//! - a vendor image (a recipe of the service's name in the definition's vendor folder)
//!   updates the api only: the other services keep their tasks, the db job does not run
//!   again;
//! - `--only portal` is refused while the api changes too (the seed's order); a failing
//!   portal update rolls the whole stack back (the api too), and the rows written to the
//!   database before it are still there;
//! - a new db image runs the migration job again;
//! - `PORTAL_URL_RESTRICT_IP` is enforced for clients in network namespaces (403 outside
//!   the list, the signals' port untouched); `--dry-run` warns when mysql would restart.
//!
//! Needs Docker, a swarm manager, curl, iproute2 and the Debian archive (MariaDB, haproxy).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::infra::vendor_image;
use common::{
    docker, free_ports, loader, repo_root, require_swarm_manager, run_ok, try_remove_stack,
};

const STACK: &str = "infra-e2e";

/// The stack, its ports and folders; removes the stack and the client namespaces on drop.
struct Infra {
    tmp: tempfile::TempDir,
    state: PathBuf,
    https: u16,
    http: u16,
    signal: u16,
    namespaces: Vec<String>,
}

impl Drop for Infra {
    fn drop(&mut self) {
        if !try_remove_stack(STACK) {
            eprintln!("stack {STACK} is still there after 60 s");
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Infra {
    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("opt-reemo")
    }

    fn ca(&self) -> PathBuf {
        self.state.join("pki/ca.pem")
    }

    /// The loader's `activate BUNDLE` with this stack's ports and folder and `args`.
    fn activate(&self, bundle: &Path, args: &[&str]) -> std::process::Output {
        loader(&self.state)
            .arg("activate")
            .arg(bundle)
            .args(["--timeout", "300s"])
            .arg("--set")
            .arg(format!("HTTPS_PORT={}", self.https))
            .arg("--set")
            .arg(format!("HTTP_PORT={}", self.http))
            .arg("--set")
            .arg(format!("SIGNAL_PORT={}", self.signal))
            .arg("--set")
            .arg(format!("DB_DATA_DIR={}", self.data_dir().display()))
            .args(args)
            .output()
            .unwrap()
    }

    fn activate_ok(&self, bundle: &Path, args: &[&str]) -> String {
        let o = self.activate(bundle, args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "activate {args:?} failed:\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }

    fn activate_fails(&self, bundle: &Path, args: &[&str]) -> String {
        let o = self.activate(bundle, args);
        assert_eq!(o.status.code(), Some(1), "{args:?} should fail: {o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// `GET /api/healthcheck` through the entry on `port` (as `localhost`, verified with
    /// the site CA), from the host or from network namespace `ns` (to `via`).
    fn get(&self, port: u16, ns: Option<(&str, &str)>) -> (u16, String) {
        let mut c = match ns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => Command::new("curl"),
        };
        c.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.ca());
        if let Some((_, via)) = ns {
            c.arg("--resolve").arg(format!("localhost:{port}:{via}"));
        }
        let o = c
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://localhost:{port}/api/healthcheck"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "curl through the entry on {port}: {}{out}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    }

    /// The portal's health through the entry, retried until it is OK (the entry marks a
    /// server up after its first good check).
    fn portal_health(&self) -> serde_json::Value {
        let mut last = String::new();
        for _ in 0..120 {
            let (code, body) = self.get(self.https, None);
            if code == 200 {
                return serde_json::from_str(&body).unwrap();
            }
            last = format!("{code} {body}");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!("the portal never answered OK through the entry: {last}");
    }

    /// A client host: network namespace `rb-infra-N` joined to this host by a veth pair,
    /// 10.231.N.2 inside, 10.231.N.1 on the host side. Returns (namespace, host address).
    fn client(&mut self, n: u8) -> (String, String) {
        let ns = format!("rb-infra-{n}");
        let (host_if, ns_if) = (format!("rbih{n}"), format!("rbin{n}"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let host_ip = format!("10.231.{n}.1");
        let ns_ip = format!("10.231.{n}.2");
        let ip = |args: &[&str]| {
            run_ok(Command::new("ip").args(args));
        };
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &host_ip]);
        (ns, host_ip)
    }
}

/// `docker service ls` of the stack: name → "running/desired (max N per node)".
fn service_table() -> Vec<(String, String)> {
    let out = run_ok(docker().args([
        "service",
        "ls",
        "--filter",
        &format!("label=com.docker.stack.namespace={STACK}"),
        "--format",
        "{{.Name}}\t{{.Replicas}}",
    ]));
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, r)| {
            (
                n.trim_start_matches(&format!("{STACK}_")).to_string(),
                r.to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The IDs of a service's tasks that are meant to run (or, for a job, every task).
fn tasks(service: &str, all: bool) -> Vec<String> {
    let mut c = docker();
    c.args(["service", "ps", "-q", "--no-trunc"]);
    if !all {
        c.args(["--filter", "desired-state=running"]);
    }
    let out = run_ok(c.arg(format!("{STACK}_{service}")));
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Run SQL in the MariaDB task.
fn sql(query: &str) -> String {
    common::infra::sql(&docker, STACK, query)
}

/// A variant of the shipped definition as this test's stack.
fn build_variant(dir: &Path, version: &str, vendor: &[(&str, String)]) -> PathBuf {
    common::infra::build_variant(dir, STACK, version, vendor)
}

fn assert_nothing_deployed(why: &str) {
    assert!(
        service_table().is_empty(),
        "{why}: services were created: {:?}",
        service_table()
    );
}

#[test]
fn the_infra_appliance_on_one_node() {
    require_swarm_manager();
    assert!(try_remove_stack(STACK), "leftover stack {STACK}");
    let [https, http, signal] = free_ports::<3>();
    let tmp = tempfile::tempdir().unwrap();
    let mut infra = Infra {
        state: tmp.path().join("state"),
        tmp,
        https,
        http,
        signal,
        namespaces: vec![],
    };
    // the Debian packages of MariaDB and haproxy, in the shared store
    common::fetch_debian(&repo_root().join("bundles/infra.toml"));
    let v1 = build_variant(&infra.tmp.path().join("v1"), "1.0.0", &[]);
    let license = "--set=API_LICENSE=license-of-the-site";

    // --- site values refused before anything changes
    let e = infra.activate_fails(&v1, &[]);
    assert!(
        e.contains("API_LICENSE") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_nothing_deployed("no licence");
    for (bad, named) in [
        ("--set=SIGNALS=two", "SIGNALS"),
        (
            "--set=PORTAL_URL_RESTRICT_IP=10.1.1.1,10.2.2.300/24",
            "PORTAL_URL_RESTRICT_IP",
        ),
        ("--set=HTTPS_PORT=70000", "HTTPS_PORT"),
        ("--set=NO_SUCH_VALUE=1", "NO_SUCH_VALUE"),
    ] {
        let e = infra.activate_fails(&v1, &[license, bad]);
        assert!(
            e.contains(named) && e.contains("nothing was changed"),
            "{bad}: {e}"
        );
    }
    assert_nothing_deployed("bad values");
    assert!(
        !infra.data_dir().exists(),
        "a refused activation created the data folder"
    );

    // --- the plan of a first install: the data folder, then the seed's order
    let plan = infra.activate_ok(&v1, &[license, "--dry-run"]);
    let mysql_dir = infra.data_dir().join("mysql");
    assert!(
        plan.contains(&format!(
            "create host folder {} (owner 999:999, mode 0750) for service mysql",
            mysql_dir.display()
        )),
        "{plan}"
    );
    let pos = |what: &str| {
        plan.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in the plan:\n{plan}"))
    };
    assert!(
        pos("phase 0: create service infra-e2e_mysql")
            < pos("phase 1: create service infra-e2e_db")
            && pos("phase 1: create service infra-e2e_db")
                < pos("phase 2: create service infra-e2e_api")
            && pos("phase 2: create service infra-e2e_api")
                < pos("phase 3: create service infra-e2e_signal2")
            && pos("phase 3: create service infra-e2e_signal2")
                < pos("phase 4: create service infra-e2e_portal"),
        "{plan}"
    );
    assert!(!mysql_dir.exists(), "a dry run created the data folder");
    assert_nothing_deployed("dry run");

    // --- first install: every service healthy, as seed 001's `docker service ls`
    infra.activate_ok(&v1, &[license]);
    let want: Vec<(String, String)> = [
        ("api", "4/4 (max 4 per node)"),
        ("apicron", "1/1 (max 1 per node)"),
        ("apicronldap", "1/1 (max 1 per node)"),
        ("apicronlog", "1/1 (max 1 per node)"),
        ("db", "0/1 (1/1 completed)"),
        ("entry", "1/1 (max 1 per node)"),
        ("mysql", "1/1 (max 1 per node)"),
        ("portal", "2/2 (max 2 per node)"),
        ("proapi", "2/2 (max 2 per node)"),
        ("prorelayapi", "2/2 (max 2 per node)"),
        ("signal1", "1/1 (max 1 per node)"),
        ("signal2", "1/1 (max 1 per node)"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(service_table(), want);
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&mysql_dir).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (999, 999, 0o750));
        assert!(
            mysql_dir.join("mysql").is_dir(),
            "MariaDB initialised its data in the host folder"
        );
    }
    // the portal through the entry (its certificate verified against the site CA), with the
    // api and the database behind it over mutual TLS
    let h = infra.portal_health();
    assert_eq!(h["status"], "OK", "{h}");
    assert_eq!(h["version"], "2.14.4-standin", "{h}");
    assert_eq!(h["services"]["api"]["version"], "2.15.2-standin", "{h}");
    assert_eq!(
        h["services"]["api"]["services"]["db"]["status"], "OK",
        "{h}"
    );
    let (code, body) = infra.get(infra.signal, None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("2.6.0-standin"), "{body}");
    // 80 redirects to the portal's port, path and query kept
    let redirect = run_ok(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://localhost:{http}/login?next=/home"),
    ]));
    assert_eq!(
        redirect,
        format!("301 https://localhost:{https}/login?next=/home")
    );
    // without the site CA the entry's certificate is not trusted
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("https://localhost:{https}/api/healthcheck"))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "curl trusted the entry without the site CA"
    );

    // rows written before the updates
    sql("CREATE DATABASE IF NOT EXISTS reemo; CREATE TABLE IF NOT EXISTS reemo.t (v VARCHAR(64)); INSERT INTO reemo.t VALUES ('written-before-the-updates')");
    let rows = || sql("SELECT v FROM reemo.t ORDER BY v");
    assert_eq!(rows().trim(), "written-before-the-updates");

    // a no-op re-activation changes nothing
    let out = infra.activate_ok(&v1, &[]);
    assert!(out.contains("nothing to do"), "{out}");

    // --- the vendor's new api image: only the api restarts; the db job does not run again
    let db_tasks = tasks("db", true);
    let keep = ["portal", "mysql", "signal1", "apicron", "entry"];
    let before: Vec<Vec<String>> = keep.iter().map(|s| tasks(s, false)).collect();
    let v2 = build_variant(
        &infra.tmp.path().join("v2"),
        "1.0.1",
        &[vendor_image("api", "2.15.3-standin", "")],
    );
    let plan = infra.activate_ok(&v2, &["--dry-run"]);
    assert!(plan.contains("restarts: api\n"), "{plan}");
    assert!(!plan.contains("mysql restarts"), "{plan}");
    infra.activate_ok(&v2, &[]);
    let h = infra.portal_health();
    assert_eq!(h["services"]["api"]["version"], "2.15.3-standin", "{h}");
    let after: Vec<Vec<String>> = keep.iter().map(|s| tasks(s, false)).collect();
    assert_eq!(before, after, "services other than the api were restarted");
    assert_eq!(tasks("db", true), db_tasks, "the db job ran again");

    // --- a failing portal update (with a newer api) rolls the whole stack back; the rows
    // stay
    let v3 = build_variant(
        &infra.tmp.path().join("v3"),
        "1.0.2",
        &[
            vendor_image("api", "2.15.4-standin", ""),
            // a portal that exits at once: its role is misspelt in its image
            (
                "infra-portal.toml",
                "kind = \"image\"\nrepository = \"reemo/infra-portal\"\nversion = \"2.15.0-standin\"\nbase = \"standin-image\"\n\n[config]\nenv = { STANDIN_ROLE = \"portall\" }\n".to_string(),
            ),
        ],
    );
    // the seed's order: the portal alone may not go first while the api changes too
    let e = infra.activate_fails(&v3, &["--only", "portal", "--dry-run"]);
    assert!(
        e.contains("api") && e.contains("nothing was changed"),
        "{e}"
    );
    let e = infra.activate_fails(&v3, &[]);
    assert!(e.contains("portal"), "{e}");
    let h = infra.portal_health();
    assert_eq!(h["version"], "2.14.4-standin", "{h}");
    assert_eq!(
        h["services"]["api"]["version"], "2.15.3-standin",
        "the api was not rolled back: {h}"
    );
    assert_eq!(rows().trim(), "written-before-the-updates");

    // --- a new db image: the migration job runs again
    let v4 = build_variant(
        &infra.tmp.path().join("v4"),
        "1.0.3",
        &[
            vendor_image("api", "2.15.3-standin", ""),
            vendor_image("db", "2.15.3-standin", ""),
        ],
    );
    let out = infra.activate_ok(&v4, &[]);
    assert!(out.contains("restarts: db\n"), "{out}");
    assert!(
        tasks("db", true).len() > db_tasks.len(),
        "the db job did not run"
    );
    assert_eq!(rows().trim(), "written-before-the-updates");

    // --- PORTAL_URL_RESTRICT_IP, from two client hosts
    let (ns_a, via_a) = infra.client(61);
    let (ns_b, via_b) = infra.client(62);
    let (code, _) = infra.get(https, Some((&ns_b, &via_b)));
    assert_eq!(code, 200, "every address may reach the portal by default");
    let out = infra.activate_ok(
        &v4,
        &["--set", "PORTAL_URL_RESTRICT_IP=10.231.61.0/24,10.9.9.9"],
    );
    assert!(out.contains("restarts: entry\n"), "{out}");
    let mut allowed = (0, String::new());
    for _ in 0..40 {
        allowed = infra.get(https, Some((&ns_a, &via_a)));
        if allowed.0 == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(allowed.0, 200, "{allowed:?}");
    let (code, body) = infra.get(https, Some((&ns_b, &via_b)));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("PORTAL_URL_RESTRICT_IP"), "{body}");
    let (code, _) = infra.get(signal, Some((&ns_b, &via_b)));
    assert_eq!(code, 200, "the signals' port is not restricted");

    // --- the one update that interrupts service is announced
    let other_dir = infra.tmp.path().join("opt-elsewhere");
    let plan = infra.activate_ok(
        &v4,
        &[
            "--dry-run",
            "--set",
            &format!("DB_DATA_DIR={}", other_dir.display()),
        ],
    );
    assert!(
        plan.contains("warning: mysql restarts with an interruption"),
        "{plan}"
    );
}
