//! reemo-bundle library: recipe → store → oci/bundle → loader → swarm.
//!
//! The command line (`main.rs`, `cli.rs`) only parses and dispatches into these modules.

pub mod build;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod hash;
pub mod loader;
pub mod oci;
pub mod recipe;
pub mod sign;
pub mod stack;
pub mod state;
pub mod store;
pub mod swarm;
