//! The on-host loader: registry-less image loading, whole-stack activation with a journal,
//! generations, rollback, gc and status. Flow of an activation or rollback (one pipeline,
//! `pipeline`): the front end (`activate`) makes the target desired state → observe the
//! host once → plan every side effect purely → apply: host steps, then the journaled
//! transaction (`transaction`: `steps`, `converge`, commit or revert) → `recover` finishes
//! or reverts what a crashed process left. `status` and `gc` report and clean up; `cluster`
//! sets up the swarm (init, join, join token).

pub mod activate;
pub mod certs;
pub mod cluster;
pub mod converge;
pub mod gc;
pub mod images;
pub mod pipeline;
pub mod recover;
pub mod status;
pub mod steps;
pub mod transaction;

use std::sync::Arc;

use crate::engine::Engine;
use crate::events::Events;

/// Environment variable for crash-safety tests only: a comma-separated list of
/// `after:POINT`, each making the process kill itself (SIGKILL) right after the named step
/// of an activation: `verify`, `import`, `load`, `journal`, `step-N` (N-th plan step done),
/// `commit`. (Failing steps are tested on the in-memory engine, `crate::engine::fake`.)
pub const FAULT_ENV: &str = "REEMO_BUNDLE_FAULT";

/// Crash point (see [`FAULT_ENV`]): SIGKILL when `after:POINT` is set.
pub fn fault(point: &str) {
    let set = std::env::var(FAULT_ENV).unwrap_or_default();
    if set
        .split(',')
        .any(|p| p.trim().strip_prefix("after:") == Some(point))
    {
        eprintln!("fault injection: killing myself after {point}");
        // SAFETY: sending a signal to our own pid.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Engines, state directory and event sink shared by the host commands.
pub struct Host {
    /// Engines; the first is the swarm manager the stack is deployed through.
    pub engines: Vec<Arc<dyn Engine>>,
    /// State directory path.
    pub state_dir: std::path::PathBuf,
    /// Where progress and warnings go.
    pub events: Arc<dyn Events>,
}

impl Host {
    /// The manager engine.
    pub fn manager(&self) -> &dyn Engine {
        self.engines[0].as_ref()
    }

    /// Emit an event.
    pub fn emit(&self, e: crate::events::Event) {
        self.events.emit(e)
    }
}

/// Timing of convergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Deadline for the whole activation.
    pub timeout: std::time::Duration,
    /// How long the stack must stay converged.
    pub monitor: std::time::Duration,
    /// Pause between two looks at the engine while waiting.
    pub poll: std::time::Duration,
}

/// Default monitor window of `activate`.
pub const ACTIVATE_MONITOR: std::time::Duration = std::time::Duration::from_secs(2);
/// Default monitor window of `rollback`: its target already passed a window on this host.
pub const ROLLBACK_MONITOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Timing {
    /// Timing with the given monitor window, a 120 s timeout and 100 ms polls.
    pub fn with_monitor(monitor: std::time::Duration) -> Timing {
        Timing {
            timeout: std::time::Duration::from_secs(120),
            monitor,
            poll: std::time::Duration::from_millis(100),
        }
    }
}

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
mod tests;
