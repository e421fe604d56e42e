//! Resume tokens: `base64url(version ‖ epoch ‖ session id ‖ HMAC-SHA256/128)`.
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

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const TOKEN_LEN: usize = 1 + 8 + 16 + MAC_LEN;

/// A token that decoded but is not yet verified.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RawToken {
    /// Journal epoch the token was minted in.
    pub(crate) epoch: u64,
    /// The session it names.
    pub(crate) session: SessionId,
    mac: [u8; MAC_LEN],
}

impl std::fmt::Debug for RawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawToken(session={}, <redacted>)", self.session)
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
        if bytes.len() != TOKEN_LEN || bytes[0] != VERSION {
            return Err(MalformedToken::Shape);
        }
        let epoch = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let session = SessionId(bytes[9..25].try_into().expect("16 bytes"));
        let mac = bytes[25..].try_into().expect("mac bytes");
        Ok(RawToken { epoch, session, mac })
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
}

impl TokenKey {
    /// A key from a secret and the (lower-case) identity header names.
    pub(crate) fn new(secret: Vec<u8>, identity_headers: &[String]) -> Result<TokenKey, BadIdentityHeader> {
        let identity_headers = identity_headers
            .iter()
            .map(|h| http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| BadIdentityHeader(h.clone())))
            .collect::<Result<_, _>>()?;
        Ok(TokenKey { secret, identity_headers })
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

    fn mac(&self, epoch: u64, session: &SessionId, identity: &[u8; 32]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"tether-token-v1");
        mac.update(&epoch.to_be_bytes());
        mac.update(&session.0);
        mac.update(identity);
        mac
    }

    /// Mints the token for a session, bound to `identity`.
    pub(crate) fn mint(&self, epoch: u64, session: &SessionId, identity: &[u8; 32]) -> String {
        let tag = self.mac(epoch, session, identity).finalize().into_bytes();
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&epoch.to_be_bytes());
        bytes.extend_from_slice(&session.0);
        bytes.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Constant-time check of the token's MAC against `identity`.
    pub(crate) fn verify(&self, token: &RawToken, identity: &[u8; 32]) -> bool {
        self.mac(token.epoch, &token.session, identity).verify_truncated_left(&token.mac).is_ok()
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
        let t = key.mint(42, &id, &key.identity(&alice));
        let raw = RawToken::parse(&t).unwrap();
        assert_eq!((raw.epoch, raw.session), (42, id));
        assert!(key.verify(&raw, &key.identity(&alice)));
        assert!(!key.verify(&raw, &key.identity(&bob)));
        assert!(!key.verify(&raw, &key.identity(&HeaderMap::new())));
        let other = TokenKey::new(vec![8; 32], &["authorization".into()]).unwrap();
        assert!(!other.verify(&raw, &key.identity(&alice)));
        assert_eq!(RawToken::parse("!!"), Err(MalformedToken::Encoding));
        assert_eq!(RawToken::parse("AAAA"), Err(MalformedToken::Shape));
        assert!(!format!("{raw:?}").contains(&t));
    }
}
