//! Swarm side of the loader, all pure: the desired state of a stack (`model`, built by
//! `desired`), Engine-API specs built from it (`spec`), what runs (`observed`) and the
//! decisions over both — the activation planner (`plan`), convergence (`health`),
//! placement feasibility (`feasible`), partial updates (`only`), node roles (`roles`), the
//! managers' quorum (`quorum`) — plus the options of `swarm init` (`init`) and `swarm join`
//! (`join`). `crate::engine` does the I/O.

pub mod desired;
pub mod feasible;
pub mod health;
pub mod init;
pub mod join;
pub mod labels;
pub mod model;
pub mod observed;
pub mod only;
pub mod plan;
pub mod quorum;
pub mod roles;
pub mod spec;
