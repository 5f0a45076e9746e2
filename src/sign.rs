//! Bundle signatures: ed25519 keys in a small text format, the detached `bundle.json.sig`
//! entry, and the host's trust policy. The build side writes the entry (`build --sign-key`,
//! `sign`); the loader's verify step hands the entry and the host's trusted keys to
//! [`evaluate`], a pure function that decides.
//!
//! Formats (UTF-8 text, one `field: value` per line after a fixed first line; in key files
//! blank lines and lines starting with `#` are ignored; values in base64 are standard
//! base64 with padding):
//! ```text
//! reemo-bundle private key v1          reemo-bundle public key v1
//! algorithm: ed25519                   algorithm: ed25519
//! key-id: 3f2a9c01b7e4d562             key-id: 3f2a9c01b7e4d562
//! secret: <32-byte seed, base64>       public: <32-byte public key, base64>
//!
//! reemo-bundle signature v1            (the bundle.json.sig entry)
//! algorithm: ed25519
//! key-id: 3f2a9c01b7e4d562
//! public: <32-byte public key, base64>
//! signature: <64-byte ed25519 signature of the exact bundle.json bytes, base64>
//! ```
//! The key id is the first 8 bytes (16 hex digits) of the sha256 of the 32-byte public key.
//! The signature entry carries the public key so that a bundle can be checked for
//! tampering anywhere; whether it is *trusted* is decided only by the host's own keys.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

const PRIVATE_HEADER: &str = "reemo-bundle private key v1";
const PUBLIC_HEADER: &str = "reemo-bundle public key v1";
const SIGNATURE_HEADER: &str = "reemo-bundle signature v1";
const ALGORITHM: &str = "ed25519";

/// Name of the folder of trusted public keys inside the host state directory.
pub const TRUSTED_KEYS_DIR: &str = "trusted-keys";

/// A key file, public key file or signature entry that does not parse.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{origin}: {}{reason}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct FormatError {
    /// What was parsed: a file path or `bundle.json.sig`.
    pub origin: String,
    /// 1-based line number, when the problem is on one line.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// Key id of a public key: first 8 bytes of its sha256, in hex.
fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// A private signing key.
pub struct SecretKey {
    signing: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.key_id())
    }
}

/// A public key, as found in a `.pub` file or a signature entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    verifying: VerifyingKey,
}

impl SecretKey {
    /// A new random key (from the operating system's generator).
    pub fn generate() -> SecretKey {
        SecretKey {
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// A key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            verifying: self.signing.verifying_key(),
        }
    }

    /// Key id of its public half.
    pub fn key_id(&self) -> String {
        self.public().key_id()
    }

    /// The private key file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{PRIVATE_HEADER}\nalgorithm: {ALGORITHM}\nkey-id: {}\nsecret: {}\n",
            self.key_id(),
            B64.encode(self.signing.to_bytes())
        )
    }

    /// Parse a private key file's text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<SecretKey, FormatError> {
        let f = Fields::parse(
            text,
            origin,
            PRIVATE_HEADER,
            &["algorithm", "key-id", "secret"],
        )?;
        f.algorithm()?;
        let seed: [u8; 32] = f.base64("secret")?;
        let key = SecretKey::from_seed(&seed);
        f.key_id_matches(&key.public())?;
        Ok(key)
    }

    /// Read a private key file.
    pub fn read(path: &Path) -> Result<SecretKey> {
        let text = read_text(path, "private key")?;
        Ok(SecretKey::parse(&text, &path.display().to_string())?)
    }

    /// The `bundle.json.sig` entry for the exact bytes of `bundle.json`.
    pub fn sign_manifest(&self, manifest: &[u8]) -> Vec<u8> {
        let sig = self.signing.sign(manifest);
        format!(
            "{SIGNATURE_HEADER}\nalgorithm: {ALGORITHM}\nkey-id: {}\npublic: {}\nsignature: {}\n",
            self.key_id(),
            B64.encode(self.signing.verifying_key().as_bytes()),
            B64.encode(sig.to_bytes())
        )
        .into_bytes()
    }
}

impl PublicKey {
    /// Its key id.
    pub fn key_id(&self) -> String {
        key_id(&self.verifying)
    }

    /// The public key file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{PUBLIC_HEADER}\nalgorithm: {ALGORITHM}\nkey-id: {}\npublic: {}\n",
            self.key_id(),
            B64.encode(self.verifying.as_bytes())
        )
    }

    /// Parse a public key file's text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<PublicKey, FormatError> {
        let f = Fields::parse(
            text,
            origin,
            PUBLIC_HEADER,
            &["algorithm", "key-id", "public"],
        )?;
        f.algorithm()?;
        let key = f.public("public")?;
        f.key_id_matches(&key)?;
        Ok(key)
    }

    /// Read a public key file.
    pub fn read(path: &Path) -> Result<PublicKey> {
        let text = read_text(path, "public key")?;
        Ok(PublicKey::parse(&text, &path.display().to_string())?)
    }

    /// Whether `signature` is this key's signature of `message` (strict ed25519: no weak
    /// keys, no malleable signatures).
    fn verifies(&self, message: &[u8], signature: &ed25519_dalek::Signature) -> bool {
        self.verifying.verify_strict(message, signature).is_ok()
    }
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    let data = fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    String::from_utf8(data).map_err(|_| {
        anyhow::Error::new(FormatError {
            origin: path.display().to_string(),
            line: None,
            reason: format!("not a {what} file (not UTF-8 text)"),
        })
    })
}

/// The parsed `bundle.json.sig` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SignatureEntry {
    /// Key id it names (checked against `public`).
    pub key_id: String,
    /// Public key it carries.
    pub public: PublicKey,
    signature: ed25519_dalek::Signature,
}

impl SignatureEntry {
    /// Parse the entry's bytes.
    pub fn parse(bytes: &[u8]) -> Result<SignatureEntry, FormatError> {
        let origin = crate::bundle::manifest::SIGNATURE_NAME;
        let text = std::str::from_utf8(bytes).map_err(|_| FormatError {
            origin: origin.into(),
            line: None,
            reason: "not UTF-8 text".into(),
        })?;
        let f = Fields::parse(
            text,
            origin,
            SIGNATURE_HEADER,
            &["algorithm", "key-id", "public", "signature"],
        )?;
        f.algorithm()?;
        let public = f.public("public")?;
        f.key_id_matches(&public)?;
        let sig: [u8; 64] = f.base64("signature")?;
        Ok(SignatureEntry {
            key_id: public.key_id(),
            public,
            signature: ed25519_dalek::Signature::from_bytes(&sig),
        })
    }

    /// Whether `key` signed exactly these `bundle.json` bytes.
    fn verifies_with(&self, key: &PublicKey, manifest: &[u8]) -> bool {
        key.verifies(manifest, &self.signature)
    }
}

/// `field: value` lines after a fixed first line.
struct Fields<'a> {
    origin: &'a str,
    values: Vec<(&'static str, usize, &'a str)>,
}

impl<'a> Fields<'a> {
    fn parse(
        text: &'a str,
        origin: &'a str,
        header: &str,
        names: &[&'static str],
    ) -> Result<Fields<'a>, FormatError> {
        let err = |line: Option<usize>, reason: String| FormatError {
            origin: origin.into(),
            line,
            reason,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, l)) if l == header => {}
            Some((n, l)) => {
                return Err(err(
                    Some(n),
                    format!("expected {header:?}, found {:?}", clip(l)),
                ))
            }
            None => return Err(err(None, format!("empty, expected {header:?}"))),
        }
        let mut values: Vec<(&'static str, usize, &str)> = Vec::new();
        for (n, l) in lines {
            let Some((k, v)) = l.split_once(':') else {
                return Err(err(
                    Some(n),
                    format!("expected `field: value`, found {:?}", clip(l)),
                ));
            };
            let k = k.trim();
            let Some(name) = names.iter().find(|x| **x == k) else {
                return Err(err(
                    Some(n),
                    format!("unknown field {k:?} (expected {})", names.join(", ")),
                ));
            };
            if values.iter().any(|(x, _, _)| x == name) {
                return Err(err(Some(n), format!("field {k:?} appears twice")));
            }
            values.push((name, n, v.trim()));
        }
        for name in names {
            if !values.iter().any(|(x, _, _)| x == name) {
                return Err(err(None, format!("missing field {name:?}")));
            }
        }
        Ok(Fields { origin, values })
    }

    fn get(&self, name: &str) -> (usize, &'a str) {
        let (_, n, v) = self
            .values
            .iter()
            .find(|(x, _, _)| *x == name)
            .expect("presence checked by parse");
        (*n, v)
    }

    fn err(&self, line: usize, reason: String) -> FormatError {
        FormatError {
            origin: self.origin.into(),
            line: Some(line),
            reason,
        }
    }

    fn algorithm(&self) -> Result<(), FormatError> {
        let (n, v) = self.get("algorithm");
        if v != ALGORITHM {
            return Err(self.err(
                n,
                format!("algorithm {v:?} is not supported (only {ALGORITHM})"),
            ));
        }
        Ok(())
    }

    fn base64<const N: usize>(&self, name: &str) -> Result<[u8; N], FormatError> {
        let (n, v) = self.get(name);
        let bytes = B64
            .decode(v)
            .map_err(|e| self.err(n, format!("field {name:?} is not base64 ({e})")))?;
        bytes.as_slice().try_into().map_err(|_| {
            self.err(
                n,
                format!("field {name:?} holds {} bytes, expected {N}", bytes.len()),
            )
        })
    }

    fn public(&self, name: &str) -> Result<PublicKey, FormatError> {
        let bytes: [u8; 32] = self.base64(name)?;
        let verifying = VerifyingKey::from_bytes(&bytes).map_err(|_| {
            self.err(
                self.get(name).0,
                format!("field {name:?} is not a valid ed25519 public key"),
            )
        })?;
        Ok(PublicKey { verifying })
    }

    fn key_id_matches(&self, key: &PublicKey) -> Result<(), FormatError> {
        let (n, v) = self.get("key-id");
        let id = key.key_id();
        if v != id {
            return Err(self.err(
                n,
                format!("key-id {v:?} does not match the key (its id is {id})"),
            ));
        }
        Ok(())
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Write a new key pair: `out` (private, mode 0600) and `out.pub`. Refuses to overwrite
/// either; on failure neither file is left behind.
pub fn write_key_pair(out: &Path, key: &SecretKey) -> Result<PathBuf> {
    let public_path = pub_path(out);
    for p in [out, public_path.as_path()] {
        if fs::symlink_metadata(p).is_ok() {
            anyhow::bail!(
                "{} already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let dir = crate::fsutil::parent_dir(out);
    // Both files are written completely under temporary names first, then linked into
    // place (link fails if the name exists, so a racing writer is not clobbered either).
    let tmp_private = write_temp(dir, key.to_text().as_bytes(), 0o600)?;
    let tmp_public = write_temp(dir, key.public().to_text().as_bytes(), 0o644)?;
    let link = |from: &Path, to: &Path| {
        fs::hard_link(from, to).with_context(|| format!("creating {}", to.display()))
    };
    let res = link(&tmp_private, out).and_then(|()| {
        link(&tmp_public, &public_path).inspect_err(|_| {
            let _ = fs::remove_file(out);
        })
    });
    res?;
    crate::fsutil::sync_dir(dir)?;
    Ok(public_path)
}

fn write_temp(dir: &Path, data: &[u8], mode: u32) -> Result<tempfile::TempPath> {
    let tmp = crate::fsutil::temp_in(dir, mode)?;
    let mut f = tmp.as_file();
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    Ok(tmp.into_temp_path())
}

/// `PATH.pub` for a private key path.
fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// A public key the host trusts, with the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// Where it was configured.
    pub source: PathBuf,
}

/// The host's trusted keys: every `*.pub` in `state_dir/trusted-keys/` (sorted by name)
/// and every `extra` file. A file that does not parse is an error, never skipped: a broken
/// trust configuration must not quietly turn into "no keys, accept anything".
pub fn load_trusted(state_dir: &Path, extra: &[PathBuf]) -> Result<Vec<TrustedKey>> {
    let dir = state_dir.join(TRUSTED_KEYS_DIR);
    let mut files = Vec::new();
    match fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.with_context(|| format!("listing {}", dir.display()))?;
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pub") {
                    files.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    }
    files.sort();
    files.extend(extra.iter().cloned());
    read_trusted(&files).context("loading the host's trusted keys")
}

/// Public key files as trusted keys (a key given twice counts once); errors name the file.
pub fn read_trusted(files: &[PathBuf]) -> Result<Vec<TrustedKey>> {
    let mut keys: Vec<TrustedKey> = Vec::new();
    for p in files {
        let key = PublicKey::read(p)?;
        if !keys.iter().any(|k| k.key == key) {
            keys.push(TrustedKey {
                key,
                source: p.clone(),
            });
        }
    }
    Ok(keys)
}

/// What the trust policy decided about a bundle it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by a trusted key, and the signature verifies.
    Trusted {
        /// Key id.
        key_id: String,
        /// File the trusted key came from.
        source: PathBuf,
    },
    /// No trusted key is configured and the bundle is unsigned.
    Unsigned,
    /// No trusted key is configured; the bundle is signed and its signature verifies with
    /// the key it carries (untampered, but nobody vouched for that key).
    SignedUnchecked {
        /// Key id.
        key_id: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Trusted { key_id, source } => write!(
                f,
                "signed by key id {key_id}, trusted ({})",
                source.display()
            ),
            Verdict::Unsigned => f.write_str("unsigned"),
            Verdict::SignedUnchecked { key_id } => write!(
                f,
                "signed by key id {key_id}; the signature matches the key it carries (no trusted key given to check who that is)"
            ),
        }
    }
}

/// Why the trust policy refused a bundle.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TrustError {
    /// Trusted keys are configured and the bundle carries no signature.
    #[error(
        "it is unsigned, and this host accepts only bundles signed by a trusted key ({trusted})"
    )]
    Unsigned {
        /// Trusted key ids with their files.
        trusted: String,
    },
    /// Signed by a key that is not among the trusted keys.
    #[error("it is signed by key id {key_id}, which is not a trusted key here ({trusted})")]
    UnknownKey {
        /// Key id of the signature.
        key_id: String,
        /// Trusted key ids with their files.
        trusted: String,
    },
    /// The signature does not verify: bundle.json or the signature was altered.
    #[error("its signature by key id {key_id} does not verify: bundle.json or bundle.json.sig was altered after signing")]
    BadSignature {
        /// Key id of the signature.
        key_id: String,
    },
    /// The signature entry does not parse.
    #[error("{0}")]
    Malformed(FormatError),
}

/// The trust policy, for the exact `bundle.json` bytes and the `bundle.json.sig` entry (if
/// any) of a bundle whose hashes already verified:
/// - a signature entry must always parse and verify (a corrupt signature is never ignored);
/// - with trusted keys, only a signature by one of them is accepted;
/// - without trusted keys, unsigned and signed bundles are accepted (the caller warns).
pub fn evaluate(
    manifest: &[u8],
    signature: Option<&[u8]>,
    trusted: &[TrustedKey],
) -> Result<Verdict, TrustError> {
    let listed = || {
        trusted
            .iter()
            .map(|k| format!("{} from {}", k.key.key_id(), k.source.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(bytes) = signature else {
        if trusted.is_empty() {
            return Ok(Verdict::Unsigned);
        }
        return Err(TrustError::Unsigned { trusted: listed() });
    };
    let entry = SignatureEntry::parse(bytes).map_err(TrustError::Malformed)?;
    if trusted.is_empty() {
        if !entry.verifies_with(&entry.public, manifest) {
            return Err(TrustError::BadSignature {
                key_id: entry.key_id,
            });
        }
        return Ok(Verdict::SignedUnchecked {
            key_id: entry.key_id,
        });
    }
    // Found by key id, checked with the host's own copy of the key: the key the entry
    // carries plays no part in trust.
    let Some(t) = trusted.iter().find(|t| t.key.key_id() == entry.key_id) else {
        return Err(TrustError::UnknownKey {
            key_id: entry.key_id,
            trusted: listed(),
        });
    };
    if !entry.verifies_with(&t.key, manifest) {
        return Err(TrustError::BadSignature {
            key_id: entry.key_id,
        });
    }
    Ok(Verdict::Trusted {
        key_id: entry.key_id,
        source: t.source.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32])
    }

    fn trusted(k: &SecretKey, file: &str) -> TrustedKey {
        TrustedKey {
            key: k.public(),
            source: PathBuf::from(file),
        }
    }

    #[test]
    fn key_files_round_trip() {
        let k = key(7);
        let back = SecretKey::parse(&k.to_text(), "k").unwrap();
        assert_eq!(back.to_text(), k.to_text());
        let p = PublicKey::parse(&k.public().to_text(), "k.pub").unwrap();
        assert_eq!(p, k.public());
        // Comments and blank lines are allowed in key files.
        let commented = format!("# ops laptop\n\n{}", k.public().to_text());
        assert_eq!(PublicKey::parse(&commented, "k.pub").unwrap(), p);
    }

    #[test]
    fn signatures_are_deterministic_and_golden() {
        let k = key(1);
        let a = k.sign_manifest(b"{}\n");
        assert_eq!(a, k.sign_manifest(b"{}\n"));
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with("reemo-bundle signature v1\nalgorithm: ed25519\n"));
        assert!(text.contains(&format!("key-id: {}\n", k.key_id())));
        // RFC 8032 ed25519 is deterministic: pin the bytes so a format drift fails loudly.
        assert_eq!(
            crate::hash::sha256_hex(text.as_bytes()),
            GOLDEN_SIG_ENTRY,
            "{text}"
        );
    }

    const GOLDEN_SIG_ENTRY: &str =
        "98b399f974f99b079b7e1b1b6a76b7cdf182ea2aad1241840eb60f4ac83277c5";

    #[test]
    fn signature_is_plain_ed25519_over_the_manifest_bytes() {
        // RFC 8032 section 7.1, test 1 (empty message): an independent check that the entry
        // holds a standard ed25519 signature of exactly the bytes given.
        let seed: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let sig = hex::decode(concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ))
        .unwrap();
        let text = String::from_utf8(SecretKey::from_seed(&seed).sign_manifest(b"")).unwrap();
        assert!(
            text.contains(&format!("\npublic: {}\n", B64.encode(public))),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("\nsignature: {}\n", B64.encode(sig))),
            "{text}"
        );
        let entry = SignatureEntry::parse(text.as_bytes()).unwrap();
        assert!(entry.verifies_with(&entry.public, b""));
        // Key id: first 8 bytes of sha256 of that public key (computed independently).
        assert_eq!(entry.key_id, "21fe31dfa154a261");
        assert!(!entry.verifies_with(&entry.public, b"x"));
    }

    #[test]
    fn key_parse_errors_name_file_line_and_field() {
        let k = key(3);
        let good = k.public().to_text();
        let private = k.to_text();
        let other = key(4).public().to_text();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "keys/a.pub: empty, expected \"reemo-bundle public key v1\""),
            (
                private.clone(),
                "keys/a.pub: line 1: expected \"reemo-bundle public key v1\", found \"reemo-bundle private key v1\"",
            ),
            (
                good.replace("algorithm: ed25519", "algorithm: rsa"),
                "keys/a.pub: line 2: algorithm \"rsa\" is not supported (only ed25519)",
            ),
            (
                good.replace("key-id: ", "key-id: 00"),
                "keys/a.pub: line 3: key-id \"00",
            ),
            (
                good.replace("public: ", "public: !!"),
                "keys/a.pub: line 4: field \"public\" is not base64",
            ),
            (
                format!("{good}comment: x\n"),
                "keys/a.pub: line 5: unknown field \"comment\" (expected algorithm, key-id, public)",
            ),
            (
                format!("{good}public: x\n"),
                "keys/a.pub: line 5: field \"public\" appears twice",
            ),
            (
                good.lines().take(3).collect::<Vec<_>>().join("\n"),
                "keys/a.pub: missing field \"public\"",
            ),
            (
                format!("{}\nno colon here\n", good.trim_end()),
                "keys/a.pub: line 5: expected `field: value`, found \"no colon here\"",
            ),
            (
                // someone else's key id with this key: names both
                good.replace(
                    &format!("key-id: {}", k.key_id()),
                    &format!("key-id: {}", key(4).key_id()),
                ),
                "does not match the key (its id is",
            ),
            (
                other.replace(
                    other.lines().nth(3).unwrap(),
                    &format!("public: {}", B64.encode([1u8; 16])),
                ),
                "keys/a.pub: line 4: field \"public\" holds 16 bytes, expected 32",
            ),
        ];
        for (text, want) in cases {
            let e = PublicKey::parse(&text, "keys/a.pub")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
        }
        let e = SecretKey::parse(&good, "keys/a").unwrap_err().to_string();
        assert!(
            e.starts_with("keys/a: line 1: expected \"reemo-bundle private key v1\""),
            "{e}"
        );
        let e = SecretKey::parse(&private.replace("secret: ", "secret: AAAA"), "keys/a")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("keys/a: line 4: field \"secret\""), "{e}");
    }

    #[test]
    fn read_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.pub");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        let e = format!("{:#}", PublicKey::read(&p).unwrap_err());
        assert!(
            e.contains(&p.display().to_string()) && e.contains("not UTF-8"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            PublicKey::read(&d.path().join("none.pub")).unwrap_err()
        );
        assert!(e.contains("none.pub"), "{e}");
    }

    #[test]
    fn key_pair_files_modes_and_no_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("site");
        let k = key(9);
        let public = write_key_pair(&out, &k).unwrap();
        assert_eq!(public, d.path().join("site.pub"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o600);
        assert_eq!(mode(&public), 0o644);
        assert_eq!(SecretKey::read(&out).unwrap().key_id(), k.key_id());
        assert_eq!(PublicKey::read(&public).unwrap(), k.public());
        let e = write_key_pair(&out, &key(10)).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(
            SecretKey::read(&out).unwrap().key_id(),
            k.key_id(),
            "unchanged"
        );
        // only the .pub exists: still refused, and no private key left behind
        let out2 = d.path().join("other");
        fs::write(pub_path(&out2), "x").unwrap();
        assert!(write_key_pair(&out2, &k).is_err());
        assert!(!out2.exists());
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".key.tmp")),
            "{names:?}"
        );
    }

    #[test]
    fn policy() {
        let (a, b) = (key(1), key(2));
        let m = b"{\"name\": \"tiny\"}\n".as_slice();
        let sig_a = a.sign_manifest(m);
        let ta = trusted(&a, "/s/trusted-keys/a.pub");
        let tb = trusted(&b, "/s/trusted-keys/b.pub");
        let mut tampered_manifest = m.to_vec();
        tampered_manifest[3] ^= 1;
        let tampered_sig = {
            let text = String::from_utf8(sig_a.clone()).unwrap();
            let line = text.lines().find(|l| l.starts_with("signature: ")).unwrap();
            let mut raw = B64.decode(&line["signature: ".len()..]).unwrap();
            raw[10] ^= 0x40;
            text.replace(line, &format!("signature: {}", B64.encode(raw)))
                .into_bytes()
        };
        let id_a = a.key_id();
        let unchecked = Ok(Verdict::SignedUnchecked {
            key_id: id_a.clone(),
        });
        let trusted_a = Ok(Verdict::Trusted {
            key_id: id_a.clone(),
            source: "/s/trusted-keys/a.pub".into(),
        });
        let bad = Err(TrustError::BadSignature {
            key_id: id_a.clone(),
        });
        type Case<'a> = (
            &'a str,
            &'a [u8],
            Option<&'a [u8]>,
            Vec<TrustedKey>,
            Result<Verdict, TrustError>,
        );
        let cases: Vec<Case> = vec![
            ("no keys, unsigned", m, None, vec![], Ok(Verdict::Unsigned)),
            ("no keys, signed", m, Some(&sig_a), vec![], unchecked),
            (
                "no keys, manifest altered",
                &tampered_manifest,
                Some(&sig_a),
                vec![],
                bad.clone(),
            ),
            (
                "no keys, signature altered",
                m,
                Some(&tampered_sig),
                vec![],
                bad.clone(),
            ),
            (
                "trusted, signed by it",
                m,
                Some(&sig_a),
                vec![tb.clone(), ta.clone()],
                trusted_a,
            ),
            (
                "trusted, unsigned",
                m,
                None,
                vec![ta.clone()],
                Err(TrustError::Unsigned {
                    trusted: format!("{id_a} from /s/trusted-keys/a.pub"),
                }),
            ),
            (
                "trusted b, signed by a",
                m,
                Some(&sig_a),
                vec![tb.clone()],
                Err(TrustError::UnknownKey {
                    key_id: id_a.clone(),
                    trusted: format!("{} from /s/trusted-keys/b.pub", b.key_id()),
                }),
            ),
            (
                "trusted, manifest altered",
                &tampered_manifest,
                Some(&sig_a),
                vec![ta.clone()],
                bad.clone(),
            ),
            (
                "trusted, signature altered",
                m,
                Some(&tampered_sig),
                vec![ta.clone()],
                bad.clone(),
            ),
        ];
        for (name, manifest, sig, keys, want) in cases {
            assert_eq!(evaluate(manifest, sig, &keys), want, "{name}");
        }
        // A signature entry claiming key a's id but carrying key b's public key (and b's
        // signature): with a trusted, the host's own copy of a decides.
        let forged = String::from_utf8(b.sign_manifest(m))
            .unwrap()
            .replace(&b.key_id(), &id_a);
        assert!(matches!(
            evaluate(m, Some(forged.as_bytes()), std::slice::from_ref(&ta)),
            Err(TrustError::Malformed(_))
        ));
        // Garbage signature entry: refused even without trusted keys, naming the entry.
        let e = evaluate(m, Some(b"junk"), &[]).unwrap_err().to_string();
        assert!(e.starts_with("bundle.json.sig: line 1: expected"), "{e}");
    }

    #[test]
    fn trusted_keys_from_dir_and_flags() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(TRUSTED_KEYS_DIR);
        assert!(
            load_trusted(d.path(), &[]).unwrap().is_empty(),
            "no folder: no keys"
        );
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("b.pub"), key(2).public().to_text()).unwrap();
        fs::write(dir.join("a.pub"), key(1).public().to_text()).unwrap();
        fs::write(dir.join("README"), "not a key").unwrap();
        let extra = d.path().join("extra.pub");
        fs::write(&extra, key(3).public().to_text()).unwrap();
        let dup = d.path().join("dup.pub");
        fs::write(&dup, key(1).public().to_text()).unwrap();
        let keys = load_trusted(d.path(), &[extra.clone(), dup]).unwrap();
        let ids: Vec<String> = keys.iter().map(|k| k.key.key_id()).collect();
        assert_eq!(ids, vec![key(1).key_id(), key(2).key_id(), key(3).key_id()]);
        assert_eq!(keys[2].source, extra);
        fs::write(dir.join("c.pub"), "garbage").unwrap();
        let e = format!("{:#}", load_trusted(d.path(), &[]).unwrap_err());
        assert!(e.contains(&dir.join("c.pub").display().to_string()), "{e}");
    }
}
