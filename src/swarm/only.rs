//! Partial updates (`activate --only`): which services a selection names (service names or
//! the tags services carry, `x-reemo-tags`), whether it keeps the phase order (seed 001: DB,
//! then API, then the others, then PORTAL), and which restarts interrupt a service.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

use super::model::{DesiredService, DesiredStack};

/// The services `only` names in `new`: each entry is a service name or a tag; every name
/// must match something.
pub fn resolve(new: &DesiredStack, only: &[String]) -> Result<Vec<String>> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for o in only {
        let named: Vec<&DesiredService> = new
            .services
            .iter()
            .filter(|s| &s.name == o || s.tags.contains(o))
            .collect();
        if named.is_empty() {
            let names: Vec<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
            let tags: BTreeSet<&str> = new
                .services
                .iter()
                .flat_map(|s| s.tags.iter().map(String::as_str))
                .collect();
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!("; tags {}", tags.into_iter().collect::<Vec<_>>().join(", "))
            };
            bail!(
                "--only {o}: the bundle has no such service or tag (services {}{tags})",
                names.join(", ")
            );
        }
        out.extend(named.into_iter().map(|s| s.name.clone()));
    }
    Ok(out.into_iter().collect())
}

/// Whether `s` would change against the previous generation's service of that name.
fn pending(s: &DesiredService, previous: Option<&DesiredStack>) -> bool {
    previous
        .and_then(|p| p.service(&s.name))
        .is_none_or(|p| p.spec_hash != s.spec_hash)
}

/// Refuse a selection that updates a service while a service of an earlier phase, not
/// selected, also changes in `new` (it would run the later service against the earlier one's
/// old version), unless `out_of_order`. Later phases left for later are fine: that is how a
/// tagged update goes, one phase after the other.
pub fn check_order(
    new: &DesiredStack,
    previous: Option<&DesiredStack>,
    selected: &[String],
    out_of_order: bool,
) -> Result<()> {
    if out_of_order {
        return Ok(());
    }
    let chosen: Vec<&DesiredService> = new
        .services
        .iter()
        .filter(|s| selected.contains(&s.name) && pending(s, previous))
        .collect();
    let Some(last) = chosen.iter().map(|s| s.phase).max() else {
        return Ok(());
    };
    let first_chosen = |phase: u32| {
        chosen
            .iter()
            .filter(|c| c.phase > phase)
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
    };
    let before: Vec<String> = new
        .services
        .iter()
        .filter(|s| s.phase < last && !selected.contains(&s.name) && pending(s, previous))
        .map(|s| {
            format!(
                "{} (phase {}, before {})",
                s.name,
                s.phase,
                first_chosen(s.phase).join(", ")
            )
        })
        .collect();
    if !before.is_empty() {
        bail!(
            "--only {}: this bundle also changes {}, which come first (services are updated in phase order); add them to --only, update them first, or pass --out-of-order",
            selected.join(","),
            before.join("; ")
        );
    }
    Ok(())
}

/// Why restarting `s`'s tasks interrupts it, when it does: a single task (or a job) that
/// its update stops before the replacement starts (Swarm's default `stop-first`).
pub fn interruption(s: &DesiredService) -> Option<String> {
    let spec = &s.spec;
    let replicas = spec["Mode"]["Replicated"]["Replicas"].as_u64();
    let global = spec["Mode"].get("Global").is_some();
    let start_first = spec["UpdateConfig"]["Order"] == "start-first";
    match (replicas, global, start_first) {
        (_, _, true) => None,
        (Some(n), _, _) if n <= 1 => Some(format!(
            "{} restarts with an interruption: {n} replica, stopped before its replacement starts (update order stop-first)",
            s.name
        )),
        (_, true, _) => Some(format!(
            "{} restarts with an interruption on each node: one task per node, stopped before its replacement starts (update order stop-first)",
            s.name
        )),
        _ => None,
    }
}

/// The services whose tasks `new` restarts against `previous` (their task template
/// changes; a new replica count alone restarts nothing).
pub fn restarting<'a>(
    new: &'a DesiredStack,
    previous: Option<&DesiredStack>,
) -> Vec<&'a DesiredService> {
    new.services
        .iter()
        .filter(|s| {
            previous
                .and_then(|p| p.service(&s.name))
                .is_some_and(|p| p.task_hash() != s.task_hash())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, phase: u32, tags: &[&str], hash: &str) -> DesiredService {
        DesiredService {
            name: name.into(),
            full_name: format!("infra_{name}"),
            phase,
            job: false,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            role: None,
            image_id: "sha256:aa".into(),
            configs: vec![],
            secrets: vec![],
            spec_hash: hash.into(),
            task_hash: hash.into(),
            spec: json!({"Mode": {"Replicated": {"Replicas": 2}}, "UpdateConfig": {"Order": "start-first"}}),
        }
    }

    fn stack(services: Vec<DesiredService>) -> DesiredStack {
        let mut d: DesiredStack = serde_json::from_value(json!({
            "stack": "infra",
            "bundle": {"name": "infra", "version": "1", "identity": "sha256:00", "pinned": {}},
            "images": [], "networks": [], "configs": [], "secrets": [], "services": [],
        }))
        .unwrap();
        d.services = services;
        d
    }

    /// Seed 001's phases: db 0, api 1, the others 2, portal 3; signals tagged `signal`.
    fn infra(hash: &str) -> DesiredStack {
        stack(vec![
            svc("db", 0, &[], hash),
            svc("api", 1, &[], hash),
            svc("proapi", 2, &[], hash),
            svc("signal1", 2, &["signal"], hash),
            svc("signal2", 2, &["signal"], hash),
            svc("portal", 3, &[], hash),
        ])
    }

    #[test]
    fn a_tag_names_every_service_that_carries_it() {
        let d = infra("h1");
        assert_eq!(
            resolve(&d, &["signal".into(), "api".into()]).unwrap(),
            vec!["api", "signal1", "signal2"]
        );
        let e = resolve(&d, &["mysql".into()]).unwrap_err().to_string();
        assert_eq!(
            e,
            "--only mysql: the bundle has no such service or tag (services db, api, proapi, signal1, signal2, portal; tags signal)"
        );
    }

    #[test]
    fn a_tagged_update_goes_phase_by_phase() {
        let (old, new) = (infra("h1"), infra("h2"));
        // portal first, while db and api also change: refused, naming them
        let e = check_order(&new, Some(&old), &["portal".into()], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--only portal: this bundle also changes db (phase 0, before portal); api (phase 1, before portal); proapi (phase 2, before portal)"),
            "{e}"
        );
        assert!(check_order(&new, Some(&old), &["portal".into()], true).is_ok());
        // db first is fine: what comes later waits
        assert!(check_order(&new, Some(&old), &["db".into()], false).is_ok());
        // then api, once db runs the new version
        let mut after_db = old.clone();
        after_db.services[0] = new.services[0].clone();
        assert!(check_order(&new, Some(&after_db), &["api".into()], false).is_ok());
        let e = check_order(&new, Some(&after_db), &["signal1".into()], false).unwrap_err();
        assert!(
            e.to_string().contains("api (phase 1, before signal1)"),
            "{e}"
        );
        // a service that does not change does not hold anything back
        let mut same_api = new.clone();
        same_api.services[1] = after_db.services[1].clone();
        let mut prev = after_db.clone();
        prev.services[1] = same_api.services[1].clone();
        assert!(check_order(
            &same_api,
            Some(&prev),
            &[
                "portal".into(),
                "proapi".into(),
                "signal1".into(),
                "signal2".into()
            ],
            false
        )
        .is_ok());
        // first install: everything is pending
        assert!(check_order(&new, None, &["api".into()], false).is_err());
    }

    #[test]
    fn a_single_stop_first_task_is_an_interruption() {
        let mut s = svc("mysql", 0, &[], "h");
        assert_eq!(interruption(&s), None, "start-first");
        s.spec = json!({"Mode": {"Replicated": {"Replicas": 1}}, "UpdateConfig": {"Order": "stop-first"}});
        assert_eq!(
            interruption(&s).unwrap(),
            "mysql restarts with an interruption: 1 replica, stopped before its replacement starts (update order stop-first)"
        );
        s.spec = json!({"Mode": {"Replicated": {"Replicas": 1}}});
        assert!(
            interruption(&s).is_some(),
            "Swarm's default order is stop-first"
        );
        s.spec = json!({"Mode": {"Replicated": {"Replicas": 3}}});
        assert_eq!(interruption(&s), None, "the other replicas serve");
        s.spec = json!({"Mode": {"Global": {}}});
        assert!(interruption(&s).unwrap().contains("on each node"));
    }

    #[test]
    fn restarts_are_task_template_changes() {
        let old = infra("h1");
        let mut new = old.clone();
        new.services[1].task_hash = "h2".into();
        new.services[2].spec_hash = "h3".into(); // replica count only
        let r: Vec<&str> = restarting(&new, Some(&old))
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(r, vec!["api"]);
        assert!(
            restarting(&new, None).is_empty(),
            "a first install restarts nothing"
        );
    }
}
