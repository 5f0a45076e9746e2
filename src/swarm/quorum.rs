//! The managers' quorum, from what a manager reports about the swarm's nodes: how many
//! managers the raft quorum needs (⌊N/2⌋+1 of the N managers), how many more losses the
//! reachable ones tolerate, what one more loss would do, and the warnings the seeds ask for
//! (an odd number of managers, managers only). Pure; `status` shows it.

use serde::Serialize;

use super::observed::{short, ManagerNode, NodeInfo};

/// Failures a healthy quorum of `managers` tolerates: ⌊(N−1)/2⌋.
pub fn tolerated_failures(managers: usize) -> usize {
    managers.saturating_sub(1) / 2
}

/// Managers the raft quorum needs out of `managers`: ⌊N/2⌋+1.
pub fn needed(managers: usize) -> usize {
    managers / 2 + 1
}

/// One manager as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerLine {
    /// Node id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// `IP:PORT` other managers reach it at.
    pub addr: String,
    /// `reachable`, `unreachable`, `unknown`.
    pub reachability: String,
    /// The raft leader.
    pub leader: bool,
}

/// The quorum as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quorum {
    /// Manager nodes in the swarm (reachable or not).
    pub managers: usize,
    /// Of them, the reachable ones.
    pub reachable: usize,
    /// Managers the quorum needs: ⌊managers/2⌋+1.
    pub needed: usize,
    /// Further manager losses the reachable managers tolerate (0 when one more loss loses
    /// the quorum, or when it is lost).
    pub tolerates: usize,
    /// Fewer managers reachable than the quorum needs.
    pub lost: bool,
    /// Worker nodes (the seeds want managers only).
    pub workers: usize,
    /// Every manager, the leader first, then by host name.
    pub nodes: Vec<ManagerLine>,
    /// What one more manager loss would do, in words.
    pub next_loss: String,
}

fn name(hostname: &str, id: &str) -> String {
    if hostname.is_empty() {
        short(id).to_string()
    } else {
        format!("{hostname} ({})", short(id))
    }
}

/// The quorum of the swarm whose nodes are `nodes` (as a manager lists them).
pub fn assess(nodes: &[NodeInfo]) -> Quorum {
    let mut managers: Vec<&ManagerNode> = nodes.iter().filter_map(|n| n.manager.as_ref()).collect();
    managers.sort_by(|a, b| (!a.leader, &a.hostname, &a.id).cmp(&(!b.leader, &b.hostname, &b.id)));
    let n = managers.len();
    let reachable = managers
        .iter()
        .filter(|m| m.reachability == "reachable")
        .count();
    let needed = needed(n);
    let lost = reachable < needed;
    let tolerates = reachable.saturating_sub(needed);
    let next_loss = if n == 0 {
        "no manager is listed".to_string()
    } else if lost {
        format!(
            "the quorum is lost ({reachable} of {n} managers reachable, {needed} needed): the swarm accepts no changes until enough managers are back; running tasks keep running"
        )
    } else if tolerates == 0 {
        "one more manager loss loses the quorum: the swarm would stop accepting changes; running tasks keep running".to_string()
    } else {
        format!(
            "the swarm keeps its quorum through {tolerates} more manager loss(es) ({reachable} reachable, {needed} needed)"
        )
    };
    Quorum {
        managers: n,
        reachable,
        needed,
        tolerates,
        lost,
        workers: nodes.iter().filter(|n| n.manager.is_none()).count(),
        nodes: managers
            .iter()
            .map(|m| ManagerLine {
                id: m.id.clone(),
                hostname: m.hostname.clone(),
                addr: m.addr.clone(),
                reachability: m.reachability.clone(),
                leader: m.leader,
            })
            .collect(),
        next_loss,
    }
}

impl Quorum {
    /// Warnings for `status`: a single or even number of managers, unreachable managers,
    /// no tolerance left, worker nodes (`nodes` names them).
    pub fn warnings(&self, nodes: &[NodeInfo]) -> Vec<String> {
        let mut w = Vec::new();
        let n = self.managers;
        if n == 1 {
            w.push("single manager: losing it loses the swarm's control plane; join two more managers (`reemo-bundle swarm join`)".to_string());
        } else if n > 0 && n.is_multiple_of(2) {
            w.push(format!(
                "{n} managers (even): they tolerate no more failures than {} ({} needed of {n}); use an odd count",
                n - 1,
                self.needed
            ));
        }
        for m in self.nodes.iter().filter(|m| m.reachability != "reachable") {
            w.push(format!(
                "manager {} at {} is {}",
                name(&m.hostname, &m.id),
                if m.addr.is_empty() { "?" } else { &m.addr },
                if m.reachability.is_empty() {
                    "of unknown reachability"
                } else {
                    &m.reachability
                }
            ));
        }
        if n > 1 && (self.lost || self.tolerates == 0) {
            w.push(self.next_loss.clone());
        }
        if self.workers > 0 {
            let names: Vec<String> = nodes
                .iter()
                .filter(|x| x.manager.is_none())
                .map(|x| name(&x.hostname, &x.id))
                .collect();
            w.push(format!(
                "{} worker node(s) ({}): the seeds want managers only; join nodes as managers (`reemo-bundle swarm join-token --out FILE`, then `swarm join --token-file FILE`)",
                self.workers,
                names.join(", ")
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, role: Option<(&str, bool)>) -> NodeInfo {
        NodeInfo {
            id: format!("{host}id0123456789"),
            hostname: host.to_string(),
            addr: format!("10.0.0.{}", host.len()),
            labels: Default::default(),
            manager: role.map(|(reach, leader)| ManagerNode {
                id: format!("{host}id0123456789"),
                hostname: host.to_string(),
                addr: format!("10.0.0.{}:2377", host.len()),
                reachability: reach.to_string(),
                leader,
            }),
        }
    }

    fn managers(states: &[&str]) -> Vec<NodeInfo> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| node(&format!("m{i}"), Some((s, i == 0))))
            .collect()
    }

    #[test]
    fn quorum_needed_and_tolerance_by_manager_count() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(needed), [1, 2, 2, 3, 3, 4]);
        assert_eq!(
            [0, 1, 2, 3, 4, 5].map(tolerated_failures),
            [0, 0, 0, 1, 1, 2]
        );
        // (reachability of each manager) -> (needed, reachable, tolerates, lost)
        type Row<'a> = (&'a [&'a str], (usize, usize, usize, bool));
        let table: [Row; 7] = [
            (&["reachable"], (1, 1, 0, false)),
            (&["reachable"; 2], (2, 2, 0, false)),
            (&["reachable"; 3], (2, 3, 1, false)),
            (&["reachable", "reachable", "unreachable"], (2, 2, 0, false)),
            (
                &["reachable", "unreachable", "unreachable"],
                (2, 1, 0, true),
            ),
            (&["reachable"; 5], (3, 5, 2, false)),
            (
                &[
                    "reachable",
                    "reachable",
                    "reachable",
                    "unknown",
                    "unreachable",
                ],
                (3, 3, 0, false),
            ),
        ];
        for (states, want) in table {
            let q = assess(&managers(states));
            assert_eq!(
                (q.needed, q.reachable, q.tolerates, q.lost),
                want,
                "{states:?}"
            );
            assert_eq!(q.managers, states.len());
        }
    }

    #[test]
    fn what_one_more_loss_does_and_the_warnings() {
        let three = managers(&["reachable"; 3]);
        let q = assess(&three);
        assert!(q.next_loss.contains("through 1 more manager loss"), "{q:?}");
        assert!(q.warnings(&three).is_empty(), "{:?}", q.warnings(&three));

        let degraded = managers(&["reachable", "reachable", "unreachable"]);
        let q = assess(&degraded);
        let w = q.warnings(&degraded);
        assert_eq!(
            w,
            [
                "manager m2 (m2id01234567) at 10.0.0.2:2377 is unreachable",
                "one more manager loss loses the quorum: the swarm would stop accepting changes; running tasks keep running",
            ],
            "{w:?}"
        );

        let lost = managers(&["reachable", "unreachable", "unreachable"]);
        let q = assess(&lost);
        assert!(
            q.next_loss
                .starts_with("the quorum is lost (1 of 3 managers reachable, 2 needed)"),
            "{q:?}"
        );

        let w = assess(&managers(&["reachable"])).warnings(&managers(&["reachable"]));
        assert!(w[0].starts_with("single manager"), "{w:?}");
        let four = managers(&["reachable"; 4]);
        let w = assess(&four).warnings(&four);
        assert_eq!(w[0], "4 managers (even): they tolerate no more failures than 3 (3 needed of 4); use an odd count");

        let mut mixed = managers(&["reachable"; 3]);
        mixed.push(node("w1", None));
        let q = assess(&mixed);
        assert_eq!((q.managers, q.workers), (3, 1));
        let w = q.warnings(&mixed);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("1 worker node(s) (w1 (w1id01234567)): the seeds want managers only"),
            "{w:?}"
        );
    }

    #[test]
    fn the_leader_comes_first() {
        let mut nodes = managers(&["reachable"; 3]);
        nodes[0].manager.as_mut().unwrap().leader = false;
        nodes[2].manager.as_mut().unwrap().leader = true;
        let q = assess(&nodes);
        let order: Vec<&str> = q.nodes.iter().map(|m| m.hostname.as_str()).collect();
        assert_eq!(order, ["m2", "m0", "m1"]);
    }
}
