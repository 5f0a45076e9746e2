//! Placement feasibility, checked before an activation changes anything (docs/swarm-notes.md,
//! "Placement pitfalls"). Without a registry a task can only run on a node that holds its image, and a
//! `mode: host` published port or `max_replicas_per_node` caps how many tasks a node can
//! take. Swarm does not refuse such a service: its tasks stay pending ("no suitable node")
//! and the activation would only fail at its timeout. Two cases are certain to hang:
//! - more replicas than the eligible nodes can take;
//! - `update_config.order: start-first`, which starts each new task next to the old one, on
//!   a service whose nodes have no free slot for it (a global service with a host port, or
//!   every slot taken).
//!
//! The node count is an upper bound (user placement constraints may exclude some nodes), so
//! a refusal here is always a real hang.

use serde_json::Value;

use super::model::{DesiredService, DesiredStack};
use super::plan::{Plan, Step};

/// What bounds a service's tasks per node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Limits {
    /// Replicas; `None` for a global service (one task per eligible node).
    replicas: Option<u64>,
    /// Tasks a node can run at once, and why (`None`: no limit).
    per_node: Option<(u64, String)>,
    /// New tasks started at once by an update (`Parallelism`, 0 = all).
    parallelism: u64,
    /// `start-first` update order.
    start_first: bool,
}

fn limits(spec: &Value) -> Limits {
    let mode = &spec["Mode"];
    let replicas = if mode.get("Global").is_some() || mode.get("GlobalJob").is_some() {
        None
    } else {
        Some(
            mode["Replicated"]["Replicas"]
                .as_u64()
                .or_else(|| mode["ReplicatedJob"]["MaxConcurrent"].as_u64())
                .unwrap_or(1),
        )
    };
    let host_port = spec["EndpointSpec"]["Ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["PublishMode"] == "host" && p["PublishedPort"].as_u64().is_some())
        .and_then(|p| p["PublishedPort"].as_u64());
    let max = spec["TaskTemplate"]["Placement"]["MaxReplicas"]
        .as_u64()
        .filter(|m| *m > 0);
    let per_node = match (host_port, max) {
        (Some(p), _) => Some((
            1,
            format!("host-mode published port {p} (one task per node)"),
        )),
        (None, Some(m)) => Some((m, format!("max_replicas_per_node {m}"))),
        (None, None) => None,
    };
    Limits {
        replicas,
        per_node,
        parallelism: spec["UpdateConfig"]["Parallelism"].as_u64().unwrap_or(1),
        start_first: spec["UpdateConfig"]["Order"] == "start-first",
    }
}

/// Why service `name` (spec `spec`) cannot converge on `nodes` eligible nodes, if it cannot.
/// `updating`: it already runs and this activation updates it.
fn problem(name: &str, spec: &Value, updating: bool, nodes: u64) -> Option<String> {
    let l = limits(spec);
    if nodes == 0 {
        return Some(format!(
            "service {name}: no node holds its image and has its node role (load the bundle on a node of the swarm; check x-reemo-node-roles)"
        ));
    }
    let (per, why) = l.per_node?;
    let slots = per * nodes;
    let tasks = l.replicas.unwrap_or(nodes);
    if let Some(r) = l.replicas {
        if r > slots {
            return Some(format!(
                "service {name}: {r} replicas, but {why} on {nodes} node(s) holding its image (and with its role) allow {slots}; {} task(s) would stay pending",
                r - slots
            ));
        }
    }
    if updating && l.start_first {
        let batch = if l.parallelism == 0 {
            tasks
        } else {
            l.parallelism.min(tasks)
        };
        // start-first keeps the old tasks until the new ones run; a node's last free slot
        // is all a new task can use
        if tasks + batch > slots {
            return Some(format!(
                "service {name}: update_config.order start-first needs {} task slot(s) during the update ({tasks} running + {batch} new), but {why} on {nodes} node(s) allow {slots}; the update would wait forever: use order: stop-first",
                tasks + batch
            ));
        }
    }
    None
}

/// Check every service the plan creates or updates. `nodes(service)` counts the swarm
/// nodes that can run its tasks (they hold its image and have its node role). Errors list
/// every service that cannot converge.
pub fn check(
    desired: &DesiredStack,
    plan: &Plan,
    nodes: impl Fn(&DesiredService) -> u64,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for step in &plan.steps {
        let (name, updating) = match step {
            Step::CreateService { service, .. } => (service, false),
            Step::UpdateService { service, .. } => (service, true),
            _ => continue,
        };
        let Some(s) = desired.services.iter().find(|s| &s.full_name == name) else {
            continue;
        };
        if let Some(p) = problem(name, &s.spec, updating, nodes(s)) {
            problems.push(p);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::problem;

    fn spec(
        mode: serde_json::Value,
        order: &str,
        par: u64,
        host_port: bool,
        max: u64,
    ) -> serde_json::Value {
        let ports = if host_port {
            json!([{"TargetPort": 8080, "PublishedPort": 8080, "PublishMode": "host"}])
        } else {
            json!([{"TargetPort": 8080, "PublishedPort": 8080, "PublishMode": "ingress"}])
        };
        json!({
            "Mode": mode,
            "UpdateConfig": {"Order": order, "Parallelism": par},
            "EndpointSpec": {"Ports": ports},
            "TaskTemplate": {"Placement": {"MaxReplicas": max}},
        })
    }

    fn replicated(n: u64) -> serde_json::Value {
        json!({"Replicated": {"Replicas": n}})
    }

    #[test]
    fn stop_first_with_a_host_port_fits_one_task_per_node() {
        let s = spec(replicated(1), "stop-first", 1, true, 0);
        assert_eq!(problem("s_relay", &s, true, 1), None);
        let s = spec(replicated(3), "stop-first", 1, true, 0);
        assert_eq!(problem("s_relay", &s, false, 3), None);
        let e = problem("s_relay", &s, false, 2).unwrap();
        assert!(
            e.contains("3 replicas") && e.contains("port 8080") && e.contains("allow 2"),
            "{e}"
        );
    }

    #[test]
    fn start_first_needs_a_free_slot() {
        // one node, host port: the new task can never bind next to the old one
        let s = spec(replicated(1), "start-first", 1, true, 0);
        let e = problem("s_relay", &s, true, 1).unwrap();
        assert!(e.contains("start-first") && e.contains("stop-first"), "{e}");
        // creating it is fine (no old task), and a second node gives the slot
        assert_eq!(problem("s_relay", &s, false, 1), None);
        assert_eq!(problem("s_relay", &s, true, 2), None);
        // parallelism 0 = all at once: 2 replicas need 4 slots
        let s = spec(replicated(2), "start-first", 0, true, 0);
        assert!(problem("s_relay", &s, true, 3).is_some());
        assert_eq!(problem("s_relay", &s, true, 4), None);
        // max_replicas_per_node without host ports
        let s = spec(replicated(2), "start-first", 1, false, 1);
        let e = problem("s_app", &s, true, 2).unwrap();
        assert!(e.contains("max_replicas_per_node 1"), "{e}");
        assert_eq!(problem("s_app", &s, true, 3), None);
        let s = spec(replicated(2), "start-first", 1, false, 2);
        assert_eq!(problem("s_app", &s, true, 2), None);
    }

    #[test]
    fn global_start_first_with_a_host_port_never_fits() {
        let s = spec(json!({"Global": {}}), "start-first", 1, true, 0);
        assert!(problem("s_agent", &s, true, 1).is_some());
        assert!(problem("s_agent", &s, true, 5).is_some());
        let s = spec(json!({"Global": {}}), "stop-first", 1, true, 0);
        assert_eq!(problem("s_agent", &s, true, 5), None);
    }

    #[test]
    fn no_limit_no_problem_but_a_node_is_needed() {
        let s = spec(replicated(10), "start-first", 0, false, 0);
        assert_eq!(problem("s_app", &s, true, 1), None);
        let e = problem("s_app", &s, true, 0).unwrap();
        assert!(e.contains("no node holds its image"), "{e}");
    }
}
