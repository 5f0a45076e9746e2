//! The root filesystem of a Debian image, from the read `.deb`s of its lock: entries merged
//! (a path two packages ship with different content is an error naming both), hard links
//! kept within a layer, the merged-/usr root symlinks, `/var/lib/dpkg/status.d/<package>`,
//! `/etc/passwd` and `/etc/group` from the declared users, and the runtime folders. Pure:
//! packages in, layers of [`LayerFile`]s out (shared base packages, the rest, the setup).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::deb::{Deb, Entry, Kind};
use crate::oci::{Content, LayerFile};

/// A user line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Home folder.
    pub home: String,
    /// Shell.
    pub shell: String,
}

/// A group line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Name.
    pub name: String,
    /// gid.
    pub gid: u32,
    /// Members.
    pub members: Vec<String>,
}

/// A runtime folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    /// Relative path.
    pub path: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mode.
    pub mode: u32,
}

/// What the maintainer scripts would have done, declared.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Users besides root.
    pub users: Vec<User>,
    /// Groups besides root (users' own groups are added when missing).
    pub groups: Vec<Group>,
    /// Folders.
    pub dirs: Vec<Dir>,
}

/// One package to install: name and version (for messages), whether it goes in the base
/// layer, and its read `.deb`.
pub struct Input {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// In the shared base layer.
    pub base: bool,
    /// Content.
    pub deb: Deb,
}

/// Two packages ship different content at one path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/{path} is shipped by both {first} and {second} with different content")]
pub struct Conflict {
    /// The path.
    pub path: String,
    /// `name version` of the first package.
    pub first: String,
    /// `name version` of the second.
    pub second: String,
}

/// The image's layers: `[base, packages, setup]` (empty layers left out).
pub fn assemble(inputs: &[Input], setup: &Setup) -> Result<Vec<Vec<LayerFile>>, Conflict> {
    // path → (entry, owner index)
    // Base packages first: what they share with others stays in the base layer, so that the
    // base layer depends on the base packages alone.
    let mut merged: BTreeMap<String, (Entry, usize)> = BTreeMap::new();
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| !inputs[i].base);
    for i in order {
        let inp = &inputs[i];
        for e in &inp.deb.entries {
            match merged.get(&e.path) {
                None => {
                    merged.insert(e.path.clone(), (e.clone(), i));
                }
                Some((old, _)) if old.kind == Kind::Dir && e.kind == Kind::Dir => {}
                Some((old, _)) if same(old, e, &merged) => {}
                Some((_, j)) => {
                    return Err(Conflict {
                        path: e.path.clone(),
                        first: format!("{} {}", inputs[*j].name, inputs[*j].version),
                        second: format!("{} {}", inp.name, inp.version),
                    })
                }
            }
        }
    }
    let mut layers: [Vec<LayerFile>; 3] = Default::default();
    let layer_of = |i: usize| if inputs[i].base { 0 } else { 1 };
    let any_base = inputs.iter().any(|i| i.base);
    let root_layer = if any_base { 0 } else { 1 };
    // The merged-/usr root symlinks, the same in every image (as Debian's own merged-/usr
    // systems have them on amd64), so that base layers of different images are equal.
    for d in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        if ["bin", "sbin", "lib", "lib64"].contains(&d) || merged.contains_key(&format!("usr/{d}"))
        {
            layers[root_layer].push(LayerFile {
                path: d.to_string(),
                content: Content::Symlink(format!("usr/{d}")),
                mode: 0o777,
                uid: 0,
                gid: 0,
            });
        }
    }
    // Hard links stay hard links only within one layer; the first path of a set (in the
    // layer's sorted order) carries the data, so that the tar can be extracted.
    let mut holder: BTreeMap<String, String> = BTreeMap::new();
    for (path, (e, i)) in &merged {
        if let Kind::HardLink(t) = &e.kind {
            if let Some((te, ti)) = merged.get(t) {
                if layer_of(*ti) == layer_of(*i) && matches!(te.kind, Kind::File(_)) {
                    let h = holder.entry(t.clone()).or_insert_with(|| t.clone());
                    if path < h {
                        *h = path.clone();
                    }
                }
            }
        }
    }
    for (path, (e, i)) in &merged {
        let content = match &e.kind {
            Kind::Dir => Content::Dir,
            Kind::Symlink(t) => Content::Symlink(t.clone()),
            Kind::File(d) => match holder.get(path) {
                Some(h) if h != path => Content::HardLink(h.clone()),
                _ => Content::Bytes(d.clone()),
            },
            Kind::HardLink(t) => match (holder.get(t), merged.get(t)) {
                (Some(h), _) if h != path => Content::HardLink(h.clone()),
                (Some(_), Some((te, _))) | (None, Some((te, _))) => match &te.kind {
                    Kind::File(d) => Content::Bytes(d.clone()),
                    _ => unreachable!("hard links name files, checked when read"),
                },
                (_, None) => unreachable!("hard links name earlier files, checked when read"),
            },
        };
        layers[layer_of(*i)].push(LayerFile {
            path: path.clone(),
            content,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        });
    }
    for (i, inp) in inputs.iter().enumerate() {
        let mut text = inp.deb.control.trim_end().to_string();
        if !text.lines().any(|l| l.starts_with("Status:")) {
            text = text.replacen('\n', "\nStatus: install ok installed\n", 1);
        }
        text.push('\n');
        layers[layer_of(i)].push(LayerFile {
            path: format!("var/lib/dpkg/status.d/{}", inp.name),
            content: Content::Bytes(Arc::new(text.into_bytes())),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
    }
    let (passwd, group) = passwd_group(setup);
    for (p, data) in [("etc/passwd", passwd), ("etc/group", group)] {
        layers[2].push(LayerFile {
            path: p.into(),
            content: Content::Bytes(Arc::new(data.into_bytes())),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
    }
    let mut seen = BTreeSet::new();
    for d in &setup.dirs {
        if seen.insert(d.path.clone()) {
            layers[2].push(LayerFile {
                path: d.path.clone(),
                content: Content::Dir,
                mode: d.mode,
                uid: d.uid as u64,
                gid: d.gid as u64,
            });
        }
    }
    Ok(layers.into_iter().filter(|l| !l.is_empty()).collect())
}

/// Whether two entries at one path are the same (bytes, link target, mode and owner).
fn same(a: &Entry, b: &Entry, merged: &BTreeMap<String, (Entry, usize)>) -> bool {
    let bytes = |e: &Entry| -> Option<Arc<Vec<u8>>> {
        match &e.kind {
            Kind::File(d) => Some(d.clone()),
            Kind::HardLink(t) => match merged.get(t).map(|x| &x.0.kind) {
                Some(Kind::File(d)) => Some(d.clone()),
                _ => None,
            },
            _ => None,
        }
    };
    let content = match (&a.kind, &b.kind) {
        (Kind::Symlink(x), Kind::Symlink(y)) => x == y,
        (Kind::Dir, _) | (_, Kind::Dir) | (Kind::Symlink(_), _) | (_, Kind::Symlink(_)) => false,
        _ => bytes(a).is_some() && bytes(a) == bytes(b),
    };
    content && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid
}

/// `/etc/passwd` and `/etc/group` text.
pub fn passwd_group(s: &Setup) -> (String, String) {
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    for u in &s.users {
        passwd.push_str(&format!(
            "{}:x:{}:{}::{}:{}\n",
            u.name, u.uid, u.gid, u.home, u.shell
        ));
    }
    let mut groups: Vec<Group> = vec![Group {
        name: "root".into(),
        gid: 0,
        members: vec![],
    }];
    groups.extend(s.groups.iter().cloned());
    for u in &s.users {
        if !groups.iter().any(|g| g.gid == u.gid) {
            groups.push(Group {
                name: u.name.clone(),
                gid: u.gid,
                members: vec![],
            });
        }
    }
    let group = groups
        .iter()
        .map(|g| format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")))
        .collect();
    (passwd, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File(Arc::new(data.to_vec())),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn input(name: &str, base: bool, entries: Vec<Entry>) -> Input {
        Input {
            name: name.into(),
            version: "1.0".into(),
            base,
            deb: Deb {
                control: format!("Package: {name}\nVersion: 1.0\n"),
                entries,
            },
        }
    }

    fn listing(layers: &[Vec<LayerFile>]) -> String {
        layers
            .iter()
            .map(|l| {
                let mut v: Vec<String> = l
                    .iter()
                    .map(|f| {
                        let c = match &f.content {
                            Content::Dir => "dir".to_string(),
                            Content::Bytes(d) => format!("{} bytes", d.len()),
                            Content::Symlink(t) => format!("-> {t}"),
                            Content::HardLink(t) => format!("=> {t}"),
                        };
                        format!("{} {c} {:o} {}:{}", f.path, f.mode, f.uid, f.gid)
                    })
                    .collect();
                v.sort();
                v.join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n--\n")
    }

    #[test]
    fn layers_links_status_and_users() {
        let mut suid = file("usr/bin/su", b"elf");
        suid.mode = 0o4755;
        let mut shadow = file("usr/bin/chage", b"x");
        shadow.gid = 42;
        let inputs = vec![
            input(
                "libc6",
                true,
                vec![
                    Entry {
                        path: "usr/lib".into(),
                        kind: Kind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                    file("usr/lib/libc.so.6", b"libc"),
                    file("usr/share/doc/same", b"same"),
                ],
            ),
            input(
                "app",
                false,
                vec![
                    Entry {
                        path: "usr/lib".into(),
                        kind: Kind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                    file("usr/share/doc/same", b"same"),
                    file("usr/bin/z", b"data"),
                    Entry {
                        path: "usr/bin/a".into(),
                        kind: Kind::HardLink("usr/bin/z".into()),
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                    suid,
                    shadow,
                ],
            ),
        ];
        let setup = Setup {
            users: vec![User {
                name: "haproxy".into(),
                uid: 101,
                gid: 101,
                home: "/var/lib/haproxy".into(),
                shell: "/usr/sbin/nologin".into(),
            }],
            groups: vec![],
            dirs: vec![Dir {
                path: "run/haproxy".into(),
                uid: 101,
                gid: 101,
                mode: 0o750,
            }],
        };
        let layers = assemble(&inputs, &setup).unwrap();
        assert_eq!(
            listing(&layers),
            "bin -> usr/bin 777 0:0\n\
             lib -> usr/lib 777 0:0\n\
             lib64 -> usr/lib64 777 0:0\n\
             sbin -> usr/sbin 777 0:0\n\
             usr/lib dir 755 0:0\n\
             usr/lib/libc.so.6 4 bytes 644 0:0\n\
             usr/share/doc/same 4 bytes 644 0:0\n\
             var/lib/dpkg/status.d/libc6 57 bytes 644 0:0\n\
             --\n\
             usr/bin/a 4 bytes 644 0:0\n\
             usr/bin/chage 1 bytes 644 0:42\n\
             usr/bin/su 3 bytes 4755 0:0\n\
             usr/bin/z => usr/bin/a 644 0:0\n\
             var/lib/dpkg/status.d/app 55 bytes 644 0:0\n\
             --\n\
             etc/group 25 bytes 644 0:0\n\
             etc/passwd 84 bytes 644 0:0\n\
             run/haproxy dir 750 101:101"
        );
        let (p, g) = passwd_group(&setup);
        assert_eq!(p, "root:x:0:0:root:/root:/bin/sh\nhaproxy:x:101:101::/var/lib/haproxy:/usr/sbin/nologin\n");
        assert_eq!(g, "root:x:0:\nhaproxy:x:101:\n");
        // The layers are valid tars (hard link after its target).
        for l in &layers {
            crate::oci::layer_tar(l, 0).unwrap();
        }
    }

    #[test]
    fn the_base_layer_depends_on_the_base_packages_alone() {
        let libc = || {
            input(
                "libc6",
                true,
                vec![
                    file("usr/lib/libc.so.6", b"libc"),
                    file("usr/share/doc/x", b"x"),
                ],
            )
        };
        let a = assemble(
            &[
                input("aaa", false, vec![file("usr/share/doc/x", b"x")]),
                libc(),
            ],
            &Setup::default(),
        )
        .unwrap();
        let b = assemble(
            &[libc(), input("zzz", false, vec![file("usr/bin/z", b"z")])],
            &Setup::default(),
        )
        .unwrap();
        assert_eq!(
            crate::oci::layer_tar(&a[0], 0).unwrap(),
            crate::oci::layer_tar(&b[0], 0).unwrap()
        );
    }

    #[test]
    fn different_content_at_one_path_names_both_packages() {
        let inputs = vec![
            input("a", false, vec![file("usr/bin/x", b"1")]),
            input("b", false, vec![file("usr/bin/x", b"2")]),
        ];
        let e = assemble(&inputs, &Setup::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/usr/bin/x is shipped by both a 1.0 and b 1.0 with different content"
        );
        // Same bytes but another mode is different content too.
        let mut x = file("usr/bin/x", b"1");
        x.mode = 0o755;
        let inputs = vec![
            input("a", false, vec![file("usr/bin/x", b"1")]),
            input("b", false, vec![x]),
        ];
        assert!(assemble(&inputs, &Setup::default()).is_err());
    }
}
