//! Loader subcommands (load, activate, status, generations, rollback, gc, swarm): argument
//! structs and dispatch into the loader modules.

use clap::Subcommand;

/// Host-side commands.
#[derive(Debug, Subcommand)]
pub enum LoaderCommand {}

/// Run one host-side command; returns the process exit code.
pub fn run(cmd: LoaderCommand) -> anyhow::Result<i32> {
    match cmd {}
}
