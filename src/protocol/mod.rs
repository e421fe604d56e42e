//! The wire contract v1 (docs/PROTOCOL.md): session ids and tokens, resume
//! credentials, sequence stamps and control frames.

pub(crate) mod control;
pub(crate) mod credentials;
pub(crate) mod pack;
pub(crate) mod stamp;
pub(crate) mod subprotocol;
pub(crate) mod token;
pub(crate) mod upstamp;

#[cfg(test)]
mod props;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A session's identity: 48 bits of creation time (Unix ms), 80 random bits.
///
/// The time part lets a resume for a purged session be told apart from one
/// for a session tether never knew, without keeping tombstones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh id stamped with the current time.
    pub(crate) fn generate() -> SessionId {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id[6..]).expect("OS random source");
        let ms = unix_ms();
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        SessionId(id)
    }

    /// When the session was created, in Unix milliseconds.
    pub(crate) fn created_ms(&self) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One whole backend→client data message, as journaled (unstamped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    /// A text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Payload {
    /// Payload length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// The payload's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(t) => t.as_bytes(),
            Payload::Binary(b) => b,
        }
    }
}
