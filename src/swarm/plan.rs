//! The activation planner: a pure diff of desired state against what runs, as a list of
//! steps in phase order. `--dry-run` prints it, the journal records it, the applier runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::{BundleInfo, DesiredStack};
pub use super::observed::Observed;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    /// Create an overlay network.
    CreateNetwork {
        /// Network name.
        name: String,
    },
    /// Create a config (content from the state store).
    CreateConfig {
        /// Swarm name.
        name: String,
    },
    /// Create a secret.
    CreateSecret {
        /// Swarm name.
        name: String,
    },
    /// Create a service.
    CreateService {
        /// Full service name.
        service: String,
        /// Phase.
        phase: u32,
    },
    /// Replace a service's spec.
    UpdateService {
        /// Full service name.
        service: String,
        /// Phase.
        phase: u32,
        /// Live spec hash (None when unlabelled).
        from: Option<String>,
        /// Desired spec hash.
        to: String,
    },
    /// Remove a service no longer desired.
    RemoveService {
        /// Full service name.
        service: String,
    },
    /// Wait until the services of a phase have converged (tasks healthy, jobs completed,
    /// Swarm's update monitors done): the next phase may start.
    Converge {
        /// Phase.
        phase: u32,
        /// Full service names.
        services: Vec<String>,
    },
    /// The last wait of a change, in place of its last phase's `Converge`: every service
    /// it created or updated, of every phase, is ready and stays converged for the monitor
    /// window.
    Settle {
        /// The last phase.
        phase: u32,
        /// Full service names.
        services: Vec<String>,
    },
    /// Remove a config created by an abandoned attempt.
    RemoveConfig {
        /// Swarm name.
        name: String,
    },
    /// Remove a secret created by an abandoned attempt.
    RemoveSecret {
        /// Swarm name.
        name: String,
    },
    /// Remove a network created by an abandoned attempt.
    RemoveNetwork {
        /// Network name.
        name: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateNetwork { name } => write!(f, "create network {name}"),
            Step::CreateConfig { name } => write!(f, "create config {name}"),
            Step::CreateSecret { name } => write!(f, "create secret {name}"),
            Step::CreateService { service, phase } => {
                write!(f, "phase {phase}: create service {service}")
            }
            Step::UpdateService {
                service,
                phase,
                from,
                to,
            } => write!(
                f,
                "phase {phase}: update service {service} (spec {} -> {to})",
                from.as_deref().unwrap_or("unknown")
            ),
            Step::RemoveService { service } => write!(f, "remove service {service}"),
            Step::Converge { phase, services } => {
                write!(f, "phase {phase}: wait for {}", services.join(", "))
            }
            Step::Settle { phase, services } => write!(
                f,
                "phase {phase}: wait for {}, stable for the monitor window",
                services.join(", ")
            ),
            Step::RemoveConfig { name } => write!(f, "remove config {name}"),
            Step::RemoveSecret { name } => write!(f, "remove secret {name}"),
            Step::RemoveNetwork { name } => write!(f, "remove network {name}"),
        }
    }
}

impl Step {
    /// Service this step creates or updates.
    pub fn touched_service(&self) -> Option<&str> {
        match self {
            Step::CreateService { service, .. }
            | Step::UpdateService { service, .. }
            | Step::RemoveService { service } => Some(service),
            _ => None,
        }
    }
}

/// A plan: steps, plus what stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Services already as desired.
    pub unchanged: Vec<String>,
}

impl Plan {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Diff `desired` against `observed`. With `remove_others`, services of the stack that are
/// not desired are removed (after everything else converged).
pub fn plan(desired: &DesiredStack, observed: &Observed, remove_others: bool) -> Plan {
    let mut steps = Vec::new();
    let mut unchanged = Vec::new();
    let mut by_phase: BTreeMap<u32, Vec<Step>> = BTreeMap::new();
    let mut need_cfg = BTreeSet::new();
    let mut need_sec = BTreeSet::new();
    for s in &desired.services {
        match observed.services.get(&s.full_name) {
            Some(Some(h)) if *h == s.spec_hash => unchanged.push(s.full_name.clone()),
            live => {
                need_cfg.extend(s.configs.iter().cloned());
                need_sec.extend(s.secrets.iter().cloned());
                let step = match live {
                    None => Step::CreateService {
                        service: s.full_name.clone(),
                        phase: s.phase,
                    },
                    Some(from) => Step::UpdateService {
                        service: s.full_name.clone(),
                        phase: s.phase,
                        from: from.clone(),
                        to: s.spec_hash.clone(),
                    },
                };
                by_phase.entry(s.phase).or_default().push(step);
            }
        }
    }
    if !by_phase.is_empty() {
        for n in &desired.networks {
            if !n.external && !observed.networks.contains(&n.name) {
                steps.push(Step::CreateNetwork {
                    name: n.name.clone(),
                });
            }
        }
    }
    for c in &desired.configs {
        if need_cfg.contains(&c.name) && !observed.configs.contains(&c.name) {
            steps.push(Step::CreateConfig {
                name: c.name.clone(),
            });
        }
    }
    for c in &desired.secrets {
        if need_sec.contains(&c.name) && !observed.secrets.contains(&c.name) {
            steps.push(Step::CreateSecret {
                name: c.name.clone(),
            });
        }
    }
    // Each phase waits only until its services are ready; the stability window is taken
    // once, over everything the change touched, so that a later phase's start does not
    // wait for an earlier phase's window.
    let last = by_phase.keys().next_back().copied();
    let mut changed = Vec::new();
    for (phase, phase_steps) in by_phase {
        let services: Vec<String> = phase_steps
            .iter()
            .filter_map(|s| s.touched_service().map(str::to_string))
            .collect();
        changed.extend(services.iter().cloned());
        steps.extend(phase_steps);
        steps.push(if Some(phase) == last {
            Step::Settle {
                phase,
                services: std::mem::take(&mut changed),
            }
        } else {
            Step::Converge { phase, services }
        });
    }
    if remove_others {
        for name in observed.services.keys() {
            if !desired.services.iter().any(|s| &s.full_name == name) {
                steps.push(Step::RemoveService {
                    service: name.clone(),
                });
            }
        }
    }
    Plan { steps, unchanged }
}

/// The steps that undo an attempt: every service the attempt touched goes back to the
/// previous generation's spec (or is removed if it did not exist there), then the objects
/// the attempt created are removed. `observed` is what runs now.
pub fn revert(attempted: &[Step], previous: Option<&DesiredStack>, observed: &Observed) -> Plan {
    let mut target = previous.cloned().unwrap_or_else(|| DesiredStack {
        stack: String::new(),
        bundle: BundleInfo {
            name: String::new(),
            version: String::new(),
            identity: String::new(),
            pinned: BTreeMap::new(),
        },
        images: vec![],
        networks: vec![],
        configs: vec![],
        secrets: vec![],
        services: vec![],
        certificates: vec![],
        site: BTreeMap::new(),
        node_roles: BTreeMap::new(),
        host_dirs: vec![],
    });
    let touched: BTreeSet<&str> = attempted.iter().filter_map(Step::touched_service).collect();
    target
        .services
        .retain(|s| touched.contains(s.full_name.as_str()));
    let mut p = plan(&target, observed, false);
    for t in &touched {
        let in_prev = previous
            .map(|p| p.services.iter().any(|s| s.full_name == *t))
            .unwrap_or(false);
        if !in_prev && observed.services.contains_key(*t) {
            p.steps.push(Step::RemoveService {
                service: t.to_string(),
            });
        }
    }
    let keep_cfg: BTreeSet<&String> = previous
        .map(|p| p.configs.iter().map(|c| &c.name).collect())
        .unwrap_or_default();
    let keep_sec: BTreeSet<&String> = previous
        .map(|p| p.secrets.iter().map(|c| &c.name).collect())
        .unwrap_or_default();
    let keep_net: BTreeSet<&String> = previous
        .map(|p| p.networks.iter().map(|c| &c.name).collect())
        .unwrap_or_default();
    for s in attempted {
        match s {
            Step::CreateConfig { name } if !keep_cfg.contains(name) => {
                p.steps.push(Step::RemoveConfig { name: name.clone() })
            }
            Step::CreateSecret { name } if !keep_sec.contains(name) => {
                p.steps.push(Step::RemoveSecret { name: name.clone() })
            }
            Step::CreateNetwork { name } if !keep_net.contains(name) => {
                p.steps.push(Step::RemoveNetwork { name: name.clone() })
            }
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::desired::*;
    use super::*;

    fn svc(name: &str, phase: u32, hash: &str) -> DesiredService {
        DesiredService {
            name: name.into(),
            full_name: format!("s_{name}"),
            phase,
            job: false,
            tags: vec![],
            role: None,
            image_id: "sha256:1".into(),
            configs: vec![format!("s_{name}_cfg_{hash}")],
            secrets: vec![],
            spec_hash: hash.into(),
            task_hash: String::new(),
            spec: serde_json::json!({}),
        }
    }

    fn desired(services: Vec<DesiredService>) -> DesiredStack {
        let configs = services
            .iter()
            .flat_map(|s| s.configs.iter())
            .map(|c| DesiredObject {
                key: "cfg".into(),
                name: c.clone(),
                sha256: "x".into(),
                source: ObjectSource::Generated { key: "k".into() },
            })
            .collect();
        DesiredStack {
            stack: "s".into(),
            bundle: BundleInfo {
                name: "b".into(),
                version: "1".into(),
                identity: "i".into(),
                pinned: Default::default(),
            },
            images: vec![],
            networks: vec![DesiredNetwork {
                key: "default".into(),
                name: "s_default".into(),
                driver: "overlay".into(),
                attachable: false,
                external: false,
            }],
            configs,
            secrets: vec![],
            services,
            certificates: vec![],
            site: BTreeMap::new(),
            node_roles: BTreeMap::new(),
            host_dirs: vec![],
        }
    }

    #[test]
    fn fresh_stack_is_created_phase_by_phase() {
        let d = desired(vec![
            svc("db", 0, "a"),
            svc("api", 1, "b"),
            svc("portal", 3, "c"),
        ]);
        let p = plan(&d, &Observed::default(), true);
        let text: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "create network s_default",
                "create config s_db_cfg_a",
                "create config s_api_cfg_b",
                "create config s_portal_cfg_c",
                "phase 0: create service s_db",
                "phase 0: wait for s_db",
                "phase 1: create service s_api",
                "phase 1: wait for s_api",
                "phase 3: create service s_portal",
                "phase 3: wait for s_db, s_api, s_portal, stable for the monitor window",
            ]
        );
    }

    #[test]
    fn unchanged_stack_has_an_empty_plan() {
        let d = desired(vec![svc("db", 0, "a"), svc("api", 1, "b")]);
        let obs = Observed {
            services: [
                ("s_db".into(), Some("a".into())),
                ("s_api".into(), Some("b".into())),
            ]
            .into(),
            configs: ["s_db_cfg_a".into(), "s_api_cfg_b".into()].into(),
            networks: ["s_default".into()].into(),
            ..Default::default()
        };
        let p = plan(&d, &obs, true);
        assert!(p.is_empty(), "{:?}", p.steps);
        assert_eq!(p.unchanged, vec!["s_db", "s_api"]);
    }

    #[test]
    fn changed_service_is_updated_and_stale_removed() {
        let d = desired(vec![svc("api", 1, "b2")]);
        let obs = Observed {
            services: [("s_api".into(), Some("b".into())), ("s_old".into(), None)].into(),
            configs: ["s_api_cfg_b".into()].into(),
            networks: ["s_default".into()].into(),
            ..Default::default()
        };
        let p = plan(&d, &obs, true);
        let text: Vec<String> = p.steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "create config s_api_cfg_b2",
                "phase 1: update service s_api (spec b -> b2)",
                "phase 1: wait for s_api, stable for the monitor window",
                "remove service s_old",
            ]
        );
        assert!(plan(&d, &obs, false)
            .steps
            .iter()
            .all(|s| !matches!(s, Step::RemoveService { .. })));
    }

    #[test]
    fn revert_restores_previous_and_removes_created() {
        let prev = desired(vec![svc("api", 1, "b")]);
        let new = desired(vec![svc("api", 1, "b2"), svc("web", 2, "w")]);
        let obs_before = Observed {
            services: [("s_api".into(), Some("b".into()))].into(),
            configs: ["s_api_cfg_b".into()].into(),
            networks: ["s_default".into()].into(),
            ..Default::default()
        };
        let attempted = plan(&new, &obs_before, true).steps;
        let obs_after = Observed {
            services: [
                ("s_api".into(), Some("b2".into())),
                ("s_web".into(), Some("w".into())),
            ]
            .into(),
            configs: [
                "s_api_cfg_b".into(),
                "s_api_cfg_b2".into(),
                "s_web_cfg_w".into(),
            ]
            .into(),
            networks: ["s_default".into()].into(),
            ..Default::default()
        };
        let r = revert(&attempted, Some(&prev), &obs_after);
        let text: Vec<String> = r.steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "phase 1: update service s_api (spec b2 -> b)",
                "phase 1: wait for s_api, stable for the monitor window",
                "remove service s_web",
                "remove config s_api_cfg_b2",
                "remove config s_web_cfg_w",
            ]
        );
    }

    #[test]
    fn only_merges_with_previous() {
        let prev = desired(vec![svc("db", 0, "a"), svc("api", 1, "b")]);
        let new = desired(vec![svc("db", 0, "a2"), svc("api", 1, "b2")]);
        let m = merge_only(&new, Some(&prev), &["api".into()]).unwrap();
        let hashes: Vec<&str> = m.services.iter().map(|s| s.spec_hash.as_str()).collect();
        assert_eq!(hashes, vec!["a", "b2"]);
        assert!(merge_only(&new, Some(&prev), &["nope".into()]).is_err());
    }
}
