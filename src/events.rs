//! Progress and warnings of long-running work, handed to a sink instead of printed by the
//! library: `Stderr` for people, `Quiet` for none, `JsonLines` for machines (one versioned
//! JSON object per line on stderr). Only the command layer chooses the sink.

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

/// Version of every machine-readable output (`--json` results and JSON-lines events).
pub const JSON_FORMAT: u32 = 1;

/// One thing worth telling while work goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Progress in words.
    Info {
        /// What happened.
        message: String,
    },
    /// Something the operator should look at; the work goes on.
    Warning {
        /// What is wrong.
        message: String,
    },
    /// A plan step starts (1-based index).
    Step {
        /// Index.
        index: usize,
        /// Steps in the plan.
        total: usize,
        /// The step, as `--dry-run` prints it.
        step: String,
    },
    /// A step of a revert starts.
    Revert {
        /// The step.
        step: String,
    },
    /// Bytes streamed so far into an engine.
    Transfer {
        /// Engine address.
        engine: String,
        /// Bytes sent.
        sent: u64,
        /// Bytes in all.
        total: u64,
    },
}

impl Event {
    /// An `Info` event.
    pub fn info(message: impl Into<String>) -> Event {
        Event::Info {
            message: message.into(),
        }
    }
    /// A `Warning` event.
    pub fn warning(message: impl Into<String>) -> Event {
        Event::Warning {
            message: message.into(),
        }
    }
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Info { message } => f.write_str(message),
            Event::Warning { message } => write!(f, "warning: {message}"),
            Event::Step { index, total, step } => write!(f, "[{index}/{total}] {step}"),
            Event::Revert { step } => write!(f, "revert: {step}"),
            Event::Transfer {
                engine,
                sent,
                total,
            } => write!(f, "  {engine}: {} / {}", mb(*sent), mb(*total)),
        }
    }
}

/// Where events go.
pub trait Events: Send + Sync {
    /// Take one event.
    fn emit(&self, e: Event);
}

/// Lines on stderr, for people.
#[derive(Debug, Default)]
pub struct Stderr;

impl Events for Stderr {
    fn emit(&self, e: Event) {
        eprintln!("{e}");
    }
}

/// Nothing (warnings included: the caller reports them in its result).
#[derive(Debug, Default)]
pub struct Quiet;

impl Events for Quiet {
    fn emit(&self, _: Event) {}
}

/// One JSON object per line on stderr: `{"format":1,"event":"step",…}`.
#[derive(Debug, Default)]
pub struct JsonLines;

impl Events for JsonLines {
    fn emit(&self, e: Event) {
        let line = json_line(&e);
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// The JSON-lines form of an event.
pub fn json_line(e: &Event) -> String {
    let mut v = serde_json::json!({ "format": JSON_FORMAT });
    if let (Some(m), Ok(serde_json::Value::Object(ev))) =
        (v.as_object_mut(), serde_json::to_value(e))
    {
        m.extend(ev);
    }
    v.to_string()
}

/// Keeps every event, for tests.
#[derive(Debug, Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);

impl Events for Recorder {
    fn emit(&self, e: Event) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}

impl Recorder {
    /// The events so far, as text lines.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| e.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_format_version() {
        let l = json_line(&Event::Step {
            index: 1,
            total: 3,
            step: "create config c".into(),
        });
        assert_eq!(
            l,
            r#"{"format":1,"event":"step","index":1,"total":3,"step":"create config c"}"#
        );
        assert_eq!(Event::warning("x").to_string(), "warning: x");
    }
}
