//! Helpers of the tests that run the loader against a swarm of namespaced engines
//! (`nodes`): the tiny appliance as a global service on a host-mode port, `--engine`
//! arguments, what a bundle's `bundle.json` lists, and where a service's tasks run.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::nodes::Node;
use super::{build_def, run_ok, tiny_appliance_on};

/// `(reference, image ID)` of each image in a bundle's `bundle.json`.
pub fn bundle_images(bundle: &Path) -> Vec<(String, String)> {
    let out = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(bundle)
            .arg("bundle.json"),
    );
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                format!(
                    "{}:{}",
                    i["repository"].as_str().unwrap(),
                    i["tag"].as_str().unwrap()
                ),
                i["config_digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The tiny appliance as stack `stack` with its service in global mode (a task on every
/// node holding the image), serving `/etc/motd` with busybox httpd on host-mode port
/// `port` of each node. Returns the bundle file.
pub fn build_global_tiny(dir: &Path, stack: &str, port: u16, version: &str, motd: &str) -> PathBuf {
    build_global_tiny_on(dir, stack, port, version, motd, None)
}

/// [`build_global_tiny`] whose service has node role `portal`, the nodes `portal_nodes`
/// (comma-separated host names, addresses or node IDs) when given.
pub fn build_global_tiny_on(
    dir: &Path,
    stack: &str,
    port: u16,
    version: &str,
    motd: &str,
    portal_nodes: Option<&str>,
) -> PathBuf {
    let (roles, role) = match portal_nodes {
        Some(n) => (
            format!("x-reemo-node-roles:\n  portal: \"{n}\"\n"),
            "    x-reemo-role: portal\n",
        ),
        None => (String::new(), ""),
    };
    let yml = format!(
        r#"version: "3.8"
{roles}services:
  app:
{role}    image: ${{image:tiny-image}}
    command: ["httpd", "-f", "-p", "8080", "-h", "/etc"]
    # busybox as PID 1 ignores SIGTERM: do not wait the default 10 s on each update
    stop_grace_period: 1s
    configs:
      - source: app_config
        target: /etc/app.conf
    ports:
      - target: 8080
        published: {port}
        protocol: tcp
        mode: host
    deploy:
      mode: global
configs:
  app_config:
    file: ../configs/app.conf
"#
    );
    let def = tiny_appliance_on(dir, version, motd, stack, Some(&yml));
    build_def(&def, &dir.join("out"))
}

/// `--engine URL` for each node.
pub fn engine_args(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|n| ["--engine".to_string(), n.url()])
        .collect()
}

/// `(node id, observed state)` of the tasks of `service` that Swarm wants running.
pub fn running_tasks(manager: &Node, service: &str) -> Vec<(String, String)> {
    let ids = manager.docker_ok(&[
        "service",
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        service,
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return vec![];
    }
    let mut args = vec!["inspect", "--format", "{{.NodeID}} {{.Status.State}}"];
    args.extend(&ids);
    manager
        .docker_ok(&args)
        .lines()
        .filter_map(|l| {
            let (n, s) = l.split_once(' ')?;
            Some((n.to_string(), s.to_string()))
        })
        .collect()
}

/// Three managers (or more) made with the loader alone, as on air-gapped hosts: `swarm
/// init` on `nodes[0]` (data path port 4790), `swarm join-token --out` into `token`, then
/// `swarm join --token-file` on the others. `state` is the loader's state directory.
pub fn join_managers(state: &Path, nodes: &[&Node], token: &Path) {
    let first = nodes[0];
    run_ok(
        super::loader(state)
            .args(["swarm", "init", "--engine", &first.url()])
            .args(["--advertise-addr", &first.ip, "--data-path-port", "4790"]),
    );
    run_ok(
        super::loader(state)
            .args(["swarm", "join-token", "--engine", &first.url(), "--out"])
            .arg(token),
    );
    for n in &nodes[1..] {
        run_ok(
            super::loader(state)
                .args(["swarm", "join", "--engine", &n.url()])
                .arg("--token-file")
                .arg(token)
                .args(["--remote", &format!("{}:2377", first.ip)])
                .args(["--advertise-addr", &n.ip]),
        );
    }
}

/// An `activate` run with `--json` whose `victim` engine is SIGKILLed as soon as the
/// first Swarm step starts (its event on stderr).
pub struct KilledActivation {
    child: std::process::Child,
    reader: std::thread::JoinHandle<()>,
    rx: std::sync::mpsc::Receiver<String>,
    events: Vec<String>,
}

impl KilledActivation {
    /// Start `cmd` (an `activate … --json`) and kill `victim`'s engine at its first Swarm
    /// step; panics when no step starts within two minutes.
    pub fn start(cmd: &mut Command, victim: &Node) -> KilledActivation {
        use std::io::{BufRead, BufReader};
        use std::sync::mpsc::RecvTimeoutError;
        use std::time::{Duration, Instant};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut killed = false;
        while !killed && Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => {
                    killed = line.contains(r#""event":"step""#);
                    events.push(line);
                    if killed {
                        victim.kill_engine();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if !killed {
            let _ = child.kill();
            panic!(
                "the activation never reached a Swarm step:\n{}",
                events.join("\n")
            );
        }
        KilledActivation {
            child,
            reader,
            rx,
            events,
        }
    }

    /// Its exit status once it has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Wait (bounded by `limit`) for the end: (exit status, stderr events, stdout); kills
    /// it and panics when it does not end in time.
    pub fn finish(
        mut self,
        limit: std::time::Duration,
    ) -> (std::process::ExitStatus, String, String) {
        let Some(exit) = super::nodes::poll(limit, || self.try_wait()) else {
            let _ = self.child.kill();
            panic!("the activation did not end within its timeout");
        };
        self.reader.join().unwrap();
        self.events.extend(self.rx.try_iter());
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().unwrap(), &mut stdout).unwrap();
        (exit, self.events.join("\n"), stdout)
    }
}
