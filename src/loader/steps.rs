//! One plan step against the engine: create or update a service, create or remove a
//! network, config or secret, wait for a phase. Engine errors are branched on by kind
//! (`EngineError`), never by their text.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::converge::converge;
use super::Timing;
use crate::engine::{Engine, EngineError, ImageStore};
use crate::state::StateDir;
use crate::swarm::desired::{
    DesiredNetwork, DesiredObject, DesiredService, DesiredStack, ObjectSource,
};
use crate::swarm::labels::{image_label, object_labels, STORE_LABEL};
use crate::swarm::plan::Step;
use crate::swarm::spec;

/// Attempts at an update whose object version went stale meanwhile.
const OUT_OF_SEQUENCE_RETRIES: usize = 5;
/// Times a vanished network is created again for one service step.
const NETWORK_RECREATES: usize = 3;

fn object_content(state: &StateDir, o: &DesiredObject) -> Result<Vec<u8>> {
    match &o.source {
        ObjectSource::Store { identity, path } => state.store_file(identity, path),
        ObjectSource::Generated { key } => state
            .generated_secret(key)?
            .with_context(|| format!("generated secret {key} is missing from the state directory")),
        ObjectSource::Value { key } => state.secret_value(&o.sha256)?.with_context(|| {
            format!("the site value of secret {key} is missing from the state directory")
        }),
        ObjectSource::Pki { objects } => {
            let mut data = Vec::new();
            for sha in objects {
                data.extend(crate::pki::object(state.root(), sha)?);
            }
            Ok(data)
        }
    }
}

fn desired_network<'a>(desired: &'a DesiredStack, name: &str) -> Result<&'a DesiredNetwork> {
    desired
        .networks
        .iter()
        .find(|n| n.name == name)
        .with_context(|| format!("network {name} is not in the desired state"))
}

fn desired_service<'a>(desired: &'a DesiredStack, name: &str) -> Result<&'a DesiredService> {
    desired
        .services
        .iter()
        .find(|s| s.full_name == name)
        .with_context(|| format!("service {name} is not in the desired state"))
}

/// Run one step. `deadline` bounds every wait.
pub async fn apply_step(
    step: &Step,
    desired: &DesiredStack,
    state: &StateDir,
    engine: &dyn Engine,
    deadline: Instant,
    timing: Timing,
) -> Result<()> {
    let stack = desired.stack.as_str();
    match step {
        Step::CreateNetwork { name } => {
            let n = desired_network(desired, name)?;
            match engine
                .create_network(&spec::network_request(stack, n))
                .await
            {
                Ok(()) | Err(EngineError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
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
            let labels = object_labels(stack, &o.sha256);
            let r = if is_cfg {
                engine.create_config(name, &data, &labels).await
            } else {
                engine.create_secret(name, &data, &labels).await
            };
            // named by content: one that exists already holds the same bytes
            match r {
                Ok(_) | Err(EngineError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Step::CreateService { service: name, .. } | Step::UpdateService { service: name, .. } => {
            put_service(engine, desired, desired_service(desired, name)?, deadline).await?;
        }
        Step::RemoveService { service } => engine.remove_service(service).await?,
        Step::Converge { services, .. } | Step::Settle { services, .. } => {
            let svcs: Vec<&DesiredService> = services
                .iter()
                .map(|n| desired_service(desired, n))
                .collect::<Result<_>>()?;
            let window = match step {
                Step::Settle { .. } => timing.monitor,
                _ => std::time::Duration::ZERO,
            };
            converge(engine, stack, &svcs, deadline, timing.poll, window).await?;
        }
        Step::RemoveConfig { name } => engine.remove_config(name).await?,
        Step::RemoveSecret { name } => engine.remove_secret(name).await?,
        Step::RemoveNetwork { name } => engine.remove_network(name).await?,
    }
    Ok(())
}

/// The reference that every node holding `img` resolves (see [`spec::image_pin`]), from
/// the stores the loader recorded on those nodes.
async fn pin(engine: &dyn Engine, img: &crate::swarm::model::DesiredImage) -> Result<String> {
    let label = image_label(&img.id);
    let stores = engine
        .nodes()
        .await?
        .iter()
        .filter(|n| n.labels.get(&label).is_some_and(|v| v == "present"))
        .map(|n| ImageStore::from_label(n.labels.get(STORE_LABEL).map(String::as_str)))
        .collect();
    Ok(spec::image_pin(&img.into(), &stores))
}

/// Create the service, or replace its spec: re-read its version when the update went out
/// of sequence, and create a network again that vanished under it.
async fn put_service(
    engine: &dyn Engine,
    desired: &DesiredStack,
    s: &DesiredService,
    deadline: Instant,
) -> Result<()> {
    let stack = desired.stack.as_str();
    let cfg = engine.stack_configs(stack).await?;
    let sec = engine.stack_secrets(stack).await?;
    let full =
        spec::fill_ids(&s.spec, &cfg, &sec).with_context(|| format!("service {}", s.full_name))?;
    let full = match desired.images.iter().find(|i| i.id == s.image_id) {
        Some(img) => spec::pin_image(&full, &pin(engine, img).await?),
        None => full,
    };
    let (mut stale, mut recreated) = (0, 0);
    loop {
        let live = engine
            .stack_services(stack)
            .await?
            .into_iter()
            .find(|l| l.name == s.full_name);
        let r = match &live {
            Some(l) => engine.update_service(&full, l.version).await,
            None => engine.create_service(&full).await.map(|_| ()),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(EngineError::OutOfSequence { .. }) if stale < OUT_OF_SEQUENCE_RETRIES => {
                stale += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e @ EngineError::NetworkGone { .. }) if recreated < NETWORK_RECREATES => {
                let EngineError::NetworkGone { network, .. } = &e else {
                    unreachable!()
                };
                recreate_network(engine, desired, network, deadline)
                    .await
                    .with_context(|| format!("service {}: {e}", s.full_name))?;
                recreated += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `docker stack rm` removes a stack's networks only once their tasks have stopped, so a
/// network the plan saw can vanish before a service that needs it is created. Create the
/// desired network `name` again, waiting (bounded by `deadline`) while the old one is still
/// being removed. Networks outside the desired state (external ones) are not created.
async fn recreate_network(
    engine: &dyn Engine,
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
            Err(EngineError::Conflict { .. }) if Instant::now() < deadline => {
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
