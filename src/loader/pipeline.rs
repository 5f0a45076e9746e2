//! The one pipeline of `activate` and `rollback`: observe the host once ([`observe`]) →
//! plan every side effect purely ([`plan_host`]: store import, secrets to generate, images
//! to load on which engine, node labels, Swarm steps) and check feasibility → apply
//! ([`apply`]). A dry run stops after planning: it takes no lock, runs no recovery and
//! writes nothing. The front ends (`activate`) only make the [`Target`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::transaction::{self, Transaction};
use super::{fault, images, Host, Timing};
use crate::bundle::reader::BundleFile;
use crate::state::journal::Kind;
use crate::state::{now, GenResult, Generation, StateDir};
use crate::swarm::desired::DesiredStack;
use crate::swarm::labels::{image_label, role_label, STORE_LABEL};
use crate::swarm::observed::Observed;
use crate::swarm::plan::{self, Plan, Step};
use crate::swarm::roles::{self, NodeName, RoleLabel};

/// What an activation or rollback wants the host to become.
pub struct Target {
    /// `activate` (a new generation) or `rollback` (an existing one).
    pub kind: Kind,
    /// The desired state.
    pub desired: DesiredStack,
    /// The existing generation a rollback returns to; `None` for a new generation.
    pub generation: Option<u64>,
    /// The bundle the images and store files come from (activate).
    pub bundle: Option<Arc<BundleFile>>,
    /// Files of the bundle's store entry (activate): imported unless already there.
    pub store_files: Vec<crate::state::StoreFile>,
    /// Generated secrets new to this host, by key: stored before the transaction.
    pub new_secrets: BTreeMap<String, Vec<u8>>,
    /// Remove stack services the desired state does not name (false for `--only`).
    pub remove_others: bool,
}

/// The host as one look saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Engine addresses, the manager first.
    pub engines: Vec<String>,
    /// Each engine's node id (same order).
    pub nodes: Vec<String>,
    /// Labels of every node of the swarm, by node id.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Every node of the swarm as a site may name it (node roles).
    pub names: Vec<NodeName>,
    /// Per engine (same order): the desired images it holds.
    pub present: Vec<BTreeSet<String>>,
    /// The stack's objects.
    pub stack: Observed,
    /// Whether the state directory's store already holds the bundle's entry.
    pub imported: bool,
    /// The desired host folders (`x-reemo-create`) that do not exist on this host.
    pub missing_dirs: BTreeSet<String>,
    /// Each engine's image store (same order as `engines`; see [`STORE_LABEL`]).
    pub stores: Vec<&'static str>,
}

/// Images to load into one engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineLoad {
    /// Index into the host's engines.
    #[serde(skip)]
    pub engine: usize,
    /// Engine address.
    pub url: String,
    /// Image IDs.
    pub images: Vec<String>,
}

/// A node label to set: the node holds this image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLabel {
    /// Node id.
    pub node: String,
    /// Image ID.
    pub image: String,
}

/// Every side effect of one activation or rollback, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPlan {
    /// Store entry to import (bundle identity).
    pub import: Option<String>,
    /// Generated secrets to store, by key.
    pub generate: Vec<String>,
    /// Host folders of bind mounts to create (`x-reemo-create`).
    pub dirs: Vec<crate::swarm::model::HostDir>,
    /// Images to load.
    pub load: Vec<EngineLoad>,
    /// Node labels to set.
    pub labels: Vec<NodeLabel>,
    /// Node role labels to set or remove (`x-reemo-node-roles`).
    pub roles: Vec<RoleLabel>,
    /// Store labels to set, (node, store): the nodes whose label does not say their
    /// engine's store (a new node, or an engine that changed store since).
    pub store_labels: Vec<(String, String)>,
    /// Each role's nodes, once the plan is applied.
    #[serde(skip)]
    pub role_nodes: BTreeMap<String, BTreeSet<String>>,
    /// The Swarm steps (the journaled transaction).
    pub swarm: Plan,
}

impl HostPlan {
    /// The plan as text lines: host steps, then the Swarm steps.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(id) = &self.import {
            v.push(format!(
                "import bundle {} into the state directory",
                crate::swarm::observed::short(id)
            ));
        }
        for k in &self.generate {
            v.push(format!("generate secret {k}"));
        }
        for d in &self.dirs {
            v.push(format!(
                "create host folder {} (owner {}:{}, mode {:04o}) for service {}",
                d.path, d.uid, d.gid, d.mode, d.service
            ));
        }
        for l in &self.load {
            v.push(format!("load {} image(s) into {}", l.images.len(), l.url));
        }
        for l in &self.labels {
            v.push(format!(
                "label node {} as holding image {}",
                crate::swarm::observed::short(&l.node),
                crate::swarm::observed::short(l.image.trim_start_matches("sha256:"))
            ));
        }
        for r in &self.roles {
            let node = crate::swarm::observed::short(&r.node);
            v.push(if r.set {
                format!("label node {node} with role {}", r.role)
            } else {
                format!("take role {} off node {node}", r.role)
            });
        }
        for (node, store) in &self.store_labels {
            v.push(format!(
                "label node {} as having the {store} image store",
                crate::swarm::observed::short(node)
            ));
        }
        v.extend(self.swarm.steps.iter().map(Step::to_string));
        v
    }

    /// Whether the host would not change at all.
    pub fn is_empty(&self) -> bool {
        self.import.is_none()
            && self.generate.is_empty()
            && self.dirs.is_empty()
            && self.load.is_empty()
            && self.labels.is_empty()
            && self.roles.is_empty()
            && self.store_labels.is_empty()
            && self.swarm.is_empty()
    }
}

/// The first engine must be a swarm manager and every other one a node of its swarm.
/// Returns each engine's node id.
pub async fn require_swarm(host: &Host) -> Result<Vec<String>> {
    let manager = host.manager();
    let mut nodes = vec![manager.require_manager().await?.node_id];
    for e in &host.engines[1..] {
        let node = e.swarm_facts().await?.node_id;
        manager.require_node(&node, e.url()).await?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Look at the host once: nodes and their labels, the desired images on every engine,
/// the stack's objects, the store entry.
pub async fn observe(
    host: &Host,
    nodes: Vec<String>,
    state: &StateDir,
    desired: &DesiredStack,
) -> Result<HostView> {
    let manager = host.manager();
    let all = manager.nodes().await?;
    let names = all
        .iter()
        .map(|n| NodeName {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            addr: n.addr.clone(),
        })
        .collect();
    let labels = all.into_iter().map(|n| (n.id, n.labels)).collect();
    let mut present = Vec::new();
    let mut stores = Vec::new();
    for e in &host.engines {
        stores.push(e.facts().await?.store.as_str());
        let mut have = BTreeSet::new();
        for img in &desired.images {
            if e.has_image(&img.into()).await? {
                have.insert(img.id.clone());
            }
        }
        present.push(have);
    }
    Ok(HostView {
        engines: host.engines.iter().map(|e| e.url().to_string()).collect(),
        nodes,
        labels,
        names,
        present,
        stack: transaction::observe(manager, &desired.stack).await?,
        imported: state.store_entries()?.contains(&desired.bundle.identity),
        missing_dirs: desired
            .host_dirs
            .iter()
            .filter(|d| !std::path::Path::new(&d.path).exists())
            .map(|d| d.path.clone())
            .collect(),
        stores,
    })
}

/// Plan every side effect of reaching `target` from `view`. Refuses a rollback whose
/// images are gone from an engine (only a bundle file brings them back).
pub fn plan_host(target: &Target, view: &HostView) -> Result<HostPlan> {
    let d = &target.desired;
    let bundle_images: BTreeSet<&str> = target
        .bundle
        .as_ref()
        .map(|b| {
            b.manifest()
                .images
                .iter()
                .map(|i| i.config_digest.as_str())
                .collect()
        })
        .unwrap_or_default();
    let role_nodes = roles::resolve(&d.node_roles, &view.names)
        .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    // Each engine gets the images of the services that may run on its node (their role
    // names it, or they have none): a portal image stays off the nodes of the API part.
    let mut load = Vec::new();
    let mut labels = Vec::new();
    for (i, url) in view.engines.iter().enumerate() {
        let node = view.nodes.get(i).map(String::as_str).unwrap_or_default();
        let mut missing = Vec::new();
        for img in d
            .images
            .iter()
            .filter(|img| may_hold(d, &role_nodes, &img.id, node))
        {
            let has_label = view
                .labels
                .get(node)
                .and_then(|l| l.get(&image_label(&img.id)))
                .is_some_and(|v| v == "present");
            if !has_label && !node.is_empty() {
                labels.push(NodeLabel {
                    node: node.to_string(),
                    image: img.id.clone(),
                });
            }
            if view.present[i].contains(&img.id) {
                continue;
            }
            if !bundle_images.contains(img.id.as_str()) {
                bail!(
                    "image {} ({}) is no longer on {url}; activate its bundle file again instead",
                    img.reference,
                    img.id
                );
            }
            missing.push(img.id.clone());
        }
        if !missing.is_empty() {
            load.push(EngineLoad {
                engine: i,
                url: url.clone(),
                images: missing,
            });
        }
    }
    Ok(HostPlan {
        import: (target.bundle.is_some() && !view.imported).then(|| d.bundle.identity.clone()),
        generate: target.new_secrets.keys().cloned().collect(),
        dirs: d
            .host_dirs
            .iter()
            .filter(|h| view.missing_dirs.contains(&h.path))
            .cloned()
            .collect(),
        load,
        labels,
        roles: roles::label_changes(&role_nodes, &view.labels),
        store_labels: view
            .nodes
            .iter()
            .zip(&view.stores)
            .filter(|(node, store)| {
                !node.is_empty()
                    && view
                        .labels
                        .get(*node)
                        .and_then(|l| l.get(STORE_LABEL))
                        .map(String::as_str)
                        != Some(**store)
            })
            .map(|(node, store)| (node.clone(), store.to_string()))
            .collect(),
        role_nodes,
        swarm: plan::plan(d, &view.stack, target.remove_others),
    })
}

/// The images of the services of the first phase a plan creates or updates, and that
/// phase; `None` when the plan changes services of one phase only (everything loads first).
fn split_load(d: &DesiredStack, steps: &[Step]) -> Option<(BTreeSet<String>, u32)> {
    let changed: Vec<(&str, u32)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateService { service, phase } | Step::UpdateService { service, phase, .. } => {
                Some((service.as_str(), *phase))
            }
            _ => None,
        })
        .collect();
    let first = changed.iter().map(|(_, p)| *p).min()?;
    if changed.iter().all(|(_, p)| *p == first) {
        return None;
    }
    let images = changed
        .iter()
        .filter(|(_, p)| *p == first)
        .filter_map(|(name, _)| d.services.iter().find(|s| s.full_name == *name))
        .map(|s| s.image_id.clone())
        .collect();
    Some((images, first))
}

/// A plan's loads and image labels in two stages: what is applied before the Swarm steps,
/// and what loads (then is labelled) while the first changed phase starts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Staged {
    now: Vec<EngineLoad>,
    labels_now: Vec<NodeLabel>,
    /// The phase that does not need `later` (None: nothing is left for later).
    after_phase: Option<u32>,
    later: Vec<EngineLoad>,
    /// Labels of the images in `later`: set once they are loaded.
    labels_later: Vec<NodeLabel>,
}

/// Stage `p` with `early` from [`split_load`]: the images of its first phase now, the
/// others later; a label waits only for an image that still has to load.
fn stage(p: &HostPlan, early: Option<(BTreeSet<String>, u32)>) -> Staged {
    let Some((early, phase)) = early else {
        return Staged {
            now: p.load.clone(),
            labels_now: p.labels.clone(),
            ..Staged::default()
        };
    };
    let part = |keep: bool| -> Vec<EngineLoad> {
        p.load
            .iter()
            .map(|l| EngineLoad {
                images: l
                    .images
                    .iter()
                    .filter(|i| early.contains(*i) == keep)
                    .cloned()
                    .collect(),
                ..l.clone()
            })
            .filter(|l| !l.images.is_empty())
            .collect()
    };
    let (now, later) = (part(true), part(false));
    let loading_later: BTreeSet<&String> = later.iter().flat_map(|l| &l.images).collect();
    let (labels_later, labels_now) = p
        .labels
        .iter()
        .cloned()
        .partition(|l| loading_later.contains(&l.image));
    Staged {
        now,
        labels_now,
        after_phase: (!later.is_empty()).then_some(phase),
        later,
        labels_later,
    }
}

/// Warnings for host folders (`x-reemo-create`) that a service may need on a node whose
/// engine is reached over the network: the loader creates them on the host it runs on only
/// (engines on local unix sockets share its file system).
pub fn remote_folder_warnings(
    desired: &DesiredStack,
    view: &HostView,
    p: &HostPlan,
) -> Vec<String> {
    let mut out = Vec::new();
    for dir in &desired.host_dirs {
        let Some(s) = desired.service(&dir.service) else {
            continue;
        };
        let role = s.role.as_ref().and_then(|r| p.role_nodes.get(r));
        let remote: Vec<&str> = view
            .engines
            .iter()
            .zip(&view.nodes)
            .filter(|(url, node)| {
                !url.starts_with("unix://") && role.is_none_or(|r| r.contains(*node))
            })
            .map(|(url, _)| url.as_str())
            .collect();
        if !remote.is_empty() {
            out.push(format!(
                "warning: host folder {} (service {}) is created on this host only; it must exist on the nodes of {} before a task of {} runs there (shared or replicated storage, or the service's role limited to this host)",
                dir.path,
                s.full_name,
                remote.join(", "),
                dir.service
            ));
        }
    }
    out
}

/// Create a bind mount's host folder and its parents; the folder itself gets the owner and
/// mode asked for. Names the folder and the service on failure.
fn create_host_dir(d: &crate::swarm::model::HostDir) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = std::path::Path::new(&d.path);
    let what = || {
        format!(
            "creating host folder {} for service {} (x-reemo-create)",
            d.path, d.service
        )
    };
    std::fs::create_dir_all(p).with_context(what)?;
    std::os::unix::fs::chown(p, Some(d.uid), Some(d.gid)).with_context(what)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(d.mode)).with_context(what)?;
    Ok(())
}

/// The swarm nodes that will hold each desired image once the plan is applied: the nodes
/// of the engines given that may run a task of it (they get it, see [`plan_host`]) and
/// nodes already labelled as holding it.
pub fn holders(
    desired: &DesiredStack,
    view: &HostView,
    role_nodes: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    desired
        .images
        .iter()
        .map(|img| {
            let label = image_label(&img.id);
            let mut nodes: BTreeSet<String> = view
                .nodes
                .iter()
                .filter(|n| may_hold(desired, role_nodes, &img.id, n))
                .cloned()
                .collect();
            nodes.extend(
                view.labels
                    .iter()
                    .filter(|(_, l)| l.get(&label).is_some_and(|v| v == "present"))
                    .map(|(n, _)| n.clone()),
            );
            (img.id.clone(), nodes)
        })
        .collect()
}

/// Whether `node` may run a task of a service with image `image`: some service of that
/// image has no role naming nodes, or its role names `node` (an image no service uses is
/// held everywhere).
fn may_hold(
    desired: &DesiredStack,
    role_nodes: &BTreeMap<String, BTreeSet<String>>,
    image: &str,
    node: &str,
) -> bool {
    let mut users = desired
        .services
        .iter()
        .filter(|s| s.image_id == image)
        .peekable();
    users.peek().is_none()
        || users.any(|s| match s.role.as_ref().and_then(|r| role_nodes.get(r)) {
            Some(role) => role.contains(node),
            None => true,
        })
}

/// Refuse a plan whose services could never converge on the nodes that will hold their
/// images and have their role (see [`crate::swarm::feasible`]); activate and rollback alike.
pub fn check_feasible(desired: &DesiredStack, view: &HostView, p: &HostPlan) -> Result<()> {
    let h = holders(desired, view, &p.role_nodes);
    crate::swarm::feasible::check(desired, &p.swarm, |s| {
        let Some(holding) = h.get(&s.image_id) else {
            return 0;
        };
        match s.role.as_ref().and_then(|r| p.role_nodes.get(r)) {
            Some(role) => holding.intersection(role).count() as u64,
            None => holding.len() as u64,
        }
    })
    .map_err(|e| anyhow::anyhow!("{e}; the stack was not changed"))
}

/// What applying a plan came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The host already ran the target: nothing was recorded or changed on the swarm.
    Unchanged(u64),
    /// The target generation is now current.
    Current(u64),
}

/// Apply `p` for `target`: host steps, then the journaled transaction. The caller holds
/// the state directory's lock and has run recovery.
pub async fn apply(
    host: &Host,
    state: &StateDir,
    target: &Target,
    p: &HostPlan,
    timing: Timing,
) -> Result<Applied> {
    let d = &target.desired;
    if p.import.is_some() && state.import(&d.bundle.identity, &target.store_files)? {
        host.emit(crate::events::Event::info(format!(
            "imported bundle {} into {}",
            crate::swarm::observed::short(&d.bundle.identity),
            state.root().display()
        )));
    }
    fault("import");
    for (k, data) in &target.new_secrets {
        state.put_generated_secret(k, data)?;
    }
    for d in &p.dirs {
        create_host_dir(d)?;
        host.emit(crate::events::Event::info(format!(
            "created host folder {} for service {}",
            d.path, d.service
        )));
    }
    // The images of the first phase the plan changes load first; the rest load while that
    // phase starts and becomes healthy (the transaction waits for them before the next
    // phase), see [`split_load`].
    let staged = stage(p, split_load(d, &p.swarm.steps));
    let bundle = match (&target.bundle, p.load.is_empty()) {
        (_, true) => None,
        (Some(b), false) => Some(b.clone()),
        (None, false) => bail!("images to load but no bundle to load them from"),
    };
    if let Some(bundle) = &bundle {
        images::load_each(
            bundle.clone(),
            &host.engines,
            &staged.now,
            host.events.clone(),
        )
        .await?;
    }
    for l in &staged.labels_now {
        host.manager()
            .set_node_label(&l.node, &image_label(&l.image), Some("present"))
            .await?;
    }
    let gate = match (bundle, staged.after_phase) {
        (Some(bundle), Some(after_phase)) => {
            let (engines, events) = (host.engines.clone(), host.events.clone());
            let Staged {
                later,
                labels_later,
                ..
            } = staged;
            Some(transaction::Gate {
                after_phase,
                handle: tokio::spawn(async move {
                    images::load_each(bundle, &engines, &later, events).await?;
                    for l in &labels_later {
                        engines[0]
                            .set_node_label(&l.node, &image_label(&l.image), Some("present"))
                            .await?;
                    }
                    Ok(())
                }),
            })
        }
        _ => None,
    };
    for r in &p.roles {
        host.manager()
            .set_node_label(&r.node, &role_label(&r.role), r.set.then_some("true"))
            .await?;
    }
    // The store of every engine's node decides how services are pinned to images (see
    // `spec::image_pin`); a node whose engine changed store since is relabelled here.
    for (node, store) in &p.store_labels {
        host.manager()
            .set_node_label(node, STORE_LABEL, Some(store))
            .await?;
    }
    fault("load");

    let current = state.current_generation()?;
    if p.swarm.is_empty() {
        if let Some(cur) = &current {
            let same = match target.generation {
                Some(n) => n == cur.number,
                None => cur.desired == *d && cur.result == GenResult::Succeeded,
            };
            if same {
                return Ok(Applied::Unchanged(cur.number));
            }
        }
    }
    let (number, new_generation) = match target.generation {
        Some(n) => (n, false),
        None => {
            let number = state.next_number()?;
            state.put_generation(&Generation {
                number,
                created: now(),
                result: GenResult::Pending,
                error: None,
                desired: d.clone(),
            })?;
            (number, true)
        }
    };
    let ran = Transaction {
        state,
        engine: host.manager(),
        kind: target.kind,
        target: number,
        new_generation,
        desired: d,
        previous: current.as_ref().map(|g| g.number),
        steps: p.swarm.steps.clone(),
        timing,
        events: host.events.as_ref(),
        gate,
    }
    .run()
    .await;
    if let Err(e) = ran {
        // the previous generation runs again: so do its node roles
        for r in &p.roles {
            if let Err(le) = host
                .manager()
                .set_node_label(&r.node, &role_label(&r.role), (!r.set).then_some("true"))
                .await
            {
                host.emit(crate::events::Event::warning(format!(
                    "restoring role {} on node {}: {le}",
                    r.role, r.node
                )));
            }
        }
        return Err(e);
    }
    Ok(Applied::Current(number))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::testkit;

    fn view_with(
        nodes: &[&str],
        labelled: &[(&str, &str)],
        present: Vec<BTreeSet<String>>,
    ) -> HostView {
        let mut labels: BTreeMap<String, BTreeMap<String, String>> = nodes
            .iter()
            .map(|n| (n.to_string(), BTreeMap::new()))
            .collect();
        for (n, img) in labelled {
            labels
                .entry(n.to_string())
                .or_default()
                .insert(image_label(img), "present".into());
        }
        HostView {
            engines: nodes.iter().map(|n| format!("fake://{n}")).collect(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            labels,
            names: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| NodeName {
                    id: n.to_string(),
                    hostname: format!("host-{n}"),
                    addr: format!("10.0.0.{}", i + 1),
                })
                .collect(),
            present,
            stack: Observed::default(),
            imported: false,
            missing_dirs: BTreeSet::new(),
            stores: vec![],
        }
    }

    fn rollback_target(d: DesiredStack) -> Target {
        Target {
            kind: Kind::Rollback,
            desired: d,
            generation: Some(1),
            bundle: None,
            store_files: vec![],
            new_secrets: BTreeMap::new(),
            remove_others: true,
        }
    }

    #[test]
    fn rollback_refuses_an_image_gone_from_an_engine() {
        let d = testkit::desired("app", &[("web", 1)]);
        let img = d.images[0].id.clone();
        let v = view_with(&["n1"], &[], vec![BTreeSet::new()]);
        let e = plan_host(&rollback_target(d.clone()), &v).unwrap_err();
        assert!(e.to_string().contains("is no longer on fake://n1"), "{e}");
        let v = view_with(&["n1"], &[], vec![BTreeSet::from([img])]);
        let p = plan_host(&rollback_target(d), &v).unwrap();
        assert!(p.load.is_empty() && p.import.is_none());
        assert_eq!(
            p.labels.len(),
            1,
            "the node is labelled as holding the image"
        );
        assert!(p.lines().iter().any(|l| l.starts_with("label node n1")));
    }

    #[test]
    fn labels_already_set_are_not_planned_and_count_as_holders() {
        let d = testkit::desired("app", &[("web", 1)]);
        let img = d.images[0].id.clone();
        let v = view_with(
            &["n1"],
            &[("n1", &img), ("n2", &img), ("n3", "sha256:other")],
            vec![BTreeSet::from([img.clone()])],
        );
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        assert!(p.labels.is_empty(), "{:?}", p.labels);
        assert_eq!(
            holders(&d, &v, &p.role_nodes)[&img].len(),
            2,
            "n1 (given) and n2 (labelled)"
        );
    }

    #[test]
    fn rollback_runs_the_feasibility_check() {
        // two replicas with max one per node need two holders; the generation once ran on
        // two nodes, one of which has left the swarm since
        let d = testkit::desired_yaml(
            "app",
            "1.0.0",
            "version: \"3.8\"\nservices:\n  web:\n    image: img\n    deploy:\n      replicas: 2\n      placement:\n        max_replicas_per_node: 1\n",
        );
        let img = d.images[0].id.clone();
        let v = view_with(&["n1"], &[], vec![BTreeSet::from([img.clone()])]);
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        let e = check_feasible(&d, &v, &p).unwrap_err();
        assert!(e.to_string().contains("app_web"), "{e}");
        let v = view_with(
            &["n1"],
            &[("n2", &img)],
            vec![BTreeSet::from([img.clone()])],
        );
        check_feasible(&d, &v, &plan_host(&rollback_target(d.clone()), &v).unwrap()).unwrap();
    }

    #[test]
    fn node_roles_become_labels_and_bound_placement() {
        // portal on n2 and n3 (by host name and by address), two replicas at most one per node
        let yaml = |nodes: &str| {
            format!(
                "version: \"3.8\"\nx-reemo-node-roles:\n  portal: \"{nodes}\"\n  api: \"\"\nservices:\n  portal:\n    image: img\n    x-reemo-role: portal\n    deploy:\n      replicas: 2\n      placement:\n        max_replicas_per_node: 1\n  api:\n    image: img\n    x-reemo-role: api\n"
            )
        };
        let d = testkit::desired_yaml("infra", "1.0.0", &yaml("host-n2, 10.0.0.2"));
        let portal = d.service("portal").unwrap();
        assert_eq!(portal.role.as_deref(), Some("portal"));
        let constraints = portal.spec["TaskTemplate"]["Placement"]["Constraints"].to_string();
        assert!(
            constraints.contains("node.labels.com.reemo-bundle.role.portal==true"),
            "{constraints}"
        );
        let api = d.service("api").unwrap();
        assert_eq!(api.role, None, "a role naming no node constrains nothing");
        assert!(!api.spec["TaskTemplate"]["Placement"]["Constraints"]
            .to_string()
            .contains("role"));

        let img = d.images[0].id.clone();
        let all = BTreeSet::from([img.clone()]);
        // every node holds the image; n2's address is 10.0.0.2
        let mut v = view_with(
            &["n1", "n2", "n22"],
            &[],
            vec![all.clone(), all.clone(), all],
        );
        v.labels
            .get_mut("n1")
            .unwrap()
            .insert(role_label("portal"), "true".into());
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        // "host-n2" and "10.0.0.2" both name n2: one node has the role
        assert_eq!(
            p.roles,
            vec![
                RoleLabel {
                    node: "n1".into(),
                    role: "portal".into(),
                    set: false
                },
                RoleLabel {
                    node: "n2".into(),
                    role: "portal".into(),
                    set: true
                },
            ]
        );
        assert!(
            p.lines()
                .contains(&"take role portal off node n1".to_string()),
            "{:?}",
            p.lines()
        );
        // two replicas, one per node, on the one portal node: refused before anything changes
        let e = check_feasible(&d, &v, &p).unwrap_err().to_string();
        assert!(
            e.contains("infra_portal: 2 replicas") && e.contains("on 1 node(s)"),
            "{e}"
        );
        let d = testkit::desired_yaml("infra", "1.0.0", &yaml("host-n2,host-n22"));
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        check_feasible(&d, &v, &p).unwrap();
        // a node the swarm does not have
        let d = testkit::desired_yaml("infra", "1.0.0", &yaml("host-n2,infra9"));
        let e = plan_host(&rollback_target(d), &v).unwrap_err().to_string();
        assert!(
            e.contains("x-reemo-node-roles portal: \"infra9\" is not a node of this swarm")
                && e.ends_with("nothing was changed"),
            "{e}"
        );
    }

    #[test]
    fn the_first_changed_phase_loads_first_and_the_rest_meanwhile() {
        let yaml = "version: \"3.8\"\nservices:\n  mysql:\n    image: img\n    x-reemo-phase: 0\n  api:\n    image: img\n    x-reemo-phase: 2\n";
        let mut d = testkit::desired_yaml("infra", "1.0.0", yaml);
        let db = d.images[0].id.clone();
        let api = format!("sha256:{}", "b".repeat(64));
        d.services
            .iter_mut()
            .find(|s| s.name == "api")
            .unwrap()
            .image_id = api.clone();
        // from nothing: mysql's image first, the api's while phase 0 runs
        let steps = plan::plan(&d, &Observed::default(), true).steps;
        assert_eq!(
            split_load(&d, &steps),
            Some((BTreeSet::from([db.clone()]), 0))
        );
        let load = vec![EngineLoad {
            engine: 0,
            url: "fake://n1".into(),
            images: vec![db.clone(), api.clone()],
        }];
        let label = |image: &str| NodeLabel {
            node: "n1".into(),
            image: image.into(),
        };
        let p = HostPlan {
            import: None,
            generate: vec![],
            dirs: vec![],
            load: load.clone(),
            labels: vec![label(&db), label(&api)],
            roles: vec![],
            store_labels: vec![],
            role_nodes: BTreeMap::new(),
            swarm: Plan::default(),
        };
        let s = stage(&p, split_load(&d, &steps));
        assert_eq!(
            (
                s.now[0].images.clone(),
                s.later[0].images.clone(),
                s.after_phase
            ),
            (vec![db.clone()], vec![api.clone()], Some(0))
        );
        assert_eq!(
            (s.labels_now, s.labels_later),
            (vec![label(&db)], vec![label(&api)])
        );
        // the api's image already on the engine (a rollback, say): its label is set at
        // once, nothing waits
        let p = HostPlan {
            load: vec![EngineLoad {
                images: vec![db.clone()],
                ..load[0].clone()
            }],
            ..p
        };
        let s = stage(&p, split_load(&d, &steps));
        assert_eq!(s.labels_now.len(), 2, "{s:?}");
        assert!(s.later.is_empty() && s.labels_later.is_empty() && s.after_phase.is_none());
        // no split: everything now
        assert_eq!(stage(&p, None).labels_now.len(), 2);
        // one phase changes (the api only): everything loads first
        let mut observed = Observed::default();
        let mysql = d.service("mysql").unwrap();
        observed
            .services
            .insert(mysql.full_name.clone(), Some(mysql.spec_hash.clone()));
        let steps = plan::plan(&d, &observed, true).steps;
        assert_eq!(split_load(&d, &steps), None);
    }

    #[test]
    fn a_host_folder_needed_on_a_remote_engine_is_warned_about() {
        let yaml = |nodes: &str| {
            format!("version: \"3.8\"\nx-reemo-node-roles:\n  api: \"{nodes}\"\nservices:\n  mysql:\n    image: img\n    x-reemo-role: api\n    volumes:\n      - {{ type: bind, source: /opt/reemo/mysql, target: /var/lib/mysql, x-reemo-create: {{ uid: 999, gid: 999, mode: 488 }} }}\n")
        };
        let d = testkit::desired_yaml("infra", "1.0.0", &yaml(""));
        let img = d.images[0].id.clone();
        let mut v = view_with(
            &["n1", "n2"],
            &[],
            vec![BTreeSet::from([img.clone()]), BTreeSet::from([img])],
        );
        v.engines = vec![
            "unix:///var/run/docker.sock".into(),
            "tcp://10.0.0.2:2376".into(),
        ];
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        let w = remote_folder_warnings(&d, &v, &p);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains(
                "host folder /opt/reemo/mysql (service infra_mysql) is created on this host only"
            ) && w[0].contains("tcp://10.0.0.2:2376"),
            "{w:?}"
        );
        // mysql limited to this host (n1, 10.0.0.1): nothing to warn about
        let d = testkit::desired_yaml("infra", "1.0.0", &yaml("10.0.0.1"));
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        assert!(remote_folder_warnings(&d, &v, &p).is_empty());
    }

    #[test]
    fn store_labels_are_planned_only_where_they_differ() {
        let d = testkit::desired("app", &[("web", 1)]);
        let img = d.images[0].id.clone();
        let mut v = view_with(
            &["n1", "n2"],
            &[],
            vec![BTreeSet::from([img.clone()]), BTreeSet::from([img])],
        );
        v.stores = vec!["classic", "containerd"];
        v.labels
            .get_mut("n1")
            .unwrap()
            .insert(STORE_LABEL.into(), "classic".into());
        let p = plan_host(&rollback_target(d), &v).unwrap();
        assert_eq!(
            p.store_labels,
            vec![("n2".to_string(), "containerd".to_string())]
        );
        assert!(p
            .lines()
            .contains(&"label node n2 as having the containerd image store".to_string()));
    }

    #[test]
    fn images_go_only_to_the_nodes_that_may_run_them() {
        // portal (role portal: n2) on image A, api (no role) on image B
        let yaml = "version: \"3.8\"\nx-reemo-node-roles:\n  portal: host-n2\nservices:\n  portal:\n    image: img\n    x-reemo-role: portal\n  api:\n    image: img\n";
        let mut d = testkit::desired_yaml("infra", "1.0.0", yaml);
        let b = d.images[0].id.clone();
        let a = format!("sha256:{}", "a".repeat(64));
        let mut img_a = d.images[0].clone();
        img_a.id = a.clone();
        d.images.push(img_a);
        d.services
            .iter_mut()
            .find(|s| s.name == "portal")
            .unwrap()
            .image_id = a.clone();
        // n1 holds only B: no refusal, it may not run the portal
        let v = view_with(
            &["n1", "n2"],
            &[],
            vec![
                BTreeSet::from([b.clone()]),
                BTreeSet::from([a.clone(), b.clone()]),
            ],
        );
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        let mut labelled: Vec<(&str, &str)> = p
            .labels
            .iter()
            .map(|l| (l.node.as_str(), l.image.as_str()))
            .collect();
        labelled.sort();
        let mut want = vec![("n1", b.as_str()), ("n2", a.as_str()), ("n2", b.as_str())];
        want.sort();
        assert_eq!(
            labelled, want,
            "n1 is not labelled as holding the portal's image"
        );
        let h = holders(&d, &v, &p.role_nodes);
        assert_eq!(h[&a], BTreeSet::from(["n2".to_string()]));
        assert_eq!(h[&b].len(), 2);
        check_feasible(&d, &v, &p).unwrap();
        // n2 lost A: a rollback cannot bring it back, and says where it is missing
        let v = view_with(
            &["n1", "n2"],
            &[],
            vec![BTreeSet::from([b.clone()]), BTreeSet::from([b.clone()])],
        );
        let e = plan_host(&rollback_target(d), &v).unwrap_err().to_string();
        assert!(e.contains("is no longer on fake://n2"), "{e}");
    }

    #[test]
    fn missing_host_folders_are_planned_and_existing_ones_left_alone() {
        let yaml = "version: \"3.8\"\nservices:\n  mysql:\n    image: img\n    volumes:\n      - type: bind\n        source: /opt/reemo/./mysql\n        target: /var/lib/mysql\n        x-reemo-create: { uid: 999, gid: 999, mode: 488 }\n  backup:\n    image: img\n    volumes:\n      - { type: bind, source: /opt/reemo/mysql, target: /in, x-reemo-create: { uid: 999, gid: 999, mode: 488 } }\n";
        let d = testkit::desired_yaml("infra", "1.0.0", yaml);
        assert_eq!(d.host_dirs.len(), 1, "one folder, asked for twice");
        assert_eq!(d.host_dirs[0].path, "/opt/reemo/mysql");
        let img = d.images[0].id.clone();
        let mut v = view_with(&["n1"], &[], vec![BTreeSet::from([img])]);
        let p = plan_host(&rollback_target(d.clone()), &v).unwrap();
        assert!(p.dirs.is_empty(), "the folder exists: nothing to create");
        v.missing_dirs.insert("/opt/reemo/mysql".into());
        let p = plan_host(&rollback_target(d), &v).unwrap();
        assert!(!p.is_empty());
        // named after the first service (in name order) that asks for it
        assert!(
            p.lines().contains(
                &"create host folder /opt/reemo/mysql (owner 999:999, mode 0750) for service backup"
                    .to_string()
            ),
            "{:?}",
            p.lines()
        );
        // two owners for one folder: refused
        let other = yaml.replacen("uid: 999", "uid: 0", 1);
        let e = crate::stack::parse(&other, "t.yml")
            .and_then(|c| crate::swarm::desired::host_dirs(&c))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different owners or modes"), "{e}");
    }

    #[test]
    fn a_host_folder_is_created_with_its_owner_and_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("a/b");
        let d = crate::swarm::model::HostDir {
            path: path.display().to_string(),
            uid: nix_uid(),
            gid: 0,
            mode: 0o750,
            service: "mysql".into(),
        };
        create_host_dir(&d).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
        assert_eq!(m.uid(), nix_uid());
        // a file in the way: the error names the folder and the service
        let f = t.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let d = crate::swarm::model::HostDir {
            path: f.join("sub").display().to_string(),
            ..d
        };
        let e = format!("{:#}", create_host_dir(&d).unwrap_err());
        assert!(e.contains("file/sub for service mysql"), "{e}");
    }

    fn nix_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    }
}
