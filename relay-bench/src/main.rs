//! relay-bench: load generator for ws-relay-server, measured against a plain TCP relay
//! (tokio `copy_bidirectional`) in the same run, or (`relay-bench proxy`) through an activated
//! RELAYWS appliance's entry proxy against the local relay in the same run. The relays it
//! starts listen on loopback only (127.0.0.0/8); every loop is bounded in count and time;
//! every process it starts is stopped by PID.

mod proxy;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use ws_relay_server::token::{KeySet, Role};

/// Load generator for ws-relay-server (see relay/README.md for the documented run).
#[derive(Parser)]
#[command(name = "relay-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// The relay binary (default: ws-relay-server next to this executable).
    #[arg(long, global = true)]
    relay_bin: Option<PathBuf>,
    /// Idle paired sessions to hold (`proxy`: 0 holds as many as the proxy's maxconn allows,
    /// and a larger count is cut to that).
    #[arg(long, global = true, default_value_t = 2000)]
    idle_pairs: usize,
    /// Active sessions at --rate-mbps each.
    #[arg(long, global = true, default_value_t = 200)]
    active: usize,
    /// Rate per active session, Mbit/s.
    #[arg(long, global = true, default_value_t = 5.0)]
    rate_mbps: f64,
    /// Message size of the active run, bytes.
    #[arg(long, global = true, default_value_t = 32768)]
    active_msg: usize,
    /// Sessions of the latency phase (1 KiB messages at --rate-mbps).
    #[arg(long, global = true, default_value_t = 50)]
    latency_sessions: usize,
    /// Load generator threads of the active runs, each with a current-thread runtime
    /// (0: one per CPU).
    #[arg(long, global = true, default_value_t = 0)]
    workers: usize,
    /// Timestamp every N-th message of a session (latency sample); the others carry 0.
    #[arg(long, global = true, default_value_t = 4)]
    sample_every: u64,
    /// Sessions streaming 64 KiB messages as fast as possible.
    #[arg(long, global = true, default_value_t = 8)]
    stream_pairs: usize,
    /// Seconds of each measured phase.
    #[arg(long, global = true, default_value_t = 10)]
    secs: u64,
    /// Number of 127.0.0.x source addresses to spread client connections over.
    #[arg(long, global = true, default_value_t = 8)]
    sources: u8,
    /// Phases to run (comma-separated: idle,throughput,active,latency; `proxy` runs only
    /// idle, active and latency).
    #[arg(long, global = true, default_value = "idle,throughput,active,latency")]
    phases: String,
}

#[derive(Subcommand)]
enum Sub {
    /// The baseline: a plain TCP relay pairing two connections by a 32-byte header and
    /// running copy_bidirectional (started by the bench itself).
    TcpRelay {
        /// Listen address (127.0.0.0/8).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The phases idle, active and latency through an activated RELAYWS appliance (haproxy
    /// with TLS in front of the relay replicas) and, in the same run, direct to a local
    /// relay (plain): the latency the proxy path adds is the difference. Sessions are made
    /// through the control port with a client certificate, connected through the TLS port.
    Proxy(ProxyArgs),
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// The entry proxy's TLS listener, wss://HOST:PORT (HOST is the name the entry
    /// certificate is verified against).
    #[arg(long)]
    url: String,
    /// The control listener (mutual TLS), https://HOST:PORT.
    #[arg(long)]
    control_url: String,
    /// Connect to this address instead of HOST (the TLS name stays HOST): the host's own
    /// non-loopback address reaches a host-mode port without docker-proxy.
    #[arg(long)]
    connect_ip: Option<IpAddr>,
    /// The site CA (`reemo-bundle pki ca-cert`).
    #[arg(long)]
    ca_file: PathBuf,
    /// Client certificate of the site CA (`reemo-bundle pki issue-client`).
    #[arg(long)]
    client_cert: PathBuf,
    /// Its key.
    #[arg(long)]
    client_key: PathBuf,
    /// The control API's bearer secret (`<state>/secrets/relay_control_secret`).
    #[arg(long)]
    control_secret_file: PathBuf,
    /// The stack name: its containers are those of the services STACK_proxy and STACK_relay.
    #[arg(long)]
    stack: String,
    /// Control calls at once while making sessions.
    #[arg(long, default_value_t = 8)]
    control_parallel: usize,
    /// Keep the idle pairs through the proxy open this many seconds after measuring them,
    /// to look at the proxy and relay processes while they hold them.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

const KEYS: &str = "bench=000102030405060708090a0b0c0d0e0f";

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ws,
    Tcp,
    Proxy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ws => "ws-relay-server",
            Kind::Tcp => "plain tcp relay",
            Kind::Proxy => "through proxy",
        }
    }
}

struct Target {
    kind: Kind,
    addr: SocketAddr,
    meter: Meter,
    keys: Arc<KeySet>,
    sources: u8,
    next_src: AtomicU64,
    /// The appliance's clients (Kind::Proxy).
    entry: Option<proxy::Entry>,
}

/// Where a target's CPU and memory are read.
enum Meter {
    /// A relay process started by the bench.
    Pid(u32),
    /// The appliance's proxy and relay containers (cgroups).
    Stack(proxy::Stack),
}

impl Meter {
    /// CPU seconds used so far, per part (see [`Meter::parts`]).
    fn cpu_secs(&self) -> Vec<f64> {
        match self {
            Meter::Pid(pid) => vec![cpu_ticks(*pid) as f64 / 100.0],
            Meter::Stack(s) => {
                let (p, r) = s.cpu_secs();
                vec![p, r]
            }
        }
    }

    fn parts(&self) -> &'static [&'static str] {
        match self {
            Meter::Pid(_) => &["relay"],
            Meter::Stack(_) => &["proxy", "relays"],
        }
    }
}

type Ws = WebSocketStream<TcpStream>;
type Wss = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

enum Tx {
    Ws(SplitSink<Ws, Message>),
    Tcp(OwnedWriteHalf),
}

enum Rx {
    Ws(SplitStream<Ws>),
    Tcp(BufReader<OwnedReadHalf>),
}

impl Tx {
    async fn send(&mut self, payload: Vec<u8>) -> Result<()> {
        match self {
            Tx::Ws(s) => s.send(Message::binary(payload)).await.context("ws send")?,
            Tx::Tcp(s) => {
                s.write_all(&(payload.len() as u32).to_be_bytes()).await?;
                s.write_all(&payload).await?;
            }
        }
        Ok(())
    }
}

impl Rx {
    /// Receives one message; returns (len, timestamp in its first 8 bytes).
    async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(usize, u64)> {
        let ts = |b: &[u8]| {
            if b.len() >= 8 {
                u64::from_be_bytes(b[..8].try_into().unwrap_or_default())
            } else {
                0
            }
        };
        match self {
            Rx::Ws(s) => loop {
                match s.next().await {
                    Some(Ok(Message::Binary(b))) => return Ok((b.len(), ts(&b))),
                    Some(Ok(Message::Close(_))) | None => bail!("closed"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            },
            Rx::Tcp(s) => {
                let len = s.read_u32().await? as usize;
                buf.resize(len, 0);
                s.read_exact(buf).await?;
                Ok((len, ts(buf)))
            }
        }
    }
}

/// An unsplit connection of the active runs (one side only sends, the other only receives).
enum Conn {
    Ws(Box<Ws>),
    Wss(Box<Wss>),
    Tcp(BufReader<TcpStream>),
}

/// Sends `buf` as one binary message; returns whether it went and the buffer back for reuse.
async fn ws_send<S>(
    ws: &mut WebSocketStream<S>,
    buf: bytes::BytesMut,
) -> (bool, Option<bytes::BytesMut>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let b = buf.freeze();
    let ok = ws.send(Message::Binary(b.clone())).await.is_ok();
    (ok, b.try_into_mut().ok())
}

/// Receives one binary message: (length, timestamp in its first 8 bytes).
async fn ws_recv<S>(ws: &mut WebSocketStream<S>) -> Result<(usize, u64)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok((b.len(), stamp(&b))),
            Some(Ok(Message::Close(_))) | None => bail!("closed"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

fn stamp(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Conn {
    /// Sends `buf` as one message; returns whether it went and the buffer back for reuse
    /// (no allocation per message once the writer has released it).
    async fn send(&mut self, buf: bytes::BytesMut) -> (bool, Option<bytes::BytesMut>) {
        match self {
            Conn::Ws(ws) => ws_send(ws, buf).await,
            Conn::Wss(ws) => ws_send(ws, buf).await,
            Conn::Tcp(s) => {
                use bytes::Buf;
                let len = (buf.len() as u32).to_be_bytes();
                let mut chain = Buf::chain(&len[..], &buf[..]);
                let ok = s.get_mut().write_all_buf(&mut chain).await.is_ok();
                (ok, Some(buf))
            }
        }
    }

    /// Receives one message: (length, timestamp in its first 8 bytes).
    async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<(usize, u64)> {
        match self {
            Conn::Ws(ws) => ws_recv(ws).await,
            Conn::Wss(ws) => ws_recv(ws).await,
            Conn::Tcp(s) => {
                let len = s.read_u32().await? as usize;
                buf.resize(len, 0);
                s.read_exact(buf).await?;
                Ok((len, stamp(buf)))
            }
        }
    }
}

impl Target {
    async fn connect(&self, session: &str, role: Role) -> Result<(Tx, Rx)> {
        Ok(match self.connect_conn(session, role).await? {
            Conn::Ws(ws) => {
                let (tx, rx) = (*ws).split();
                (Tx::Ws(tx), Rx::Ws(rx))
            }
            Conn::Tcp(s) => {
                let (r, w) = s.into_inner().into_split();
                (Tx::Tcp(w), Rx::Tcp(BufReader::with_capacity(65536 + 8, r)))
            }
            Conn::Wss(_) => bail!("split connections are for the direct runs only"),
        })
    }

    async fn connect_conn(&self, session: &str, role: Role) -> Result<Conn> {
        if let Some(e) = &self.entry {
            return self.connect_entry(e, session, role).await;
        }
        let n = self.next_src.fetch_add(1, Relaxed);
        let src = Ipv4Addr::new(127, 0, 0, 1 + (n % self.sources as u64) as u8);
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
            .with_context(|| format!("binding {src}"))?;
        let tcp = sock.connect(self.addr).await.context("connecting")?;
        tcp.set_nodelay(true)?;
        match self.kind {
            Kind::Ws => {
                let token = self.keys.mint(session, role, now_secs() + 3600);
                let url = format!(
                    "ws://{}/v1/relay/{session}?role={role}&token={token}",
                    self.addr
                );
                let mut cfg = WebSocketConfig::default();
                cfg.read_buffer_size = 8192;
                cfg.write_buffer_size = 0;
                let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg))
                    .await
                    .context("ws handshake")?;
                Ok(Conn::Ws(Box::new(ws)))
            }
            Kind::Tcp => {
                let mut tcp = tcp;
                let mut hdr = [b' '; 32];
                let h = format!("{session} {role}");
                hdr[..h.len().min(32)].copy_from_slice(&h.as_bytes()[..h.len().min(32)]);
                tcp.write_all(&hdr).await?;
                Ok(Conn::Tcp(BufReader::with_capacity(65536 + 8, tcp)))
            }
            Kind::Proxy => bail!("a proxy target needs its entry"),
        }
    }

    /// A side of session `session` (made through the control port) through the entry
    /// proxy's TLS listener, the token in the query.
    async fn connect_entry(&self, e: &proxy::Entry, session: &str, role: Role) -> Result<Conn> {
        let m = e.session(session)?;
        let token = match role {
            Role::Agent => &m.agent,
            Role::User => &m.user,
        };
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = e
            .tls
            .connect(e.server_name.clone(), tcp)
            .await
            .context("tls handshake with the entry proxy")?;
        let url = format!(
            "wss://{}/v1/relay/{}?role={role}&token={token}",
            e.authority, m.id
        );
        let mut cfg = WebSocketConfig::default();
        cfg.read_buffer_size = 8192;
        cfg.write_buffer_size = 0;
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(cfg))
            .await
            .context("ws handshake through the entry proxy")?;
        Ok(Conn::Wss(Box::new(ws)))
    }

    /// Connects `n` pairs, at most 256 handshakes at once; returns (agent, user) halves.
    async fn pairs(self: &Arc<Self>, tag: &str, n: usize) -> Result<Vec<((Tx, Rx), (Tx, Rx))>> {
        let tag = tag.to_string();
        let this = self.clone();
        let results: Vec<Result<_>> = futures_util::stream::iter(0..n)
            .map(|i| {
                let this = this.clone();
                let s = format!("{tag}{i}");
                async move {
                    let a = this.connect(&s, Role::Agent).await?;
                    let u = this.connect(&s, Role::User).await?;
                    Ok((a, u))
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// A child process stopped by PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn free_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn wait_port(addr: SocketAddr) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} did not open")
}

/// Makes the sessions `{tag}0..{tag}{n-1}` through the control port first (Kind::Proxy).
async fn make_sessions(t: &Arc<Target>, tag: &str, n: usize, parallel: usize) -> Result<()> {
    if let Some(e) = &t.entry {
        let took = tokio::time::timeout(Duration::from_secs(600), e.make(tag, n, parallel))
            .await
            .context("making sessions: not done within 600 s")??;
        eprintln!(
            "{:<16} {tag}: {n} sessions made through the control port in {:.1}s",
            t.kind.name(),
            took.as_secs_f64()
        );
    }
    Ok(())
}

/// Holds `n` idle paired sessions; returns the memory they added per pair, KiB.
async fn idle(t: &Arc<Target>, n: usize, hold: Duration) -> Result<f64> {
    let start = Instant::now();
    let ids: Vec<usize> = (0..n).collect();
    let per_pair = match &t.meter {
        Meter::Pid(pid) => {
            let before = rss_kib(*pid);
            let pairs = connect_share(t, "idle", &ids, 256).await?;
            let took = start.elapsed();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = rss_kib(*pid);
            let per = (after.saturating_sub(before)) as f64 / n as f64;
            println!(
                "{:<16} idle: {n} pairs held (connected in {:.1}s); rss {} KiB -> {} KiB = {per:.1} KiB per pair",
                t.kind.name(),
                took.as_secs_f64(),
                before,
                after,
            );
            drop(pairs);
            per
        }
        Meter::Stack(s) => {
            let (p0, r0) = s.mem();
            let pairs =
                tokio::time::timeout(Duration::from_secs(600), connect_share(t, "idle", &ids, 64))
                    .await
                    .context("connecting the idle pairs: not done within 600 s")??;
            let took = start.elapsed();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (p1, r1) = s.mem();
            let conns = s
                .haproxy_info()
                .await
                .ok()
                .and_then(|i| i.get("CurrConns").cloned())
                .unwrap_or_else(|| "?".into());
            let kib = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1024.0 / n as f64;
            let per = kib(p1.used + r1.used, p0.used + r0.used);
            println!(
                "{:<16} idle: {n} pairs held (connected in {:.1}s, haproxy CurrConns {conns}); \
                 memory (usage - inactive file, as docker stats) proxy {} -> {} MiB, relays {} -> {} MiB \
                 = {per:.1} KiB per pair (proxy {:.1}: anon {:.1}, kernel {:.1}, tcp buffers {:.1}; \
                 relays {:.1}: anon {:.1}, kernel {:.1}, tcp buffers {:.1})",
                t.kind.name(),
                took.as_secs_f64(),
                p0.used >> 20,
                p1.used >> 20,
                r0.used >> 20,
                r1.used >> 20,
                kib(p1.used, p0.used),
                kib(p1.anon, p0.anon),
                kib(p1.kernel, p0.kernel),
                kib(p1.tcp, p0.tcp),
                kib(r1.used, r0.used),
                kib(r1.anon, r0.anon),
                kib(r1.kernel, r0.kernel),
                kib(r1.tcp, r0.tcp),
            );
            // where the proxy's memory is: its pools (OpenSSL allocates outside them)
            if let Ok(pools) = s.haproxy_cmd("show pools").await {
                eprintln!(
                    "haproxy show pools with {n} idle pairs:\n{}",
                    pools.trim_end()
                );
            }
            if !hold.is_zero() {
                eprintln!("holding the {n} idle pairs for {} s", hold.as_secs());
                tokio::time::sleep(hold).await;
            }
            drop(pairs);
            per
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(per_pair)
}

async fn throughput(t: &Arc<Target>, n: usize, secs: u64) -> Result<f64> {
    let pairs = t.pairs("tp", n).await?;
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let cpu0 = t.meter.cpu_secs()[0];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for ((mut atx, _arx), (_utx, mut urx)) in pairs {
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let sender = async {
                while Instant::now() < stop {
                    if atx.send(vec![7u8; 65536]).await.is_err() {
                        break;
                    }
                }
            };
            let receiver = async {
                let mut buf = Vec::new();
                while Instant::now() < stop {
                    match tokio::time::timeout(Duration::from_secs(2), urx.recv(&mut buf)).await {
                        Ok(Ok((len, _))) => {
                            bytes.fetch_add(len as u64, Relaxed);
                        }
                        _ => break,
                    }
                }
            };
            tokio::join!(sender, receiver);
            drop((_arx, _utx));
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let el = start.elapsed().as_secs_f64();
    let cpu = (t.meter.cpu_secs()[0] - cpu0) / el;
    let mbps = bytes.load(Relaxed) as f64 * 8.0 / el / 1e6;
    println!(
        "{:<16} throughput: {n} sessions x 64 KiB messages: {:.0} Mbit/s payload ({:.0} MB/s), relay cpu {:.2} cores",
        t.kind.name(),
        mbps,
        mbps / 8.0,
        cpu
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(mbps)
}

/// One active run: `n` sessions, each sending `size`-byte messages one way at `rate_mbps`.
#[derive(Clone, Copy)]
struct Load {
    n: usize,
    size: usize,
    rate_mbps: f64,
    secs: u64,
    workers: usize,
    sample_every: u64,
}

/// Latency histogram: 10 µs buckets up to 100 ms, then 1 ms buckets up to ~10 s.
const HIST: usize = 20_000;

fn bucket(ns: u64) -> usize {
    let us = ns / 1000;
    if us < 100_000 {
        (us / 10) as usize
    } else {
        10_000 + ((us - 100_000) / 1000).min(9_999) as usize
    }
}

/// Upper edge of a bucket, ms (percentiles are reported conservatively).
fn bucket_ms(i: usize) -> f64 {
    if i < 10_000 {
        (i as f64 + 1.0) * 0.01
    } else {
        100.0 + (i - 10_000) as f64 + 1.0
    }
}

fn hist_pct(h: &[u64], p: f64) -> f64 {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let want = ((total as f64) * p).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in h.iter().enumerate() {
        acc += c;
        if acc >= want {
            return bucket_ms(i);
        }
    }
    f64::NAN
}

/// What one worker measured inside the window.
#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    hist: Vec<u64>,
}

struct LoadResult {
    offered_mbps: f64,
    sent_mbps: f64,
    delivered_mbps: f64,
    hist: Vec<u64>,
    /// Cores used by each part of the target (see [`Meter::parts`]).
    target_cpu: Vec<f64>,
    bench_cpu: f64,
    /// Busy cores of the whole machine: relay + bench + kernel + anything else running.
    machine_cpu: f64,
}

fn self_cpu_ticks() -> u64 {
    cpu_ticks(std::process::id())
}

/// Busy ticks of the whole machine (all processes), from /proc/stat.
fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let total: u64 = f.iter().take(8).sum();
            Some(total - f.get(3)? - f.get(4)?)
        })
        .unwrap_or(0)
}

/// Runs `l` against `t`: `l.workers` OS threads, each with its own current-thread runtime
/// and its share of the sessions; each worker paces its sessions with one timer (a slot
/// per tick wakes the sessions of that slot), sends from a reused buffer, and timestamps
/// every `sample_every`-th message (the others carry 0). Measured over `secs` after 1 s of
/// warm-up.
fn active(t: &Arc<Target>, tag: &str, l: Load) -> Result<LoadResult> {
    let workers = l.workers.clamp(1, l.n.max(1));
    let connected = Arc::new(std::sync::Barrier::new(workers + 1));
    let go = Arc::new(std::sync::Barrier::new(workers + 1));
    let start_at: Arc<OnceLock<Instant>> = Arc::default();
    let mut handles = Vec::new();
    for w in 0..workers {
        let ids: Vec<usize> = (w..l.n).step_by(workers).collect();
        let (t, tag) = (t.clone(), tag.to_string());
        let (connected, go, start_at) = (connected.clone(), go.clone(), start_at.clone());
        handles.push(std::thread::spawn(move || -> Result<Tally> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let conns = match &rt {
                Ok(rt) => rt.block_on(connect_share(&t, &tag, &ids, 64)),
                Err(e) => Err(anyhow::anyhow!("runtime: {e}")),
            };
            connected.wait();
            go.wait();
            let (rt, conns) = (rt?, conns?);
            let start = *start_at.get().context("start time")?;
            let local = tokio::task::LocalSet::new();
            Ok(local.block_on(&rt, run_worker(conns, l, start)))
        }));
    }
    connected.wait();
    let start = Instant::now() + Duration::from_millis(100);
    let _ = start_at.set(start);
    go.wait();
    let warm = start + Duration::from_secs(1);
    let stop = warm + Duration::from_secs(l.secs);
    std::thread::sleep(warm.saturating_duration_since(Instant::now()));
    let (cpu0, self0, all0, t0) = (
        t.meter.cpu_secs(),
        self_cpu_ticks(),
        machine_busy_ticks(),
        Instant::now(),
    );
    std::thread::sleep(stop.saturating_duration_since(Instant::now()));
    let (cpu1, self1, all1, el) = (
        t.meter.cpu_secs(),
        self_cpu_ticks(),
        machine_busy_ticks(),
        t0.elapsed(),
    );
    let mut total = Tally {
        hist: vec![0; HIST],
        ..Tally::default()
    };
    let mut err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                total.sent += r.sent;
                total.received += r.received;
                for (a, b) in total.hist.iter_mut().zip(&r.hist) {
                    *a += b;
                }
            }
            Ok(Err(e)) => err = Some(e),
            Err(_) => err = Some(anyhow::anyhow!("worker panicked")),
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    let secs = l.secs as f64;
    let el = el.as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    Ok(LoadResult {
        offered_mbps: l.n as f64 * l.rate_mbps,
        sent_mbps: total.sent as f64 * 8.0 / secs / 1e6,
        delivered_mbps: total.received as f64 * 8.0 / secs / 1e6,
        hist: total.hist,
        target_cpu: cpu1.iter().zip(&cpu0).map(|(b, a)| (b - a) / el).collect(),
        bench_cpu: self1.saturating_sub(self0) as f64 / 100.0 / el,
        machine_cpu: all1.saturating_sub(all0) as f64 / 100.0 / el,
    })
}

/// Connects the sessions `ids` (of one worker), `parallel` handshakes at a time.
async fn connect_share(
    t: &Arc<Target>,
    tag: &str,
    ids: &[usize],
    parallel: usize,
) -> Result<Vec<(Conn, Conn)>> {
    let results: Vec<Result<(Conn, Conn)>> = futures_util::stream::iter(ids.iter().copied())
        .map(|i| {
            let s = format!("{tag}{i}");
            async move {
                let a = t.connect_conn(&s, Role::Agent).await?;
                let u = t.connect_conn(&s, Role::User).await?;
                Ok((a, u))
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn run_worker(conns: Vec<(Conn, Conn)>, l: Load, start: Instant) -> Tally {
    use std::cell::RefCell;
    use std::rc::Rc;
    let interval = Duration::from_secs_f64(l.size as f64 * 8.0 / (l.rate_mbps * 1e6));
    // one tick about every millisecond; each session belongs to one of `slots` slots and
    // is woken once per `interval`
    let slots = ((interval.as_secs_f64() * 1000.0).round() as usize).clamp(1, 1000);
    let tick = interval / slots as u32;
    let warm = start + Duration::from_secs(1);
    let stop = warm + Duration::from_secs(l.secs);
    let tally = Rc::new(RefCell::new(Tally {
        hist: vec![0; HIST],
        ..Tally::default()
    }));
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..slots)
        .map(|_| tokio::sync::watch::channel(0u64))
        .unzip();
    let mut tasks = Vec::new();
    for (i, (a, u)) in conns.into_iter().enumerate() {
        let mut due = rxs[i % slots].clone();
        let tally_s = tally.clone();
        let every = l.sample_every.max(1);
        let size = l.size.max(16);
        tasks.push(tokio::task::spawn_local(async move {
            let mut a = a;
            let mut buf = bytes::BytesMut::zeroed(size);
            let mut seq = 0u64;
            let mut last_cycle: Option<u64> = None;
            'run: while due.changed().await.is_ok() {
                // tick k wakes this slot once per interval (cycle k / slots); if the worker
                // or this sender fell behind, send the missed messages too (at most 4)
                let cycle = *due.borrow_and_update() / slots as u64;
                let todo = last_cycle.map_or(1, |l| cycle.saturating_sub(l).clamp(1, 4));
                last_cycle = Some(cycle);
                for _ in 0..todo {
                    let now = Instant::now();
                    if now >= stop {
                        break 'run;
                    }
                    seq += 1;
                    let ts = if seq % every == 0 && now >= warm {
                        now_ns().max(1)
                    } else {
                        0
                    };
                    buf[..8].copy_from_slice(&ts.to_be_bytes());
                    let (ok, back) = a.send(buf).await;
                    buf = back.unwrap_or_else(|| bytes::BytesMut::zeroed(size));
                    if !ok {
                        break 'run;
                    }
                    if now >= warm && Instant::now() < stop {
                        tally_s.borrow_mut().sent += size as u64;
                    }
                }
            }
            a
        }));
        let tally_r = tally.clone();
        tokio::task::spawn_local(async move {
            let mut u = u;
            let mut buf = Vec::new();
            // a cancelled TCP read would lose framing: cancel only once, at the very end
            let end = tokio::time::Instant::from_std(stop + Duration::from_millis(500));
            while let Ok(Ok((len, ts))) = tokio::time::timeout_at(end, u.recv(&mut buf)).await {
                let now = Instant::now();
                if now >= warm && now < stop {
                    let mut t = tally_r.borrow_mut();
                    t.received += len as u64;
                    if ts != 0 {
                        t.hist[bucket(now_ns().saturating_sub(ts))] += 1;
                    }
                }
            }
        });
    }
    // the one timer of this worker
    let mut last = 0u64;
    loop {
        let next = start + Duration::from_nanos(tick.as_nanos() as u64 * (last + 1));
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        let now = Instant::now();
        if now >= stop {
            break;
        }
        let n = (now.saturating_duration_since(start).as_nanos() / tick.as_nanos().max(1)) as u64;
        // catch up at most one interval
        for k in (last + 1).max(n.saturating_sub(slots as u64 - 1))..=n {
            txs[(k % slots as u64) as usize].send_replace(k);
        }
        last = n.max(last + 1);
    }
    drop(txs);
    let mut senders = Vec::new();
    for task in tasks {
        if let Ok(a) = task.await {
            senders.push(a);
        }
    }
    // keep the sending sides open until the receivers have drained
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        stop + Duration::from_millis(600),
    ))
    .await;
    drop(senders);
    Rc::try_unwrap(tally)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| std::mem::take(&mut *rc.borrow_mut()))
}

async fn tcp_relay(listen: SocketAddr) -> Result<()> {
    ws_relay_server::server::raise_fd_limit();
    let l = TcpListener::bind(listen).await?;
    let waiting: Arc<Mutex<HashMap<String, TcpStream>>> = Arc::default();
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let mut hdr = [0u8; 32];
            if s.read_exact(&mut hdr).await.is_err() {
                return;
            }
            let h = String::from_utf8_lossy(&hdr).trim().to_string();
            let session = h.split(' ').next().unwrap_or("").to_string();
            let peer = waiting.lock().ok().and_then(|mut w| {
                let p = w.remove(&session);
                if p.is_none() {
                    w.insert(session.clone(), s);
                    None
                } else {
                    p.map(|p| (p, s))
                }
            });
            if let Some((mut a, mut b)) = peer {
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            }
        });
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ws_relay_server::server::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &cli.cmd {
        Some(Sub::TcpRelay { listen }) => {
            if !listen.ip().is_loopback() {
                bail!("tcp-relay listens on 127.0.0.0/8 only");
            }
            rt.block_on(tcp_relay(*listen))
        }
        Some(Sub::Proxy(p)) => rt.block_on(run_proxy(&cli, p)),
        None => rt.block_on(run(cli)),
    }
}

/// The local relay (`ws-relay-server serve` on a free loopback port, plain), its folder of
/// keys, killed by PID on drop.
struct LocalRelay {
    proc: Proc,
    addr: SocketAddr,
    dir: PathBuf,
    bin: PathBuf,
}

impl Drop for LocalRelay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_relay(cli: &Cli) -> Result<LocalRelay> {
    let me = std::env::current_exe()?;
    let bin = cli
        .relay_bin
        .clone()
        .unwrap_or_else(|| me.with_file_name("ws-relay-server"));
    let dir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, KEYS)?;
    let addr = free_addr()?;
    let proc = Proc(
        Command::new(&bin)
            .arg("serve")
            .env("RELAY_LISTEN", addr.to_string())
            .env("RELAY_TOKEN_KEYS_FILE", &keys_file)
            .env("RELAY_CONTROL_SECRET_FILE", dir.join("none"))
            .env("RELAY_MAX_CONNECTIONS", "1000000")
            .env("RELAY_MAX_CONNECTIONS_PER_IP", "1000000")
            .env("RELAY_PAIR_TIMEOUT_SECS", "120")
            .env("RELAY_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    Ok(LocalRelay {
        proc,
        addr,
        dir,
        bin,
    })
}

fn workers(cli: &Cli) -> usize {
    if cli.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cli.workers
    }
}

/// The active runs the phases ask for: (name, sessions, message size).
fn active_runs(cli: &Cli, phases: &[&str]) -> Vec<(&'static str, usize, usize)> {
    let mut runs = Vec::new();
    if phases.contains(&"active") {
        runs.push(("active", cli.active, cli.active_msg));
    }
    if phases.contains(&"latency") {
        runs.push(("latency", cli.latency_sessions.max(1), 1024));
    }
    runs
}

/// Percentiles of one active run, ms.
#[derive(Clone, Copy, Default)]
struct Pcts {
    p50: f64,
    p99: f64,
    p999: f64,
}

/// Runs `load` against `t` (sessions made first for a proxy target) and prints its line.
async fn active_line(
    t: &Arc<Target>,
    name: &str,
    load: Load,
    control_parallel: usize,
) -> Result<Pcts> {
    make_sessions(t, name, load.n, control_parallel).await?;
    let r = tokio::task::block_in_place(|| active(t, name, load))?;
    let samples: u64 = r.hist.iter().sum();
    let pcts = Pcts {
        p50: hist_pct(&r.hist, 0.5),
        p99: hist_pct(&r.hist, 0.99),
        p999: hist_pct(&r.hist, 0.999),
    };
    let cpu: Vec<String> = t
        .meter
        .parts()
        .iter()
        .zip(&r.target_cpu)
        .map(|(p, c)| format!("{p} cpu {c:.2} cores"))
        .collect();
    println!(
        "{:<16} {name}: {} sessions x {} Mbit/s in {} B msgs: offered {:.0} Mbit/s, sent {:.0}, delivered {:.0}; latency p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.1} ms ({samples} samples); {}, bench cpu {:.2} cores ({} workers), machine busy {:.2} cores",
        t.kind.name(),
        load.n,
        load.rate_mbps,
        load.size,
        r.offered_mbps,
        r.sent_mbps,
        r.delivered_mbps,
        pcts.p50,
        hist_pct(&r.hist, 0.9),
        pcts.p99,
        pcts.p999,
        hist_pct(&r.hist, 1.0),
        cpu.join(", "),
        r.bench_cpu,
        load.workers,
        r.machine_cpu,
    );
    Ok(pcts)
}

async fn run(cli: Cli) -> Result<()> {
    base();
    let me = std::env::current_exe()?;
    let relay = start_relay(&cli)?;
    let tcp_addr = free_addr()?;
    let tcp_proc = Proc(
        Command::new(&me)
            .args(["tcp-relay", "--listen", &tcp_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the tcp relay")?,
    );
    wait_port(relay.addr).await?;
    wait_port(tcp_addr).await?;
    let keys = Arc::new(KeySet::parse(KEYS)?);
    let mk = |kind, addr, pid| {
        Arc::new(Target {
            kind,
            addr,
            meter: Meter::Pid(pid),
            keys: keys.clone(),
            sources: cli.sources.max(1),
            next_src: AtomicU64::new(0),
            entry: None,
        })
    };
    let ws = mk(Kind::Ws, relay.addr, relay.proc.0.id());
    let tcp = mk(Kind::Tcp, tcp_addr, tcp_proc.0.id());
    let phases: Vec<&str> = cli.phases.split(',').map(str::trim).collect();
    println!(
        "relay-bench: {} cpus, relay {}, {} source addresses",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        relay.bin.display(),
        cli.sources
    );
    if phases.contains(&"idle") {
        idle(&ws, cli.idle_pairs, Duration::ZERO).await?;
        idle(&tcp, cli.idle_pairs, Duration::ZERO).await?;
    }
    if phases.contains(&"throughput") {
        let w = throughput(&ws, cli.stream_pairs, cli.secs).await?;
        let p = throughput(&tcp, cli.stream_pairs, cli.secs).await?;
        println!("throughput ratio ws/plain: {:.2}", w / p);
    }
    let workers = workers(&cli);
    for (name, n, size) in active_runs(&cli, &phases) {
        let load = Load {
            n,
            size,
            rate_mbps: cli.rate_mbps,
            secs: cli.secs,
            workers,
            sample_every: cli.sample_every,
        };
        let w = active_line(&ws, name, load, 1).await?;
        let p = active_line(&tcp, name, load, 1).await?;
        println!(
            "{name}: ws-relay-server p50 minus plain tcp relay p50: {:+.2} ms",
            w.p50 - p.p50
        );
    }
    drop(relay);
    drop(tcp_proc);
    Ok(())
}

/// `relay-bench proxy`: each phase direct to the local relay, then through the appliance.
async fn run_proxy(cli: &Cli, p: &ProxyArgs) -> Result<()> {
    base();
    let entry = proxy::Entry::new(
        &p.url,
        &p.control_url,
        &p.ca_file,
        (&p.client_cert, &p.client_key),
        &p.control_secret_file,
    )?;
    let port: u16 = entry
        .authority
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .context("no port in --url")?;
    let ip = match p.connect_ip {
        Some(ip) => ip,
        None => tokio::net::lookup_host(&entry.authority)
            .await
            .with_context(|| format!("resolving {}", entry.authority))?
            .next()
            .with_context(|| format!("{} has no address", entry.authority))?
            .ip(),
    };
    let stack = proxy::Stack::find(&p.stack)?;
    let info = stack.haproxy_info().await.context("haproxy show info")?;
    let get = |k: &str| info.get(k).cloned().unwrap_or_else(|| "?".into());
    let maxconn: usize = get("Maxconn").parse().unwrap_or(0);
    // each pair is two client connections at the proxy (and two to the replicas); keep a
    // margin for health checks and control calls
    let most_pairs = maxconn.saturating_sub(100) / 2;
    let pairs = match cli.idle_pairs {
        0 => most_pairs,
        n if most_pairs > 0 && n > most_pairs => {
            eprintln!(
                "--idle-pairs {n} is over what the proxy's maxconn allows; using {most_pairs}"
            );
            most_pairs
        }
        n => n,
    };
    println!(
        "relay-bench proxy: {} cpus; appliance {} (connecting to {ip}:{port}), {} proxy and {} relay containers; \
         haproxy {} Ulimit-n {} Maxsock {} Maxconn {} (so at most {most_pairs} pairs), proxy container open files {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        p.url,
        stack.proxy.len(),
        stack.relays.len(),
        get("Version"),
        get("Ulimit-n"),
        get("Maxsock"),
        get("Maxconn"),
        stack
            .proxy_nofile()
            .map_or_else(|| "?".to_string(), |n| n.to_string()),
    );
    let relay = start_relay(cli)?;
    wait_port(relay.addr).await?;
    let keys = Arc::new(KeySet::parse(KEYS)?);
    let direct = Arc::new(Target {
        kind: Kind::Ws,
        addr: relay.addr,
        meter: Meter::Pid(relay.proc.0.id()),
        keys: keys.clone(),
        sources: cli.sources.max(1),
        next_src: AtomicU64::new(0),
        entry: None,
    });
    let via = Arc::new(Target {
        kind: Kind::Proxy,
        addr: SocketAddr::new(ip, port),
        meter: Meter::Stack(stack),
        keys,
        sources: 1,
        next_src: AtomicU64::new(0),
        entry: Some(entry),
    });
    let phases: Vec<&str> = cli.phases.split(',').map(str::trim).collect();
    if phases.contains(&"idle") {
        make_sessions(&via, "idle", pairs, p.control_parallel).await?;
        let d = idle(&direct, pairs, Duration::ZERO).await?;
        let v = idle(&via, pairs, Duration::from_secs(p.hold_secs)).await?;
        println!(
            "idle: {pairs} pairs: proxy + relays {v:.1} KiB per pair (goal <= 48), direct relay alone {d:.1} KiB"
        );
    }
    let workers = workers(cli);
    for (name, n, size) in active_runs(cli, &phases) {
        let load = Load {
            n,
            size,
            rate_mbps: cli.rate_mbps,
            secs: cli.secs,
            workers,
            sample_every: cli.sample_every,
        };
        let d = active_line(&direct, name, load, p.control_parallel).await?;
        let v = active_line(&via, name, load, p.control_parallel).await?;
        println!(
            "{name}: added by the proxy path (through proxy minus direct): p50 {:+.2} ms, p99 {:+.2} ms (goal < 10), p99.9 {:+.2} ms",
            v.p50 - d.p50,
            v.p99 - d.p99,
            v.p999 - d.p999,
        );
    }
    drop(relay);
    Ok(())
}
