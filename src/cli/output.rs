//! What the commands print: `--json` results (every one an object with `"format": 1`, see
//! [`crate::events::JSON_FORMAT`]) and the event sink a command's flags choose.

use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::events::{Events, JsonLines, Stderr, JSON_FORMAT};

/// `value` as the JSON object a command prints: its fields (or, for a list, the list under
/// `key`) after `"format"`.
pub fn versioned<T: Serialize>(key: &str, value: &T) -> Result<Value> {
    let v = serde_json::to_value(value)?;
    let mut out = serde_json::Map::new();
    out.insert("format".into(), Value::from(JSON_FORMAT));
    match v {
        Value::Object(m) => out.extend(m),
        other => {
            out.insert(key.into(), other);
        }
    }
    Ok(Value::Object(out))
}

/// Print a `--json` result on stdout.
pub fn print_json<T: Serialize>(key: &str, value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&versioned(key, value)?)?);
    Ok(())
}

/// The event sink: JSON lines on stderr with `--json`, words on stderr otherwise.
pub fn events(json: bool) -> Arc<dyn Events> {
    if json {
        Arc::new(JsonLines)
    } else {
        Arc::new(Stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_gain_a_format_field_and_lists_are_wrapped() {
        let o = versioned("x", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(o.to_string(), r#"{"format":1,"a":1}"#);
        let l = versioned("generations", &vec![1, 2]).unwrap();
        assert_eq!(l.to_string(), r#"{"format":1,"generations":[1,2]}"#);
    }
}
