//! Site parameters: the per-site values a bundle declares (public host name, replicas, ports,
//! allowed IP ranges, …), their types and validation, the site file, and compose-style
//! `${NAME}` interpolation of the stack text on the host. Pure: no engine, no state.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Type of a site parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    /// Any text (one line).
    String,
    /// A DNS host name (RFC 1123 labels) or an IP address.
    Hostname,
    /// An IPv4 or IPv6 address.
    Ip,
    /// Comma-separated CIDR ranges, e.g. `10.0.0.0/8,192.168.1.0/24`.
    CidrList,
    /// A TCP/UDP port, 1–65535.
    Port,
    /// A signed integer.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A duration such as `10s`, `5m`, `1h30m`.
    Duration,
}

impl ParamType {
    /// What a value of this type looks like, for messages.
    pub fn expected(self) -> &'static str {
        match self {
            ParamType::String => "a single line of text",
            ParamType::Hostname => "a host name (letters, digits, '-', dots) or an IP address",
            ParamType::Ip => "an IPv4 or IPv6 address",
            ParamType::CidrList => {
                "comma-separated addresses or CIDR ranges such as 10.1.1.1,192.168.1.0/24"
            }
            ParamType::Port => "a port number from 1 to 65535",
            ParamType::Integer => "an integer",
            ParamType::Boolean => "true or false",
            ParamType::Duration => "a duration such as 10s, 5m or 1h30m",
        }
    }

    /// Check `value` and give its canonical text (what is interpolated and stored).
    pub fn check(self, value: &str) -> Result<String, String> {
        let v = value.trim();
        let bad = || Err(format!("expected {}", self.expected()));
        match self {
            ParamType::String => {
                if value.contains('\n') || value.contains('\r') {
                    return bad();
                }
                Ok(value.to_string())
            }
            ParamType::Hostname => {
                if v.parse::<IpAddr>().is_ok() || is_hostname(v) {
                    Ok(v.to_ascii_lowercase())
                } else {
                    bad()
                }
            }
            ParamType::Ip => v
                .parse::<IpAddr>()
                .map(|a| a.to_string())
                .or_else(|_| bad()),
            ParamType::CidrList => {
                let mut out = Vec::new();
                for part in v.split(',').map(str::trim) {
                    match cidr(part) {
                        Some(c) => out.push(c),
                        None => {
                            return Err(format!(
                                "{part:?} is not an address or a CIDR range; expected {}",
                                self.expected()
                            ))
                        }
                    }
                }
                Ok(out.join(","))
            }
            ParamType::Port => match v.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p.to_string()),
                _ => bad(),
            },
            ParamType::Integer => v.parse::<i64>().map(|n| n.to_string()).or_else(|_| bad()),
            ParamType::Boolean => match v {
                "true" | "false" => Ok(v.to_string()),
                _ => bad(),
            },
            ParamType::Duration => match crate::stack::parse_duration(v) {
                Ok(_) => Ok(v.to_string()),
                Err(_) => bad(),
            },
        }
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Canonical `addr/len` of a CIDR range (the address masked), or None. A bare address is
/// the range of that address alone (seed 001 writes `10.1.1.1,10.2.2.0/24`).
fn cidr(s: &str) -> Option<String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a: IpAddr = s.parse().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    match addr {
        IpAddr::V4(a) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Some(format!(
                "{}/{len}",
                std::net::Ipv4Addr::from(u32::from(a) & mask)
            ))
        }
        IpAddr::V6(a) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            Some(format!(
                "{}/{len}",
                std::net::Ipv6Addr::from(u128::from(a) & mask)
            ))
        }
        _ => None,
    }
}

/// A parameter as a bundle declares it (in the bundle definition and in `bundle.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// Name, as used in `${NAME}` (letters, digits, `_`; starts with a letter or `_`).
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Default value (canonical text); none for a required parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Whether a site must give a value (only without a default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Whether the value is secret: masked in `status`, `generations`, plans and logs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Whether `name` can be a parameter name (an environment variable name).
pub fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Check a declaration: name, default of the declared type, required without default.
pub fn check_declaration(p: &Parameter) -> Result<Parameter, String> {
    if !valid_name(&p.name) {
        return Err(format!(
            "parameter name {:?}: use letters, digits and '_', starting with a letter",
            p.name
        ));
    }
    let mut p = p.clone();
    match (&p.default, p.required) {
        (Some(_), true) => {
            return Err(format!(
                "parameter {}: a required parameter has no default",
                p.name
            ))
        }
        (None, false) => {
            return Err(format!(
                "parameter {}: give a default or say `required = true`",
                p.name
            ))
        }
        _ => {}
    }
    if let Some(d) = &p.default {
        p.default = Some(
            p.kind
                .check(d)
                .map_err(|e| format!("parameter {}: default {d:?}: {e}", p.name))?,
        );
    }
    Ok(p)
}

/// Values to check a template with at build time: each default, else a sample of its type.
pub fn sample_values(params: &[Parameter]) -> BTreeMap<String, SiteValue> {
    params
        .iter()
        .map(|p| {
            let sample = match p.kind {
                ParamType::String => "x",
                ParamType::Hostname => "site.example",
                ParamType::Ip => "192.0.2.1",
                ParamType::CidrList => "192.0.2.0/24",
                ParamType::Port => "1",
                ParamType::Integer => "1",
                ParamType::Boolean => "true",
                ParamType::Duration => "1s",
            };
            let value = p.default.clone().unwrap_or_else(|| sample.to_string());
            (
                p.name.clone(),
                SiteValue {
                    value,
                    secret: p.secret,
                    origin: "default".into(),
                },
            )
        })
        .collect()
}

/// A value given by the site, with where it came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    /// The value as written.
    pub value: String,
    /// `site.toml`, `--set`, or `generation 3`.
    pub origin: String,
}

/// The text of a TOML value given for a parameter (a site file's value or a declared
/// default): a string, integer or boolean as written, an array of strings joined with commas
/// (CIDR lists).
pub fn toml_text(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(","))
            .ok_or_else(|| "an array must hold strings".to_string()),
        other => Err(format!(
            "a {} is not a parameter value (use a string, integer, boolean or array of strings)",
            other.type_str()
        )),
    }
}

/// The values of a site file: `NAME = value` lines of TOML (see [`toml_text`]).
pub fn parse_site_file(text: &str, origin: &str) -> Result<BTreeMap<String, Given>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("{origin}: {e}"))?;
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let value = toml_text(&v).map_err(|e| format!("{origin}: {k}: {e}"))?;
        out.insert(
            k,
            Given {
                value,
                origin: origin.to_string(),
            },
        );
    }
    Ok(out)
}

/// `NAME=VALUE` of `--set`.
pub fn parse_set(arg: &str) -> Result<(String, Given), String> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| format!("--set {arg:?}: expected NAME=VALUE"))?;
    Ok((
        k.trim().to_string(),
        Given {
            value: v.to_string(),
            origin: "--set".into(),
        },
    ))
}

/// A resolved value and whether it is secret. Two values are equal when their text and
/// secrecy are (where they came from does not make a new generation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteValue {
    /// Canonical text.
    pub value: String,
    /// Masked when shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// Where it came from: `default`, a site file, `--set`, `kept` (from the current
    /// generation). Not stored.
    #[serde(skip)]
    pub origin: String,
}

impl PartialEq for SiteValue {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value && self.secret == other.secret
    }
}

impl Eq for SiteValue {}

/// What changes between two sets of values, as lines for a plan (secrets masked).
pub fn changes(
    old: &BTreeMap<String, SiteValue>,
    new: &BTreeMap<String, SiteValue>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            Some(o) if o == v => {}
            Some(o) => out.push(format!(
                "site value {k}: {} -> {} ({})",
                o.shown(),
                v.shown(),
                v.origin
            )),
            None => out.push(format!("site value {k} = {} ({})", v.shown(), v.origin)),
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(format!("site value {k}: no longer declared"));
    }
    out
}

impl SiteValue {
    /// The value as shown to operators (`********` for a secret).
    pub fn shown(&self) -> &str {
        if self.secret {
            "********"
        } else {
            &self.value
        }
    }
}

/// The values of a site: for each declared parameter the site's value — given in `layers`
/// (the site file, then `--set`; later layers win), else `kept` from the current generation
/// (values of parameters the bundle no longer declares are dropped) —, else its default.
/// Unknown names, missing required values and values of the wrong type are errors naming the
/// parameter, the value and what was expected.
pub fn resolve(
    params: &[Parameter],
    kept: &BTreeMap<String, SiteValue>,
    layers: &[BTreeMap<String, Given>],
) -> Result<BTreeMap<String, SiteValue>, String> {
    let mut given: BTreeMap<String, Given> = kept
        .iter()
        .filter(|(k, _)| params.iter().any(|p| &p.name == *k))
        .map(|(k, v)| {
            let g = Given {
                value: v.value.clone(),
                origin: "kept".into(),
            };
            (k.clone(), g)
        })
        .collect();
    for layer in layers {
        for (k, g) in layer {
            if !params.iter().any(|p| &p.name == k) {
                let close: Vec<&str> = params
                    .iter()
                    .map(|p| p.name.as_str())
                    .filter(|n| similar(n, k))
                    .collect();
                let hint = if close.is_empty() {
                    let all: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
                    if all.is_empty() {
                        " (the bundle declares no parameters)".to_string()
                    } else {
                        format!(" (the bundle declares {})", all.join(", "))
                    }
                } else {
                    format!(" (did you mean {}?)", close.join(" or "))
                };
                return Err(format!("{}: unknown parameter {k}{hint}", g.origin));
            }
            given.insert(k.clone(), g.clone());
        }
    }
    let mut out = BTreeMap::new();
    for p in params {
        let (value, origin) = match (given.get(&p.name), &p.default) {
            (Some(g), _) => {
                let v = p.kind.check(&g.value).map_err(|e| {
                    let shown = if p.secret {
                        "********"
                    } else {
                        g.value.as_str()
                    };
                    format!("{}: parameter {} = {shown:?}: {e}", g.origin, p.name)
                })?;
                (v, g.origin.clone())
            }
            (None, Some(d)) => (d.clone(), "default".to_string()),
            (None, None) => {
                return Err(format!(
                    "parameter {} is required ({}{}): give it in the site file or with --set {}=…",
                    p.name,
                    p.kind.expected(),
                    if p.description.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", p.description)
                    },
                    p.name
                ))
            }
        };
        out.insert(
            p.name.clone(),
            SiteValue {
                value,
                secret: p.secret,
                origin,
            },
        );
    }
    Ok(out)
}

fn similar(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    a.contains(&b) || b.contains(&a) || edit_distance(&a, &b) <= 2
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The `${NAME}` references of a text, with their byte offsets (`$$` is an escaped `$`).
pub fn references(text: &str) -> Result<Vec<(usize, String)>, (usize, String)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => {
                let end = text[i..]
                    .find('}')
                    .map(|e| i + e)
                    .ok_or((i, "`${` without a closing `}`".to_string()))?;
                let name = &text[i + 2..end];
                if !valid_name(name) {
                    return Err((
                        i,
                        format!(
                            "${{{name}}}: only ${{NAME}} is supported (no defaults or modifiers: declare a default on the parameter)"
                        ),
                    ));
                }
                out.push((i, name.to_string()));
                i = end + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                return Err((
                    i,
                    "write $NAME as ${NAME} (or $$ for a literal $)".to_string(),
                ))
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// Replace every `${NAME}` with its value and `$$` with `$`, as `docker stack deploy` does
/// with the variables exported. Every reference must have a value.
pub fn interpolate(
    text: &str,
    values: &BTreeMap<String, SiteValue>,
) -> Result<String, (usize, String)> {
    let refs = references(text)?;
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, name) in refs {
        let v = values
            .get(&name)
            .ok_or((at, format!("${{{name}}} is not a declared parameter")))?;
        out.push_str(&unescape(&text[last..at]));
        out.push_str(&v.value);
        last = at + name.len() + 3;
    }
    out.push_str(&unescape(&text[last..]));
    Ok(out)
}

fn unescape(s: &str) -> String {
    s.replace("$$", "$")
}

/// Walk every string value of a YAML document (not keys, not comments: compose interpolates
/// values after parsing), with its key path.
fn walk_strings(
    v: &mut serde_yaml::Value,
    path: &mut Vec<String>,
    f: &mut dyn FnMut(&str, &mut serde_yaml::Value) -> Result<(), String>,
) -> Result<(), String> {
    use serde_yaml::Value;
    match v {
        Value::String(_) => f(&path.join("."), v),
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                walk_strings(item, path, f)?;
                path.pop();
            }
            Ok(())
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                path.push(match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                });
                walk_strings(item, path, f)?;
                path.pop();
            }
            Ok(())
        }
        Value::Tagged(t) => walk_strings(&mut t.value, path, f),
        _ => Ok(()),
    }
}

/// Every `${NAME}` used in the values of a YAML document, with the key path of the value.
pub fn yaml_references(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    walk_strings(&mut doc, &mut Vec::new(), &mut |path, v| {
        let s = v.as_str().unwrap_or_default();
        for (_, name) in references(s).map_err(|(_, e)| format!("{path}: {e}"))? {
            out.push((path.to_string(), name));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Interpolate the values of a compose document as `docker stack deploy` does with the
/// variables exported: in every string value `${NAME}` becomes its value and `$$` a `$`; a
/// value that is exactly one `${NAME}` takes the type its text has (so `replicas: ${N}`
/// becomes a number). Returns the document as YAML text (comments are not kept).
pub fn interpolate_yaml(
    text: &str,
    values: &BTreeMap<String, SiteValue>,
) -> Result<String, String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    walk_strings(&mut doc, &mut Vec::new(), &mut |path, v| {
        let s = v.as_str().unwrap_or_default().to_string();
        let whole = references(&s)
            .map_err(|(_, e)| format!("{path}: {e}"))?
            .first()
            .is_some_and(|(at, name)| *at == 0 && s.len() == name.len() + 3);
        let new = interpolate(&s, values).map_err(|(_, e)| format!("{path}: {e}"))?;
        *v = if whole {
            match serde_yaml::from_str::<serde_yaml::Value>(&new) {
                Ok(scalar @ (serde_yaml::Value::Number(_) | serde_yaml::Value::Bool(_))) => scalar,
                _ => serde_yaml::Value::String(new),
            }
        } else {
            serde_yaml::Value::String(new)
        };
        Ok(())
    })?;
    serde_yaml::to_string(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, kind: ParamType, default: Option<&str>) -> Parameter {
        Parameter {
            name: name.into(),
            kind,
            default: default.map(String::from),
            required: default.is_none(),
            secret: false,
            description: String::new(),
        }
    }

    #[test]
    fn types_check_and_normalise() {
        use ParamType::*;
        let ok = [
            (Hostname, "Relay.Example.ORG", "relay.example.org"),
            (Hostname, "127.0.0.1", "127.0.0.1"),
            (Ip, "::1", "::1"),
            (
                CidrList,
                "10.1.2.3/8, 192.168.1.0/24",
                "10.0.0.0/8,192.168.1.0/24",
            ),
            (CidrList, "10.1.1.1,10.2.2.0/24", "10.1.1.1/32,10.2.2.0/24"),
            (CidrList, "fd00::1", "fd00::1/128"),
            (Port, "8443", "8443"),
            (Integer, "-3", "-3"),
            (Boolean, "true", "true"),
            (Duration, "1m30s", "1m30s"),
            (String, "any text", "any text"),
        ];
        for (t, v, want) in ok {
            assert_eq!(t.check(v).as_deref(), Ok(want), "{t:?} {v}");
        }
        let bad = [
            (Hostname, "-bad-.example"),
            (Hostname, "a b"),
            (Ip, "300.1.1.1"),
            (CidrList, "10.0.0.0/33"),
            (CidrList, "10.0.0.300"),
            (Port, "0"),
            (Port, "70000"),
            (Integer, "1.5"),
            (Boolean, "yes"),
            (Duration, "10"),
            (String, "two\nlines"),
        ];
        for (t, v) in bad {
            assert!(t.check(v).is_err(), "{t:?} {v} accepted");
        }
        assert_eq!(
            Port.check("0").unwrap_err(),
            "expected a port number from 1 to 65535"
        );
        assert_eq!(
            CidrList.check("10.0.0.0/8,nope").unwrap_err(),
            "\"nope\" is not an address or a CIDR range; expected comma-separated addresses or CIDR ranges such as 10.1.1.1,192.168.1.0/24"
        );
    }

    #[test]
    fn declarations_are_checked() {
        assert!(check_declaration(&p("9X", ParamType::Port, Some("1"))).is_err());
        assert_eq!(
            check_declaration(&p("PORT", ParamType::Port, Some("0"))).unwrap_err(),
            "parameter PORT: default \"0\": expected a port number from 1 to 65535"
        );
        let mut q = p("X", ParamType::Port, Some("1"));
        q.required = true;
        assert!(check_declaration(&q).is_err());
        q.required = false;
        q.default = None;
        assert!(check_declaration(&q).is_err());
    }

    #[test]
    fn resolution_layers_and_errors() {
        let params = vec![
            p("PUBLIC_HOST", ParamType::Hostname, None),
            p("RELAY_PORT", ParamType::Port, Some("8443")),
            Parameter {
                secret: true,
                ..p("ADMIN_TOKEN", ParamType::String, Some("x"))
            },
        ];
        let site = parse_site_file(
            "PUBLIC_HOST = \"relay.example.org\"\nRELAY_PORT = 9443\n",
            "site.toml",
        )
        .unwrap();
        let set = BTreeMap::from([parse_set("RELAY_PORT=10443").unwrap()]);
        let none = BTreeMap::new();
        let v = resolve(&params, &none, &[site.clone(), set]).unwrap();
        assert_eq!(v["PUBLIC_HOST"].value, "relay.example.org");
        assert_eq!(v["RELAY_PORT"].value, "10443");
        assert_eq!(v["RELAY_PORT"].origin, "--set");
        assert_eq!(v["ADMIN_TOKEN"].origin, "default");
        assert_eq!(v["ADMIN_TOKEN"].shown(), "********");

        assert_eq!(
            resolve(&params, &none, &[]).unwrap_err(),
            "parameter PUBLIC_HOST is required (a host name (letters, digits, '-', dots) or an IP address): give it in the site file or with --set PUBLIC_HOST=…"
        );
        let typo = BTreeMap::from([parse_set("RELAY_PROT=1").unwrap()]);
        assert_eq!(
            resolve(&params, &none, &[site.clone(), typo]).unwrap_err(),
            "--set: unknown parameter RELAY_PROT (did you mean RELAY_PORT?)"
        );
        let wrong = parse_site_file("PUBLIC_HOST = \"a b\"", "site.toml").unwrap();
        assert_eq!(
            resolve(&params, &none, &[wrong]).unwrap_err(),
            "site.toml: parameter PUBLIC_HOST = \"a b\": expected a host name (letters, digits, '-', dots) or an IP address"
        );
        let secret = BTreeMap::from([parse_set("ADMIN_TOKEN=two\nlines").unwrap()]);
        let e = resolve(&params, &none, &[site.clone(), secret]).unwrap_err();
        assert!(!e.contains("two") && e.contains("********"), "{e}");
        // kept values stay unless given again; one the bundle no longer declares is dropped
        let kept = BTreeMap::from([
            ("OLD".to_string(), v["RELAY_PORT"].clone()),
            ("RELAY_PORT".to_string(), v["RELAY_PORT"].clone()),
        ]);
        let again = resolve(&params, &kept, std::slice::from_ref(&site)).unwrap();
        assert!(!again.contains_key("OLD"));
        assert_eq!(
            again["RELAY_PORT"].value, "9443",
            "the site file wins over kept"
        );
        let only_kept = resolve(&params, &kept, &[]).unwrap_err();
        assert!(only_kept.contains("PUBLIC_HOST is required"), "{only_kept}");
        let mut kept_host = kept.clone();
        kept_host.insert("PUBLIC_HOST".into(), v["PUBLIC_HOST"].clone());
        let k = resolve(&params, &kept_host, &[]).unwrap();
        assert_eq!(
            (
                k["RELAY_PORT"].value.as_str(),
                k["RELAY_PORT"].origin.as_str()
            ),
            ("10443", "kept")
        );
        assert!(parse_site_file("X = 1.5", "s.toml")
            .unwrap_err()
            .contains("s.toml: X: a float is not a parameter value"));
    }

    #[test]
    fn interpolation_is_compose_style() {
        let values = BTreeMap::from([(
            "PORT".to_string(),
            SiteValue {
                value: "8443".into(),
                secret: false,
                origin: "default".into(),
            },
        )]);
        assert_eq!(
            interpolate("published: ${PORT} # $$HOME ${PORT}", &values).unwrap(),
            "published: 8443 # $HOME 8443"
        );
        assert_eq!(
            interpolate("x: ${NOPE}", &values).unwrap_err(),
            (3, "${NOPE} is not a declared parameter".to_string())
        );
        assert!(references("${PORT:-1}")
            .unwrap_err()
            .1
            .contains("only ${NAME}"));
        assert!(references("$PORT").unwrap_err().1.contains("${NAME}"));
        assert!(references("${PORT").is_err());
        assert_eq!(references("a $ b $1").unwrap(), vec![]);
    }

    #[test]
    fn yaml_values_are_interpolated_with_their_types() {
        let values: BTreeMap<String, SiteValue> = [("N", "3"), ("HOST", "relay.example.org")]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    SiteValue {
                        value: v.into(),
                        secret: false,
                        origin: "default".into(),
                    },
                )
            })
            .collect();
        let text = "# ${image:x} in a comment is not a reference\nservices:\n  web:\n    deploy:\n      replicas: ${N}\n    environment:\n      URL: https://${HOST}:$${N}\n";
        let out = interpolate_yaml(text, &values).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(
            v["services"]["web"]["deploy"]["replicas"],
            serde_yaml::Value::from(3)
        );
        assert_eq!(
            v["services"]["web"]["environment"]["URL"],
            serde_yaml::Value::from("https://relay.example.org:${N}")
        );
        assert_eq!(
            yaml_references(text).unwrap(),
            vec![
                ("services.web.deploy.replicas".to_string(), "N".to_string()),
                (
                    "services.web.environment.URL".to_string(),
                    "HOST".to_string()
                )
            ]
        );
        assert_eq!(
            interpolate_yaml("a: ${MISSING}\n", &values).unwrap_err(),
            "a: ${MISSING} is not a declared parameter"
        );
    }
}
