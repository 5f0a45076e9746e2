//! The operator's own certificate for a stack's public entry (`cert import NAME --cert
//! fullchain.pem --key key.pem`), checked before anything changes: the key matches, the
//! chain is in order and each link verifies, every certificate is valid now and the leaf is
//! not about to expire, the key is ECDSA (P-256/P-384) or RSA ≥ 2048 bits. Whether its names
//! cover the site's host name is checked where the names are known (the activation).

use anyhow::{anyhow, bail, ensure, Result};
use rcgen::{KeyPair, PublicKeyData};
use x509_parser::prelude::*;

use super::{Issued, Usage};
use crate::hash::sha256_hex;

/// A leaf with less than this left is refused at import.
pub const MIN_DAYS_LEFT: i64 = 7;

/// A checked import: its record and PEMs (leaf, the rest of the chain, key).
#[derive(Debug)]
pub struct Imported {
    /// What the generation records (`imported: true`).
    pub record: Issued,
    /// The leaf certificate PEM.
    pub cert_pem: String,
    /// The intermediate certificates PEM, in order (may be empty).
    pub chain_pem: String,
    /// The private key PEM.
    pub key_pem: String,
    /// What the operator should know (expiry under 30 days).
    pub warnings: Vec<String>,
}

fn rfc3339(t: i64) -> String {
    crate::oci::rfc3339(t.max(0) as u64)
}

/// The PEM blocks of `tag` in a text, each as its own text.
fn pem_blocks(text: &str, tag: &str) -> Vec<String> {
    let (begin, end) = (
        format!("-----BEGIN {tag}-----"),
        format!("-----END {tag}-----"),
    );
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(s) = rest.find(&begin) {
        let Some(e) = rest[s..].find(&end) else { break };
        out.push(format!("{}\n", &rest[s..s + e + end.len()]));
        rest = &rest[s + e + end.len()..];
    }
    out
}

/// The DNS names and IP addresses of a certificate's subjectAltName.
fn san_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => out.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                    ),
                    16 => out.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    out
}

fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_string)
}

/// Whether a certificate naming `sans` is valid for `name`: the same IP address, the same
/// host name (case-insensitive), or a wildcard `*.example.com` for one label of it.
pub fn covers(sans: &[String], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    sans.iter().any(|s| {
        let s = s.to_ascii_lowercase();
        if s == name {
            return true;
        }
        match (s.strip_prefix("*."), name.split_once('.')) {
            (Some(suffix), Some((label, rest))) => {
                !label.is_empty() && rest == suffix && name.parse::<std::net::IpAddr>().is_err()
            }
            _ => false,
        }
    })
}

/// Check the operator's certificate `NAME` (`cert_text` from `cert_file`: the leaf first,
/// then its intermediates; `key_text` from `key_file`) at `now`.
pub fn check_import(
    name: &str,
    cert_text: &str,
    cert_file: &str,
    key_text: &str,
    key_file: &str,
    now: i64,
) -> Result<Imported> {
    let blocks = pem_blocks(cert_text, "CERTIFICATE");
    ensure!(
        !blocks.is_empty(),
        "{cert_file}: not a PEM certificate (no -----BEGIN CERTIFICATE----- block)"
    );
    let ders: Vec<Vec<u8>> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            x509_parser::pem::parse_x509_pem(b.as_bytes())
                .map(|(_, p)| p.contents)
                .map_err(|e| anyhow!("{cert_file}: certificate {}: not valid PEM ({e})", i + 1))
        })
        .collect::<Result<_>>()?;
    let certs: Vec<X509Certificate<'_>> = ders
        .iter()
        .enumerate()
        .map(|(i, d)| {
            X509Certificate::from_der(d)
                .map(|(_, c)| c)
                .map_err(|e| anyhow!("{cert_file}: certificate {}: not X.509 ({e})", i + 1))
        })
        .collect::<Result<_>>()?;
    let leaf = &certs[0];
    let subject = |c: &X509Certificate<'_>| c.subject().to_string();
    ensure!(
        !leaf.is_ca(),
        "{cert_file}: the first certificate ({}) is a CA: the file must start with the server certificate, then its intermediates",
        subject(leaf)
    );
    // every certificate valid now
    for (i, c) in certs.iter().enumerate() {
        let (from, to) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        if now < from {
            bail!(
                "{cert_file}: certificate {} ({}) is not valid yet (from {})",
                i + 1,
                subject(c),
                rfc3339(from)
            );
        }
        if now >= to {
            bail!(
                "{cert_file}: certificate {} ({}) expired on {}",
                i + 1,
                subject(c),
                rfc3339(to)
            );
        }
    }
    // the chain in order: each certificate issued and signed by the next one
    for (i, pair) in certs.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        ensure!(
            child.issuer() == parent.subject(),
            "{cert_file}: the chain is out of order: certificate {} ({}) is issued by {}, but certificate {} is {}",
            i + 1,
            subject(child),
            child.issuer(),
            i + 2,
            subject(parent)
        );
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|e| {
                anyhow!(
                    "{cert_file}: certificate {} ({}) is not signed by certificate {} ({}): {e}",
                    i + 1,
                    subject(child),
                    i + 2,
                    subject(parent)
                )
            })?;
        ensure!(
            parent.is_ca(),
            "{cert_file}: certificate {} ({}) signs another but is not a CA",
            i + 2,
            subject(parent)
        );
    }
    // the key: of a kind browsers and haproxy take (read from the certificate first: the
    // crypto library refuses short RSA keys outright), and the leaf's
    match leaf.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            ensure!(
                bits >= 2048,
                "{key_file}: an RSA key of {bits} bits: at least 2048 are needed"
            );
        }
        Ok(x509_parser::public_key::PublicKey::EC(_)) => {
            use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
            let curve = leaf
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            ensure!(
                curve == Some(OID_EC_P256) || curve == Some(OID_NIST_EC_P384),
                "{key_file}: an ECDSA key on a curve other than P-256 or P-384"
            );
        }
        _ => bail!(
            "{key_file}: the key must be ECDSA (P-256 or P-384) or RSA of at least 2048 bits (browsers refuse Ed25519 server certificates)"
        ),
    }
    let key = KeyPair::from_pem(key_text).map_err(|e| {
        anyhow!(
            "{key_file}: not a private key in PKCS#8 PEM (\"BEGIN PRIVATE KEY\"; convert with `openssl pkcs8 -topk8 -nocrypt`): {e}"
        )
    })?;
    ensure!(
        leaf.public_key().subject_public_key.data.as_ref() == key.der_bytes(),
        "{key_file} is not the key of {cert_file} (their public keys differ)"
    );
    let not_after = leaf.validity().not_after.timestamp();
    let days_left = (not_after - now).div_euclid(86_400);
    ensure!(
        days_left >= MIN_DAYS_LEFT,
        "{cert_file}: expires on {} ({days_left} day(s) left; at least {MIN_DAYS_LEFT} are needed)",
        rfc3339(not_after)
    );
    let mut warnings = Vec::new();
    if days_left < 30 {
        warnings.push(format!(
            "certificate {name}: expires in {days_left} day(s) ({})",
            rfc3339(not_after)
        ));
    }
    let sans = san_names(leaf);
    let cn = common_name(leaf.subject());
    let cert_pem = blocks[0].clone();
    let chain_pem: String = blocks[1..].concat();
    let key_pem = if key_text.ends_with('\n') {
        key_text.to_string()
    } else {
        format!("{key_text}\n")
    };
    let record = Issued {
        name: name.to_string(),
        subject: cn
            .clone()
            .or_else(|| sans.first().cloned())
            .unwrap_or_default(),
        sans,
        usage: Usage::Server,
        issuer: common_name(leaf.issuer()).unwrap_or_else(|| leaf.issuer().to_string()),
        not_before: leaf.validity().not_before.timestamp(),
        not_after,
        cert_sha256: sha256_hex(cert_pem.as_bytes()),
        key_sha256: sha256_hex(key_pem.as_bytes()),
        ca_sha256: if chain_pem.is_empty() {
            String::new()
        } else {
            sha256_hex(chain_pem.as_bytes())
        },
        imported: true,
    };
    Ok(Imported {
        record,
        cert_pem,
        chain_pem,
        key_pem,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Request};

    const NOW: i64 = 1_800_000_000;

    fn leaf(ca: &Ca, sans: &[&str], days: i64) -> (String, String) {
        let (_, cert, key) = ca
            .issue(
                &Request {
                    name: "entry".into(),
                    usage: Usage::Server,
                    sans: sans.iter().map(|s| s.to_string()).collect(),
                    lifetime_secs: days * 86_400,
                },
                NOW,
            )
            .unwrap();
        (cert, key)
    }

    fn err(r: Result<Imported>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn names_are_covered_exactly_or_by_one_wildcard_label() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers(&s(&["relay.example.com"]), "Relay.Example.com"));
        assert!(covers(&s(&["*.example.com"]), "relay.example.com"));
        assert!(!covers(&s(&["*.example.com"]), "a.relay.example.com"));
        assert!(!covers(&s(&["*.example.com"]), "example.com"));
        assert!(covers(&s(&["10.0.0.1"]), "10.0.0.1"));
        assert!(!covers(&s(&["*.0.0.1"]), "10.0.0.1"));
    }

    #[test]
    fn a_chain_in_order_with_its_key_is_imported() {
        let root = Ca::create("Customer Root", NOW).unwrap();
        let (cert, key) = leaf(&root, &["relay.example.com", "10.1.2.3"], 90);
        let full = format!("{cert}{}", root.cert_pem);
        let i = check_import("entry", &full, "full.pem", &key, "key.pem", NOW).unwrap();
        assert_eq!(i.record.sans, ["relay.example.com", "10.1.2.3"]);
        assert_eq!(i.record.issuer, "Customer Root");
        assert!(i.record.imported);
        assert_eq!(i.chain_pem, root.cert_pem);
        assert_eq!(i.record.ca_sha256, sha256_hex(root.cert_pem.as_bytes()));
        assert!(i.warnings.is_empty());
        // alone, without its chain
        let i = check_import("entry", &cert, "c.pem", &key, "key.pem", NOW).unwrap();
        assert_eq!(i.record.ca_sha256, "");
        assert_eq!(i.record.part_objects(crate::pki::Part::Chain).len(), 1);
        // 20 days left: imported with a warning
        let (c20, k20) = leaf(&root, &["relay.example.com"], 20);
        let i = check_import("entry", &c20, "c.pem", &k20, "k.pem", NOW).unwrap();
        assert!(
            i.warnings[0].contains("expires in 20 day(s)"),
            "{:?}",
            i.warnings
        );
    }

    #[test]
    fn bad_certificates_are_named_with_their_file() {
        let root = Ca::create("Customer Root", NOW).unwrap();
        let other = Ca::create("Other Root", NOW).unwrap();
        let (cert, key) = leaf(&root, &["relay.example.com"], 90);
        let (_, other_key) = leaf(&root, &["x"], 90);
        assert_eq!(
            err(check_import("e", &cert, "c.pem", &other_key, "k.pem", NOW)),
            "k.pem is not the key of c.pem (their public keys differ)"
        );
        assert!(err(check_import("e", "hello", "c.pem", &key, "k.pem", NOW))
            .starts_with("c.pem: not a PEM certificate"));
        assert!(err(check_import("e", &cert, "c.pem", "junk", "k.pem", NOW))
            .starts_with("k.pem: not a private key in PKCS#8 PEM"));
        // out of order: the CA first
        let e = err(check_import(
            "e",
            &format!("{}{cert}", root.cert_pem),
            "full.pem",
            &key,
            "k.pem",
            NOW,
        ));
        assert!(e.contains("full.pem: the first certificate"), "{e}");
        // a chain that does not link: the leaf followed by another CA
        let e = err(check_import(
            "e",
            &format!("{cert}{}", other.cert_pem),
            "full.pem",
            &key,
            "k.pem",
            NOW,
        ));
        assert!(
            e.contains("full.pem: the chain is out of order: certificate 1"),
            "{e}"
        );
        // expired, not yet valid, about to expire
        let e = err(check_import(
            "e",
            &cert,
            "c.pem",
            &key,
            "k.pem",
            NOW + 91 * 86_400,
        ));
        assert!(
            e.contains("c.pem: certificate 1 (CN=relay.example.com) expired on"),
            "{e}"
        );
        let e = err(check_import(
            "e",
            &cert,
            "c.pem",
            &key,
            "k.pem",
            NOW - 86_400,
        ));
        assert!(e.contains("is not valid yet"), "{e}");
        let e = err(check_import(
            "e",
            &cert,
            "c.pem",
            &key,
            "k.pem",
            NOW + 85 * 86_400,
        ));
        assert!(
            e.contains("c.pem: expires on") && e.contains("at least 7"),
            "{e}"
        );
        // an Ed25519 key
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let p = rcgen::CertificateParams::new(vec!["relay.example.com".into()]).unwrap();
        let c = p.self_signed(&ed).unwrap();
        let e = err(check_import(
            "e",
            &c.pem(),
            "c.pem",
            &ed.serialize_pem(),
            "k.pem",
            NOW,
        ));
        assert!(e.contains("k.pem: the key must be ECDSA"), "{e}");
    }
}
