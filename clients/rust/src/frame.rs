//! Reading tether's stamps and control frames (docs/PROTOCOL.md §4, §7), and
//! stamping the client's own messages (§12).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use crate::{GapReport, Lost, Outcome, Payload, Replay, StampMode, Welcome};

/// The welcome's `up` object (docs/PROTOCOL.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpWelcome {
    /// The seq tether expects next.
    pub(crate) next: u64,
    /// Every seq up to this one was written to the backend connection.
    pub(crate) acked: u64,
    /// Names the session's current backend connection.
    pub(crate) conn: u64,
    /// Whether `acked` is exact for the previous backend connection.
    pub(crate) exact: bool,
}

/// An upstream message with its seq stamp, as tether reads it: `17:hello`
/// for text, 8 bytes of big-endian seq before a binary payload.
pub(crate) fn stamp(seq: u64, payload: &Payload) -> tungstenite::Message {
    match payload {
        Payload::Text(t) => tungstenite::Message::text(format!("{seq}:{t}")),
        Payload::Binary(b) => {
            let mut out = BytesMut::with_capacity(8 + b.len());
            out.put_u64(seq);
            out.put_slice(b);
            tungstenite::Message::binary(out.freeze())
        }
    }
}

/// One message from tether, read.
#[derive(Debug)]
pub(crate) enum Frame {
    Data {
        seq: u64,
        payload: Payload,
    },
    /// The welcome, with its `up` object on an opted-in connection.
    Welcome(Welcome, Option<UpWelcome>),
    Gap(GapReport),
    Draining,
    End {
        code: u16,
        reason: String,
        /// `end.up.acked` on an opted-in connection.
        up_acked: Option<u64>,
    },
    /// `up_ack`: client messages up to this seq were written to the backend.
    UpAck(u64),
    /// A control type this client does not know: ignored, as the contract asks.
    Unknown,
}

pub(crate) fn parse_text(s: &str, mode: StampMode, json_field: &str) -> Result<Frame, String> {
    if let Some(control) = s.strip_prefix('#') {
        return parse_control(control);
    }
    if mode == StampMode::Json && s.starts_with('{') {
        return parse_json_stamp(s, json_field);
    }
    let (seq, rest) = s.split_once(':').ok_or_else(|| not_stamped(s, mode))?;
    let seq = read_seq(seq).ok_or_else(|| not_stamped(s, mode))?;
    Ok(Frame::Data { seq, payload: Payload::Text(rest.to_owned()) })
}

pub(crate) fn parse_binary(b: Bytes) -> Result<Frame, String> {
    if b.len() < 8 {
        return Err("binary frame shorter than its 8-byte stamp".into());
    }
    let seq = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    Ok(Frame::Data { seq, payload: Payload::Binary(b.slice(8..)) })
}

fn not_stamped(s: &str, mode: StampMode) -> String {
    if mode == StampMode::Prefix && s.starts_with('{') {
        "JSON frame in prefix mode: is tether's stamp.mode json?".into()
    } else {
        "text frame without a seq stamp".into()
    }
}

/// Decimal digits only, no sign, fits a u64.
fn read_seq(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// tether inserts `"field":N` right after the `{`, so the original payload
// comes back by cutting that member out, without a parse.
fn parse_json_stamp(s: &str, field: &str) -> Result<Frame, String> {
    let head = format!("{{{}:", Value::String(field.to_owned()));
    let rest = s.strip_prefix(&head).ok_or("JSON frame without the stamp field first")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let seq = read_seq(&rest[..digits]).ok_or("malformed JSON stamp")?;
    let payload = match rest.as_bytes().get(digits) {
        Some(b',') => format!("{{{}", &rest[digits + 1..]),
        Some(b'}') => format!("{{{}", &rest[digits..]),
        _ => return Err("malformed JSON stamp".into()),
    };
    Ok(Frame::Data { seq, payload: Payload::Text(payload) })
}

fn parse_control(json: &str) -> Result<Frame, String> {
    let v: Value = serde_json::from_str(json).map_err(|_| "control frame is not JSON")?;
    let ty = v.get("type").and_then(Value::as_str).ok_or("control frame without a type")?;
    Ok(match ty {
        "welcome" => {
            let session = v["session"].as_str().ok_or("welcome without a session")?.to_owned();
            let outcome = match v["outcome"].as_str() {
                Some("new") => Outcome::New,
                Some("resumed") => Outcome::Resumed,
                Some("restarted") => Outcome::Restarted,
                Some("gap") => Outcome::Gap,
                other => return Err(format!("welcome with outcome {other:?}")),
            };
            let replay = match (&v["replay"]["from"], &v["replay"]["to"]) {
                (Value::Number(f), Value::Number(t)) => {
                    Some(Replay { from: f.as_u64().unwrap_or(0), to: t.as_u64().unwrap_or(0) })
                }
                _ => None,
            };
            let gap = if v["gap"].is_object() { Some(gap_report(&v["gap"], false)?) } else { None };
            let up = if v["up"].is_object() { Some(up_welcome(&v["up"])?) } else { None };
            Frame::Welcome(Welcome { session, outcome, replay, gap }, up)
        }
        "gap" => Frame::Gap(gap_report(&v, true)?),
        "draining" => Frame::Draining,
        "end" => Frame::End {
            code: v["code"].as_u64().and_then(|c| u16::try_from(c).ok()).ok_or("end without a code")?,
            reason: v["reason"].as_str().unwrap_or_default().to_owned(),
            up_acked: match &v["up"] {
                Value::Null => None,
                up => Some(up["acked"].as_u64().ok_or("end.up without acked")?),
            },
        },
        "up_ack" => Frame::UpAck(v["seq"].as_u64().ok_or("up_ack without a seq")?),
        _ => Frame::Unknown,
    })
}

fn up_welcome(v: &Value) -> Result<UpWelcome, String> {
    let num = |what: &str| v[what].as_u64().ok_or_else(|| format!("welcome.up without {what}"));
    Ok(UpWelcome {
        next: num("next")?,
        acked: num("acked")?,
        conn: num("conn")?,
        exact: v["exact"].as_bool().ok_or("welcome.up without exact")?,
    })
}

fn gap_report(v: &Value, mid_stream: bool) -> Result<GapReport, String> {
    let num = |x: &Value, what: &str| x.as_u64().ok_or_else(|| format!("gap report without {what}"));
    let reason = v["reason"].as_str().ok_or("gap report without a reason")?.to_owned();
    Ok(GapReport {
        new_session: reason != "trimmed",
        requested_offset: num(&v["requested_offset"], "requested_offset")?,
        first_available: num(&v["first_available"], "first_available")?,
        lost: Lost { from: num(&v["lost"]["from"], "lost.from")?, to: v["lost"]["to"].as_u64() },
        reason,
        mid_stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(f: Frame) -> (u64, Payload) {
        match f {
            Frame::Data { seq, payload } => (seq, payload),
            other => panic!("not data: {other:?}"),
        }
    }

    #[test]
    fn prefix_text_and_binary() {
        assert_eq!(data(parse_text("7:hello", StampMode::Prefix, "seq").unwrap()), (7, Payload::Text("hello".into())));
        assert_eq!(data(parse_text("7:", StampMode::Prefix, "seq").unwrap()), (7, Payload::Text("".into())));
        assert!(parse_text("x:1", StampMode::Prefix, "seq").is_err());
        assert!(parse_text("-1:1", StampMode::Prefix, "seq").is_err());
        assert!(parse_text("99999999999999999999:1", StampMode::Prefix, "seq").is_err());
        let b = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 1, 2, 1]);
        assert_eq!(data(parse_binary(b).unwrap()), (258, Payload::Binary(Bytes::from_static(&[1]))));
        assert!(parse_binary(Bytes::from_static(&[0; 7])).is_err());
    }

    #[test]
    fn json_stamp() {
        let j = |s| data(parse_text(s, StampMode::Json, "seq").unwrap());
        assert_eq!(j(r#"{"seq":3,"a":1}"#), (3, Payload::Text(r#"{"a":1}"#.into())));
        assert_eq!(j(r#"{"seq":3}"#), (3, Payload::Text("{}".into())));
        assert_eq!(j("3:[1]"), (3, Payload::Text("[1]".into())));
        assert!(parse_text(r#"{"id":3}"#, StampMode::Json, "seq").is_err());
        assert!(parse_text(r#"{"seq":3,"a":1}"#, StampMode::Prefix, "seq").is_err());
    }

    #[test]
    fn controls() {
        let w = r##"#{"type":"welcome","v":1,"session":"tok","outcome":"gap","replay":{"from":5,"to":9},"gap":{"reason":"trimmed","requested_offset":1,"first_available":5,"lost":{"from":2,"to":4}}}"##;
        let Frame::Welcome(w, None) = parse_text(w, StampMode::Prefix, "seq").unwrap() else { panic!() };
        assert_eq!(w.session, "tok");
        assert_eq!(w.outcome, Outcome::Gap);
        assert_eq!(w.replay, Some(Replay { from: 5, to: 9 }));
        let g = w.gap.unwrap();
        assert_eq!((g.lost.from, g.lost.to, g.first_available, g.new_session), (2, Some(4), 5, false));
        let g = r##"#{"type":"gap","reason":"expired","requested_offset":41,"first_available":1,"lost":{"from":42,"to":null}}"##;
        let Frame::Gap(g) = parse_text(g, StampMode::Prefix, "seq").unwrap() else { panic!() };
        assert!(g.new_session && g.mid_stream && g.lost.to.is_none());
        let e = parse_text(r##"#{"type":"end","code":1000,"reason":"bye"}"##, StampMode::Prefix, "seq").unwrap();
        assert!(matches!(e, Frame::End { code: 1000, ref reason, up_acked: None } if reason == "bye"));
        assert!(matches!(parse_text(r##"#{"type":"draining"}"##, StampMode::Json, "seq").unwrap(), Frame::Draining));
        assert!(matches!(parse_text(r##"#{"type":"future"}"##, StampMode::Json, "seq").unwrap(), Frame::Unknown));
        assert!(parse_text("#nope", StampMode::Prefix, "seq").is_err());
    }

    #[test]
    fn upstream_controls() {
        // The examples of docs/PROTOCOL.md §12.
        let w = r##"#{"type":"welcome","v":1,"session":"tok","outcome":"resumed","replay":null,"gap":null,"up":{"next":42,"acked":40,"conn":7364610291,"exact":true}}"##;
        let Frame::Welcome(w, Some(up)) = parse_text(w, StampMode::Prefix, "seq").unwrap() else { panic!() };
        assert_eq!(w.outcome, Outcome::Resumed);
        assert_eq!(up, UpWelcome { next: 42, acked: 40, conn: 7_364_610_291, exact: true });
        let e = r##"#{"type":"end","code":1000,"reason":"","up":{"acked":41}}"##;
        let e = parse_text(e, StampMode::Prefix, "seq").unwrap();
        assert!(matches!(e, Frame::End { code: 1000, ref reason, up_acked: Some(41) } if reason.is_empty()));
        assert!(matches!(
            parse_text(r##"#{"type":"up_ack","seq":7}"##, StampMode::Json, "seq").unwrap(),
            Frame::UpAck(7)
        ));
        assert!(parse_text(r##"#{"type":"up_ack"}"##, StampMode::Prefix, "seq").is_err());
        let bad =
            r##"#{"type":"welcome","v":1,"session":"t","outcome":"new","replay":null,"gap":null,"up":{"next":1}}"##;
        assert!(parse_text(bad, StampMode::Prefix, "seq").is_err());
    }

    #[test]
    fn stamps() {
        assert_eq!(stamp(17, &Payload::Text("hello".into())), tungstenite::Message::text("17:hello"));
        assert_eq!(stamp(1, &Payload::Text(String::new())), tungstenite::Message::text("1:"));
        // A payload that itself looks stamped keeps its bytes after tether removes ours.
        assert_eq!(stamp(3, &Payload::Text("4:x".into())), tungstenite::Message::text("3:4:x"));
        let b = stamp(258, &Payload::Binary(Bytes::from_static(&[9, 8])));
        assert_eq!(b, tungstenite::Message::binary(vec![0, 0, 0, 0, 0, 0, 1, 2, 9, 8]));
        assert_eq!(stamp(u64::MAX, &Payload::Binary(Bytes::new())), tungstenite::Message::binary(vec![0xff; 8]));
        // What tether's reader does with it: the same seq and payload back.
        let tungstenite::Message::Text(t) = stamp(99, &Payload::Text("a:b".into())) else { panic!() };
        assert_eq!(data(parse_text(&t, StampMode::Prefix, "seq").unwrap()), (99, Payload::Text("a:b".into())));
    }
}
