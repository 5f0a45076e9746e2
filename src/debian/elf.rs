//! The closure check of an image: every `DT_NEEDED` of every dynamically linked ELF file
//! (and its `PT_INTERP`) must resolve inside the image, through the loader's default folders
//! (no `ld.so.cache` is written), `DT_RUNPATH`/`DT_RPATH` (with `$ORIGIN`) and the image's
//! symlinks. Pure over the image's final tree.

use std::collections::BTreeMap;

use crate::oci::{Content, LayerFile};

/// The final file tree of an image: path → entry (the last layer wins).
pub type Tree<'a> = BTreeMap<String, &'a LayerFile>;

/// Build the tree of layers, lowest first.
pub fn tree<'a>(layers: &'a [Vec<LayerFile>]) -> Tree<'a> {
    let mut t = Tree::new();
    for l in layers {
        for f in l {
            t.insert(f.path.clone(), f);
        }
    }
    t
}

/// The loader's default search folders for a Debian architecture (no ld.so.cache).
pub fn default_dirs(arch: &str) -> Vec<String> {
    let triplet = match arch {
        "amd64" => "x86_64-linux-gnu",
        "arm64" => "aarch64-linux-gnu",
        "i386" => "i386-linux-gnu",
        "armhf" => "arm-linux-gnueabihf",
        "ppc64el" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        other => other,
    };
    vec![
        format!("lib/{triplet}"),
        format!("usr/lib/{triplet}"),
        "lib".into(),
        "usr/lib".into(),
        "lib64".into(),
        "usr/lib64".into(),
    ]
}

/// Resolve `path` (relative to the root) through the tree's symlinks; the final path of a
/// regular file (or hard link), or `None`.
pub fn resolve(tree: &Tree, path: &str) -> Option<String> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .rev()
        .collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        cur.push(c);
        let p = cur.join("/");
        match tree.get(&p).map(|f| &f.content) {
            // A folder only implied by the paths below it (layers add such parents).
            None if implied_dir(tree, &p) => {}
            None => return None,
            Some(Content::Symlink(t)) => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                if t.starts_with('/') {
                    cur.clear();
                }
                pending.extend(
                    t.split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .map(String::from)
                        .rev(),
                );
            }
            Some(Content::Dir) => {}
            Some(Content::Bytes(_) | Content::HardLink(_)) => {
                if !pending.is_empty() {
                    return None;
                }
            }
        }
    }
    match tree.get(&cur.join("/")).map(|f| &f.content) {
        Some(Content::Bytes(_) | Content::HardLink(_)) => Some(cur.join("/")),
        _ => None,
    }
}

fn implied_dir(tree: &Tree, p: &str) -> bool {
    let prefix = format!("{p}/");
    tree.range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

/// One unresolved dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The ELF file (`/usr/sbin/haproxy`).
    pub binary: String,
    /// The soname (or interpreter path) not found.
    pub needed: String,
}

/// Check every ELF file of `tree`; `skip` lists path prefixes left unchecked. Returns the
/// misses, sorted; an ELF file that does not parse is a miss of its own.
pub fn check(tree: &Tree, dirs: &[String], skip: &[String]) -> Vec<Missing> {
    let mut out = Vec::new();
    for (path, f) in tree {
        let Content::Bytes(data) = &f.content else {
            continue;
        };
        if !data.starts_with(b"\x7fELF")
            || skip
                .iter()
                .any(|s| path.starts_with(s.trim_start_matches('/')))
        {
            continue;
        }
        let elf = match goblin::elf::Elf::parse(data) {
            Ok(e) => e,
            Err(e) => {
                out.push(Missing {
                    binary: format!("/{path}"),
                    needed: format!("(unreadable ELF: {e})"),
                });
                continue;
            }
        };
        if elf.dynamic.is_none() {
            continue;
        }
        let origin = path.rsplit_once('/').map_or("", |(d, _)| d);
        if let Some(interp) = elf.interpreter {
            if resolve(tree, interp).is_none() {
                out.push(Missing {
                    binary: format!("/{path}"),
                    needed: interp.to_string(),
                });
            }
        }
        let extra: Vec<String> = elf
            .runpaths
            .iter()
            .chain(elf.rpaths.iter())
            .flat_map(|r| r.split(':'))
            .map(|d| {
                d.replace("$ORIGIN", &format!("/{origin}"))
                    .replace("${ORIGIN}", &format!("/{origin}"))
            })
            .collect();
        for lib in &elf.libraries {
            let found = if lib.contains('/') {
                resolve(tree, lib).is_some()
            } else {
                extra
                    .iter()
                    .chain(dirs.iter())
                    .any(|d| resolve(tree, &format!("{d}/{lib}")).is_some())
            };
            if !found {
                out.push(Missing {
                    binary: format!("/{path}"),
                    needed: lib.to_string(),
                });
            }
        }
    }
    out
}

/// The package that usually ships `soname`, by Debian's library naming
/// (`libssl.so.3` → `libssl3`, `libpcre2-8.so.0` → `libpcre2-8-0`).
pub fn package_for_soname(soname: &str) -> Option<String> {
    let (stem, ver) = soname.split_once(".so.")?;
    let ver = ver.split('.').next()?;
    let sep = if stem.ends_with(|c: char| c.is_ascii_digit()) {
        "-"
    } else {
        ""
    };
    Some(
        format!("{stem}{sep}{ver}")
            .to_ascii_lowercase()
            .replace('_', "-"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn f(path: &str, content: Content) -> LayerFile {
        LayerFile {
            path: path.into(),
            content,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let layers = vec![vec![
            f("lib", Content::Symlink("usr/lib".into())),
            f(
                "usr/lib/x/libz.so.1",
                Content::Symlink("libz.so.1.2".into()),
            ),
            f("usr/lib/x/libz.so.1.2", Content::Bytes(Arc::new(vec![1]))),
            f("usr/lib/x/loop", Content::Symlink("loop".into())),
            f(
                "usr/lib/x/up",
                Content::Symlink("../../../../lib/x/libz.so.1".into()),
            ),
        ]];
        let t = tree(&layers);
        assert_eq!(
            resolve(&t, "lib/x/libz.so.1").as_deref(),
            Some("usr/lib/x/libz.so.1.2")
        );
        assert_eq!(
            resolve(&t, "/lib/x/up").as_deref(),
            Some("usr/lib/x/libz.so.1.2")
        );
        assert_eq!(resolve(&t, "lib/x/loop"), None);
        assert_eq!(resolve(&t, "lib/x/none"), None);
    }

    #[test]
    fn the_elf_check_finds_a_missing_library() {
        // This test binary's own needed libraries are not in an empty image.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let layers = vec![vec![f("usr/bin/app", Content::Bytes(Arc::new(me)))]];
        let t = tree(&layers);
        let m = check(&t, &default_dirs("amd64"), &[]);
        assert!(m.iter().any(|m| m.needed == "libc.so.6"), "{m:?}");
        assert!(m.iter().all(|m| m.binary == "/usr/bin/app"));
        assert!(check(&t, &default_dirs("amd64"), &["/usr/bin".into()]).is_empty());
        // With the host's libraries the same binary resolves.
        let mut files = vec![layers[0][0].clone()];
        for m in &m {
            let host = if m.needed.starts_with('/') {
                m.needed.clone()
            } else {
                format!("/lib/x86_64-linux-gnu/{}", m.needed)
            };
            if let Ok(d) = std::fs::read(&host) {
                files.push(f(host.trim_start_matches('/'), Content::Bytes(Arc::new(d))));
            }
        }
        let layers = vec![files];
        let t = tree(&layers);
        let left: Vec<_> = check(&t, &default_dirs("amd64"), &[])
            .into_iter()
            .filter(|m| m.binary == "/usr/bin/app")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn sonames_to_packages() {
        for (s, p) in [
            ("libssl.so.3", "libssl3"),
            ("libpcre2-8.so.0", "libpcre2-8-0"),
            ("libc.so.6", "libc6"),
            ("liblua5.3.so.0", "liblua5.3-0"),
        ] {
            assert_eq!(package_for_soname(s).as_deref(), Some(p), "{s}");
        }
        assert_eq!(package_for_soname("ld-linux-x86-64.so"), None);
    }
}
