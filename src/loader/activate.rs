//! `activate` and `rollback`: two short front ends over the one pipeline (`pipeline`).
//! `activate` verifies the bundle (hashes, signature against the host's trusted keys, no
//! downgrade without `--allow-downgrade`) and makes a new desired state from it; `rollback`
//! picks a succeeded generation. Both then observe, plan, check feasibility and apply the
//! same way. Results go back to the command layer as data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::pipeline::{self, Applied, HostPlan, Target};
use super::recover::{self, decide_for, describe};
use super::{fault, Host, Timing};
use crate::bundle::reader::BundleFile;
use crate::bundle::version::{self, BundleRef};
use crate::events::{Event, Events};
use crate::sign::{self, Verdict};
use crate::state::journal::Kind;
use crate::state::{GenResult, StateDir, StoreFile};
use crate::swarm::desired::{self, Contents, DesiredStack};
use crate::swarm::only;
use crate::swarm::plan::Step;

/// Options of `activate`.
#[derive(Debug, Clone)]
pub struct ActivateOptions {
    /// Plan only: change nothing anywhere.
    pub dry_run: bool,
    /// Update only these services (names or `x-reemo-tags`).
    pub only: Vec<String>,
    /// Let `only` update a service while an earlier phase also changes.
    pub out_of_order: bool,
    /// Timing.
    pub timing: Timing,
    /// Trusted public key files given on the command line, on top of
    /// `<state-dir>/trusted-keys/*.pub`.
    pub trusted_keys: Vec<PathBuf>,
    /// Accept a lower version than the current generation's.
    pub allow_downgrade: bool,
    /// Site file (`NAME = value` lines).
    pub site_file: Option<PathBuf>,
    /// `--set NAME=VALUE`, applied after the site file.
    pub set: Vec<String>,
}

/// How an activation or rollback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeResult {
    /// A new generation is current.
    Activated,
    /// The host already ran it: nothing was changed.
    Unchanged,
    /// Dry run: the plan only.
    Planned,
    /// An older generation is current again.
    RolledBack,
}

/// What an activation or rollback did (or, for a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// How it ended.
    pub result: OutcomeResult,
    /// Stack name.
    pub stack: String,
    /// Generation now current (rollback and dry runs: the target, if it exists).
    pub generation: Option<u64>,
    /// Bundle name.
    pub bundle: String,
    /// Bundle version.
    pub version: String,
    /// Bundle identity.
    pub identity: String,
    /// Every side effect, as text lines: host steps, then Swarm steps.
    pub plan: Vec<String>,
    /// The host steps and Swarm steps, machine-readable.
    pub host: HostPlan,
    /// The Swarm steps (as in the journal).
    pub steps: Vec<Step>,
    /// Services left as they were.
    pub unchanged: Vec<String>,
    /// What recovery of an interrupted activation did before this one.
    pub recovered: Option<String>,
    /// Dry run: an interrupted activation a real run would first finish or revert.
    pub unfinished: Option<String>,
    /// Key id of the bundle's signature, when it is signed (activate only).
    pub signed_by: Option<String>,
    /// Remarks for the operator: signature, rebuild of the same version, allowed
    /// downgrade.
    pub notes: Vec<String>,
}

/// The verify step's trust check, shared by `load` and `activate`: the host's trusted keys
/// (`<state-dir>/trusted-keys/*.pub` and `extra`) against the bundle's signature, before
/// anything is changed. Refusals name the bundle file and the key id; with no trusted key
/// configured an unsigned bundle is accepted with one warning.
pub fn check_trust(
    bundle: &BundleFile,
    state_dir: &Path,
    extra: &[PathBuf],
    events: &dyn Events,
) -> Result<Verdict> {
    let file = bundle.path().display();
    let keys = sign::load_trusted(state_dir, extra)?;
    let verdict = sign::evaluate(bundle.manifest_bytes(), bundle.signature(), &keys)
        .map_err(|e| anyhow::anyhow!("bundle {file} refused: {e}; nothing was changed"))?;
    let dir = state_dir.join(sign::TRUSTED_KEYS_DIR);
    match &verdict {
        Verdict::Unsigned => events.emit(Event::warning(format!(
            "bundle {file} is unsigned, accepted because no trusted key is configured ({}/*.pub or --trusted-key)",
            dir.display()
        ))),
        Verdict::SignedUnchecked { key_id } => events.emit(Event::warning(format!(
            "bundle {file} is signed by key id {key_id}, but no trusted key is configured ({}/*.pub or --trusted-key) to say whose key that is",
            dir.display()
        ))),
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

/// The state directory of a command: a dry run opens it without creating, locking or
/// recovering anything (and reports an unfinished activation); a real run creates it,
/// takes the lock and finishes or reverts what a crashed process left.
struct Session {
    state: StateDir,
    _lock: Option<crate::state::Lock>,
    recovered: Option<String>,
    unfinished: Option<String>,
}

async fn session(host: &Host, dry_run: bool, timing: Timing) -> Result<Session> {
    if dry_run {
        let state = StateDir::open_existing(&host.state_dir);
        let unfinished = if state.root().exists() {
            describe(&decide_for(&state)?)
        } else {
            None
        };
        return Ok(Session {
            state,
            _lock: None,
            recovered: None,
            unfinished,
        });
    }
    let state = StateDir::open(&host.state_dir)?;
    let lock = state.lock()?;
    let recovered = recover::recover(&state, host.manager(), timing, host.events.as_ref()).await?;
    if let Some(r) = &recovered {
        host.emit(Event::info(r.clone()));
    }
    Ok(Session {
        state,
        _lock: Some(lock),
        recovered,
        unfinished: None,
    })
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

/// Files imported into the host store: everything but image blobs and binaries.
fn store_files(bundle: &BundleFile) -> Result<Vec<StoreFile>> {
    let mut v = vec![StoreFile::verified(
        "bundle.json",
        bundle.manifest_bytes().to_vec(),
    )];
    for f in &bundle.manifest().files {
        if f.path.starts_with("oci/") || f.path.starts_with("bin/") {
            continue;
        }
        v.push(StoreFile {
            path: f.path.clone(),
            data: bundle.read_entry(&f.path)?,
            sha256: f.sha256.clone(),
        });
    }
    Ok(v)
}

/// Observe, plan, check, and (unless `dry_run`) apply; the outcome of `target`.
async fn run(
    host: &Host,
    nodes: Vec<String>,
    s: &Session,
    target: Target,
    dry_run: bool,
    timing: Timing,
) -> Result<Outcome> {
    let view = pipeline::observe(host, nodes, &s.state, &target.desired).await?;
    let p = pipeline::plan_host(&target, &view)?;
    pipeline::check_feasible(&target.desired, &view, &p)?;
    let d = &target.desired;
    let mut o = Outcome {
        result: OutcomeResult::Planned,
        stack: d.stack.clone(),
        generation: target.generation,
        bundle: d.bundle.name.clone(),
        version: d.bundle.version.clone(),
        identity: d.bundle.identity.clone(),
        plan: p.lines(),
        steps: p.swarm.steps.clone(),
        unchanged: p.swarm.unchanged.clone(),
        host: p.clone(),
        recovered: s.recovered.clone(),
        unfinished: s.unfinished.clone(),
        signed_by: None,
        notes: restart_notes(d, s.state.current_generation()?.as_ref()),
    };
    o.notes
        .extend(pipeline::remote_folder_warnings(d, &view, &p));
    if dry_run {
        return Ok(o);
    }
    match pipeline::apply(host, &s.state, &target, &p, timing).await? {
        Applied::Unchanged(n) => {
            o.result = OutcomeResult::Unchanged;
            o.generation = Some(n);
        }
        Applied::Current(n) => {
            o.result = match target.kind {
                Kind::Activate => OutcomeResult::Activated,
                Kind::Rollback => OutcomeResult::RolledBack,
            };
            o.generation = Some(n);
        }
    }
    Ok(o)
}

/// The secrets given as site values (`x-reemo-value`), by compose key: kept in the state
/// directory by content hash (not on a dry run). A secret whose value is empty is generated
/// when it has `x-reemo-generate`, and refused otherwise, naming the parameter to set.
fn secret_values(
    compose: &crate::stack::ComposeFile,
    raw_stack: &str,
    stack_file: &str,
    state: &StateDir,
    dry_run: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let refs = crate::site::yaml_references(raw_stack).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (key, def) in &compose.secrets {
        let Some(v) = &def.value else {
            continue;
        };
        if v.is_empty() {
            if def.generate.is_none() {
                let path = format!("secrets.{key}.x-reemo-value");
                let param = refs
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, n)| format!("site parameter {n}"))
                    .unwrap_or_else(|| "its site value".to_string());
                bail!(
                    "{stack_file}: secret {key}: {param} is empty and the secret is not generated on the host: give it (--set or the site file); nothing was changed"
                );
            }
            continue;
        }
        let data = def.value_content(v);
        if !dry_run {
            state.put_secret_value(&crate::hash::sha256_hex(&data), &data)?;
        }
        out.insert(key.clone(), data);
    }
    Ok(out)
}

/// Which services `desired` restarts against the current generation, and a warning for
/// each restart that interrupts its service.
fn restart_notes(
    desired: &DesiredStack,
    current: Option<&crate::state::Generation>,
) -> Vec<String> {
    let restarting = only::restarting(desired, current.map(|g| &g.desired));
    if restarting.is_empty() {
        return vec![];
    }
    let names: Vec<&str> = restarting.iter().map(|s| s.name.as_str()).collect();
    let mut v = vec![format!("restarts: {}", names.join(", "))];
    v.extend(
        restarting
            .iter()
            .filter_map(|s| only::interruption(s))
            .map(|w| format!("warning: {w}")),
    );
    v
}

/// `activate FILE`.
pub async fn activate(host: &Host, file: &Path, opts: &ActivateOptions) -> Result<Outcome> {
    let nodes = pipeline::require_swarm(host).await?;
    let bundle =
        BundleFile::open(file).with_context(|| format!("verifying bundle {}", file.display()))?;
    let verdict = check_trust(
        &bundle,
        &host.state_dir,
        &opts.trusted_keys,
        host.events.as_ref(),
    )?;
    let mut notes = vec![format!("signature: {verdict}")];
    fault("verify");
    let manifest = bundle.manifest().clone();
    // Site values are read and checked before the state directory is opened.
    let layers = site_layers(&opts.site_file, &opts.set)?;

    let s = session(host, opts.dry_run, opts.timing).await?;
    check_stack(&s.state, &manifest.stack)?;
    let current = s.state.current_generation()?;
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
    let (desired, new_secrets) = desire(
        &manifest,
        &|p| bundle.read_entry(p),
        layers,
        &s.state,
        current.as_ref(),
        &super::certs::Imports::new(),
        opts.dry_run,
        (&opts.only, opts.out_of_order),
        &mut notes,
    )
    .map_err(|e| e.context(format!("bundle {}", file.display())))?;
    let store_files = if opts.dry_run {
        vec![]
    } else {
        store_files(&bundle)?
    };
    let target = Target {
        kind: Kind::Activate,
        desired,
        generation: None,
        bundle: Some(Arc::new(bundle)),
        store_files,
        new_secrets,
        remove_others: opts.only.is_empty(),
    };
    let mut o = run(host, nodes, &s, target, opts.dry_run, opts.timing).await?;
    o.signed_by = signed_by(&verdict);
    notes.append(&mut o.notes);
    o.notes = notes;
    Ok(o)
}

/// The site values given on the command line: the site file, then `--set`.
fn site_layers(
    site_file: &Option<PathBuf>,
    set: &[String],
) -> Result<Vec<BTreeMap<String, crate::site::Given>>> {
    let mut layers = Vec::new();
    if let Some(f) = site_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading site file {}", f.display()))?;
        layers.push(
            crate::site::parse_site_file(&text, &f.display().to_string())
                .map_err(anyhow::Error::msg)?,
        );
    }
    let mut sets = BTreeMap::new();
    for a in set {
        let (k, g) = crate::site::parse_set(a).map_err(anyhow::Error::msg)?;
        sets.insert(k, g);
    }
    layers.push(sets);
    Ok(layers)
}

/// The desired state of a bundle (its manifest, and its files read through `read`) on this
/// host: site values resolved (the current generation's kept unless `layers` change them)
/// and interpolated, generated secrets taken from the host or made now (a dry run makes
/// none). Returns it with the secrets to store first; notes get the site value changes.
#[allow(clippy::too_many_arguments)]
fn desire(
    manifest: &crate::bundle::manifest::BundleManifest,
    read: &dyn Fn(&str) -> Result<Vec<u8>>,
    layers: Vec<BTreeMap<String, crate::site::Given>>,
    state: &StateDir,
    current: Option<&crate::state::Generation>,
    imports: &super::certs::Imports,
    dry_run: bool,
    (only, out_of_order): (&[String], bool),
    notes: &mut Vec<String>,
) -> Result<(DesiredStack, BTreeMap<String, Vec<u8>>)> {
    let no_values = BTreeMap::new();
    let kept = current
        .filter(|g| g.desired.bundle.name == manifest.name)
        .map_or(&no_values, |g| &g.desired.site);
    let site = crate::site::resolve(&manifest.parameters, kept, &layers)
        .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    notes.extend(crate::site::changes(
        current.map(|g| &g.desired.site).unwrap_or(&BTreeMap::new()),
        &site,
    ));
    let raw_stack = String::from_utf8_lossy(&read(&manifest.stack_file)?).into_owned();
    let stack_text = if manifest.parameters.is_empty() {
        raw_stack.clone()
    } else {
        crate::site::interpolate_yaml(&raw_stack, &site)
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.stack_file))?
    };
    let compose = crate::stack::parse(&stack_text, &manifest.stack_file)?;
    let mut files = BTreeMap::new();
    for p in desired::file_paths(manifest, &compose)? {
        let data = read(&p)?;
        files.insert(p, data);
    }
    // Generated secrets: the host's own if it has them; new ones are made now (a dry run
    // shows a placeholder) and stored by the pipeline before the transaction.
    let mut generated = BTreeMap::new();
    let mut new_secrets = BTreeMap::new();
    for (key, def) in &compose.secrets {
        let Some(template) = &def.generate else {
            continue;
        };
        if def.value.as_deref().is_some_and(|v| !v.is_empty()) {
            continue; // the site gives it
        }
        match state.generated_secret(key)? {
            Some(d) => {
                generated.insert(key.clone(), d);
            }
            None if !dry_run => {
                let d = desired::generate_secret(template);
                generated.insert(key.clone(), d.clone());
                new_secrets.insert(key.clone(), d);
            }
            None => {}
        }
    }
    let values = secret_values(&compose, &raw_stack, &manifest.stack_file, state, dry_run)?;
    let made = super::certs::certificates(&compose, state, current, imports, dry_run, notes)?;
    let mut new = desired::build(
        manifest,
        &compose,
        &Contents {
            files: &files,
            generated: &generated,
            values: &values,
            pki: &made.contents,
        },
    )?;
    new.site = site;
    new.certificates = made.issued;
    let desired = if only.is_empty() {
        new
    } else {
        let previous = current.map(|g| &g.desired);
        let selected = only::resolve(&new, only)?;
        only::check_order(&new, previous, &selected, out_of_order)
            .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
        notes.push(format!("--only: updating {}", selected.join(", ")));
        desired::merge_only(&new, previous, &selected)?
    };
    Ok((desired, new_secrets))
}

/// Options of `configure`.
#[derive(Debug, Clone)]
pub struct ConfigureOptions {
    /// Plan only: change nothing anywhere.
    pub dry_run: bool,
    /// Timing.
    pub timing: Timing,
    /// Site file.
    pub site_file: Option<PathBuf>,
    /// `--set NAME=VALUE`.
    pub set: Vec<String>,
    /// Operator certificates to use (`Some`) or to stop using (`None`) from this
    /// generation on (`cert import` / `cert remove`); the rest as stored.
    pub imports: super::certs::Imports,
}

/// `configure`: the current generation's bundle again, from the host's store (no bundle
/// file needed), with changed site values: a new generation through the same pipeline.
pub async fn configure(host: &Host, opts: &ConfigureOptions) -> Result<Outcome> {
    let nodes = pipeline::require_swarm(host).await?;
    let layers = site_layers(&opts.site_file, &opts.set)?;
    let s = session(host, opts.dry_run, opts.timing).await?;
    let current = s
        .state
        .current_generation()?
        .context("no generation is current: activate a bundle first")?;
    let identity = current.desired.bundle.identity.clone();
    let dir = s.state.store_path(&identity);
    let read = |p: &str| -> Result<Vec<u8>> {
        std::fs::read(dir.join(p)).with_context(|| {
            format!(
                "reading {p} of bundle {} from the host store {} (activate its bundle file again)",
                crate::swarm::observed::short(&identity),
                dir.display()
            )
        })
    };
    let manifest: crate::bundle::manifest::BundleManifest =
        serde_json::from_slice(&read("bundle.json")?)
            .with_context(|| format!("reading the stored bundle.json of {}", dir.display()))?;
    let mut notes = vec![format!(
        "bundle {} {} from the host store",
        manifest.name, manifest.version
    )];
    let (desired, new_secrets) = desire(
        &manifest,
        &read,
        layers,
        &s.state,
        Some(&current),
        &opts.imports,
        opts.dry_run,
        (&[], false),
        &mut notes,
    )?;
    let target = Target {
        kind: Kind::Activate,
        desired,
        generation: None,
        bundle: None,
        store_files: vec![],
        new_secrets,
        remove_others: true,
    };
    let mut o = run(host, nodes, &s, target, opts.dry_run, opts.timing).await?;
    notes.append(&mut o.notes);
    o.notes = notes;
    Ok(o)
}

/// The generation `rollback [--to N]` returns to.
pub fn rollback_target(
    gens: &[crate::state::Generation],
    current: u64,
    to: Option<u64>,
) -> Result<DesiredStackRef<'_>> {
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
    Ok(DesiredStackRef {
        number: target.number,
        desired: &target.desired,
    })
}

/// A generation picked by [`rollback_target`].
#[derive(Debug, Clone, Copy)]
pub struct DesiredStackRef<'a> {
    /// Its number.
    pub number: u64,
    /// Its desired state.
    pub desired: &'a DesiredStack,
}

/// `rollback [--to N]`.
pub async fn rollback(
    host: &Host,
    to: Option<u64>,
    dry_run: bool,
    timing: Timing,
) -> Result<Outcome> {
    let nodes = pipeline::require_swarm(host).await?;
    let s = session(host, dry_run, timing).await?;
    let current = s
        .state
        .current()?
        .context("there is no current generation to roll back from")?;
    let gens = s.state.generations()?;
    let t = rollback_target(&gens, current, to)?;
    let target = Target {
        kind: Kind::Rollback,
        desired: t.desired.clone(),
        generation: Some(t.number),
        bundle: None,
        store_files: vec![],
        new_secrets: BTreeMap::new(),
        remove_others: true,
    };
    run(host, nodes, &s, target, dry_run, timing).await
}

/// `recover`: finish or revert what an interrupted activation left; `None` when there was
/// nothing to do.
pub async fn recover(host: &Host, timing: Timing) -> Result<Option<String>> {
    host.manager().require_manager().await?;
    let state = StateDir::open_existing(&host.state_dir);
    if !state.root().exists() {
        return Ok(None);
    }
    let _lock = state.lock()?;
    recover::recover(&state, host.manager(), timing, host.events.as_ref()).await
}
