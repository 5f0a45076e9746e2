//! Shared server state: configuration, keys, metrics, connection counts and the session
//! registry that pairs an agent with a user, with what the registry hands a session's task
//! (the commands and the connections, [`Side`]).

use crate::budget::{Budget, Charge, Metered};
use crate::config::Config;
use crate::conn::Conn;
use crate::metrics::Metrics;
use crate::spill::{self, Spill};
use crate::token::{KeySet, Role};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Most connections over a cap answered at once; more are closed without an answer.
pub const MAX_REFUSALS: usize = 64;

/// Everything the connection tasks share.
pub struct Shared {
    /// Effective configuration.
    pub cfg: Config,
    /// Token keys.
    pub keys: KeySet,
    /// Control API secret; `None` disables the control API.
    pub control_secret: Option<Vec<u8>>,
    /// Counters and gauges.
    pub metrics: Metrics,
    /// Sessions by id.
    pub sessions: Mutex<HashMap<String, Entry>>,
    /// Open connections per client IP.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Set on SIGTERM.
    pub draining: AtomicBool,
    /// WebSocket limits and buffer sizes.
    pub ws_config: WebSocketConfig,
    /// Set when TLS is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Bytes read from senders and not yet written to their peers.
    pub budget: Arc<Budget>,
    /// Connections over a cap that are being answered (TLS handshake, head, status).
    pub refusals: Arc<tokio::sync::Semaphore>,
    next_gen: AtomicU64,
}

/// Bytes relayed in one session.
#[derive(Default)]
pub struct SessionStats {
    /// Agent → user payload bytes.
    pub agent_to_user: AtomicU64,
    /// User → agent payload bytes.
    pub user_to_agent: AtomicU64,
}

/// Lifecycle state reported by the control API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Zero or one side connected.
    Waiting,
    /// Both sides connected.
    Paired,
    /// Ended (or deleted).
    Closed,
}

impl State {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Paired => "paired",
            State::Closed => "closed",
        }
    }
}

/// An upgraded client connection; its reads count against the in-flight budget.
pub type Ws = WebSocketStream<Spill<Metered<Conn>>>;

/// One authenticated, upgraded connection (built and driven by the relay endpoint).
pub struct Side {
    pub(crate) ws: Ws,
    pub(crate) role: Role,
    pub(crate) peer: SocketAddr,
    /// This connection's share of the in-flight budget (released once a message is forwarded).
    pub(crate) charge: Arc<Charge>,
    /// A message read while waiting for the peer (reading then pauses: backpressure).
    pub(crate) pending: Option<Message>,
    pub(crate) _guard: ConnGuard,
}

/// A command to the task that owns a session's connections.
pub enum Cmd {
    /// A new, authenticated connection for this session.
    Join(Box<Side>),
    /// Close everything with this code and reason (control API).
    Close(u16, &'static str),
}

/// Handle on the running task of a session.
pub struct TaskHandle {
    /// Generation, so a finished task only clears its own handle.
    pub gen: u64,
    /// Command channel.
    pub tx: mpsc::Sender<Cmd>,
}

/// A session in the registry.
pub struct Entry {
    /// Current state.
    pub state: State,
    /// Since when (unix seconds).
    pub since: u64,
    /// Which sides are connected: [agent, user].
    pub connected: [bool; 2],
    /// Token expiry for sessions created through the control API.
    pub api_expires: Option<u64>,
    /// Deleted through the control API: connections refused until then.
    pub revoked_until: Option<u64>,
    /// Byte counters.
    pub stats: Arc<SessionStats>,
    /// The running task, if any side is connected.
    pub task: Option<TaskHandle>,
}

impl Entry {
    /// A fresh entry in state waiting.
    pub fn new(api_expires: Option<u64>) -> Entry {
        Entry {
            state: State::Waiting,
            since: now_secs(),
            connected: [false, false],
            api_expires,
            revoked_until: None,
            stats: Arc::default(),
            task: None,
        }
    }

    /// True if the entry can be dropped now that no task runs.
    pub fn disposable(&self, now: u64) -> bool {
        self.task.is_none()
            && self.api_expires.is_none_or(|e| e <= now)
            && self.revoked_until.is_none_or(|e| e <= now)
    }
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        cfg: Config,
        keys: KeySet,
        control_secret: Option<Vec<u8>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Shared {
        let mut ws_config = WebSocketConfig::default();
        // socket reads of read_buffer_bytes go through Spill: tungstenite's own buffer,
        // kept for the connection's life, stays small
        ws_config.read_buffer_size = spill::PARSE_BYTES;
        ws_config.write_buffer_size = 0;
        ws_config.max_write_buffer_size = cfg.max_message_bytes + (64 << 10);
        ws_config.max_frame_size = Some(cfg.max_frame_bytes);
        ws_config.max_message_size = Some(cfg.max_message_bytes);
        let budget = Budget::new(cfg.max_bytes_in_flight, cfg.max_message_bytes as u64);
        Shared {
            budget,
            cfg,
            keys,
            control_secret,
            metrics: Metrics::default(),
            sessions: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            ws_config,
            tls,
            refusals: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
            next_gen: AtomicU64::new(1),
        }
    }

    /// Locks the registry (a poisoned lock is still usable: entries stay consistent).
    pub fn sessions(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new task generation.
    pub fn next_gen(&self) -> u64 {
        self.next_gen.fetch_add(1, Relaxed)
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Number of sessions with a running task.
    pub fn active_sessions(&self) -> usize {
        self.sessions()
            .values()
            .filter(|e| e.task.is_some())
            .count()
    }

    /// Records a state change of the session run by task `gen`.
    pub fn set_state(&self, id: &str, gen: u64, state: State, connected: [bool; 2]) {
        let mut map = self.sessions();
        if let Some(e) = map.get_mut(id) {
            if e.task.as_ref().is_some_and(|t| t.gen == gen) {
                if e.state != state {
                    e.since = now_secs();
                }
                e.state = state;
                e.connected = connected;
            }
        }
    }

    /// Drops finished entries whose expiry or revocation has passed.
    pub fn sweep(&self) {
        let now = now_secs();
        self.sessions().retain(|_, e| !e.disposable(now));
    }

    /// Tries to account a new connection from `ip`; `Err(reason)` if a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, &'static str> {
        let total = self.metrics.connections.fetch_add(1, Relaxed);
        if total as usize >= self.cfg.max_connections {
            self.metrics.connections.fetch_sub(1, Relaxed);
            return Err("global_cap");
        }
        let mut per = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per.entry(ip).or_insert(0);
        if *n >= self.cfg.max_connections_per_ip {
            drop(per);
            self.metrics.connections.fetch_sub(1, Relaxed);
            return Err("ip_cap");
        }
        *n += 1;
        Ok(ConnGuard {
            shared: self.clone(),
            ip,
            ws: false,
        })
    }
}

/// Keeps one connection counted; released on drop.
pub struct ConnGuard {
    /// The server state.
    pub shared: Arc<Shared>,
    ip: IpAddr,
    ws: bool,
}

impl ConnGuard {
    /// Marks the connection as an upgraded WebSocket.
    pub fn set_ws(&mut self) {
        if !self.ws {
            self.ws = true;
            self.shared.metrics.ws_connections.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let m = &self.shared.metrics;
        m.connections.fetch_sub(1, Relaxed);
        if self.ws {
            m.ws_connections.fetch_sub(1, Relaxed);
        }
        let mut per = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// Index of a role in `[agent, user]` arrays.
pub fn idx(r: Role) -> usize {
    match r {
        Role::Agent => 0,
        Role::User => 1,
    }
}
