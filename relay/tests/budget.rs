//! Integration test of the global in-flight budget (issue 12): stalled readers whose peers
//! send large messages cost up to 1.5 × `max_message_bytes` each; with a budget, many such
//! sessions hold at most budget + one message, and nothing is lost once readers resume.
//! The real binary on 127.0.0.1, tokio-tungstenite clients on both sides.

mod common;

use common::*;
use futures_util::SinkExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use ws_relay_server::token::Role;

const BUDGET: u64 = 256 << 10;
const MAX_MESSAGE: u64 = 256 << 10;
const SESSIONS: u32 = 6;
const MESSAGES: u32 = 40;
const MESSAGE_LEN: usize = 100_000;

/// Message `seq` of session `s`: its numbers first, then a pattern that depends on both.
fn message(s: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(MESSAGE_LEN);
    m.extend_from_slice(&s.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend((8..MESSAGE_LEN).map(|k| ((k as u32 + s * 31 + seq * 7) % 251) as u8));
    m
}

/// A metric read over a fresh connection (usable from a plain thread).
fn metric_at(addr: SocketAddr, name: &str) -> Option<u64> {
    let (st, body) = raw_http(addr, "GET", "/metrics", None, "", "").ok()?;
    if st != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A reader whose socket has a small receive buffer, so that the kernel holds little of
/// what the relay sends it while it does not read.
async fn small_window_reader(relay: &Relay, session: &str) -> Client {
    let t = relay.token(session, Role::User);
    let req = relay
        .url(session, Role::User, &t)
        .into_client_request()
        .unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 << 10).unwrap();
    let tcp = sock.connect(relay.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(client_config()))
        .await
        .expect("reader upgrade");
    ws
}

#[tokio::test]
async fn stalled_readers_hold_at_most_the_budget_and_lose_nothing() {
    let budget = BUDGET.to_string();
    let max = MAX_MESSAGE.to_string();
    let relay = Relay::start(&[
        ("RELAY_MAX_BYTES_IN_FLIGHT", &budget),
        ("RELAY_MAX_MESSAGE_BYTES", &max),
        ("RELAY_MAX_FRAME_BYTES", &max),
        // readers stall on purpose: they must not be dropped for it
        ("RELAY_STALL_TIMEOUT_SECS", "120"),
        ("RELAY_IDLE_TIMEOUT_SECS", "120"),
    ]);
    let (mut readers, mut senders) = (Vec::new(), Vec::new());
    for s in 0..SESSIONS {
        let id = format!("budget{s}");
        readers.push(small_window_reader(&relay, &id).await);
        senders.push(relay.connect(&id, Role::Agent).await);
    }
    // the gauge is sampled all along, from a thread of its own (bounded in time)
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (addr, stop) = (relay.addr, stop.clone());
        std::thread::spawn(move || {
            let (mut max_seen, mut samples) = (0u64, 0u32);
            let t = Instant::now();
            while !stop.load(SeqCst) && t.elapsed() < Duration::from_secs(120) {
                if let Some(v) = metric_at(addr, "relay_bytes_in_flight") {
                    max_seen = max_seen.max(v);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (max_seen, samples)
        })
    };
    // fast senders: as many messages as the relay takes, each send bounded in time
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| {
            tokio::spawn(async move {
                for seq in 0..MESSAGES {
                    let m = Message::binary(message(s as u32, seq));
                    match tokio::time::timeout(Duration::from_secs(60), ws.send(m)).await {
                        Ok(Ok(())) => {}
                        other => return Err(format!("session {s}: send {seq}: {other:?}")),
                    }
                }
                Ok(ws)
            })
        })
        .collect();
    // wait (bounded) until the relay has paused reading for the budget
    let t = Instant::now();
    loop {
        if relay.metric("relay_budget_paused_total") > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "reading was never paused for the budget (in flight: {})",
            relay.metric("relay_bytes_in_flight")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // let the senders push against the closed windows a little longer
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relay.metric("relay_bytes_in_flight") <= BUDGET + MAX_MESSAGE);
    // readers resume (all at once: while the budget is spent, a session whose reader reads
    // waits for the stalled ones too): every message arrives, whole and in order
    let reading: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(s, mut r)| {
            tokio::spawn(async move {
                for seq in 0..MESSAGES {
                    let got = recv(&mut r).await;
                    assert!(
                        got == Message::binary(message(s as u32, seq)),
                        "session {s}: message {seq} differs (len {})",
                        got.len()
                    );
                }
                r
            })
        })
        .collect();
    let mut readers = Vec::new();
    for r in reading {
        readers.push(r.await.expect("reader"));
    }
    let mut senders = Vec::new();
    for t in tasks {
        senders.push(t.await.unwrap().unwrap());
    }
    stop.store(true, SeqCst);
    let (max_seen, samples) = monitor.join().unwrap();
    eprintln!("in flight: max {max_seen} bytes over {samples} samples");
    assert!(samples > 0);
    assert!(
        max_seen <= BUDGET + MAX_MESSAGE,
        "bytes in flight reached {max_seen}, budget {BUDGET} + one message {MAX_MESSAGE}"
    );
    // everything was forwarded: nothing stays charged, nobody was dropped
    assert_eq!(relay.metric_eventually("relay_bytes_in_flight", 0), 0);
    assert_eq!(relay.metric("relay_stalled_total"), 0);
    assert_eq!(
        relay.metric("relay_messages_total"),
        (SESSIONS * MESSAGES) as u64
    );
    drop(senders);
    drop(readers);
}

/// A sender that stops inside a message would keep its share of a spent budget (and with it
/// everyone's reading paused) until the idle timeout; it is dropped after the stall timeout.
#[tokio::test]
async fn sender_stuck_inside_a_message_is_dropped_while_the_budget_is_spent() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let budget = BUDGET.to_string();
    let max = MAX_MESSAGE.to_string();
    let relay = Relay::start(&[
        ("RELAY_MAX_BYTES_IN_FLIGHT", &budget),
        ("RELAY_MAX_MESSAGE_BYTES", &max),
        ("RELAY_MAX_FRAME_BYTES", &max),
        ("RELAY_STALL_TIMEOUT_SECS", "2"),
    ]);
    let (mut a0, mut u0) = (
        relay.connect("stuck0", Role::Agent).await,
        relay.connect("stuck0", Role::User).await,
    );
    let (mut a1, mut u1) = (
        relay.connect("stuck1", Role::Agent).await,
        relay.connect("stuck1", Role::User).await,
    );
    let part = |fill: u8, len: usize, first: bool, fin: bool| {
        let op = if first {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        Message::Frame(Frame::message(vec![fill; len], op, fin))
    };
    // session 0 sends 260 KB of a message (under the 256 KiB limit) that never ends: the last
    // read buffers of it are read on the overdraft
    a0.send(part(0, 150_000, true, false)).await.unwrap();
    a0.send(part(0, 110_000, false, false)).await.unwrap();
    let t = Instant::now();
    while relay.metric("relay_bytes_in_flight") < 260_000 {
        assert!(t.elapsed() < Duration::from_secs(10), "260 KB never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // session 1's reading is paused by the budget, which session 0 holds
    a1.send(part(1, 100_000, true, false)).await.unwrap();
    let t = Instant::now();
    while relay.metric("relay_budget_paused_total") == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "session 1 never paused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // session 0 is dropped after the stall timeout, both sides told why
    assert_eq!(
        recv_close(&mut u0).await,
        (1001, "peer too slow".to_string())
    );
    assert_eq!(recv_close(&mut a0).await, (1001, "too slow".to_string()));
    // session 1 was only waiting for the budget: it goes on and its message arrives whole
    a1.send(part(1, 1_000, false, true)).await.unwrap();
    assert_eq!(recv(&mut u1).await, Message::binary(vec![1u8; 101_000]));
    assert_eq!(relay.metric_eventually("relay_bytes_in_flight", 0), 0);
    assert_eq!(relay.metric("relay_stalled_total"), 1);
}
