//! Property tests (proptest) of the wire contract's parsers and encoders:
//! resume credentials, tokens, stamps and control frames. Each property runs
//! 256 generated cases at most, so the whole module takes well under a second.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Message;

use super::control::{Control, GapReason, GapReport, Outcome, RestartNote, SeqRange, UpEnd, UpWelcome};
use super::credentials::{self, BadCredentials, Credentials};
use super::stamp::Stamper;
use super::token::{RawToken, TokenKey};
use super::{Payload, SessionId};
use crate::config::StampMode;

/// Percent-encodes every byte that is not unreserved (RFC 3986).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Headers with the given credential headers set.
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

/// A header value as a client may send it: visible ASCII, no surrounding
/// whitespace (tether trims it).
fn visible() -> impl Strategy<Value = String> {
    "[!-~]{1,60}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the header bytes and the query, parsing returns, never panics.
    #[test]
    fn credentials_never_panic(
        session in proptest::collection::vec(any::<u8>(), 0..40),
        offset in proptest::collection::vec(any::<u8>(), 0..40),
        query in ".{0,200}",
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in [(credentials::SESSION_HEADER, session), (credentials::OFFSET_HEADER, offset)] {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                h.insert(name, v);
            }
        }
        let _ = credentials::parse(&h, Some(&query));
        let _ = credentials::parse(&HeaderMap::new(), Some(&query));
        let _ = credentials::strip_params(Some(&query));
    }

    /// Any token and offset, percent-encoded into a query among other
    /// parameters, come back exactly; the forwarded query loses only them.
    #[test]
    fn query_credentials_round_trip(
        token in "\\PC{1,40}",
        offset in any::<u64>(),
        before in proptest::collection::vec("[a-z]{1,5}=[a-z0-9]{0,5}", 0..3),
        after in proptest::collection::vec("[a-z]{1,5}=[a-z0-9]{0,5}", 0..3),
    ) {
        let ours = [format!("tether_session={}", encode(&token)), format!("tether_offset={offset}")];
        let query = [&before[..], &ours[..], &after[..]].concat().join("&");
        let parsed = credentials::parse(&HeaderMap::new(), Some(&query));
        prop_assert_eq!(parsed, Ok(Some(Credentials { token, offset })));
        let kept = [&before[..], &after[..]].concat();
        prop_assert_eq!(credentials::strip_params(Some(&query)), (!kept.is_empty()).then(|| kept.join("&")));
    }

    /// For each value separately, the header wins over the query parameter.
    #[test]
    fn header_wins_over_query(
        h_token in visible(), q_token in "[A-Za-z0-9_-]{1,40}",
        h_offset in any::<u64>(), q_offset in any::<u64>(),
        token_in_header: bool, offset_in_header: bool,
    ) {
        let mut pairs = Vec::new();
        let (h_off, q_off) = (h_offset.to_string(), q_offset.to_string());
        if token_in_header { pairs.push((credentials::SESSION_HEADER, h_token.as_str())); }
        if offset_in_header { pairs.push((credentials::OFFSET_HEADER, h_off.as_str())); }
        let query = format!("tether_offset={q_off}&tether_session={q_token}");
        let c = credentials::parse(&headers(&pairs), Some(&query)).unwrap().unwrap();
        prop_assert_eq!(c.token, if token_in_header { h_token } else { q_token });
        prop_assert_eq!(c.offset, if offset_in_header { h_offset } else { q_offset });
    }

    /// An offset that is not plain decimal digits is `malformed_offset`.
    #[test]
    fn non_decimal_offsets_are_refused(prefix in "[0-9]{0,3}", bad in "[^0-9\\s]", suffix in "[0-9]{0,3}") {
        let offset = format!("{prefix}{bad}{suffix}");
        let h = headers(&[(credentials::SESSION_HEADER, "A")]);
        let query = format!("tether_offset={}", encode(&offset));
        prop_assert_eq!(credentials::parse(&h, Some(&query)), Err(BadCredentials::Offset(offset)));
    }

    /// `%` not followed by two hex digits is wrongly encoded, wherever it is.
    #[test]
    fn bad_escapes_are_refused(
        head in "[A-Za-z0-9]{0,5}",
        value in prop_oneof![
            // A sign parses as part of a hex number in Rust, but is no escape.
            ("%[+-][0-9A-Fa-f]{1,2}", "[A-Za-z0-9%]{0,5}").prop_map(|(e, t)| e + &t),
            ("%[^0-9A-Fa-f&]", "[A-Za-z0-9%]{0,5}").prop_map(|(e, t)| e + &t),
            ("%[0-9A-Fa-f][^0-9A-Fa-f&]", "[A-Za-z0-9%]{0,5}").prop_map(|(e, t)| e + &t),
            "%[0-9A-Fa-f]?",
        ],
    ) {
        let query = format!("tether_offset=0&tether_session={head}{value}");
        let r = credentials::parse(&HeaderMap::new(), Some(&query));
        prop_assert_eq!(r, Err(BadCredentials::Unreadable(credentials::SESSION_PARAM)));
    }
}

/// A key for token properties.
fn key() -> TokenKey {
    TokenKey::new(b"proptest-secret-proptest-secret-0123".to_vec(), &["authorization".into()]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Mint → parse → verify holds for any epoch, id, generation and identity.
    #[test]
    fn token_round_trip(epoch in any::<u64>(), id in any::<[u8; 16]>(), generation in any::<u32>(), auth in visible()) {
        let key = key();
        let identity = key.identity(&headers(&[("authorization", &auth)]));
        let token = key.mint(epoch, &SessionId(id), generation, None, &identity);
        prop_assert_eq!(token.len(), 60);
        let raw = RawToken::parse(&token).unwrap();
        prop_assert_eq!((raw.epoch, raw.session, raw.generation), (epoch, SessionId(id), generation));
        prop_assert!(key.verify(&raw, &identity));
        prop_assert!(!key.verify(&raw, &key.identity(&HeaderMap::new())));
    }

    /// Changing any one byte of the decoded token, or any one character of
    /// the token string, makes it fail to parse or to verify.
    #[test]
    fn any_single_change_fails(epoch in any::<u64>(), id in any::<[u8; 16]>(), generation in any::<u32>(), at in 0usize..60, delta in 1u8..=255) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = key();
        let identity = key.identity(&HeaderMap::new());
        let token = key.mint(epoch, &SessionId(id), generation, None, &identity);
        let mut bytes = b64.decode(&token).unwrap();
        let i = at % bytes.len();
        bytes[i] = bytes[i].wrapping_add(delta);
        let changed = b64.encode(&bytes);
        prop_assert!(RawToken::parse(&changed).map_or(true, |raw| !key.verify(&raw, &identity)));
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut chars = token.clone().into_bytes();
        let pos = ALPHABET.iter().position(|c| *c == chars[at]).unwrap();
        chars[at] = ALPHABET[(pos + usize::from(delta) % 63 + 1) % 64];
        let changed = String::from_utf8(chars).unwrap();
        prop_assert!(changed != token);
        prop_assert!(RawToken::parse(&changed).map_or(true, |raw| !key.verify(&raw, &identity)));
    }

    /// Parsing any string returns, never panics.
    #[test]
    fn token_parse_never_panics(s in "\\PC{0,80}", b64 in "[A-Za-z0-9_-]{0,70}") {
        let _ = RawToken::parse(&s);
        let _ = RawToken::parse(&b64);
    }
}

/// A journaled payload, text or binary.
fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        "\\PC{0,40}".prop_map(|s| Payload::Text(s.into())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Payload::Binary(Bytes::from(b))),
    ]
}

/// (seq, payload) back out of a `prefix`-stamped message.
fn unprefix(m: &Message) -> (u64, Payload) {
    match m {
        Message::Text(t) => {
            let (seq, rest) = t.as_str().split_once(':').expect("seq:payload");
            (seq.parse().expect("decimal seq"), Payload::Text(rest.into()))
        }
        Message::Binary(b) => {
            let seq = u64::from_be_bytes(b[..8].try_into().unwrap());
            (seq, Payload::Binary(b.slice(8..)))
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A JSON object without the `seq` field: keys and scalar values.
fn object() -> impl Strategy<Value = Map<String, Value>> {
    let value = prop_oneof![
        any::<i64>().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    proptest::collection::btree_map("[a-z\"\\\\ ]{1,8}", value, 0..6)
        .prop_map(|m| m.into_iter().filter(|(k, _)| k != "seq").collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `prefix`: the seq and the payload come back exactly, and the message
    /// never starts with `#` (a control frame's mark).
    #[test]
    fn prefix_stamps_are_recoverable(seq in any::<u64>(), p in payload()) {
        let m = Stamper::new(StampMode::Prefix, "seq").stamp(seq, &p);
        if let Message::Text(t) = &m { prop_assert!(!t.as_str().starts_with('#')); }
        prop_assert_eq!(unprefix(&m), (seq, p.clone()));
        let none = Stamper::new(StampMode::None, "seq").stamp(seq, &p);
        let plain = match &p { Payload::Text(t) => Message::Text(t.clone()), Payload::Binary(b) => Message::Binary(b.clone()) };
        prop_assert_eq!(none, plain);
    }

    /// `json`: an object gets `seq` first and keeps every other field; any
    /// other text falls back to the prefix form, exactly recoverable.
    #[test]
    fn json_stamps_keep_fields(seq in any::<u64>(), obj in object(), pad in "[ \n]{0,2}", other in "\\PC{0,20}") {
        let stamper = Stamper::new(StampMode::Json, "seq");
        let text = format!("{pad}{}{pad}", Value::Object(obj.clone()));
        let Message::Text(out) = stamper.stamp(seq, &Payload::Text(text.as_str().into())) else { panic!("text") };
        prop_assert!(out.as_str().starts_with("{\"seq\":"), "{}", out.as_str());
        let mut got: Map<String, Value> = serde_json::from_str(out.as_str()).unwrap();
        prop_assert_eq!(got.remove("seq"), Some(Value::from(seq)));
        prop_assert_eq!(got, obj);
        let m = stamper.stamp(seq, &Payload::Text(other.as_str().into()));
        let Message::Text(out) = &m else { panic!("text") };
        prop_assert!(!out.as_str().starts_with('#'));
        if !out.as_str().starts_with('{') {
            prop_assert_eq!(unprefix(&m), (seq, Payload::Text(other.as_str().into())));
        }
    }
}

/// Any control frame tether can send.
fn control() -> impl Strategy<Value = Control> {
    let outcome = prop_oneof![Just(Outcome::New), Just(Outcome::Resumed), Just(Outcome::Restarted), Just(Outcome::Gap)];
    let reason = prop_oneof![
        Just(GapReason::Expired),
        Just(GapReason::Trimmed),
        Just(GapReason::JournalLost),
        Just(GapReason::UnknownSession),
    ];
    let range = (any::<u64>(), proptest::option::of(any::<u64>())).prop_map(|(from, to)| SeqRange { from, to });
    let report = (reason, any::<u64>(), any::<u64>(), range.clone()).prop_map(|(reason, r, f, lost)| GapReport {
        reason,
        requested_offset: r,
        first_available: f,
        lost,
    });
    let backend = (any::<u64>(), any::<bool>(), proptest::option::of("\\PC{0,40}"))
        .prop_map(|(since, early, error)| RestartNote { since, early, error });
    let up = (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>())
        .prop_map(|(next, acked, conn, exact)| UpWelcome { next, acked, conn, exact });
    prop_oneof![
        (
            "\\PC{0,60}",
            outcome,
            proptest::option::of(range),
            proptest::option::of(report.clone()),
            proptest::option::of(up),
            proptest::option::of(backend)
        )
            .prop_map(|(session, outcome, replay, gap, up, backend)| Control::Welcome {
                v: 1,
                session,
                outcome,
                replay,
                gap,
                up,
                backend
            }),
        any::<u64>().prop_map(|seq| Control::UpAck { seq }),
        report.prop_map(Control::Gap),
        Just(Control::Draining),
        (any::<u16>(), "\\PC{0,60}", proptest::option::of(any::<u64>()))
            .prop_map(|(code, reason, acked)| Control::End { code, reason, up: acked.map(|acked| UpEnd { acked }) }),
    ]
}

/// The JSON a client reads for a range.
fn range_json(r: &SeqRange) -> Value {
    serde_json::json!({ "from": r.from, "to": r.to })
}

/// The JSON a client reads for a gap report, without `type`.
fn report_json(g: &GapReport) -> Value {
    serde_json::json!({
        "reason": g.reason.as_str(),
        "requested_offset": g.requested_offset,
        "first_available": g.first_available,
        "lost": range_json(&g.lost),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every control frame is `#` then one JSON object whose fields are the
    /// frame's, as docs/PROTOCOL.md §7 names them.
    #[test]
    fn control_frames_round_trip(c in control()) {
        let Message::Text(t) = c.to_message() else { panic!("control frames are text") };
        let body = t.as_str().strip_prefix('#').expect("starts with #");
        let got: Value = serde_json::from_str(body).unwrap();
        let want = match &c {
            Control::Welcome { v, session, outcome, replay, gap, up, backend } => {
                let mut w = serde_json::json!({
                    "type": "welcome", "v": v, "session": session, "outcome": outcome.as_str(),
                    "replay": replay.as_ref().map(range_json), "gap": gap.as_ref().map(report_json),
                });
                if let Some(u) = up {
                    w["up"] = serde_json::json!({ "next": u.next, "acked": u.acked, "conn": u.conn, "exact": u.exact });
                }
                if let Some(b) = backend {
                    w["backend"] = serde_json::json!({ "since": b.since, "early": b.early, "error": b.error });
                }
                w
            }
            Control::UpAck { seq } => serde_json::json!({ "type": "up_ack", "seq": seq }),
            Control::Gap(g) => {
                let mut v = report_json(g);
                v["type"] = "gap".into();
                v
            }
            Control::Draining => serde_json::json!({ "type": "draining" }),
            Control::End { code, reason, up } => {
                let mut e = serde_json::json!({ "type": "end", "code": code, "reason": reason });
                if let Some(u) = up {
                    e["up"] = serde_json::json!({ "acked": u.acked });
                }
                e
            }
        };
        prop_assert_eq!(got, want);
    }
}
