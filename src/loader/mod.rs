//! The on-host loader: registry-less image loading, whole-stack activation with a journal,
//! generations, rollback, gc and status. Flow: `activate` (verify, import, load, plan) →
//! `apply` (steps, convergence, commit or revert) → `ops` (status, generations, gc).

pub mod activate;
pub mod apply;
pub mod cli;
pub mod images;
pub mod ops;

/// Environment variable for fault injection, for crash-safety tests only; a comma-separated
/// list of
/// - `after:POINT`: the process kills itself (SIGKILL) right after the named step of an
///   activation: `verify`, `import`, `load`, `journal`, `step-N` (N-th plan step done),
///   `commit`;
/// - `fail:POINT`: that point fails with an injected error instead: `step-N` (the N-th plan
///   step), `revert` (reverting a failed activation).
pub const FAULT_ENV: &str = "REEMO_BUNDLE_FAULT";

fn fault_points(kind: &str) -> Vec<String> {
    std::env::var(FAULT_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.trim().strip_prefix(kind).map(str::to_string))
        .collect()
}

/// Fault injection point (see [`FAULT_ENV`]): SIGKILL when `after:POINT` is set.
pub fn fault(point: &str) {
    if fault_points("after:").iter().any(|p| p == point) {
        eprintln!("fault injection: killing myself after {point}");
        // SAFETY: sending a signal to our own pid.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Fault injection point (see [`FAULT_ENV`]): an error when `fail:POINT` is set.
pub fn fail_point(point: &str) -> anyhow::Result<()> {
    if fault_points("fail:").iter().any(|p| p == point) {
        anyhow::bail!("fault injection: {point} fails");
    }
    Ok(())
}
