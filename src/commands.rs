//! Build-side command handlers: turn parsed arguments into calls on the library and print
//! results (stdout) — the only place of the build side that prints.

use anyhow::Result;

use crate::cli::{BuildArgs, InspectArgs, VerifyArgs};

/// `reemo-bundle build`.
pub fn build(_args: BuildArgs) -> Result<i32> {
    anyhow::bail!("build: not implemented yet")
}

/// `reemo-bundle inspect`.
pub fn inspect(_args: InspectArgs) -> Result<i32> {
    anyhow::bail!("inspect: not implemented yet")
}

/// `reemo-bundle verify`.
pub fn verify(args: VerifyArgs) -> Result<i32> {
    let b = crate::bundle::reader::BundleFile::open(&args.file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
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
