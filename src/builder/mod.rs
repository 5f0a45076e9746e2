//! The build: resolve an appliance definition's recipes into a dependency graph, compute
//! every identity (normalized recipe + input identities + file hashes), then realise what the
//! store does not hold yet, in dependency order, and assemble the bundle file.

pub mod crates;
mod realise;

pub(crate) use realise::image_placeholders;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::bundle::manifest::BundleManifest;
use crate::hash::{identity, sha256_file};
use crate::recipe::{at, LoadedBundleDef, Recipe, RecipeKind, S};
use crate::store::Store;

/// Options of one build.
pub struct BuildOptions<'a> {
    /// The store.
    pub store: &'a Store,
    /// Where the bundle file is placed.
    pub out_dir: PathBuf,
    /// mtime of every file written (SOURCE_DATE_EPOCH, default 0).
    pub source_date_epoch: u64,
    /// Progress sink (stderr in the CLI).
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// Sign the bundle file with this key (`bundle.json.sig`). The store keeps the unsigned
    /// bundle; the signed copy is written to the output folder.
    pub sign_key: Option<&'a crate::sign::SecretKey>,
}

/// What a build did.
#[derive(Debug)]
pub struct BuildOutcome {
    /// Path of the bundle file in the output folder.
    pub bundle_path: PathBuf,
    /// Its manifest.
    pub manifest: BundleManifest,
    /// sha256 hex of the bundle file.
    pub sha256: String,
    /// Key id of the signature the bundle file carries, if it was signed.
    pub signed_by: Option<String>,
    /// Recipes that were built now (empty for a fully cached rebuild).
    pub built: Vec<String>,
    /// Recipes that came from the store.
    pub cached: Vec<String>,
}

/// Resolved graph: recipes by name with their identities.
pub(crate) struct Graph {
    pub(crate) recipes: BTreeMap<String, Recipe>,
    pub(crate) ids: BTreeMap<String, String>,
    /// Dependency order (dependencies first).
    pub(crate) order: Vec<String>,
    dirs: Vec<PathBuf>,
    source_date_epoch: u64,
    toolchain: Option<String>,
}

/// Where a recipe was referenced from, for error messages.
struct Origin<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Graph {
    fn new(dirs: Vec<PathBuf>, source_date_epoch: u64) -> Graph {
        Graph {
            recipes: BTreeMap::new(),
            ids: BTreeMap::new(),
            order: Vec::new(),
            dirs,
            source_date_epoch,
            toolchain: None,
        }
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(format!("{name}.toml")))
            .find(|p| p.is_file())
    }

    /// Identity of recipe `name`, loading and hashing it and its inputs on first use.
    fn resolve(
        &mut self,
        name: &S<String>,
        from: &Origin,
        stack: &mut Vec<String>,
    ) -> Result<String> {
        let n = name.get_ref().clone();
        if let Some(id) = self.ids.get(&n) {
            return Ok(id.clone());
        }
        if let Some(pos) = stack.iter().position(|s| *s == n) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(n.clone());
            return Err(at(
                from.path,
                from.text,
                name,
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
        if n.is_empty() || n.contains('/') || n.contains("..") {
            return Err(at(
                from.path,
                from.text,
                name,
                format!("invalid recipe name {n:?}"),
            ));
        }
        let Some(path) = self.find(&n) else {
            let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(at(
                from.path,
                from.text,
                name,
                format!(
                    "unknown recipe {n:?} (looked for {n}.toml in {})",
                    dirs.join(", ")
                ),
            ));
        };
        let recipe = Recipe::load(&path)?;
        stack.push(n.clone());
        let id = self.identity_of(&recipe, stack)?;
        stack.pop();
        self.ids.insert(n.clone(), id.clone());
        self.order.push(n.clone());
        self.recipes.insert(n, recipe);
        Ok(id)
    }

    fn toolchain(&mut self) -> Result<String> {
        if let Some(t) = &self.toolchain {
            return Ok(t.clone());
        }
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = std::process::Command::new(&rustc)
            .arg("-vV")
            .output()
            .with_context(|| {
                format!("running {rustc} -vV (a Rust toolchain is needed to build binary recipes)")
            })?;
        anyhow::ensure!(out.status.success(), "{rustc} -vV failed");
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        self.toolchain = Some(t.clone());
        Ok(t)
    }

    fn identity_of(&mut self, r: &Recipe, stack: &mut Vec<String>) -> Result<String> {
        let origin_text = r.text.clone();
        let origin = Origin {
            path: &r.path,
            text: &origin_text,
        };
        let mut inputs = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut extra = json!({});
        match &r.kind {
            RecipeKind::Binary(b) => {
                let ws = r.dir().join(b.workspace.get_ref());
                if !ws.join("Cargo.toml").is_file() {
                    return Err(r.err_at(
                        &b.workspace,
                        format!("no Cargo.toml in workspace folder {}", ws.display()),
                    ));
                }
                for s in &b.sources {
                    let p = ws.join(s.get_ref());
                    if !p.exists() {
                        return Err(r.err_at(s, format!("missing input file {}", p.display())));
                    }
                    hash_tree(&p, s.get_ref(), &mut files)?;
                }
                extra = json!({
                    "toolchain": self.toolchain()?,
                    "target": realise::TARGET,
                    "rustflags": realise::RUSTFLAGS_ID,
                });
            }
            RecipeKind::Fixed(f) => {
                // A fixed output is identified by its declared hash; the file is checked when
                // realised, so a no-op rebuild does not rehash large vendor archives.
                extra = json!({"sha256": f.sha256.get_ref(), "format": f.format});
            }
            RecipeKind::Image(img) => {
                if let Some(base) = &img.base {
                    inputs.insert(base.get_ref().clone(), self.resolve(base, &origin, stack)?);
                }
                for l in &img.layers {
                    for e in &l.entries {
                        if let Some(dep) = &e.recipe {
                            inputs
                                .insert(dep.get_ref().clone(), self.resolve(dep, &origin, stack)?);
                        }
                        if let Some(f) = &e.file {
                            let p = r.dir().join(f.get_ref());
                            if !p.is_file() {
                                return Err(
                                    r.err_at(f, format!("missing input file {}", p.display()))
                                );
                            }
                            files.insert(f.get_ref().clone(), sha256_file(&p)?);
                        }
                    }
                }
                if let Some(spec) = &img.debian {
                    // The lock is a build input: its bytes go into the identity, and each
                    // `.deb` it pins is a fixed input checked when the image is built.
                    let (lock_path, _) = crate::debian::read_matching_lock(r, spec)?;
                    files.insert("debian.lock.json".to_string(), sha256_file(&lock_path)?);
                }
                extra = json!({"source_date_epoch": self.source_date_epoch});
            }
            RecipeKind::Stack(st) => {
                let p = r.dir().join(st.template.get_ref());
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    r.err_at(
                        &st.template,
                        format!("missing input file {} ({e})", p.display()),
                    )
                })?;
                files.insert(
                    st.template.get_ref().clone(),
                    crate::hash::sha256_hex(text.as_bytes()),
                );
                for (offset, img) in realise::image_placeholders(&text) {
                    let spanned = S::new(offset..offset + img.len(), img.clone());
                    let tpl = Origin {
                        path: &p,
                        text: &text,
                    };
                    let id = self.resolve(&spanned, &tpl, stack)?;
                    inputs.insert(img, id);
                }
                for (key, src) in &st.configs {
                    let cp = r.dir().join(src.get_ref());
                    if !cp.is_file() {
                        return Err(r.err_at(src, format!("missing input file {}", cp.display())));
                    }
                    files.insert(format!("config:{key}"), sha256_file(&cp)?);
                }
            }
        }
        let kind = serde_json::to_value(&r.kind).context("normalising recipe")?;
        Ok(identity(&json!({
            "recipe": kind,
            "inputs": inputs,
            "files": files,
            "extra": extra,
        })))
    }
}

/// Hash a file or a folder tree into `out` (relative path → sha256); skips `target` and
/// hidden folders.
fn hash_tree(path: &Path, rel: &str, out: &mut BTreeMap<String, String>) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        out.insert(rel.to_string(), sha256_file(path)?);
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", path.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        hash_tree(&e.path(), &format!("{rel}/{name}"), out)?;
    }
    Ok(())
}

/// Resolve the definition's graph and compute every identity; nothing is built.
pub(crate) fn plan(def: &LoadedBundleDef, source_date_epoch: u64) -> Result<(Graph, String)> {
    let mut g = Graph::new(def.recipe_dirs(), source_date_epoch);
    let origin = Origin {
        path: &def.path,
        text: &def.text,
    };
    let mut inputs = BTreeMap::new();
    let mut stack = Vec::new();
    inputs.insert(
        def.def.stack.get_ref().clone(),
        g.resolve(&def.def.stack, &origin, &mut stack)?,
    );
    for b in def.def.binaries.values() {
        inputs.insert(b.get_ref().clone(), g.resolve(b, &origin, &mut stack)?);
    }
    expect_kind(def, &g, &def.def.stack, "stack")?;
    for b in def.def.binaries.values() {
        expect_kind(def, &g, b, "binary")?;
    }
    let bundle_id = identity(&json!({
        "bundle": serde_json::to_value(&def.def).context("normalising bundle definition")?,
        "inputs": inputs,
        "source_date_epoch": source_date_epoch,
        "format": crate::bundle::manifest::BUNDLE_FORMAT,
    }));
    Ok((g, bundle_id))
}

/// Build the bundle described by `def_path`.
pub fn build(def_path: &Path, opts: &BuildOptions) -> Result<BuildOutcome> {
    let def = LoadedBundleDef::load(def_path)?;
    let (graph, bundle_id) = plan(&def, opts.source_date_epoch)?;
    realise::realise(&def, &graph, &bundle_id, opts)
}

/// Check that a recipe the definition names has the kind its place needs.
fn expect_kind(def: &LoadedBundleDef, g: &Graph, name: &S<String>, kind: &str) -> Result<()> {
    let r = &g.recipes[name.get_ref()];
    if r.kind.name() != kind {
        return Err(at(
            &def.path,
            &def.text,
            name,
            format!(
                "recipe {:?} is {}, expected {kind}",
                name.get_ref(),
                r.kind.described()
            ),
        ));
    }
    Ok(())
}

/// Value helper used by the realiser for JSON metadata files.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))
}
