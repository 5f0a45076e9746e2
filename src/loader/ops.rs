//! `status`, `generations`, `gc` and `swarm init`: reports and housekeeping over the state
//! directory and the engines, returned as data for the command layer to print.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use serde::Serialize;

use super::activate::Host;
use super::apply::{self, Timing};
use crate::state::{GenResult, StateDir};
use crate::swarm::init::{quorum_warnings, tolerated_failures, InitOptions};

/// One line of `generations`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationLine {
    /// Number.
    pub number: u64,
    /// Whether it is current.
    pub current: bool,
    /// Bundle name.
    pub bundle: String,
    /// Bundle version.
    pub version: String,
    /// Bundle identity.
    pub identity: String,
    /// Unix time.
    pub created: u64,
    /// Result.
    pub result: String,
    /// Error, if failed.
    pub error: Option<String>,
}

/// `generations`.
pub fn generations(state_dir: &std::path::Path) -> Result<Vec<GenerationLine>> {
    let state = StateDir::open_existing(state_dir);
    let current = state.current()?;
    Ok(state
        .generations()?
        .into_iter()
        .map(|g| GenerationLine {
            number: g.number,
            current: Some(g.number) == current,
            bundle: g.desired.bundle.name.clone(),
            version: g.desired.bundle.version.clone(),
            identity: g.desired.bundle.identity.clone(),
            created: g.created,
            result: g.result.to_string(),
            error: g.error.clone(),
        })
        .collect())
}

/// One service in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Full name.
    pub name: String,
    /// Running tasks of the live spec.
    pub running: usize,
    /// Desired replicas.
    pub desired: u64,
    /// `healthy`, `converging`, `missing`, `drifted` (spec differs from the generation).
    pub health: String,
    /// Whether this is a job.
    pub job: bool,
}

/// Image presence on one engine.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePresence {
    /// Engine.
    pub engine: String,
    /// Image reference.
    pub image: String,
    /// Image ID.
    pub id: String,
    /// Present.
    pub present: bool,
}

/// `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Current generation number.
    pub generation: Option<u64>,
    /// Stack.
    pub stack: Option<String>,
    /// Bundle name.
    pub bundle: Option<String>,
    /// Bundle version.
    pub version: Option<String>,
    /// Bundle identity.
    pub identity: Option<String>,
    /// Pinned versions.
    pub pinned: std::collections::BTreeMap<String, String>,
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// Images per engine.
    pub images: Vec<ImagePresence>,
    /// Swarm: managers.
    pub managers: i64,
    /// Swarm: the manager nodes, with reachability and leadership.
    pub manager_nodes: Vec<crate::engine::ManagerNode>,
    /// Swarm: nodes.
    pub nodes: i64,
    /// Manager failures the quorum tolerates.
    pub tolerated_failures: i64,
    /// Warnings (quorum, missing images, drift).
    pub warnings: Vec<String>,
    /// Unfinished activation: what was done about it, or that one is running now.
    pub journal: Option<String>,
}

/// `status`.
pub async fn status(host: &Host, timing: Timing) -> Result<Status> {
    let engine = host.manager();
    let facts = engine.require_manager().await?;
    let state = StateDir::open_existing(&host.state_dir);
    let mut journal = None;
    if state.root().exists() {
        match state.lock() {
            Ok(_lock) => journal = apply::recover(&state, engine, timing, true).await?,
            Err(e) => journal = Some(format!("an activation is running: {e:#}")),
        }
    }
    let mut warnings = quorum_warnings(facts.managers);
    let manager_nodes = engine.managers().await?;
    let unreachable = manager_nodes
        .iter()
        .filter(|m| m.reachability != "reachable")
        .count() as i64;
    if unreachable > 0 {
        warnings.push(format!(
            "{unreachable} of {} manager(s) not reachable: the quorum tolerates {} more failure(s)",
            facts.managers,
            (tolerated_failures(facts.managers) - unreachable).max(0)
        ));
    }
    let current = if state.root().exists() {
        state.current_generation()?
    } else {
        None
    };
    let mut st = Status {
        generation: current.as_ref().map(|g| g.number),
        stack: None,
        bundle: None,
        version: None,
        identity: None,
        pinned: Default::default(),
        services: vec![],
        images: vec![],
        managers: facts.managers,
        manager_nodes,
        nodes: facts.nodes,
        tolerated_failures: tolerated_failures(facts.managers),
        warnings: vec![],
        journal,
    };
    if let Some(g) = current {
        let d = &g.desired;
        st.stack = Some(d.stack.clone());
        st.bundle = Some(d.bundle.name.clone());
        st.version = Some(d.bundle.version.clone());
        st.identity = Some(d.bundle.identity.clone());
        st.pinned = d.bundle.pinned.clone();
        let live = engine.stack_services(&d.stack).await?;
        for s in &d.services {
            let l = live.iter().find(|l| l.name == s.full_name);
            let tasks = if l.is_some() {
                engine.tasks(&s.full_name).await?
            } else {
                vec![]
            };
            let mine = |state: &str| {
                tasks
                    .iter()
                    .filter(|t| t.spec_hash.as_deref() == Some(&s.spec_hash) && t.state == state)
                    .count()
            };
            let (running, want) = if s.job {
                (mine("complete"), l.and_then(|l| l.replicas).unwrap_or(1))
            } else {
                (mine("running"), l.and_then(|l| l.replicas).unwrap_or(1))
            };
            let health = match l {
                None => "missing",
                Some(l) if l.spec_hash.as_deref() != Some(&s.spec_hash) => "drifted",
                Some(_) if running as u64 >= want => {
                    if s.job {
                        "completed"
                    } else {
                        "healthy"
                    }
                }
                Some(_) => "converging",
            };
            if health == "missing" || health == "drifted" {
                warnings.push(format!(
                    "service {} is {health}: re-run `reemo-bundle activate` or `rollback --to {}`",
                    s.full_name, g.number
                ));
            }
            st.services.push(ServiceStatus {
                name: s.full_name.clone(),
                running,
                desired: want,
                health: health.into(),
                job: s.job,
            });
        }
        for e in &host.engines {
            for img in &d.images {
                let present = e.has_image(&img.id).await?;
                if !present {
                    warnings.push(format!("image {} is missing on {}", img.reference, e.url));
                }
                st.images.push(ImagePresence {
                    engine: e.url.clone(),
                    image: img.reference.clone(),
                    id: img.id.clone(),
                    present,
                });
            }
        }
    }
    st.warnings = warnings;
    Ok(st)
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Generation numbers removed.
    pub generations: Vec<u64>,
    /// Image IDs removed (per engine they were removed from).
    pub images: Vec<String>,
    /// Configs removed.
    pub configs: Vec<String>,
    /// Secrets removed.
    pub secrets: Vec<String>,
    /// Store entries removed.
    pub store: Vec<String>,
    /// Things kept because they are still in use.
    pub kept_in_use: Vec<String>,
}

/// `gc --keep K`: keep the current generation and the newest succeeded ones up to K in all;
/// remove the rest and whatever only they used.
pub async fn gc(host: &Host, keep: usize, timing: Timing) -> Result<GcReport> {
    if keep == 0 {
        bail!("--keep must be at least 1 (the current generation is always kept)");
    }
    let engine = host.manager();
    engine.require_manager().await?;
    let state = StateDir::open(&host.state_dir)?;
    let _lock = state.lock()?;
    if let Some(r) = apply::recover(&state, engine, timing, true).await? {
        eprintln!("{r}");
    }
    let current = state.current()?;
    let gens = state.generations()?;
    let mut kept: BTreeSet<u64> = current.into_iter().collect();
    for g in gens.iter().rev() {
        if kept.len() >= keep {
            break;
        }
        if g.result == GenResult::Succeeded {
            kept.insert(g.number);
        }
    }
    let (keep_g, drop_g): (Vec<_>, Vec<_>) =
        gens.into_iter().partition(|g| kept.contains(&g.number));
    let mut used_images = BTreeSet::new();
    let mut used_cfg = BTreeSet::new();
    let mut used_sec = BTreeSet::new();
    let mut used_store = BTreeSet::new();
    for g in &keep_g {
        used_images.extend(g.desired.images.iter().map(|i| i.id.clone()));
        used_cfg.extend(g.desired.configs.iter().map(|c| c.name.clone()));
        used_sec.extend(g.desired.secrets.iter().map(|c| c.name.clone()));
        used_store.insert(g.desired.bundle.identity.clone());
        for o in g.desired.configs.iter().chain(&g.desired.secrets) {
            if let crate::swarm::desired::ObjectSource::Store { identity, .. } = &o.source {
                used_store.insert(identity.clone());
            }
        }
    }
    let mut r = GcReport::default();
    let mut stacks = BTreeSet::new();
    let mut images = BTreeSet::new();
    let mut cfgs = BTreeSet::new();
    let mut secs = BTreeSet::new();
    for g in &drop_g {
        stacks.insert(g.desired.stack.clone());
        images.extend(
            g.desired
                .images
                .iter()
                .filter(|i| !used_images.contains(&i.id))
                .map(|i| i.id.clone()),
        );
        cfgs.extend(
            g.desired
                .configs
                .iter()
                .filter(|c| !used_cfg.contains(&c.name))
                .map(|c| c.name.clone()),
        );
        secs.extend(
            g.desired
                .secrets
                .iter()
                .filter(|c| !used_sec.contains(&c.name))
                .map(|c| c.name.clone()),
        );
    }
    for stack in &stacks {
        let live_cfg = engine.stack_configs(stack).await?;
        for c in cfgs.iter().filter(|c| live_cfg.contains_key(*c)) {
            match engine.remove_config(c).await {
                Ok(()) => r.configs.push(c.clone()),
                Err(e) => r.kept_in_use.push(format!("config {c}: {e:#}")),
            }
        }
        let live_sec = engine.stack_secrets(stack).await?;
        for c in secs.iter().filter(|c| live_sec.contains_key(*c)) {
            match engine.remove_secret(c).await {
                Ok(()) => r.secrets.push(c.clone()),
                Err(e) => r.kept_in_use.push(format!("secret {c}: {e:#}")),
            }
        }
    }
    for e in &host.engines {
        let node = e.swarm_facts().await?.node_id;
        for id in &images {
            if e.remove_image(id).await? {
                let label = crate::swarm::spec::image_label(id);
                engine.set_node_label(&node, &label, None).await?;
                r.images.push(id.clone());
            } else if e.has_image(id).await? {
                r.kept_in_use
                    .push(format!("image {id} on {} (in use by a container)", e.url));
            }
        }
    }
    for id in state.store_entries()? {
        if !used_store.contains(&id) {
            state.remove_store(&id)?;
            r.store.push(id);
        }
    }
    for g in &drop_g {
        state.remove_generation(g.number)?;
        r.generations.push(g.number);
    }
    Ok(r)
}

/// `swarm init`.
pub async fn swarm_init(host: &Host, opts: &InitOptions) -> Result<(String, Vec<String>)> {
    let warnings = opts.validate()?;
    let engine = host.manager();
    let facts = engine.swarm_facts().await?;
    if facts.state != "inactive" {
        bail!(
            "the engine at {} is already part of a swarm (state {}, node {}); a swarm is not re-initialised, and its advertise address, address pool and data path port cannot change once it exists",
            engine.url,
            facts.state,
            facts.node_id
        );
    }
    let id = engine.init_swarm(&opts.request()).await?;
    Ok((id, warnings))
}
