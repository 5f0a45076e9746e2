//! Structured logs: one JSON object per line on stderr. Callers never pass token values.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LEVEL: AtomicU8 = AtomicU8::new(2);

/// Sets the threshold from `error`, `warn`, `info` or `debug`.
pub fn set_level(name: &str) {
    let l = match name {
        "error" => 0,
        "warn" => 1,
        "debug" => 3,
        _ => 2,
    };
    LEVEL.store(l, Ordering::Relaxed);
}

/// Log levels in increasing verbosity.
#[derive(Clone, Copy)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something unusual.
    Warn = 1,
    /// Lifecycle events.
    Info = 2,
    /// Per-connection details.
    Debug = 3,
}

/// True if events at `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Prints one event with its fields.
pub fn event(level: Level, msg: &str, fields: &[(&str, serde_json::Value)]) {
    if !enabled(level) {
        return;
    }
    let mut m = serde_json::Map::new();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    m.insert("ts".into(), ts.into());
    let name = match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    };
    m.insert("level".into(), name.into());
    m.insert("msg".into(), msg.into());
    for (k, v) in fields {
        m.insert((*k).into(), v.clone());
    }
    eprintln!("{}", serde_json::Value::Object(m));
}

/// `log!(Info, "msg", key = value, …)`
#[macro_export]
macro_rules! log {
    ($lvl:ident, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        if $crate::log::enabled($crate::log::Level::$lvl) {
            $crate::log::event(
                $crate::log::Level::$lvl,
                $msg,
                &[$((stringify!($k), serde_json::json!($v))),*],
            )
        }
    };
}
