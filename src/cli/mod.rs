//! The command line: definition (clap derive; doc comments here are the user manual),
//! dispatch, and everything printed. `build` holds the build-side commands, `host` the
//! host-side ones, `output` the `--json` and event-sink conventions. No other module
//! parses arguments or prints.

pub mod build;
pub mod debian;
pub mod host;
pub mod output;

use std::path::PathBuf;

use anyhow::Result;
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
    /// Check every hash and the structure of a bundle file (names the first bad entry), and
    /// its signature: against the key it carries, or against `--trusted-key` files.
    Verify(VerifyArgs),
    /// Create an ed25519 signing key: PATH (private, mode 0600) and PATH.pub (public; copy
    /// it to `<state-dir>/trusted-keys/` on the hosts that should trust it). Refuses to
    /// overwrite either file.
    Keygen(KeygenArgs),
    /// Sign an existing bundle file (e.g. on an offline machine that holds the key): writes
    /// its `bundle.json.sig` entry, replacing any signature it has; every other byte stays.
    Sign(SignArgs),
    /// Resolve the Debian packages of image recipes against the archive (InRelease verified
    /// with gpgv, index checked against it), keep every `.deb` in the store and write
    /// `<recipe>.lock.json` beside each recipe. Exit code 1 from `--check` when a lock is stale.
    Lock(debian::LockArgs),
    /// Download the `.deb`s a lock names and the store lacks (each checked against its sha256).
    Fetch(debian::FetchArgs),
    /// Print the SPDX 2.3 documents of a bundle's images.
    Sbom(debian::SbomArgs),
    /// Write one image of a bundle as a `docker save` archive (manifest.json, an OCI
    /// layout, the config and layer blobs), e.g. a stand-in handed on as a vendor archive
    /// (a `fixed` recipe with `format = "docker-archive"`). The same bundle gives the same
    /// bytes; `docker load` accepts the file.
    Save(SaveArgs),
    /// Host-side commands.
    #[command(flatten)]
    Loader(host::HostCommand),
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
    /// Sign the bundle file with this private key (from `keygen`). The signature is
    /// deterministic: the same key and inputs give the same file.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
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
    /// Require a valid signature by this public key (repeatable: any of them). Without it
    /// the signature, if any, is checked against the key it carries.
    #[arg(long = "trusted-key", value_name = "FILE")]
    pub trusted_keys: Vec<PathBuf>,
}

/// Arguments of `keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Private key file to create; the public key goes to the same path plus `.pub`.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// Arguments of `sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// Bundle file (verified first).
    pub file: PathBuf,
    /// Private key file (from `keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Write the signed bundle here instead of replacing FILE (atomically) in place.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

/// Arguments of `save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Bundle file (verified first).
    pub file: PathBuf,
    /// The image: its recipe name (as `inspect` lists it) or `repository:tag`.
    #[arg(long)]
    pub image: String,
    /// Archive to write (replaced atomically).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run a parsed command line; the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Build(a) => build::build(a),
        Command::Inspect(a) => build::inspect(a),
        Command::Verify(a) => build::verify(a),
        Command::Keygen(a) => build::keygen(a),
        Command::Sign(a) => build::sign(a),
        Command::Lock(a) => debian::lock(a),
        Command::Fetch(a) => debian::fetch(a),
        Command::Sbom(a) => debian::sbom(a),
        Command::Save(a) => build::save(a),
        Command::Loader(c) => host::run(c),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
