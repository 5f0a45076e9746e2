//! The labels a stack's objects carry: what `docker stack` filters on, and what the loader
//! stamps on services, tasks, configs, secrets and nodes to recognise its own work.

use std::collections::BTreeMap;

/// Label that marks objects of a stack (what `docker stack` filters on).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
/// Prefix of the node labels of node roles (`x-reemo-node-roles`).
pub const ROLE_LABEL_PREFIX: &str = "com.reemo-bundle.role.";

/// The node label of node role `role` (value `true` on the nodes that have it).
pub fn role_label(role: &str) -> String {
    format!("{ROLE_LABEL_PREFIX}{role}")
}

/// Label Swarm puts on the container of each task (its task ID).
pub const TASK_LABEL: &str = "com.docker.swarm.task.id";
/// Label holding the hash of the desired spec a service or task was built from.
pub const SPEC_LABEL: &str = "com.reemo-bundle.spec";
/// Label of configs and secrets holding the sha256 of their content.
pub const SHA256_LABEL: &str = "com.reemo-bundle.sha256";

/// Node label naming the image store of the node's engine (`classic`, `containerd`): how
/// services are pinned to images the node can resolve (see `spec::image_pin`).
pub const STORE_LABEL: &str = "com.reemo-bundle.image-store";

/// Node label that says a node holds an image (`com.reemo-bundle.image.<hex12>`).
pub fn image_label(image_id: &str) -> String {
    format!(
        "com.reemo-bundle.image.{}",
        super::observed::short(image_id)
    )
}

/// Labels of configs and secrets of the stack.
pub fn object_labels(stack: &str, sha256: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (STACK_LABEL.to_string(), stack.to_string()),
        (SHA256_LABEL.to_string(), sha256.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_label_uses_the_short_id() {
        assert_eq!(
            super::image_label("sha256:a0452bf7f296aaaaaaaa"),
            "com.reemo-bundle.image.a0452bf7f296"
        );
    }
}
