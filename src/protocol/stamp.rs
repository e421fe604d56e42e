//! Sequence stamps on downstream data frames (`prefix`, `json`, `none`).

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::Payload;
use crate::config::StampMode;

/// Turns a journaled payload and its seq into the message the client sees.
#[derive(Debug, Clone)]
pub(crate) struct Stamper {
    mode: StampMode,
    /// `"<field>":` pre-encoded, for `json` mode.
    json_key: String,
    field: String,
}

impl Stamper {
    /// A stamper for `mode`, injecting `json_field` in `json` mode.
    pub(crate) fn new(mode: StampMode, json_field: &str) -> Stamper {
        let json_key = serde_json::to_string(json_field).expect("string encodes") + ":";
        Stamper { mode, json_key, field: json_field.to_owned() }
    }

    /// The stamp mode.
    pub(crate) fn mode(&self) -> StampMode {
        self.mode
    }

    /// The message carrying `payload` as frame `seq`.
    pub(crate) fn stamp(&self, seq: u64, payload: &Payload) -> Message {
        match (self.mode, payload) {
            (StampMode::None, Payload::Text(t)) => Message::Text(t.clone()),
            (StampMode::None, Payload::Binary(b)) => Message::Binary(b.clone()),
            (StampMode::Json, Payload::Text(t)) => match self.inject(seq, t) {
                Some(s) => Message::Text(s.into()),
                None => Message::Text(prefix_text(seq, t)),
            },
            (_, Payload::Text(t)) => Message::Text(prefix_text(seq, t)),
            (_, Payload::Binary(b)) => Message::Binary(prefix_binary(seq, b)),
        }
    }

    /// Like [`Stamper::stamp`], but a `prefix` stamp (and the binary stamp
    /// of `json` mode) is written into `arena`: a batch of frames stamped
    /// into one arena costs one allocation, where [`Stamper::stamp`] costs
    /// two or three per frame. The messages share the arena's buffer, which
    /// is freed once the last of them has been written out.
    pub(crate) fn stamp_in(&self, seq: u64, payload: &Payload, arena: &mut BytesMut) -> Message {
        match (self.mode, payload) {
            (StampMode::Prefix, Payload::Text(t)) => {
                let _ = write!(arena, "{seq}:");
                arena.put_slice(t.as_bytes());
                // Digits, ':' and UTF-8 text: always valid; the check is cheap.
                match Utf8Bytes::try_from(arena.split().freeze()) {
                    Ok(stamped) => Message::Text(stamped),
                    Err(_) => Message::Text(prefix_text(seq, t)),
                }
            }
            (StampMode::Prefix | StampMode::Json, Payload::Binary(b)) => {
                arena.put_u64(seq);
                arena.put_slice(b);
                Message::Binary(arena.split().freeze())
            }
            _ => self.stamp(seq, payload),
        }
    }

    /// `{"<field>":seq,...rest}` for a JSON object without that field; the
    /// original bytes are kept verbatim after the injected member.
    fn inject(&self, seq: u64, text: &str) -> Option<String> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
        if map.contains_key(&self.field) {
            return None;
        }
        let body = text.trim_start().strip_prefix('{')?;
        let sep = if map.is_empty() { "" } else { "," };
        let body = if map.is_empty() { "}" } else { body };
        Some(format!("{{{}{seq}{sep}{body}", self.json_key))
    }
}

fn prefix_text(seq: u64, text: &Utf8Bytes) -> Utf8Bytes {
    let mut s = String::with_capacity(text.len() + 21);
    s.push_str(&seq.to_string());
    s.push(':');
    s.push_str(text.as_str());
    s.into()
}

fn prefix_binary(seq: u64, bin: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(bin.len() + 8);
    b.put_u64(seq);
    b.put_slice(bin);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Payload {
        Payload::Text(s.into())
    }

    #[test]
    fn prefix_and_none() {
        let p = Stamper::new(StampMode::Prefix, "seq");
        assert_eq!(p.stamp(7, &text("hi")), Message::text("7:hi"));
        assert_eq!(
            p.stamp(258, &Payload::Binary(Bytes::from_static(b"\x01"))),
            Message::binary(vec![0, 0, 0, 0, 0, 0, 1, 2, 1])
        );
        let n = Stamper::new(StampMode::None, "seq");
        assert_eq!(n.stamp(7, &text("hi")), Message::text("hi"));
    }

    #[test]
    fn stamps_in_an_arena_are_the_same() {
        for mode in [StampMode::Prefix, StampMode::Json, StampMode::None] {
            let s = Stamper::new(mode, "seq");
            let mut arena = BytesMut::with_capacity(8);
            for (seq, p) in
                [(7, text("hi")), (1 << 40, text("")), (9, Payload::Binary(Bytes::from_static(b"\x01\x02")))]
            {
                assert_eq!(s.stamp_in(seq, &p, &mut arena), s.stamp(seq, &p), "{mode:?}");
            }
        }
    }

    #[test]
    fn json_injects_or_falls_back() {
        let j = Stamper::new(StampMode::Json, "seq");
        assert_eq!(j.stamp(3, &text(r#"{"a":1}"#)), Message::text(r#"{"seq":3,"a":1}"#));
        assert_eq!(j.stamp(3, &text(" {} ")), Message::text(r#"{"seq":3}"#));
        assert_eq!(j.stamp(3, &text("[1]")), Message::text("3:[1]"));
        assert_eq!(j.stamp(3, &text(r#"{"seq":9}"#)), Message::text(r#"3:{"seq":9}"#));
        assert_eq!(j.stamp(3, &text("nope")), Message::text("3:nope"));
    }
}
