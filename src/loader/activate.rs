//! `activate` and `rollback`: verify (hashes, signature against the host's trusted keys, no
//! downgrade without `--allow-downgrade`), import, load, plan against the current
//! generation, and run the transaction (see `apply`). Results go back to the command layer
//! as data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::apply::{self, observe, Timing, Transaction};
use super::{fault, images};
use crate::bundle::reader::BundleFile;
use crate::bundle::version::{self, BundleRef};
use crate::engine::Engine;
use crate::sign::{self, Verdict};
use crate::state::{now, GenResult, Generation, StateDir};
use crate::swarm::desired::{self, Contents, DesiredStack};
use crate::swarm::plan::{self, Plan};

/// Options of `activate`.
#[derive(Debug, Clone)]
pub struct ActivateOptions {
    /// Print the plan only.
    pub dry_run: bool,
    /// Update only these services.
    pub only: Vec<String>,
    /// Timing.
    pub timing: Timing,
    /// No progress on stderr.
    pub quiet: bool,
    /// Trusted public key files given on the command line, on top of
    /// `<state-dir>/trusted-keys/*.pub`.
    pub trusted_keys: Vec<PathBuf>,
    /// Accept a lower version than the current generation's.
    pub allow_downgrade: bool,
}

/// What an activation or rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `activated`, `unchanged`, `planned` (dry run), `rolled-back`.
    pub result: String,
    /// Stack name.
    pub stack: String,
    /// Generation now current (or planned).
    pub generation: Option<u64>,
    /// Bundle name.
    pub bundle: String,
    /// Bundle version.
    pub version: String,
    /// Bundle identity.
    pub identity: String,
    /// The plan (as text lines).
    pub plan: Vec<String>,
    /// Machine-readable plan steps.
    pub steps: Vec<crate::swarm::plan::Step>,
    /// Services left as they were.
    pub unchanged: Vec<String>,
    /// Message of a recovered interrupted activation, if any.
    pub recovered: Option<String>,
    /// Key id of the bundle's signature, when it is signed (activate only).
    pub signed_by: Option<String>,
    /// Remarks for the operator: signature, rebuild of the same version, allowed
    /// downgrade.
    pub notes: Vec<String>,
}

/// Engines and state shared by the host commands.
pub struct Host {
    /// Engines; the first is the swarm manager the stack is deployed through.
    pub engines: Vec<Engine>,
    /// State directory path.
    pub state_dir: std::path::PathBuf,
}

impl Host {
    /// The manager engine.
    pub fn manager(&self) -> &Engine {
        &self.engines[0]
    }
}

fn bundle_contents(
    bundle: &BundleFile,
    compose: &crate::stack::ComposeFile,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for p in desired::file_paths(bundle.manifest(), compose)? {
        let data = bundle.read_entry(&p)?;
        files.insert(p, data);
    }
    Ok(files)
}

/// Files imported into the host store: everything but image blobs and binaries.
fn store_files(bundle: &BundleFile) -> Result<Vec<(String, Vec<u8>)>> {
    let mut v = vec![("bundle.json".to_string(), bundle.manifest_bytes().to_vec())];
    for f in &bundle.manifest().files {
        if f.path.starts_with("oci/") || f.path.starts_with("bin/") {
            continue;
        }
        v.push((f.path.clone(), bundle.read_entry(&f.path)?));
    }
    Ok(v)
}

fn outcome(result: &str, d: &DesiredStack, generation: Option<u64>, p: &Plan) -> Outcome {
    Outcome {
        result: result.into(),
        stack: d.stack.clone(),
        generation,
        bundle: d.bundle.name.clone(),
        version: d.bundle.version.clone(),
        identity: d.bundle.identity.clone(),
        plan: p.steps.iter().map(|s| s.to_string()).collect(),
        steps: p.steps.clone(),
        unchanged: p.unchanged.clone(),
        recovered: None,
        signed_by: None,
        notes: Vec::new(),
    }
}

/// The verify step's trust check, shared by `load` and `activate`: the host's trusted keys
/// (`<state-dir>/trusted-keys/*.pub` and `extra`) against the bundle's signature, before
/// anything is changed. Refusals name the bundle file and the key id; with no trusted key
/// configured an unsigned bundle is accepted with one warning line on stderr.
pub fn check_trust(bundle: &BundleFile, state_dir: &Path, extra: &[PathBuf]) -> Result<Verdict> {
    let file = bundle.path().display();
    let keys = sign::load_trusted(state_dir, extra)?;
    let verdict = sign::evaluate(bundle.manifest_bytes(), bundle.signature(), &keys)
        .map_err(|e| anyhow::anyhow!("bundle {file} refused: {e}; nothing was changed"))?;
    let dir = state_dir.join(sign::TRUSTED_KEYS_DIR);
    match &verdict {
        Verdict::Unsigned => eprintln!(
            "warning: bundle {file} is unsigned, accepted because no trusted key is configured ({}/*.pub or --trusted-key)",
            dir.display()
        ),
        Verdict::SignedUnchecked { key_id } => eprintln!(
            "warning: bundle {file} is signed by key id {key_id}, but no trusted key is configured ({}/*.pub or --trusted-key) to say whose key that is",
            dir.display()
        ),
        Verdict::Trusted { .. } => {}
    }
    Ok(verdict)
}

fn signed_by(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Trusted { key_id, .. } | Verdict::SignedUnchecked { key_id } => {
            Some(key_id.clone())
        }
        Verdict::Unsigned => None,
    }
}

/// Make sure a generation's images are on every engine, and label each engine's node as
/// holding them (the services' placement constraints require that label).
/// `nodes`: each engine's node id, as [`require_swarm`] returned them.
async fn require_images(host: &Host, nodes: &[String], d: &DesiredStack) -> Result<()> {
    for (e, node) in host.engines.iter().zip(nodes) {
        for img in &d.images {
            if !e.has_image(&img.id).await? {
                bail!(
                    "image {} ({}) is no longer on {}; activate its bundle file again instead",
                    img.reference,
                    img.id,
                    e.url
                );
            }
            host.manager()
                .set_node_label(
                    node,
                    &crate::swarm::spec::image_label(&img.id),
                    Some("present"),
                )
                .await?;
        }
    }
    Ok(())
}

fn check_stack(state: &StateDir, stack: &str) -> Result<()> {
    if let Some(cur) = state.current_generation()? {
        if cur.desired.stack != stack {
            bail!(
                "the state directory {} manages stack {}, not {stack}; use --state-dir for another stack",
                state.root().display(),
                cur.desired.stack
            );
        }
    }
    Ok(())
}

/// The first engine must be a swarm manager and every other one a node of its swarm;
/// checked before anything is loaded anywhere. Returns each engine's node id.
async fn require_swarm(host: &Host) -> Result<Vec<String>> {
    let manager = host.manager();
    let mut nodes = vec![manager.require_manager().await?.node_id];
    for e in &host.engines[1..] {
        let node = e.swarm_facts().await?.node_id;
        manager.require_node(&node, &e.url).await?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Refuse a plan whose services could never converge on the nodes that hold their images
/// (see [`crate::swarm::feasible`]): the engines given (they get the images) and the nodes
/// already labelled as holding them.
async fn check_feasible(
    host: &Host,
    nodes: &[String],
    desired: &DesiredStack,
    p: &Plan,
) -> Result<()> {
    let given: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    let mut holders = BTreeMap::new();
    for img in &desired.images {
        let labelled = host
            .manager()
            .nodes_labelled(&crate::swarm::spec::image_label(&img.id))
            .await?;
        let mut holding = given.clone();
        holding.extend(labelled.iter().map(String::as_str));
        holders.insert(img.id.clone(), holding.len() as u64);
    }
    crate::swarm::feasible::check(desired, p, |id| holders.get(id).copied().unwrap_or(0))
        .map_err(anyhow::Error::msg)
}

/// `activate FILE`.
pub async fn activate(host: &Host, file: &Path, opts: &ActivateOptions) -> Result<Outcome> {
    let engine = host.manager();
    let nodes = require_swarm(host).await?;
    let bundle =
        BundleFile::open(file).with_context(|| format!("verifying bundle {}", file.display()))?;
    let verdict = check_trust(&bundle, &host.state_dir, &opts.trusted_keys)?;
    let mut notes = vec![format!("signature: {verdict}")];
    fault("verify");
    let manifest = bundle.manifest().clone();
    let stack_text = bundle.read_entry(&manifest.stack_file)?;
    let compose = crate::stack::parse(&String::from_utf8_lossy(&stack_text), &manifest.stack_file)?;
    let files = bundle_contents(&bundle, &compose)?;

    let (state, _lock, recovered) = if opts.dry_run {
        (StateDir::open_existing(&host.state_dir), None, None)
    } else {
        let state = StateDir::open(&host.state_dir)?;
        let lock = state.lock()?;
        let rec = apply::recover(&state, engine, opts.timing, opts.quiet).await?;
        if let Some(r) = &rec {
            eprintln!("{r}");
        }
        (state, Some(lock), rec)
    };
    if state.root().exists() {
        check_stack(&state, &manifest.stack)?;
    }
    let current = if state.root().exists() {
        state.current_generation()?
    } else {
        None
    };
    // The downgrade guard, before anything of this bundle is stored or loaded.
    let transition = version::check_transition(
        current.as_ref().map(|g| {
            let b = &g.desired.bundle;
            (
                g.number,
                BundleRef {
                    name: &b.name,
                    version: &b.version,
                    identity: &b.identity,
                },
            )
        }),
        BundleRef {
            name: &manifest.name,
            version: &manifest.version,
            identity: &manifest.identity,
        },
        opts.allow_downgrade,
    )
    .map_err(|e| anyhow::anyhow!("bundle {}: {e}; nothing was changed", file.display()))?;
    notes.extend(transition.note());
    // Images stream into the engines while the rest is prepared (under the lock, so that a
    // refused second activation loads nothing).
    let bundle = Arc::new(bundle);
    let loading = (!opts.dry_run).then(|| {
        let (b, engines, quiet) = (bundle.clone(), host.engines.clone(), opts.quiet);
        tokio::spawn(async move { images::load_all(b, &engines, None, quiet).await })
    });

    let mut generated = BTreeMap::new();
    for (key, def) in &compose.secrets {
        if let Some(template) = &def.generate {
            let existing = if state.root().exists() {
                state.generated_secret(key)?
            } else {
                None
            };
            match existing {
                Some(d) => {
                    generated.insert(key.clone(), d);
                }
                None if !opts.dry_run => {
                    let d = desired::generate_secret(template);
                    state.put_generated_secret(key, &d)?;
                    generated.insert(key.clone(), d);
                }
                None => {}
            }
        }
    }
    let new = desired::build(
        &manifest,
        &compose,
        &Contents {
            files: &files,
            generated: &generated,
        },
    )?;
    let desired = if opts.only.is_empty() {
        new
    } else {
        desired::merge_only(&new, current.as_ref().map(|g| &g.desired), &opts.only)?
    };
    let observed = observe(engine, &desired.stack).await?;
    let p = plan::plan(&desired, &observed, opts.only.is_empty());
    check_feasible(host, &nodes, &desired, &p)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; the stack was not changed"))?;
    let finish = |mut o: Outcome| {
        o.recovered = recovered.clone();
        o.signed_by = signed_by(&verdict);
        o.notes = notes.clone();
        o
    };
    if opts.dry_run {
        return Ok(finish(outcome("planned", &desired, None, &p)));
    }

    if state.import(&manifest.identity, &store_files(&bundle)?)? && !opts.quiet {
        eprintln!(
            "imported bundle {} into {}",
            manifest.hash12(),
            state.root().display()
        );
    }
    fault("import");
    if let Some(loading) = loading {
        loading.await.context("image loading task")??;
    }
    require_images(host, &nodes, &desired).await?;
    fault("load");

    if p.is_empty() {
        if let Some(cur) = &current {
            if cur.desired == desired && cur.result == GenResult::Succeeded {
                return Ok(finish(outcome("unchanged", &desired, Some(cur.number), &p)));
            }
        }
    }
    let number = state.next_number()?;
    state.put_generation(&Generation {
        number,
        created: now(),
        result: GenResult::Pending,
        error: None,
        desired: desired.clone(),
    })?;
    Transaction {
        state: &state,
        engine,
        kind: "activate",
        target: number,
        new_generation: true,
        desired: &desired,
        previous: current.as_ref().map(|g| g.number),
        steps: p.steps.clone(),
        timing: opts.timing,
        quiet: opts.quiet,
    }
    .run()
    .await?;
    Ok(finish(outcome("activated", &desired, Some(number), &p)))
}

/// `rollback [--to N]`.
pub async fn rollback(
    host: &Host,
    to: Option<u64>,
    dry_run: bool,
    timing: Timing,
    quiet: bool,
) -> Result<Outcome> {
    let engine = host.manager();
    let nodes = require_swarm(host).await?;
    let state = StateDir::open(&host.state_dir)?;
    let _lock = state.lock()?;
    let recovered = apply::recover(&state, engine, timing, quiet).await?;
    if let Some(r) = &recovered {
        eprintln!("{r}");
    }
    let current = state
        .current()?
        .context("there is no current generation to roll back from")?;
    let gens = state.generations()?;
    let target = match to {
        Some(n) => gens.iter().find(|g| g.number == n).with_context(|| {
            format!("generation {n} does not exist (see `reemo-bundle generations`)")
        })?,
        None => gens
            .iter()
            .rev()
            .find(|g| g.number < current && g.result == GenResult::Succeeded)
            .with_context(|| format!("no succeeded generation before generation {current}"))?,
    };
    if target.result != GenResult::Succeeded {
        bail!(
            "generation {} {} and cannot be rolled back to",
            target.number,
            target.result
        );
    }
    let desired = target.desired.clone();
    let observed = observe(engine, &desired.stack).await?;
    let p = plan::plan(&desired, &observed, true);
    let mut o = outcome(
        if dry_run { "planned" } else { "rolled-back" },
        &desired,
        Some(target.number),
        &p,
    );
    o.recovered = recovered;
    if dry_run {
        return Ok(o);
    }
    require_images(host, &nodes, &desired).await?;
    if target.number == current && p.is_empty() {
        o.result = "unchanged".into();
        return Ok(o);
    }
    Transaction {
        state: &state,
        engine,
        kind: "rollback",
        target: target.number,
        new_generation: false,
        desired: &desired,
        previous: Some(current),
        steps: p.steps.clone(),
        timing,
        quiet,
    }
    .run()
    .await?;
    Ok(o)
}

/// Default monitor window of `activate`.
pub const ACTIVATE_MONITOR: Duration = Duration::from_secs(2);
/// Default monitor window of `rollback`: its target already passed a window on this host.
pub const ROLLBACK_MONITOR: Duration = Duration::from_secs(1);

/// Default timing.
pub fn default_timing() -> Timing {
    Timing {
        timeout: Duration::from_secs(120),
        monitor: ACTIVATE_MONITOR,
    }
}
