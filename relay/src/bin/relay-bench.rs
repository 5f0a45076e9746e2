//! relay-bench: load generator for ws-relay-server, measured against a plain TCP relay
//! (tokio `copy_bidirectional`) in the same run. Loopback only (127.0.0.0/8); every loop is
//! bounded in count and time; every process it starts is stopped by PID.

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
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Idle paired sessions to hold.
    #[arg(long, default_value_t = 2000)]
    idle_pairs: usize,
    /// Active sessions at --rate-mbps each.
    #[arg(long, default_value_t = 200)]
    active: usize,
    /// Rate per active session, Mbit/s.
    #[arg(long, default_value_t = 5.0)]
    rate_mbps: f64,
    /// Message size of the active run, bytes.
    #[arg(long, default_value_t = 16384)]
    active_msg: usize,
    /// Sessions streaming 64 KiB messages as fast as possible.
    #[arg(long, default_value_t = 8)]
    stream_pairs: usize,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Number of 127.0.0.x source addresses to spread client connections over.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Phases to run (comma-separated: idle,throughput,active,latency).
    #[arg(long, default_value = "idle,throughput,active,latency")]
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
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ws => "ws-relay-server",
            Kind::Tcp => "plain tcp relay",
        }
    }
}

struct Target {
    kind: Kind,
    addr: SocketAddr,
    pid: u32,
    keys: Arc<KeySet>,
    sources: u8,
    next_src: AtomicU64,
}

type Ws = WebSocketStream<TcpStream>;

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

impl Target {
    async fn connect(&self, session: &str, role: Role) -> Result<(Tx, Rx)> {
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
                let (tx, rx) = ws.split();
                Ok((Tx::Ws(tx), Rx::Ws(rx)))
            }
            Kind::Tcp => {
                let mut tcp = tcp;
                let mut hdr = [b' '; 32];
                let h = format!("{session} {role}");
                hdr[..h.len().min(32)].copy_from_slice(&h.as_bytes()[..h.len().min(32)]);
                tcp.write_all(&hdr).await?;
                let (r, w) = tcp.into_split();
                Ok((Tx::Tcp(w), Rx::Tcp(BufReader::with_capacity(65536 + 8, r))))
            }
        }
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

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1e6
}

async fn idle(t: &Arc<Target>, n: usize) -> Result<()> {
    let before = rss_kib(t.pid);
    let start = Instant::now();
    let pairs = t.pairs("idle", n).await?;
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(t.pid);
    println!(
        "{:<16} idle: {n} pairs held (connected in {:.1}s); rss {} KiB -> {} KiB = {:.1} KiB per pair",
        t.kind.name(),
        took.as_secs_f64(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    drop(pairs);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

async fn throughput(t: &Arc<Target>, n: usize, secs: u64) -> Result<f64> {
    let pairs = t.pairs("tp", n).await?;
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let cpu0 = cpu_ticks(t.pid);
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
    let cpu = (cpu_ticks(t.pid) - cpu0) as f64 / 100.0 / el;
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

/// `n` sessions each sending `size`-byte messages at `rate_mbps`; returns latencies (ns).
async fn active(
    t: &Arc<Target>,
    tag: &str,
    n: usize,
    size: usize,
    rate_mbps: f64,
    secs: u64,
) -> Result<(Vec<u64>, f64, f64)> {
    let pairs = t.pairs(tag, n).await?;
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let bytes = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(size as f64 * 8.0 / (rate_mbps * 1e6));
    let warm = Instant::now() + Duration::from_secs(1);
    let stop = Instant::now() + Duration::from_secs(secs + 1);
    let cpu0 = cpu_ticks(t.pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, ((mut atx, _arx), (_utx, mut urx))) in pairs.into_iter().enumerate() {
        let (lat, bytes) = (lat.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let sender = async move {
                // spread the sessions' phases over one interval
                tokio::time::sleep(interval.mul_f64((i % 97) as f64 / 97.0)).await;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while Instant::now() < stop {
                    tick.tick().await;
                    let mut p = vec![0u8; size];
                    p[..8].copy_from_slice(&now_ns().to_be_bytes());
                    if atx.send(p).await.is_err() {
                        break;
                    }
                }
                atx
            };
            let receiver = async {
                let mut buf = Vec::new();
                let mut mine = Vec::new();
                // a cancelled TCP read would lose framing: cancel only once, at the very end
                let end = tokio::time::Instant::from_std(stop + Duration::from_millis(300));
                while let Ok(Ok((len, ts))) = tokio::time::timeout_at(end, urx.recv(&mut buf)).await
                {
                    if Instant::now() > warm {
                        mine.push(now_ns().saturating_sub(ts));
                        bytes.fetch_add(len as u64, Relaxed);
                    }
                }
                lat.lock().map(|mut l| l.extend(mine)).ok();
            };
            tokio::join!(sender, receiver);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let el = start.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(t.pid) - cpu0) as f64 / 100.0 / el;
    let mbps = bytes.load(Relaxed) as f64 * 8.0 / (el - 1.0) / 1e6;
    let v = std::mem::take(&mut *lat.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((v, mbps, cpu))
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
    if let Some(Sub::TcpRelay { listen }) = cli.cmd {
        if !listen.ip().is_loopback() {
            bail!("tcp-relay listens on 127.0.0.0/8 only");
        }
        return rt.block_on(tcp_relay(listen));
    }
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    base();
    let me = std::env::current_exe()?;
    let relay_bin = cli
        .relay_bin
        .clone()
        .unwrap_or_else(|| me.with_file_name("ws-relay-server"));
    let dir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, KEYS)?;
    let ws_addr = free_addr()?;
    let tcp_addr = free_addr()?;
    let ws_proc = Proc(
        Command::new(&relay_bin)
            .arg("serve")
            .env("RELAY_LISTEN", ws_addr.to_string())
            .env("RELAY_TOKEN_KEYS_FILE", &keys_file)
            .env("RELAY_CONTROL_SECRET_FILE", dir.join("none"))
            .env("RELAY_MAX_CONNECTIONS", "1000000")
            .env("RELAY_MAX_CONNECTIONS_PER_IP", "1000000")
            .env("RELAY_PAIR_TIMEOUT_SECS", "120")
            .env("RELAY_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", relay_bin.display()))?,
    );
    let tcp_proc = Proc(
        Command::new(&me)
            .args(["tcp-relay", "--listen", &tcp_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the tcp relay")?,
    );
    wait_port(ws_addr).await?;
    wait_port(tcp_addr).await?;
    let keys = Arc::new(KeySet::parse(KEYS)?);
    let mk = |kind, addr, pid| {
        Arc::new(Target {
            kind,
            addr,
            pid,
            keys: keys.clone(),
            sources: cli.sources.max(1),
            next_src: AtomicU64::new(0),
        })
    };
    let ws = mk(Kind::Ws, ws_addr, ws_proc.0.id());
    let tcp = mk(Kind::Tcp, tcp_addr, tcp_proc.0.id());
    let phases: Vec<&str> = cli.phases.split(',').map(str::trim).collect();
    println!(
        "relay-bench: {} cpus, relay {}, {} source addresses",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        relay_bin.display(),
        cli.sources
    );
    if phases.contains(&"idle") {
        idle(&ws, cli.idle_pairs).await?;
        idle(&tcp, cli.idle_pairs).await?;
    }
    if phases.contains(&"throughput") {
        let w = throughput(&ws, cli.stream_pairs, cli.secs).await?;
        let p = throughput(&tcp, cli.stream_pairs, cli.secs).await?;
        println!("throughput ratio ws/plain: {:.2}", w / p);
    }
    if phases.contains(&"active") {
        for t in [&ws, &tcp] {
            let (mut v, mbps, cpu) = active(
                t,
                "act",
                cli.active,
                cli.active_msg,
                cli.rate_mbps,
                cli.secs,
            )
            .await?;
            println!(
                "{:<16} active: {} sessions x {} Mbit/s ({} B msgs): delivered {:.0} Mbit/s, latency p50 {:.2} ms p99 {:.2} ms ({} samples), relay cpu {:.2} cores",
                t.kind.name(), cli.active, cli.rate_mbps, cli.active_msg, mbps, pct(&mut v, 0.5), pct(&mut v, 0.99), v.len(), cpu
            );
        }
    }
    if phases.contains(&"latency") {
        let n = (cli.active / 2).max(1);
        for t in [&ws, &tcp] {
            let (mut v, mbps, cpu) = active(t, "lat", n, 1024, cli.rate_mbps, cli.secs).await?;
            println!(
                "{:<16} latency 1 KiB: {} sessions x {} Mbit/s: delivered {:.0} Mbit/s, p50 {:.3} ms p99 {:.3} ms ({} samples), relay cpu {:.2} cores",
                t.kind.name(), n, cli.rate_mbps, mbps, pct(&mut v, 0.5), pct(&mut v, 0.99), v.len(), cpu
            );
        }
    }
    drop(ws_proc);
    drop(tcp_proc);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
