//! Waiting for convergence: look at the engine, let `swarm::health::assess` judge each
//! service, and return once all are `Ready` and the tasks stayed converged for the monitor
//! window — or fail at once on a failed or rejected task, naming it with its exit code and
//! last log lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::engine::{Engine, TaskInfo};
use crate::swarm::desired::DesiredService;
use crate::swarm::health::{assess, Assessment, Wanted};

/// Describe a failed task: error, exit code, last log lines.
async fn task_failure(engine: &dyn Engine, service: &str, t: &TaskInfo) -> anyhow::Error {
    let logs = engine.task_logs(t.id.as_str(), 10).await;
    let mut msg = format!(
        "service {service} failed: task {} {}: {}",
        t.id.short(),
        t.state,
        t.err.clone().unwrap_or_else(|| t.message.clone())
    );
    if let Some(c) = t.exit_code {
        msg.push_str(&format!(" (exit code {c})"));
    }
    let logs = logs.trim();
    if !logs.is_empty() {
        msg.push_str("\nlast log lines:\n");
        msg.push_str(logs);
    }
    anyhow!(msg)
}

/// What one look at the stack found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// Every service's tasks are converged.
    pub tasks_converged: bool,
    /// Every service is `Ready` (Swarm's own update monitors are done too).
    pub ready: bool,
    /// The last reason to wait, for a timeout message.
    pub waiting: Option<String>,
}

/// Assess every service once; an error for a failed, paused, missing or drifted one.
pub async fn look(engine: &dyn Engine, stack: &str, services: &[&DesiredService]) -> Result<Look> {
    let live: BTreeMap<String, crate::engine::LiveService> = engine
        .stack_services(stack)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let mut out = Look {
        tasks_converged: true,
        ready: true,
        waiting: None,
    };
    for s in services {
        let l = live.get(&s.full_name);
        let tasks = if l.is_some() {
            engine.tasks(&s.full_name).await?
        } else {
            vec![]
        };
        let want = Wanted {
            name: &s.full_name,
            spec_hash: &s.spec_hash,
            task_hash: s.task_hash(),
            job: s.job,
        };
        match assess(want, l, &tasks) {
            Assessment::Ready => {}
            Assessment::Settling => out.ready = false,
            Assessment::Waiting(why) => {
                out.ready = false;
                out.tasks_converged = false;
                out.waiting = Some(why);
            }
            Assessment::Failed(t) => return Err(task_failure(engine, &s.full_name, &t).await),
            Assessment::Paused {
                state,
                message,
                task,
            } => {
                return Err(match task {
                    Some(t) => task_failure(engine, &s.full_name, &t)
                        .await
                        .context(format!("update {state}")),
                    None => anyhow!("service {} update {state}: {message}", s.full_name),
                })
            }
            Assessment::Missing => bail!("service {} disappeared while converging", s.full_name),
            Assessment::Drifted => bail!(
                "service {} was changed by someone else while converging (its spec is not this generation's)",
                s.full_name
            ),
        }
    }
    Ok(out)
}

/// Wait until every service is ready and its tasks stayed converged for `window`, looking
/// every `poll`. Fails fast on a failed or rejected task; gives up at `deadline`.
pub async fn converge(
    engine: &dyn Engine,
    stack: &str,
    services: &[&DesiredService],
    deadline: Instant,
    poll: Duration,
    window: Duration,
) -> Result<()> {
    let mut stable_since: Option<Instant> = None;
    let mut last_wait = String::new();
    loop {
        let l = look(engine, stack, services).await?;
        let now = Instant::now();
        if l.tasks_converged {
            let since = *stable_since.get_or_insert(now);
            // Swarm's own update monitor runs in parallel with our window.
            if now.duration_since(since) >= window && l.ready {
                return Ok(());
            }
        } else {
            stable_since = None;
        }
        if let Some(w) = l.waiting {
            last_wait = w;
        }
        if now >= deadline {
            bail!("timed out waiting for convergence; {last_wait}");
        }
        tokio::time::sleep(poll).await;
    }
}
