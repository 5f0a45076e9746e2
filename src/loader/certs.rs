//! The site PKI on the host, as the loader uses it: the certificates a stack declares
//! (`x-reemo-certificates`), issued by the internal CA or brought by the operator
//! (`cert import`), with the trust bundle of its `x-reemo-ca` configs across a CA rotation;
//! and the `pki` / `cert` commands' host operations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::pki::{self, Ca, Issued, Request};
use crate::state::StateDir;
use crate::swarm::desired::PkiContent;

/// Operator certificates to use (`Some`) or to stop using (`None`) from the next
/// generation on, by certificate name; the others as stored under `pki/imported/`.
pub type Imports = BTreeMap<String, Option<Issued>>;

/// What the certificate step makes for a generation.
pub struct Made {
    /// Secret and config contents by `secret:<key>` / `config:<key>`.
    pub contents: BTreeMap<String, PkiContent>,
    /// The records of the stack's certificates.
    pub issued: Vec<Issued>,
}

/// The name the internal CA is made with.
const CA_NAME: &str = "reemo-bundle site CA";

fn imported_dir(root: &Path) -> PathBuf {
    pki::dir(root).join("imported")
}

/// The operator certificates stored on the host, by name.
pub fn stored_imports(root: &Path) -> Result<BTreeMap<String, Issued>> {
    let d = imported_dir(root);
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(&d) else {
        return Ok(out);
    };
    for e in rd {
        let p = e
            .with_context(|| format!("listing {}", d.display()))?
            .path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let rec: Issued = serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("reading {}", p.display()))?;
        out.insert(rec.name.clone(), rec);
    }
    Ok(out)
}

/// Record (`Some`) or forget (`None`) the operator's certificate `name`.
fn store_import(root: &Path, name: &str, rec: Option<&Issued>) -> Result<()> {
    let p = imported_dir(root).join(format!("{name}.json"));
    match rec {
        Some(r) => {
            std::fs::create_dir_all(imported_dir(root))
                .with_context(|| format!("creating {}", imported_dir(root).display()))?;
            crate::fsutil::write_atomic_mode(&p, &serde_json::to_vec_pretty(r)?, 0o600)
        }
        None => match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        },
    }
}

/// The certificates the stack declares: an operator's certificate where one is imported for
/// an `external` certificate (checked against the names the stack needs now), else one of
/// the internal CA (made now if the host has none). A certificate of the current generation
/// is kept while it still serves (same names and usage, more than a third of its lifetime
/// left) and is signed by the signing CA — or by an older one while the live services do
/// not trust the signing CA yet (see `pki::may_switch_leaves`); else it is issued anew. A
/// dry run stores nothing (what it would issue is only named).
pub fn certificates(
    compose: &crate::stack::ComposeFile,
    state: &StateDir,
    current: Option<&crate::state::Generation>,
    imports: &Imports,
    dry_run: bool,
    notes: &mut Vec<String>,
) -> Result<Made> {
    let wants_ca = compose.configs.values().any(|c| c.ca == Some(true));
    for name in imports.keys() {
        if !compose.certificates.get(name).is_some_and(|d| d.external) {
            let external: Vec<&String> = compose
                .certificates
                .iter()
                .filter(|(_, d)| d.external)
                .map(|(n, _)| n)
                .collect();
            bail!(
                "the stack declares no external certificate {name:?} (its external certificates: {}); nothing was changed",
                if external.is_empty() {
                    "none".to_string()
                } else {
                    external.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                }
            );
        }
    }
    if compose.certificates.is_empty() && !wants_ca {
        return Ok(Made {
            contents: BTreeMap::new(),
            issued: vec![],
        });
    }
    let root = state.root();
    let now = crate::state::now() as i64;
    let ca = match Ca::load(root)? {
        Some(ca) => ca,
        None => {
            let ca = Ca::create(CA_NAME, now)?;
            if dry_run {
                notes.push("internal CA: would be created (ECDSA P-256)".into());
            } else {
                ca.save(root)?;
                notes.push(format!(
                    "internal CA created (ECDSA P-256, key in {})",
                    pki::dir(root).join("ca.key").display()
                ));
            }
            ca
        }
    };
    let mut stored = stored_imports(root)?;
    for (name, rec) in imports {
        match rec {
            Some(r) => stored.insert(name.clone(), r.clone()),
            None => stored.remove(name),
        };
    }
    // PEM objects by sha256: what is stored, and what a dry run only holds in memory
    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut keep = |data: Vec<u8>| -> Result<String> {
        let sha = crate::hash::sha256_hex(&data);
        if !dry_run {
            pki::put_object(root, &data)?;
        }
        objects.insert(sha.clone(), data);
        Ok(sha)
    };
    let signing = keep(ca.cert_pem.clone().into_bytes())?;
    let (live_trust, live_cas) = match current {
        Some(g) => (g.desired.trust(), internal_cas(&g.desired.certificates)),
        None => (vec![], vec![]),
    };
    let switch = pki::may_switch_leaves(&signing, &live_trust, &live_cas);
    let mut issued = Vec::new();
    for (name, def) in &compose.certificates {
        let req = Request {
            name: name.clone(),
            usage: def.usage,
            sans: def.names(),
            lifetime_secs: def.lifetime_secs()?,
        };
        if let Some(imp) = stored.get(name).filter(|_| def.external) {
            check_imported(imp, &req, now, notes)?;
            for sha in imp.part_objects(pki::Part::Combined) {
                keep(pki::object(root, &sha)?)?;
            }
            issued.push(imp.clone());
            continue;
        }
        let prev = current
            .and_then(|g| g.desired.certificates.iter().find(|c| &c.name == name))
            .filter(|c| !c.imported);
        // the previous certificate, with its PEMs, while it still serves the request
        let reusable = match prev {
            None => Err("new".to_string()),
            Some(p) => p
                .serves_names(&req, now)
                .and_then(|()| {
                    if p.ca_sha256 == signing || !switch {
                        Ok(())
                    } else {
                        Err("the CA changed".to_string())
                    }
                })
                .and_then(|()| {
                    let cert = pki::object(root, &p.cert_sha256).map_err(|e| format!("{e:#}"))?;
                    let key = pki::object(root, &p.key_sha256).map_err(|e| format!("{e:#}"))?;
                    let ca = pki::object(root, &p.ca_sha256).map_err(|e| format!("{e:#}"))?;
                    Ok((p, cert, key, ca))
                }),
        };
        let record = match reusable {
            Ok((p, cert, key, ca)) => {
                keep(cert)?;
                keep(key)?;
                keep(ca)?;
                if p.ca_sha256 != signing {
                    notes.push(format!(
                        "certificate {name}: kept (signed by the previous CA) until every service trusts the new CA"
                    ));
                }
                p.clone()
            }
            Err(why) => {
                let (rec, cert, key) = ca.issue(&req, now)?;
                keep(cert.into_bytes())?;
                keep(key.into_bytes())?;
                notes.push(format!(
                    "certificate {name}: {} ({why}), valid until {}, for {}",
                    if dry_run { "would be issued" } else { "issued" },
                    crate::oci::rfc3339(rec.not_after.max(0) as u64),
                    rec.sans.join(", ")
                ));
                rec
            }
        };
        issued.push(record);
    }
    let trust = if wants_ca {
        let t = pki::trust_bundle(&signing, &internal_cas(&issued), &live_cas);
        // the previous CAs' certificates, as stored when they signed
        for sha in &t {
            let data = pki::object(root, sha)
                .or_else(|e| {
                    if *sha == signing {
                        Ok(ca.cert_pem.clone().into_bytes())
                    } else {
                        Err(e)
                    }
                })
                .with_context(|| format!("the trust bundle's CA {}", &sha[..12.min(sha.len())]))?;
            keep(data)?;
        }
        if t.len() > 1 {
            notes.push(format!(
                "trust bundle: the signing CA and {} previous CA(s) while leaves move",
                t.len() - 1
            ));
        }
        t
    } else {
        vec![]
    };
    let content = |shas: Vec<String>| PkiContent {
        data: shas.iter().flat_map(|s| objects[s].clone()).collect(),
        objects: shas,
    };
    let mut contents = BTreeMap::new();
    for (key, def) in &compose.secrets {
        let Some((cert, part)) = def.certificate_part() else {
            continue;
        };
        let rec = issued
            .iter()
            .find(|c| c.name == cert)
            .with_context(|| format!("secret {key}: no certificate {cert}"))?;
        let part = part.context("checked by the stack parser")?;
        contents.insert(format!("secret:{key}"), content(rec.part_objects(part)));
    }
    for (key, def) in &compose.configs {
        if def.ca == Some(true) {
            contents.insert(format!("config:{key}"), content(trust.clone()));
        }
    }
    Ok(Made { contents, issued })
}

/// The CAs that signed the certificates of the internal CA among `certs`.
fn internal_cas(certs: &[Issued]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in certs.iter().filter(|c| !c.imported) {
        if !out.contains(&c.ca_sha256) {
            out.push(c.ca_sha256.clone());
        }
    }
    out
}

/// An imported certificate still fits the stack: valid now and naming every host name the
/// stack's certificate names (an IP address it does not name is only noted: public
/// certificates rarely carry one).
fn check_imported(imp: &Issued, req: &Request, now: i64, notes: &mut Vec<String>) -> Result<()> {
    let name = &req.name;
    let fix = format!("import another one (`reemo-bundle cert import {name} …`) or go back to the site CA's (`reemo-bundle cert remove {name}`); nothing was changed");
    if imp.not_after <= now {
        bail!(
            "certificate {name}: the imported certificate expired on {}: {fix}",
            crate::oci::rfc3339(imp.not_after.max(0) as u64)
        );
    }
    for n in &req.sans {
        if pki::covers(&imp.sans, n) {
            continue;
        }
        if n.parse::<std::net::IpAddr>().is_ok() {
            notes.push(format!(
                "certificate {name}: the imported certificate does not name {n} (clients must connect by host name)"
            ));
        } else {
            bail!(
                "certificate {name}: the imported certificate names {} but not {n}, which the stack needs (a site value such as PUBLIC_HOST): {fix}",
                imp.sans.join(", ")
            );
        }
    }
    if imp.days_left(now) < 30 {
        notes.push(format!(
            "certificate {name}: the imported certificate expires in {} day(s): import its renewal",
            imp.days_left(now)
        ));
    }
    Ok(())
}

/// The internal CA's certificate (PEM), for clients to trust; during a CA rotation also the
/// previous CA(s) the current generation's certificates or trust bundle still use.
pub fn ca_certificate(state_dir: &Path) -> Result<String> {
    let ca = Ca::load(state_dir)?.with_context(|| {
        format!(
            "{} has no internal CA yet: it is made by the first activation of a stack that declares certificates",
            state_dir.display()
        )
    })?;
    let mut out = ca.cert_pem.clone();
    let signing = ca.sha256();
    if let Some(g) = StateDir::open_existing(state_dir).current_generation()? {
        let mut others = g.desired.trust();
        others.extend(internal_cas(&g.desired.certificates));
        let mut seen = vec![signing];
        for sha in others {
            if !seen.contains(&sha) {
                out.push_str(&String::from_utf8_lossy(&pki::object(state_dir, &sha)?));
                seen.push(sha);
            }
        }
    }
    Ok(out)
}

fn read_text(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// A certificate file and a key file an operator gives: their texts and names.
struct PemFiles {
    cert: String,
    cert_name: String,
    key: String,
    key_name: String,
}

impl PemFiles {
    fn read(cert: &Path, key: &Path) -> Result<PemFiles> {
        Ok(PemFiles {
            cert: read_text(cert)?,
            cert_name: cert.display().to_string(),
            key: read_text(key)?,
            key_name: key.display().to_string(),
        })
    }

    /// The operator's CA from these files, checked at `now`.
    fn ca(&self, now: i64) -> Result<Ca> {
        pki::import_ca(&self.cert, &self.cert_name, &self.key, &self.key_name, now)
    }
}

/// `pki import-ca`: check and store the operator's CA; its name.
pub fn import_ca(state_dir: &Path, cert: &Path, key: &Path) -> Result<String> {
    if Ca::load(state_dir)?.is_some() {
        bail!(
            "{} already has a CA ({}); nothing was changed (to move to another CA use `pki rotate-ca --cert … --key …`)",
            state_dir.display(),
            pki::dir(state_dir).join("ca.pem").display()
        );
    }
    let ca = PemFiles::read(cert, key)?.ca(crate::state::now() as i64)?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    ca.save(state_dir)?;
    Ok(ca.name)
}

/// `pki rotate-ca`: a new signing CA (made here, or the operator's `cert`/`key`, checked
/// first). The previous CA's certificate stays as a PEM object for the trust bundle; its key
/// is replaced. Returns the new CA's name.
pub fn rotate_ca(state_dir: &Path, operator: Option<(&Path, &Path)>) -> Result<String> {
    let now = crate::state::now() as i64;
    let old = Ca::load(state_dir)?.with_context(|| {
        format!(
            "{} has no internal CA to rotate (it is made by the first activation that needs it)",
            state_dir.display()
        )
    })?;
    let new = match operator {
        Some((cert, key)) => PemFiles::read(cert, key)?.ca(now)?,
        None => Ca::create(
            &format!("{CA_NAME} {}", crate::oci::rfc3339(now.max(0) as u64)),
            now,
        )?,
    };
    if new.sha256() == old.sha256() {
        bail!("the new CA is the current one; nothing was changed");
    }
    // the old certificate stays readable for trust bundles
    pki::put_object(state_dir, old.cert_pem.as_bytes())?;
    new.save(state_dir)?;
    Ok(new.name)
}

/// `cert import NAME`: the operator's certificate, checked (key, chain, validity, key kind);
/// its PEMs stored as objects. Returns the record and warnings; the caller makes it current
/// (a new generation, or the next activation's).
pub fn check_and_store_import(
    state_dir: &Path,
    name: &str,
    cert: &Path,
    key: &Path,
) -> Result<pki::Imported> {
    let f = PemFiles::read(cert, key)?;
    let i = pki::check_import(
        name,
        &f.cert,
        &f.cert_name,
        &f.key,
        &f.key_name,
        crate::state::now() as i64,
    )?;
    for data in [&i.cert_pem, &i.chain_pem, &i.key_pem] {
        if !data.is_empty() {
            pki::put_object(state_dir, data.as_bytes())?;
        }
    }
    Ok(i)
}

/// After the generation that uses them succeeded (or with no generation yet): record the
/// operator certificates of `imports` on the host.
pub fn commit_imports(state_dir: &Path, imports: &Imports) -> Result<()> {
    for (name, rec) in imports {
        store_import(state_dir, name, rec.as_ref())?;
    }
    Ok(())
}

/// `pki issue-client NAME --out DIR`: a client certificate of the internal CA for an
/// integrator (`NAME.crt`, `NAME.key` 0600, `ca.pem`), valid `lifetime_secs`. Returns the
/// record.
pub fn issue_client(
    state_dir: &Path,
    name: &str,
    out: &Path,
    lifetime_secs: i64,
) -> Result<Issued> {
    crate::stack::check_name("client certificate", name)?;
    let ca = Ca::load(state_dir)?.with_context(|| {
        format!(
            "{} has no internal CA yet: activate a stack that declares certificates first",
            state_dir.display()
        )
    })?;
    let now = crate::state::now() as i64;
    let (rec, cert, key) = ca.issue(
        &Request {
            name: name.to_string(),
            usage: pki::Usage::Client,
            sans: vec![name.to_string()],
            lifetime_secs,
        },
        now,
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::fsutil::write_atomic_mode(&out.join(format!("{name}.crt")), cert.as_bytes(), 0o644)?;
    crate::fsutil::write_atomic_mode(&out.join(format!("{name}.key")), key.as_bytes(), 0o600)?;
    crate::fsutil::write_atomic_mode(&out.join("ca.pem"), ca.cert_pem.as_bytes(), 0o644)?;
    Ok(rec)
}
