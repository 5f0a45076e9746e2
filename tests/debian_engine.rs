//! The shipped Debian images under the real engine: one bundle with haproxy and mariadb
//! (their base layer is one shared blob), loaded into Docker; haproxy validates a config
//! (`haproxy -c`) and proxies a TLS WebSocket (terminated by haproxy, certificate made by
//! openssl) to an echo backend; mariadb initialises its data folder on a named volume and
//! answers `SELECT 1` once healthy, under `docker run` and as a swarm service (full image
//! ID, volume mount). Needs Docker, a swarm manager and the archive (to fetch what the
//! committed locks name into the shared test store).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin_cmd, docker, repo_root, run_ok};

/// Removes containers and a volume when dropped, so a failing assertion leaves nothing.
struct Cleanup(Vec<String>, Option<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = docker().args(["rm", "-f", c]).output();
        }
        if let Some(v) = &self.1 {
            let _ = docker().args(["volume", "rm", "-f", v]).output();
        }
    }
}

/// Build a bundle with both images from the repo's recipes; returns (bundle, manifest).
fn build_both(dir: &Path) -> (PathBuf, serde_json::Value) {
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    std::fs::write(
        recipes.join("d-stack.toml"),
        "kind = \"stack\"\ntemplate = \"d-stack.yml\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("d-stack.yml"),
        "version: \"3.8\"\nservices:\n  proxy:\n    image: ${image:haproxy}\n  db:\n    image: ${image:mariadb}\n",
    )
    .unwrap();
    let def = dir.join("bundles/d.toml");
    std::fs::write(
        &def,
        format!(
            "name = \"d\"\nversion = \"1.0.0\"\nstack_name = \"debimages\"\nstack = \"d-stack\"\nrecipes = [\"../recipes\", \"{}\"]\n",
            repo_root().join("recipes").display()
        ),
    )
    .unwrap();
    let store = common::shared_store();
    for r in ["haproxy", "mariadb"] {
        run_ok(
            bin_cmd(&["fetch"])
                .arg(repo_root().join(format!("recipes/{r}.toml")))
                .arg("--store")
                .arg(&store),
        );
    }
    let out = run_ok(
        bin_cmd(&["build"])
            .arg(&def)
            .arg("--store")
            .arg(&store)
            .arg("--out")
            .arg(dir.join("out")),
    );
    let bundle = PathBuf::from(out.lines().next().unwrap().trim());
    let x = dir.join("x");
    std::fs::create_dir_all(&x).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&bundle)
            .arg("-C")
            .arg(&x),
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("bundle.json")).unwrap()).unwrap();
    let archive = dir.join("images.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(x.join("oci"))
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    );
    run_ok(docker().arg("load").arg("-i").arg(&archive));
    (bundle, m)
}

fn image_id(m: &serde_json::Value, name: &str) -> String {
    m["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()["config_digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A WebSocket echo server on 127.0.0.1; returns its port.
fn echo_backend() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            use futures_util::{SinkExt, StreamExt};
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                        while let Some(Ok(m)) = ws.next().await {
                            if m.is_text() || m.is_binary() {
                                let _ = ws.send(m).await;
                            }
                        }
                    }
                });
            }
        });
    });
    port
}

#[test]
fn haproxy_and_mariadb_run_from_their_debian_images() {
    common::require_docker();
    let d = tempfile::tempdir().unwrap();
    let (_, m) = build_both(d.path());
    let mut cleanup = Cleanup(vec![], None);

    // The base packages are one layer blob shared by both images.
    let first = |n: &str| {
        m["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n)
            .unwrap()["layers"][0]["digest"]
            .clone()
    };
    assert_eq!(first("haproxy"), first("mariadb"), "shared base layer");

    // haproxy: the shipped config validates; then TLS WebSocket through it.
    let hid = image_id(&m, "haproxy");
    let o = run_ok(docker().args([
        "run",
        "--rm",
        "--entrypoint",
        "/usr/sbin/haproxy",
        &hid,
        "-c",
        "-f",
        "/etc/haproxy/haproxy.cfg",
    ]));
    assert!(o.contains("Configuration file is valid"), "{o}");
    let certs = d.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
            ])
            .arg(certs.join("k.pem"))
            .arg("-out")
            .arg(certs.join("c.pem")),
    );
    let pem = [
        std::fs::read(certs.join("c.pem")).unwrap(),
        std::fs::read(certs.join("k.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(certs.join("site.pem"), pem).unwrap();
    let backend = echo_backend();
    let front = common::free_port();
    std::fs::write(
        certs.join("haproxy.cfg"),
        format!(
            "global\n    log stdout format raw local0\ndefaults\n    log global\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    timeout tunnel 60s\nfrontend fe\n    bind 127.0.0.1:{front} ssl crt /certs/site.pem\n    default_backend be\nbackend be\n    server s1 127.0.0.1:{backend}\n"
        ),
    )
    .unwrap();
    let name = format!("reemo-debtest-haproxy-{}", std::process::id());
    cleanup.0.push(name.clone());
    run_ok(
        docker()
            .args(["run", "-d", "--name", &name, "--network", "host", "-v"])
            .arg(format!("{}:/certs:ro", certs.display()))
            .args([&hid, "-f", "/certs/haproxy.cfg"]),
    );
    let reply = tls_websocket_echo(front, b"hello through haproxy");
    assert!(
        reply.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let frame_at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &reply[frame_at..frame_at + 2],
        &[0x81, 21],
        "one unmasked text frame"
    );
    assert_eq!(
        &reply[frame_at + 2..frame_at + 23],
        b"hello through haproxy"
    );

    // mariadb: initialises its data folder on a volume, becomes healthy, answers SELECT 1.
    let mid = image_id(&m, "mariadb");
    let db = format!("reemo-debtest-mariadb-{}", std::process::id());
    let vol = format!("{db}-data");
    cleanup.0.push(db.clone());
    cleanup.1 = Some(vol.clone());
    run_ok(docker().args([
        "run",
        "-d",
        "--name",
        &db,
        "-v",
        &format!("{vol}:/var/lib/mysql"),
        &mid,
    ]));
    let started = Instant::now();
    loop {
        let s = run_ok(docker().args(["inspect", "--format", "{{.State.Health.Status}}", &db]));
        if s.trim() == "healthy" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "mariadb not healthy: {s}\n{}",
            run_ok(docker().args(["logs", &db]))
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let one = run_ok(docker().args([
        "exec",
        &db,
        "mariadb",
        "--protocol=socket",
        "--socket=/run/mysqld/mysqld.sock",
        "-umysql",
        "-N",
        "-e",
        "SELECT 1",
    ]));
    assert_eq!(one.trim(), "1");
}

/// Through `openssl s_client`: a WebSocket upgrade and one masked text frame; returns what
/// came back (the 101 response and the echoed frame) within 20 s.
fn tls_websocket_echo(port: u16, payload: &[u8]) -> Vec<u8> {
    let ready = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "haproxy does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut c = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-ign_eof",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let mut stdout = c.stdout.take().unwrap();
    let mut req = "GET /v1/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    .as_bytes()
    .to_vec();
    let mask = [1u8, 2, 3, 4];
    req.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    req.extend_from_slice(&mask);
    req.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let _ = tx.send(got.clone());
        }
    });
    stdin.write_all(&req).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Ok(g) = rx.recv_timeout(Duration::from_millis(200)) {
            last = g;
            if let Some(p) = last.windows(4).position(|w| w == b"\r\n\r\n") {
                if last.len() >= p + 4 + 2 + payload.len() {
                    break;
                }
            }
        }
    }
    let _ = c.kill();
    let _ = c.wait();
    last
}

/// Removes a swarm service, then its volume (once the task's container is gone), on drop.
struct ServiceCleanup(String, String);

impl Drop for ServiceCleanup {
    fn drop(&mut self) {
        let _ = docker().args(["service", "rm", &self.0]).output();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let o = docker().args(["volume", "rm", "-f", &self.1]).output();
            if o.is_ok_and(|o| o.status.success()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn mariadb_answers_as_a_swarm_service_with_a_volume() {
    common::require_docker();
    common::require_swarm_manager();
    let d = tempfile::tempdir().unwrap();
    let (_, m) = build_both(d.path());
    let mid = image_id(&m, "mariadb");
    let name = format!("reemo-debtest-db-{}", std::process::id());
    let vol = format!("{name}-data");
    let _cleanup = ServiceCleanup(name.clone(), vol.clone());
    // The full image ID: no registry lookup, exact content.
    run_ok(docker().args([
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--mount",
        &format!("type=volume,source={vol},target=/var/lib/mysql"),
        &mid,
    ]));
    let started = Instant::now();
    let container = loop {
        let ids = run_ok(docker().args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={name}"),
        ]));
        if let Some(id) = ids.lines().next() {
            let s = run_ok(docker().args(["inspect", "--format", "{{.State.Health.Status}}", id]));
            if s.trim() == "healthy" {
                break id.to_string();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "service {name} not healthy: {}",
            run_ok(docker().args(["service", "ps", "--no-trunc", &name]))
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let one = run_ok(docker().args([
        "exec",
        &container,
        "mariadb",
        "--protocol=socket",
        "--socket=/run/mysqld/mysqld.sock",
        "-umysql",
        "-N",
        "-e",
        "SELECT 1",
    ]));
    assert_eq!(one.trim(), "1");
}
