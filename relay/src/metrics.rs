//! Process-wide counters and gauges, rendered in the Prometheus text format at `/metrics`.

use crate::budget::Budget;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Reasons a connection is refused before the upgrade (label `reason`).
pub const REJECT_REASONS: &[&str] = &[
    "missing_token",
    "malformed_token",
    "unknown_key",
    "bad_signature",
    "expired_token",
    "role_mismatch",
    "bad_request",
    "not_found",
    "session_closed",
    "draining",
    "global_cap",
    "ip_cap",
    "handshake_timeout",
    "head_too_large",
];

/// All metrics.
#[derive(Default)]
pub struct Metrics {
    /// Open TCP connections (all kinds).
    pub connections: AtomicU64,
    /// Open WebSocket connections.
    pub ws_connections: AtomicU64,
    /// Sessions with one side waiting.
    pub sessions_waiting: AtomicU64,
    /// Sessions with both sides connected.
    pub sessions_paired: AtomicU64,
    /// Payload bytes relayed agent → user.
    pub bytes_agent_to_user: AtomicU64,
    /// Payload bytes relayed user → agent.
    pub bytes_user_to_agent: AtomicU64,
    /// Messages relayed, both directions.
    pub messages: AtomicU64,
    /// Pairings made.
    pub pairings: AtomicU64,
    /// Sides replaced by a reconnection.
    pub replaced: AtomicU64,
    /// Slow readers disconnected.
    pub stalled: AtomicU64,
    /// Sessions closed for idleness.
    pub idle_closed: AtomicU64,
    /// Waiting sides whose peer never came.
    pub pair_timeouts: AtomicU64,
    /// Messages or frames over the limits (closed with 1009).
    pub too_big: AtomicU64,
    rejected: [AtomicU64; 14],
}

impl Metrics {
    /// Counts a refusal; unknown reasons are counted as `bad_request`.
    pub fn reject(&self, reason: &str) {
        let i = REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(6);
        self.rejected[i].fetch_add(1, Relaxed);
    }

    /// Current count of refusals for `reason`.
    pub fn rejected(&self, reason: &str) -> u64 {
        REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .map(|i| self.rejected[i].load(Relaxed))
            .unwrap_or(0)
    }

    /// Prometheus text exposition.
    pub fn render(&self, draining: bool, budget: &Budget) -> String {
        let mut s = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "relay_connections",
            "gauge",
            "Open client TCP connections.",
            self.connections.load(Relaxed),
        );
        one(
            "relay_websocket_connections",
            "gauge",
            "Open WebSocket connections.",
            self.ws_connections.load(Relaxed),
        );
        one(
            "relay_sessions_waiting",
            "gauge",
            "Sessions with one side waiting for the other.",
            self.sessions_waiting.load(Relaxed),
        );
        one(
            "relay_sessions_paired",
            "gauge",
            "Sessions with both sides connected.",
            self.sessions_paired.load(Relaxed),
        );
        one(
            "relay_draining",
            "gauge",
            "1 while draining after SIGTERM.",
            draining as u64,
        );
        one(
            "relay_bytes_in_flight",
            "gauge",
            "Bytes read from senders and not yet written to their peers.",
            budget.in_flight(),
        );
        one(
            "relay_budget_paused_total",
            "counter",
            "Times reading from a sender was paused because max_bytes_in_flight was reached.",
            budget.paused_total(),
        );
        one(
            "relay_messages_total",
            "counter",
            "Messages relayed, both directions.",
            self.messages.load(Relaxed),
        );
        one(
            "relay_pairings_total",
            "counter",
            "Pairings made.",
            self.pairings.load(Relaxed),
        );
        one(
            "relay_replaced_total",
            "counter",
            "Sides replaced by a reconnection.",
            self.replaced.load(Relaxed),
        );
        one(
            "relay_stalled_total",
            "counter",
            "Slow readers disconnected.",
            self.stalled.load(Relaxed),
        );
        one(
            "relay_idle_closed_total",
            "counter",
            "Sessions closed for idleness.",
            self.idle_closed.load(Relaxed),
        );
        one(
            "relay_pair_timeouts_total",
            "counter",
            "Waiting sides whose peer never came.",
            self.pair_timeouts.load(Relaxed),
        );
        one(
            "relay_too_big_total",
            "counter",
            "Frames or messages over the limits, closed with 1009.",
            self.too_big.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP relay_bytes_total Payload bytes relayed by direction.\n# TYPE relay_bytes_total counter\nrelay_bytes_total{{direction=\"agent_to_user\"}} {}\nrelay_bytes_total{{direction=\"user_to_agent\"}} {}",
            self.bytes_agent_to_user.load(Relaxed),
            self.bytes_user_to_agent.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP relay_rejected_total Connections refused before the upgrade, by reason.\n# TYPE relay_rejected_total counter"
        );
        for (i, r) in REJECT_REASONS.iter().enumerate() {
            let _ = writeln!(
                s,
                "relay_rejected_total{{reason=\"{r}\"}} {}",
                self.rejected[i].load(Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_reason() {
        let m = Metrics::default();
        m.reject("expired_token");
        m.reject("expired_token");
        m.reject("what");
        let text = m.render(false, &Budget::new(10, 10));
        assert!(text.contains("relay_rejected_total{reason=\"expired_token\"} 2"));
        assert!(text.contains("relay_rejected_total{reason=\"bad_request\"} 1"));
        assert!(text.contains("\nrelay_bytes_in_flight 0\n"));
        assert!(text.contains("\nrelay_budget_paused_total 0\n"));
        assert_eq!(REJECT_REASONS.len(), m.rejected.len());
        assert_eq!(REJECT_REASONS[6], "bad_request");
    }
}
