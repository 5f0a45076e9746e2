//! The activation journal: written before the first change and after every step, so that
//! the next command can tell exactly what an interrupted activation did and undo it.

use std::fs;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{atomic_write, StateDir};
use crate::swarm::plan::Step;

/// What kind of transaction a journal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `activate`: a new generation.
    Activate,
    /// `rollback`: an older generation again.
    Rollback,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Activate => "activate",
            Kind::Rollback => "rollback",
        })
    }
}

/// The journal of one activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// `activate` or `rollback`.
    pub kind: Kind,
    /// Process that wrote it.
    pub pid: u32,
    /// Unix time started.
    pub started: u64,
    /// Generation being activated.
    pub target: u64,
    /// Whether `target` was created by this attempt (a failed attempt marks it failed).
    pub new_generation: bool,
    /// Generation current before the attempt.
    pub previous: Option<u64>,
    /// Planned steps.
    pub steps: Vec<Step>,
    /// Steps finished (the next one may be half-done). Whether the attempt committed is
    /// told by `current`, which is switched before the journal is removed.
    pub done: usize,
}

impl StateDir {
    fn journal_path(&self) -> std::path::PathBuf {
        self.root().join("journal.json")
    }

    /// The unfinished journal, if any.
    pub fn journal(&self) -> Result<Option<Journal>> {
        let p = self.journal_path();
        match fs::read(&p) {
            Ok(d) => Ok(Some(
                serde_json::from_slice(&d).with_context(|| format!("parsing {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Write the journal.
    pub fn put_journal(&self, j: &Journal) -> Result<()> {
        atomic_write(&self.journal_path(), &serde_json::to_vec_pretty(j)?, 0o644)
            .context("writing the activation journal")
    }

    /// Remove the journal (the activation is finished either way).
    pub fn remove_journal(&self) -> Result<()> {
        match fs::remove_file(self.journal_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("removing the activation journal"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert!(s.journal().unwrap().is_none());
        let j = Journal {
            kind: Kind::Activate,
            pid: 1,
            started: 2,
            target: 3,
            new_generation: true,
            previous: Some(2),
            steps: vec![Step::CreateConfig { name: "c".into() }],
            done: 0,
        };
        s.put_journal(&j).unwrap();
        assert_eq!(s.journal().unwrap(), Some(j));
        s.remove_journal().unwrap();
        assert!(s.journal().unwrap().is_none());
    }

    /// Journals written before `stage` was dropped still parse.
    #[test]
    fn a_journal_with_the_old_stage_field_parses() {
        let j: Journal = serde_json::from_str(
            r#"{"kind":"rollback","pid":1,"started":2,"target":3,"new_generation":false,
                "previous":2,"steps":[],"done":0,"stage":"applying"}"#,
        )
        .unwrap();
        assert_eq!(j.kind, Kind::Rollback);
    }
}
