//! One JSON log line per session lifecycle event, with the session id and
//! never the token.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn lifecycle_lines_carry_the_session_id_not_the_token() {
    let (mut backend, _dir, p) = setup_process().await;
    let (mut ws, token, b) = attach(&mut backend, &p.url("/")).await;
    b.stream(1, 2);
    expect_stream(&mut ws, 1, 2).await;
    drop_abruptly(ws);
    p.wait_log("client detached").await;
    let mut ws = resume(&p.url("/"), &token, 2).await;
    welcome(&mut ws).await;
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
    let lines = p.wait_log("session ended").await;

    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
    let id: String = raw[9..25].iter().map(|b| format!("{b:02x}")).collect();
    let mut events: Vec<String> = Vec::new();
    for line in &lines {
        assert!(!line.contains(&token), "a log line contains the token: {line}");
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["fields"]["session"] == id.as_str() {
            let f = &v["fields"];
            let detail = f["outcome"].as_str().or(f["kind"].as_str()).unwrap_or("");
            events.push(format!("{} {}", f["message"].as_str().unwrap(), detail));
        }
    }
    // The pump's detach and the backend task's end race each other.
    events[4..].sort();
    assert_eq!(
        events,
        [
            "client attached new",
            "client detached abnormal",
            "client attached resumed",
            "client closed normally; ending the session ",
            "client detached clean",
            "session ended ",
        ]
    );
    p.kill9().await;
}
