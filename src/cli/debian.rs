//! Debian-side command handlers: `lock` (resolve against the archive, fetch into the store,
//! write `<recipe>.lock.json`), `fetch` (what a lock names and the store lacks) and `sbom`
//! (the SPDX documents of a bundle). Results on stdout, progress on stderr.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::debian::{self, lock::Lock, Access};
use crate::recipe::{LoadedBundleDef, Recipe, RecipeKind};
use crate::store::{default_store_dir, Store};

/// Arguments of `lock`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// An image recipe with a `[debian]` section, or an appliance definition (every such
    /// image its stack uses is locked).
    pub target: PathBuf,
    /// Archive to use for every suite: `http://…`, `file:///…` or a folder (a mirror on a
    /// USB disk). Default: the mirrors of apt's sources (/etc/apt/sources.list(.d)).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Only say whether each lock still matches its recipe (and what changed); writes
    /// nothing, needs no network. Exit code 1 when one does not.
    #[arg(long, conflicts_with = "update")]
    pub check: bool,
    /// Resolve again even when the lock matches its recipe (newer versions, security
    /// updates) and print what changed.
    #[arg(long)]
    pub update: bool,
    /// Content-addressed store the `.deb`s are kept in (default as for `build`).
    #[arg(long, env = "REEMO_BUNDLE_STORE")]
    pub store: Option<PathBuf>,
    /// apt's configuration folder, where the default mirrors are read.
    #[arg(long, default_value = "/etc/apt", hide = true)]
    pub apt_dir: PathBuf,
}

/// Arguments of `fetch`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// An image recipe with a `[debian]` section, or an appliance definition.
    pub target: PathBuf,
    /// Archive to download from (as for `lock`).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Content-addressed store (default as for `build`).
    #[arg(long, env = "REEMO_BUNDLE_STORE")]
    pub store: Option<PathBuf>,
    /// apt's configuration folder, where the default mirrors are read.
    #[arg(long, default_value = "/etc/apt", hide = true)]
    pub apt_dir: PathBuf,
}

/// Arguments of `sbom`.
#[derive(Debug, clap::Args)]
pub struct SbomArgs {
    /// Bundle file (verified first).
    pub file: PathBuf,
    /// Only this image (recipe name); default: all, as one JSON object by image name.
    #[arg(long)]
    pub image: Option<String>,
    /// Document format: `spdx` (SPDX 2.3 JSON, as stored in the bundle) or `cyclonedx`
    /// (CycloneDX 1.5 JSON, converted from it).
    #[arg(long, default_value = "spdx", value_parser = ["spdx", "cyclonedx"])]
    pub format: String,
}

/// The Debian image recipes `target` names (itself, or those of a definition's folders).
fn recipes_of(target: &Path) -> Result<Vec<Recipe>> {
    let text =
        std::fs::read_to_string(target).with_context(|| format!("reading {}", target.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", target.display(), e.message()))?;
    if table.contains_key("kind") {
        let r = Recipe::load(target)?;
        debian::spec_of(&r)?;
        return Ok(vec![r]);
    }
    // A definition: the images its stack template names (their own inputs are not Debian
    // images), found in its recipe folders like the build finds them.
    let def = LoadedBundleDef::load(target)?;
    let dirs = def.recipe_dirs();
    let find = |name: &str| -> Result<PathBuf> {
        dirs.iter()
            .map(|d| d.join(format!("{name}.toml")))
            .find(|p| p.is_file())
            .with_context(|| format!("{}: unknown recipe {name:?}", def.path.display()))
    };
    let stack = Recipe::load(&find(def.def.stack.get_ref())?)?;
    let RecipeKind::Stack(st) = &stack.kind else {
        bail!(
            "{}: recipe {:?} is not a stack recipe",
            def.path.display(),
            stack.name
        );
    };
    let tpl = stack.dir().join(st.template.get_ref());
    let text =
        std::fs::read_to_string(&tpl).with_context(|| format!("reading {}", tpl.display()))?;
    let mut names: Vec<String> = crate::builder::image_placeholders(&text)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    names.sort();
    names.dedup();
    // and the image recipes they take as their base, transitively
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(n) = names.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        let r = Recipe::load(&find(&n)?)?;
        if let RecipeKind::Image(i) = &r.kind {
            if let Some(b) = &i.base {
                names.push(b.get_ref().clone());
            }
            if i.debian.is_some() {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn open_store(s: Option<PathBuf>) -> Result<Store> {
    Store::open(&s.unwrap_or_else(default_store_dir))
}

/// `reemo-bundle lock`.
pub fn lock(args: LockArgs) -> Result<i32> {
    let recipes = recipes_of(&args.target)?;
    if recipes.is_empty() {
        println!(
            "no image recipe with a [debian] section in {}",
            args.target.display()
        );
        return Ok(0);
    }
    if args.check {
        let mut stale = 0;
        for r in &recipes {
            match debian::read_matching_lock(r, debian::spec_of(r)?) {
                Ok((p, l)) => println!("ok: {} ({} packages)", p.display(), l.packages.len()),
                Err(e) => {
                    stale += 1;
                    println!("stale: {e:#}");
                }
            }
        }
        return Ok(if stale == 0 { 0 } else { 1 });
    }
    let store = open_store(args.store)?;
    let progress = |m: &str| eprintln!("[lock] {m}");
    let access = Access {
        mirror: args.mirror.as_deref(),
        etc_apt: args.apt_dir.clone(),
        store: &store,
        progress: &progress,
    };
    for r in &recipes {
        let spec = debian::spec_of(r)?;
        let path = debian::lock::lock_path(&r.path);
        let old = path.is_file().then(|| Lock::read(&path)).transpose()?;
        if let Some(o) = &old {
            if !args.update && o.request_changes(&debian::request_of(spec)).is_empty() {
                let mirrors =
                    debian::mirrors_for(&spec.suites, args.mirror.as_deref(), &args.apt_dir)?;
                let f = debian::fetch(o, &mirrors, &access)?;
                println!(
                    "{}: up to date ({} packages; {} fetched now); use --update to resolve again",
                    path.display(),
                    o.packages.len(),
                    f.downloaded.len()
                );
                continue;
            }
        }
        let l = debian::make_lock(r, spec, &access)?;
        crate::fsutil::write_atomic(&path, &l.to_bytes())?;
        let size: u64 = l.packages.iter().map(|p| p.size).sum();
        println!(
            "{}: {} packages, {size} bytes of .deb",
            path.display(),
            l.packages.len()
        );
        if let Some(o) = &old {
            let d = debian::lock::diff(o, &l);
            if d.is_empty() {
                println!("  no package changed");
            }
            for line in d {
                println!("  {line}");
            }
        }
    }
    Ok(0)
}

/// `reemo-bundle fetch`.
pub fn fetch(args: FetchArgs) -> Result<i32> {
    let recipes = recipes_of(&args.target)?;
    if recipes.is_empty() {
        println!(
            "no image recipe with a [debian] section in {}",
            args.target.display()
        );
        return Ok(0);
    }
    let store = open_store(args.store)?;
    let progress = |m: &str| eprintln!("[fetch] {m}");
    let access = Access {
        mirror: args.mirror.as_deref(),
        etc_apt: args.apt_dir.clone(),
        store: &store,
        progress: &progress,
    };
    for r in &recipes {
        let spec = debian::spec_of(r)?;
        let (path, l) = debian::read_matching_lock(r, spec)?;
        let missing = l
            .packages
            .iter()
            .any(|p| !store.fixed_input(&p.sha256).is_file());
        let f = if missing {
            let mirrors = debian::mirrors_for(&spec.suites, args.mirror.as_deref(), &args.apt_dir)?;
            debian::fetch(&l, &mirrors, &access)?
        } else {
            debian::Fetched {
                present: l.packages.len(),
                ..Default::default()
            }
        };
        println!(
            "{}: {} fetched, {} already in the store",
            path.display(),
            f.downloaded.len(),
            f.present
        );
    }
    Ok(0)
}

/// `reemo-bundle sbom`.
pub fn sbom(args: SbomArgs) -> Result<i32> {
    let b = crate::bundle::reader::BundleFile::open(&args.file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let names: Vec<String> = b.manifest().images.iter().map(|i| i.name.clone()).collect();
    let read = |n: &str| -> Result<serde_json::Value> {
        let p = format!("sbom/{n}.spdx.json");
        if b.entry(&p).is_none() {
            bail!(
                "{}: no {p} (bundle built before SBOMs were written?)",
                args.file.display()
            );
        }
        let doc: serde_json::Value = serde_json::from_slice(&b.read_entry(&p)?)
            .with_context(|| format!("{}: parsing {p}", args.file.display()))?;
        Ok(if args.format == "cyclonedx" {
            crate::sbom::cyclonedx(&doc)
        } else {
            doc
        })
    };
    let out = match &args.image {
        Some(n) => {
            if !names.contains(n) {
                bail!(
                    "{}: no image {n:?} (images: {})",
                    args.file.display(),
                    names.join(", ")
                );
            }
            read(n)?
        }
        None => {
            let mut m = serde_json::Map::new();
            for n in &names {
                m.insert(n.clone(), read(n)?);
            }
            serde_json::Value::Object(m)
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
