//! Build-side command handlers: turn parsed arguments into calls on the library and print
//! results on stdout (progress goes to stderr).

use anyhow::{Context, Result};

use crate::build::{build as run_build, BuildOptions};
use crate::bundle::reader::BundleFile;
use crate::cli::{BuildArgs, InspectArgs, VerifyArgs};
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
    let opts = BuildOptions {
        store: &store,
        out_dir: args.out,
        source_date_epoch: source_date_epoch()?,
        progress: &progress,
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
        println!(
            "{}",
            serde_json::json!({
                "bundle": outcome.bundle_path,
                "sha256": sha,
                "size": size,
                "identity": outcome.manifest.identity,
                "built": outcome.built,
                "cached": outcome.cached,
                "ms": started.elapsed().as_millis() as u64,
            })
        );
    } else {
        println!("{}", outcome.bundle_path.display());
        println!("  sha256 {sha}  size {size}");
    }
    Ok(0)
}

fn open(path: &std::path::Path) -> Result<BundleFile> {
    BundleFile::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
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
    println!("images:");
    for i in &m.images {
        println!("  {}  {} bytes", i.reference(), i.size);
        println!("    id {}  manifest {}", i.config_digest, i.manifest_digest);
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
    Ok(0)
}

/// `reemo-bundle verify`.
pub fn verify(args: VerifyArgs) -> Result<i32> {
    let b = open(&args.file)?;
    let m = b.manifest();
    println!(
        "ok: {} {} ({} files, identity {})",
        m.name,
        m.version,
        m.files.len(),
        m.identity
    );
    Ok(0)
}
