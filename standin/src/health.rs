//! The health answer in seed 001's shape: `{"status":"OK","version":…,"services":{…}}`,
//! with `db` and each peer's own answer nested under its name (as the portal nests the
//! API's). Pure: the checks are done by the caller.

use serde_json::{json, Map, Value};

/// The status word of a healthy service, as the seed shows it.
pub const OK: &str = "OK";
/// The status word of a service that is not (HTTP 503).
pub const KO: &str = "KO";

/// What one dependency check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Reachable and healthy; a peer's answer is kept to be nested.
    Healthy(Option<Value>),
    /// Not: why (an unreachable address, a refused handshake, the peer's own answer).
    Unhealthy {
        /// One line for the operator.
        error: String,
        /// The peer's answer when it gave one.
        answer: Option<Value>,
    },
}

/// A peer's HTTP status and body turned into a [`Check`].
pub fn peer_check(status: u16, body: &[u8]) -> Check {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if status == 200 && v["status"] == OK => Check::Healthy(Some(v)),
        Ok(v) => Check::Unhealthy {
            error: format!(
                "HTTP {status}, status {}",
                v["status"].as_str().unwrap_or("missing")
            ),
            answer: Some(v),
        },
        Err(_) => Check::Unhealthy {
            error: format!("HTTP {status}, not a health answer"),
            answer: None,
        },
    }
}

/// The HTTP status and JSON body of the health answer.
pub fn report(version: &str, db: Option<&Check>, peers: &[(String, Check)]) -> (u16, Value) {
    let mut services = Map::new();
    let mut healthy = true;
    let entry = |c: &Check| match c {
        Check::Healthy(Some(v)) => v.clone(),
        Check::Healthy(None) => json!({"status": OK}),
        Check::Unhealthy { error, answer } => match answer {
            Some(Value::Object(m)) => {
                let mut m = m.clone();
                m.insert("status".into(), json!(KO));
                m.insert("error".into(), json!(error));
                Value::Object(m)
            }
            _ => json!({"status": KO, "error": error}),
        },
    };
    for (name, c) in db.map(|c| ("db", c)).into_iter().chain(
        peers
            .iter()
            .map(|(n, c)| (n.as_str(), c))
            .collect::<Vec<_>>(),
    ) {
        healthy &= matches!(c, Check::Healthy(_));
        services.insert(name.to_string(), entry(c));
    }
    let status = if healthy { OK } else { KO };
    (
        if healthy { 200 } else { 503 },
        json!({"status": status, "version": version, "services": services}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_with_the_database_and_a_peer_nested() {
        let api =
            json!({"status": "OK", "version": "2.15.2", "services": {"db": {"status": "OK"}}});
        let (code, v) = report(
            "2.14.4",
            None,
            &[("api".into(), peer_check(200, api.to_string().as_bytes()))],
        );
        assert_eq!(code, 200);
        assert_eq!(
            v.to_string(),
            r#"{"status":"OK","version":"2.14.4","services":{"api":{"status":"OK","version":"2.15.2","services":{"db":{"status":"OK"}}}}}"#
        );
        let (code, v) = report("2.15.2", Some(&Check::Healthy(None)), &[]);
        assert_eq!(code, 200);
        assert_eq!(
            v.to_string(),
            r#"{"status":"OK","version":"2.15.2","services":{"db":{"status":"OK"}}}"#
        );
    }

    #[test]
    fn an_unreachable_database_is_503() {
        let db = Check::Unhealthy {
            error: "mysql:3306: connection refused".into(),
            answer: None,
        };
        let (code, v) = report("1", Some(&db), &[]);
        assert_eq!(code, 503);
        assert_eq!(
            v.to_string(),
            r#"{"status":"KO","version":"1","services":{"db":{"status":"KO","error":"mysql:3306: connection refused"}}}"#
        );
    }

    #[test]
    fn an_unhealthy_or_unreadable_peer_makes_the_service_unhealthy() {
        let sick = json!({"status": "KO", "version": "2", "services": {}});
        let c = peer_check(503, sick.to_string().as_bytes());
        assert_eq!(
            c,
            Check::Unhealthy {
                error: "HTTP 503, status KO".into(),
                answer: Some(sick)
            }
        );
        let (code, v) = report("1", Some(&Check::Healthy(None)), &[("api".into(), c)]);
        assert_eq!(code, 503);
        assert_eq!(v["status"], "KO");
        assert_eq!(v["services"]["db"]["status"], "OK");
        assert_eq!(v["services"]["api"]["version"], "2");
        assert_eq!(v["services"]["api"]["error"], "HTTP 503, status KO");
        assert_eq!(
            peer_check(200, b"<html>"),
            Check::Unhealthy {
                error: "HTTP 200, not a health answer".into(),
                answer: None
            }
        );
        // a 200 that does not say OK is not healthy
        assert!(matches!(
            peer_check(200, br#"{"status":"DEGRADED"}"#),
            Check::Unhealthy { .. }
        ));
    }
}
