//! What an interrupted activation left, and what to do about it: a pure decision from the
//! journal and `current` (table-tested), and the command-side step that carries it out.
//! Only commands that change the stack (activate, rollback, gc, recover) carry it out;
//! `status` only describes it.

use anyhow::{Context, Result};

use super::transaction::revert;
use super::Timing;
use crate::engine::Engine;
use crate::events::{Event, Events};
use crate::state::journal::Journal;
use crate::state::{GenResult, StateDir};

/// What recovery must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing is unfinished.
    Nothing,
    /// Generations recorded just before a crash, with no journal yet: nothing changed on
    /// the swarm; mark them failed.
    AbandonPending(Vec<u64>),
    /// `current` had been switched to the journal's target: the attempt committed, only
    /// bookkeeping is left.
    Finish(Journal),
    /// The attempt did not commit: revert it.
    Revert(Journal),
}

/// Decide from the journal (if any), `current`, and the generations still `pending`.
pub fn decide(journal: Option<Journal>, current: Option<u64>, pending: &[u64]) -> Recovery {
    match journal {
        Some(j) if current == Some(j.target) => Recovery::Finish(j),
        Some(j) => Recovery::Revert(j),
        None => {
            let stale: Vec<u64> = pending
                .iter()
                .copied()
                .filter(|n| Some(*n) != current)
                .collect();
            if stale.is_empty() {
                Recovery::Nothing
            } else {
                Recovery::AbandonPending(stale)
            }
        }
    }
}

/// The decision for this state directory.
pub fn decide_for(state: &StateDir) -> Result<Recovery> {
    let current = state.current()?;
    let pending: Vec<u64> = state
        .generations()?
        .into_iter()
        .filter(|g| g.result == GenResult::Pending)
        .map(|g| g.number)
        .collect();
    Ok(decide(state.journal()?, current, &pending))
}

/// How `status` and dry runs describe an unfinished activation, naming the command that
/// finishes it.
pub fn describe(r: &Recovery) -> Option<String> {
    match r {
        Recovery::Nothing | Recovery::AbandonPending(_) => None,
        Recovery::Finish(j) => Some(format!(
            "an interrupted {} (pid {}) had switched to generation {}; `reemo-bundle recover` finishes it",
            j.kind, j.pid, j.target
        )),
        Recovery::Revert(j) => Some(format!(
            "an interrupted {} of generation {} (pid {}, {} of {} steps done) is unfinished; `reemo-bundle recover` reverts it{}",
            j.kind,
            j.target,
            j.pid,
            j.done,
            j.steps.len(),
            match j.previous {
                Some(p) => format!(" to generation {p}"),
                None => String::new(),
            }
        )),
    }
}

/// Finish or revert an activation a crashed process left (the caller holds the lock).
/// Returns what was done, for the command to report; `None` when there was nothing to do.
pub async fn recover(
    state: &StateDir,
    engine: &dyn Engine,
    timing: Timing,
    events: &dyn Events,
) -> Result<Option<String>> {
    match decide_for(state)? {
        Recovery::Nothing => Ok(None),
        Recovery::AbandonPending(numbers) => {
            for n in numbers {
                let mut g = state.generation(n)?;
                g.result = GenResult::Failed;
                g.error = Some("interrupted before any change".into());
                state.put_generation(&g)?;
            }
            Ok(None)
        }
        Recovery::Finish(journal) => {
            let mut g = state.generation(journal.target)?;
            if g.result != GenResult::Succeeded {
                g.result = GenResult::Succeeded;
                state.put_generation(&g)?;
            }
            state.remove_journal()?;
            Ok(Some(format!(
                "recovered an interrupted {} (pid {}): generation {} had been switched to current; finished it",
                journal.kind, journal.pid, journal.target
            )))
        }
        Recovery::Revert(journal) => {
            events.emit(Event::info(format!(
                "an interrupted {} of generation {} (pid {}, {} of {} steps done) is being reverted",
                journal.kind,
                journal.target,
                journal.pid,
                journal.done,
                journal.steps.len()
            )));
            revert(state, engine, &journal, timing, events)
                .await
                .with_context(|| {
                    format!(
                        "reverting the interrupted {} of generation {}",
                        journal.kind, journal.target
                    )
                })?;
            if journal.new_generation {
                let mut g = state.generation(journal.target)?;
                g.result = GenResult::Failed;
                g.error = Some("interrupted; reverted by the next command".into());
                state.put_generation(&g)?;
            }
            state.remove_journal()?;
            Ok(Some(match journal.previous {
                Some(p) => format!(
                    "recovered an interrupted {} (pid {}): generation {} reverted, generation {p} stays current",
                    journal.kind, journal.pid, journal.target
                ),
                None => format!(
                    "recovered an interrupted {} (pid {}): generation {} reverted, nothing is current",
                    journal.kind, journal.pid, journal.target
                ),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::Kind;

    fn j(target: u64, previous: Option<u64>) -> Journal {
        Journal {
            kind: Kind::Activate,
            pid: 7,
            started: 0,
            target,
            new_generation: true,
            previous,
            steps: vec![],
            done: 0,
        }
    }

    #[test]
    fn recovery_decision_table() {
        type Case = (
            &'static str,
            Option<Journal>,
            Option<u64>,
            Vec<u64>,
            Recovery,
        );
        let cases: Vec<Case> = vec![
            ("clean", None, Some(2), vec![], Recovery::Nothing),
            (
                "nothing ever activated",
                None,
                None,
                vec![],
                Recovery::Nothing,
            ),
            (
                "crash after recording generation 3, before the journal",
                None,
                Some(2),
                vec![3],
                Recovery::AbandonPending(vec![3]),
            ),
            (
                "crash mid-steps: current is still the previous generation",
                Some(j(3, Some(2))),
                Some(2),
                vec![3],
                Recovery::Revert(j(3, Some(2))),
            ),
            (
                "crash on the first activation",
                Some(j(1, None)),
                None,
                vec![1],
                Recovery::Revert(j(1, None)),
            ),
            (
                "crash after the switch of current",
                Some(j(3, Some(2))),
                Some(3),
                vec![],
                Recovery::Finish(j(3, Some(2))),
            ),
            (
                "rollback interrupted before its switch",
                Some(Journal {
                    kind: Kind::Rollback,
                    new_generation: false,
                    ..j(1, Some(3))
                }),
                Some(3),
                vec![],
                Recovery::Revert(Journal {
                    kind: Kind::Rollback,
                    new_generation: false,
                    ..j(1, Some(3))
                }),
            ),
        ];
        for (case, journal, current, pending, want) in cases {
            assert_eq!(decide(journal, current, &pending), want, "{case}");
        }
    }

    #[test]
    fn descriptions_name_the_command_that_finishes() {
        let d = describe(&Recovery::Revert(j(3, Some(2)))).unwrap();
        assert!(
            d.contains("reemo-bundle recover") && d.contains("to generation 2"),
            "{d}"
        );
        assert!(describe(&Recovery::Nothing).is_none());
    }
}
