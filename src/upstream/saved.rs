//! The request a session's backend connection was opened with, kept in the
//! journal so that `session.backend_on_restart = "eager"` can open it again
//! after tether restarts: the path and query, the client's address (for
//! `X-Forwarded-For`) and its headers. Headers that carry credentials
//! (`session.restart_credential_headers`) are left out, or with
//! `session.restart_keep_credentials` sealed with XChaCha20-Poly1305 under a
//! key derived from the token secret, bound to the session id.

use std::net::SocketAddr;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};

use crate::config::SessionConfig;
use crate::protocol::SessionId;

use super::is_hop_header;

/// What `SavedRequest::decode` could not read (the journal record is from
/// another secret, or damaged).
#[derive(Debug, thiserror::Error)]
#[error("stored backend request of session {0} is unreadable: {1}")]
pub(crate) struct BadSaved(SessionId, &'static str);

/// Seals and opens stored credentials.
pub(crate) struct SavedKey(XChaCha20Poly1305);

impl SavedKey {
    /// The key for `secret` (the token secret in use).
    pub(crate) fn new(secret: &[u8]) -> SavedKey {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"tether-restart"), secret);
        let mut key = [0u8; 32];
        hk.expand(b"restart-credentials-v1", &mut key).expect("32 bytes is a valid HKDF length");
        SavedKey(XChaCha20Poly1305::new(&key.into()))
    }
}

/// A stored backend request, as the journal holds it (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SavedRequest {
    /// The client's path and query (tether's parameters are removed when
    /// it is dialed, as for any request).
    target: String,
    /// The client's address.
    peer: SocketAddr,
    /// End-to-end headers, credentials excepted.
    headers: Vec<(String, String)>,
    /// The credential headers, sealed: base64url(nonce ‖ ciphertext).
    sealed: Option<String>,
}

impl SavedRequest {
    /// What to keep of a client's upgrade request.
    pub(crate) fn new(uri: &Uri, headers: &HeaderMap, peer: SocketAddr, config: &SessionConfig) -> SavedRequest {
        let credential =
            |n: &HeaderName| config.restart_credential_headers.iter().any(|c| n.as_str().eq_ignore_ascii_case(c));
        let text = |v: &HeaderValue| v.to_str().ok().map(str::to_owned);
        let (mut kept, mut secret) = (Vec::new(), Vec::new());
        for (name, value) in headers {
            if is_hop_header(name, headers) {
                continue;
            }
            let Some(value) = text(value) else { continue };
            if credential(name) {
                secret.push((name.as_str().to_owned(), value));
            } else {
                kept.push((name.as_str().to_owned(), value));
            }
        }
        let target = uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        SavedRequest {
            target,
            peer,
            headers: kept,
            sealed: (config.restart_keep_credentials && !secret.is_empty())
                .then(|| serde_json::to_string(&secret).expect("strings serialize")),
        }
    }

    /// The journal's bytes, credentials sealed for `session`.
    pub(crate) fn encode(mut self, session: &SessionId, key: &SavedKey) -> Vec<u8> {
        if let Some(plain) = self.sealed.take() {
            let mut nonce = [0u8; 24];
            getrandom::getrandom(&mut nonce).expect("OS random source");
            let sealed = key.0.encrypt(XNonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: &session.0 });
            let mut out = nonce.to_vec();
            out.extend(sealed.expect("XChaCha20-Poly1305 encrypts any length"));
            self.sealed = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out));
        }
        serde_json::to_vec(&self).expect("a saved request serializes")
    }

    /// The request to dial again: its URI, headers and client address.
    pub(crate) fn decode(
        bytes: &[u8],
        session: &SessionId,
        key: &SavedKey,
    ) -> Result<(Uri, HeaderMap, SocketAddr), BadSaved> {
        let bad = |why| BadSaved(*session, why);
        let saved: SavedRequest = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
        let uri: Uri = saved.target.parse().map_err(|_| bad("bad target"))?;
        let mut pairs = saved.headers;
        if let Some(sealed) = saved.sealed {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sealed).map_err(|_| bad("bad seal"))?;
            if raw.len() < 24 {
                return Err(bad("bad seal"));
            }
            let (nonce, ct) = raw.split_at(24);
            let plain = key
                .0
                .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &session.0 })
                .map_err(|_| bad("credentials sealed under another secret"))?;
            let secret: Vec<(String, String)> = serde_json::from_slice(&plain).map_err(|_| bad("bad seal"))?;
            pairs.extend(secret);
        }
        let mut headers = HeaderMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("bad header name"))?;
            let value = HeaderValue::from_str(&value).map_err(|_| bad("bad header value"))?;
            headers.append(name, value);
        }
        Ok((uri, headers, saved.peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> (Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("x-app", "1".parse().unwrap());
        h.insert("sec-websocket-protocol", "chat".parse().unwrap());
        h.insert("tether-session", "tok".parse().unwrap());
        h.insert("connection", "Upgrade".parse().unwrap());
        ("/room?a=1".parse().unwrap(), h)
    }

    #[test]
    fn credentials_are_left_out_by_default_and_sealed_on_request() {
        let (uri, h) = request();
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let id = SessionId([7; 16]);
        let key = SavedKey::new(b"secret-secret-secret-secret-secret");
        let mut config = SessionConfig::default();
        let bytes = SavedRequest::new(&uri, &h, peer, &config).encode(&id, &key);
        assert!(!String::from_utf8_lossy(&bytes).contains("Bearer"));
        let (u, got, p) = SavedRequest::decode(&bytes, &id, &key).unwrap();
        assert_eq!((u.to_string().as_str(), p), ("/room?a=1", peer));
        assert_eq!(got.get("x-app").unwrap(), "1");
        assert_eq!(got.get("sec-websocket-protocol").unwrap(), "chat");
        assert!(got.get("authorization").is_none() && got.get("tether-session").is_none());
        assert!(got.get("connection").is_none());

        config.restart_keep_credentials = true;
        let bytes = SavedRequest::new(&uri, &h, peer, &config).encode(&id, &key);
        assert!(!String::from_utf8_lossy(&bytes).contains("Bearer"), "sealed, not plain");
        let (_, got, _) = SavedRequest::decode(&bytes, &id, &key).unwrap();
        assert_eq!(got.get("authorization").unwrap(), "Bearer t");
        let other = SavedKey::new(b"another-secret-another-secret-000");
        assert!(SavedRequest::decode(&bytes, &id, &other).is_err());
        assert!(SavedRequest::decode(&bytes, &SessionId([8; 16]), &key).is_err(), "bound to the session");
    }
}
