//! Realising recipes into store entries (cargo for binaries, hash checks for fixed inputs,
//! layers and OCI documents for images, rendering for stacks) and assembling the bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{read_json, BuildOptions, BuildOutcome, Graph};
use crate::bundle::manifest::{
    BlobRef, BundleManifest, FileEntry, ImageEntry, InputEntry, ServiceEntry, BUNDLE_FORMAT,
};
use crate::bundle::reader::BundleFile;
use crate::bundle::writer::{write_bundle, write_with_signature, BundleItem, Source};
use crate::fsutil::write_atomic;
use crate::hash::{sha256_file, sha256_hex};
use crate::oci::{self, Content, Descriptor, LayerFile, LayoutImage};
use crate::recipe::{
    BinaryRecipe, FixedFormat, FixedRecipe, ImageRecipe, LoadedBundleDef, Recipe, RecipeKind,
    StackRecipe,
};
use crate::store::Store;

/// Target triple of static binaries.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-gnu";
/// What goes into a binary's identity about its flags (paths are remapped, so not here).
pub(crate) const RUSTFLAGS_ID: &str =
    "-C target-feature=+crt-static; remap workspace=/build/src cargo_home=/cargo target=/build/target; strip=symbols";

/// `${image:NAME}` placeholders of a template outside YAML comments, with the byte offset
/// of each name.
pub(crate) fn image_placeholders(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let code = match line.find('#') {
            Some(c) if line[..c].trim().is_empty() || line[..c].ends_with(' ') => &line[..c],
            _ => line,
        };
        let mut pos = 0;
        while let Some(p) = code[pos..].find("${image:") {
            let start = pos + p + 8;
            match code[start..].find('}') {
                Some(end) => {
                    out.push((line_start + start, code[start..start + end].to_string()));
                    pos = start + end + 1;
                }
                None => break,
            }
        }
        line_start += line.len();
    }
    out
}

/// Replace placeholders with references.
fn render_template(text: &str, refs: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, reference) in refs {
        out = out.replace(&format!("${{image:{name}}}"), reference);
    }
    out
}

/// Realise everything the bundle needs and write the bundle file.
pub(crate) fn realise(
    def: &LoadedBundleDef,
    g: &Graph,
    bundle_id: &str,
    opts: &BuildOptions,
) -> Result<BuildOutcome> {
    let store = opts.store;
    let mut built = Vec::new();
    let mut cached = Vec::new();
    for name in &g.order {
        let id = &g.ids[name];
        let r = &g.recipes[name];
        if usable(store, id, name, opts)? {
            cached.push(name.clone());
            if let RecipeKind::Fixed(f) = &r.kind {
                check_fixed_input(r, f, &store.object(id), opts);
            }
            continue;
        }
        let _lock = store.lock(id)?;
        if usable(store, id, name, opts)? {
            cached.push(name.clone());
            continue;
        }
        (opts.progress)(&format!(
            "building {} ({} {})",
            name,
            r.kind.name(),
            &id[..12]
        ));
        let tmp = store.temp_dir()?;
        match &r.kind {
            RecipeKind::Binary(b) => build_binary(r, b, store, tmp.path(), opts)?,
            RecipeKind::Fixed(f) => realise_fixed(r, f, tmp.path())?,
            RecipeKind::Image(img) => build_image(r, img, g, store, tmp.path(), opts)?,
            RecipeKind::Stack(st) => render_stack(r, st, g, store, tmp.path())?,
        }
        store
            .publish(id, tmp)
            .with_context(|| format!("storing the output of recipe {name}"))?;
        built.push(name.clone());
    }
    // The bundle itself is a store entry too.
    let obj = store.object(bundle_id);
    let bundle_name = format!("bundle:{}", def.def.name);
    if !usable(store, bundle_id, &bundle_name, opts)? {
        let _lock = store.lock(bundle_id)?;
        if !usable(store, bundle_id, &bundle_name, opts)? {
            (opts.progress)(&format!(
                "packing bundle {} {}",
                def.def.name,
                &bundle_id[..12]
            ));
            let tmp = store.temp_dir()?;
            pack_bundle(def, g, bundle_id, store, tmp.path(), opts.source_date_epoch)?;
            store.publish(bundle_id, tmp)?;
            built.push(format!("bundle:{}", def.def.name));
        }
    }
    let manifest: BundleManifest = serde_json::from_value(read_json(&obj.join("bundle.json"))?)
        .context("reading stored bundle.json")?;
    let file_name = manifest.file_name();
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating output folder {}", opts.out_dir.display()))?;
    let dest = opts.out_dir.join(&file_name);
    let (sha256, signed_by) = match opts.sign_key {
        None => {
            place(&obj.join("bundle"), &dest)?;
            let sha256 = std::fs::read_to_string(obj.join("bundle.sha256"))
                .context("reading the stored bundle hash")?;
            (sha256.trim().to_string(), None)
        }
        Some(key) => {
            // Signed from the bytes of the stored bundle after verifying it again: a
            // signature must never vouch for anything that does not verify.
            let stored_path = obj.join("bundle");
            let stored = BundleFile::open(&stored_path)
                .map_err(|e| anyhow::anyhow!("stored bundle {}: {e}", stored_path.display()))?;
            let sig = key.sign_manifest(stored.manifest_bytes());
            let sha256 = write_with_signature(&stored, &dest, Some(&sig))
                .with_context(|| format!("writing the signed bundle {}", dest.display()))?;
            (opts.progress)(&format!("signed with key id {}", key.key_id()));
            (sha256, Some(key.key_id()))
        }
    };
    Ok(BuildOutcome {
        bundle_path: dest,
        sha256,
        signed_by,
        manifest,
        built,
        cached,
    })
}

/// Whether the store entry `id` (of recipe `name`) can be used as it is: published and still
/// holding what was recorded when it was (sizes and mtimes). A changed entry is reported,
/// taken out of the store and rebuilt: a cache hit never vouches for bytes it did not check.
fn usable(store: &Store, id: &str, name: &str, opts: &BuildOptions) -> Result<bool> {
    if !store.has(id) {
        return Ok(false);
    }
    match store.check(id)? {
        None => Ok(true),
        Some(why) => {
            (opts.progress)(&format!(
                "warning: store entry {} of {name} changed after it was stored ({why}); rebuilding it",
                &id[..12]
            ));
            store.evict(id)?;
            Ok(false)
        }
    }
}

/// Size and mtime of a fixed input when its store entry was made (`input.json`), so that a
/// no-op build rehashes the input only when it looks changed.
fn input_stat(p: &Path) -> Option<(u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(p).ok()?;
    Some((
        md.len(),
        md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
    ))
}

/// A fixed input whose store copy (in `obj`) is used: say so if its file is gone or differs
/// (the store copy, checked against the recipe's sha256 when it was stored, is still good).
/// The file is hashed only when its size or mtime differ from those recorded.
fn check_fixed_input(r: &Recipe, f: &FixedRecipe, obj: &Path, opts: &BuildOptions) {
    let p = crate::fsutil::normalize(&r.dir().join(f.path.get_ref()));
    let warn = |what: String| {
        (opts.progress)(&format!(
            "warning: recipe {}: {what}; using the store copy (sha256 {})",
            r.name,
            f.sha256.get_ref()
        ))
    };
    if !p.is_file() {
        warn(format!("fixed input {} is missing", p.display()));
        return;
    }
    let recorded: Option<(u64, i128)> = std::fs::read(obj.join("input.json"))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok());
    if recorded.is_some() && recorded == input_stat(&p) {
        return;
    }
    match sha256_file(&p) {
        Ok(found) if &found == f.sha256.get_ref() => {}
        Ok(found) => warn(format!(
            "fixed input {} has changed (sha256 {found}, the recipe says {})",
            p.display(),
            f.sha256.get_ref()
        )),
        Err(e) => warn(format!("fixed input {}: {e:#}", p.display())),
    }
}

/// Put an independent copy of the stored bundle at `dest` (a reflink where the file system
/// can, else a copy): editing the output never touches the store.
fn place(src: &Path, dest: &Path) -> Result<()> {
    crate::fsutil::copy_atomic(src, dest, 0o644)
        .with_context(|| format!("writing the bundle {}", dest.display()))
}

/// The environment cargo gets for a static binary: static C runtime, paths remapped so that
/// the bytes do not depend on where the workspace, cargo's home or the target folder are,
/// symbols stripped, the build's `SOURCE_DATE_EPOCH` (C build scripts fingerprint it), UTC
/// and the C locale. `scripts/lib.sh` (`static_cargo_env`) prints the same, so that the
/// README's main command builds the host tool once, as the bundle's static binary.
pub(crate) fn static_build_env(
    ws: &Path,
    cargo_home: &Path,
    target: &Path,
    source_date_epoch: u64,
) -> Vec<(String, String)> {
    let flags = [
        "-Ctarget-feature=+crt-static".to_string(),
        format!("--remap-path-prefix={}=/build/src", ws.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/build/target", target.display()),
    ]
    .join("\x1f");
    [
        ("CARGO_TARGET_DIR", target.display().to_string()),
        ("CARGO_ENCODED_RUSTFLAGS", flags),
        ("CARGO_PROFILE_RELEASE_STRIP", "symbols".into()),
        ("CARGO_PROFILE_RELEASE_DEBUG", "false".into()),
        ("CARGO_PROFILE_RELEASE_INCREMENTAL", "false".into()),
        ("SOURCE_DATE_EPOCH", source_date_epoch.to_string()),
        ("TZ", "UTC".into()),
        ("LC_ALL", "C".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn build_binary(
    r: &Recipe,
    b: &BinaryRecipe,
    store: &Store,
    out: &Path,
    opts: &BuildOptions,
) -> Result<()> {
    let ws = r
        .dir()
        .join(b.workspace.get_ref())
        .canonicalize()
        .with_context(|| format!("{}: resolving workspace", r.path.display()))?;
    let target = store.cargo_target();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    (opts.progress)(&format!(
        "  cargo build --release -p {} --bin {} (static)",
        b.package, b.bin
    ));
    let status = std::process::Command::new(&cargo)
        .current_dir(&ws)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "-p",
            &b.package,
            "--bin",
            &b.bin,
        ])
        .envs(static_build_env(
            &ws,
            &cargo_home,
            &target,
            opts.source_date_epoch,
        ))
        .env_remove("RUSTFLAGS")
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .with_context(|| format!("{}: running {cargo}", r.path.display()))?;
    if !status.success() {
        bail!(
            "{}: cargo build of {} failed ({status})",
            r.path.display(),
            b.package
        );
    }
    let exe = target.join(TARGET).join("release").join(&b.bin);
    std::fs::create_dir_all(out.join("bin"))?;
    std::fs::copy(&exe, out.join("bin").join(&b.bin))
        .with_context(|| format!("copying {}", exe.display()))?;
    // What is linked into it, for the SBOM of the images that carry it.
    let metadata = super::crates::metadata(&ws, TARGET)?;
    let lock_text = std::fs::read_to_string(ws.join("Cargo.lock"))
        .with_context(|| format!("reading {}", ws.join("Cargo.lock").display()))?;
    let crates = super::crates::linked(&metadata, &lock_text, &b.package)
        .with_context(|| format!("{}: listing the crates of {}", r.path.display(), b.package))?;
    std::fs::write(out.join(CRATES_FILE), serde_json::to_vec_pretty(&crates)?)?;
    Ok(())
}

/// The crates linked into a binary, in its store entry.
const CRATES_FILE: &str = "crates.json";

fn realise_fixed(r: &Recipe, f: &FixedRecipe, out: &Path) -> Result<()> {
    let p = crate::fsutil::normalize(&r.dir().join(f.path.get_ref()));
    if !p.is_file() {
        return Err(r.err_at(
            &f.path,
            format!(
                "missing fixed-output input {} (sha256 {})",
                p.display(),
                f.sha256.get_ref()
            ),
        ));
    }
    let found = sha256_file(&p)?;
    if &found != f.sha256.get_ref() {
        return Err(r.err_at(
            &f.sha256,
            format!(
                "fixed-output input {} has sha256 {found}, expected {}",
                p.display(),
                f.sha256.get_ref()
            ),
        ));
    }
    std::fs::copy(&p, out.join("file")).with_context(|| format!("copying {}", p.display()))?;
    if let Some(stat) = input_stat(&p) {
        std::fs::write(out.join("input.json"), serde_json::to_vec(&stat)?)?;
    }
    Ok(())
}

/// Recorded output of an image recipe (`image.json` in its store entry).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ImageMeta {
    repository: String,
    tag: String,
    manifest: BlobRef,
    config: BlobRef,
    layers: Vec<BlobRef>,
}

fn blobref(d: &Descriptor) -> BlobRef {
    BlobRef {
        digest: d.digest.clone(),
        size: d.size,
        media_type: d.media_type.clone(),
        ..Default::default()
    }
}

fn descriptor(b: &BlobRef) -> Descriptor {
    Descriptor {
        digest: b.digest.clone(),
        size: b.size,
        media_type: b.media_type.clone(),
    }
}

/// A base image read from a `docker save` archive.
struct Base {
    config: Value,
    /// The config's bytes as the archive holds them (their sha256 is the image ID).
    config_bytes: Vec<u8>,
    layers: Vec<(Descriptor, Vec<u8>)>,
}

fn read_docker_archive(path: &Path, origin: &str) -> Result<Base> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let f = std::fs::File::open(path)
        .with_context(|| format!("{origin}: opening {}", path.display()))?;
    let mut ar = tar::Archive::new(f);
    for e in ar
        .entries()
        .with_context(|| format!("{origin}: reading {}", path.display()))?
    {
        let mut e = e.with_context(|| format!("{origin}: reading {}", path.display()))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path()?.display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data)?;
        files.insert(name, data);
    }
    let manifest: Value =
        serde_json::from_slice(files.get("manifest.json").with_context(|| {
            format!(
                "{origin}: {} has no manifest.json (not a docker save archive)",
                path.display()
            )
        })?)
        .with_context(|| format!("{origin}: parsing manifest.json"))?;
    let m = manifest
        .get(0)
        .with_context(|| format!("{origin}: manifest.json lists no image"))?;
    let cfg_name = m["Config"].as_str().context("manifest.json: no Config")?;
    let config_bytes = files
        .get(cfg_name)
        .with_context(|| format!("{origin}: missing {cfg_name} in archive"))?
        .clone();
    let config: Value = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("{origin}: parsing {cfg_name}"))?;
    let mut layers = Vec::new();
    for l in m["Layers"].as_array().context("manifest.json: no Layers")? {
        let name = l.as_str().context("manifest.json: bad layer name")?;
        let data = files
            .remove(name)
            .with_context(|| format!("{origin}: missing layer {name} in archive"))?;
        let mt = if data.starts_with(&[0x1f, 0x8b]) {
            oci::MT_LAYER_GZIP
        } else {
            oci::MT_LAYER_TAR
        };
        layers.push((Descriptor::of(&data, mt), data));
    }
    Ok(Base {
        config,
        config_bytes,
        layers,
    })
}

/// A base image that is another image recipe's output (its store entry `obj`: `image.json`
/// and `blobs/sha256/`): the same config and layer blobs, so an image made from it shares
/// them in the bundle.
fn read_built_image(obj: &Path, origin: &str) -> Result<Base> {
    let meta_path = obj.join("image.json");
    let meta: ImageMeta = serde_json::from_slice(
        &std::fs::read(&meta_path)
            .with_context(|| format!("{origin}: reading {}", meta_path.display()))?,
    )
    .with_context(|| format!("{origin}: parsing {}", meta_path.display()))?;
    let blob = |digest: &str| -> Result<Vec<u8>> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let p = obj.join("blobs").join("sha256").join(hex);
        std::fs::read(&p).with_context(|| format!("{origin}: reading base blob {}", p.display()))
    };
    let config_bytes = blob(&meta.config.digest)?;
    let config: Value = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("{origin}: parsing the base image's config"))?;
    let mut layers = Vec::new();
    for l in &meta.layers {
        let data = blob(&l.digest)?;
        let d = Descriptor {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
        };
        layers.push((d, data));
    }
    Ok(Base {
        config,
        config_bytes,
        layers,
    })
}

/// Whether an image recipe takes its base as it is: a base and nothing added (no layer,
/// `[debian]`, `[config]` or `[annotations]`). Such an image keeps the vendor's config bytes,
/// so its image ID (the config digest) is the one the vendor's `docker save` archive has.
pub(crate) fn takes_base_as_is(img: &ImageRecipe) -> bool {
    let c = &img.config;
    img.base.is_some()
        && img.layers.is_empty()
        && img.debian.is_none()
        && img.annotations.is_empty()
        && c.entrypoint.is_none()
        && c.cmd.is_none()
        && c.env.is_empty()
        && c.user.is_none()
        && c.workdir.is_none()
        && c.exposed_ports.is_empty()
        && c.labels.is_empty()
        && c.healthcheck.is_none()
        && c.stop_signal.is_none()
}

fn healthcheck_json(h: &crate::recipe::HealthcheckSpec) -> Result<Value> {
    let mut v = json!({"Test": h.test});
    for (field, key, d) in [
        ("interval", "Interval", &h.interval),
        ("timeout", "Timeout", &h.timeout),
        ("start_period", "StartPeriod", &h.start_period),
    ] {
        if let Some(d) = d {
            let ns = crate::stack::parse_duration(d.get_ref())
                .with_context(|| format!("config.healthcheck.{field}"))?;
            v[key] = json!(ns);
        }
    }
    if let Some(x) = h.retries {
        v["Retries"] = json!(x);
    }
    Ok(v)
}

fn build_image(
    r: &Recipe,
    img: &ImageRecipe,
    g: &Graph,
    store: &Store,
    out: &Path,
    opts: &BuildOptions,
) -> Result<()> {
    let mtime = opts.source_date_epoch;
    let created = oci::rfc3339(mtime);
    let mut fields = oci::ConfigFields::default();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    let mut blobs: Vec<(Descriptor, Arc<Vec<u8>>)> = Vec::new();
    let mut layer_descs = Vec::new();
    // a vendor's image shipped unchanged: its own config, hence its own image ID
    let mut vendor_config = None;

    if let Some(base_name) = &img.base {
        let base_recipe = &g.recipes[base_name.get_ref()];
        let obj = store.object(&g.ids[base_name.get_ref()]);
        let base = match &base_recipe.kind {
            RecipeKind::Fixed(FixedRecipe {
                format: FixedFormat::DockerArchive,
                ..
            }) => read_docker_archive(&obj.join("file"), &r.path.display().to_string())?,
            RecipeKind::Image(_) => read_built_image(&obj, &r.path.display().to_string())?,
            _ => {
                return Err(r.err_at(
                    base_name,
                    format!(
                        "base {:?} must be an image recipe or a fixed recipe with format = \"docker-archive\"",
                        base_name.get_ref()
                    ),
                ))
            }
        };
        if takes_base_as_is(img) {
            vendor_config = Some(base.config_bytes.clone());
        }
        let c = &base.config["config"];
        fields.user = c["User"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        fields.env = c["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
        };
        fields.entrypoint = strings(&c["Entrypoint"]);
        fields.cmd = strings(&c["Cmd"]);
        fields.workdir = c["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        if let Some(p) = c["ExposedPorts"].as_object() {
            fields.exposed_ports = p.keys().cloned().collect();
        }
        if let Some(l) = c["Labels"].as_object() {
            for (k, v) in l {
                if let Some(v) = v.as_str() {
                    fields.labels.insert(k.clone(), v.to_string());
                }
            }
        }
        if !c["Healthcheck"].is_null() {
            fields.healthcheck = Some(c["Healthcheck"].clone());
        }
        fields.stop_signal = c["StopSignal"].as_str().map(String::from);
        if let Some(d) = base.config["rootfs"]["diff_ids"].as_array() {
            diff_ids.extend(d.iter().filter_map(|v| v.as_str().map(String::from)));
        }
        if let Some(h) = base.config["history"].as_array() {
            history.extend(h.iter().cloned());
        }
        anyhow::ensure!(
            diff_ids.len() == base.layers.len(),
            "{}: base image has {} diff_ids for {} layers",
            r.path.display(),
            diff_ids.len(),
            base.layers.len()
        );
        for (d, data) in base.layers {
            layer_descs.push(d.clone());
            blobs.push((d, Arc::new(data)));
        }
    }

    // Collect each layer's files, then build and compress the layers in parallel. A
    // `[debian]` root filesystem comes first, read offline from the store.
    let mut specs = Vec::new();
    let mut lock = None;
    if let Some(spec) = &img.debian {
        let (_, l) = crate::debian::read_matching_lock(r, spec)?;
        specs.extend(crate::debian::layers_from_store(r, spec, &l, store)?);
        lock = Some(l);
    }
    for layer in &img.layers {
        let mut files = Vec::new();
        for e in &layer.entries {
            let path = crate::recipe::normalize_dest(e.dest.get_ref())
                .map_err(|m| r.err_at(&e.dest, m))?;
            let (content, default_mode) = if e.dir {
                (Content::Dir, 0o755)
            } else if let Some(t) = &e.text {
                (Content::Bytes(Arc::new(t.clone().into_bytes())), 0o644)
            } else if let Some(f) = &e.file {
                let p = r.dir().join(f.get_ref());
                let data = std::fs::read(&p).map_err(|err| {
                    r.err_at(f, format!("missing input file {} ({err})", p.display()))
                })?;
                (Content::Bytes(Arc::new(data)), 0o644)
            } else if let Some(dep) = &e.recipe {
                let obj = store.object(&g.ids[dep.get_ref()]);
                let (p, mode) = match &g.recipes[dep.get_ref()].kind {
                    RecipeKind::Binary(b) => (obj.join("bin").join(&b.bin), 0o755),
                    RecipeKind::Fixed(_) => (obj.join("file"), 0o644),
                    other => {
                        return Err(r.err_at(
                            dep,
                            format!(
                                "a layer entry can use a binary or fixed recipe, not {}",
                                other.described()
                            ),
                        ))
                    }
                };
                let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                (Content::Bytes(Arc::new(data)), mode)
            } else {
                unreachable!("checked when the recipe was loaded")
            };
            files.push(LayerFile {
                path,
                content,
                mode: e.mode.unwrap_or(default_mode),
                uid: e.uid,
                gid: e.gid,
            });
        }
        specs.push(files);
    }
    if let Some(spec) = &img.debian {
        crate::debian::check_closure(&specs, spec, |_| None).with_context(|| {
            format!(
                "{}: checking the image's shared libraries",
                r.path.display()
            )
        })?;
    }
    let results: Vec<Result<BuiltLayer>> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .map(|files| s.spawn(move || make_layer(files, mtime, store)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("layer thread panicked")))
            })
            .collect()
    });
    for (i, res) in results.into_iter().enumerate() {
        let BuiltLayer {
            diff_id,
            desc,
            data,
        } = res.with_context(|| format!("{}: layer {}", r.path.display(), i + 1))?;
        diff_ids.push(diff_id);
        history.push(json!({"created": created, "created_by": format!("reemo-bundle {} layer {}", r.name, i + 1)}));
        layer_descs.push(desc.clone());
        blobs.push((desc, data));
    }

    // Configuration: the recipe overrides the base.
    let c = &img.config;
    if c.entrypoint.is_some() {
        fields.entrypoint = c.entrypoint.clone();
        if c.cmd.is_none() {
            fields.cmd = None;
        }
    }
    if c.cmd.is_some() {
        fields.cmd = c.cmd.clone();
    }
    for (k, v) in &c.env {
        fields
            .env
            .retain(|e| e.split('=').next() != Some(k.as_str()));
        fields.env.push(format!("{k}={v}"));
    }
    if c.user.is_some() {
        fields.user = c.user.clone();
    }
    if c.workdir.is_some() {
        fields.workdir = c.workdir.clone();
    }
    fields.exposed_ports.extend(c.exposed_ports.iter().cloned());
    fields.labels.extend(c.labels.clone());
    if let Some(h) = &c.healthcheck {
        fields.healthcheck = Some(healthcheck_json(h)?);
    }
    if c.stop_signal.is_some() {
        fields.stop_signal = c.stop_signal.clone();
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "org.opencontainers.image.version".to_string(),
        img.version.clone(),
    );
    for (k, v) in &img.annotations {
        let key = if k.contains('.') {
            k.clone()
        } else {
            format!("org.opencontainers.image.{k}")
        };
        annotations.insert(key, v.clone());
    }
    for (k, v) in &annotations {
        fields.labels.insert(k.clone(), v.clone());
    }
    let config_bytes = match vendor_config {
        Some(bytes) => bytes,
        None => oci::config_json(&fields, &diff_ids, &history, &created),
    };
    let config = Descriptor::of(&config_bytes, oci::MT_CONFIG);
    let manifest_bytes = oci::manifest_json(&config, &layer_descs, &annotations);
    let manifest = Descriptor::of(&manifest_bytes, oci::MT_MANIFEST);
    let tag = format!("{}-{}", img.version, &config.hex()[..12]);

    let blob_dir = out.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir)?;
    std::fs::write(blob_dir.join(config.hex()), &config_bytes)?;
    std::fs::write(blob_dir.join(manifest.hex()), &manifest_bytes)?;
    for (d, data) in &blobs {
        let p = blob_dir.join(d.hex());
        let cached = store.layer_cache(d.hex());
        if std::fs::hard_link(&cached, &p).is_err() {
            std::fs::write(&p, data.as_slice())?;
        }
    }
    let meta = ImageMeta {
        repository: img.repository.clone(),
        tag,
        manifest: blobref(&manifest),
        config: blobref(&config),
        layers: layer_descs.iter().map(blobref).collect(),
    };
    std::fs::write(out.join("image.json"), serde_json::to_vec_pretty(&meta)?)?;
    let mut binaries = Vec::new();
    for e in img.layers.iter().flat_map(|l| &l.entries) {
        let Some(dep) = &e.recipe else { continue };
        if let RecipeKind::Binary(b) = &g.recipes[dep.get_ref()].kind {
            let obj = store.object(&g.ids[dep.get_ref()]);
            binaries.push(binary_sbom(&obj, b, e.dest.get_ref())?);
        }
    }
    let sbom = crate::sbom::document(
        &crate::sbom::Image {
            name: &r.name,
            repository: &img.repository,
            version: &img.version,
            identity: &g.ids[&r.name],
            created: &created,
        },
        lock.as_ref(),
        &binaries,
    );
    std::fs::write(out.join(SBOM_FILE), crate::sbom::to_bytes(&sbom))?;
    Ok(())
}

/// A built executable (store entry `obj` of binary recipe `b`) as it appears at `path` in an
/// SBOM, with the crates recorded when it was built.
fn binary_sbom(obj: &Path, b: &BinaryRecipe, path: &str) -> Result<crate::sbom::Binary> {
    let list = obj.join(CRATES_FILE);
    let crates = match std::fs::read(&list) {
        Ok(data) => {
            serde_json::from_slice(&data).with_context(|| format!("reading {}", list.display()))?
        }
        Err(_) => Vec::new(),
    };
    Ok(crate::sbom::Binary {
        path: path.to_string(),
        package: b.package.clone(),
        sha256: sha256_file(&obj.join("bin").join(&b.bin))?,
        crates,
    })
}

/// The SPDX document of an image, in its store entry and as `sbom/<name>.spdx.json` in
/// the bundle.
const SBOM_FILE: &str = "sbom.spdx.json";

/// A layer ready for the image: uncompressed digest, blob descriptor and blob bytes.
struct BuiltLayer {
    diff_id: String,
    desc: Descriptor,
    data: Arc<Vec<u8>>,
}

/// Build one layer, reusing the compressed blob from the store's layer cache when the
/// uncompressed content was seen before.
fn make_layer(files: &[LayerFile], mtime: u64, store: &Store) -> Result<BuiltLayer> {
    let tar = oci::layer_tar(files, mtime)?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let index = store.layer_cache(&format!("diff-{}", &diff_id[7..]));
    if let Ok(gz_hex) = std::fs::read_to_string(&index) {
        let p = store.layer_cache(gz_hex.trim());
        if let Ok(data) = std::fs::read(&p) {
            let d = Descriptor::of(&data, oci::MT_LAYER_GZIP);
            if d.hex() == gz_hex.trim() {
                return Ok(BuiltLayer {
                    diff_id,
                    desc: d,
                    data: Arc::new(data),
                });
            }
        }
    }
    let gz = oci::gzip(&tar);
    let d = Descriptor::of(&gz, oci::MT_LAYER_GZIP);
    write_atomic(&store.layer_cache(d.hex()), &gz)?;
    write_atomic(&index, d.hex().as_bytes())?;
    Ok(BuiltLayer {
        diff_id,
        desc: d,
        data: Arc::new(gz),
    })
}

fn image_meta(store: &Store, g: &Graph, name: &str) -> Result<ImageMeta> {
    let p = store.object(&g.ids[name]).join("image.json");
    serde_json::from_value(read_json(&p)?).with_context(|| format!("reading {}", p.display()))
}

fn render_stack(r: &Recipe, st: &StackRecipe, g: &Graph, store: &Store, out: &Path) -> Result<()> {
    let tpl_path = r.dir().join(st.template.get_ref());
    let text = std::fs::read_to_string(&tpl_path).map_err(|e| {
        r.err_at(
            &st.template,
            format!("missing input file {} ({e})", tpl_path.display()),
        )
    })?;
    let mut refs = BTreeMap::new();
    for (offset, name) in image_placeholders(&text) {
        if !matches!(g.recipes[&name].kind, RecipeKind::Image(_)) {
            bail!(
                "{}:{}: ${{image:{name}}} names {}, not an image",
                tpl_path.display(),
                crate::recipe::line_of(&text, offset),
                g.recipes[&name].kind.described()
            );
        }
        let m = image_meta(store, g, &name)?;
        refs.insert(name, format!("{}:{}", m.repository, m.tag));
    }
    let rendered = render_template(&text, &refs);
    let origin = tpl_path.display().to_string();
    let params = st.parameters(r)?;
    check_parameter_use(&rendered, &params, &origin)?;
    parse_with_samples(&rendered, &params, &origin)?;
    std::fs::create_dir_all(out.join("stack"))?;
    std::fs::write(out.join("stack").join("docker-stack.yml"), &rendered)?;
    std::fs::create_dir_all(out.join("configs"))?;
    for (key, src) in &st.configs {
        if key.contains('/') || key.starts_with('.') {
            return Err(r.err_at(
                src,
                format!("config name {key:?} must be a plain file name"),
            ));
        }
        let p = r.dir().join(src.get_ref());
        let data = std::fs::read(&p)
            .map_err(|e| r.err_at(src, format!("missing input file {} ({e})", p.display())))?;
        // A bundle travels on USB sticks and is readable by anyone who holds it: private keys
        // are made on the host (x-reemo-certificates) unless the recipe says otherwise.
        if contains_private_key(&data) && !st.allow_private_keys.iter().any(|k| k == key) {
            return Err(r.err_at(
                src,
                format!(
                    "config {key} ({}) holds a private key; keys are made on the host (x-reemo-certificates), or list {key:?} in allow_private_keys to ship it anyway",
                    p.display()
                ),
            ));
        }
        std::fs::write(out.join("configs").join(key), &data)
            .with_context(|| format!("copying {}", p.display()))?;
    }
    std::fs::write(
        out.join("stack.json"),
        serde_json::to_vec_pretty(&json!({"images": refs, "parameters": params}))?,
    )?;
    Ok(())
}

/// Whether `data` holds a PEM private key (of any kind).
pub(crate) fn contains_private_key(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains("PRIVATE KEY-----"))
}

/// Parse a stack that may use parameters, with each at its default (a sample of its type when
/// it is required): the stack must be valid for any site. Parse errors keep their line when
/// the text parses without interpolation too.
pub(crate) fn parse_with_samples(
    text: &str,
    params: &[crate::site::Parameter],
    origin: &str,
) -> Result<crate::stack::ComposeFile> {
    if params.is_empty() {
        return crate::stack::parse(text, origin);
    }
    let sampled = crate::site::interpolate_yaml(text, &crate::site::sample_values(params))
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    crate::stack::parse(&sampled, origin).map_err(|e| match crate::stack::parse(text, origin) {
        Err(raw) => raw,
        Ok(_) => e.context("with every parameter at its default or a sample value"),
    })
}

/// Every `${NAME}` of the stack is a declared parameter, every declared parameter is used, and
/// the stack is valid with the defaults (samples for required ones). Errors carry the line.
fn check_parameter_use(text: &str, params: &[crate::site::Parameter], origin: &str) -> Result<()> {
    let refs = crate::site::yaml_references(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let line_of = |name: &str| {
        let needle = format!("${{{name}}}");
        text.lines()
            .position(|l| l.contains(&needle) && !l.trim_start().starts_with('#'))
            .map(|i| format!("{origin}:{}", i + 1))
            .unwrap_or_else(|| origin.to_string())
    };
    for (path, name) in &refs {
        if !params.iter().any(|p| &p.name == name) {
            bail!(
                "{}: {path}: ${{{name}}} is not a declared parameter (declare it under [parameters.{name}] in the stack recipe)",
                line_of(name)
            );
        }
    }
    if let Some(p) = params
        .iter()
        .find(|p| !refs.iter().any(|(_, n)| *n == p.name))
    {
        bail!(
            "{origin}: parameter {} is declared but the stack never uses ${{{}}}",
            p.name,
            p.name
        );
    }
    Ok(())
}

/// Record in each layer of `m` what it expands to (format 2), checked against the image
/// config's diff-ids, so that `verify` and the loader can bound and check the expansion.
fn declare_expansions(m: &mut ImageMeta, obj: &Path) -> Result<()> {
    use crate::bundle::layers::{check_blob, Compression, Expected};
    let config = read_json(
        &obj.join("blobs/sha256")
            .join(m.config.digest.trim_start_matches("sha256:")),
    )?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("image config without rootfs.diff_ids")?;
    anyhow::ensure!(
        diff_ids.len() == m.layers.len(),
        "image config lists {} layers, the image {}",
        diff_ids.len(),
        m.layers.len()
    );
    for (l, d) in m.layers.iter_mut().zip(diff_ids) {
        let blob = obj
            .join("blobs/sha256")
            .join(l.digest.trim_start_matches("sha256:"));
        let f =
            std::fs::File::open(&blob).with_context(|| format!("opening {}", blob.display()))?;
        let expected = Expected {
            what: l.digest.clone(),
            diff_id: d
                .as_str()
                .context("image config: diff-id is not a string")?
                .to_string(),
            size: None,
            compression: Compression::of_media_type(&l.media_type).map_err(anyhow::Error::msg)?,
        };
        let found = check_blob(std::io::BufReader::new(f), &expected)
            .map_err(|e| anyhow::anyhow!("layer {} in {}: {e}", l.digest, blob.display()))?;
        l.diff_id = Some(found.diff_id);
        l.uncompressed_size = Some(found.size);
    }
    Ok(())
}

/// Assemble `bundle.json` and the bundle tar into `out/bundle`.
fn pack_bundle(
    def: &LoadedBundleDef,
    g: &Graph,
    bundle_id: &str,
    store: &Store,
    out: &Path,
    mtime: u64,
) -> Result<()> {
    let d = &def.def;
    let stack_obj = store.object(&g.ids[d.stack.get_ref()]);
    let stack_meta = read_json(&stack_obj.join("stack.json"))?;
    let stack_text = std::fs::read_to_string(stack_obj.join("stack").join("docker-stack.yml"))?;
    let image_names: Vec<String> = stack_meta["images"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let parameters: Vec<crate::site::Parameter> = match stack_meta.get("parameters") {
        Some(v) => serde_json::from_value(v.clone()).context("reading stored stack parameters")?,
        None => Vec::new(),
    };

    let mut items: BTreeMap<String, BundleItem> = BTreeMap::new();
    let mut add_file = |path: String, src: PathBuf, executable: bool| -> Result<()> {
        let meta = std::fs::metadata(&src).with_context(|| format!("reading {}", src.display()))?;
        let entry = FileEntry {
            path: path.clone(),
            sha256: sha256_file(&src)?,
            size: meta.len(),
            executable,
        };
        items.insert(
            path,
            BundleItem {
                entry,
                source: Source::File(src),
            },
        );
        Ok(())
    };
    for (file, recipe) in &d.binaries {
        let RecipeKind::Binary(b) = &g.recipes[recipe.get_ref()].kind else {
            unreachable!("checked by build::plan")
        };
        add_file(
            format!("bin/{file}"),
            store
                .object(&g.ids[recipe.get_ref()])
                .join("bin")
                .join(&b.bin),
            true,
        )?;
    }
    add_file(
        "stack/docker-stack.yml".into(),
        stack_obj.join("stack").join("docker-stack.yml"),
        false,
    )?;
    for e in std::fs::read_dir(stack_obj.join("configs"))? {
        let e = e?;
        add_file(
            format!("configs/{}", e.file_name().to_string_lossy()),
            e.path(),
            false,
        )?;
    }
    let mut images = Vec::new();
    let mut layout = Vec::new();
    let mut blobs = BTreeSet::new();
    for name in &image_names {
        let mut m = image_meta(store, g, name)?;
        let obj = store.object(&g.ids[name]);
        declare_expansions(&mut m, &obj).with_context(|| format!("image recipe {name}"))?;
        for b in std::iter::once(&m.manifest)
            .chain(std::iter::once(&m.config))
            .chain(m.layers.iter())
        {
            if blobs.insert(b.digest.clone()) {
                add_file(
                    b.path(),
                    obj.join("blobs/sha256")
                        .join(b.digest.trim_start_matches("sha256:")),
                    false,
                )?;
            }
        }
        add_file(format!("sbom/{name}.spdx.json"), obj.join(SBOM_FILE), false)?;
        let size = m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>();
        layout.push(LayoutImage {
            reference: format!("{}:{}", m.repository, m.tag),
            tag: m.tag.clone(),
            manifest: descriptor(&m.manifest),
            config: descriptor(&m.config),
            layers: m.layers.iter().map(descriptor).collect(),
        });
        images.push(ImageEntry {
            name: name.clone(),
            repository: m.repository,
            tag: m.tag,
            config_digest: m.config.digest.clone(),
            manifest_digest: m.manifest.digest.clone(),
            layers: m.layers,
            config: m.config,
            size,
        });
    }
    let mut add_bytes = |path: &str, data: Vec<u8>| {
        let entry = FileEntry {
            path: path.to_string(),
            sha256: sha256_hex(&data),
            size: data.len() as u64,
            executable: false,
        };
        items.insert(
            path.to_string(),
            BundleItem {
                entry,
                source: Source::Bytes(data),
            },
        );
    };
    // An SBOM for each shipped executable too: the crates linked into it.
    for (file, recipe) in &d.binaries {
        let RecipeKind::Binary(b) = &g.recipes[recipe.get_ref()].kind else {
            unreachable!("checked by build::plan")
        };
        let obj = store.object(&g.ids[recipe.get_ref()]);
        let doc = crate::sbom::document(
            &crate::sbom::Image {
                name: &format!("bin-{file}"),
                repository: file,
                version: &d.version,
                identity: &g.ids[recipe.get_ref()],
                created: &oci::rfc3339(mtime),
            },
            None,
            &[binary_sbom(&obj, b, &format!("bin/{file}"))?],
        );
        add_bytes(
            &format!("sbom/bin-{file}.spdx.json"),
            crate::sbom::to_bytes(&doc),
        );
    }
    add_bytes("oci/oci-layout", oci::OCI_LAYOUT.to_vec());
    add_bytes("oci/index.json", oci::index_json(&layout));
    add_bytes("oci/manifest.json", oci::docker_manifest_json(&layout));

    let services = summarize_services(&stack_text, &parameters, &images)?;
    let inputs = g
        .order
        .iter()
        .map(|n| InputEntry {
            name: n.clone(),
            kind: g.recipes[n].kind.name().to_string(),
            identity: g.ids[n].clone(),
        })
        .collect();
    let items: Vec<BundleItem> = items.into_values().collect();
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        mtime: Some(mtime),
        name: d.name.clone(),
        version: d.version.clone(),
        identity: bundle_id.to_string(),
        stack: d.stack_name.clone(),
        stack_file: "stack/docker-stack.yml".into(),
        pinned: d.pinned.clone(),
        images,
        services,
        files: items.iter().map(|i| i.entry.clone()).collect(),
        inputs,
        parameters,
    };
    write_bundle(&out.join("bundle"), &manifest, &items, mtime)?;
    // Hashed once here, so that a cached rebuild can report it without reading 10+ MB.
    std::fs::write(out.join("bundle.sha256"), sha256_file(&out.join("bundle"))?)?;
    write_atomic(
        &out.join("bundle.json"),
        &crate::bundle::writer::manifest_bytes(&manifest),
    )?;
    Ok(())
}

/// The manifest's service list: each service with the image recipe it runs.
fn summarize_services(
    stack_text: &str,
    parameters: &[crate::site::Parameter],
    images: &[ImageEntry],
) -> Result<Vec<ServiceEntry>> {
    let compose = parse_with_samples(stack_text, parameters, "stack/docker-stack.yml")?;
    compose
        .services()
        .map(|s| {
            let image = images
                .iter()
                .find(|i| i.reference() == s.image)
                .with_context(|| {
                    format!(
                        "service {}: image {:?} is not built by this bundle (use ${{image:NAME}})",
                        s.name, s.image
                    )
                })?;
            Ok(ServiceEntry {
                name: s.name.to_string(),
                image: image.name.clone(),
                phase: s.phase,
                job: s.job,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// scripts/lib.sh's `static_cargo_env` prints exactly what the builder gives cargo.
    #[test]
    fn the_scripts_static_cargo_env_is_the_builders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg("source scripts/lib.sh; static_cargo_env /w /h /t 1700000000")
            .current_dir(root)
            .output()
            .expect("running bash");
        assert!(o.status.success(), "{o:?}");
        let want: Vec<String> = static_build_env(
            Path::new("/w"),
            Path::new("/h"),
            Path::new("/t"),
            1_700_000_000,
        )
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
        let got: Vec<String> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(got, want);
    }

    use super::*;

    #[test]
    fn only_a_base_with_nothing_added_is_taken_as_it_is() {
        let head = "kind = \"image\"\nrepository = \"v/x\"\nversion = \"1\"\n";
        for (rest, as_is) in [
            ("base = \"vendor\"\n", true),
            ("", false),
            ("base = \"vendor\"\n[annotations]\ntitle = \"x\"\n", false),
            ("base = \"vendor\"\n[config]\nenv = { A = \"1\" }\n", false),
            ("base = \"vendor\"\n[config]\ncmd = [\"x\"]\n", false),
            (
                "base = \"vendor\"\n[[layer]]\nentries = [{ dest = \"/a\", text = \"a\" }]\n",
                false,
            ),
        ] {
            let img: ImageRecipe = toml::from_str(&format!("{head}{rest}")).unwrap();
            assert_eq!(takes_base_as_is(&img), as_is, "{rest}");
        }
    }

    #[test]
    fn placeholders_with_lines() {
        let t = "a: ${image:x}\n# ${image:c}\nd: ${image:y} ${image:z} # ${image:q}\n";
        let names: Vec<String> = image_placeholders(t).into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["x", "y", "z"]);
        assert_eq!(image_placeholders(t)[0].0, 11);
        let mut refs = BTreeMap::new();
        refs.insert("x".to_string(), "r/x:1-abc".to_string());
        assert_eq!(render_template("i: ${image:x}", &refs), "i: r/x:1-abc");
    }
}
