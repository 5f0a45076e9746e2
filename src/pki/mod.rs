//! The site PKI on the host: an internal CA (ECDSA P-256, made at the first activation that
//! needs it; its key never leaves `<state>/pki/`), and leaf certificates a stack declares
//! (`x-reemo-certificates`), issued for its services, delivered as content-named Swarm
//! secrets and re-issued when a third of their lifetime is left.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use serde::{Deserialize, Serialize};

mod external;
mod trust;

pub use external::{check_import, covers, Imported};
pub use trust::{may_switch_leaves, trust_bundle};

use crate::fsutil::write_atomic_mode;
use crate::hash::sha256_hex;

/// Lifetime of the internal CA: 10 years.
pub const CA_LIFETIME_DAYS: i64 = 3650;
/// Default leaf lifetime (what browsers accept at most).
pub const LEAF_LIFETIME_DAYS: i64 = 397;

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    /// TLS server authentication.
    Server,
    /// TLS client authentication.
    Client,
    /// Both.
    Both,
}

/// One part of an issued certificate, as a secret's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The leaf certificate (PEM).
    Cert,
    /// Its private key (PKCS#8 PEM).
    Key,
    /// Leaf then CA certificate.
    Chain,
    /// Leaf, CA certificate, then key: the combined file haproxy reads.
    Combined,
}

impl Part {
    /// From the suffix of `x-reemo-certificate: NAME.PART`.
    pub fn parse(s: &str) -> Option<Part> {
        Some(match s {
            "cert" => Part::Cert,
            "key" => Part::Key,
            "chain" => Part::Chain,
            "pem" => Part::Combined,
            _ => return None,
        })
    }
}

/// A certificate a stack asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Certificate name (key of `x-reemo-certificates`).
    pub name: String,
    /// Usage.
    pub usage: Usage,
    /// Subject alternative names: DNS names or IP addresses.
    pub sans: Vec<String>,
    /// Lifetime in seconds.
    pub lifetime_secs: i64,
}

/// An issued leaf, as the generation records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Certificate name.
    pub name: String,
    /// Subject common name.
    pub subject: String,
    /// SANs.
    pub sans: Vec<String>,
    /// Usage.
    pub usage: Usage,
    /// Issuer common name.
    pub issuer: String,
    /// Unix times of validity.
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
    /// sha256 hex of the certificate PEM and of the key PEM: their files under
    /// `<state>/pki/objects/`.
    pub cert_sha256: String,
    /// See `cert_sha256`.
    pub key_sha256: String,
    /// sha256 hex of the CA certificate PEM that signed it; for an imported certificate,
    /// of the rest of its chain (empty when it came alone).
    pub ca_sha256: String,
    /// The operator's own certificate (`cert import`): never re-issued by the host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
}

impl Issued {
    /// Whether it serves `req` as it is: same SANs and usage, signed by the CA `ca_sha256`
    /// and more than a third of its lifetime left at `now`.
    pub fn serves(&self, req: &Request, ca_sha256: &str, now: i64) -> Result<(), String> {
        self.serves_names(req, now)?;
        if self.ca_sha256 != ca_sha256 {
            return Err("the CA changed".into());
        }
        Ok(())
    }

    /// [`Issued::serves`] whatever CA signed it.
    pub fn serves_names(&self, req: &Request, now: i64) -> Result<(), String> {
        if self.sans != req.sans {
            return Err(format!(
                "its names changed ({} → {})",
                self.sans.join(","),
                req.sans.join(",")
            ));
        }
        if self.usage != req.usage {
            return Err("its usage changed".into());
        }
        let lifetime = self.not_after - self.not_before;
        if self.not_after - now < lifetime / 3 {
            return Err(format!(
                "{} of its {} are left",
                span((self.not_after - now).max(0)),
                span(lifetime)
            ));
        }
        Ok(())
    }

    /// Whole days left at `now` (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// A span of seconds as days, or as seconds under a day.
fn span(secs: i64) -> String {
    if secs >= 86_400 {
        format!("{} days", secs / 86_400)
    } else {
        format!("{secs} s")
    }
}

/// How far before "now" a certificate's validity starts (clock skew between nodes): 5 minutes,
/// at most a tenth of its lifetime.
fn backdate(lifetime_secs: i64) -> i64 {
    (lifetime_secs / 10).min(300)
}

/// The PKI folder of a state directory.
pub fn dir(state_root: &Path) -> PathBuf {
    state_root.join("pki")
}

fn ts(t: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t).context("time out of range")
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// The internal CA.
pub struct Ca {
    key: KeyPair,
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// Its common name.
    pub name: String,
}

/// Never shows the key.
impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct CaMeta {
    name: String,
}

impl Ca {
    /// A new CA named `name`, valid from `now` for [`CA_LIFETIME_DAYS`].
    pub fn create(name: &str, now: i64) -> Result<Ca> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("making the CA key")?;
        let mut p = ca_params(name);
        p.not_before = ts(now - 300)?;
        p.not_after = ts(now + CA_LIFETIME_DAYS * 86_400)?;
        let cert = p.self_signed(&key).context("signing the CA certificate")?;
        Ok(Ca {
            key,
            cert_pem: cert.pem(),
            name: name.to_string(),
        })
    }

    /// The CA of a state directory, if it has one.
    pub fn load(state_root: &Path) -> Result<Option<Ca>> {
        let d = dir(state_root);
        let key_path = d.join("ca.key");
        if !key_path.exists() {
            return Ok(None);
        }
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let key = KeyPair::from_pem(&read(key_path.clone())?)
            .map_err(|e| anyhow::anyhow!("{}: not a private key: {e}", key_path.display()))?;
        let meta: CaMeta = serde_json::from_str(&read(d.join("ca.json"))?)
            .with_context(|| format!("reading {}", d.join("ca.json").display()))?;
        let cert_pem = read(d.join("ca.pem"))?;
        anyhow::ensure!(
            spki_bits(&cert_pem)? == key.der_bytes(),
            "{} is not the key of {} (an interrupted CA rotation?): restore both from a backup",
            key_path.display(),
            d.join("ca.pem").display()
        );
        Ok(Some(Ca {
            key,
            cert_pem,
            name: meta.name,
        }))
    }

    /// Store it: `ca.key` (0600), `ca.pem`, `ca.json`; the folder is 0700.
    pub fn save(&self, state_root: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let d = dir(state_root);
        std::fs::create_dir_all(d.join("objects"))
            .with_context(|| format!("creating {}", d.display()))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", d.display()))?;
        write_atomic_mode(
            &d.join("ca.key"),
            self.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic_mode(&d.join("ca.pem"), self.cert_pem.as_bytes(), 0o644)?;
        let meta = serde_json::to_vec(&CaMeta {
            name: self.name.clone(),
        })?;
        write_atomic_mode(&d.join("ca.json"), &meta, 0o644)
    }

    /// sha256 hex of its certificate PEM.
    pub fn sha256(&self) -> String {
        sha256_hex(self.cert_pem.as_bytes())
    }

    /// Issue a leaf for `req`, valid from `now`; returns its record and PEMs (cert, key).
    pub fn issue(&self, req: &Request, now: i64) -> Result<(Issued, String, String)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .with_context(|| format!("making the key of certificate {}", req.name))?;
        let mut p = CertificateParams::new(req.sans.clone())
            .map_err(|e| anyhow::anyhow!("certificate {}: bad name: {e}", req.name))?;
        let mut dn = DistinguishedName::new();
        let cn = req
            .sans
            .first()
            .cloned()
            .unwrap_or_else(|| req.name.clone());
        dn.push(DnType::CommonName, cn.clone());
        p.distinguished_name = dn;
        let not_before = now - backdate(req.lifetime_secs);
        p.not_before = ts(not_before)?;
        p.not_after = ts(now + req.lifetime_secs)?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match req.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        // The issuer is the CA certificate itself (its whole subject, which an imported CA
        // may carry), so that chains build.
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| anyhow::anyhow!("reading the CA certificate: {e}"))?;
        let cert = p
            .signed_by(&key, &issuer)
            .with_context(|| format!("signing certificate {}", req.name))?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok((
            Issued {
                name: req.name.clone(),
                subject: cn,
                sans: req.sans.clone(),
                usage: req.usage,
                issuer: self.name.clone(),
                not_before,
                not_after: now + req.lifetime_secs,
                cert_sha256: sha256_hex(cert_pem.as_bytes()),
                key_sha256: sha256_hex(key_pem.as_bytes()),
                ca_sha256: self.sha256(),
                imported: false,
            },
            cert_pem,
            key_pem,
        ))
    }
}

/// Check an operator's own CA before it is imported: the certificate is a PEM CA
/// certificate, valid at `now`, and `key_pem` is its private key (ECDSA P-256/P-384 or
/// Ed25519). Each failure names the file. Returns the CA (not yet saved).
pub fn import_ca(
    cert_pem: &str,
    cert_file: &str,
    key_pem: &str,
    key_file: &str,
    now: i64,
) -> Result<Ca> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{cert_file}: not a PEM certificate ({e})"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{cert_file}: not an X.509 certificate ({e})"))?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    anyhow::ensure!(
        is_ca,
        "{cert_file}: not a CA certificate (no basicConstraints CA:TRUE)"
    );
    let (from, to) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    anyhow::ensure!(
        from <= now && now < to,
        "{cert_file}: not valid now (valid from {} to {})",
        crate::oci::rfc3339(from.max(0) as u64),
        crate::oci::rfc3339(to.max(0) as u64)
    );
    let key = KeyPair::from_pem(key_pem).map_err(|e| {
        anyhow::anyhow!("{key_file}: not a private key this PKI can sign with (ECDSA P-256/P-384 or Ed25519 in PEM): {e}")
    })?;
    anyhow::ensure!(
        cert.public_key().subject_public_key.data.as_ref() == key.der_bytes(),
        "{key_file} is not the key of {cert_file} (their public keys differ)"
    );
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("imported CA")
        .to_string();
    Ok(Ca {
        key,
        cert_pem: pem_text(cert_pem),
        name,
    })
}

/// The subject public key bits of a PEM certificate.
fn spki_bits(cert_pem: &str) -> Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate ({e})"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate ({e})"))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// The first PEM block of a text (an operator's file may carry comments or a chain).
fn pem_text(text: &str) -> String {
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .map(|e| start + e + "-----END CERTIFICATE-----".len())
        .unwrap_or(text.len());
    format!("{}\n", &text[start..end])
}

/// Store a PEM under `<state>/pki/objects/<sha256>` (0600). An object already stored
/// with these bytes is left as it is (no write, no fsync: a re-activation writes nothing).
pub fn put_object(state_root: &Path, data: &[u8]) -> Result<String> {
    let sha = sha256_hex(data);
    let d = dir(state_root).join("objects");
    let p = d.join(&sha);
    if std::fs::read(&p).is_ok_and(|have| have == data) {
        return Ok(sha);
    }
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    write_atomic_mode(&p, data, 0o600)?;
    Ok(sha)
}

/// Read a stored PEM, checking its hash.
pub fn object(state_root: &Path, sha256: &str) -> Result<Vec<u8>> {
    let p = dir(state_root).join("objects").join(sha256);
    let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    anyhow::ensure!(
        sha256_hex(&data) == sha256,
        "{} does not hold what its name says",
        p.display()
    );
    Ok(data)
}

impl Issued {
    /// The PEM objects that make `part` of it, in order (an imported certificate that came
    /// without a chain has no CA object).
    pub fn part_objects(&self, part: Part) -> Vec<String> {
        let chain = (!self.ca_sha256.is_empty()).then(|| self.ca_sha256.clone());
        let (cert, key) = (self.cert_sha256.clone(), self.key_sha256.clone());
        match part {
            Part::Cert => vec![cert],
            Part::Key => vec![key],
            Part::Chain => std::iter::once(cert).chain(chain).collect(),
            Part::Combined => std::iter::once(cert)
                .chain(chain)
                .chain(std::iter::once(key))
                .collect(),
        }
    }
}

/// The content of `part` of an issued certificate.
pub fn part(state_root: &Path, issued: &Issued, part: Part) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for sha in issued.part_objects(part) {
        out.extend(object(state_root, &sha)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(sans: &[&str]) -> Request {
        Request {
            name: "relay".into(),
            usage: Usage::Server,
            sans: sans.iter().map(|s| s.to_string()).collect(),
            lifetime_secs: 90 * 86_400,
        }
    }

    #[test]
    fn issue_store_and_renewal_decisions() {
        let d = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let ca = Ca::create("reemo site CA", now).unwrap();
        ca.save(d.path()).unwrap();
        let ca = Ca::load(d.path()).unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir(d.path()).join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let r = req(&["relay", "tasks.relay", "127.0.0.1"]);
        let (issued, cert, key) = ca.issue(&r, now).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        assert!(
            !key.contains(&ca.key.serialize_pem()),
            "the leaf has its own key"
        );
        let cert_sha = put_object(d.path(), cert.as_bytes()).unwrap();
        put_object(d.path(), key.as_bytes()).unwrap();
        put_object(d.path(), ca.cert_pem.as_bytes()).unwrap();
        // stored again: the same file is left in place (written once, by rename)
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let stored = dir(d.path()).join("objects").join(&cert_sha);
        let before = inode(&stored);
        put_object(d.path(), cert.as_bytes()).unwrap();
        assert_eq!(
            inode(&stored),
            before,
            "an object stored again was rewritten"
        );
        let combined = part(d.path(), &issued, Part::Combined).unwrap();
        assert_eq!(
            String::from_utf8(combined).unwrap(),
            format!("{cert}{}{key}", ca.cert_pem)
        );
        // renewal: at two thirds of the lifetime, and when names or the CA change
        let sha = ca.sha256();
        assert!(issued.serves(&r, &sha, now + 59 * 86_400).is_ok());
        assert_eq!(
            issued.serves(&r, &sha, now + 61 * 86_400).unwrap_err(),
            "29 days of its 90 days are left"
        );
        assert!(issued
            .serves(&req(&["relay"]), &sha, now)
            .unwrap_err()
            .contains("names changed"));
        assert_eq!(
            issued.serves(&r, "other", now).unwrap_err(),
            "the CA changed"
        );
        assert_eq!(issued.days_left(now + 89 * 86_400), 1);
        assert_eq!(issued.days_left(now + 91 * 86_400), -1);
        // a changed object is refused
        std::fs::write(dir(d.path()).join("objects").join(&issued.cert_sha256), "x").unwrap();
        assert!(part(d.path(), &issued, Part::Cert).is_err());
        assert_eq!(Part::parse("pem"), Some(Part::Combined));

        // import: the CA's own files pass; a foreign key, a leaf and garbage are named
        let other = Ca::create("other", now).unwrap();
        let key_pem = ca.key.serialize_pem();
        let imported = import_ca(&ca.cert_pem, "ca.pem", &key_pem, "ca.key", now).unwrap();
        assert_eq!(imported.name, "reemo site CA");
        let e = import_ca(
            &ca.cert_pem,
            "ca.pem",
            &other.key.serialize_pem(),
            "x.key",
            now,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.key is not the key of ca.pem (their public keys differ)"
        );
        let e = import_ca(&cert, "leaf.pem", &key, "leaf.key", now).unwrap_err();
        assert!(
            e.to_string().contains("leaf.pem: not a CA certificate"),
            "{e}"
        );
        let e = import_ca("hello", "junk.pem", &key_pem, "ca.key", now).unwrap_err();
        assert!(
            e.to_string().starts_with("junk.pem: not a PEM certificate"),
            "{e}"
        );
        let e = import_ca(
            &ca.cert_pem,
            "ca.pem",
            &key_pem,
            "ca.key",
            now + 4000 * 86_400,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ca.pem: not valid now"), "{e}");
        // a leaf issued by an imported CA names it as issuer
        let (rec, _, _) = imported.issue(&r, now).unwrap();
        assert_eq!(rec.issuer, "reemo site CA");
        assert_eq!(Part::parse("crt"), None);
    }
}
