//! TLS end to end: a test CA and a server certificate for 127.0.0.1 and localhost are made
//! with rcgen (ring), the real binary serves them from `[tls]` files, and clients that trust
//! only the test CA use /healthz over https, a wss session both ways, the `healthcheck`
//! subcommand through the config file, and `probe --ca-file`.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;
use ws_relay_server::token::Role;

const BIN: &str = env!("CARGO_BIN_EXE_ws-relay-server");

/// Test PKI written to files: a self-signed CA and a server certificate signed by it.
struct Pki {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    other_ca_file: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("ca key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = p.self_signed(&key).expect("self-signed ca").pem();
    (p, key, pem)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_params, ca_key, ca_pem) = ca("ws-relay test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    // "127.0.0.1" becomes an IP address SAN, "localhost" a DNS name SAN
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).expect("server cert");
    let (_, _, other_pem) = ca("some other CA");
    let f = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca_file: f("ca.pem", ca_pem.clone()),
        // the chain file holds the leaf then the CA, as a bundle usually does
        cert_file: f("cert.pem", format!("{}{ca_pem}", cert.pem())),
        key_file: f("key.pem", key.serialize_pem()),
        other_ca_file: f("other-ca.pem", other_pem),
        _dir: dir,
    }
}

fn start(pki: &Pki) -> Relay {
    Relay::start(&[
        ("RELAY_TLS_CERT_FILE", pki.cert_file.to_str().unwrap()),
        ("RELAY_TLS_KEY_FILE", pki.key_file.to_str().unwrap()),
    ])
}

/// One https request through rustls; returns (status, body).
async fn https(
    cfg: &Arc<rustls::ClientConfig>,
    relay: &Relay,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(relay.addr).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n\r\n",
        relay.addr.port()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(common::parse_response(&String::from_utf8_lossy(&out)))
}

fn wss_url(relay: &Relay, host: &str, session: &str, role: Role) -> String {
    format!(
        "wss://{host}:{}/v1/relay/{session}?role={role}&token={}",
        relay.addr.port(),
        relay.token(session, role)
    )
}

async fn wss(cfg: &Arc<rustls::ClientConfig>, url: &str) -> Client {
    let req = url.into_client_request().unwrap();
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        req,
        Some(client_config()),
        true,
        Some(Connector::Rustls(cfg.clone())),
    )
    .await
    .unwrap_or_else(|e| panic!("wss connect {}: {e}", url.split('?').next().unwrap()));
    ws
}

#[tokio::test]
async fn https_and_wss_with_a_test_ca() {
    let pki = pki();
    let relay = start(&pki);
    let trusting = ws_relay_server::tls::verifying_client(Some(&pki.ca_file)).unwrap();

    // /healthz over https, by IP address and by DNS name, certificate verified
    for host in ["127.0.0.1", "localhost"] {
        let (st, body) = https(&trusting, &relay, host, "/healthz")
            .await
            .unwrap_or_else(|e| panic!("https via {host}: {e}"));
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "OK");
    }
    // a client trusting another CA refuses the certificate
    let other = ws_relay_server::tls::verifying_client(Some(&pki.other_ca_file)).unwrap();
    let err = https(&other, &relay, "127.0.0.1", "/healthz")
        .await
        .expect_err("handshake must fail for an untrusted CA");
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("unknown issuer"),
        "{err}"
    );
    // plain HTTP on the TLS listener gets no HTTP answer
    let plain = raw_http(relay.addr, "GET", "/healthz", None, "", "");
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");

    // a wss session relays both ways (agent by DNS name, user by IP address)
    let mut a = wss(
        &trusting,
        &wss_url(&relay, "localhost", "tls1", Role::Agent),
    )
    .await;
    let mut u = wss(&trusting, &wss_url(&relay, "127.0.0.1", "tls1", Role::User)).await;
    for i in 0..20u8 {
        let m = Message::binary(vec![i; 1000 + i as usize * 3000]);
        send(&mut a, m.clone()).await;
        assert_eq!(recv(&mut u).await, m);
        let t = Message::text(format!("reply {i}"));
        send(&mut u, t.clone()).await;
        assert_eq!(recv(&mut a).await, t);
    }
    // a message larger than one TLS record (16 KiB) and than the 4 KiB read buffer
    let big = Message::binary((0..600_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    send(&mut u, big.clone()).await;
    assert_eq!(recv(&mut a).await, big);
    send(
        &mut a,
        Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4000u16.into(),
            reason: "bye".into(),
        })),
    )
    .await;
    assert_eq!(recv_close(&mut u).await, (4000, "bye".to_string()));
}

#[test]
fn healthcheck_and_probe_subcommands_over_tls() {
    let pki = pki();
    let relay = start(&pki);
    // healthcheck through the config file, as the Docker HEALTHCHECK does: it connects to
    // 127.0.0.1:<port> with TLS because [tls] is configured
    let cfg = relay.path("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:{}\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            relay.addr.port(),
            pki.cert_file.to_str().unwrap(),
            pki.key_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["healthcheck", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // https --url works too; plain http against the TLS listener fails
    let https_url = format!("https://127.0.0.1:{}", relay.addr.port());
    let ok = Command::new(BIN)
        .args(["healthcheck", "--url", &https_url])
        .status()
        .unwrap();
    assert!(ok.success());
    let bad = Command::new(BIN)
        .args(["healthcheck", "--url", &format!("http://{}", relay.addr)])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));

    // probe over https + wss, trusting the test CA
    let secret = relay.path("secret");
    let probe = |url: &str, ca: Option<&PathBuf>| {
        let mut c = Command::new(BIN);
        c.args(["probe", "--url", url, "--messages", "6", "--wait-secs", "0"])
            .args(["--control-secret-file", secret.to_str().unwrap()]);
        if let Some(ca) = ca {
            c.args(["--ca-file", ca.to_str().unwrap()]);
        }
        c.output().unwrap()
    };
    for host in ["127.0.0.1", "localhost"] {
        let out = probe(
            &format!("https://{host}:{}", relay.addr.port()),
            Some(&pki.ca_file),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["messages"], 12);
    }
    // without --ca-file the built-in public roots do not trust the test CA
    let out = probe(&https_url, None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls") || err.contains("certificate"), "{err}");
    // nor does another CA
    let out = probe(&https_url, Some(&pki.other_ca_file));
    assert!(!out.status.success());
}

/// Issue 12: over a connection cap, a TLS client saw a bare connection close instead of the
/// documented 503 / 429; the refusal now comes after the TLS handshake, certificate verified.
#[tokio::test]
async fn caps_are_answered_with_a_status_over_tls() {
    let pki = pki();
    let trusting = ws_relay_server::tls::verifying_client(Some(&pki.ca_file)).unwrap();
    let cert = pki.cert_file.to_str().unwrap();
    let key = pki.key_file.to_str().unwrap();
    for (var, status, reason) in [
        ("RELAY_MAX_CONNECTIONS", 503, "global_cap"),
        ("RELAY_MAX_CONNECTIONS_PER_IP", 429, "ip_cap"),
    ] {
        let relay = Relay::start(&[
            ("RELAY_TLS_CERT_FILE", cert),
            ("RELAY_TLS_KEY_FILE", key),
            (var, "2"),
        ]);
        // fill the cap with two waiting sides (the readiness probe's connection may still be
        // counted for a moment: retry, bounded)
        let mut held = Vec::new();
        for s in ["cap1", "cap2"] {
            let url = wss_url(&relay, "localhost", s, Role::Agent);
            let mut tries = 0;
            loop {
                let req = url.as_str().into_client_request().unwrap();
                let c = Some(Connector::Rustls(trusting.clone()));
                match tokio_tungstenite::connect_async_tls_with_config(req, None, false, c).await {
                    Ok((ws, _)) => break held.push(ws),
                    Err(e) if tries < 50 => {
                        tries += 1;
                        eprintln!("{var}: {s}: {e}, retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{var}: {s}: {e}"),
                }
            }
        }
        // a WebSocket client gets the status and the JSON body naming the cap
        let req = wss_url(&relay, "localhost", "cap3", Role::Agent)
            .into_client_request()
            .unwrap();
        let c = Some(Connector::Rustls(trusting.clone()));
        match tokio_tungstenite::connect_async_tls_with_config(req, None, false, c).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), status, "{var}");
                let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
                assert!(body.contains(reason), "{var}: {body}");
            }
            other => panic!(
                "{var}: expected an http refusal, got {:?}",
                other.map(|_| ())
            ),
        }
        // so does a plain https client, by IP address
        let (st, body) = https(&trusting, &relay, "127.0.0.1", "/healthz")
            .await
            .unwrap_or_else(|e| panic!("{var}: https over the cap: {e}"));
        assert_eq!(st, status, "{var}: {body}");
        assert!(body.contains(reason), "{var}: {body}");
        drop(held);
    }
}
