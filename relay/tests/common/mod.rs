//! Shared helpers of the integration tests: start the real `ws-relay-server` binary on a free
//! 127.0.0.1 port with test secrets, mint tokens, connect tokio-tungstenite clients.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use ws_relay_server::token::{KeySet, Role};

pub type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const KEYS: &str =
    "# test keys\nk2=00112233445566778899aabbccddeeff\nk1=base64:AAECAwQFBgcICQoLDA0ODw==\n";
pub const SECRET: &str = "control-secret-for-tests-0123456789";

/// A running relay, killed (by PID) on drop.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub keys: KeySet,
    /// Serving TLS (then the plain-HTTP helpers below do not apply).
    pub tls: bool,
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind free port");
    l.local_addr().expect("local addr").port()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Relay {
    /// Starts the relay with extra `RELAY_*` variables.
    pub fn start(env: &[(&str, &str)]) -> Relay {
        // A port from `free_port` can be taken again before the relay binds it (tests run
        // in parallel): a relay that exits at start is tried again on another port.
        for attempt in 1.. {
            let mut relay = Self::spawn(env);
            match relay.wait_ready() {
                Ok(()) => return relay,
                Err(e) if attempt < 5 => {
                    eprintln!("relay on {} {e}; trying another port", relay.addr)
                }
                Err(e) => panic!("relay on {} {e}", relay.addr),
            }
        }
        unreachable!()
    }

    fn spawn(env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_file = dir.path().join("keys");
        let secret_file = dir.path().join("secret");
        std::fs::write(&keys_file, KEYS).unwrap();
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-relay-server"));
        cmd.arg("serve")
            .env("RELAY_LISTEN", addr.to_string())
            .env("RELAY_TOKEN_KEYS_FILE", &keys_file)
            .env("RELAY_CONTROL_SECRET_FILE", &secret_file)
            .env("RELAY_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning ws-relay-server");
        Relay {
            child,
            addr,
            dir,
            keys: KeySet::parse(KEYS).unwrap(),
            tls: env.iter().any(|(k, _)| *k == "RELAY_TLS_CERT_FILE"),
        }
    }

    /// Wait until this relay answers on its address; an error when it exited first (its
    /// port was taken), a panic when it does not answer within 20 s.
    fn wait_ready(&mut self) -> Result<(), String> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited at start ({status})"));
            }
            // the listener is bound only after the certificate has been loaded; what
            // answers is this relay only if it is still running a moment later
            let up = if self.tls {
                TcpStream::connect(self.addr).is_ok()
            } else {
                matches!(self.http("GET", "/healthz", None, ""), Ok((200, _)))
            };
            if up {
                std::thread::sleep(Duration::from_millis(100));
                if let Some(status) = self.child.try_wait().unwrap() {
                    return Err(format!("exited at start ({status})"));
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("relay did not become healthy on {}", self.addr);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A blocking HTTP/1.1 request; returns status and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        raw_http(self.addr, method, path, bearer, body, "")
    }

    /// Value of a metric line (exact name with labels).
    pub fn metric(&self, name: &str) -> u64 {
        // retry briefly: a connection cap may still count a connection that is closing
        let t = Instant::now();
        let body = loop {
            match self.http("GET", "/metrics", None, "") {
                Ok((200, body)) => break body,
                other if t.elapsed() > Duration::from_secs(5) => panic!("metrics: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
            .trim()
            .parse()
            .expect("metric value")
    }

    /// A gauge read after the event that moves it: the server may update it just after the
    /// client saw the event, so poll (bounded) until it shows `want`; return the last value.
    pub fn metric_eventually(&self, name: &str, want: u64) -> u64 {
        let t = Instant::now();
        loop {
            let v = self.metric(name);
            if v == want || t.elapsed() > Duration::from_secs(5) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rejected(&self, reason: &str) -> u64 {
        self.metric(&format!("relay_rejected_total{{reason=\"{reason}\"}}"))
    }

    pub fn token(&self, session: &str, role: Role) -> String {
        self.keys.mint(session, role, now() + 300)
    }

    pub fn url(&self, session: &str, role: Role, token: &str) -> String {
        format!(
            "ws://{}/v1/relay/{session}?role={role}&token={token}",
            self.addr
        )
    }

    /// Connects with a valid token in the query string.
    pub async fn connect(&self, session: &str, role: Role) -> Client {
        let t = self.token(session, role);
        connect(&self.url(session, role, &t)).await
    }

    /// Resident set size of the relay, bytes.
    pub fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
    extra: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(parse_response(&out))
}

/// Status code and body of a raw HTTP/1.1 response (status 0 when unparsable).
pub fn parse_response(out: &str) -> (u16, String) {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

pub fn client_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(64 << 20);
    c.max_frame_size = Some(64 << 20);
    c
}

pub async fn connect(url: &str) -> Client {
    let req = url.into_client_request().unwrap();
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(client_config()), true)
        .await
        .unwrap_or_else(|e| panic!("connecting {}: {e}", url.split('?').next().unwrap()));
    ws
}

/// The HTTP status of a refused upgrade.
pub async fn refused_status(url: &str, extra: Option<(&str, &str)>) -> u16 {
    let mut req = url.into_client_request().unwrap();
    if let Some((k, v)) = extra {
        req.headers_mut().insert(
            k.parse::<tokio_tungstenite::tungstenite::http::HeaderName>()
                .unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("upgrade unexpectedly accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("expected an http refusal, got {e}"),
    }
}

/// Next data message (pings and pongs skipped), with a 10 s limit.
pub async fn recv(ws: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    })
    .await
    .expect("timed out waiting for a message")
}

/// Waits for the close frame (code, reason).
pub async fn recv_close(ws: &mut Client) -> (u16, String) {
    match recv(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

pub async fn send(ws: &mut Client, m: Message) {
    ws.send(m).await.expect("send");
}

/// A WebSocket client on a plain blocking socket: sends the upgrade request for `target`
/// (path and query) and reads the 101 answer, so that a test can then misbehave at the TCP
/// level (half-close, reset) in ways tungstenite clients do not.
pub fn raw_ws_connect(addr: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // read the answer byte by byte so that nothing after the head is consumed
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!("reading the upgrade answer: {other:?}"),
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s
}

/// Writes one masked text frame (payload < 126 bytes), as a client must.
pub fn raw_ws_text(s: &mut TcpStream, text: &str) {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    assert!(text.len() < 126);
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

/// Sends a request exactly as given, one write per piece (a short pause between them so that
/// the relay reads them separately), then reads the whole answer.
pub fn raw_request(addr: SocketAddr, pieces: &[&[u8]]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        s.write_all(p)?;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(parse_response(&String::from_utf8_lossy(&out)))
}

/// Connects like [`Relay::connect`], retrying (bounded) while refused by a cap: the server
/// releases a finished connection's slot just after the client has seen it close, so a
/// readiness or metrics request may still be counted for a moment.
pub async fn connect_under_cap(relay: &Relay, session: &str, role: Role) -> Client {
    let url = relay.url(session, role, &relay.token(session, role));
    for _ in 0..50 {
        let req = url.as_str().into_client_request().unwrap();
        match tokio_tungstenite::connect_async_with_config(req, Some(client_config()), true).await {
            Ok((ws, _)) => return ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r))
                if matches!(r.status().as_u16(), 429 | 503) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("connecting {session}: {e}"),
        }
    }
    panic!("connecting {session}: still refused by a cap after 50 tries");
}
