//! The `Tether-Peer` header: proof that a request on the peer port was
//! forwarded by a replica of this cluster, for this owner, for this token,
//! recently.
//!
//! `Tether-Peer: from=<id>; to=<id>; ts=<unix seconds>; sig=<base64url>` with
//! `sig = HMAC-SHA256(k_peer, "tether-peer-v1" ‖ lp(cluster) ‖ lp(from) ‖
//! lp(to) ‖ ts ‖ lp(token) ‖ lp(x-forwarded-for))`, `lp(x)` = `x`'s length as
//! a u64 big-endian then `x`, `ts` a u64 big-endian, and `k_peer` derived
//! from `token.secret` (HKDF). Binding the token and `X-Forwarded-For` means a
//! captured header cannot carry another session or a forged client address.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::Sha256;

/// The header name.
pub(crate) const PEER_HEADER: &str = "tether-peer";

/// Why a request that claims to come from a peer is refused; the
/// `reason` label of `tether_peer_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerRefused {
    /// The peer port got a request without `Tether-Peer`.
    #[error("the peer port only serves requests forwarded by another replica (no Tether-Peer header)")]
    Missing,
    /// The header does not parse.
    #[error("the Tether-Peer header is malformed")]
    Malformed,
    /// The signature does not verify (another secret, another cluster, or
    /// a forgery).
    #[error("the Tether-Peer signature does not verify")]
    BadSignature,
    /// Signed too long ago (or too far in the future).
    #[error("the Tether-Peer signature is too old (cluster.peer_auth_max_age)")]
    Stale,
    /// Verified, but this instance does not own the session: a second hop.
    #[error("this instance does not own the session; a forwarded resume is never forwarded again")]
    NotOwner,
    /// A `Tether-Peer` header on the public data port.
    #[error("forwarded requests are only accepted on the peer port")]
    WrongPort,
}

impl PeerRefused {
    /// Every reason (metrics pre-creates the same list).
    #[cfg(test)]
    pub(crate) const ALL: [PeerRefused; 6] = [
        PeerRefused::Missing,
        PeerRefused::Malformed,
        PeerRefused::BadSignature,
        PeerRefused::Stale,
        PeerRefused::NotOwner,
        PeerRefused::WrongPort,
    ];

    /// The metric label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PeerRefused::Missing => "missing",
            PeerRefused::Malformed => "malformed",
            PeerRefused::BadSignature => "bad_signature",
            PeerRefused::Stale => "stale",
            PeerRefused::NotOwner => "not_owner",
            PeerRefused::WrongPort => "wrong_port",
        }
    }
}

/// Signs and verifies `Tether-Peer`.
pub(crate) struct PeerAuth {
    key: [u8; 32],
    cluster: String,
    max_age: Duration,
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PeerAuth {
    /// Signs with `key` for the cluster `cluster`.
    pub(crate) fn new(key: [u8; 32], cluster: &str, max_age: Duration) -> PeerAuth {
        PeerAuth { key, cluster: cluster.to_owned(), max_age }
    }

    fn mac(&self, from: &str, to: &str, ts: u64, token: &str, xff: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"tether-peer-v1");
        for part in [self.cluster.as_str(), from, to] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&ts.to_be_bytes());
        for part in [token, xff] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// The header value `from` sends to `to` for `token`, with the
    /// `X-Forwarded-For` value `xff`, at `ts`.
    pub(crate) fn sign(&self, from: &str, to: &str, ts: u64, token: &str, xff: &str) -> String {
        let sig = self.mac(from, to, ts, token, xff).finalize().into_bytes();
        format!("from={from}; to={to}; ts={ts}; sig={}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Checks `value` as received by `me` at `now`; returns the forwarder's
    /// id. The signature is checked (in constant time) before the clock and
    /// the addressee, so nothing about them is told to a forger.
    pub(crate) fn verify(
        &self,
        value: Option<&HeaderValue>,
        me: &str,
        now: u64,
        token: &str,
        xff: &str,
    ) -> Result<String, PeerRefused> {
        let value = value.ok_or(PeerRefused::Missing)?.to_str().map_err(|_| PeerRefused::Malformed)?;
        let (mut from, mut to, mut ts, mut sig) = (None, None, None, None);
        for part in value.split(';') {
            let (k, v) = part.trim().split_once('=').ok_or(PeerRefused::Malformed)?;
            let slot = match k {
                "from" => &mut from,
                "to" => &mut to,
                "ts" => &mut ts,
                "sig" => &mut sig,
                _ => return Err(PeerRefused::Malformed),
            };
            if slot.replace(v).is_some() {
                return Err(PeerRefused::Malformed);
            }
        }
        let (Some(from), Some(to), Some(ts), Some(sig)) = (from, to, ts, sig) else {
            return Err(PeerRefused::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| PeerRefused::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| PeerRefused::Malformed)?;
        self.mac(from, to, ts, token, xff).verify_slice(&sig).map_err(|_| PeerRefused::BadSignature)?;
        if now.abs_diff(ts) > self.max_age.as_secs() {
            return Err(PeerRefused::Stale);
        }
        if to != me {
            return Err(PeerRefused::NotOwner);
        }
        Ok(from.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_every_refusal() {
        let auth = PeerAuth::new([5; 32], "prod", Duration::from_secs(30));
        let h = |s: String| HeaderValue::from_str(&s).unwrap();
        let good = h(auth.sign("t0", "t1", 1000, "tok", "1.2.3.4"));
        assert_eq!(auth.verify(Some(&good), "t1", 1010, "tok", "1.2.3.4"), Ok("t0".into()));
        assert_eq!(auth.verify(None, "t1", 1000, "tok", "1.2.3.4"), Err(PeerRefused::Missing));
        let junk = HeaderValue::from_static("from=t0; nope");
        assert_eq!(auth.verify(Some(&junk), "t1", 1000, "tok", "1.2.3.4"), Err(PeerRefused::Malformed));
        assert_eq!(auth.verify(Some(&good), "t1", 1000, "other", "1.2.3.4"), Err(PeerRefused::BadSignature));
        assert_eq!(auth.verify(Some(&good), "t1", 1000, "tok", "6.6.6.6"), Err(PeerRefused::BadSignature));
        assert_eq!(auth.verify(Some(&good), "t1", 1031, "tok", "1.2.3.4"), Err(PeerRefused::Stale));
        assert_eq!(auth.verify(Some(&good), "t2", 1000, "tok", "1.2.3.4"), Err(PeerRefused::NotOwner));
        let other = PeerAuth::new([5; 32], "staging", Duration::from_secs(30));
        assert_eq!(other.verify(Some(&good), "t1", 1000, "tok", "1.2.3.4"), Err(PeerRefused::BadSignature));
    }

    #[test]
    fn metric_labels_match() {
        let labels = PeerRefused::ALL.map(PeerRefused::reason);
        assert_eq!(labels, crate::metrics::PEER_REFUSED_REASONS);
    }
}
