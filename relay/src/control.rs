//! Plain HTTP endpoints on the relay listener: `/healthz`, `/metrics` and the control API
//! under `/v1/sessions` that the Infra side uses to create, inspect and close sessions.

use crate::conn::Conn;
use crate::http::{self, Request};
use crate::log;
use crate::relay::codes;
use crate::state::{now_secs, Cmd, Entry, Shared};
use crate::token::{ct_eq, valid_id, Role};
use ring::rand::SecureRandom;
use serde_json::json;
use std::sync::Arc;

/// Version reported by `/healthz` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves one plain HTTP request.
pub async fn handle(shared: Arc<Shared>, mut conn: Conn, mut req: Request) {
    let (status, body) = route(&shared, &mut conn, &mut req).await;
    let r = match body {
        Body::Json(v) => http::respond_json(&mut conn, status, &v).await,
        Body::Text(t) => {
            http::respond(
                &mut conn,
                status,
                "text/plain; version=0.0.4",
                "",
                t.as_bytes(),
            )
            .await
        }
    };
    if let Err(e) = r {
        log!(Debug, "writing response failed", error = e.to_string());
    }
}

enum Body {
    Json(serde_json::Value),
    Text(String),
}

fn err(status: u16, reason: &str) -> (u16, Body) {
    (status, Body::Json(json!({ "error": reason })))
}

async fn route(shared: &Arc<Shared>, conn: &mut Conn, req: &mut Request) -> (u16, Body) {
    let path = req.path.clone();
    match (req.method.as_str(), path.as_str()) {
        ("GET", "/healthz") => {
            if shared.is_draining() {
                (
                    503,
                    Body::Json(json!({"status": "DRAINING", "version": VERSION})),
                )
            } else {
                (200, Body::Json(json!({"status": "OK", "version": VERSION})))
            }
        }
        ("GET", "/metrics") => (
            200,
            Body::Text(shared.metrics.render(shared.is_draining(), &shared.budget)),
        ),
        (_, p) if p == "/v1/sessions" || p.starts_with("/v1/sessions/") => {
            let Some(secret) = &shared.control_secret else {
                return err(404, "control api disabled");
            };
            let given = req.header("authorization").and_then(bearer).unwrap_or("");
            if !ct_eq(given.as_bytes(), secret) {
                return err(401, "unauthorized");
            }
            let body = match http::read_body(conn, req).await {
                Ok(b) => b,
                Err(e) => return err(e.status().unwrap_or(400), &e.to_string()),
            };
            match (req.method.as_str(), p.strip_prefix("/v1/sessions/")) {
                ("POST", None) => create(shared, req, &body),
                ("GET", Some(id)) => inspect(shared, id),
                ("DELETE", Some(id)) => close(shared, id),
                _ => err(405, "method not allowed"),
            }
        }
        _ => err(404, "not found"),
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 7235 section 2.1), separated from the token by spaces or tabs.
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let split = value.find([' ', '\t'])?;
    let (scheme, token) = value.split_at(split);
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `POST /v1/sessions` with an optional body `{"ttl_secs": N}`.
fn create(shared: &Shared, req: &Request, body: &[u8]) -> (u16, Body) {
    if shared.is_draining() {
        return err(503, "draining");
    }
    let mut ttl = shared.cfg.session_ttl_secs;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return err(400, &format!("invalid json body: {e}")),
        };
        if let Some(t) = v.get("ttl_secs") {
            match t.as_u64() {
                Some(t) if (1..=7 * 86400).contains(&t) => ttl = t,
                _ => return err(400, "ttl_secs must be between 1 and 604800"),
            }
        }
    }
    let mut raw = [0u8; 12];
    if ring::rand::SystemRandom::new().fill(&mut raw).is_err() {
        return err(500, "no randomness");
    }
    let expires = now_secs() + ttl;
    let id = shared.keys.mint_session_id(&raw, expires);
    shared
        .sessions()
        .insert(id.clone(), Entry::new(Some(expires)));
    let base = public_base(shared, req);
    let side = |role: Role| {
        json!({
            "url": format!("{base}/v1/relay/{id}?role={role}"),
            "token": shared.keys.mint(&id, role, expires),
        })
    };
    log!(Info, "session created", session = id, expires_at = expires);
    (
        201,
        Body::Json(json!({
            "id": id,
            "expires_at": expires,
            "agent": side(Role::Agent),
            "user": side(Role::User),
        })),
    )
}

/// Base WebSocket URL: the configured public URL, else from the Host header.
fn public_base(shared: &Shared, req: &Request) -> String {
    let cfg = &shared.cfg.public_url;
    if !cfg.is_empty() {
        let base = cfg.trim_end_matches('/');
        if let Some(rest) = base.strip_prefix("https://") {
            return format!("wss://{rest}");
        }
        if let Some(rest) = base.strip_prefix("http://") {
            return format!("ws://{rest}");
        }
        return base.to_string();
    }
    let scheme = if shared.tls.is_some() { "wss" } else { "ws" };
    let host = req
        .header("host")
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| shared.cfg.listen.to_string());
    format!("{scheme}://{host}")
}

/// `GET /v1/sessions/{id}`.
fn inspect(shared: &Shared, id: &str) -> (u16, Body) {
    let map = shared.sessions();
    let Some(e) = map.get(id) else {
        // made by another replica's control API and not connected here yet: waiting
        return match shared.keys.minted_expiry(id) {
            Some(exp) if exp > now_secs() => (
                200,
                Body::Json(json!({
                    "id": id,
                    "state": "waiting",
                    "since": null,
                    "agent_connected": false,
                    "user_connected": false,
                    "bytes_agent_to_user": 0,
                    "bytes_user_to_agent": 0,
                    "expires_at": exp,
                })),
            ),
            _ => err(404, "no such session"),
        };
    };
    use std::sync::atomic::Ordering::Relaxed;
    (
        200,
        Body::Json(json!({
            "id": id,
            "state": e.state.as_str(),
            "since": e.since,
            "agent_connected": e.connected[0],
            "user_connected": e.connected[1],
            "bytes_agent_to_user": e.stats.agent_to_user.load(Relaxed),
            "bytes_user_to_agent": e.stats.user_to_agent.load(Relaxed),
            "expires_at": e.api_expires,
        })),
    )
}

/// `DELETE /v1/sessions/{id}`: closes both sides and refuses the tokens from now on.
fn close(shared: &Shared, id: &str) -> (u16, Body) {
    if !valid_id(id) {
        return err(404, "no such session");
    }
    let tx = {
        let mut map = shared.sessions();
        if !map.contains_key(id) {
            // made by another replica's control API: refuse its tokens here from now on
            match shared.keys.minted_expiry(id) {
                Some(exp) if exp > now_secs() => {
                    map.insert(id.to_string(), Entry::new(Some(exp)));
                }
                _ => return err(404, "no such session"),
            }
        }
        let Some(e) = map.get_mut(id) else {
            return err(404, "no such session");
        };
        let until = e
            .api_expires
            .unwrap_or(0)
            .max(now_secs() + shared.cfg.session_ttl_secs);
        e.revoked_until = Some(until);
        e.state = crate::state::State::Closed;
        e.since = now_secs();
        e.task.as_ref().map(|t| t.tx.clone())
    };
    if let Some(tx) = tx {
        let _ = tx.try_send(Cmd::Close(codes::CLOSED_BY_API, "session closed"));
    }
    log!(Info, "session closed by control api", session = id);
    (200, Body::Json(json!({ "id": id, "state": "closed" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let cases = [
            ("Bearer s3cret", Some("s3cret")),
            ("bearer s3cret", Some("s3cret")),
            ("BEARER s3cret", Some("s3cret")),
            ("bEaReR   s3cret ", Some("s3cret")),
            ("Bearer\ts3cret", Some("s3cret")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Basic s3cret", None),
            ("Bearers3cret", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(bearer(value), want, "{value:?}");
        }
    }
}
