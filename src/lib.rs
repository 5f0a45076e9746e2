//! reemo-bundle library: recipe → store → oci/bundle → loader → swarm.
//!
//! The command line (`main.rs`, `cli`) parses, dispatches into these modules and prints;
//! the library itself reports progress through `events`.

pub mod builder;
pub mod bundle;
pub mod cli;
pub mod debian;
pub mod engine;
pub mod events;
pub mod fsutil;
pub mod hash;
pub mod loader;
pub mod oci;
pub mod pki;
pub mod recipe;
pub mod sbom;
pub mod sign;
pub mod site;
pub mod stack;
pub mod state;
pub mod store;
pub mod swarm;
