//! The shipped RELAYWS appliance end to end on the real engine and swarm: haproxy (the
//! Debian-package image) in front of two relay replicas. Every client verifies the entry
//! certificate against the site CA exported by `pki ca-cert`; the control API is reached
//! through the proxy's mutual-TLS listener with a client certificate from `pki issue-client`.
//!
//! Checked: 50 sessions created through the control listener, both sides connected through
//! the TLS listener (agent token in the query, user token as a subprotocol, as the web client
//! does), text and binary both ways, a 1 MiB message, the control API seeing each session
//! paired (its GET lands on the replica holding it), close propagation; each session paired
//! on exactly one replica and both replicas used (from the replicas' logs); no client
//! certificate, or one of another CA, refused on the control port; other paths answered 404;
//! HTTP redirected to HTTPS; the proxy's access log carries neither tokens nor query strings.
//! Needs Docker, a swarm manager and the Debian archive (the haproxy .debs its lock names).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::appliance;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use ws_relay_server::client::{http_request, BaseUrl};

const STACK: &str = "lappliance";
const SESSIONS: usize = 50;

#[derive(Clone, Copy)]
struct Ports {
    https: u16,
    http: u16,
    control: u16,
}

/// The TLS client config trusting the site CA, with an optional client certificate.
fn tls(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    ws_relay_server::tls::verifying_client_with(Some(ca), client).expect("tls client config")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next message of `ws`, within 20 s.
async fn next(ws: &mut Ws) -> Result<Message, String> {
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        Ok(Some(Ok(m))) => Ok(m),
        other => Err(format!("{other:?}")),
    }
}

/// The clients' side of the appliance: TLS configs, ports, control secret.
#[derive(Clone)]
struct Client {
    ports: Ports,
    entry: Arc<rustls::ClientConfig>,
    control: Arc<rustls::ClientConfig>,
    secret: String,
}

/// A session made through the control API: its id and the two sides' tokens.
#[derive(Clone)]
struct Made {
    id: String,
    agent: String,
    user: String,
}

impl Client {
    /// A control call through the mutual-TLS listener.
    async fn call(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        let base = BaseUrl::parse(&format!("https://localhost:{}", self.ports.control)).unwrap();
        http_request(
            &base,
            Some(&self.control),
            method,
            path,
            Some(&self.secret),
            "{}",
        )
        .await
        .map_err(|e| format!("{method} {path}: {e:#}"))
    }

    async fn create(&self) -> Result<Made, String> {
        let (status, body) = self.call("POST", "/v1/sessions").await?;
        if status != 201 {
            return Err(format!("POST: {status} {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap().to_string();
        Ok(Made {
            id: s("/id"),
            agent: s("/agent/token"),
            user: s("/user/token"),
        })
    }

    /// The state the control API reports for `id` (from the replica the id routes to).
    async fn state(&self, id: &str) -> Result<String, String> {
        let (status, body) = self.call("GET", &format!("/v1/sessions/{id}")).await?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        match (status, v["state"].as_str()) {
            (200, Some(s)) => Ok(s.to_string()),
            _ => Err(format!("GET {id}: {status} {body}")),
        }
    }

    /// Connect both sides through the TLS listener: the agent with its token in the query,
    /// the user with it as a subprotocol, as the web client does.
    async fn connect(&self, m: &Made) -> Result<(Ws, Ws), String> {
        let url = format!("wss://localhost:{}/v1/relay/{}", self.ports.https, m.id);
        let connector = || Some(tokio_tungstenite::Connector::Rustls(self.entry.clone()));
        let (agent, _) = tokio_tungstenite::connect_async_tls_with_config(
            format!("{url}?role=agent&token={}", m.agent),
            None,
            true,
            connector(),
        )
        .await
        .map_err(|e| format!("{}: agent: {e}", m.id))?;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("reemo-relay.v1, token.{}", m.user).parse().unwrap(),
        );
        let (user, _) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector())
                .await
                .map_err(|e| format!("{}: user: {e}", m.id))?;
        Ok((agent, user))
    }
}

/// `m` sent by `from` arrives unchanged at `to`.
async fn relay_one(from: &mut Ws, to: &mut Ws, m: Message) -> Result<(), String> {
    from.send(m.clone())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let got = next(to).await.map_err(|e| format!("receive: {e}"))?;
    if got != m {
        return Err("a message arrived changed".into());
    }
    Ok(())
}

/// One session: created through the control listener, both sides through the TLS
/// listener; returns its id once everything checked out.
async fn session(i: usize, c: Client) -> Result<String, String> {
    let made = c.create().await.map_err(|e| format!("session {i}: {e}"))?;
    let id = made.id.clone();
    let (mut agent, mut user) = c.connect(&made).await?;
    let big = i.is_multiple_of(5).then(|| vec![(i % 251) as u8; 1 << 20]);
    let msgs = [
        Message::text(format!("hello {i} from the agent")),
        Message::binary(vec![i as u8, 0, 255, 7]),
    ];
    for m in msgs.iter().cloned().chain(big.map(Message::binary)) {
        relay_one(&mut agent, &mut user, m.clone())
            .await
            .map_err(|e| format!("session {i}: agent→user: {e}"))?;
        relay_one(&mut user, &mut agent, m)
            .await
            .map_err(|e| format!("session {i}: user→agent: {e}"))?;
    }
    // the control API sees it paired: the GET reached the replica holding it
    let st = c
        .state(&id)
        .await
        .map_err(|e| format!("session {i}: {e}"))?;
    if st != "paired" {
        return Err(format!("session {i}: {id} is {st}"));
    }
    // close propagation
    agent
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 4000u16.into(),
                reason: "done".into(),
            },
        )))
        .await
        .map_err(|e| format!("session {i}: close: {e}"))?;
    loop {
        match next(&mut user).await {
            Ok(Message::Close(Some(f))) if u16::from(f.code) == 4000 => break,
            Ok(Message::Close(f)) => return Err(format!("session {i}: close became {f:?}")),
            Ok(_) => continue,
            Err(e) => return Err(format!("session {i}: no close: {e}")),
        }
    }
    Ok(id)
}

/// The logs of every task container of a service (running or exited), each line as
/// `<timestamp> <task name> | <line>`. (`docker service logs` sometimes never ends on this
/// engine; the containers' own logs do.)
fn service_logs(service: &str) -> String {
    let ids = run_ok(docker().args([
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ]));
    let mut out = String::new();
    for id in ids.split_whitespace() {
        let name = run_ok(docker().args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"com.docker.swarm.task.name\"}}",
            id,
        ]));
        // the task name without its id: <service>.<slot>
        let name = name
            .trim()
            .rsplit_once('.')
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        let o = docker()
            .args(["logs", "--timestamps", id])
            .output()
            .expect("docker logs");
        for l in String::from_utf8_lossy(&o.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&o.stderr).lines())
        {
            if let Some((ts, rest)) = l.split_once(' ') {
                out.push_str(&format!("{ts} {name} | {rest}\n"));
            }
        }
    }
    out
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("running curl")
}

#[test]
fn sessions_through_the_entry_proxy_with_verified_tls_and_mtls_control() {
    let fx = StackFixture::new(STACK);
    let ports = Ports {
        https: fx.port,
        http: free_port(),
        control: free_port(),
    };
    let bundle = appliance::build(&fx.path("b"), STACK);
    let o = loader_json(
        fx.loader()
            .arg("activate")
            .arg(&bundle)
            .args(["--timeout", "180s"])
            .arg(format!("--set=HTTPS_PORT={}", ports.https))
            .arg(format!("--set=HTTP_PORT={}", ports.http))
            .arg(format!("--set=CONTROL_PORT={}", ports.control)),
    );
    assert_eq!(o["result"], "activated", "{o}");
    let ca = fx.path("site-ca.pem");
    std::fs::write(&ca, run_ok(fx.loader().args(["pki", "ca-cert"]))).unwrap();
    let clients = fx.path("clients");
    run_ok(
        fx.loader()
            .args(["pki", "issue-client", "prorelayapi", "--out"])
            .arg(&clients),
    );
    let (cc, ck) = (
        clients.join("prorelayapi.crt"),
        clients.join("prorelayapi.key"),
    );
    let secret = std::fs::read_to_string(fx.state.join("secrets/relay_control_secret"))
        .unwrap()
        .trim()
        .to_string();

    // wait until the proxy answers and sees a healthy replica
    let health = format!("https://localhost:{}/healthz", ports.https);
    let mut up = false;
    for _ in 0..120 {
        let o = curl(&["--cacert", ca.to_str().unwrap(), &health]);
        if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"OK\"") {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(up, "the proxy never answered /healthz with a healthy relay");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Client {
        ports,
        entry: tls(&ca, None),
        control: tls(&ca, Some((&cc, &ck))),
        secret: secret.clone(),
    };
    let results: Vec<Result<String, String>> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..SESSIONS {
            set.spawn(session(i, client.clone()));
        }
        let mut out = Vec::new();
        let all = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
        });
        assert!(all.await.is_ok(), "sessions did not finish within 120 s");
        out
    });
    let ids: Vec<String> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(ids.len(), SESSIONS);

    // each session paired on exactly one replica; both replicas took some
    let logs = service_logs(&format!("{STACK}_relay"));
    let mut per_replica: std::collections::BTreeMap<String, usize> = Default::default();
    for id in &ids {
        let replicas: std::collections::BTreeSet<&str> = logs
            .lines()
            .filter(|l| l.contains("session paired") && l.contains(id.as_str()))
            .map(|l| {
                l.split_once('|')
                    .and_then(|(p, _)| p.split_whitespace().nth(1))
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(
            replicas.len(),
            1,
            "session {id} paired on {replicas:?}; logs:\n{}",
            &logs[..logs.len().min(3000)]
        );
        *per_replica
            .entry(replicas.into_iter().next().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_replica.len(),
        2,
        "both replicas hold sessions: {per_replica:?}"
    );

    // the control port: no client certificate, or one of another CA, refused
    let control_url = format!("https://localhost:{}/v1/sessions", ports.control);
    let o = curl(&["--cacert", ca.to_str().unwrap(), &control_url]);
    assert!(!o.status.success(), "no client certificate was accepted");
    let other = fx.path("other");
    std::fs::create_dir_all(&other).unwrap();
    // another CA and a client of it, made by openssl
    openssl_self_signed(
        &other.join("o.crt"),
        &other.join("o.key"),
        "/CN=intruder",
        1,
        &[],
    );
    let o = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        other.join("o.crt").to_str().unwrap(),
        "--key",
        other.join("o.key").to_str().unwrap(),
        &control_url,
    ]);
    assert!(
        !o.status.success(),
        "a client certificate of another CA was accepted"
    );

    // other paths: 404 from the proxy; HTTP: redirected to HTTPS on the site's port
    let o = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://localhost:{}/v1/sessions", ports.https),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "404",
        "control is not on 443"
    );
    let o = curl(&[
        "-i",
        &format!("http://localhost:{}/v1/relay/x?token=t", ports.http),
    ]);
    let head = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://localhost:{}/v1/relay/x?token=t",
            ports.https
        )),
        "{head}"
    );

    // the proxy's access log: paths, no tokens or query strings
    let plog = service_logs(&format!("{STACK}_proxy"));
    assert!(
        plog.contains("/v1/relay/"),
        "the access log lists relay paths:\n{plog}"
    );
    assert!(
        !plog.contains("token"),
        "a token in the access log:\n{plog}"
    );
    assert!(
        !plog.contains("role=agent"),
        "a query string in the access log"
    );

    // --- control before any connection: created on one replica, answered by the one the
    // id routes to (POSTs go round robin, so some of these cross replicas)
    rt.block_on(async {
        for _ in 0..6 {
            let m = client.create().await.unwrap();
            assert_eq!(client.state(&m.id).await.unwrap(), "waiting", "{}", m.id);
        }
        let m = client.create().await.unwrap();
        let (s, b) = client
            .call("DELETE", &format!("/v1/sessions/{}", m.id))
            .await
            .unwrap();
        assert_eq!(s, 200, "{b}");
        let e = client
            .connect(&m)
            .await
            .err()
            .unwrap_or_else(|| panic!("a deleted session's tokens were accepted"));
        assert!(e.contains("410"), "{e}");
    });

    // --- scaling 2 → 3 with live sessions: they are untouched; reconnecting, each pairs on
    // its old replica or on the new one (consistent hashing moves only the new one's share)
    let live: Vec<(Made, Ws, Ws)> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..30 {
            let m = client.create().await.unwrap();
            let (mut a, mut u) = client.connect(&m).await.unwrap();
            relay_one(&mut a, &mut u, Message::text("before"))
                .await
                .unwrap();
            v.push((m, a, u));
        }
        v
    });
    let relay_service = format!("{STACK}_relay");
    let running_tasks = || {
        run_ok(docker().args([
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            &relay_service,
        ]))
        .split_whitespace()
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<String>>()
    };
    let tasks_before = running_tasks();
    assert_eq!(tasks_before.len(), 2);
    let o = loader_json(fx.loader().args(["configure", "--set", "RELAY_REPLICAS=3"]));
    assert_eq!(o["result"], "activated", "{o}");
    let tasks_after = running_tasks();
    assert_eq!(tasks_after.len(), 3);
    assert!(
        tasks_before.is_subset(&tasks_after),
        "scaling up restarted a replica"
    );
    let mut live = live;
    rt.block_on(async {
        for (m, a, u) in live.iter_mut() {
            relay_one(a, u, Message::text("after scaling"))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", m.id));
            relay_one(u, a, Message::binary(vec![1, 2, 3]))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", m.id));
        }
        for (_, a, u) in live.iter_mut() {
            a.send(Message::Close(None)).await.unwrap();
            while let Ok(m) = next(u).await {
                if m.is_close() {
                    break;
                }
            }
        }
        // both sides connect again: the proxy picks the replica from the session id anew
        for (m, _, _) in live.iter() {
            let (mut a, mut u) = client.connect(m).await.unwrap_or_else(|e| panic!("{e}"));
            relay_one(&mut a, &mut u, Message::text("again"))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", m.id));
        }
    });
    // (ordered by their timestamps)
    let logs = service_logs(&relay_service);
    let paired_on = |id: &str| -> Vec<String> {
        let mut v: Vec<(String, String)> = logs
            .lines()
            .filter(|l| l.contains("session paired") && l.contains(id))
            .filter_map(|l| {
                let (prefix, _) = l.split_once('|')?;
                let mut w = prefix.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, replica)| replica).collect()
    };
    let replicas_before: std::collections::BTreeSet<String> = live
        .iter()
        .map(|(m, _, _)| paired_on(&m.id)[0].clone())
        .collect();
    let mut moved = 0;
    for (m, _, _) in &live {
        let on = paired_on(&m.id);
        assert_eq!(on.len(), 2, "{}: {on:?}", m.id);
        if on[1] != on[0] {
            assert!(
                !replicas_before.contains(&on[1]),
                "{} moved between old replicas: {on:?}",
                m.id
            );
            moved += 1;
        }
    }
    eprintln!(
        "[appliance] scaling 2 → 3: {moved} of {} sessions moved to the new replica",
        live.len()
    );
    assert!(
        moved > 0 && moved < live.len(),
        "{moved} of {} moved",
        live.len()
    );

    // --- a rolling update with live sessions (a new drain timeout: the relay's environment
    // and grace period change): every session keeps every message until its replica's drain
    // deadline; after it, both sides reconnect and pair again
    let ended: Vec<Result<(Made, u64), String>> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let c = client.clone();
            set.spawn(async move {
                let m = c.create().await?;
                let (mut a, mut u) = c.connect(&m).await?;
                let mut k: u64 = 0;
                let start = std::time::Instant::now();
                // a numbered message every 100 ms, until the connection ends (bounded: 120 s)
                while start.elapsed() < Duration::from_secs(120) {
                    if a.send(Message::text(k.to_string())).await.is_err() {
                        break;
                    }
                    match next(&mut u).await {
                        Ok(Message::Text(t)) if t.as_str() == k.to_string() => k += 1,
                        Ok(Message::Text(t)) => {
                            return Err(format!("{}: message {k} arrived as {}", m.id, t.as_str()))
                        }
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok((m, k))
            });
        }
        // the update runs meanwhile, on its own thread
        let state = fx.state.clone();
        let update = tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let o = run_ok(loader(&state).args([
                "configure",
                "--set",
                "DRAIN_TIMEOUT_SECS=6",
                "--timeout",
                "180s",
            ]));
            (o, t.elapsed())
        });
        let mut out = Vec::new();
        let all = tokio::time::timeout(Duration::from_secs(150), async {
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
        });
        assert!(
            all.await.is_ok(),
            "sessions still running 150 s after the update began"
        );
        let (said, took) = update.await.unwrap();
        eprintln!(
            "[appliance] rolling relay update: {:.1} s",
            took.as_secs_f64()
        );
        assert!(said.contains("now runs generation"), "{said}");
        out
    });
    rt.block_on(async {
        for r in ended {
            let (m, k) = r.unwrap_or_else(|e| panic!("{e}"));
            assert!(k > 0, "{}: nothing relayed before the update", m.id);
            let (mut a, mut u) = client
                .connect(&m)
                .await
                .unwrap_or_else(|e| panic!("{}: reconnecting after its replica left: {e}", m.id));
            relay_one(&mut a, &mut u, Message::text("paired again"))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", m.id));
        }
    });

    // --- whole-stack rollback still works (timed)
    let t = std::time::Instant::now();
    let o = loader_json(fx.loader().arg("rollback"));
    assert_eq!(o["result"], "rolled-back", "{o}");
    eprintln!("[appliance] rollback: {:.1} s", t.elapsed().as_secs_f64());
    // the proxy finds the new replicas through DNS within about a second: retried briefly
    rt.block_on(async {
        let mut last = String::new();
        for _ in 0..20 {
            match session(999, client.clone()).await {
                Ok(_) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("no session after the rollback: {last}");
    });
}
