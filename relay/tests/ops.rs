//! Integration tests of operations: control API, health, `healthcheck` and `probe`
//! subcommands, startup refusal without keys, drain on SIGTERM, bounded memory under a slow
//! reader. All against the real binary on 127.0.0.1.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use ws_relay_server::token::Role;

const BIN: &str = env!("CARGO_BIN_EXE_ws-relay-server");

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not json ({e}): {s}"))
}

#[tokio::test]
async fn control_api_creates_inspects_and_closes() {
    let relay = Relay::start(&[]);
    assert_eq!(relay.http("POST", "/v1/sessions", None, "").unwrap().0, 401);
    assert_eq!(
        relay
            .http("POST", "/v1/sessions", Some("wrong-secret-wrong"), "")
            .unwrap()
            .0,
        401
    );
    let (st, body) = relay
        .http("POST", "/v1/sessions", Some(SECRET), "{\"ttl_secs\":120}")
        .unwrap();
    assert_eq!(st, 201, "{body}");
    let v = json(&body);
    let id = v["id"].as_str().unwrap().to_string();
    assert!(v["expires_at"].as_u64().unwrap() >= now() + 100);
    let url = |r: &str| {
        format!(
            "{}&token={}",
            v[r]["url"].as_str().unwrap(),
            v[r]["token"].as_str().unwrap()
        )
    };
    assert!(url("agent").starts_with(&format!("ws://{}/v1/relay/{id}?role=agent", relay.addr)));
    let path = format!("/v1/sessions/{id}");
    assert_eq!(
        json(&relay.http("GET", &path, Some(SECRET), "").unwrap().1)["state"],
        "waiting"
    );
    let mut a = connect(&url("agent")).await;
    let mut u = connect(&url("user")).await;
    send(&mut a, Message::binary(vec![1u8; 1000])).await;
    recv(&mut u).await;
    send(&mut u, Message::text("xyz")).await;
    recv(&mut a).await;
    let s = json(&relay.http("GET", &path, Some(SECRET), "").unwrap().1);
    assert_eq!(s["state"], "paired");
    assert_eq!(s["bytes_agent_to_user"], 1000);
    assert_eq!(s["bytes_user_to_agent"], 3);
    assert!(s["since"].as_u64().unwrap() <= now());
    let (st, _) = relay.http("DELETE", &path, Some(SECRET), "").unwrap();
    assert_eq!(st, 200);
    assert_eq!(recv_close(&mut a).await.0, 4410);
    assert_eq!(recv_close(&mut u).await.0, 4410);
    assert_eq!(
        json(&relay.http("GET", &path, Some(SECRET), "").unwrap().1)["state"],
        "closed"
    );
    // the tokens no longer admit anyone
    assert_eq!(refused_status(&url("agent"), None).await, 410);
    assert_eq!(
        relay
            .http("GET", "/v1/sessions/nope", Some(SECRET), "")
            .unwrap()
            .0,
        404
    );
}

#[test]
fn healthz_and_healthcheck_subcommand() {
    let relay = Relay::start(&[]);
    let (st, body) = relay.http("GET", "/healthz", None, "").unwrap();
    assert_eq!(st, 200);
    let v = json(&body);
    assert_eq!(v["status"], "OK");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let ok = Command::new(BIN)
        .args(["healthcheck", "--url", &format!("http://{}", relay.addr)])
        .status()
        .unwrap();
    assert!(ok.success());
    // through the config file, as the Docker HEALTHCHECK does
    let cfg = relay.path("config.toml");
    std::fs::write(
        &cfg,
        format!("listen = \"0.0.0.0:{}\"\n", relay.addr.port()),
    )
    .unwrap();
    let ok = Command::new(BIN)
        .args(["healthcheck", "--config", cfg.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
    let dead = Command::new(BIN)
        .args([
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(1));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn probe_subcommand_round_trips() {
    let relay = Relay::start(&[]);
    let secret = relay.path("secret");
    let out = Command::new(BIN)
        .args([
            "probe",
            "--url",
            &format!("http://{}", relay.addr),
            "--control-secret-file",
            secret.to_str().unwrap(),
            "--messages",
            "10",
            "--wait-secs",
            "5",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(stdout.trim());
    assert_eq!(v["ok"], true);
    assert_eq!(v["messages"], 20);
    assert!(v["rtt_ms_p50"].as_f64().is_some());
    // a wrong secret fails with a clear message
    let bad = relay.path("bad");
    std::fs::write(&bad, "not-the-right-secret-at-all").unwrap();
    let out = Command::new(BIN)
        .args(["probe", "--url", &format!("http://{}", relay.addr)])
        .args(["--control-secret-file", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn refuses_to_start_without_token_keys() {
    let out = Command::new(BIN)
        .arg("serve")
        .env("RELAY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RELAY_TOKEN_KEYS_FILE", "/nonexistent/relay_keys")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/relay_keys"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_while_the_active_session_continues() {
    let mut relay = Relay::start(&[]);
    let mut a = relay.connect("active", Role::Agent).await;
    let mut u = relay.connect("active", Role::User).await;
    send(&mut a, Message::text("before")).await;
    assert_eq!(recv(&mut u).await, Message::text("before"));
    relay.sigterm();
    let t = Instant::now();
    loop {
        let (st, body) = relay.http("GET", "/healthz", None, "").unwrap();
        if st == 503 {
            assert_eq!(json(&body)["status"], "DRAINING");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "never started draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hc = Command::new(BIN)
        .args(["healthcheck", "--url", &format!("http://{}", relay.addr)])
        .status()
        .unwrap();
    assert_eq!(hc.code(), Some(1));
    // new sessions are refused
    let t2 = relay.token("new", Role::Agent);
    assert_eq!(
        refused_status(&relay.url("new", Role::Agent, &t2), None).await,
        503
    );
    assert_eq!(
        relay
            .http("POST", "/v1/sessions", Some(SECRET), "")
            .unwrap()
            .0,
        503
    );
    // the running one keeps relaying
    for i in 0..20 {
        send(&mut u, Message::binary(vec![i; 100])).await;
        assert_eq!(recv(&mut a).await, Message::binary(vec![i; 100]));
    }
    assert!(relay.child.try_wait().unwrap().is_none());
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = u.next().await {}
    while let Some(Ok(_)) = a.next().await {}
    let t = Instant::now();
    let status = loop {
        if let Some(s) = relay.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "relay did not exit after drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
}

#[tokio::test]
async fn slow_reader_does_not_grow_memory() {
    let relay = Relay::start(&[("RELAY_STALL_TIMEOUT_SECS", "3")]);
    let mut a = relay.connect("slow", Role::Agent).await;
    let u = relay.connect("slow", Role::User).await; // never reads
                                                     // warm up so that the baseline includes the steady-state buffers
    a.send(Message::binary(vec![0u8; 65536])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = relay.rss();
    let chunk = vec![0x5au8; 65536];
    let mut pushed: u64 = 0;
    let mut max_rss = base;
    let target: u64 = 200 << 20;
    let t = Instant::now();
    while pushed < target && t.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(
            Duration::from_secs(10),
            a.send(Message::binary(chunk.clone())),
        )
        .await
        {
            Ok(Ok(())) => pushed += chunk.len() as u64,
            _ => break,
        }
        if pushed % (4 << 20) == 0 {
            max_rss = max_rss.max(relay.rss());
        }
    }
    max_rss = max_rss.max(relay.rss());
    eprintln!(
        "slow reader: pushed {} MiB, relay rss {} KiB -> max {} KiB",
        pushed >> 20,
        base >> 10,
        max_rss >> 10
    );
    // The reader took only what fits in socket buffers: the relay held the rest back
    // (after the stall it discards what the sender still sends while closing).
    let relayed = relay.metric("relay_bytes_total{direction=\"agent_to_user\"}");
    assert!(
        relayed < 32 << 20,
        "relay forwarded {relayed} bytes to a reader that reads nothing"
    );
    assert!(pushed >= relayed);
    assert!(
        max_rss < base + (24 << 20),
        "relay rss grew from {base} to {max_rss}"
    );
    assert_eq!(relay.metric("relay_stalled_total"), 1);
    drop(u);
}
