//! Build-side command handlers: turn parsed arguments into calls on the library and print
//! results on stdout (progress goes to stderr).

use anyhow::{Context, Result};

use super::{BuildArgs, InspectArgs, KeygenArgs, SaveArgs, SignArgs, VerifyArgs};
use crate::builder::{build as run_build, BuildOptions};
use crate::bundle::reader::BundleFile;
use crate::bundle::writer::write_with_signature;
use crate::sign::{self, SecretKey};
use crate::store::{default_store_dir, Store};

/// SOURCE_DATE_EPOCH from the environment (default 0: the Unix epoch).
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds")),
        _ => Ok(0),
    }
}

/// `reemo-bundle build`.
pub fn build(args: BuildArgs) -> Result<i32> {
    let started = std::time::Instant::now();
    let store_dir = args.store.unwrap_or_else(default_store_dir);
    let store = Store::open(&store_dir)?;
    let progress = |m: &str| eprintln!("[build] {m}");
    // Read the key before building anything, so that a bad key fails fast.
    let sign_key = args.sign_key.as_deref().map(SecretKey::read).transpose()?;
    let opts = BuildOptions {
        store: &store,
        out_dir: args.out,
        source_date_epoch: source_date_epoch()?,
        progress: &progress,
        sign_key: sign_key.as_ref(),
    };
    let outcome = run_build(&args.bundle, &opts)?;
    let size = std::fs::metadata(&outcome.bundle_path)
        .map(|m| m.len())
        .unwrap_or(0);
    let sha = &outcome.sha256;
    if outcome.built.is_empty() {
        eprintln!("[build] nothing to do: every recipe and the bundle are in the store");
    } else {
        eprintln!("[build] built: {}", outcome.built.join(", "));
    }
    if args.json {
        super::output::print_json(
            "build",
            &serde_json::json!({
                "bundle": outcome.bundle_path,
                "sha256": sha,
                "size": size,
                "identity": outcome.manifest.identity,
                "signed_by": outcome.signed_by,
                "built": outcome.built,
                "cached": outcome.cached,
                "ms": started.elapsed().as_millis() as u64,
            }),
        )?;
    } else {
        println!("{}", outcome.bundle_path.display());
        println!("  sha256 {sha}  size {size}");
        if let Some(k) = &outcome.signed_by {
            println!("  signed by key id {k}");
        }
    }
    Ok(0)
}

fn open(path: &std::path::Path) -> Result<BundleFile> {
    BundleFile::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `reemo-bundle save`: one image of a verified bundle as a docker-archive, written by the
/// loader's archive writer (every layer checked against its diff-id while it is copied).
pub fn save(args: SaveArgs) -> Result<i32> {
    let b = open(&args.file)?;
    let images = &b.manifest().images;
    let image = images
        .iter()
        .find(|i| i.name == args.image || i.reference() == args.image)
        .with_context(|| {
            format!(
                "{}: no image {:?} (images: {})",
                args.file.display(),
                args.image,
                images
                    .iter()
                    .map(|i| format!("{} ({})", i.name, i.reference()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let mut tmp = crate::fsutil::temp_beside(&args.out, 0o644)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        crate::loader::images::write_archive(&b, &[image], &mut w)
            .with_context(|| format!("writing {}", args.out.display()))?;
        std::io::Write::flush(&mut w)?;
    }
    crate::fsutil::persist(tmp, &args.out)?;
    let sha = crate::hash::sha256_file(&args.out)?;
    if args.json {
        super::output::print_json(
            "save",
            &serde_json::json!({
                "archive": args.out,
                "sha256": sha,
                "image": image.name,
                "reference": image.reference(),
                "id": image.config_digest,
            }),
        )?;
    } else {
        println!("{}", args.out.display());
        println!(
            "  sha256 {sha}  image {} id {}",
            image.reference(),
            image.config_digest
        );
    }
    Ok(0)
}

/// `reemo-bundle inspect`.
pub fn inspect(args: InspectArgs) -> Result<i32> {
    let b = open(&args.file)?;
    let m = b.manifest();
    if args.json {
        println!("{}", String::from_utf8_lossy(b.manifest_bytes()).trim_end());
        return Ok(0);
    }
    println!(
        "{} {}  (format {}, stack {})",
        m.name, m.version, m.format, m.stack
    );
    println!("identity  {}", m.identity);
    println!("pinned versions:");
    for (k, v) in &m.pinned {
        println!("  {k} = {v}");
    }
    if !m.parameters.is_empty() {
        println!("site parameters:");
        for p in &m.parameters {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let value = match (&p.default, p.secret) {
                (Some(_), true) => "default ********".to_string(),
                (Some(d), false) => format!("default {d}"),
                (None, _) => "required".to_string(),
            };
            let desc = if p.description.is_empty() {
                String::new()
            } else {
                format!("  {}", p.description)
            };
            println!("  {} ({kind}, {value}){desc}", p.name);
        }
    }
    println!("images:");
    for i in &m.images {
        println!("  {}  {} bytes", i.reference(), i.size);
        println!("    id {}  manifest {}", i.config_digest, i.manifest_digest);
        let sbom = format!("sbom/{}.spdx.json", i.name);
        if b.entry(&sbom).is_some() {
            let doc: serde_json::Value = serde_json::from_slice(&b.read_entry(&sbom)?)
                .with_context(|| format!("parsing {sbom}"))?;
            let n = doc["packages"]
                .as_array()
                .map_or(0, |p| p.len().saturating_sub(1));
            println!("    {n} Debian packages (sbom {sbom})");
        }
    }
    println!("services:");
    for s in &m.services {
        println!(
            "  {}_{}  image {}  phase {}{}",
            m.stack,
            s.name,
            s.image,
            s.phase,
            if s.job { "  (job)" } else { "" }
        );
    }
    println!("files: {}", m.files.len());
    match sign::evaluate(b.manifest_bytes(), b.signature(), &[]) {
        Ok(v) => println!("signature: {v}"),
        Err(e) => println!("signature: INVALID: {e}"),
    }
    Ok(0)
}

/// `reemo-bundle verify`.
pub fn verify(args: VerifyArgs) -> Result<i32> {
    let b = open(&args.file)?;
    b.check_layers()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let trusted = sign::read_trusted(&args.trusted_keys)?;
    let verdict = sign::evaluate(b.manifest_bytes(), b.signature(), &trusted)
        .map_err(|e| anyhow::anyhow!("bundle {}: {e}", args.file.display()))?;
    let m = b.manifest();
    println!(
        "ok: {} {} (format {}, {} files, {} image layers expanded and checked, identity {})",
        m.name,
        m.version,
        m.format,
        m.files.len(),
        m.images.iter().map(|i| i.layers.len()).sum::<usize>(),
        m.identity
    );
    println!("signature: {verdict}");
    Ok(0)
}

/// `reemo-bundle keygen`.
pub fn keygen(args: KeygenArgs) -> Result<i32> {
    let key = SecretKey::generate();
    let public = sign::write_key_pair(&args.out, &key)?;
    println!("key id {}", key.key_id());
    println!(
        "  private key {} (mode 0600; keep it off the hosts)",
        args.out.display()
    );
    println!(
        "  public key  {} (copy it to <state-dir>/{}/ on the hosts that trust it)",
        public.display(),
        sign::TRUSTED_KEYS_DIR
    );
    Ok(0)
}

/// `reemo-bundle sign`.
pub fn sign(args: SignArgs) -> Result<i32> {
    let key = SecretKey::read(&args.key)?;
    let b = open(&args.file)?;
    // A bundle whose present signature is broken is signed anew all the same: the hashes
    // verified, and the new signature replaces the old entry.
    let sig = key.sign_manifest(b.manifest_bytes());
    let dest = args.out.unwrap_or_else(|| args.file.clone());
    let sha = write_with_signature(&b, &dest, Some(&sig))
        .with_context(|| format!("signing {}", args.file.display()))?;
    println!("{}", dest.display());
    println!("  sha256 {sha}  signed by key id {}", key.key_id());
    Ok(0)
}
