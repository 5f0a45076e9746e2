//! A real browser as the user side of a relay session (issue 12): the shipped RELAYWS
//! appliance is activated on the swarm (stack `lbrowser`): haproxy serves TLS on the entry
//! port with a certificate of the host's site CA (which `pki ca-cert` exports) and routes
//! `/v1/relay/{session}` to the relay replicas; the control API is on its mutual-TLS port.
//!
//! How it works:
//! - The session is created through the control API on the proxy's mutual-TLS port
//!   (`POST /v1/sessions` with the control secret of the state directory, by `curl --cacert`
//!   with a client certificate from `pki issue-client`), which gives both tokens.
//! - The agent side is a Rust client (tokio-tungstenite over rustls trusting only the site CA)
//!   that connects first with its token in the query, and waits.
//! - The user side is Debian's `chromium --headless`, with a temporary `$HOME` whose NSS
//!   database (`.pki/nssdb`, made with `certutil`) trusts the site CA; certificate
//!   verification stays on. It opens a test page served by a loopback HTTP server of the test
//!   (`http://127.0.0.1:…/`; a plain-http page may open `wss://`, mixed content only restricts
//!   secure pages). The page connects to the session URL the control API returned
//!   (`wss://localhost:…/v1/relay/{session}?role=user`) with
//!   `new WebSocket(url, ["reemo-relay.v1", "token." + token])`, as the Reemo web client does,
//!   sends a text and a 70,000-byte binary message, records what arrives and how the socket
//!   closes, then posts that outcome (`POST /result`, JSON) back to the test's server.
//! - The agent checks the browser's two messages byte for byte, answers with a text and a
//!   binary message of its own, and closes with 4000 "agent done"; the test checks that the
//!   browser received both exactly, saw the negotiated subprotocol and the relayed close.
//! - Negative check: the same page and relay with an NSS database that holds another CA, not
//!   the site's: the browser's WebSocket fails (error, close 1006, never opened) and the
//!   control API shows the session still waiting with no user connected; chromium's log names
//!   the cause, `net_error -202` (ERR_CERT_AUTHORITY_INVALID).
//!
//! The agent, connected first, waits up to the relay's pair timeout (30 s) for chromium.
//! Every wait is bounded (the
//! page gives up after 60 s, the test after 120 s per run, at once if chromium exits), and
//! chromium runs in its own process group, killed by PID at the end of each run (also on
//! panic). It runs with `--no-sandbox` because the tests run as root; that is chromium's
//! process sandbox, not certificate checking. Without Docker, a swarm, chromium or certutil
//! the test fails saying what is missing.

mod common;

use base64::Engine as _;
use common::browser::{nss_home, require_browser, Chromium, PageServer};
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const STACK: &str = "lbrowser";

const USER_TEXT: &str = "hello from the browser \u{2713}";
const AGENT_TEXT: &str = "hello from the agent \u{2713} \u{fc}n\u{ef}code";
const BINARY_LEN: usize = 70_000;
const AGENT_CLOSE: (u16, &str) = (4000, "agent done");

/// The browser's binary message (the page computes the same pattern).
fn user_binary() -> Vec<u8> {
    (0..BINARY_LEN).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

/// The agent's binary message.
fn agent_binary() -> Vec<u8> {
    (0..BINARY_LEN)
        .map(|i| ((i * 13 + 5) % 256) as u8)
        .collect()
}

/// The test page: `cfg` (JSON) names the session URL and token and how long to wait.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>relay browser test</title></head>
<body><pre id="out">running</pre>
<script>
const cfg = __CFG__;
const out = { opened: false, protocol: null, error: false, texts: [], binaries: [],
              close: null, timeout: false };
let reported = false;
function report() {
  if (reported) return;
  reported = true;
  const body = JSON.stringify(out);
  document.getElementById("out").textContent = body;
  console.log("relay test outcome " + body.length + " bytes");
  fetch("/result", { method: "POST", body: body }).catch(e => console.log("post failed " + e));
}
function b64(buf) {
  const bytes = new Uint8Array(buf);
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  }
  return btoa(s);
}
setTimeout(() => { out.timeout = true; report(); }, cfg.timeout_ms);
const ws = new WebSocket(cfg.url, ["reemo-relay.v1", "token." + cfg.token]);
ws.binaryType = "arraybuffer";
ws.onopen = () => {
  out.opened = true;
  out.protocol = ws.protocol;
  console.log("relay test: open, protocol " + ws.protocol);
  ws.send(cfg.text);
  const bin = new Uint8Array(cfg.binary_len);
  for (let i = 0; i < bin.length; i++) bin[i] = (i * 7 + 3) % 256;
  ws.send(bin);
};
ws.onmessage = (e) => {
  if (typeof e.data === "string") out.texts.push(e.data);
  else out.binaries.push(b64(e.data));
  console.log("relay test: message " + (out.texts.length + out.binaries.length));
};
ws.onerror = () => { out.error = true; console.log("relay test: websocket error"); };
ws.onclose = (e) => {
  out.close = { code: e.code, reason: e.reason, clean: e.wasClean };
  console.log("relay test: close " + e.code);
  report();
};
</script></body></html>
"#;

/// A rustls client configuration trusting only the certificates of `ca_pem`.
fn trusting(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("reading the site CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("adding the site CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// `curl` against the relay's control API, verified against the site CA.
fn control(fx: &StackFixture, ca: &Path, method: &str, path: &str) -> serde_json::Value {
    let secret = std::fs::read_to_string(fx.state.join("secrets/relay_control_secret"))
        .expect("reading the relay's control secret from the state directory");
    // the secret goes in a header file, not on a command line
    let header = fx.path("control-header");
    std::fs::write(
        &header,
        format!("Authorization: Bearer {}\n", secret.trim()),
    )
    .unwrap();
    let client = fx.path("clients");
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail-with-body", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(client.join("browser-test.crt"))
        .arg("--key")
        .arg(client.join("browser-test.key"))
        .arg("-H")
        .arg(format!("@{}", header.display()))
        .args(["-X", method]);
    if method == "POST" {
        c.args(["--data", "{\"ttl_secs\": 600}"]);
    }
    let out = run_ok(c.arg(format!("https://localhost:{}{path}", control_port(fx))));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{method} {path}: bad JSON ({e}): {out}"))
}

/// The proxy's control port of this test (published next to the entry port).
fn control_port(fx: &StackFixture) -> u16 {
    std::fs::read_to_string(fx.path("control-port"))
        .expect("the control port, written at activation")
        .trim()
        .parse()
        .unwrap()
}

/// A session made by the control API: its id and each side's URL and token.
struct Session {
    id: String,
    agent_url: String,
    user_url: String,
    user_token: String,
    agent_token: String,
}

fn create_session(fx: &StackFixture, ca: &Path) -> Session {
    let v = control(fx, ca, "POST", "/v1/sessions");
    let s = |k: &str, f: &str| {
        v[k][f]
            .as_str()
            .unwrap_or_else(|| panic!("session JSON has no {k}.{f}: {v}"))
            .to_string()
    };
    let id = v["id"].as_str().expect("session id").to_string();
    let session = Session {
        agent_url: s("agent", "url"),
        user_url: s("user", "url"),
        agent_token: s("agent", "token"),
        user_token: s("user", "token"),
        id,
    };
    let base = format!("wss://localhost:{}/v1/relay/{}", fx.port, session.id);
    assert_eq!(session.user_url, format!("{base}?role=user"), "{v}");
    assert_eq!(session.agent_url, format!("{base}?role=agent"), "{v}");
    session
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The agent side connects (token in the query) and waits for its peer.
async fn agent_connect(s: &Session, tls: Arc<rustls::ClientConfig>) -> Ws {
    let url = format!("{}&token={}", s.agent_url, s.agent_token);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        true,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    );
    let (ws, _) = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .expect("the agent did not connect within 20 s")
        .expect("the agent's wss connection, verified against the site CA");
    ws
}

/// The next data or close message within `within` (pings are answered by the library).
async fn next_message(ws: &mut Ws, within: Duration) -> Result<Message, String> {
    let deadline = tokio::time::Instant::now() + within;
    for _ in 0..1000 {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("nothing within {within:?}"))?;
        match m {
            None => return Err("the connection ended".into()),
            Some(Err(e)) => return Err(format!("websocket error: {e}")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Ok(m),
        }
    }
    Err("only control frames".into())
}

/// What the agent received: the browser's messages and the close reply (if any).
#[derive(Debug)]
struct AgentSaw {
    messages: Vec<Message>,
    close_reply: Option<Message>,
}

/// The agent's half of the exchange: two messages from the browser, two answers, a close.
async fn agent_exchange(mut ws: Ws) -> Result<AgentSaw, String> {
    let mut messages = Vec::new();
    // the browser starts meanwhile: its first message may take a while on a busy machine
    for i in 0..2 {
        let m = next_message(&mut ws, Duration::from_secs(100))
            .await
            .map_err(|e| format!("browser message {i}: {e}"))?;
        messages.push(m);
    }
    ws.send(Message::text(AGENT_TEXT))
        .await
        .map_err(|e| format!("sending text: {e}"))?;
    ws.send(Message::binary(agent_binary()))
        .await
        .map_err(|e| format!("sending binary: {e}"))?;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(AGENT_CLOSE.0),
        reason: AGENT_CLOSE.1.into(),
    }))
    .await
    .map_err(|e| format!("sending close: {e}"))?;
    // the browser's answer to the close comes back through the relay
    let close_reply = next_message(&mut ws, Duration::from_secs(20)).await.ok();
    Ok(AgentSaw {
        messages,
        close_reply,
    })
}

/// One browser run on `page` with the NSS database of `home`; returns the page's outcome.
fn browser_run(home: &Path, s: &Session) -> (serde_json::Value, String) {
    let cfg = serde_json::json!({
        "url": s.user_url,
        "token": s.user_token,
        "text": USER_TEXT,
        "binary_len": BINARY_LEN,
        "timeout_ms": 60_000,
    });
    let server = PageServer::start(PAGE.replace("__CFG__", &cfg.to_string()));
    let mut browser = Chromium::start(home, &server.url());
    // one second at a time, to notice a browser that exited without running the page
    let mut result = None;
    for _ in 0..120 {
        result = server.result(Duration::from_secs(1));
        if result.is_some() {
            break;
        }
        if let Some(status) = browser.exited() {
            panic!(
                "chromium exited ({status}) before the page posted its outcome; its log:\n{}",
                browser.log()
            );
        }
    }
    let log = browser.log();
    let left = browser.stop();
    assert!(
        left.is_empty(),
        "chromium processes {left:?} outlived the kill"
    );
    let Some(result) = result else {
        panic!("the page posted no outcome within 120 s; chromium's log:\n{log}")
    };
    let v: serde_json::Value = serde_json::from_str(&result)
        .unwrap_or_else(|e| panic!("the page's outcome is not JSON ({e}): {result}"));
    (v, log)
}

#[test]
fn chromium_is_the_user_side_of_a_relay_session_over_verified_wss() {
    require_browser();
    let fx = StackFixture::new(STACK);
    // the shipped appliance: the entry proxy on this fixture's port
    let bundle = common::appliance::build(&fx.path("b"), STACK);
    let cport = free_port();
    std::fs::write(fx.path("control-port"), cport.to_string()).unwrap();
    let o = loader_json(
        fx.loader()
            .arg("activate")
            .arg(&bundle)
            .args(["--timeout", "180s"])
            .arg(format!("--set=HTTPS_PORT={}", fx.port))
            .arg(format!("--set=HTTP_PORT={}", free_port()))
            .arg(format!("--set=CONTROL_PORT={cport}")),
    );
    assert_eq!(o["result"], "activated", "{o}");
    run_ok(
        fx.loader()
            .args(["pki", "issue-client", "browser-test", "--out"])
            .arg(fx.path("clients")),
    );
    let ca = fx.path("site-ca.pem");
    let pem = run_ok(fx.loader().args(["pki", "ca-cert"]));
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    std::fs::write(&ca, &pem).unwrap();

    // wait for the TLS listener (the task is healthy, the published port may lag a moment)
    let health = format!("https://localhost:{}/healthz", fx.port);
    let mut up = false;
    for _ in 0..80 {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&ca)
            .arg(&health)
            .output()
            .expect("running curl");
        if o.status.success() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        up,
        "the relay never answered {health} verified by the site CA"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tls = trusting(&ca);

    // --- the browser trusts the site CA through its NSS database
    let session = create_session(&fx, &ca);
    let ws = rt.block_on(agent_connect(&session, tls.clone()));
    let agent = rt.spawn(agent_exchange(ws));
    let home = nss_home(&fx.path("home-trusting"), Some(&ca));
    let (page, log) = browser_run(&home, &session);
    let saw = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), agent).await })
        .expect("the agent side did not finish within 60 s after the page")
        .expect("the agent task")
        .unwrap_or_else(|e| panic!("agent side: {e}; page: {page}; chromium:\n{log}"));

    let ctx = format!("page outcome: {page}\nchromium:\n{log}");
    assert_eq!(page["opened"], true, "{ctx}");
    assert_eq!(page["error"], false, "{ctx}");
    assert_eq!(page["timeout"], false, "{ctx}");
    assert_eq!(
        page["protocol"], "reemo-relay.v1",
        "the relay answers the subprotocol: {ctx}"
    );
    // what the agent received from the browser, byte for byte and in order
    assert_eq!(saw.messages.len(), 2, "{saw:?}");
    assert_eq!(
        saw.messages[0],
        Message::text(USER_TEXT),
        "the browser's text"
    );
    assert!(
        saw.messages[1] == Message::binary(user_binary()),
        "the browser's binary message differs: {} bytes, binary: {}",
        saw.messages[1].len(),
        saw.messages[1].is_binary()
    );
    // what the browser received from the agent
    assert_eq!(
        page["texts"],
        serde_json::json!([AGENT_TEXT]),
        "the agent's text reached the browser: {ctx}"
    );
    let binaries: Vec<Vec<u8>> = page["binaries"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}"))
        .iter()
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.as_str().expect("base64 string"))
                .expect("base64 from the page")
        })
        .collect();
    assert_eq!(binaries.len(), 1, "{ctx}");
    assert!(
        binaries[0] == agent_binary(),
        "the agent's binary message reached the browser altered ({} bytes)",
        binaries[0].len()
    );
    // the agent's close, relayed with its code and reason
    assert_eq!(
        page["close"],
        serde_json::json!({"code": AGENT_CLOSE.0, "reason": AGENT_CLOSE.1, "clean": true}),
        "{ctx}"
    );
    // and the browser's answer to it, relayed back to the agent
    match &saw.close_reply {
        Some(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), AGENT_CLOSE.0, "{f:?}")
        }
        other => panic!("after its close the agent got {other:?}, not the browser's close"),
    }

    // --- negative: an NSS database trusting another CA only; verification is on
    let other = fx.path("other-ca.pem");
    std::fs::write(&other, other_ca_pem()).unwrap();
    let session = create_session(&fx, &ca);
    let ws = rt.block_on(agent_connect(&session, tls));
    let home = nss_home(&fx.path("home-other-ca"), Some(&other));
    let (page, log) = browser_run(&home, &session);
    let ctx = format!("page outcome: {page}\nchromium:\n{log}");
    assert_eq!(
        page["opened"], false,
        "chromium opened wss without trusting the site CA: {ctx}"
    );
    assert_eq!(page["error"], true, "{ctx}");
    assert_eq!(page["close"]["code"], 1006, "{ctx}");
    assert_eq!(page["texts"], serde_json::json!([]), "{ctx}");
    // and it is the certificate that failed: chromium's network service logs the handshake
    // failure with net::ERR_CERT_AUTHORITY_INVALID (-202)
    assert!(
        log.contains("net_error -202") || log.contains("ERR_CERT_AUTHORITY_INVALID"),
        "the browser's failure is not the certificate's issuer: {ctx}"
    );
    let st = control(&fx, &ca, "GET", &format!("/v1/sessions/{}", session.id));
    assert_eq!(st["state"], "waiting", "no user ever joined: {st}");
    assert_eq!(st["agent_connected"], true, "{st}");
    assert_eq!(st["user_connected"], false, "{st}");
    rt.block_on(async move {
        let mut ws = ws;
        let _ = tokio::time::timeout(Duration::from_secs(10), ws.close(None)).await;
    });
}

/// A CA certificate that is not the site's (the negative check's NSS database trusts it).
fn other_ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "some other CA");
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}
