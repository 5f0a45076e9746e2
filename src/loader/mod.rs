//! The on-host loader: image loading, activation, generations, rollback (issue 4).

pub mod cli;
