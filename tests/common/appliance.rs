//! The shipped RELAYWS appliance (haproxy in front of the relay replicas) for the tests that
//! run it: built from `bundles/relayws.toml` with a test's own stack name.

use std::path::{Path, PathBuf};

use super::{build_def, repo_root};

/// The shipped RELAYWS bundle definition with stack name `stack` (and without the loader binary,
/// which the test does not need), built with the shared store.
pub fn build(dir: &Path, stack: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let shipped = std::fs::read_to_string(repo_root().join("bundles/relayws.toml")).unwrap();
    let def_text = shipped
        .replace(
            "stack_name = \"relayws\"",
            &format!("stack_name = \"{stack}\""),
        )
        .replace(
            "recipes = [\"../recipes\"]",
            &format!(
                "recipes = [{:?}]",
                repo_root().join("recipes").display().to_string()
            ),
        )
        .replace("reemo-bundle = \"reemo-bundle-bin\"\n", "");
    assert!(
        def_text.contains(stack) && !def_text.contains("reemo-bundle-bin"),
        "{def_text}"
    );
    let def = dir.join("bundles/relayws.toml");
    std::fs::write(&def, def_text).unwrap();
    super::fetch_haproxy();
    build_def(&def, &dir.join("out"))
}
