//! reemo-bundle library: recipe → store → oci/bundle → loader → swarm.
//!
//! The command line (`main.rs`, `cli.rs`) only parses and dispatches into these modules.

pub mod bundle;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod loader;
pub mod stack;
pub mod state;
pub mod swarm;
