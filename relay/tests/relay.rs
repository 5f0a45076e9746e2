//! Integration tests of pairing and forwarding: the real binary on 127.0.0.1 and real
//! tokio-tungstenite clients on both sides.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use ws_relay_server::token::Role;

async fn exchange(a: &mut Client, u: &mut Client, n: usize) {
    for i in 0..n {
        send(a, Message::text(format!("a{i}"))).await;
        send(u, Message::binary(vec![i as u8; i + 1])).await;
    }
    for i in 0..n {
        assert_eq!(recv(u).await, Message::text(format!("a{i}")));
        assert_eq!(recv(a).await, Message::binary(vec![i as u8; i + 1]));
    }
}

#[tokio::test]
async fn pairs_in_both_orders_and_preserves_order() {
    let relay = Relay::start(&[]);
    // agent first
    let mut a = relay.connect("order1", Role::Agent).await;
    let mut u = relay.connect("order1", Role::User).await;
    exchange(&mut a, &mut u, 200).await;
    // user first, and a message sent while waiting is delivered after pairing
    let mut u2 = relay.connect("order2", Role::User).await;
    send(&mut u2, Message::text("early")).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut a2 = relay.connect("order2", Role::Agent).await;
    assert_eq!(recv(&mut a2).await, Message::text("early"));
    exchange(&mut a2, &mut u2, 50).await;
    assert_eq!(relay.metric("relay_sessions_paired"), 2);
    let (_, body) = relay.http("GET", "/metrics", None, "").unwrap();
    assert!(body.contains("relay_bytes_total{direction=\"agent_to_user\"}"));
}

#[tokio::test]
async fn token_in_subprotocol_is_accepted_and_answered() {
    let relay = Relay::start(&[]);
    let t = relay.token("proto", Role::User);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/v1/relay/proto?role=user", relay.addr),
    )
    .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("reemo-relay.v1, token.{t}").parse().unwrap(),
    );
    let (mut u, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("reemo-relay.v1")
    );
    let mut a = relay.connect("proto", Role::Agent).await;
    send(&mut a, Message::text("hi")).await;
    assert_eq!(recv(&mut u).await, Message::text("hi"));
}

#[tokio::test]
async fn messages_up_to_the_limits_pass_and_oversize_frames_close_1009() {
    let relay = Relay::start(&[]);
    let mut a = relay.connect("big", Role::Agent).await;
    let mut u = relay.connect("big", Role::User).await;
    // one frame at the frame limit
    let frame = (0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    send(&mut a, Message::binary(frame.clone())).await;
    assert_eq!(recv(&mut u).await, Message::binary(frame));
    // a 4 MiB message in four 1 MiB fragments
    let whole = (0..4 << 20).map(|i| (i % 253) as u8).collect::<Vec<u8>>();
    for (i, chunk) in whole.chunks(1 << 20).enumerate() {
        let op = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fin = i == 3;
        u.send(Message::Frame(Frame::message(chunk.to_vec(), op, fin)))
            .await
            .unwrap();
    }
    assert_eq!(recv(&mut a).await, Message::binary(whole));
    // one byte over the frame limit
    send(&mut a, Message::binary(vec![7u8; (1 << 20) + 1])).await;
    assert_eq!(recv_close(&mut a).await.0, 1009);
    assert_eq!(recv_close(&mut u).await.0, 1009);
    assert_eq!(relay.metric("relay_too_big_total"), 1);
}

#[tokio::test]
async fn messages_over_the_message_limit_close_1009() {
    let relay = Relay::start(&[("RELAY_MAX_MESSAGE_BYTES", "2097152")]);
    let mut a = relay.connect("bigmsg", Role::Agent).await;
    let mut u = relay.connect("bigmsg", Role::User).await;
    for i in 0..3 {
        let op = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let _ = u
            .send(Message::Frame(Frame::message(
                vec![1u8; 1 << 20],
                op,
                i == 2,
            )))
            .await;
    }
    assert_eq!(recv_close(&mut u).await.0, 1009);
    assert_eq!(recv_close(&mut a).await.0, 1009);
}

#[tokio::test]
async fn close_code_and_reason_propagate_both_ways() {
    let relay = Relay::start(&[]);
    for (i, (closer_is_agent, code, reason)) in [(true, 4000u16, "bye"), (false, 1000, "done")]
        .into_iter()
        .enumerate()
    {
        let s = format!("close{i}");
        let mut a = relay.connect(&s, Role::Agent).await;
        let mut u = relay.connect(&s, Role::User).await;
        exchange(&mut a, &mut u, 3).await;
        let (closer, other) = if closer_is_agent {
            (&mut a, &mut u)
        } else {
            (&mut u, &mut a)
        };
        closer
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
            .await
            .unwrap();
        assert_eq!(recv_close(other).await, (code, reason.to_string()));
        // the closer gets its echo
        assert_eq!(recv_close(closer).await.0, code);
    }
}

/// Issue 12: a peer whose TCP connection ends (FIN) without a close frame was reported to
/// the other side as "peer protocol error"; it went away.
#[tokio::test]
async fn peer_ending_tcp_without_close_frame_is_reported_as_gone() {
    let relay = Relay::start(&[]);
    for (i, how) in [std::net::Shutdown::Write, std::net::Shutdown::Both]
        .into_iter()
        .enumerate()
    {
        let s = format!("fin{i}");
        let mut a = relay.connect(&s, Role::Agent).await;
        let t = relay.token(&s, Role::User);
        let target = format!("/v1/relay/{s}?role=user&token={t}");
        let addr = relay.addr;
        let mut raw = tokio::task::spawn_blocking(move || raw_ws_connect(addr, &target))
            .await
            .unwrap();
        raw_ws_text(&mut raw, "hello from a raw client");
        assert_eq!(recv(&mut a).await, Message::text("hello from a raw client"));
        raw.shutdown(how).unwrap();
        assert_eq!(
            recv_close(&mut a).await,
            (1001, "peer went away".to_string()),
            "{how:?}"
        );
        drop(raw);
    }
}

#[tokio::test]
async fn pings_are_answered_per_hop() {
    let relay = Relay::start(&[]);
    let mut a = relay.connect("ping", Role::Agent).await;
    send(&mut a, Message::Ping(b"w".to_vec().into())).await;
    // while waiting
    assert_eq!(recv_any(&mut a).await, Message::Pong(b"w".to_vec().into()));
    let mut u = relay.connect("ping", Role::User).await;
    send(&mut a, Message::Ping(b"p".to_vec().into())).await;
    send(&mut a, Message::text("after ping")).await;
    assert_eq!(recv_any(&mut a).await, Message::Pong(b"p".to_vec().into()));
    // the ping itself is not forwarded: the user sees the text first
    assert_eq!(recv_any(&mut u).await, Message::text("after ping"));
}

async fn recv_any(ws: &mut Client) -> Message {
    use futures_util::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("timed out")
        .expect("stream ended")
        .expect("read error")
}

#[tokio::test]
async fn reconnecting_side_replaces_its_predecessor() {
    let relay = Relay::start(&[]);
    // while paired
    let mut a = relay.connect("re", Role::Agent).await;
    let mut u = relay.connect("re", Role::User).await;
    exchange(&mut a, &mut u, 2).await;
    let mut u2 = relay.connect("re", Role::User).await;
    assert_eq!(recv_close(&mut u).await.0, 4409);
    exchange(&mut a, &mut u2, 5).await;
    // while waiting
    let mut w1 = relay.connect("re2", Role::Agent).await;
    let mut w2 = relay.connect("re2", Role::Agent).await;
    assert_eq!(recv_close(&mut w1).await.0, 4409);
    let mut wu = relay.connect("re2", Role::User).await;
    exchange(&mut w2, &mut wu, 3).await;
    assert_eq!(relay.metric("relay_replaced_total"), 2);
}

#[tokio::test]
async fn waiting_side_times_out_cleanly() {
    let relay = Relay::start(&[("RELAY_PAIR_TIMEOUT_SECS", "1")]);
    let mut a = relay.connect("lonely", Role::Agent).await;
    assert_eq!(relay.metric_eventually("relay_sessions_waiting", 1), 1);
    let t = std::time::Instant::now();
    let (code, _) = recv_close(&mut a).await;
    assert_eq!(code, 4408);
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    // finish the closing handshake, as a browser does
    use futures_util::StreamExt;
    while let Some(Ok(_)) = a.next().await {}
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(relay.metric_eventually("relay_sessions_waiting", 0), 0);
    assert_eq!(relay.metric("relay_pair_timeouts_total"), 1);
    assert_eq!(relay.metric("relay_websocket_connections"), 0);
}

#[tokio::test]
async fn idle_paired_session_is_closed() {
    let relay = Relay::start(&[("RELAY_IDLE_TIMEOUT_SECS", "1")]);
    let mut a = relay.connect("idle", Role::Agent).await;
    let mut u = relay.connect("idle", Role::User).await;
    exchange(&mut a, &mut u, 1).await;
    assert_eq!(recv_close(&mut a).await, (1001, "idle timeout".to_string()));
    assert_eq!(recv_close(&mut u).await.0, 1001);
}
