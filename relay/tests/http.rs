//! Integration tests of the HTTP side of the listener found by an independent client test
//! (issue 12): chunked control bodies, the `Bearer` scheme in any case, and the 431 answer to
//! an oversized request head, against the real binary on 127.0.0.1.

mod common;

use common::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not json ({e}): {s}"))
}

fn post_head(relay: &Relay, extra: &str) -> String {
    format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {SECRET}\r\n{extra}Connection: close\r\n\r\n",
        relay.addr
    )
}

/// `{"ttl_secs":120}` sent chunked was ignored (one-hour session).
#[test]
fn chunked_post_body_is_read() {
    let relay = Relay::start(&[]);
    let head = post_head(&relay, "Transfer-Encoding: chunked\r\n");
    // one piece, then head and chunks in separate writes, with an extension and a trailer
    let whole = format!("{head}10\r\n{{\"ttl_secs\":120}}\r\n0\r\n\r\n");
    let pieces: [&[u8]; 5] = [
        head.as_bytes(),
        b"5;ext=1\r\n{\"ttl",
        b"\r\nB\r\n_secs\":120}\r\n",
        b"0\r\n",
        b"X-Trailer: yes\r\n\r\n",
    ];
    for (name, pieces) in [
        ("one write", vec![whole.as_bytes()]),
        ("pieces", pieces.to_vec()),
    ] {
        let (st, body) = raw_request(relay.addr, &pieces).unwrap();
        assert_eq!(st, 201, "{name}: {body}");
        let exp = json(&body)["expires_at"].as_u64().unwrap();
        assert!(
            exp <= now() + 120 && exp + 60 >= now() + 120,
            "{name}: expires_at {exp}, now {}",
            now()
        );
    }
}

#[test]
fn malformed_or_oversized_chunked_body_is_refused() {
    let relay = Relay::start(&[]);
    let head = post_head(&relay, "Transfer-Encoding: chunked\r\n");
    let big = "a".repeat(20_000);
    let cases: [(&str, String, u16); 4] = [
        ("size not hex", "zz\r\n{}\r\n0\r\n\r\n".into(), 400),
        ("data longer than size", "1\r\n{}\r\n0\r\n\r\n".into(), 400),
        ("ends inside the body", "10\r\n{\"ttl".into(), 400),
        (
            "over 16 KiB",
            format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()),
            413,
        ),
    ];
    for (name, body, want) in cases {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(relay.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(format!("{head}{body}").as_bytes()).unwrap();
        if name == "ends inside the body" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        // otherwise the relay must answer while this client keeps its sending side open
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let (st, answer) = parse_response(&String::from_utf8_lossy(&out));
        assert_eq!(st, want, "{name}: {answer}");
    }
}

/// RFC 7235: the auth scheme name is case-insensitive.
#[test]
fn bearer_scheme_in_any_case_is_accepted() {
    let relay = Relay::start(&[]);
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let auth = format!("Authorization: {scheme} {SECRET}\r\n");
        let (st, body) = raw_http(relay.addr, "POST", "/v1/sessions", None, "", &auth).unwrap();
        assert_eq!(st, 201, "{scheme}: {body}");
    }
    let auth = format!("Authorization: Basic {SECRET}\r\n");
    let (st, _) = raw_http(relay.addr, "POST", "/v1/sessions", None, "", &auth).unwrap();
    assert_eq!(st, 401);
}

/// A request head over 8 KiB was dropped without an answer.
#[test]
fn request_head_over_8_kib_gets_431() {
    let relay = Relay::start(&[]);
    for path in ["/healthz", "/v1/relay/big?role=user"] {
        let filler = format!("X-Filler: {}\r\n", "f".repeat(9000));
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{filler}Connection: close\r\n\r\n",
            relay.addr
        );
        let (st, body) = raw_request(relay.addr, &[req.as_bytes()]).unwrap();
        assert_eq!(st, 431, "{path}: {body}");
        assert!(body.contains("8192"), "{body}");
    }
    assert_eq!(relay.rejected("head_too_large"), 2);
    // a head just under the limit is still served
    let filler = format!("X-Filler: {}\r\n", "f".repeat(7000));
    let (st, _) = raw_http(relay.addr, "GET", "/healthz", None, "", &filler).unwrap();
    assert_eq!(st, 200);
}
