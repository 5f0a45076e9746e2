//! The on-host loader: registry-less image loading, whole-stack activation with a journal,
//! generations, rollback, gc and status. Flow: `activate` (verify, import, load, plan) →
//! `apply` (steps, convergence, commit or revert) → `ops` (status, generations, gc).

pub mod activate;
pub mod apply;
pub mod cli;
pub mod images;
pub mod ops;

/// Environment variable that makes the process kill itself (SIGKILL) right after a named
/// step of an activation: `after:verify`, `after:import`, `after:load`, `after:journal`,
/// `after:step-N` (N-th plan step done), `after:commit`. For crash-safety tests only.
pub const FAULT_ENV: &str = "REEMO_BUNDLE_FAULT";

/// Fault injection point (see [`FAULT_ENV`]).
pub fn fault(point: &str) {
    if let Ok(v) = std::env::var(FAULT_ENV) {
        if v.strip_prefix("after:") == Some(point) {
            eprintln!("fault injection: killing myself after {point}");
            // SAFETY: sending a signal to our own pid.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
