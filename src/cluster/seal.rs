//! `sealed` mode: the owner's peer address inside the token, encrypted so
//! a client can neither read the cluster's pod addresses nor choose where a
//! replica dials (the token MAC covers the field as well).
//!
//! `field = nonce(24) ‖ XChaCha20-Poly1305(k_seal, nonce, addr, aad = session id)`
//! with `addr = 0x04 ‖ ipv4 ‖ port` or `0x06 ‖ ipv6 ‖ port` (big-endian) and
//! a synthetic nonce `HMAC-SHA256(k_nonce, session id ‖ addr)[..24]`: the
//! same session and owner always give the same token (as v1 tokens do), and
//! two different plaintexts never share a nonce.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::SessionId;

const NONCE_LEN: usize = 24;

/// Seals and opens owner addresses.
pub(super) struct Seal {
    aead: XChaCha20Poly1305,
    nonce_key: [u8; 32],
}

impl Seal {
    /// A seal from two derived keys.
    pub(super) fn new(seal_key: &[u8; 32], nonce_key: &[u8; 32]) -> Seal {
        Seal { aead: XChaCha20Poly1305::new(seal_key.into()), nonce_key: *nonce_key }
    }

    /// The owner field for `session` owned at `addr`.
    pub(super) fn seal(&self, session: &SessionId, addr: SocketAddr) -> Vec<u8> {
        let plain = encode(addr);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonce_key).expect("HMAC takes any key length");
        mac.update(&session.0);
        mac.update(&plain);
        let tag = mac.finalize().into_bytes();
        let nonce = XNonce::from_slice(&tag[..NONCE_LEN]);
        let sealed = self
            .aead
            .encrypt(nonce, Payload { msg: &plain, aad: &session.0 })
            .expect("XChaCha20-Poly1305 seals any short message");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The address sealed in `field` for `session`, if it opens.
    pub(super) fn open(&self, session: &SessionId, field: &[u8]) -> Option<SocketAddr> {
        if field.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = field.split_at(NONCE_LEN);
        let plain = self.aead.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &session.0 }).ok()?;
        decode(&plain)
    }
}

fn encode(addr: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(19);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

fn decode(b: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match (b.first(), b.len()) {
        (Some(4), 7) => (IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&b[1..5]).ok()?)), &b[5..]),
        (Some(6), 19) => (IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[1..17]).ok()?)), &b[17..]),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes(port.try_into().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_deterministic_and_bound_to_the_session() {
        let seal = Seal::new(&[1; 32], &[2; 32]);
        let s = SessionId::generate();
        for addr in ["10.1.2.3:8081", "[fd00::1]:8081"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let field = seal.seal(&s, addr);
            assert_eq!(seal.open(&s, &field), Some(addr));
            assert_eq!(seal.seal(&s, addr), field, "deterministic: the token stays the same");
            assert_eq!(seal.open(&SessionId::generate(), &field), None);
            let mut bent = field.clone();
            *bent.last_mut().unwrap() ^= 1;
            assert_eq!(seal.open(&s, &bent), None);
            assert_eq!(Seal::new(&[3; 32], &[2; 32]).open(&s, &field), None, "another key");
        }
        assert_eq!(seal.open(&s, b"short"), None);
    }
}
