//! Relay tokens: minting and constant-time checking of the HMAC-SHA256 tokens that admit an
//! agent or a user to one session (format documented in relay/README.md).

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use std::fmt;

/// The two ends of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The Reemo agent on the remote machine.
    Agent,
    /// The user's browser.
    User,
}

impl Role {
    /// Parses `agent` or `user`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "user" => Some(Role::User),
            _ => None,
        }
    }

    /// The wire name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::User => "user",
        }
    }

    /// The other end.
    pub fn other(self) -> Role {
        match self {
            Role::Agent => Role::User,
            Role::User => Role::Agent,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused; `reason()` is the metric label and the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the form `v1.KID.ROLE.EXP.SIG`.
    Malformed,
    /// The key id is not among the configured keys.
    UnknownKey,
    /// The signature does not match this session and role (tampered or other session).
    BadSignature,
    /// The expiry is in the past.
    Expired,
    /// The token was minted for the other role.
    RoleMismatch,
}

impl TokenError {
    /// Stable label used in metrics and error bodies.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired_token",
            TokenError::RoleMismatch => "role_mismatch",
        }
    }

    /// HTTP status returned before the upgrade.
    pub fn status(self) -> u16 {
        match self {
            TokenError::Malformed | TokenError::UnknownKey | TokenError::Expired => 401,
            TokenError::BadSignature | TokenError::RoleMismatch => 403,
        }
    }
}

/// One signing key.
struct Key {
    id: String,
    key: hmac::Key,
}

/// The set of keys accepted at once (rotation by key id); the first one signs new tokens.
pub struct KeySet {
    keys: Vec<Key>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("KeySet").field("ids", &ids).finish()
    }
}

/// True if `s` is a valid key id or session id: 1..=64 of `[A-Za-z0-9_-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes a secret written as `hex:…`, `base64:…`, or bare hex.
fn decode_secret(s: &str) -> Result<Vec<u8>> {
    let bytes = if let Some(b) = s.strip_prefix("base64:") {
        STANDARD
            .decode(b.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(b.trim()))
            .context("secret is not valid base64")?
    } else {
        let h = s.strip_prefix("hex:").unwrap_or(s).trim();
        decode_hex(h).context("secret is not valid hex (use hex:… or base64:…)")?
    };
    if bytes.len() < 16 {
        bail!("secret is {} bytes, at least 16 are required", bytes.len());
    }
    Ok(bytes)
}

fn decode_hex(s: &str) -> Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("invalid hex digit"))
        .collect()
}

impl KeySet {
    /// Parses a keys file: one `KEYID=SECRET` per line, `#` comments and blank lines ignored.
    pub fn parse(text: &str) -> Result<KeySet> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, secret) = line
                .split_once('=')
                .with_context(|| format!("line {}: expected KEYID=SECRET", n + 1))?;
            let id = id.trim();
            if !valid_id(id) || id.len() > 32 {
                bail!(
                    "line {}: invalid key id {id:?} (1-32 of A-Za-z0-9_-)",
                    n + 1
                );
            }
            if keys.iter().any(|k| k.id == id) {
                bail!("line {}: duplicate key id {id:?}", n + 1);
            }
            let secret = decode_secret(secret.trim()).with_context(|| format!("line {}", n + 1))?;
            keys.push(Key {
                id: id.to_string(),
                key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            });
        }
        if keys.is_empty() {
            bail!("no key found (expected lines KEYID=SECRET)");
        }
        Ok(KeySet { keys })
    }

    /// Id of the key that signs tokens minted by this server.
    pub fn signing_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Mints a token for `session` and `role` valid until `expires` (unix seconds).
    pub fn mint(&self, session: &str, role: Role, expires: u64) -> String {
        let k = &self.keys[0];
        let tag = hmac::sign(
            &k.key,
            signed_message(session, role, expires, &k.id).as_bytes(),
        );
        format!(
            "v1.{}.{}.{}.{}",
            k.id,
            role,
            expires,
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// A session id minted by the control API: `<24 hex random>-<expiry>-<24 hex MAC>`, the
    /// MAC by the signing key over the random part and the expiry. Any replica holding the
    /// keys recognises it ([`KeySet::minted_expiry`]), so a control call about a session can
    /// be answered by the replica its id routes to, whichever replica created it.
    pub fn mint_session_id(&self, random: &[u8; 12], expires: u64) -> String {
        let r: String = random.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{r}-{expires}-{}",
            self.session_mac(&self.keys[0], &r, expires)
        )
    }

    fn session_mac(&self, k: &Key, random_hex: &str, expires: u64) -> String {
        let tag = hmac::sign(
            &k.key,
            format!("ws-relay/v1/session\n{random_hex}\n{expires}").as_bytes(),
        );
        tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The expiry of a session id this key set (any of its keys) minted, else `None`.
    pub fn minted_expiry(&self, id: &str) -> Option<u64> {
        let mut parts = id.split('-');
        let (Some(r), Some(exp), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let exp: u64 = exp.parse().ok()?;
        if r.len() != 24 || mac.len() != 24 {
            return None;
        }
        self.keys
            .iter()
            .any(|k| ct_eq(self.session_mac(k, r, exp).as_bytes(), mac.as_bytes()))
            .then_some(exp)
    }

    /// Checks `token` for `session`; `want_role` is the role the client asked for, if any.
    /// The signature is checked (in constant time) before the expiry and the role.
    pub fn verify(
        &self,
        token: &str,
        session: &str,
        want_role: Option<Role>,
        now: u64,
    ) -> Result<Role, TokenError> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(kid), Some(role), Some(exp), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let role = Role::parse(role).ok_or(TokenError::Malformed)?;
        let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(TokenError::UnknownKey)?;
        hmac::verify(
            &key.key,
            signed_message(session, role, exp, kid).as_bytes(),
            &sig,
        )
        .map_err(|_| TokenError::BadSignature)?;
        if exp <= now {
            return Err(TokenError::Expired);
        }
        if want_role.is_some_and(|w| w != role) {
            return Err(TokenError::RoleMismatch);
        }
        Ok(role)
    }
}

/// The bytes under the MAC: `ws-relay/v1\n{session}\n{role}\n{expires}\n{kid}`.
fn signed_message(session: &str, role: Role, expires: u64, kid: &str) -> String {
    format!("ws-relay/v1\n{session}\n{role}\n{expires}\n{kid}")
}

/// Constant-time equality for secrets of possibly different lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare MACs of both values so the time does not depend on a common prefix or length.
    let k = hmac::Key::new(hmac::HMAC_SHA256, b"ws-relay ct_eq");
    let ta = hmac::sign(&k, a);
    hmac::verify(&k, b, ta.as_ref()).is_ok()
}

#[cfg(test)]
mod tests {

    #[test]
    fn minted_session_ids_are_recognised_by_every_holder_of_the_keys() {
        let a = KeySet::parse(
            "k2=00112233445566778899aabbccddeeff\nk1=000102030405060708090a0b0c0d0e0f\n",
        )
        .unwrap();
        let b = KeySet::parse("k1=000102030405060708090a0b0c0d0e0f\n").unwrap();
        let id = a.mint_session_id(&[7; 12], 1_700_000_000);
        assert!(valid_id(&id), "{id}");
        assert_eq!(id.len(), 24 + 1 + 10 + 1 + 24);
        assert_eq!(a.minted_expiry(&id), Some(1_700_000_000));
        // minted with k2: a replica that only has k1 does not recognise it
        assert_eq!(b.minted_expiry(&id), None);
        let id1 = b.mint_session_id(&[7; 12], 1_700_000_000);
        assert_eq!(a.minted_expiry(&id1), Some(1_700_000_000));
        // tampered expiry or MAC, or another shape
        assert_eq!(
            a.minted_expiry(&id.replace("1700000000", "1700000001")),
            None
        );
        assert_eq!(a.minted_expiry(&format!("{}0", &id[..id.len() - 1])), None);
        assert_eq!(a.minted_expiry("abc"), None);
    }

    use super::*;

    const KEYS: &str =
        "# rotation\nk2=00112233445566778899aabbccddeeff\n\nk1=base64:AAECAwQFBgcICQoLDA0ODw==\n";

    #[test]
    fn verify_table() {
        let keys = KeySet::parse(KEYS).unwrap();
        let now = 1_000_000;
        let good = keys.mint("s1", Role::Agent, now + 60);
        let other_keys = KeySet::parse("k1=000102030405060708090a0b0c0d0e0f").unwrap();
        let by_k1 = other_keys.mint("s1", Role::User, now + 60);
        let unknown = KeySet::parse("k9=00112233445566778899aabbccddeeff")
            .unwrap()
            .mint("s1", Role::Agent, now + 60);
        let wrong_secret = KeySet::parse("k2=ffffffffffffffffffffffffffffffff")
            .unwrap()
            .mint("s1", Role::Agent, now + 60);
        let expired = keys.mint("s1", Role::Agent, now);
        let mut tampered = good.clone();
        tampered = tampered.replace(".agent.", ".user.");
        let longer_exp = good.replacen(&format!(".{}.", now + 60), &format!(".{}.", now + 999), 1);
        let extra = format!("{good}.x");
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<Role>,
            Result<Role, TokenError>,
        );
        let cases: Vec<Case> = vec![
            ("good", &good, "s1", Some(Role::Agent), Ok(Role::Agent)),
            ("good without role", &good, "s1", None, Ok(Role::Agent)),
            (
                "second key accepted",
                &by_k1,
                "s1",
                Some(Role::User),
                Ok(Role::User),
            ),
            (
                "wrong role",
                &good,
                "s1",
                Some(Role::User),
                Err(TokenError::RoleMismatch),
            ),
            (
                "wrong session",
                &good,
                "s2",
                Some(Role::Agent),
                Err(TokenError::BadSignature),
            ),
            (
                "tampered role",
                &tampered,
                "s1",
                None,
                Err(TokenError::BadSignature),
            ),
            (
                "tampered expiry",
                &longer_exp,
                "s1",
                None,
                Err(TokenError::BadSignature),
            ),
            (
                "wrong secret",
                &wrong_secret,
                "s1",
                None,
                Err(TokenError::BadSignature),
            ),
            ("expired", &expired, "s1", None, Err(TokenError::Expired)),
            (
                "unknown key",
                &unknown,
                "s1",
                None,
                Err(TokenError::UnknownKey),
            ),
            ("empty", "", "s1", None, Err(TokenError::Malformed)),
            (
                "v2",
                "v2.k2.agent.1.AAAA",
                "s1",
                None,
                Err(TokenError::Malformed),
            ),
            (
                "bad role",
                "v1.k2.admin.1.AAAA",
                "s1",
                None,
                Err(TokenError::Malformed),
            ),
            (
                "bad exp",
                "v1.k2.agent.x.AAAA",
                "s1",
                None,
                Err(TokenError::Malformed),
            ),
            ("extra part", &extra, "s1", None, Err(TokenError::Malformed)),
        ];
        for (name, token, session, role, want) in cases {
            assert_eq!(keys.verify(token, session, role, now), want, "case {name}");
        }
    }

    #[test]
    fn golden_token() {
        // Pins the wire format so that tokens minted by the Infra side keep working.
        let keys = KeySet::parse("k1=000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(
            keys.mint("abc", Role::User, 1_700_000_000),
            "v1.k1.user.1700000000.TEOfLwL4HOprjkOra_0u-rlCuUbiAlf7H6KnGKKVzzo"
        );
    }

    #[test]
    fn parse_errors() {
        for (text, want) in [
            ("", "no key found"),
            ("# only\n", "no key found"),
            ("k1", "expected KEYID=SECRET"),
            ("k 1=00112233445566778899aabbccddeeff", "invalid key id"),
            ("k1=0011", "at least 16"),
            ("k1=zz112233445566778899aabbccddeeff", "not valid hex"),
            ("k1=base64:!!!", "not valid base64"),
            (
                "k1=00112233445566778899aabbccddeeff\nk1=00112233445566778899aabbccddeeff",
                "duplicate",
            ),
        ] {
            let err = format!("{:#}", KeySet::parse(text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
    }
}
