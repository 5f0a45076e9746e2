//! The whole-stack transaction of one activation or rollback: journal, steps, convergence,
//! commit of `current` — or, on any failure, the revert of every touched service to the
//! previous generation's spec and the removal of what the attempt created. `revert` stays
//! beside the applier: `recover` uses both.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::steps::apply_step;
use super::{fault, Timing};
use crate::engine::Engine;
use crate::events::{Event, Events};
use crate::state::journal::{Journal, Kind};
use crate::state::{now, GenResult, StateDir};
use crate::swarm::desired::DesiredStack;
use crate::swarm::plan::{self, Step};

/// Observe the stack as the planner needs it.
pub async fn observe(engine: &dyn Engine, stack: &str) -> Result<plan::Observed> {
    let services = engine
        .stack_services(stack)
        .await?
        .into_iter()
        .map(|s| (s.name, s.spec_hash))
        .collect();
    Ok(plan::Observed {
        services,
        configs: engine.stack_configs(stack).await?.into_keys().collect(),
        secrets: engine.stack_secrets(stack).await?.into_keys().collect(),
        networks: engine.stack_networks(stack).await?.into_iter().collect(),
    })
}

/// One activation: generation `target` (already recorded) replaces `previous`.
pub struct Transaction<'a> {
    /// State directory (locked by the caller).
    pub state: &'a StateDir,
    /// Manager engine.
    pub engine: &'a dyn Engine,
    /// `activate` or `rollback`.
    pub kind: Kind,
    /// Generation to activate.
    pub target: u64,
    /// Whether `target` was created for this attempt.
    pub new_generation: bool,
    /// Its desired state.
    pub desired: &'a DesiredStack,
    /// The current generation before the attempt.
    pub previous: Option<u64>,
    /// Planned steps.
    pub steps: Vec<Step>,
    /// Timing.
    pub timing: Timing,
    /// Progress.
    pub events: &'a dyn Events,
    /// Images still loading (see [`Gate`]).
    pub gate: Option<Gate>,
}

/// Images of later phases that load while the first phase the plan changes starts: the
/// transaction waits for them before it creates or updates a service of a later phase.
pub struct Gate {
    /// The phase that does not need them.
    pub after_phase: u32,
    /// The loads (and the node labels that say the nodes hold the images).
    pub handle: tokio::task::JoinHandle<Result<()>>,
}

impl Gate {
    async fn wait(self) -> Result<()> {
        self.handle
            .await
            .map_err(|e| anyhow!("loading the images of the later phases: {e}"))?
    }
}

impl Transaction<'_> {
    /// Apply, wait, commit; on failure revert the whole stack and return the error.
    pub async fn run(mut self) -> Result<()> {
        let deadline = Instant::now() + self.timing.timeout;
        let mut gate = self.gate.take();
        let mut journal = Journal {
            kind: self.kind,
            pid: std::process::id(),
            started: now(),
            target: self.target,
            new_generation: self.new_generation,
            previous: self.previous,
            steps: self.steps.clone(),
            done: 0,
        };
        self.state.put_journal(&journal)?;
        fault("journal");
        let mut failure = None;
        for (i, step) in self.steps.iter().enumerate() {
            let phase = match step {
                Step::CreateService { phase, .. } | Step::UpdateService { phase, .. } => {
                    Some(*phase)
                }
                _ => None,
            };
            if let Some(g) = gate.take_if(|g| phase.is_some_and(|p| p > g.after_phase)) {
                if let Err(e) = g.wait().await {
                    failure = Some(e);
                    break;
                }
            }
            self.events.emit(Event::Step {
                index: i + 1,
                total: self.steps.len(),
                step: step.to_string(),
            });
            let r = apply_step(
                step,
                self.desired,
                self.state,
                self.engine,
                deadline,
                self.timing,
            )
            .await;
            journal.done = i + 1;
            if let Err(e) = r.and_then(|()| self.state.put_journal(&journal)) {
                failure = Some(e);
                break;
            }
            fault(&format!("step-{}", i + 1));
        }
        if let Some(g) = gate.take() {
            if failure.is_some() {
                g.handle.abort();
            } else if let Err(e) = g.wait().await {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            return Err(self.fail(e, &journal).await);
        }
        let mut g = self.state.generation(self.target)?;
        g.result = GenResult::Succeeded;
        g.error = None;
        self.state.put_generation(&g)?;
        self.state.set_current(self.target)?;
        fault("commit");
        self.state.remove_journal()?;
        Ok(())
    }

    /// Revert after `e`; the error to report, saying where the stack is now.
    async fn fail(&self, e: anyhow::Error, journal: &Journal) -> anyhow::Error {
        let reverted = revert(self.state, self.engine, journal, self.timing, self.events).await;
        let msg = format!("{e:#}");
        if self.new_generation {
            if let Ok(mut g) = self.state.generation(self.target) {
                g.result = GenResult::Failed;
                g.error = Some(msg.lines().next().unwrap_or_default().to_string());
                let _ = self.state.put_generation(&g);
            }
        }
        let back = match (&reverted, self.previous) {
            (Ok(()), Some(p)) => {
                format!("the stack is back on generation {p}, which stays current")
            }
            (Ok(()), None) => "the services it created were removed".to_string(),
            (Err(r), Some(p)) => format!(
                "reverting to generation {p} failed too ({r:#}); generation {p} stays current and the next activate, rollback, gc or recover retries the revert"
            ),
            (Err(r), None) => format!(
                "removing what it created failed too ({r:#}); the next activate, rollback, gc or recover retries"
            ),
        };
        if reverted.is_ok() {
            if let Err(j) = self.state.remove_journal() {
                return e.context(format!("{j:#}"));
            }
        }
        e.context(format!(
            "{} of generation {} failed; {back}",
            self.kind, self.target
        ))
    }
}

/// Undo an attempt recorded in `journal`: re-apply the previous generation's specs to every
/// service it may have touched, remove what it created, wait for the reverted services.
pub async fn revert(
    state: &StateDir,
    engine: &dyn Engine,
    journal: &Journal,
    timing: Timing,
    events: &dyn Events,
) -> Result<()> {
    let previous = journal
        .previous
        .map(|n| state.generation(n))
        .transpose()?
        .map(|g| g.desired);
    let target = state.generation(journal.target)?.desired;
    let observed = observe(engine, &target.stack).await?;
    let p = plan::revert(&journal.steps, previous.as_ref(), &observed);
    let empty;
    let desired = match &previous {
        Some(d) => d,
        None => {
            empty = DesiredStack {
                services: vec![],
                ..target.clone()
            };
            &empty
        }
    };
    let deadline = Instant::now() + timing.timeout.max(Duration::from_secs(60));
    let mut errors = Vec::new();
    for step in &p.steps {
        events.emit(Event::Revert {
            step: step.to_string(),
        });
        if let Err(e) = apply_step(step, desired, state, engine, deadline, timing).await {
            errors.push(format!("{step}: {e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}
