//! Resume tokens, docs/PROTOCOL.md §8:
//!
//! - v3 `base64url(0x03 ‖ epoch ‖ session id ‖ generation ‖ HMAC-SHA256/128)`:
//!   one instance (`cluster.mode = "off"`), and still accepted in a cluster
//!   as owned by the instance that reads it;
//! - v4 `base64url(0x04 ‖ epoch ‖ session id ‖ generation ‖ len ‖ owner ‖
//!   HMAC/128)`: the owner (an instance name, or a sealed address) and the
//!   cluster name are under the MAC, so a client can neither move a token to
//!   another owner nor take it to another cluster that happens to share the
//!   secret.
//!
//! The generation counts the session's resumes: every welcome carries the
//! next one, and a session refuses generations below the highest one
//! presented (docs/PROTOCOL.md §8, "Rotation"). v1 and v2, minted before
//! tokens rotated, are the same without a generation; they are still read,
//! as generation 0, so clients holding one keep their sessions across the
//! upgrade. Only v3 and v4 are minted.
//!
//! The MAC also covers a fingerprint of the configured identity headers, so a
//! token presented by someone with another `Authorization` fails to verify.
//! Tokens are credentials: they are never logged (`Debug` is redacted).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::SessionId;

type HmacSha256 = Hmac<Sha256>;

const V1: u8 = 1;
const V2: u8 = 2;
const V3: u8 = 3;
const V4: u8 = 4;
const MAC_LEN: usize = 16;
/// Version, epoch and session id: what every version starts with.
const HEAD_LEN: usize = 1 + 8 + 16;
/// Longest owner field: its length is one byte.
pub(crate) const MAX_OWNER_LEN: usize = 255;

/// A token that decoded but is not yet verified.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RawToken {
    /// Journal epoch the token was minted in.
    pub(crate) epoch: u64,
    /// The session it names.
    pub(crate) session: SessionId,
    /// v2: the owner field (opaque here; `cluster` reads it). v1: `None`,
    /// owned by whichever instance reads it.
    pub(crate) owner: Option<Vec<u8>>,
    /// How many times the session was resumed when it was minted (v1 and
    /// v2: 0).
    pub(crate) generation: u32,
    version: u8,
    mac: [u8; MAC_LEN],
}

impl std::fmt::Debug for RawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawToken(session={}, generation={}, <redacted>)", self.session, self.generation)
    }
}

/// Why a token string is not even a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum MalformedToken {
    /// Not base64url.
    #[error("token is not base64url")]
    Encoding,
    /// Wrong length or version.
    #[error("token has the wrong length or version")]
    Shape,
}

impl RawToken {
    /// Decodes a token string without verifying it.
    pub(crate) fn parse(s: &str) -> Result<RawToken, MalformedToken> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| MalformedToken::Encoding)?;
        let (version, has_generation, has_owner) = match bytes.first() {
            Some(&V1) => (V1, false, false),
            Some(&V2) => (V2, false, true),
            Some(&V3) => (V3, true, false),
            Some(&V4) => (V4, true, true),
            _ => return Err(MalformedToken::Shape),
        };
        let fixed = HEAD_LEN + if has_generation { 4 } else { 0 };
        if bytes.len() < fixed + MAC_LEN {
            return Err(MalformedToken::Shape);
        }
        let owner = if has_owner {
            let n = usize::from(bytes[fixed]);
            if n == 0 || bytes.len() != fixed + 1 + n + MAC_LEN {
                return Err(MalformedToken::Shape);
            }
            Some(bytes[fixed + 1..fixed + 1 + n].to_vec())
        } else if bytes.len() != fixed + MAC_LEN {
            return Err(MalformedToken::Shape);
        } else {
            None
        };
        let epoch = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let session = SessionId(bytes[9..25].try_into().expect("16 bytes"));
        let generation =
            if has_generation { u32::from_be_bytes(bytes[25..29].try_into().expect("4 bytes")) } else { 0 };
        let mac = bytes[bytes.len() - MAC_LEN..].try_into().expect("mac bytes");
        Ok(RawToken { epoch, session, owner, generation, version, mac })
    }
}

/// A `token.identity_headers` entry that is not a header name.
#[derive(Debug, thiserror::Error)]
#[error("token.identity_headers: {0:?} is not a valid header name")]
pub struct BadIdentityHeader(String);

/// The signing key plus the identity headers tokens are bound to.
#[derive(Clone)]
pub(crate) struct TokenKey {
    secret: Vec<u8>,
    identity_headers: Vec<http::HeaderName>,
    /// `cluster.name`, under every v2 MAC.
    cluster: String,
}

impl TokenKey {
    /// A key from a secret and the (lower-case) identity header names.
    pub(crate) fn new(secret: Vec<u8>, identity_headers: &[String]) -> Result<TokenKey, BadIdentityHeader> {
        let identity_headers = identity_headers
            .iter()
            .map(|h| http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| BadIdentityHeader(h.clone())))
            .collect::<Result<_, _>>()?;
        Ok(TokenKey { secret, identity_headers, cluster: "tether".into() })
    }

    /// The same key for the cluster `name` (v2 tokens of another cluster
    /// then fail to verify).
    pub(crate) fn for_cluster(self, name: &str) -> TokenKey {
        TokenKey { cluster: name.to_owned(), ..self }
    }

    /// Hashes the identity headers of a request (absent and empty differ).
    pub(crate) fn identity(&self, headers: &HeaderMap) -> [u8; 32] {
        let mut h = Sha256::new();
        for name in &self.identity_headers {
            match headers.get(name) {
                Some(v) => {
                    h.update([1u8]);
                    h.update((v.len() as u64).to_be_bytes());
                    h.update(v.as_bytes());
                }
                None => h.update([0u8]),
            }
        }
        h.finalize().into()
    }

    /// The MAC over a token's fields; `generation` is `None` for v1 and v2.
    fn mac(
        &self,
        epoch: u64,
        session: &SessionId,
        generation: Option<u32>,
        owner: Option<&[u8]>,
        identity: &[u8; 32],
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(match (generation.is_some(), owner.is_some()) {
            (false, false) => b"tether-token-v1",
            (false, true) => b"tether-token-v2",
            (true, false) => b"tether-token-v3",
            (true, true) => b"tether-token-v4",
        });
        if owner.is_some() {
            // Length-prefixed, so the cluster name and what follows
            // cannot be shifted into each other.
            mac.update(&[self.cluster.len() as u8]);
            mac.update(self.cluster.as_bytes());
        }
        mac.update(&epoch.to_be_bytes());
        mac.update(&session.0);
        if let Some(generation) = generation {
            mac.update(&generation.to_be_bytes());
        }
        if let Some(owner) = owner {
            mac.update(&[owner.len() as u8]);
            mac.update(owner);
        }
        mac.update(identity);
        mac
    }

    /// Mints generation `generation` of a session's token, bound to
    /// `identity`: v3 without an owner, v4 naming `owner` (1 to
    /// [`MAX_OWNER_LEN`] bytes).
    pub(crate) fn mint(
        &self,
        epoch: u64,
        session: &SessionId,
        generation: u32,
        owner: Option<&[u8]>,
        identity: &[u8; 32],
    ) -> String {
        self.encode(epoch, session, Some(generation), owner, identity)
    }

    fn encode(
        &self,
        epoch: u64,
        session: &SessionId,
        generation: Option<u32>,
        owner: Option<&[u8]>,
        identity: &[u8; 32],
    ) -> String {
        let owner = owner.filter(|o| !o.is_empty() && o.len() <= MAX_OWNER_LEN);
        let tag = self.mac(epoch, session, generation, owner, identity).finalize().into_bytes();
        let mut bytes = Vec::with_capacity(HEAD_LEN + 4 + 1 + owner.map_or(0, <[u8]>::len) + MAC_LEN);
        bytes.push(match (generation.is_some(), owner.is_some()) {
            (false, false) => V1,
            (false, true) => V2,
            (true, false) => V3,
            (true, true) => V4,
        });
        bytes.extend_from_slice(&epoch.to_be_bytes());
        bytes.extend_from_slice(&session.0);
        if let Some(generation) = generation {
            bytes.extend_from_slice(&generation.to_be_bytes());
        }
        if let Some(owner) = owner {
            bytes.push(owner.len() as u8);
            bytes.extend_from_slice(owner);
        }
        bytes.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Constant-time check of the token's MAC against `identity`.
    pub(crate) fn verify(&self, token: &RawToken, identity: &[u8; 32]) -> bool {
        let owner = token.owner.as_deref();
        let generation = matches!(token.version, V3 | V4).then_some(token.generation);
        self.mac(token.epoch, &token.session, generation, owner, identity).verify_truncated_left(&token.mac).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_parse_verify() {
        let key = TokenKey::new(vec![7; 32], &["authorization".into()]).unwrap();
        let mut alice = HeaderMap::new();
        alice.insert("authorization", "Bearer alice".parse().unwrap());
        let mut bob = HeaderMap::new();
        bob.insert("authorization", "Bearer bob".parse().unwrap());
        let id = SessionId::generate();
        let t = key.mint(42, &id, 7, None, &key.identity(&alice));
        let raw = RawToken::parse(&t).unwrap();
        assert_eq!((raw.epoch, raw.session, raw.owner.clone(), raw.generation), (42, id, None, 7));
        assert_eq!(t.len(), 60, "45 bytes");
        assert!(key.verify(&raw, &key.identity(&alice)));
        assert!(!key.verify(&raw, &key.identity(&bob)));
        assert!(!key.verify(&raw, &key.identity(&HeaderMap::new())));
        let other = TokenKey::new(vec![8; 32], &["authorization".into()]).unwrap();
        assert!(!other.verify(&raw, &key.identity(&alice)));
        assert_eq!(RawToken::parse("!!"), Err(MalformedToken::Encoding));
        assert_eq!(RawToken::parse("AAAA"), Err(MalformedToken::Shape));
        assert!(!format!("{raw:?}").contains(&t));
    }

    #[test]
    fn the_generation_is_under_the_mac() {
        let key = TokenKey::new(vec![7; 32], &[]).unwrap();
        let none = key.identity(&HeaderMap::new());
        let id = SessionId::generate();
        let raw = RawToken::parse(&key.mint(1, &id, 3, None, &none)).unwrap();
        assert!(key.verify(&raw, &none));
        let bumped = RawToken { generation: 4, ..raw };
        assert!(!key.verify(&bumped, &none), "a client cannot move its token to another generation");
    }

    #[test]
    fn tokens_from_before_rotation_read_as_generation_0() {
        let key = TokenKey::new(vec![7; 32], &[]).unwrap().for_cluster("prod");
        let none = key.identity(&HeaderMap::new());
        let id = SessionId::generate();
        for (owner, version, len) in [(None, V1, 55), (Some(&b"tether-1"[..]), V2, 67)] {
            let t = key.encode(5, &id, None, owner, &none);
            assert_eq!(t.len(), len);
            let raw = RawToken::parse(&t).unwrap();
            assert_eq!((raw.version, raw.generation, raw.owner.as_deref()), (version, 0, owner));
            assert!(key.verify(&raw, &none));
            // Read as a v3/v4 of generation 0, it does not verify: the
            // versions have separate MACs.
            let relabelled = RawToken { version: version + 2, ..raw };
            assert!(!key.verify(&relabelled, &none));
        }
    }

    #[test]
    fn v4_owner_and_cluster_are_under_the_mac() {
        let key = TokenKey::new(vec![7; 32], &[]).unwrap().for_cluster("prod");
        let none = key.identity(&HeaderMap::new());
        let id = SessionId::generate();
        let t = key.mint(9, &id, 2, Some(b"tether-1"), &none);
        let raw = RawToken::parse(&t).unwrap();
        assert_eq!((raw.owner.as_deref(), raw.generation), (Some(&b"tether-1"[..]), 2));
        assert!(key.verify(&raw, &none));
        let moved = RawToken { owner: Some(b"tether-2".to_vec()), ..raw.clone() };
        assert!(!key.verify(&moved, &none), "the owner cannot be changed");
        let other = TokenKey::new(vec![7; 32], &[]).unwrap().for_cluster("staging");
        assert!(!other.verify(&raw, &none), "another cluster with the same secret refuses it");
        // A v3 token still verifies, whatever the cluster.
        let v3 = RawToken::parse(&key.mint(9, &id, 2, None, &none)).unwrap();
        assert!(other.verify(&v3, &none) && v3.owner.is_none());
        // A zero-length owner field is not a token.
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[29] = 0;
        assert_eq!(RawToken::parse(&URL_SAFE_NO_PAD.encode(&bytes)), Err(MalformedToken::Shape));
        // Nor is a v4 cut short of its generation.
        assert_eq!(RawToken::parse(&URL_SAFE_NO_PAD.encode([4u8; 30])), Err(MalformedToken::Shape));
    }
}
