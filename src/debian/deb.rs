//! Reading one `.deb` in Rust (no dpkg): the `ar` members, `control.tar.*` for the control
//! file and `data.tar.*` (xz, zstd, gzip or plain) for the files, normalised to a merged-/usr
//! root. Entries that would leave the root, links pointing outside it and hard links to
//! nothing are refused, naming the package and the entry.

use std::io::Read;
use std::sync::Arc;

/// Top-level folders that merged /usr moves under `usr/`.
pub const MERGED: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Regular file bytes.
    File(Arc<Vec<u8>>),
    /// Folder.
    Dir,
    /// Symbolic link (target as it must be written).
    Symlink(String),
    /// Hard link to an earlier regular file of the same package (normalised path).
    HardLink(String),
}

/// One entry of a data tar, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path in the image (`usr/bin/haproxy`).
    pub path: String,
    /// Content.
    pub kind: Kind,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
}

/// A read `.deb`.
#[derive(Debug, Clone)]
pub struct Deb {
    /// The `control` file of `control.tar.*`.
    pub control: String,
    /// Data entries in archive order (the root folder itself left out).
    pub entries: Vec<Entry>,
}

/// Normalise a tar path to a relative, merged-/usr path; `Ok(None)` for the root itself.
pub fn normalize_path(raw: &str) -> Result<Option<String>, String> {
    let parts = components(raw)?;
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(merge(&parts).join("/")))
}

fn components(raw: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("entry {raw:?} escapes the root")),
            c => parts.push(c),
        }
    }
    Ok(parts)
}

fn merge<'a>(parts: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(parts.len() + 1);
    if parts.first().is_some_and(|p| MERGED.contains(p)) {
        out.push("usr");
    }
    out.extend_from_slice(parts);
    out
}

/// Resolve `..` and `.` of `target` relative to folder `base` (components), refusing to go
/// above the root.
fn resolve_lexically<'a>(
    base: &[&'a str],
    target: &'a str,
    what: &str,
) -> Result<Vec<&'a str>, String> {
    let mut cur: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        base.to_vec()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if cur.pop().is_none() {
                    return Err(format!("{what} points outside the root ({target:?})"));
                }
            }
            c => cur.push(c),
        }
    }
    Ok(cur)
}

/// The target a symlink at original path `raw` (tar path) must have in the merged tree:
/// unchanged unless the link itself moved under `usr/` and its target is relative, then
/// re-expressed relative to its new folder. Refuses targets above the root.
pub fn link_target(raw: &str, target: &str) -> Result<String, String> {
    let parts = components(raw)?;
    let what = format!("symlink {raw:?}");
    if target.is_empty() {
        return Err(format!("{what} has an empty target"));
    }
    let parent = &parts[..parts.len().saturating_sub(1)];
    let resolved = resolve_lexically(parent, target, &what)?;
    let moved = parts.first().is_some_and(|p| MERGED.contains(p));
    if target.starts_with('/') || !moved {
        return Ok(target.to_string());
    }
    let new_parent = merge(parent);
    let dest = merge(&resolved);
    let common = new_parent
        .iter()
        .zip(&dest)
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel: Vec<&str> = vec![".."; new_parent.len() - common];
    rel.extend_from_slice(&dest[common..]);
    if rel.is_empty() {
        rel.push(".");
    }
    Ok(rel.join("/"))
}

/// A `.deb` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{deb}: {message}")]
pub struct DebError {
    /// Which `.deb` (package, version, file).
    pub deb: String,
    /// What is wrong.
    pub message: String,
}

fn decoder<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    Ok(if name.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(data))
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(data))
    } else if name.ends_with(".zst") {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| format!("{name}: not zstd ({e})"))?,
        )
    } else if name.ends_with(".tar") {
        Box::new(data)
    } else {
        return Err(format!("unsupported member {name}"));
    })
}

/// Read a `.deb` from its bytes; `what` names it in errors.
pub fn read(bytes: &[u8], what: &str) -> Result<Deb, DebError> {
    let err = |m: String| DebError {
        deb: what.to_string(),
        message: m,
    };
    let mut ar = ar::Archive::new(bytes);
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(m) = ar.next_entry() {
        let mut m = m.map_err(|e| err(format!("corrupt or truncated ar archive: {e}")))?;
        let name = String::from_utf8_lossy(m.header().identifier()).into_owned();
        let mut data = Vec::new();
        m.read_to_end(&mut data)
            .map_err(|e| err(format!("corrupt or truncated member {name}: {e}")))?;
        if data.len() as u64 != m.header().size() {
            return Err(err(format!("truncated member {name}")));
        }
        members.push((name, data));
    }
    match members.first() {
        Some((n, d)) if n == "debian-binary" && d.starts_with(b"2.") => {}
        _ => {
            return Err(err(
                "not a Debian package (no debian-binary 2.x first)".into()
            ))
        }
    }
    let find = |prefix: &str| {
        members
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .ok_or_else(|| err(format!("no {prefix}* member (truncated?)")))
    };
    let (cname, cdata) = find("control.tar")?;
    let mut control = None;
    let mut ctar = tar::Archive::new(decoder(cname, cdata).map_err(err)?);
    for e in ctar
        .entries()
        .map_err(|e| err(format!("{cname}: corrupt: {e}")))?
    {
        let mut e = e.map_err(|e| err(format!("{cname}: corrupt or truncated: {e}")))?;
        let p = e.path_bytes().into_owned();
        if p == b"./control" || p == b"control" {
            let mut s = String::new();
            e.read_to_string(&mut s)
                .map_err(|e| err(format!("{cname}: control: {e}")))?;
            control = Some(s);
        }
    }
    let control = control.ok_or_else(|| err(format!("{cname} has no control file")))?;
    let (dname, ddata) = find("data.tar")?;
    let mut entries = Vec::new();
    let mut files = std::collections::BTreeSet::new();
    let mut dtar = tar::Archive::new(decoder(dname, ddata).map_err(err)?);
    for e in dtar
        .entries()
        .map_err(|e| err(format!("{dname}: corrupt: {e}")))?
    {
        let mut e = e.map_err(|e| err(format!("{dname}: corrupt or truncated: {e}")))?;
        let raw = String::from_utf8(e.path_bytes().into_owned())
            .map_err(|_| err(format!("{dname}: an entry name is not UTF-8")))?;
        let at = |m: String| err(format!("{dname}: {m}"));
        let Some(path) = normalize_path(&raw).map_err(at)? else {
            continue;
        };
        let h = e.header();
        let mode = h.mode().map_err(|x| at(format!("{raw}: bad mode: {x}")))? & 0o7777;
        let uid = h.uid().map_err(|x| at(format!("{raw}: bad uid: {x}")))?;
        let gid = h.gid().map_err(|x| at(format!("{raw}: bad gid: {x}")))?;
        let link = || -> Result<String, DebError> {
            let l = e
                .link_name_bytes()
                .ok_or_else(|| at(format!("link {raw} has no target")))?;
            String::from_utf8(l.into_owned())
                .map_err(|_| at(format!("link {raw}: target is not UTF-8")))
        };
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(h.size().unwrap_or(0) as usize);
                e.read_to_end(&mut data)
                    .map_err(|x| at(format!("{raw}: corrupt or truncated: {x}")))?;
                files.insert(path.clone());
                Kind::File(Arc::new(data))
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link_target(&raw, &link()?).map_err(at)?),
            tar::EntryType::Link => {
                let t = link()?;
                let target = normalize_path(&t)
                    .map_err(|m| at(format!("hard link {raw}: {m}")))?
                    .ok_or_else(|| at(format!("hard link {raw} points to the root")))?;
                if !files.contains(&target) {
                    return Err(at(format!(
                        "hard link {raw} points to {t:?}, which is not an earlier file of this package"
                    )));
                }
                Kind::HardLink(target)
            }
            other => {
                return Err(at(format!(
                    "{raw}: unsupported entry type {other:?} (only files, folders and links)"
                )))
            }
        };
        entries.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(Deb { control, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_merged_and_checked() {
        for (raw, want) in [
            ("./bin/sh", Some("usr/bin/sh")),
            (
                "./lib64/ld-linux-x86-64.so.2",
                Some("usr/lib64/ld-linux-x86-64.so.2"),
            ),
            ("./usr/lib/x", Some("usr/lib/x")),
            ("./etc/haproxy/", Some("etc/haproxy")),
            ("./", None),
            ("/sbin", Some("usr/sbin")),
            ("./binaries/x", Some("binaries/x")),
        ] {
            assert_eq!(normalize_path(raw).unwrap().as_deref(), want, "{raw}");
        }
        assert!(normalize_path("./../etc/passwd")
            .unwrap_err()
            .contains("escapes"));
        assert!(normalize_path("./a/../../b").is_err());
    }

    #[test]
    fn symlink_targets() {
        for (raw, target, want) in [
            // Unmoved links keep their target: the root symlinks make it work.
            (
                "./usr/bin/awk",
                "/etc/alternatives/awk",
                "/etc/alternatives/awk",
            ),
            (
                "./usr/lib/x/libz.so",
                "../../../lib/x/libz.so.1",
                "../../../lib/x/libz.so.1",
            ),
            // A moved link with a relative target is rewritten for its new folder.
            ("./lib/x/libz.so", "libz.so.1", "libz.so.1"),
            ("./lib/x/a", "../../usr/share/a", "../../share/a"),
            ("./bin/sh", "dash", "dash"),
            ("./bin/x", "../etc/x", "../../etc/x"),
        ] {
            assert_eq!(link_target(raw, target).unwrap(), want, "{raw} -> {target}");
        }
        assert!(link_target("./etc/x", "../../outside")
            .unwrap_err()
            .contains("points outside the root"));
        assert!(link_target("./x", "/../../y").is_err());
    }
}
