//! `gc --keep K`. What gc may remove is decided purely ([`select`]): the
//! current generation and the newest succeeded ones up to K are kept, and nothing a kept
//! generation still uses (image, config, secret, store entry) is ever selected.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use serde::Serialize;

use super::{recover, Host, Timing};
use crate::events::Event;
use crate::state::{GenResult, Generation, StateDir};
use crate::swarm::desired::ObjectSource;
use crate::swarm::labels::image_label;

/// What gc may remove, decided from the generations alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Generations kept.
    pub keep: BTreeSet<u64>,
    /// Generations to remove.
    pub drop: Vec<u64>,
    /// Stacks the dropped generations ran (where their configs and secrets live).
    pub stacks: BTreeSet<String>,
    /// Image IDs only dropped generations use.
    pub images: BTreeSet<String>,
    /// Config names only dropped generations use.
    pub configs: BTreeSet<String>,
    /// Secret names only dropped generations use.
    pub secrets: BTreeSet<String>,
    /// Store entries (bundle identities) a kept generation still needs.
    pub used_store: BTreeSet<String>,
    /// Secret site values (sha256) a kept generation still names.
    pub used_values: BTreeSet<String>,
}

/// Select what `gc --keep keep` removes.
pub fn select(gens: &[Generation], current: Option<u64>, keep: usize) -> Selection {
    let mut kept: BTreeSet<u64> = current.into_iter().collect();
    for g in gens.iter().rev() {
        if kept.len() >= keep {
            break;
        }
        if g.result == GenResult::Succeeded {
            kept.insert(g.number);
        }
    }
    let (keep_g, drop_g): (Vec<_>, Vec<_>) = gens.iter().partition(|g| kept.contains(&g.number));
    let mut sel = Selection {
        keep: kept,
        drop: drop_g.iter().map(|g| g.number).collect(),
        ..Selection::default()
    };
    let (mut images, mut configs, mut secrets) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for g in &keep_g {
        let d = &g.desired;
        images.extend(d.images.iter().map(|i| i.id.clone()));
        configs.extend(d.configs.iter().map(|c| c.name.clone()));
        secrets.extend(d.secrets.iter().map(|c| c.name.clone()));
        sel.used_store.insert(d.bundle.identity.clone());
        for o in d.configs.iter().chain(&d.secrets) {
            match &o.source {
                ObjectSource::Store { identity, .. } => {
                    sel.used_store.insert(identity.clone());
                }
                ObjectSource::Value { .. } => {
                    sel.used_values.insert(o.sha256.clone());
                }
                _ => {}
            }
        }
    }
    for g in &drop_g {
        let d = &g.desired;
        sel.stacks.insert(d.stack.clone());
        sel.images.extend(
            d.images
                .iter()
                .map(|i| &i.id)
                .filter(|i| !images.contains(*i))
                .cloned(),
        );
        sel.configs.extend(
            d.configs
                .iter()
                .map(|c| &c.name)
                .filter(|c| !configs.contains(*c))
                .cloned(),
        );
        sel.secrets.extend(
            d.secrets
                .iter()
                .map(|c| &c.name)
                .filter(|c| !secrets.contains(*c))
                .cloned(),
        );
    }
    sel
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

/// `gc --keep K`.
pub async fn gc(host: &Host, keep: usize, timing: Timing) -> Result<GcReport> {
    if keep == 0 {
        bail!("--keep must be at least 1 (the current generation is always kept)");
    }
    let engine = host.manager();
    engine.require_manager().await?;
    let state = StateDir::open(&host.state_dir)?;
    let _lock = state.lock()?;
    if let Some(r) = recover::recover(&state, engine, timing, host.events.as_ref()).await? {
        host.emit(Event::info(r));
    }
    let gens = state.generations()?;
    let sel = select(&gens, state.current()?, keep);
    // the manifest digest too: the containerd store knows an image by it
    let keys: BTreeMap<&str, crate::engine::ImageKey> = gens
        .iter()
        .flat_map(|g| &g.desired.images)
        .map(|i| (i.id.as_str(), i.into()))
        .collect();
    let mut r = GcReport::default();
    for stack in &sel.stacks {
        let live_cfg = engine.stack_configs(stack).await?;
        for c in sel.configs.iter().filter(|c| live_cfg.contains_key(*c)) {
            match engine.remove_config(c).await {
                Ok(()) => r.configs.push(c.clone()),
                Err(e) => r.kept_in_use.push(format!("config {c}: {e}")),
            }
        }
        let live_sec = engine.stack_secrets(stack).await?;
        for c in sel.secrets.iter().filter(|c| live_sec.contains_key(*c)) {
            match engine.remove_secret(c).await {
                Ok(()) => r.secrets.push(c.clone()),
                Err(e) => r.kept_in_use.push(format!("secret {c}: {e}")),
            }
        }
    }
    for e in &host.engines {
        let node = e.swarm_facts().await?.node_id;
        for id in &sel.images {
            let Some(key) = keys.get(id.as_str()) else {
                continue;
            };
            // Swarm keeps the containers of a service's past tasks, and a container holds its
            // image: those of the removed generations' stacks go first
            e.remove_stopped_task_containers(key, &sel.stacks).await?;
            if e.remove_image(key).await? {
                engine.set_node_label(&node, &image_label(id), None).await?;
                r.images.push(id.clone());
            } else if e.has_image(key).await? {
                r.kept_in_use
                    .push(format!("image {id} on {} (in use by a container)", e.url()));
            }
        }
    }
    for id in state.store_entries()? {
        if !sel.used_store.contains(&id) {
            state.remove_store(&id)?;
            r.store.push(id);
        }
    }
    for sha in state.secret_values()? {
        if !sel.used_values.contains(&sha) {
            state.remove_secret_value(&sha)?;
        }
    }
    for n in &sel.drop {
        state.remove_generation(*n)?;
        r.generations.push(*n);
    }
    Ok(r)
}
