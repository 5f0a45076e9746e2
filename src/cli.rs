//! Command line definition (clap derive). Doc comments here are the user manual.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Reproducible, content-addressed appliance bundles for Docker Swarm, installed without a
/// registry.
///
/// Exit codes: 0 success, 1 error, 2 usage error; see each command for more.
#[derive(Debug, Parser)]
#[command(name = "reemo-bundle", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a bundle file from an appliance definition (bundles/NAME.toml) and its recipes.
    Build(BuildArgs),
    /// Show a bundle's name, version, pinned versions, images and services.
    Inspect(InspectArgs),
    /// Check every hash and the structure of a bundle file; names the first bad entry.
    Verify(VerifyArgs),
    /// Host-side commands.
    #[command(flatten)]
    Loader(crate::loader::cli::LoaderCommand),
}

/// Arguments of `build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Appliance definition, e.g. bundles/relayws.toml.
    pub bundle: PathBuf,
    /// Folder the bundle file is written to.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Content-addressed store (default: $XDG_CACHE_HOME/reemo-bundle/store or
    /// ~/.cache/reemo-bundle/store).
    #[arg(long, env = "REEMO_BUNDLE_STORE")]
    pub store: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Bundle file.
    pub file: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Bundle file.
    pub file: PathBuf,
}
