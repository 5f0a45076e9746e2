//! Node roles (`x-reemo-node-roles`, seed 001's `infra_manager`, `portal_manager` and
//! `api_manager` groups): the nodes a site names for each role, resolved against the swarm's
//! nodes, and the node labels that make placement follow them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use serde::Serialize;

use super::labels::role_label;

/// A node of the swarm as a site may name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName {
    /// Node ID.
    pub id: String,
    /// Host name it reports.
    pub hostname: String,
    /// Its address (`Status.Addr`).
    pub addr: String,
}

impl NodeName {
    fn describe(&self) -> String {
        format!(
            "{} ({}, {})",
            self.hostname,
            self.addr,
            &self.id[..self.id.len().min(12)]
        )
    }
}

/// The node `reference` names: its ID (or an unambiguous prefix of at least 6 characters),
/// its address, or its host name when no other node has it.
fn find<'a>(reference: &str, nodes: &'a [NodeName]) -> Result<&'a NodeName, String> {
    let list = || {
        nodes
            .iter()
            .map(NodeName::describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    if let Some(n) = nodes
        .iter()
        .find(|n| n.id == reference || n.addr == reference)
    {
        return Ok(n);
    }
    let by_name: Vec<&NodeName> = nodes.iter().filter(|n| n.hostname == reference).collect();
    match by_name.len() {
        1 => return Ok(by_name[0]),
        0 => {}
        k => {
            return Err(format!(
            "host name {reference:?} names {k} nodes; name them by address or node ID (nodes: {})",
            list()
        ))
        }
    }
    let by_prefix: Vec<&NodeName> = nodes
        .iter()
        .filter(|n| reference.len() >= 6 && n.id.starts_with(reference))
        .collect();
    match by_prefix.len() {
        1 => Ok(by_prefix[0]),
        0 => Err(format!(
            "{reference:?} is not a node of this swarm (nodes: {})",
            list()
        )),
        k => Err(format!(
            "node ID prefix {reference:?} names {k} nodes (nodes: {})",
            list()
        )),
    }
}

/// Each role's node IDs. Every name must be a node of the swarm; errors name the role and
/// the node, and list the swarm's nodes.
pub fn resolve(
    roles: &BTreeMap<String, Vec<String>>,
    nodes: &[NodeName],
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (role, names) in roles {
        let mut ids = BTreeSet::new();
        for name in names {
            match find(name, nodes) {
                Ok(n) => {
                    ids.insert(n.id.clone());
                }
                Err(e) => problems.push(format!("x-reemo-node-roles {role}: {e}")),
            }
        }
        out.insert(role.clone(), ids);
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(out)
}

/// A role label to set on a node or to take off it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleLabel {
    /// Node ID.
    pub node: String,
    /// Role.
    pub role: String,
    /// Set (`true`) or remove.
    pub set: bool,
}

/// The label changes that give exactly the nodes of `resolved` each role: set where missing,
/// removed from nodes that carry the label but no longer have the role. `labels`: every
/// node's labels, by node ID.
pub fn label_changes(
    resolved: &BTreeMap<String, BTreeSet<String>>,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<RoleLabel> {
    let mut v = Vec::new();
    for (role, ids) in resolved {
        let key = role_label(role);
        for (node, l) in labels {
            let has = l.get(&key).is_some_and(|v| v == "true");
            let want = ids.contains(node);
            if has != want {
                v.push(RoleLabel {
                    node: node.clone(),
                    role: role.clone(),
                    set: want,
                });
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodeName> {
        [
            ("aaaaaaa111", "infra1", "10.0.0.1"),
            ("bbbbbbb222", "infra2", "10.0.0.2"),
            ("ccccccc333", "infra3", "10.0.0.3"),
            ("ccccccc444", "twin", "10.0.0.4"),
            ("ddddddd555", "twin", "10.0.0.5"),
        ]
        .iter()
        .map(|(id, h, a)| NodeName {
            id: id.to_string(),
            hostname: h.to_string(),
            addr: a.to_string(),
        })
        .collect()
    }

    fn roles(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(r, n)| (r.to_string(), n.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn nodes_are_named_by_host_name_address_or_id() {
        let r = resolve(
            &roles(&[
                ("portal", &["infra1", "10.0.0.2"]),
                ("api", &["ccccccc333", "bbbbbbb"]),
            ]),
            &nodes(),
        )
        .unwrap();
        let ids = |role: &str| r[role].iter().cloned().collect::<Vec<_>>();
        assert_eq!(ids("portal"), vec!["aaaaaaa111", "bbbbbbb222"]);
        assert_eq!(ids("api"), vec!["bbbbbbb222", "ccccccc333"]);
    }

    #[test]
    fn unknown_and_ambiguous_names_are_refused_naming_role_and_node() {
        let e = resolve(&roles(&[("portal", &["infra9", "twin"])]), &nodes())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x-reemo-node-roles portal: \"infra9\" is not a node of this swarm (nodes: infra1 (10.0.0.1, aaaaaaa111); "),
            "{e}"
        );
        assert!(
            e.contains("x-reemo-node-roles portal: host name \"twin\" names 2 nodes; name them by address or node ID"),
            "{e}"
        );
        let e = resolve(&roles(&[("api", &["ccccccc"])]), &nodes()).unwrap_err();
        assert!(
            e.to_string()
                .contains("node ID prefix \"ccccccc\" names 2 nodes"),
            "{e}"
        );
        let e = resolve(&roles(&[("api", &["ccc"])]), &nodes()).unwrap_err();
        assert!(
            e.to_string().contains("\"ccc\" is not a node"),
            "short prefixes do not count: {e}"
        );
    }

    #[test]
    fn labels_follow_the_roles_exactly() {
        let resolved: BTreeMap<String, BTreeSet<String>> = [(
            "portal".to_string(),
            ["n1".to_string(), "n2".to_string()].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        labels.insert(
            "n1".into(),
            [(role_label("portal"), "true".into())]
                .into_iter()
                .collect(),
        );
        labels.insert("n2".into(), BTreeMap::new());
        labels.insert(
            "n3".into(),
            [(role_label("portal"), "true".into())]
                .into_iter()
                .collect(),
        );
        assert_eq!(
            label_changes(&resolved, &labels),
            vec![
                RoleLabel {
                    node: "n2".into(),
                    role: "portal".into(),
                    set: true
                },
                RoleLabel {
                    node: "n3".into(),
                    role: "portal".into(),
                    set: false
                },
            ]
        );
    }
}
