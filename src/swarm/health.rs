//! Is a service converged? One pure assessment over what the engine reports, shared by
//! `activate`/`rollback` (which wait for `Ready`) and `status` (which shows it), so that the
//! two never disagree.

use std::fmt;

use serde::Serialize;

use super::observed::{LiveService, TaskInfo, TaskState, UpdateState};

/// What a generation wants of one service.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// Full service name.
    pub name: &'a str,
    /// Desired spec hash (the service's label).
    pub spec_hash: &'a str,
    /// The label its tasks carry (`DesiredService::task_hash`).
    pub task_hash: &'a str,
    /// One-shot job (converged when its tasks completed).
    pub job: bool,
}

/// The state of one service against what its generation wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// Every desired task runs the desired spec (jobs: completed), no task of another spec
    /// is meant to run, and Swarm's update is finished.
    Ready,
    /// The tasks are as in `Ready`, but Swarm's own update monitor still runs.
    Settling,
    /// Not there yet: why.
    Waiting(String),
    /// A task of the desired spec failed or was rejected: converging cannot succeed.
    Failed(TaskInfo),
    /// Swarm paused or rolled back the update; the task its message names, if found.
    Paused {
        /// Update state.
        state: UpdateState,
        /// Swarm's message.
        message: String,
        /// The task the message names.
        task: Option<TaskInfo>,
    },
    /// The service does not exist.
    Missing,
    /// The service runs another spec than the generation's.
    Drifted,
}

/// How `status` names an assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Converged (a service).
    Healthy,
    /// Converged (a job).
    Completed,
    /// Tasks converged, Swarm's update still in its monitor period.
    Updating,
    /// Waiting for tasks.
    Converging,
    /// A task failed, or the update was paused or rolled back.
    Failed,
    /// No such service.
    Missing,
    /// Another spec runs.
    Drifted,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Completed => "completed",
            Health::Updating => "updating",
            Health::Converging => "converging",
            Health::Failed => "failed",
            Health::Missing => "missing",
            Health::Drifted => "drifted",
        })
    }
}

impl Assessment {
    /// The `status` word for it.
    pub fn health(&self, job: bool) -> Health {
        match self {
            Assessment::Ready if job => Health::Completed,
            Assessment::Ready => Health::Healthy,
            Assessment::Settling => Health::Updating,
            Assessment::Waiting(_) => Health::Converging,
            Assessment::Failed(_) | Assessment::Paused { .. } => Health::Failed,
            Assessment::Missing => Health::Missing,
            Assessment::Drifted => Health::Drifted,
        }
    }

    /// Why the service is not ready, in words (`None` when it is).
    pub fn detail(&self) -> Option<String> {
        match self {
            Assessment::Ready => None,
            Assessment::Settling => Some("Swarm's update monitor is still running".into()),
            Assessment::Waiting(why) => Some(why.clone()),
            Assessment::Failed(t) => {
                let mut m = format!(
                    "task {} {}: {}",
                    t.id.short(),
                    t.state,
                    t.err.clone().unwrap_or_else(|| t.message.clone())
                );
                if let Some(c) = t.exit_code {
                    m.push_str(&format!(" (exit code {c})"));
                }
                Some(m)
            }
            Assessment::Paused { state, message, .. } => Some(format!("update {state}: {message}")),
            Assessment::Missing => Some("the service does not exist".into()),
            Assessment::Drifted => Some("it runs another spec than its generation's".into()),
        }
    }

    /// Whether the tasks are where the generation wants them (`Ready` or `Settling`).
    pub fn tasks_converged(&self) -> bool {
        matches!(self, Assessment::Ready | Assessment::Settling)
    }
}

/// Tasks of `tasks` that run (or ran) the spec `hash`.
pub fn of_spec<'a>(tasks: &'a [TaskInfo], hash: &'a str) -> impl Iterator<Item = &'a TaskInfo> {
    tasks
        .iter()
        .filter(move |t| t.spec_hash.as_deref() == Some(hash))
}

/// Count of tasks of spec `hash` in `state` (for `status`: running tasks, completed jobs).
pub fn count(tasks: &[TaskInfo], hash: &str, state: TaskState) -> usize {
    of_spec(tasks, hash).filter(|t| t.state == state).count()
}

/// Assess one service. `live` is the service as listed (None: absent), `tasks` all of its
/// tasks.
pub fn assess(want: Wanted<'_>, live: Option<&LiveService>, tasks: &[TaskInfo]) -> Assessment {
    let Some(l) = live else {
        return Assessment::Missing;
    };
    if l.spec_hash.as_deref() != Some(want.spec_hash) {
        return Assessment::Drifted;
    }
    if let Some(t) = of_spec(tasks, want.task_hash)
        .find(|t| matches!(t.state, TaskState::Failed | TaskState::Rejected))
    {
        return Assessment::Failed(t.clone());
    }
    if let Some(st @ (UpdateState::Paused | UpdateState::RollingBack)) = l.update_state {
        let message = l.update_message.clone().unwrap_or_default();
        let task = tasks
            .iter()
            .find(|t| !t.id.as_str().is_empty() && message.contains(t.id.as_str()))
            .cloned();
        return Assessment::Paused {
            state: st,
            message,
            task,
        };
    }
    let replicas = l.replicas.unwrap_or(1);
    let converged = if want.job {
        count(tasks, want.task_hash, TaskState::Complete) as u64 >= replicas.max(1)
    } else {
        let running = of_spec(tasks, want.task_hash)
            .filter(|t| t.state == TaskState::Running && t.desired == TaskState::Running)
            .count() as u64;
        let stale = tasks.iter().any(|t| {
            t.desired == TaskState::Running && t.spec_hash.as_deref() != Some(want.task_hash)
        });
        running >= replicas && !stale
    };
    if !converged {
        let latest = of_spec(tasks, want.task_hash).max_by(|a, b| a.created.cmp(&b.created));
        return Assessment::Waiting(match latest {
            Some(t) if t.message.is_empty() => format!("{}: task {}", want.name, t.state),
            Some(t) => format!("{}: task {} ({})", want.name, t.state, t.message),
            None => format!("{}: no task yet", want.name),
        });
    }
    match l.update_state {
        None | Some(UpdateState::Completed) => Assessment::Ready,
        // jobs are not rolled out by the update machinery
        Some(_) if want.job => Assessment::Ready,
        Some(_) => Assessment::Settling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::observed::Id;

    const H: &str = "newspec";

    fn task(id: &str, hash: &str, state: TaskState, desired: TaskState) -> TaskInfo {
        TaskInfo {
            id: Id::from(id),
            spec_hash: Some(hash.into()),
            state,
            desired,
            message: String::new(),
            err: None,
            exit_code: None,
            created: format!("2026-01-01T00:00:0{}Z", id.len() % 10),
            node_id: "n1".into(),
        }
    }

    fn live(hash: &str, replicas: u64, update: Option<UpdateState>) -> LiveService {
        LiveService {
            id: Id::from("svc"),
            name: "s_app".into(),
            spec_hash: Some(hash.into()),
            version: 1,
            replicas: Some(replicas),
            update_state: update,
            update_message: None,
        }
    }

    use TaskState::{Complete, Failed, Rejected, Running, Shutdown, Starting};

    fn want(job: bool) -> Wanted<'static> {
        Wanted {
            name: "s_app",
            spec_hash: H,
            task_hash: H,
            job,
        }
    }

    /// Table: (case, live, tasks, job, expected health).
    #[test]
    fn assessment_table() {
        let run = |id| task(id, H, Running, Running);
        type Case = (
            &'static str,
            Option<LiveService>,
            Vec<TaskInfo>,
            bool,
            Health,
        );
        let cases: Vec<Case> = vec![
            ("absent", None, vec![], false, Health::Missing),
            (
                "other spec live",
                Some(live("old", 1, None)),
                vec![run("a")],
                false,
                Health::Drifted,
            ),
            (
                "one of two running",
                Some(live(H, 2, None)),
                vec![run("a")],
                false,
                Health::Converging,
            ),
            (
                "two of two",
                Some(live(H, 2, None)),
                vec![run("a"), run("b")],
                false,
                Health::Healthy,
            ),
            (
                "an old task still meant to run (stale)",
                Some(live(H, 1, Some(UpdateState::Completed))),
                vec![run("a"), task("o", "old", Running, Running)],
                false,
                Health::Converging,
            ),
            (
                "old task shut down",
                Some(live(H, 1, Some(UpdateState::Completed))),
                vec![run("a"), task("o", "old", Shutdown, Shutdown)],
                false,
                Health::Healthy,
            ),
            (
                "running but swarm's update monitor still going",
                Some(live(H, 1, Some(UpdateState::Updating))),
                vec![run("a")],
                false,
                Health::Updating,
            ),
            (
                "starting (health check not passed yet)",
                Some(live(H, 1, None)),
                vec![task("a", H, Starting, Running)],
                false,
                Health::Converging,
            ),
            (
                "running but about to be shut down",
                Some(live(H, 1, None)),
                vec![task("a", H, Running, Shutdown)],
                false,
                Health::Converging,
            ),
            (
                "failed task of the new spec",
                Some(live(H, 2, None)),
                vec![run("a"), task("b", H, Failed, Shutdown)],
                false,
                Health::Failed,
            ),
            (
                "rejected (no such image)",
                Some(live(H, 1, None)),
                vec![task("a", H, Rejected, Shutdown)],
                false,
                Health::Failed,
            ),
            (
                "an old failed task does not count",
                Some(live(H, 1, None)),
                vec![run("a"), task("o", "old", Failed, Shutdown)],
                false,
                Health::Healthy,
            ),
            (
                "paused update",
                Some(live(H, 1, Some(UpdateState::Paused))),
                vec![run("a")],
                false,
                Health::Failed,
            ),
            (
                "scaled to zero",
                Some(live(H, 0, None)),
                vec![],
                false,
                Health::Healthy,
            ),
            (
                "job running",
                Some(live(H, 1, None)),
                vec![run("j")],
                true,
                Health::Converging,
            ),
            (
                "job complete",
                Some(live(H, 1, None)),
                vec![task("j", H, Complete, Complete)],
                true,
                Health::Completed,
            ),
        ];
        for (case, l, tasks, job, expected) in cases {
            let a = assess(want(job), l.as_ref(), &tasks);
            assert_eq!(a.health(job), expected, "{case}: {a:?}");
        }
    }

    #[test]
    fn waiting_says_for_what_and_paused_names_the_task() {
        let mut t = task("abc", H, Starting, Running);
        t.message = "preparing".into();
        let a = assess(want(false), Some(&live(H, 1, None)), &[t.clone()]);
        assert_eq!(
            a,
            Assessment::Waiting("s_app: task starting (preparing)".into())
        );
        let a = assess(want(false), Some(&live(H, 1, None)), &[]);
        assert_eq!(a, Assessment::Waiting("s_app: no task yet".into()));
        let mut l = live(H, 1, Some(UpdateState::Paused));
        l.update_message =
            Some("update paused due to failure or early termination of task abc".into());
        match assess(want(false), Some(&l), &[t]) {
            Assessment::Paused { task: Some(t), .. } => assert_eq!(t.id.as_str(), "abc"),
            other => panic!("{other:?}"),
        }
    }
}
