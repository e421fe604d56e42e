//! What a message from tether is: a control frame (`#` + JSON), or a data
//! frame and its seq (docs/PROTOCOL.md §4, §7), with a hash of its exact
//! bytes so replays can be compared.

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

/// The hash of a data frame's exact bytes (opcode included).
pub type Hash = [u8; 32];

/// One message, classified.
#[derive(Debug)]
pub enum Frame {
    /// A data frame.
    Data {
        /// Its seq.
        seq: u64,
        /// Hash of its bytes.
        hash: Hash,
    },
    /// A control frame's JSON object.
    Control(Value),
    /// Ping or pong (tungstenite answers pings itself).
    Keepalive,
    /// A close frame and its code.
    Close(Option<u16>),
    /// Something no tether sends.
    Malformed(String),
}

/// Classifies `msg`; `seq_field` is the field of `json` stamps.
pub fn classify(msg: &Message, seq_field: &str) -> Frame {
    match msg {
        Message::Text(t) => {
            let t = t.as_str();
            let hash = hash(1, t.as_bytes());
            if let Some(json) = t.strip_prefix('#') {
                return match serde_json::from_str::<Value>(json) {
                    Ok(v) if v.get("type").and_then(Value::as_str).is_some() => Frame::Control(v),
                    _ => Frame::Malformed(format!("a control frame that is not a JSON object with a type: {}", cut(t))),
                };
            }
            if let Some(seq) = prefix_seq(t) {
                return Frame::Data { seq, hash };
            }
            if t.starts_with('{') {
                if let Some(seq) = serde_json::from_str::<Value>(t).ok().and_then(|v| v.get(seq_field)?.as_u64()) {
                    if seq > 0 {
                        return Frame::Data { seq, hash };
                    }
                }
            }
            Frame::Malformed(format!("a text frame without a seq stamp: {}", cut(t)))
        }
        Message::Binary(b) => match b.get(..8) {
            Some(head) => {
                let seq = u64::from_be_bytes(head.try_into().expect("8 bytes"));
                if seq == 0 {
                    return Frame::Malformed("a binary frame stamped with seq 0".into());
                }
                Frame::Data { seq, hash: hash(2, b) }
            }
            None => Frame::Malformed(format!("a binary frame of {} bytes, shorter than its stamp", b.len())),
        },
        Message::Ping(_) | Message::Pong(_) => Frame::Keepalive,
        Message::Close(c) => Frame::Close(c.as_ref().map(|c| u16::from(c.code))),
        Message::Frame(_) => Frame::Malformed("a raw frame".into()),
    }
}

/// `<digits>:` with no leading zero and no overflow: the prefix stamp.
fn prefix_seq(t: &str) -> Option<u64> {
    let (digits, _) = t.split_once(':')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn hash(opcode: u8, bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([opcode]);
    h.update(bytes);
    h.finalize().into()
}

/// The first 80 characters of `t`, for a report.
pub fn cut(t: &str) -> String {
    match t.char_indices().nth(80) {
        Some((i, _)) => format!("{:?}…", &t[..i]),
        None => format!("{t:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(m: Message) -> Option<u64> {
        match classify(&m, "seq") {
            Frame::Data { seq, .. } => Some(seq),
            _ => None,
        }
    }

    #[test]
    fn stamps() {
        assert_eq!(seq(Message::text("7:hello")), Some(7));
        assert_eq!(seq(Message::text("7:")), Some(7));
        assert_eq!(seq(Message::text("07:x")), None);
        assert_eq!(seq(Message::text("x:1")), None);
        assert_eq!(seq(Message::text("{\"seq\":3,\"a\":1}")), Some(3));
        assert_eq!(seq(Message::text("3:{\"seq\":9}")), Some(3));
        assert_eq!(seq(Message::binary(vec![0, 0, 0, 0, 0, 0, 1, 2, 1])), Some(258));
        assert_eq!(seq(Message::binary(vec![0, 0, 1])), None);
        assert!(matches!(classify(&Message::text("#{\"type\":\"draining\"}"), "seq"), Frame::Control(_)));
        assert!(matches!(classify(&Message::text("#nope"), "seq"), Frame::Malformed(_)));
        // The same bytes as text and as binary do not hash the same.
        assert_ne!(hash(1, b"1:x"), hash(2, b"1:x"));
    }
}
