//! Swarm side of the loader: desired state of a stack, Engine-API specs built from it, the
//! activation planner, and swarm initialisation options. All pure; `engine` does the I/O.

pub mod desired;
pub mod feasible;
pub mod init;
pub mod plan;
pub mod spec;
