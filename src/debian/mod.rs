//! Images from pinned Debian packages. The flow: a recipe's `[debian]` section →
//! `lock` (mirror → verified `InRelease` → checked `Packages` index → resolved closure →
//! `.deb`s fetched, checked and kept in the store → `<recipe>.lock.json`) → offline build
//! (each locked `.deb` read from the store, extracted in Rust into a merged-/usr root,
//! closure-checked, layered) → SPDX SBOM (`crate::sbom`). Network access happens only in `lock` and
//! `fetch`, through [`mirror`].

pub mod deb;
pub mod deb822;
pub mod elf;
pub mod index;
pub mod lock;
pub mod mirror;
pub mod release;
pub mod resolve;
pub mod rootfs;
pub mod version;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::hash::sha256_hex;
use crate::oci::LayerFile;
use crate::recipe::{DebianSpec, Recipe, RecipeKind};
use crate::store::Store;
use lock::{Lock, LockRequest, LockSource, LockedPackage};

/// The `[debian]` section of an image recipe, or an error saying it has none.
pub fn spec_of(r: &Recipe) -> Result<&DebianSpec> {
    match &r.kind {
        RecipeKind::Image(img) => img.debian.as_ref().with_context(|| {
            format!(
                "{}: an image recipe without a [debian] section has nothing to lock",
                r.path.display()
            )
        }),
        other => bail!(
            "{}: {} has no [debian] section (only image recipes do)",
            r.path.display(),
            other.described()
        ),
    }
}

/// What of `spec` decides the closure (recorded in the lock).
pub fn request_of(spec: &DebianSpec) -> LockRequest {
    LockRequest {
        suites: spec.suites.clone(),
        components: spec.components.clone(),
        architecture: spec.architecture.clone(),
        packages: spec.packages.iter().map(|p| p.get_ref().clone()).collect(),
        essential: spec.essential.clone(),
        exclude: spec.exclude.clone(),
        keyring: spec.keyring_text(),
    }
}

/// The keyring file of a recipe (relative paths resolve against the recipe's folder).
pub fn keyring_path(r: &Recipe, spec: &DebianSpec) -> PathBuf {
    let k = spec.keyring_text();
    if Path::new(&k).is_absolute() {
        PathBuf::from(k)
    } else {
        r.dir().join(k)
    }
}

/// Read the lock of recipe `r` and check it still matches the recipe; the error names the
/// lock file, what changed and the command that fixes it.
pub fn read_matching_lock(r: &Recipe, spec: &DebianSpec) -> Result<(PathBuf, Lock)> {
    let path = lock::lock_path(&r.path);
    if !path.is_file() {
        bail!(
            "{}: no lock file {} (run `reemo-bundle lock {}`)",
            r.path.display(),
            path.display(),
            r.path.display()
        );
    }
    let l = Lock::read(&path)?;
    let changes = l.request_changes(&request_of(spec));
    if !changes.is_empty() {
        bail!(
            "{}: lock no longer matches its recipe {} ({}); run `reemo-bundle lock --update {}`",
            path.display(),
            r.path.display(),
            changes.join("; "),
            r.path.display()
        );
    }
    for b in &spec.base {
        if !l.packages.iter().any(|p| &p.name == b.get_ref()) {
            return Err(r.err_at(
                b,
                format!(
                    "base package {:?} is not in the closure locked in {}",
                    b.get_ref(),
                    path.display()
                ),
            ));
        }
    }
    Ok((path, l))
}

/// Mirror URL of each suite: `--mirror` for all, else apt's sources (`etc_apt`).
pub fn mirrors_for(
    suites: &[String],
    mirror: Option<&str>,
    etc_apt: &Path,
) -> Result<BTreeMap<String, String>> {
    if let Some(m) = mirror {
        let url = mirror::mirror_url(m)?;
        return Ok(suites.iter().map(|s| (s.clone(), url.clone())).collect());
    }
    let apt = mirror::apt_mirrors(etc_apt);
    suites
        .iter()
        .map(|s| {
            apt.get(s).map(|u| (s.clone(), u.clone())).with_context(|| {
                format!(
                    "suite {s}: no mirror in {}/sources.list(.d) (give one with --mirror URL or a file:// folder)",
                    etc_apt.display()
                )
            })
        })
        .collect()
}

/// How `lock` and `fetch` reach the archive.
pub struct Access<'a> {
    /// `--mirror`, if given.
    pub mirror: Option<&'a str>,
    /// apt's configuration folder (`/etc/apt`).
    pub etc_apt: PathBuf,
    /// The store the `.deb`s go to.
    pub store: &'a Store,
    /// Progress sink.
    pub progress: &'a dyn Fn(&str),
}

/// Resolve recipe `r` against the archive and fetch its closure into the store; returns
/// the lock (the caller writes it). Nothing is stored unless everything checked.
pub fn make_lock(r: &Recipe, spec: &DebianSpec, a: &Access) -> Result<Lock> {
    let keyring = keyring_path(r, spec);
    let mirrors = mirrors_for(&spec.suites, a.mirror, &a.etc_apt)?;
    let mut ix = index::Index::default();
    let mut sources = Vec::new();
    for s in &spec.suites {
        let m = &mirrors[s];
        (a.progress)(&format!(
            "verifying {m}/dists/{s}/InRelease with {}",
            keyring.display()
        ));
        let suite = release::fetch_suite(m, s, &keyring)?;
        for c in &spec.components {
            let text = release::fetch_index(&suite, c, &spec.architecture)?;
            ix.add(
                &text,
                s,
                &spec.architecture,
                &format!("{m}/dists/{s}/{c}/binary-{}/Packages", spec.architecture),
            )
            .map_err(anyhow::Error::msg)?;
        }
        sources.push(LockSource {
            suite: s.clone(),
            inrelease_sha256: suite.inrelease_sha256,
            date: suite.date,
            fingerprints: suite.fingerprints,
        });
    }
    let req = request_of(spec);
    let resolved = resolve::resolve(
        &ix,
        &resolve::Request {
            wanted: req.packages.clone(),
            essential: req.essential.clone(),
            exclude: req.exclude.clone(),
            suites: req.suites.clone(),
        },
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", r.path.display()))?;
    let packages: Vec<LockedPackage> = resolved
        .into_iter()
        .map(|x| LockedPackage {
            name: x.package.name,
            version: x.package.version.to_string(),
            architecture: x.package.arch,
            suite: x.package.suite,
            filename: x.package.filename,
            size: x.package.size,
            sha256: x.package.sha256,
            why: x.why.into_iter().collect(),
        })
        .collect();
    let l = Lock {
        lock_version: lock::LOCK_VERSION,
        request: req,
        sources,
        packages,
    };
    for b in &spec.base {
        if !l.packages.iter().any(|p| &p.name == b.get_ref()) {
            return Err(r.err_at(
                b,
                format!("base package {:?} is not in the closure", b.get_ref()),
            ));
        }
    }
    // Downloaded and checked in memory: the closure check reads them from there, and only
    // a lock that passes it puts anything in the store.
    let got = download(&l, &mirrors, a)?;
    let layers = layers_from(r, spec, &l, |p| {
        match got.iter().find(|(q, _)| q.sha256 == p.sha256) {
            Some((_, d)) => Ok(d.clone()),
            None => read_stored(r, a.store, p),
        }
    })?;
    check_closure(&layers, spec, |soname| {
        elf::package_for_soname(soname)
            .filter(|p| ix.packages.contains_key(p))
            .map(|p| format!("Debian package {p} ships it; it is not in the closure"))
    })
    .with_context(|| format!("{}: checking the locked closure", r.path.display()))?;
    for (p, data) in &got {
        a.store.put_fixed(&p.sha256, data, &p.described())?;
    }
    Ok(l)
}

/// What [`fetch`] did.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Packages downloaded now.
    pub downloaded: Vec<String>,
    /// Packages the store already had.
    pub present: usize,
}

/// Download every `.deb` of `l` the store lacks, check each against the lock, and store
/// them only when all checked.
pub fn fetch(l: &Lock, mirrors: &BTreeMap<String, String>, a: &Access) -> Result<Fetched> {
    let got = download(l, mirrors, a)?;
    let mut out = Fetched {
        present: l.packages.len() - got.len(),
        ..Default::default()
    };
    for (p, data) in got {
        a.store.put_fixed(&p.sha256, &data, &p.described())?;
        out.downloaded.push(format!("{} {}", p.name, p.version));
    }
    Ok(out)
}

/// Download (into memory) every `.deb` of `l` the store lacks, each checked against the lock.
fn download<'l>(
    l: &'l Lock,
    mirrors: &BTreeMap<String, String>,
    a: &Access,
) -> Result<Vec<(&'l LockedPackage, Vec<u8>)>> {
    let mut got = Vec::new();
    for p in &l.packages {
        if a.store.fixed_input(&p.sha256).is_file() {
            continue;
        }
        let m = mirrors
            .get(&p.suite)
            .with_context(|| format!("package {}: no mirror for suite {}", p.name, p.suite))?;
        let url = format!("{m}/{}", p.filename);
        (a.progress)(&format!(
            "fetching {} {} ({} bytes)",
            p.name, p.version, p.size
        ));
        let data = mirror::get(&url).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}: package {} is no longer served by {m} (superseded?); run `reemo-bundle lock --update` on its recipe",
                p.described()
            )
        })?;
        let found = sha256_hex(&data);
        if found != p.sha256 {
            bail!(
                "{} from {url}: sha256 {found}, but the lock says {} (nothing stored)",
                p.name,
                p.sha256
            );
        }
        got.push((p, data));
    }
    Ok(got)
}

/// The stored `.deb` of `p`, checked against its sha256; a missing one names the `fetch`
/// command.
fn read_stored(r: &Recipe, store: &Store, p: &LockedPackage) -> Result<Vec<u8>> {
    let lock_file = lock::lock_path(&r.path);
    let path = store.fixed_input(&p.sha256);
    let data = std::fs::read(&path).map_err(|_| {
        anyhow::anyhow!(
            "{}: package {} is not in the store {}; run `reemo-bundle fetch {}`",
            lock_file.display(),
            p.described(),
            store.root().display(),
            r.path.display()
        )
    })?;
    let found = sha256_hex(&data);
    if found != p.sha256 {
        bail!(
            "{}: package {} {}: the store copy {} has sha256 {found}, the lock says {}",
            lock_file.display(),
            p.name,
            p.version,
            path.display(),
            p.sha256
        );
    }
    Ok(data)
}

/// The Debian layers of an image (base packages, the others, the setup), read offline from
/// the store: a `.deb` missing from the store or differing from its lock is an error.
pub fn layers_from_store(
    r: &Recipe,
    spec: &DebianSpec,
    l: &Lock,
    store: &Store,
) -> Result<Vec<Vec<LayerFile>>> {
    layers_from(r, spec, l, |p| read_stored(r, store, p))
}

/// The Debian layers of an image from the `.deb` bytes `get` gives for each package.
fn layers_from(
    r: &Recipe,
    spec: &DebianSpec,
    l: &Lock,
    get: impl Fn(&LockedPackage) -> Result<Vec<u8>>,
) -> Result<Vec<Vec<LayerFile>>> {
    let base: Vec<&str> = spec.base.iter().map(|b| b.get_ref().as_str()).collect();
    let mut inputs = Vec::new();
    for p in &l.packages {
        let data = get(p)?;
        let deb = deb::read(&data, &format!("{} {} ({})", p.name, p.version, p.filename))?;
        inputs.push(rootfs::Input {
            name: p.name.clone(),
            version: p.version.clone(),
            base: base.contains(&p.name.as_str()),
            deb,
        });
    }
    let setup = setup_of(r, spec)?;
    rootfs::assemble(&inputs, &setup).map_err(|e| anyhow::anyhow!("{}: {e}", r.path.display()))
}

/// Users, groups and folders of `[debian]`, with names resolved to numbers.
fn setup_of(r: &Recipe, spec: &DebianSpec) -> Result<rootfs::Setup> {
    let users: Vec<rootfs::User> = spec
        .users
        .iter()
        .map(|u| rootfs::User {
            name: u.name.get_ref().clone(),
            uid: u.uid,
            gid: u.gid.unwrap_or(u.uid),
            home: u.home.clone().unwrap_or_else(|| "/nonexistent".into()),
            shell: u
                .shell
                .clone()
                .unwrap_or_else(|| "/usr/sbin/nologin".into()),
        })
        .collect();
    let groups: Vec<rootfs::Group> = spec
        .groups
        .iter()
        .map(|g| rootfs::Group {
            name: g.name.get_ref().clone(),
            gid: g.gid,
            members: g.members.clone(),
        })
        .collect();
    let uid_of = |n: &str| -> Option<(u32, u32)> {
        if n == "root" {
            return Some((0, 0));
        }
        if let Ok(x) = n.parse() {
            return Some((x, x));
        }
        users.iter().find(|u| u.name == n).map(|u| (u.uid, u.gid))
    };
    let gid_of = |n: &str| -> Option<u32> {
        groups
            .iter()
            .find(|g| g.name == n)
            .map(|g| g.gid)
            .or_else(|| uid_of(n).map(|x| x.1))
    };
    let mut dirs = Vec::new();
    for d in &spec.dirs {
        let path =
            crate::recipe::normalize_dest(d.path.get_ref()).map_err(|m| r.err_at(&d.path, m))?;
        let (uid, mut gid) = match &d.owner {
            None => (0, 0),
            Some(o) => uid_of(o.get_ref())
                .ok_or_else(|| r.err_at(o, format!("unknown user {:?}", o.get_ref())))?,
        };
        if let Some(g) = &d.group {
            gid = gid_of(g.get_ref())
                .ok_or_else(|| r.err_at(g, format!("unknown group {:?}", g.get_ref())))?;
        }
        dirs.push(rootfs::Dir {
            path,
            uid,
            gid,
            mode: d.mode.unwrap_or(0o755),
        });
    }
    Ok(rootfs::Setup {
        users,
        groups,
        dirs,
    })
}

/// Check that every ELF file of the layers finds its libraries; `hint` may name the
/// package that ships a missing soname.
pub fn check_closure(
    layers: &[Vec<LayerFile>],
    spec: &DebianSpec,
    hint: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let t = elf::tree(layers);
    let missing = elf::check(
        &t,
        &elf::default_dirs(&spec.architecture),
        &spec.elf_check_skip,
    );
    if missing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|m| {
            let h = hint(&m.needed)
                .or_else(|| {
                    elf::package_for_soname(&m.needed)
                        .map(|p| format!("probably in Debian package {p}"))
                })
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            format!(
                "{} needs {}, which is not in the image{h}",
                m.binary, m.needed
            )
        })
        .collect();
    bail!(
        "{} unresolved shared librar{} (add the package to packages, or the path to elf_check_skip): {}",
        missing.len(),
        if missing.len() == 1 { "y" } else { "ies" },
        lines.join("; ")
    )
}
