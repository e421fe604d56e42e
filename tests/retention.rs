//! Loss tether cannot repair is reported exactly, never silent; a session
//! whose backend connection is gone restarts without losing a frame.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn retention_exceeded_is_a_gap_with_the_exact_range() {
    let mut backend = Backend::start().await;
    let t = Tether::start_with(&backend, |c| c.journal.max_session_frames = 10).await;
    let mut ws = open(&t.url("/"), &[]).await;
    let (_, token) = welcome(&mut ws).await;
    let b = backend.next_conn().await;
    b.stream(1, 25);
    expect_stream(&mut ws, 1, 25).await;
    drop_abruptly(ws);
    // The client processed only up to 3; 4..=15 were trimmed (10 retained: 16..=25).
    let mut ws = resume(&t.url("/"), &token, 3).await;
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(token2, token, "a trimmed gap keeps the session");
    assert_eq!(w["outcome"], "gap");
    assert_eq!(
        w["gap"],
        json!({"reason": "trimmed", "requested_offset": 3, "first_available": 16, "lost": {"from": 4, "to": 15}})
    );
    assert_eq!(w["replay"], json!({"from": 16, "to": 25}));
    expect_stream(&mut ws, 16, 25).await;
    b.stream(26, 26);
    expect_stream(&mut ws, 26, 26).await;
    assert_eq!(backend.count(), 1);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="gap",reason="trimmed"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_trimmed_frames_total{reason="max_frames"}"#), 16.0);
    t.stop().await;
}

#[tokio::test]
async fn linger_expiry_then_resume_is_restarted() {
    let mut backend = Backend::start().await;
    let t = Tether::start_with(&backend, |c| c.session.linger = Duration::from_millis(200)).await;
    let mut ws = open(&t.url("/live"), &[]).await;
    let (_, token) = welcome(&mut ws).await;
    let mut b = backend.next_conn().await;
    b.stream(1, 3);
    expect_stream(&mut ws, 1, 3).await;
    drop_abruptly(ws);
    // tether gives up on the client after `linger` and closes the backend
    // connection with 1001 going away.
    let close = b.closed().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1001);
    let mut ws = resume(&t.url("/live"), &token, 1).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted");
    assert_eq!(w["replay"], json!({"from": 2, "to": 3}));
    expect_stream(&mut ws, 2, 3).await;
    let b2 = backend.next_conn().await;
    assert_eq!(b2.path, "/live");
    b2.stream(4, 5);
    expect_stream(&mut ws, 4, 5).await;
    assert_eq!(backend.count(), 2);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="restarted",reason="none"}"#), 1.0);
    t.stop().await;
}
