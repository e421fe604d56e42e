//! Protocol edges (issue 12, item 7), each over a real socket: an HTTP/1.0
//! upgrade, `tether-*` headers in the backend's 101, a `%+1` percent escape,
//! and client protocol errors, which must be answered with a close frame.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A valid `Sec-WebSocket-Key` (the RFC 6455 example).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An upgrade request head for `/` with `version` (`HTTP/1.1`, `HTTP/1.0`).
fn upgrade_request(version: &str) -> String {
    format!(
        "GET / {version}\r\nHost: tether\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
}

/// Reads one HTTP response head (and its `Content-Length` body, if any):
/// status, head and body. Leaves anything after it unread in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, String) {
    within("an HTTP response", async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head.lines().find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                });
                let want = end + 4 + len.unwrap_or(0);
                if buf.len() >= want {
                    let body = String::from_utf8_lossy(&buf[end + 4..want]).to_string();
                    buf.drain(..want);
                    return (head[9..12].parse().unwrap(), head, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-response: {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

#[tokio::test]
async fn http10_upgrade_is_refused_before_dialing() {
    let (backend, t) = setup().await;
    let mut s = TcpStream::connect(t.data_addr).await.unwrap();
    s.write_all(upgrade_request("HTTP/1.0").as_bytes()).await.unwrap();
    let (status, head, body) = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(status, 505, "{head}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "unsupported_http_version", "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    // Refused before dialing: the backend never saw a connection.
    assert_eq!(backend.count(), 0);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="unsupported_http_version",status="505"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_sessions{state="attached"}"#), 0.0);
    assert_eq!(metric(&m, r#"tether_sessions{state="detached"}"#), 0.0);
    t.stop().await;
}

/// A backend that answers every upgrade with a valid 101 carrying
/// `tether-*` headers of its own, then holds the connection open.
async fn lying_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8(buf).unwrap();
            let key = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("sec-websocket-key:").map(|_| l[18..].trim().to_owned())
                })
                .unwrap();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\nTether-Outcome: resumed\r\nTether-Session: forged-by-backend\r\n\
                 Tether-Gap: reason=trimmed; from=1; to=2; first_available=3\r\nTETHER-OFFSET: 7\r\n\
                 Tether-Anything: x\r\nX-Backend: kept\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            held.push(s);
        }
    });
    format!("ws://{addr}")
}

#[tokio::test]
async fn backend_tether_headers_do_not_reach_the_client() {
    let upstream = lying_backend().await;
    let placeholder = Backend::start().await;
    let t = Tether::start_with(&placeholder, |c| c.server.upstream = upstream).await;
    let (mut ws, headers) = connect(&t.url("/"), &[]).await.unwrap_or_else(|r| panic!("refused: {r:?}"));
    let (w, token) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "new", "{w}");
    let all =
        |name: &str| -> Vec<String> { headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect() };
    assert_eq!(all("tether-outcome"), vec!["new".to_owned()], "{headers:?}");
    assert_eq!(all("tether-session"), vec![token], "{headers:?}");
    assert!(all("tether-gap").is_empty(), "{headers:?}");
    assert!(all("tether-offset").is_empty(), "{headers:?}");
    assert!(all("tether-anything").is_empty(), "{headers:?}");
    assert_eq!(all("x-backend"), vec!["kept".to_owned()], "{headers:?}");
    drop_abruptly(ws);
    t.stop().await;
}

#[tokio::test]
async fn percent_escape_needs_two_hex_digits() {
    let (mut backend, t) = setup().await;
    let url = t.url("/");
    let (ws, token, _conn) = attach(&mut backend, &url).await;
    drop_abruptly(ws);
    // `%+1` and `%-1` parse as hex numbers in Rust, but they are not escapes.
    for bad in ["%+1", "%+0", "1%-1", "%1", "%zz", "0%"] {
        let r = connect(&format!("{url}?tether_session={token}&tether_offset={bad}"), &[]).await;
        let Err(r) = r else { panic!("{bad}: expected a refusal, got an upgrade") };
        assert_eq!(
            (r.status, r.body["error"].as_str().unwrap()),
            (400, "malformed_credentials"),
            "{bad}: {:?}",
            r.body
        );
    }
    let r = connect(&format!("{url}?tether_session={token}%+1&tether_offset=0"), &[]).await;
    let Err(r) = r else { panic!("expected a refusal") };
    assert_eq!((r.status, r.body["error"].as_str().unwrap()), (400, "malformed_credentials"), "{:?}", r.body);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="malformed_credentials",status="400"}"#), 7.0);
    // A real escape still works: `%30` is `0`.
    let mut ws = open(&format!("{url}?tether_session={token}&tether_offset=%30"), &[]).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    drop_abruptly(ws);
    t.stop().await;
}

// ------------------------------------------------------- protocol errors

/// A client frame: FIN, `opcode`, masked unless `masked` is false, with
/// `first` OR-ed into the first byte (RSV bits, or to clear FIN via XOR).
fn frame(first: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![first ^ 0x80 | opcode, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads server frames until a close frame; returns its code (1005 if it
/// has none), then expects the TCP connection to end.
async fn close_then_eof(s: &mut TcpStream, mut buf: Vec<u8>) -> u16 {
    within("a close frame, then EOF", async {
        let code = loop {
            if buf.len() >= 2 {
                let (op, len) = (buf[0] & 0x0f, usize::from(buf[1] & 0x7f));
                assert!(len < 126 && buf[1] & 0x80 == 0, "unexpected frame header {:02x?}", &buf[..2]);
                if buf.len() >= 2 + len {
                    let payload: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                    if op == 8 {
                        break if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "the connection ended without a close frame");
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut rest = [0u8; 64];
        while s.read(&mut rest).await.unwrap_or(0) > 0 {}
        code
    })
    .await
}

/// Opens a session over a raw socket in `stamp = "none"` (no welcome frame),
/// sends `bytes` and returns the close code tether answers with.
async fn violate(t: &Tether, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(t.data_addr).await.unwrap();
    s.write_all(upgrade_request("HTTP/1.1").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (status, head, _) = read_response(&mut s, &mut buf).await;
    assert_eq!(status, 101, "{head}");
    s.write_all(bytes).await.unwrap();
    close_then_eof(&mut s, buf).await
}

#[tokio::test]
async fn client_protocol_errors_get_a_close_code() {
    let (_backend, t) = setup_with(|c| c.stamp.mode = tether::config::StampMode::None).await;
    let close = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("invalid UTF-8 in a text frame", frame(0, 0x1, b"ok\xff", true), 1007),
        (
            "invalid UTF-8 in a fragmented text message",
            [frame(0x80, 0x1, b"a", true), frame(0, 0x0, b"\xc3", true)].concat(),
            1007,
        ),
        ("invalid UTF-8 in a close reason", frame(0, 0x8, &close(1000, b"\xff"), true), 1007),
        ("an unmasked client frame", frame(0, 0x1, b"hi", false), 1002),
        ("a reserved data opcode", frame(0, 0x3, b"", true), 1002),
        ("a reserved control opcode", frame(0, 0xb, b"", true), 1002),
        ("RSV1 without an extension", frame(0x40, 0x1, b"hi", true), 1002),
        ("a fragmented ping", frame(0x80, 0x9, b"", true), 1002),
        ("a continuation with nothing to continue", frame(0, 0x0, b"x", true), 1002),
        (
            "a new message inside a fragmented one",
            [frame(0x80, 0x1, b"a", true), frame(0, 0x1, b"b", true)].concat(),
            1002,
        ),
        ("a close code that may not be sent", frame(0, 0x8, &close(999, b""), true), 1002),
        ("a one-byte close payload", frame(0, 0x8, &[3], true), 1002),
    ];
    for (what, bytes, want) in &cases {
        assert_eq!(violate(&t, bytes).await, *want, "{what}");
    }
    let m = wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, cases.len() as f64).await;
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="protocol_error"}"#), 8.0, "{m}");
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="invalid_payload"}"#), 3.0, "{m}");
    // tungstenite itself answers a close with a code that may not be sent
    // with 1002, and tether reads it as a close that detaches.
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="away"}"#), 1.0, "{m}");
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="abnormal"}"#), 0.0, "{m}");
    t.stop().await;
}
