//! The applier: runs plan steps against the engine, waits for convergence, and runs the
//! whole-stack transaction (journal, commit of `current`, revert on failure or after a
//! crash).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{fail_point, fault};
use crate::engine::{Engine, TaskInfo};
use crate::state::journal::{Journal, Stage};
use crate::state::{now, GenResult, StateDir};
use crate::swarm::desired::{
    DesiredNetwork, DesiredObject, DesiredService, DesiredStack, ObjectSource,
};
use crate::swarm::plan::{self, Observed, Step};
use crate::swarm::spec;

/// Timing of convergence.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Deadline for the whole activation.
    pub timeout: Duration,
    /// How long the stack must stay converged.
    pub monitor: Duration,
}

/// Observe the stack as the planner needs it.
pub async fn observe(engine: &Engine, stack: &str) -> Result<Observed> {
    let services = engine
        .stack_services(stack)
        .await?
        .into_iter()
        .map(|s| (s.name, s.spec_hash))
        .collect();
    Ok(Observed {
        services,
        configs: engine.stack_configs(stack).await?.into_keys().collect(),
        secrets: engine.stack_secrets(stack).await?.into_keys().collect(),
        networks: engine.stack_networks(stack).await?.into_iter().collect(),
    })
}

fn object_content(state: &StateDir, o: &DesiredObject) -> Result<Vec<u8>> {
    match &o.source {
        ObjectSource::Store { identity, path } => state.store_file(identity, path),
        ObjectSource::Generated { key } => state
            .generated_secret(key)?
            .with_context(|| format!("generated secret {key} is missing from the state directory")),
    }
}

fn already_exists(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("already exists") || s.contains("409")
}

async fn apply_step(
    step: &Step,
    desired: &DesiredStack,
    state: &StateDir,
    engine: &Engine,
    deadline: Instant,
    timing: Timing,
) -> Result<()> {
    let stack = desired.stack.as_str();
    let service = |name: &str| -> Result<&DesiredService> {
        desired
            .services
            .iter()
            .find(|s| s.full_name == name)
            .with_context(|| format!("service {name} is not in the desired state"))
    };
    match step {
        Step::CreateNetwork { name } => {
            let n = desired_network(desired, name)?;
            if let Err(e) = engine
                .create_network(&spec::network_request(stack, n))
                .await
            {
                if !engine.stack_networks(stack).await?.contains(name) {
                    return Err(e);
                }
            }
        }
        Step::CreateConfig { name } | Step::CreateSecret { name } => {
            let is_cfg = matches!(step, Step::CreateConfig { .. });
            let list = if is_cfg {
                &desired.configs
            } else {
                &desired.secrets
            };
            let o = list
                .iter()
                .find(|o| &o.name == name)
                .with_context(|| format!("{name} is not in the desired state"))?;
            let data = object_content(state, o)?;
            let labels = spec::object_labels(stack, &o.sha256);
            let r = if is_cfg {
                engine.create_config(name, &data, &labels).await
            } else {
                engine.create_secret(name, &data, &labels).await
            };
            match r {
                Err(e) if !already_exists(&e) => return Err(e),
                _ => {}
            }
        }
        Step::CreateService { service: name, .. } | Step::UpdateService { service: name, .. } => {
            let s = service(name)?;
            let cfg = engine.stack_configs(stack).await?;
            let sec = engine.stack_secrets(stack).await?;
            let full =
                spec::fill_ids(&s.spec, &cfg, &sec).with_context(|| format!("service {name}"))?;
            let exists = engine.service(stack, name).await?.is_some();
            let mut recreated = 0;
            loop {
                let r = if exists {
                    engine.update_service(&full).await
                } else {
                    engine.create_service(&full).await.map(|_| ())
                };
                match r {
                    Err(e) if recreated < 3 => match missing_network(&e) {
                        Some(net) => {
                            recreate_network(engine, desired, &net, deadline)
                                .await
                                .with_context(|| format!("service {name}: {e:#}"))?;
                            recreated += 1;
                        }
                        None => return Err(e),
                    },
                    r => break r?,
                }
            }
        }
        Step::RemoveService { service } => engine.remove_service(service).await?,
        Step::Converge { services, .. } => {
            let svcs: Vec<&DesiredService> =
                services.iter().map(|n| service(n)).collect::<Result<_>>()?;
            converge(engine, stack, &svcs, deadline, timing.monitor).await?;
        }
        Step::RemoveConfig { name } => engine.remove_config(name).await?,
        Step::RemoveSecret { name } => engine.remove_secret(name).await?,
        Step::RemoveNetwork { name } => engine.remove_network(name).await?,
    }
    Ok(())
}

/// The network named by a "network NAME not found" error from the engine.
fn missing_network(e: &anyhow::Error) -> Option<String> {
    let text = format!("{e:#}");
    let at = text.rfind("network ")?;
    let rest = &text[at + "network ".len()..];
    let name = rest.split_whitespace().next()?;
    rest[name.len()..]
        .trim_start()
        .starts_with("not found")
        .then(|| name.trim_matches(|c| c == '"' || c == '\'').to_string())
}

fn desired_network<'a>(desired: &'a DesiredStack, name: &str) -> Result<&'a DesiredNetwork> {
    desired
        .networks
        .iter()
        .find(|n| n.name == name)
        .with_context(|| format!("network {name} is not in the desired state"))
}

/// `docker stack rm` removes a stack's networks only once their tasks have stopped, so a
/// network the plan saw can vanish before a service that needs it is created. Create the
/// desired network `name` again, waiting (bounded by `deadline`) while the old one is still
/// being removed. Networks outside the desired state (external ones) are not created.
async fn recreate_network(
    engine: &Engine,
    desired: &DesiredStack,
    name: &str,
    deadline: Instant,
) -> Result<()> {
    let n = desired_network(desired, name)?;
    if n.external {
        bail!("network {name} is missing and is external: this stack does not create it");
    }
    loop {
        match engine
            .create_network(&spec::network_request(&desired.stack, n))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if already_exists(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("network {name} vanished (a `docker stack rm` still running?) and could not be created again")
                })
            }
        }
    }
}

/// Describe a failed task: error, exit code, last log lines.
async fn task_failure(engine: &Engine, service: &str, t: &TaskInfo) -> anyhow::Error {
    let logs = engine.task_logs(&t.id, 10).await;
    let mut msg = format!(
        "service {service} failed: task {} {}: {}",
        &t.id[..t.id.len().min(12)],
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

/// Wait until every service runs its desired spec (jobs: completed), healthy, with its
/// update completed, and stays so for `monitor`. Fails fast on a failed or rejected task.
pub async fn converge(
    engine: &Engine,
    stack: &str,
    services: &[&DesiredService],
    deadline: Instant,
    monitor: Duration,
) -> Result<()> {
    let mut stable_since: Option<Instant> = None;
    let mut last_wait = String::new();
    loop {
        let live: BTreeMap<String, crate::engine::LiveService> = engine
            .stack_services(stack)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut all_ok = true;
        let mut all_updated = true;
        for s in services {
            let Some(l) = live.get(&s.full_name) else {
                bail!("service {} disappeared while converging", s.full_name);
            };
            let tasks = engine.tasks(&s.full_name).await?;
            let mine: Vec<&TaskInfo> = tasks
                .iter()
                .filter(|t| t.spec_hash.as_deref() == Some(s.spec_hash.as_str()))
                .collect();
            if let Some(t) = mine
                .iter()
                .find(|t| t.state == "failed" || t.state == "rejected")
            {
                return Err(task_failure(engine, &s.full_name, t).await);
            }
            if let Some(st) = l.update_state.as_deref() {
                if st == "paused" || st.starts_with("rollback") {
                    let msg = l.update_message.clone().unwrap_or_default();
                    // The message names the task that ended early; report it in full.
                    if let Some(t) = tasks
                        .iter()
                        .find(|t| !t.id.is_empty() && msg.contains(&t.id))
                    {
                        return Err(task_failure(engine, &s.full_name, t)
                            .await
                            .context(format!("update {st}")));
                    }
                    bail!("service {} update {st}: {msg}", s.full_name);
                }
            }
            let want = l.replicas.unwrap_or(1).max(1) as usize;
            let ok = if s.job {
                mine.iter().filter(|t| t.state == "complete").count() >= want
            } else {
                let running = mine
                    .iter()
                    .filter(|t| t.state == "running" && t.desired == "running")
                    .count();
                let stale = tasks.iter().any(|t| {
                    t.desired == "running" && t.spec_hash.as_deref() != Some(&s.spec_hash)
                });
                if !matches!(l.update_state.as_deref(), None | Some("completed")) {
                    // Swarm's own update monitor runs in parallel with our window.
                    all_updated = false;
                }
                running >= want && !stale
            };
            if !ok {
                all_ok = false;
                let latest = mine.iter().max_by(|a, b| a.created.cmp(&b.created));
                last_wait = format!(
                    "{}: {}",
                    s.full_name,
                    latest
                        .map(|t| format!("task {} ({})", t.state, t.message))
                        .unwrap_or_else(|| "no task yet".into())
                );
            }
        }
        let now = Instant::now();
        if all_ok {
            let since = *stable_since.get_or_insert(now);
            if now.duration_since(since) >= monitor && all_updated {
                return Ok(());
            }
        } else {
            stable_since = None;
        }
        if now >= deadline {
            bail!("timed out waiting for convergence; {last_wait}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One activation: generation `target` (already recorded) replaces `previous`.
pub struct Transaction<'a> {
    /// State directory (locked by the caller).
    pub state: &'a StateDir,
    /// Manager engine.
    pub engine: &'a Engine,
    /// `activate` or `rollback`.
    pub kind: &'a str,
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
    /// Progress on stderr.
    pub quiet: bool,
}

impl Transaction<'_> {
    /// Apply, wait, commit; on failure revert the whole stack and return the error.
    pub async fn run(self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.timing.timeout;
        let mut journal = Journal {
            kind: self.kind.to_string(),
            pid: std::process::id(),
            started: now(),
            target: self.target,
            new_generation: self.new_generation,
            previous: self.previous,
            steps: self.steps.clone(),
            done: 0,
            stage: Stage::Applying,
        };
        self.state.put_journal(&journal)?;
        fault("journal");
        let mut failure = None;
        for (i, step) in self.steps.iter().enumerate() {
            if !self.quiet {
                eprintln!("[{}/{}] {step}", i + 1, self.steps.len());
            }
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
            let r = r
                .and_then(|()| fail_point(&format!("step-{}", i + 1)))
                .and_then(|()| self.state.put_journal(&journal));
            if let Err(e) = r {
                failure = Some(e);
                break;
            }
            fault(&format!("step-{}", i + 1));
        }
        if let Some(e) = failure {
            journal.stage = Stage::Reverting;
            let _ = self.state.put_journal(&journal);
            let reverted = revert(self.state, self.engine, &journal, self.timing, self.quiet).await;
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
                    "reverting to generation {p} failed too ({r:#}); generation {p} stays current and the next activate, rollback or status retries the revert"
                ),
                (Err(r), None) => format!(
                    "removing what it created failed too ({r:#}); the next activate, rollback or status retries"
                ),
            };
            if reverted.is_ok() {
                self.state.remove_journal()?;
            }
            return Err(e.context(format!(
                "{} of generation {} failed; {back}",
                self.kind, self.target
            )));
        }
        let mut g = self.state.generation(self.target)?;
        g.result = GenResult::Succeeded;
        g.error = None;
        self.state.put_generation(&g)?;
        self.state.set_current(self.target)?;
        journal.stage = Stage::Committed;
        self.state.put_journal(&journal)?;
        fault("commit");
        self.state.remove_journal()?;
        Ok(())
    }
}

/// Undo an attempt recorded in `journal`: re-apply the previous generation's specs to every
/// service it may have touched, remove what it created, wait for the reverted services.
pub async fn revert(
    state: &StateDir,
    engine: &Engine,
    journal: &Journal,
    timing: Timing,
    quiet: bool,
) -> Result<()> {
    fail_point("revert")?;
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
        if !quiet {
            eprintln!("revert: {step}");
        }
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

/// Finish or revert an activation a crashed process left in the journal. Returns what was
/// done, for the command to report; `None` when there was nothing to recover.
pub async fn recover(
    state: &StateDir,
    engine: &Engine,
    timing: Timing,
    quiet: bool,
) -> Result<Option<String>> {
    let Some(journal) = state.journal()? else {
        // A generation recorded just before a crash, with no journal yet: nothing changed.
        let current = state.current()?;
        for mut g in state.generations()? {
            if g.result == GenResult::Pending && Some(g.number) != current {
                g.result = GenResult::Failed;
                g.error = Some("interrupted before any change".into());
                state.put_generation(&g)?;
            }
        }
        return Ok(None);
    };
    let current = state.current()?;
    if current == Some(journal.target) {
        let mut g = state.generation(journal.target)?;
        if g.result != GenResult::Succeeded {
            g.result = GenResult::Succeeded;
            state.put_generation(&g)?;
        }
        state.remove_journal()?;
        return Ok(Some(format!(
            "recovered an interrupted {} (pid {}): generation {} had been switched to current; finished it",
            journal.kind, journal.pid, journal.target
        )));
    }
    if !quiet {
        eprintln!(
            "an interrupted {} of generation {} (pid {}, {} of {} steps done) is being reverted",
            journal.kind,
            journal.target,
            journal.pid,
            journal.done,
            journal.steps.len()
        );
    }
    revert(state, engine, &journal, timing, quiet)
        .await
        .with_context(|| {
            format!(
                "reverting the interrupted {} of generation {}",
                journal.kind, journal.target
            )
        })?;
    if journal.new_generation {
        let mut g = state.generation(journal.target)?;
        g.result = GenResult::Failed;
        g.error = Some("interrupted; reverted by the next command".into());
        state.put_generation(&g)?;
    }
    state.remove_journal()?;
    Ok(Some(match journal.previous {
        Some(p) => format!(
            "recovered an interrupted {} (pid {}): generation {} reverted, generation {p} stays current",
            journal.kind, journal.pid, journal.target
        ),
        None => format!(
            "recovered an interrupted {} (pid {}): generation {} reverted, nothing is current",
            journal.kind, journal.pid, journal.target
        ),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_network_is_read_from_the_engine_error() {
        let e = anyhow::anyhow!(
            "Docker responded with status code 500: network lstackrm_default not found"
        )
        .context("creating service lstackrm_app");
        assert_eq!(
            super::missing_network(&e).as_deref(),
            Some("lstackrm_default")
        );
        let e = anyhow::anyhow!("network lstackrm_default is in use");
        assert_eq!(super::missing_network(&e), None);
        let e = anyhow::anyhow!("No such image: sha256:aa");
        assert_eq!(super::missing_network(&e), None);
    }
}
