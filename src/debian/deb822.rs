//! deb822 control-file syntax (`Packages` indices, `InRelease`, `.deb` control files): a
//! pure parser of paragraphs of `Field: value` lines with continuation lines. First step of
//! the Debian flow (deb822 → release/index → resolve → lock → deb → rootfs).

use std::collections::BTreeMap;

/// One paragraph: fields in file order, looked up case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph {
    /// `(field name as written, value)`; a multi-line value keeps its lines joined by `\n`
    /// with the leading space of each continuation line removed.
    pub fields: Vec<(String, String)>,
    /// 1-based line of the paragraph's first field, for messages.
    pub line: usize,
}

impl Paragraph {
    /// Value of a field (case-insensitive name), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Fields as a map with lowercase names.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    }

    /// The paragraph written back in deb822 syntax (field order kept).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(k);
            out.push(':');
            for (i, l) in v.split('\n').enumerate() {
                if i == 0 {
                    if !l.is_empty() {
                        out.push(' ');
                        out.push_str(l);
                    }
                } else {
                    out.push_str("\n ");
                    out.push_str(if l.is_empty() { "." } else { l });
                }
            }
            out.push('\n');
        }
        out
    }
}

/// A syntax error, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parse every paragraph of `text`. `#` comment lines are skipped; blank lines separate
/// paragraphs; a line starting with a space or tab continues the previous field.
pub fn parse(text: &str) -> Result<Vec<Paragraph>, SyntaxError> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if raw.starts_with('#') {
            continue;
        }
        if raw.starts_with(' ') || raw.starts_with('\t') {
            let Some((_, v)) = cur.fields.last_mut() else {
                return Err(SyntaxError {
                    line,
                    message: "continuation line without a field".into(),
                });
            };
            let l = raw[1..].trim_end();
            v.push('\n');
            if l != "." {
                v.push_str(l);
            }
            continue;
        }
        let Some((k, v)) = raw.split_once(':') else {
            return Err(SyntaxError {
                line,
                message: format!("expected `Field: value`, found {:?}", truncate(raw)),
            });
        };
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(SyntaxError {
                line,
                message: format!("invalid field name {:?}", truncate(k)),
            });
        }
        if cur.fields.is_empty() {
            cur.line = line;
        }
        if cur.get(k).is_some() {
            return Err(SyntaxError {
                line,
                message: format!("field {k} appears twice in one paragraph"),
            });
        }
        cur.fields.push((k.to_string(), v.trim().to_string()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fields_and_continuations() {
        let t = "Package: a\nVersion: 1.0\nDescription: short\n long line\n .\n more\n\n\n# c\nPackage: b\nDepends: x (>= 1),\n y\n";
        let p = parse(t).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].get("package"), Some("a"));
        assert_eq!(p[0].get("Description"), Some("short\nlong line\n\nmore"));
        assert_eq!(p[1].get("Depends"), Some("x (>= 1),\ny"));
        assert_eq!(p[1].line, 10);
        assert_eq!(
            p[0].render(),
            "Package: a\nVersion: 1.0\nDescription: short\n long line\n .\n more\n"
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (t, line, msg) in [
            (" x\n", 1, "continuation"),
            ("Package: a\nno colon here\n", 2, "expected"),
            ("Package: a\nPackage: b\n", 2, "twice"),
            ("Bad name: x\n", 1, "invalid field name"),
        ] {
            let e = parse(t).unwrap_err();
            assert_eq!(e.line, line, "{t:?}");
            assert!(e.message.contains(msg), "{t:?}: {e}");
        }
    }
}
