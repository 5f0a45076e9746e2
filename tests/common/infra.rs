//! Helpers of the Infra appliance tests (`bundles/infra.toml`): variants of the shipped
//! definition with a vendor folder of their own, and the vendor's stand-in image recipes.

use std::path::{Path, PathBuf};

use super::{build_def, repo_root, shipped_def};

/// A variant of the shipped Infra definition in `dir`, as stack `stack` at `version`: its
/// vendor folder holds `vendor` (file name → recipe text), as a vendor delivery does.
/// Returns the bundle file.
pub fn build_variant(dir: &Path, stack: &str, version: &str, vendor: &[(&str, String)]) -> PathBuf {
    let vendor_dir = dir.join("vendor");
    std::fs::create_dir_all(&vendor_dir).unwrap();
    for (name, text) in vendor {
        std::fs::write(vendor_dir.join(name), text).unwrap();
    }
    let def = shipped_def(dir, "infra", "reemo", stack, |t| {
        t.replace(
            "recipes = [\"../vendor\", \"../recipes\"]",
            &format!(
                "recipes = [{:?}, {:?}]",
                vendor_dir.display().to_string(),
                repo_root().join("recipes").display().to_string()
            ),
        )
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""))
    });
    build_def(&def, &dir.join("out"))
}

/// A vendor's stand-in image for `role` at `version` (what `vendor/infra-ROLE.toml` holds),
/// with more environment `env` (TOML inline-table entries).
pub fn vendor_image(role: &str, version: &str, env: &str) -> (&'static str, String) {
    let name: &'static str = Box::leak(format!("infra-{role}.toml").into_boxed_str());
    (
        name,
        format!(
            "kind = \"image\"\nrepository = \"reemo/infra-{role}\"\nversion = \"{version}\"\nbase = \"standin-image\"\n\n[config]\nenv = {{ STANDIN_ROLE = \"{role}\", STANDIN_VERSION = \"{version}\"{env} }}\n"
        ),
    )
}
