//! What runs on the host, as plain data: the swarm facts of an engine, its nodes, the stack's
//! services and their tasks. The engine seam (`crate::engine`) fills these in; every
//! decision about them (`health`, `plan`, `feasible`) is a pure function over them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// An engine-side id (service, task, node) or a content identity; `short()` is the form
/// shown to people.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(pub String);

impl Id {
    /// The first 12 characters (after a `sha256:` prefix), as `docker` prints ids.
    pub fn short(&self) -> &str {
        short(&self.0)
    }
    /// The whole id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Id {
        Id(s.to_string())
    }
}

/// The first 12 characters of an id or digest (after a `sha256:` prefix).
pub fn short(id: &str) -> &str {
    let s = id.strip_prefix("sha256:").unwrap_or(id);
    &s[..s.len().min(12)]
}

/// Swarm membership of an engine's node (`GET /info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwarmState {
    /// Not in a swarm.
    Inactive,
    /// Joining.
    Pending,
    /// In a swarm.
    Active,
    /// Swarm error.
    Error,
    /// Autolocked swarm, not unlocked yet.
    Locked,
}

impl fmt::Display for SwarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwarmState::Inactive => "inactive",
            SwarmState::Pending => "pending",
            SwarmState::Active => "active",
            SwarmState::Error => "error",
            SwarmState::Locked => "locked",
        })
    }
}

/// Swarm facts of an engine's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmFacts {
    /// Membership.
    pub state: SwarmState,
    /// Whether this node is a manager (control plane available).
    pub manager: bool,
    /// This node's id (empty outside a swarm).
    pub node_id: String,
    /// Managers in the swarm.
    pub managers: i64,
    /// Nodes in the swarm.
    pub nodes: i64,
    /// Daemon version.
    pub server_version: String,
}

/// A node of the swarm, as a manager lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Host name the node reports (`Description.Hostname`).
    pub hostname: String,
    /// Its address (`Status.Addr`).
    pub addr: String,
    /// Node labels (`node.labels.*`).
    pub labels: BTreeMap<String, String>,
    /// Manager status, when it is a manager.
    pub manager: Option<ManagerNode>,
}

/// A manager node of the swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerNode {
    /// Node id.
    pub id: String,
    /// Host name the node reports.
    pub hostname: String,
    /// Address other managers reach it at (`ManagerStatus.Addr`, `IP:2377`).
    pub addr: String,
    /// `reachable`, `unreachable`, `unknown`.
    pub reachability: String,
    /// Whether it is the raft leader.
    pub leader: bool,
}

/// A task's state (observed or desired), as Swarm names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// new, pending, assigned, accepted, preparing, ready, starting: on its way.
    Starting,
    /// Running.
    Running,
    /// Exited 0 (jobs).
    Complete,
    /// Stopped by Swarm (replaced, scaled down, removed).
    Shutdown,
    /// Exited non-zero or could not start.
    Failed,
    /// Refused by the node (no such image, no resources).
    Rejected,
    /// remove, orphaned or a state this version does not know.
    Other,
}

impl TaskState {
    /// From Swarm's state name.
    pub fn parse(s: &str) -> TaskState {
        match s {
            "new" | "pending" | "assigned" | "accepted" | "preparing" | "ready" | "starting" => {
                TaskState::Starting
            }
            "running" => TaskState::Running,
            "complete" => TaskState::Complete,
            "shutdown" => TaskState::Shutdown,
            "failed" => TaskState::Failed,
            "rejected" => TaskState::Rejected,
            _ => TaskState::Other,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Other => "other",
        })
    }
}

/// A service's update status (`UpdateStatus.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    /// An update is rolling out.
    Updating,
    /// Swarm paused the update (a task failed under `failure_action: pause`).
    Paused,
    /// The update finished.
    Completed,
    /// Swarm rolls the update back, or has (its own per-service rollback).
    RollingBack,
    /// A state this version does not know.
    Other,
}

impl UpdateState {
    /// From Swarm's state name.
    pub fn parse(s: &str) -> UpdateState {
        match s {
            "updating" => UpdateState::Updating,
            "paused" => UpdateState::Paused,
            "completed" => UpdateState::Completed,
            s if s.starts_with("rollback") => UpdateState::RollingBack,
            _ => UpdateState::Other,
        }
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollingBack => "rolling back",
            UpdateState::Other => "in an unknown state",
        })
    }
}

/// A service of the stack as it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveService {
    /// Service id.
    pub id: Id,
    /// Full name `<stack>_<name>`.
    pub name: String,
    /// Value of the spec-hash label, if set.
    pub spec_hash: Option<String>,
    /// Object version for updates.
    pub version: u64,
    /// Desired tasks: replicas (replicated), completions (job), or for a global service the
    /// tasks Swarm wants running (one per eligible node); None when unknown.
    pub replicas: Option<u64>,
    /// Update status, if any.
    pub update_state: Option<UpdateState>,
    /// Update status message.
    pub update_message: Option<String>,
}

/// One task of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Task id.
    pub id: Id,
    /// Spec-hash label of the task's container spec.
    pub spec_hash: Option<String>,
    /// Observed state.
    pub state: TaskState,
    /// Desired state.
    pub desired: TaskState,
    /// Status message.
    pub message: String,
    /// Error, if any.
    pub err: Option<String>,
    /// Container exit code, if it exited.
    pub exit_code: Option<i64>,
    /// Creation timestamp (RFC 3339 text; sorts by time).
    pub created: String,
    /// Node id.
    pub node_id: String,
}

/// The stack's objects as the planner needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Services of the stack: full name → spec-hash label.
    pub services: BTreeMap<String, Option<String>>,
    /// Config names of the stack.
    pub configs: BTreeSet<String>,
    /// Secret names of the stack.
    pub secrets: BTreeSet<String>,
    /// Network names of the stack.
    pub networks: BTreeSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(
            Id::from("k7i00ae3tkhjp085xf1bt009i").short(),
            "k7i00ae3tkhj"
        );
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn states_from_swarm_names() {
        for (s, want) in [
            ("new", TaskState::Starting),
            ("preparing", TaskState::Starting),
            ("running", TaskState::Running),
            ("complete", TaskState::Complete),
            ("failed", TaskState::Failed),
            ("rejected", TaskState::Rejected),
            ("shutdown", TaskState::Shutdown),
            ("orphaned", TaskState::Other),
        ] {
            assert_eq!(TaskState::parse(s), want, "{s}");
        }
        assert_eq!(
            UpdateState::parse("rollback_completed"),
            UpdateState::RollingBack
        );
        assert_eq!(UpdateState::parse("paused"), UpdateState::Paused);
    }
}
