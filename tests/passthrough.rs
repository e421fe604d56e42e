//! Frames and headers cross tether as they should, over real sockets.

mod common;

use common::*;
use futures_util::SinkExt;
use std::time::Duration;
use tether::config::StampMode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn text_binary_and_fragmented_both_ways() {
    let (mut backend, t) = setup().await;
    let mut ws = open(&t.url("/chat"), &[]).await;
    let (w, token) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "new");
    assert_eq!(w["v"], 1);
    assert_eq!(w["replay"], serde_json::Value::Null);
    assert!(!token.is_empty());
    let mut b = backend.next_conn().await;

    // backend → client: text, binary (stamped), and a fragmented text message.
    b.text("hello");
    b.send(Message::binary(vec![1u8, 2, 3]));
    b.send(Message::Frame(Frame::message("frag", OpCode::Data(Data::Text), false)));
    let h = FrameHeader { is_final: true, opcode: OpCode::Data(Data::Continue), ..Default::default() };
    b.send(Message::Frame(Frame::from_payload(h, "ment".into())));
    assert_eq!(data(&mut ws).await, (1, "hello".into()));
    assert_eq!(next(&mut ws).await, Message::binary(vec![0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 3]));
    assert_eq!(data(&mut ws).await, (3, "fragment".into()));

    // client → backend: byte-for-byte, including a fragmented message.
    ws.send(Message::text("up")).await.unwrap();
    ws.send(Message::binary(vec![9u8, 8])).await.unwrap();
    ws.send(Message::Frame(Frame::message("a", OpCode::Data(Data::Binary), false))).await.unwrap();
    let h = FrameHeader { is_final: true, opcode: OpCode::Data(Data::Continue), ..Default::default() };
    ws.send(Message::Frame(Frame::from_payload(h, "b".into()))).await.unwrap();
    assert_eq!(b.recv().await, Some(Message::text("up")));
    assert_eq!(b.recv().await, Some(Message::binary(vec![9u8, 8])));
    assert_eq!(b.recv().await, Some(Message::binary(b"ab".to_vec())));

    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_frames_total{direction="downstream"}"#), 3.0);
    assert_eq!(metric(&m, r#"tether_frames_total{direction="upstream"}"#), 3.0);
    assert_eq!(metric(&m, "tether_journal_appends_total"), 3.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="new",reason="none"}"#), 1.0);
    t.stop().await;
}

#[tokio::test]
async fn path_query_headers_and_subprotocol() {
    let mut backend =
        Backend::start_with(BackendOptions { subprotocol: Some("chat.v2".into()), ..Default::default() }).await;
    let t = Tether::start(&backend).await;
    let (mut ws, resp) = connect(
        &t.url("/rooms/7?x=1&tether_foo=2"),
        &[
            ("sec-websocket-protocol", "chat.v1, chat.v2"),
            ("authorization", "Bearer abc"),
            ("cookie", "sid=42"),
            ("x-app", "yes"),
            ("connection", "Upgrade, x-hop"),
            ("x-hop", "must-not-pass"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "10.1.1.1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.get("sec-websocket-protocol").unwrap(), "chat.v2");
    assert_eq!(resp.get("tether-outcome").unwrap(), "new");
    assert_eq!(resp.get("x-backend").unwrap(), "yes", "backend response headers reach the client");
    let (_, token) = welcome(&mut ws).await;
    assert_eq!(resp.get("tether-session").unwrap().to_str().unwrap(), token);

    let b = backend.next_conn().await;
    assert_eq!(b.path, "/rooms/7?x=1&tether_foo=2");
    let h = &b.headers;
    assert_eq!(h.get("authorization").unwrap(), "Bearer abc");
    assert_eq!(h.get("cookie").unwrap(), "sid=42");
    assert_eq!(h.get("x-app").unwrap(), "yes");
    assert_eq!(h.get("sec-websocket-protocol").unwrap(), "chat.v1, chat.v2");
    assert!(h.get("x-hop").is_none(), "Connection-named headers are hop-by-hop");
    assert!(h.get("keep-alive").is_none());
    assert_eq!(h.get("x-forwarded-for").unwrap(), "10.1.1.1, 127.0.0.1");
    assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    assert_eq!(h.get("x-forwarded-host").unwrap().to_str().unwrap(), t.data_addr.to_string());
    assert_eq!(h.get("host").unwrap().to_str().unwrap(), backend.addr.to_string());
    t.stop().await;
}

#[tokio::test]
async fn tether_query_parameters_are_not_forwarded() {
    let (mut backend, t) = setup().await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/q?a=1")).await;
    assert_eq!(b.path, "/q?a=1");
    b.text("x");
    assert_eq!(data(&mut ws).await, (1, "x".into()));
    drop_abruptly(ws);
    // Resume via query parameters: the backend connection is reused, not reopened.
    let mut ws = open(&t.url(&format!("/q?a=1&tether_session={token}&tether_offset=1")), &[]).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed");
    assert_eq!(backend.count(), 1);
    t.stop().await;
}

#[tokio::test]
async fn json_stamp_mode() {
    let (mut backend, t) = setup_with(|c| c.stamp.mode = StampMode::Json).await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    b.text(r#"{"price":10}"#);
    b.text("[1,2]");
    assert_eq!(next_text(&mut ws).await, r#"{"seq":1,"price":10}"#);
    assert_eq!(next_text(&mut ws).await, "2:[1,2]");
    t.stop().await;
}

/// The pump's write of a batch is dropped when a keepalive ping falls due
/// while the client is slow to read, but what it had queued still goes out:
/// each frame must be sent exactly once all the same. `json` stamps take
/// this path (tungstenite messages); prefix stamps write wire bytes.
#[tokio::test]
async fn json_frames_go_out_once_when_pings_interrupt_a_blocked_write() {
    let (mut backend, t) = setup_with(|c| {
        c.stamp.mode = StampMode::Json;
        c.session.ping_interval = Duration::from_millis(5);
        c.session.ping_timeout = Duration::from_secs(600);
    })
    .await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    // 24 MiB: more than loopback's socket buffers hold, so the pump's writes
    // wait for this client, which reads nothing until all are journaled,
    // while pings fall due every 5 ms.
    const N: u64 = 3_000;
    b.stream_padded(1, N, 8 << 10);
    wait_metric(t.admin_addr, "tether_journal_appends_total", N as f64).await;
    for i in 1..=N {
        let (seq, payload) = data(&mut ws).await;
        assert_eq!(seq, i, "frame {i} was followed by a resend or a skip");
        assert!(payload.starts_with(&format!("m{i} ")), "{seq}: {}", &payload[..20]);
    }
    b.text("last");
    assert_eq!(data(&mut ws).await, (N + 1, "last".to_owned()));
    t.stop().await;
}

#[tokio::test]
async fn none_stamp_mode_is_byte_for_byte() {
    let (mut backend, t) = setup_with(|c| c.stamp.mode = StampMode::None).await;
    let (mut ws, resp) = connect(&t.url("/"), &[]).await.unwrap();
    let token = resp.get("tether-session").unwrap().to_str().unwrap().to_owned();
    let b = backend.next_conn().await;
    b.text("one");
    b.send(Message::binary(vec![7u8]));
    b.text("three");
    assert_eq!(next(&mut ws).await, Message::text("one"), "no welcome frame, no stamp");
    assert_eq!(next(&mut ws).await, Message::binary(vec![7u8]));
    assert_eq!(next(&mut ws).await, Message::text("three"));
    drop_abruptly(ws);
    b.text("four");
    // The offset is the count of data frames processed.
    let (mut ws, resp) = connect(&t.url("/"), &[("tether-session", &token), ("tether-offset", "2")]).await.unwrap();
    assert_eq!(resp.get("tether-outcome").unwrap(), "resumed");
    assert_eq!(next(&mut ws).await, Message::text("three"));
    assert_eq!(next(&mut ws).await, Message::text("four"));
    t.stop().await;
}

/// A backend that writes its 101 and a first frame in one TCP write, then a
/// backend whose 101 has the wrong accept key. tether does this handshake
/// itself, so both paths are checked byte for byte here.
#[tokio::test]
async fn frames_right_after_the_101_and_a_bad_accept_key() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = tokio::spawn(async move {
        let mut heads = Vec::new();
        for accept_right in [true, false] {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "request head ended early");
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key =
                head.lines().find_map(|l| l.strip_prefix("sec-websocket-key: ")).expect("a Sec-WebSocket-Key header");
            let accept = if accept_right { derive_accept_key(key.as_bytes()) } else { "d3Jvbmc=".into() };
            let mut reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            reply.extend_from_slice(&[0x81, 5]); // one unmasked text frame, "early"
            reply.extend_from_slice(b"early");
            tcp.write_all(&reply).await.unwrap();
            heads.push(head);
            // Keep the connection open until tether closes it.
            tokio::spawn(async move {
                let mut rest = Vec::new();
                let _ = tcp.read_to_end(&mut rest).await;
            });
        }
        heads
    });
    let backend = Backend::start().await; // unused; tether is pointed at the raw one
    let t = Tether::start_with(&backend, |c| c.server.upstream = format!("ws://{addr}/base")).await;

    let mut ws = open(&t.url("/feed?room=1"), &[("x-app", "yes")]).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "new");
    assert_eq!(data(&mut ws).await, (1, "early".into()));

    assert_refused_502(connect(&t.url("/"), &[]).await, "backend_handshake_failed");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_backend_connects_total{result="backend_handshake_failed"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_refusals_total{error="backend_handshake_failed",status="502"}"#), 1.0);
    ws.close(None).await.unwrap();
    t.stop().await;

    let heads = within("the raw backend", raw).await.unwrap();
    let first = &heads[0];
    assert!(first.starts_with("GET /base/feed?room=1 HTTP/1.1\r\n"), "{first}");
    for line in ["host: ", "upgrade: websocket", "connection: Upgrade", "sec-websocket-version: 13", "x-app: yes"] {
        assert!(first.lines().any(|l| l.starts_with(line)), "no {line:?} in {first}");
    }
}

fn assert_refused_502(r: Result<(Ws, http::HeaderMap), Refused>, error: &str) {
    match r {
        Ok(_) => panic!("expected a 502 refusal"),
        Err(r) => {
            assert_eq!(r.status, 502);
            assert_eq!(r.body["error"], error, "{}", r.body);
            assert!(r.body["detail"].as_str().unwrap().contains("Sec-WebSocket-Accept"), "{}", r.body);
        }
    }
}
