//! Bad input is refused before the upgrade with a status, a JSON body and a
//! metric, and loses nothing already journaled.

mod common;

use common::*;
use serde_json::json;

fn assert_refused(r: Result<(Ws, http::HeaderMap), Refused>, status: u16, error: &str) -> Refused {
    match r {
        Ok(_) => panic!("expected {status} {error}, got an upgrade"),
        Err(r) => {
            assert_eq!((r.status, r.body["error"].as_str().unwrap()), (status, error), "{:?}", r.body);
            assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
            r
        }
    }
}

/// A token with one MAC character changed.
fn forge(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 6;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn bad_credentials_and_nothing_is_lost() {
    let (mut backend, t) = setup().await;
    let url = t.url("/");
    let mut ws = open(&url, &[]).await;
    let (_, token) = welcome(&mut ws).await;
    let b = backend.next_conn().await;
    b.stream(1, 3);
    expect_stream(&mut ws, 1, 3).await;
    drop_abruptly(ws);

    for bad in ["abc", "-1", "18446744073709551616", "1.5", ""] {
        let r = connect(&url, &[("tether-session", &token), ("tether-offset", bad)]).await;
        let want = if bad.is_empty() { "malformed_credentials" } else { "malformed_offset" };
        assert_refused(r, 400, want);
    }
    let r = connect(&format!("{url}?tether_session={token}&tether_offset=-5"), &[]).await;
    assert_refused(r, 400, "malformed_offset");
    assert_refused(connect(&url, &[("tether-offset", "1")]).await, 400, "malformed_credentials");
    assert_refused(connect(&url, &[("tether-session", &token)]).await, 400, "malformed_credentials");
    assert_refused(
        connect(&url, &[("tether-session", "not*base64"), ("tether-offset", "1")]).await,
        400,
        "malformed_token",
    );
    assert_refused(connect(&url, &[("tether-session", "AAAA"), ("tether-offset", "1")]).await, 400, "malformed_token");
    let forged = forge(&token);
    assert_refused(connect(&url, &[("tether-session", &forged), ("tether-offset", "1")]).await, 401, "invalid_token");
    let r =
        assert_refused(connect(&url, &[("tether-session", &token), ("tether-offset", "4")]).await, 409, "offset_ahead");
    assert!(r.body["detail"].as_str().unwrap().contains("last seq 3"), "{}", r.body);

    // Nothing was lost or consumed by the refusals.
    let mut ws = resume(&url, &token, 0).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed");
    expect_stream(&mut ws, 1, 3).await;
    assert_eq!(backend.count(), 1);

    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="malformed_offset",status="400"}"#), 5.0);
    assert_eq!(metric(&m, r#"tether_refusals_total{error="malformed_credentials",status="400"}"#), 3.0);
    assert_eq!(metric(&m, r#"tether_refusals_total{error="malformed_token",status="400"}"#), 2.0);
    assert_eq!(metric(&m, r#"tether_refusals_total{error="invalid_token",status="401"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_refusals_total{error="offset_ahead",status="409"}"#), 1.0);
    t.stop().await;
}

#[tokio::test]
async fn token_bound_to_identity() {
    let (mut backend, t) = setup_with(|c| c.token.identity_headers = vec!["authorization".into()]).await;
    let url = t.url("/");
    let mut ws = open(&url, &[("authorization", "Bearer alice")]).await;
    let (_, token) = welcome(&mut ws).await;
    backend.next_conn().await.stream(1, 1);
    expect_stream(&mut ws, 1, 1).await;
    drop_abruptly(ws);
    let stolen = [("authorization", "Bearer mallory"), ("tether-session", token.as_str()), ("tether-offset", "0")];
    assert_refused(connect(&url, &stolen).await, 401, "invalid_token");
    let anonymous = [("tether-session", token.as_str()), ("tether-offset", "0")];
    assert_refused(connect(&url, &anonymous).await, 401, "invalid_token");
    let owner = [("authorization", "Bearer alice"), ("tether-session", token.as_str()), ("tether-offset", "0")];
    let (mut ws, _) = connect(&url, &owner).await.unwrap();
    assert_eq!(welcome(&mut ws).await.0["outcome"], "resumed");
    expect_stream(&mut ws, 1, 1).await;
    t.stop().await;
}

#[tokio::test]
async fn backend_down_or_refusing_is_502() {
    let refusing = Backend::start_with(BackendOptions { refuse: Some(403), ..Default::default() }).await;
    let t = Tether::start(&refusing).await;
    let r = assert_refused(connect(&t.url("/"), &[]).await, 502, "backend_refused");
    assert!(r.body["detail"].as_str().unwrap().contains("403"), "{}", r.body);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_backend_connects_total{result="backend_refused"}"#), 1.0);
    t.stop().await;

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (_backend, t) = setup_with(|c| c.server.upstream = format!("ws://127.0.0.1:{port}")).await;
    assert_refused(connect(&t.url("/"), &[]).await, 502, "backend_unreachable");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="backend_unreachable",status="502"}"#), 1.0);
    t.stop().await;
}

#[tokio::test]
async fn capacity_origin_and_malformed_upgrades() {
    let (mut backend, t) = setup_with(|c| {
        c.limits.max_sessions = 1;
        c.server.allowed_origins = vec!["https://ok.example".into()];
    })
    .await;
    let url = t.url("/");
    let _first = open(&url, &[("origin", "https://ok.example")]).await;
    let _b = backend.next_conn().await;
    let r = assert_refused(connect(&url, &[]).await, 503, "over_capacity");
    assert_eq!(r.headers.get("retry-after").unwrap(), "5");
    assert_refused(connect(&url, &[("origin", "https://evil.example")]).await, 403, "origin_not_allowed");

    let addr = t.data_addr;
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, body) = raw_request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status, error_of(&body)), (400, "not_websocket".into()));
    let (status, body) = raw_request(addr, &format!("{upgrade}Sec-WebSocket-Version: 8\r\n\r\n")).await;
    assert_eq!((status, error_of(&body)), (426, "unsupported_version".into()));
    let (status, body) =
        raw_request(addr, &format!("{upgrade}Sec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello")).await;
    assert_eq!((status, error_of(&body)), (400, "upgrade_with_body".into()));
    let big = "a".repeat(20_000);
    let (status, body) =
        raw_request(addr, &format!("{upgrade}Sec-WebSocket-Version: 13\r\nX-Big: {big}\r\n\r\n")).await;
    assert_eq!((status, error_of(&body)), (431, "headers_too_large".into()));
    let (status, body) = raw_request(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!((status, error_of(&body)), (400, "bad_websocket_key".into()));
    t.stop().await;
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert!(v["detail"].is_string());
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn oversize_client_message_is_1009_and_resumable() {
    let (mut backend, t) = setup_with(|c| {
        c.limits.max_message_bytes = 1024;
        c.limits.max_frame_bytes = 1024;
    })
    .await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![0u8; 4096])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);
    b.stream(1, 2);
    let mut ws = resume(&t.url("/"), &token, 0).await;
    assert_eq!(welcome(&mut ws).await.0["outcome"], "resumed");
    expect_stream(&mut ws, 1, 2).await;
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="too_big"}"#), 1.0);
    assert_eq!(json!(metric(&m, r#"tether_frames_total{direction="upstream"}"#)), json!(0.0));
    t.stop().await;
}

/// A path with `.` or `..` segments (literal or percent-encoded) could climb
/// out of the upstream's prefix: 400 `bad_path`, and no backend connection.
#[tokio::test]
async fn dot_segments_are_refused_before_the_dial() {
    let (backend, t) = setup_with(|c| c.server.upstream = c.server.upstream.clone() + "/api").await;
    for path in ["/../admin", "/a/%2e%2E/admin", "/./x"] {
        assert_refused(connect(&t.url(path), &[]).await, 400, "bad_path");
    }
    assert_eq!(backend.count(), 0);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="bad_path",status="400"}"#), 3.0);
    t.stop().await;
}

/// A 502 never tells the client where the backend is.
#[tokio::test]
async fn bad_gateway_bodies_do_not_name_the_backend() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_backend, t) = setup_with(|c| c.server.upstream = format!("ws://127.0.0.1:{port}")).await;
    let r = assert_refused(connect(&t.url("/"), &[]).await, 502, "backend_unreachable");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(!detail.contains("127.0.0.1") && !detail.contains(&port.to_string()), "{detail}");
    t.stop().await;
}
