//! Integration tests of refusals before the upgrade (status and metric per reason), the
//! handshake deadline and the connection caps, against the real binary on 127.0.0.1.

mod common;

use common::*;
use std::io::Read;
use std::time::{Duration, Instant};
use ws_relay_server::token::{KeySet, Role};

#[tokio::test]
async fn bad_tokens_are_refused_with_status_and_metric() {
    let relay = Relay::start(&[]);
    let base = format!("ws://{}/v1/relay", relay.addr);
    let good = relay.token("s1", Role::Agent);
    let expired = relay.keys.mint("s1", Role::Agent, now() - 1);
    let tampered = good.replace(".agent.", ".user.");
    let unknown = KeySet::parse("k9=00112233445566778899aabbccddeeff")
        .unwrap()
        .mint("s1", Role::Agent, now() + 300);
    let cases = [
        (
            "no token",
            format!("{base}/s1?role=agent"),
            401,
            "missing_token",
        ),
        (
            "expired",
            format!("{base}/s1?role=agent&token={expired}"),
            401,
            "expired_token",
        ),
        (
            "wrong role",
            format!("{base}/s1?role=user&token={good}"),
            403,
            "role_mismatch",
        ),
        (
            "wrong session",
            format!("{base}/s2?role=agent&token={good}"),
            403,
            "bad_signature",
        ),
        (
            "tampered",
            format!("{base}/s1?token={tampered}"),
            403,
            "bad_signature",
        ),
        (
            "unknown key id",
            format!("{base}/s1?token={unknown}"),
            401,
            "unknown_key",
        ),
        (
            "malformed",
            format!("{base}/s1?token=v1.k2"),
            401,
            "malformed_token",
        ),
        (
            "bad role name",
            format!("{base}/s1?role=admin&token={good}"),
            400,
            "bad_request",
        ),
    ];
    for (name, url, status, reason) in cases {
        let before = relay.rejected(reason);
        assert_eq!(refused_status(&url, None).await, status, "{name}");
        assert_eq!(
            relay.rejected(reason),
            before + 1,
            "{name}: metric {reason}"
        );
    }
    // a tampered token in the subprotocol header is refused the same way
    assert_eq!(
        refused_status(
            &format!("{base}/s1"),
            Some(("Sec-WebSocket-Protocol", &format!("token.{tampered}")))
        )
        .await,
        403
    );
    // nothing was upgraded
    assert_eq!(relay.metric("relay_websocket_connections"), 0);
    // the good token still works
    let _ok = connect(&format!("{base}/s1?role=agent&token={good}")).await;
}

#[test]
fn half_handshake_is_dropped_within_the_timeout() {
    let relay = Relay::start(&[("RELAY_HANDSHAKE_TIMEOUT_SECS", "1")]);
    let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
    use std::io::Write;
    s.write_all(b"GET /v1/relay/x HTTP/1.1\r\nHost: slow\r\nUpgr")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the relay to close the connection");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(relay.rejected("handshake_timeout"), 1);
}

#[tokio::test]
async fn per_ip_cap_holds() {
    let relay = Relay::start(&[("RELAY_MAX_CONNECTIONS_PER_IP", "3")]);
    let _a = connect_under_cap(&relay, "cap1", Role::Agent).await;
    let _b = connect_under_cap(&relay, "cap2", Role::Agent).await;
    let _c = connect_under_cap(&relay, "cap3", Role::Agent).await;
    let t = relay.token("cap4", Role::Agent);
    assert_eq!(
        refused_status(&relay.url("cap4", Role::Agent, &t), None).await,
        429
    );
    drop(_c);
    // once one closes, there is room for the metrics request
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = relay.http("GET", "/healthz", None, "") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(relay.rejected("ip_cap") >= 1);
}

#[tokio::test]
async fn global_cap_holds() {
    let relay = Relay::start(&[("RELAY_MAX_CONNECTIONS", "2")]);
    let _a = connect_under_cap(&relay, "g1", Role::Agent).await;
    let _b = connect_under_cap(&relay, "g2", Role::Agent).await;
    let t3 = relay.token("g3", Role::Agent);
    assert_eq!(
        refused_status(&relay.url("g3", Role::Agent, &t3), None).await,
        503
    );
    drop(_b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(relay.rejected("global_cap") >= 1);
}
