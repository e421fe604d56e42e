//! Messages in both directions: the [`Payload`] of any message, a data
//! [`Message`] with its seq, an [`UpMessage`] with the seq it was sent with,
//! and how tether stamps data messages ([`StampMode`]).

use bytes::Bytes;

/// How tether stamps data messages (its `stamp.mode`; docs/PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StampMode {
    /// `7:payload` for text, an 8-byte big-endian seq before binary payloads.
    #[default]
    Prefix,
    /// JSON objects carry the seq as their first member; other messages use
    /// the prefix form.
    Json,
}

/// A message payload, as the backend sent it (the stamp removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload::Text(s)
    }
}
impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Payload::Text(s.to_owned())
    }
}
impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload::Binary(b.into())
    }
}
impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Binary(b)
    }
}

/// One data message of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its position in the session: 1, 2, 3, …
    pub seq: u64,
    /// What the backend sent.
    pub payload: Payload,
    /// True if it was already journaled when this connection started (a
    /// replay), false if it arrived live.
    pub replay: bool,
}

/// An upstream message and the seq it was sent with
/// ([`crate::Event::InDoubt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpMessage {
    /// Its seq in the session.
    pub seq: u64,
    /// The message.
    pub payload: Payload,
}
