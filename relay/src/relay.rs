//! The relay endpoint: authenticate `GET /v1/relay/{session}` before the upgrade, then pair
//! the two sides of a session in one task and forward messages with one message in flight
//! per direction.

use crate::budget::{Charge, Metered};
use crate::conn::Conn;
use crate::http::{self, Request};
use crate::log;
use crate::spill::Spill;
use crate::state::{
    idx, now_secs, Cmd, ConnGuard, Entry, SessionStats, Shared, Side, State, TaskHandle, Ws,
};
use crate::token::Role;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Close codes the relay itself sends (documented in relay/README.md).
pub mod codes {
    /// The waiting side's peer did not connect in time.
    pub const PEER_TIMEOUT: u16 = 4408;
    /// This connection was replaced by a newer one for the same session and role.
    pub const REPLACED: u16 = 4409;
    /// The session was closed through the control API.
    pub const CLOSED_BY_API: u16 = 4410;
}

/// Subprotocol the relay selects when a client offers it.
pub const SUBPROTOCOL: &str = "reemo-relay.v1";
/// Prefix of the subprotocol entry that carries the token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "token.";

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }
}

/// Handles a request for `/v1/relay/{session}`: refuse with an HTTP status, or upgrade and
/// hand the connection to the session's task.
pub async fn handle(
    shared: Arc<Shared>,
    mut conn: Conn,
    req: Request,
    session: &str,
    peer: SocketAddr,
    mut guard: ConnGuard,
) {
    let (status, reason, role) = match admit(&shared, &req, session) {
        Ok(role) => (101, "", role),
        Err((status, reason)) => (status, reason, Role::Agent),
    };
    if status != 101 {
        shared.metrics.reject(reason);
        log!(
            Info,
            "relay refused",
            session = session,
            peer = peer.to_string(),
            status = status,
            reason = reason
        );
        let extra = if status == 426 {
            "Sec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        let body = serde_json::json!({ "error": reason }).to_string();
        let _ = http::respond(
            &mut conn,
            status,
            "application/json",
            extra,
            body.as_bytes(),
        )
        .await;
        return;
    }
    let key = req.header("sec-websocket-key").unwrap_or_default();
    let protocol = select_protocol(&req);
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.trim().as_bytes())
    );
    if let Some(p) = protocol {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    let written = timeout(
        Duration::from_secs(shared.cfg.handshake_timeout_secs),
        async {
            conn.write_all(resp.as_bytes()).await?;
            conn.flush().await
        },
    )
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    guard.set_ws();
    let charge = Charge::new(shared.budget.clone());
    let ws = WebSocketStream::from_partially_read(
        Spill::new(
            Metered::new(conn, charge.clone()),
            shared.cfg.read_buffer_bytes,
        ),
        req.rest,
        WsRole::Server,
        Some(shared.ws_config),
    )
    .await;
    log!(
        Debug,
        "relay connected",
        session = session,
        role = role.as_str(),
        peer = peer.to_string()
    );
    let side = Box::new(Side {
        ws,
        role,
        peer,
        charge,
        pending: None,
        _guard: guard,
    });
    join(shared, session.to_string(), side).await;
}

/// Checks the request before the upgrade; `Err((status, reason))` refuses it.
fn admit(shared: &Shared, req: &Request, session: &str) -> Result<Role, (u16, &'static str)> {
    if req.method != "GET" || !crate::token::valid_id(session) {
        return Err((400, "bad_request"));
    }
    if !req.header_has("upgrade", "websocket")
        || !req.header_has("connection", "upgrade")
        || req.header("sec-websocket-key").is_none()
    {
        return Err((400, "bad_request"));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err((426, "bad_request"));
    }
    let want_role = match req.query_param("role") {
        None => None,
        Some(r) => Some(Role::parse(r).ok_or((400, "bad_request"))?),
    };
    let token = req
        .query_param("token")
        .filter(|t| !t.is_empty())
        .or_else(|| token_from_protocols(req))
        .ok_or((401, "missing_token"))?;
    let role = shared
        .keys
        .verify(token, session, want_role, now_secs())
        .map_err(|e| (e.status(), e.reason()))?;
    let map = shared.sessions();
    let entry = map.get(session);
    if entry
        .and_then(|e| e.revoked_until)
        .is_some_and(|t| t > now_secs())
    {
        return Err((410, "session_closed"));
    }
    if shared.is_draining() && entry.is_none_or(|e| e.task.is_none()) {
        return Err((503, "draining"));
    }
    Ok(role)
}

fn protocols(req: &Request) -> impl Iterator<Item = &str> {
    req.headers
        .iter()
        .filter(|(k, _)| k == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
}

fn token_from_protocols(req: &Request) -> Option<&str> {
    protocols(req).find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
}

/// The subprotocol to answer: ours if offered, else the token entry (browsers require an
/// answer when they offered any), else none.
fn select_protocol(req: &Request) -> Option<&str> {
    let mut token_entry = None;
    for p in protocols(req) {
        if p == SUBPROTOCOL {
            return Some(p);
        }
        if p.starts_with(TOKEN_PROTOCOL_PREFIX) && token_entry.is_none() {
            token_entry = Some(p);
        }
    }
    token_entry
}

/// Hands `side` to the running task of its session, or becomes that task.
async fn join(shared: Arc<Shared>, session: String, mut side: Box<Side>) {
    for _ in 0..8 {
        let action = {
            let mut map = shared.sessions();
            let e = map
                .entry(session.clone())
                .or_insert_with(|| Entry::new(None));
            match &e.task {
                Some(t) => Err(t.tx.clone()),
                None => {
                    let (tx, rx) = mpsc::channel(2);
                    let gen = shared.next_gen();
                    e.task = Some(TaskHandle { gen, tx });
                    e.state = State::Waiting;
                    e.since = now_secs();
                    e.connected = [false, false];
                    e.connected[idx(side.role)] = true;
                    Ok((gen, rx, e.stats.clone()))
                }
            }
        };
        match action {
            Err(tx) => match tx.send(Cmd::Join(side)).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(Cmd::Join(s))) => side = s,
                Err(_) => return,
            },
            Ok((gen, rx, stats)) => {
                let task = SessionTask {
                    shared: shared.clone(),
                    id: session,
                    gen,
                    stats,
                };
                // a task of its own, sized for the session alone: this connection's task
                // (sized for the TLS and HTTP handshake too, 3.5 KiB) ends here (1.2 KiB
                // less per paired session)
                tokio::spawn(task.run(side, rx));
                return;
            }
        }
        tokio::task::yield_now().await;
    }
    log!(Warn, "could not join session", session = session);
}

/// The task that owns the connections of one session.
struct SessionTask {
    shared: Arc<Shared>,
    id: String,
    gen: u64,
    stats: Arc<SessionStats>,
}

/// How a wait for the peer ended.
enum WaitEnd {
    Join(Box<Side>),
    Close(u16, &'static str),
    Timeout,
    /// The waiting client left (close frame or lost connection).
    Gone,
    TooBig,
}

/// How a direction of a paired session ended.
#[derive(Debug)]
enum PumpEnd {
    SourceClosed(Option<CloseFrame>),
    SourceGone,
    SourceTooBig,
    SourceProtocol,
    /// The sender stopped inside a message while the in-flight budget was spent.
    SourceStuck,
    SinkStalled,
    SinkGone,
}

/// How a paired phase ended.
enum PairEnd {
    Join(Box<Side>),
    Close(u16, &'static str),
    Idle,
    Pump(Role, PumpEnd),
}

/// What to do with one side when the session ends.
enum Fate {
    /// Send this close frame, then wait briefly for the echo.
    Close(Option<CloseFrame>),
    /// It closed first: flush the echo tungstenite queued, then drop.
    Echo,
    /// Drop the TCP connection at once.
    Drop,
}

impl SessionTask {
    async fn run(self, first: Box<Side>, mut rx: mpsc::Receiver<Cmd>) {
        let m = &self.shared.metrics;
        let mut slots: [Option<Box<Side>>; 2] = [None, None];
        let r0 = idx(first.role);
        slots[r0] = Some(first);
        let pair_timeout = Duration::from_secs(self.shared.cfg.pair_timeout_secs);
        let mut deadline = Instant::now() + pair_timeout;
        let mut gauge_paired = false;
        m.sessions_waiting.fetch_add(1, Relaxed);
        loop {
            let connected = [slots[0].is_some(), slots[1].is_some()];
            let paired = connected[0] && connected[1];
            if paired != gauge_paired {
                if paired {
                    m.sessions_waiting.fetch_sub(1, Relaxed);
                    m.sessions_paired.fetch_add(1, Relaxed);
                    m.pairings.fetch_add(1, Relaxed);
                    log!(Info, "session paired", session = self.id);
                } else {
                    m.sessions_paired.fetch_sub(1, Relaxed);
                    m.sessions_waiting.fetch_add(1, Relaxed);
                }
                gauge_paired = paired;
            }
            let state = if paired {
                State::Paired
            } else {
                State::Waiting
            };
            self.shared.set_state(&self.id, self.gen, state, connected);
            if let [Some(a), Some(u)] = &mut slots {
                match self.paired(a, u, &mut rx).await {
                    PairEnd::Join(side) => self.replace(&mut slots, side),
                    PairEnd::Close(code, reason) => {
                        let f = || Fate::Close(Some(close_frame(code, reason)));
                        self.finish(slots, [f(), f()]).await;
                        break;
                    }
                    PairEnd::Idle => {
                        m.idle_closed.fetch_add(1, Relaxed);
                        let f = || Fate::Close(Some(close_frame(1001, "idle timeout")));
                        self.finish(slots, [f(), f()]).await;
                        break;
                    }
                    PairEnd::Pump(src, end) => {
                        log!(
                            Info,
                            "session ended",
                            session = self.id,
                            from = src.as_str(),
                            how = format!("{end:?}")
                        );
                        let (src_fate, dst_fate) = fates(&self.shared, end);
                        let mut fates = [Fate::Drop, Fate::Drop];
                        fates[idx(src)] = src_fate;
                        fates[idx(src.other())] = dst_fate;
                        self.finish(slots, fates).await;
                        break;
                    }
                }
            } else {
                let r = if slots[0].is_some() { 0 } else { 1 };
                let Some(side) = slots[r].as_mut() else {
                    break;
                };
                match wait_peer(side, &mut rx, deadline).await {
                    WaitEnd::Join(new) => {
                        if new.role == side.role {
                            deadline = Instant::now() + pair_timeout;
                        }
                        self.replace(&mut slots, new);
                    }
                    WaitEnd::Close(code, reason) => {
                        let f = || Fate::Close(Some(close_frame(code, reason)));
                        self.finish(slots, [f(), f()]).await;
                        break;
                    }
                    WaitEnd::Timeout => {
                        m.pair_timeouts.fetch_add(1, Relaxed);
                        log!(Info, "peer did not connect in time", session = self.id);
                        let f = || {
                            Fate::Close(Some(close_frame(
                                codes::PEER_TIMEOUT,
                                "peer did not connect in time",
                            )))
                        };
                        self.finish(slots, [f(), f()]).await;
                        break;
                    }
                    WaitEnd::TooBig => {
                        m.too_big.fetch_add(1, Relaxed);
                        let f = || Fate::Close(Some(close_frame(1009, "message too big")));
                        self.finish(slots, [f(), f()]).await;
                        break;
                    }
                    WaitEnd::Gone => {
                        self.finish(slots, [Fate::Echo, Fate::Echo]).await;
                        break;
                    }
                }
            }
        }
        if gauge_paired {
            m.sessions_paired.fetch_sub(1, Relaxed);
        } else {
            m.sessions_waiting.fetch_sub(1, Relaxed);
        }
        self.release(rx);
    }

    /// Puts `new` in its slot; a predecessor of the same role is closed with 4409.
    fn replace(&self, slots: &mut [Option<Box<Side>>; 2], new: Box<Side>) {
        let r = idx(new.role);
        log!(
            Info,
            "side connected",
            session = self.id,
            role = new.role.as_str(),
            peer = new.peer.to_string()
        );
        if let Some(old) = slots[r].replace(new) {
            old.charge.message_read();
            old.charge.release();
            self.shared.metrics.replaced.fetch_add(1, Relaxed);
            log!(
                Info,
                "side replaced",
                session = self.id,
                role = old.role.as_str()
            );
            tokio::spawn(close_side(
                old,
                Fate::Close(Some(close_frame(
                    codes::REPLACED,
                    "replaced by a newer connection",
                ))),
            ));
        }
    }

    /// Closes the remaining sides concurrently.
    async fn finish(&self, slots: [Option<Box<Side>>; 2], fates: [Fate; 2]) {
        // what was read and not forwarded is dropped: give it back to the budget now rather
        // than after the close handshakes
        for side in slots.iter().flatten() {
            side.charge.message_read();
            side.charge.release();
        }
        let [a, u] = slots;
        let [fa, fu] = fates;
        let ca = async {
            if let Some(a) = a {
                close_side(a, fa).await
            }
        };
        let cu = async {
            if let Some(u) = u {
                close_side(u, fu).await
            }
        };
        tokio::join!(ca, cu);
    }

    /// Clears this task from the registry; connections that raced in are joined again.
    fn release(&self, mut rx: mpsc::Receiver<Cmd>) {
        {
            let mut map = self.shared.sessions();
            if let Some(e) = map.get_mut(&self.id) {
                if e.task.as_ref().is_some_and(|t| t.gen == self.gen) {
                    e.task = None;
                    e.state = State::Closed;
                    e.since = now_secs();
                    e.connected = [false, false];
                    if e.disposable(now_secs()) {
                        map.remove(&self.id);
                    }
                }
            }
        }
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Join(side) = cmd {
                tokio::spawn(join(self.shared.clone(), self.id.clone(), side));
            }
        }
    }

    /// Forwards both ways until one direction ends, a command arrives or the pair idles.
    async fn paired(&self, a: &mut Side, u: &mut Side, rx: &mut mpsc::Receiver<Cmd>) -> PairEnd {
        let start = Instant::now();
        let last = AtomicU64::new(0);
        let cfg = &self.shared.cfg;
        let stall = Duration::from_secs(cfg.stall_timeout_secs);
        let idle = Duration::from_secs(cfg.idle_timeout_secs);
        let m = &self.shared.metrics;
        let (mut a_tx, mut a_rx) = (&mut a.ws).split();
        let (mut u_tx, mut u_rx) = (&mut u.ws).split();
        let read_size = cfg.read_buffer_bytes as u64;
        let ab = pump(
            &mut a_rx,
            &mut u_tx,
            (a.pending.take(), &a.charge, read_size),
            [
                &self.stats.agent_to_user,
                &m.bytes_agent_to_user,
                &m.messages,
            ],
            stall,
            (&last, start),
        );
        let ba = pump(
            &mut u_rx,
            &mut a_tx,
            (u.pending.take(), &u.charge, read_size),
            [
                &self.stats.user_to_agent,
                &m.bytes_user_to_agent,
                &m.messages,
            ],
            stall,
            (&last, start),
        );
        let idle_watch = async {
            loop {
                let last_ms = last.load(Relaxed);
                let due = start + Duration::from_millis(last_ms) + idle;
                tokio::time::sleep_until(due).await;
                if last.load(Relaxed) == last_ms {
                    return;
                }
            }
        };
        tokio::select! {
            end = ab => PairEnd::Pump(Role::Agent, end),
            end = ba => PairEnd::Pump(Role::User, end),
            cmd = rx.recv() => match cmd {
                Some(Cmd::Join(side)) => PairEnd::Join(side),
                Some(Cmd::Close(code, reason)) => PairEnd::Close(code, reason),
                None => PairEnd::Close(1001, "relay shutting down"),
            },
            () = idle_watch => PairEnd::Idle,
        }
    }
}

/// Close frames for the source and the destination of a direction that ended.
fn fates(shared: &Shared, end: PumpEnd) -> (Fate, Fate) {
    let m = &shared.metrics;
    match end {
        PumpEnd::SourceClosed(f) => (Fate::Echo, Fate::Close(f)),
        PumpEnd::SourceGone => (
            Fate::Drop,
            Fate::Close(Some(close_frame(1001, "peer went away"))),
        ),
        PumpEnd::SourceTooBig => {
            m.too_big.fetch_add(1, Relaxed);
            let f = || Fate::Close(Some(close_frame(1009, "message too big")));
            (f(), f())
        }
        PumpEnd::SourceProtocol => (
            Fate::Close(Some(close_frame(1002, "protocol error"))),
            Fate::Close(Some(close_frame(1001, "peer protocol error"))),
        ),
        PumpEnd::SourceStuck => {
            m.stalled.fetch_add(1, Relaxed);
            (
                Fate::Close(Some(close_frame(1001, "too slow"))),
                Fate::Close(Some(close_frame(1001, "peer too slow"))),
            )
        }
        PumpEnd::SinkStalled => {
            m.stalled.fetch_add(1, Relaxed);
            (
                Fate::Close(Some(close_frame(1001, "peer too slow"))),
                Fate::Drop,
            )
        }
        PumpEnd::SinkGone => (
            Fate::Close(Some(close_frame(1001, "peer went away"))),
            Fate::Drop,
        ),
    }
}

/// Relays messages from `rx` to `tx`, one at a time: the next message is read only once the
/// previous one has been written to the destination socket, which then releases its bytes
/// from the in-flight budget.
async fn pump(
    rx: &mut SplitStream<&mut Ws>,
    tx: &mut SplitSink<&mut Ws, Message>,
    (pending, charge, read_size): (Option<Message>, &Charge, u64),
    counters: [&AtomicU64; 3],
    stall: Duration,
    (last, start): (&AtomicU64, Instant),
) -> PumpEnd {
    let mut next = pending;
    let stuck = stuck_sender(charge, stall, read_size);
    tokio::pin!(stuck);
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                r = rx.next() => match r {
                    None => return PumpEnd::SourceGone,
                    Some(Err(e)) => return classify(&e),
                    Some(Ok(m)) => {
                        charge.message_read();
                        m
                    }
                },
                () = &mut stuck => return PumpEnd::SourceStuck,
            },
        };
        let len = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            Message::Close(f) => return PumpEnd::SourceClosed(f.clone()),
            // Pings are answered per hop by tungstenite; pongs and raw frames stop here.
            _ => {
                charge.release();
                continue;
            }
        };
        last.store(start.elapsed().as_millis() as u64, Relaxed);
        charge.set_forwarding(true);
        let sent = timeout(stall, tx.send(msg)).await;
        charge.set_forwarding(false);
        match sent {
            Err(_) => return PumpEnd::SinkStalled,
            Ok(Err(_)) => return PumpEnd::SinkGone,
            Ok(Ok(())) => {
                charge.release();
                counters[0].fetch_add(len as u64, Relaxed);
                counters[1].fetch_add(len as u64, Relaxed);
                counters[2].fetch_add(1, Relaxed);
            }
        }
    }
}

/// Ends when, while the in-flight budget is spent, the sender holds part of a message and
/// sent nothing for a whole `period`: it would keep its share of the budget (and with it
/// everyone's reading paused) for as long as it likes.
async fn stuck_sender(charge: &Charge, period: Duration, read_size: u64) {
    let mut seen = charge.read_total();
    loop {
        tokio::time::sleep(period).await;
        let now = charge.read_total();
        if now == seen && charge.budget().exhausted(read_size) && charge.holds_partial_message() {
            return;
        }
        seen = now;
    }
}

fn classify(e: &WsError) -> PumpEnd {
    match e {
        WsError::Capacity(_) => PumpEnd::SourceTooBig,
        // End of stream (FIN) without a close frame: the peer went away, it did not break
        // the protocol.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => PumpEnd::SourceGone,
        WsError::Protocol(_) | WsError::Utf8(_) => PumpEnd::SourceProtocol,
        _ => PumpEnd::SourceGone,
    }
}

/// Waits for the peer while answering pings; one early message is kept for the peer.
async fn wait_peer(side: &mut Side, rx: &mut mpsc::Receiver<Cmd>, deadline: Instant) -> WaitEnd {
    loop {
        tokio::select! {
            cmd = rx.recv() => return match cmd {
                Some(Cmd::Join(s)) => WaitEnd::Join(s),
                Some(Cmd::Close(code, reason)) => WaitEnd::Close(code, reason),
                None => WaitEnd::Close(1001, "relay shutting down"),
            },
            () = tokio::time::sleep_until(deadline) => return WaitEnd::Timeout,
            msg = side.ws.next(), if side.pending.is_none() => match msg {
                None => return WaitEnd::Gone,
                Some(Err(e)) => return match classify(&e) {
                    PumpEnd::SourceTooBig => WaitEnd::TooBig,
                    _ => WaitEnd::Gone,
                },
                Some(Ok(Message::Close(_))) => return WaitEnd::Gone,
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    // its bytes stay charged until the message is forwarded
                    side.charge.message_read();
                    side.pending = Some(m);
                }
                Some(Ok(_)) => {
                    side.charge.message_read();
                    side.charge.release();
                }
            },
        }
    }
}

/// Ends one connection according to `fate`, bounded in time.
async fn close_side(mut side: Box<Side>, fate: Fate) {
    let limit = Duration::from_secs(2);
    match fate {
        Fate::Drop => {}
        Fate::Echo => {
            let _ = timeout(limit, async {
                while let Some(Ok(_)) = side.ws.next().await {}
            })
            .await;
        }
        Fate::Close(frame) => {
            let _ = timeout(limit, async {
                if side.ws.close(frame).await.is_ok() {
                    while let Some(Ok(_)) = side.ws.next().await {}
                }
            })
            .await;
        }
    }
    let _ = timeout(Duration::from_millis(200), side.ws.get_mut().shutdown()).await;
}
