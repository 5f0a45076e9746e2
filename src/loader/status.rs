//! `status` and `generations`: reports over the state directory and the engines, returned
//! as data. `status` changes nothing: an unfinished activation is reported with the command
//! that finishes it, and each service is judged by `swarm::health::assess`, the same
//! assessment `activate` waits on.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::recover::{decide_for, describe};
use super::Host;
use crate::engine::ManagerNode;
use crate::state::{GenResult, StateDir};
use crate::swarm::health::{assess, count, Health, Wanted};
use crate::swarm::observed::TaskState;
use crate::swarm::quorum::{self, Quorum};

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
    pub result: GenResult,
    /// Error, if failed.
    pub error: Option<String>,
    /// Site values it was rendered with (secrets masked).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub site: BTreeMap<String, String>,
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
            result: g.result,
            error: g.error.clone(),
            site: shown_site(&g.desired.site),
        })
        .collect())
}

/// Site values as shown to operators: secrets masked.
pub fn shown_site(site: &BTreeMap<String, crate::site::SiteValue>) -> BTreeMap<String, String> {
    site.iter()
        .map(|(k, v)| (k.clone(), v.shown().to_string()))
        .collect()
}

/// One certificate in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    /// Certificate name.
    pub name: String,
    /// Subject common name.
    pub subject: String,
    /// SANs.
    pub sans: Vec<String>,
    /// Issuer common name.
    pub issuer: String,
    /// Unix time of the end of validity.
    pub not_after: i64,
    /// Whole days left.
    pub days_left: i64,
}

/// One service in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Full name.
    pub name: String,
    /// Running tasks of the generation's spec (jobs: completed ones).
    pub running: usize,
    /// Desired replicas.
    pub desired: u64,
    /// The assessment `activate` waits on, in a word.
    pub health: Health,
    /// Why it is not healthy, when it is not.
    pub detail: Option<String>,
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

/// One engine as it reports itself.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    /// Address.
    pub engine: String,
    /// Docker version, API version used, image store (absent when it does not answer).
    #[serde(flatten)]
    pub facts: Option<crate::engine::EngineFacts>,
    /// Why it does not answer (an engine other than the manager, e.g. a lost node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Every engine given: version, API version, image store.
    pub engines: Vec<EngineStatus>,
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
    pub pinned: BTreeMap<String, String>,
    /// Site parameter values of the current generation (secrets masked).
    pub site: BTreeMap<String, String>,
    /// Certificates of the current generation, with the days they have left.
    pub certificates: Vec<CertificateStatus>,
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// Images per engine.
    pub images: Vec<ImagePresence>,
    /// Swarm: managers.
    pub managers: i64,
    /// Swarm: the manager nodes, with reachability and leadership.
    pub manager_nodes: Vec<ManagerNode>,
    /// Swarm: nodes.
    pub nodes: i64,
    /// Further manager losses the quorum tolerates now (`quorum.tolerates`).
    pub tolerated_failures: usize,
    /// The managers' quorum: needed, reachable, tolerance, what one more loss would do.
    pub quorum: Quorum,
    /// Warnings (quorum, missing images, drift).
    pub warnings: Vec<String>,
    /// An unfinished activation, and the command that finishes it.
    pub journal: Option<String>,
}

/// `status`: reads only.
pub async fn status(host: &Host) -> Result<Status> {
    let engine = host.manager();
    let facts = engine.require_manager().await?;
    let state = StateDir::open_existing(&host.state_dir);
    let journal = if state.root().exists() {
        describe(&decide_for(&state)?)
    } else {
        None
    };
    let nodes = engine.nodes().await?;
    let q = quorum::assess(&nodes);
    let mut warnings = q.warnings(&nodes);
    let manager_nodes: Vec<ManagerNode> = nodes.iter().filter_map(|n| n.manager.clone()).collect();
    let current = state.current_generation()?;
    // the manager must answer; another engine that does not (a lost node) is reported
    let mut engines = Vec::new();
    let mut answering = Vec::new();
    for (i, e) in host.engines.iter().enumerate() {
        let (facts, error) = match e.facts().await {
            Ok(f) => (Some(f), None),
            Err(err) if i > 0 => {
                warnings.push(format!(
                    "engine {} does not answer ({err}); its images are not checked",
                    e.url()
                ));
                (None, Some(err.to_string()))
            }
            Err(err) => return Err(err.into()),
        };
        if facts.is_some() {
            answering.push(e.clone());
        }
        engines.push(EngineStatus {
            engine: e.url().to_string(),
            facts,
            error,
        });
    }
    let mut st = Status {
        engines,
        generation: current.as_ref().map(|g| g.number),
        stack: None,
        bundle: None,
        version: None,
        identity: None,
        pinned: Default::default(),
        site: Default::default(),
        certificates: vec![],
        services: vec![],
        images: vec![],
        managers: facts.managers,
        manager_nodes,
        nodes: facts.nodes,
        tolerated_failures: q.tolerates,
        quorum: q,
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
        st.site = shown_site(&d.site);
        let now = crate::state::now() as i64;
        for c in &d.certificates {
            let days_left = c.days_left(now);
            if days_left < 30 {
                st.warnings.push(format!(
                    "certificate {} expires in {days_left} day(s): `reemo-bundle configure` or `activate` re-issues it",
                    c.name
                ));
            }
            st.certificates.push(CertificateStatus {
                name: c.name.clone(),
                subject: c.subject.clone(),
                sans: c.sans.clone(),
                issuer: c.issuer.clone(),
                not_after: c.not_after,
                days_left,
            });
        }
        let live = engine.stack_services(&d.stack).await?;
        for s in &d.services {
            let l = live.iter().find(|l| l.name == s.full_name);
            let tasks = if l.is_some() {
                engine.tasks(&s.full_name).await?
            } else {
                vec![]
            };
            let a = assess(
                Wanted {
                    name: &s.full_name,
                    spec_hash: &s.spec_hash,
                    task_hash: s.task_hash(),
                    job: s.job,
                },
                l,
                &tasks,
            );
            let health = a.health(s.job);
            let state = if s.job {
                TaskState::Complete
            } else {
                TaskState::Running
            };
            if matches!(health, Health::Missing | Health::Drifted) {
                warnings.push(format!(
                    "service {} is {health}: re-run `reemo-bundle activate` or `rollback --to {}`",
                    s.full_name, g.number
                ));
            }
            st.services.push(ServiceStatus {
                name: s.full_name.clone(),
                running: count(&tasks, s.task_hash(), state),
                desired: l.and_then(|l| l.replicas).unwrap_or(1),
                health,
                detail: a.detail(),
                job: s.job,
            });
        }
        for e in &answering {
            for img in &d.images {
                let present = e.has_image(&img.into()).await?;
                if !present {
                    warnings.push(format!("image {} is missing on {}", img.reference, e.url()));
                }
                st.images.push(ImagePresence {
                    engine: e.url().to_string(),
                    image: img.reference.clone(),
                    id: img.id.clone(),
                    present,
                });
            }
        }
    }
    warnings.append(&mut st.warnings);
    st.warnings = warnings;
    Ok(st)
}
