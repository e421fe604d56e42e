//! Loss tether cannot repair is reported exactly, never silent; a session
//! whose backend connection is gone restarts without losing a frame.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn retention_exceeded_is_a_gap_with_the_exact_range() {
    let (mut backend, t) = setup_with(|c| c.journal.max_session_frames = 10).await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    // 10 retained, plus up to one 64-frame trim chunk: the 75th frame trims 1..=64.
    b.stream(1, 75);
    expect_stream(&mut ws, 1, 75).await;
    drop_abruptly(ws);
    // The client processed only up to 3; 4..=64 were trimmed (65..=75 retained).
    let mut ws = resume(&t.url("/"), &token, 3).await;
    let (w, token2) = welcome(&mut ws).await;
    assert_rotated(&token2, &token); // a trimmed gap keeps the session
    assert_eq!(w["outcome"], "gap");
    assert_eq!(
        w["gap"],
        json!({"reason": "trimmed", "requested_offset": 3, "first_available": 65, "lost": {"from": 4, "to": 64}})
    );
    assert_eq!(w["replay"], json!({"from": 65, "to": 75}));
    expect_stream(&mut ws, 65, 75).await;
    b.stream(76, 76);
    expect_stream(&mut ws, 76, 76).await;
    assert_eq!(backend.count(), 1);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="gap",reason="trimmed"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_trimmed_frames_total{reason="max_frames"}"#), 64.0);
    t.stop().await;
}

#[tokio::test]
async fn linger_expiry_then_resume_is_restarted() {
    let (mut backend, t) = setup_with(|c| c.session.linger = Duration::from_millis(200)).await;
    let (mut ws, token, mut b) = attach(&mut backend, &t.url("/live")).await;
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

/// A client that stops reading while attached falls behind retention: it gets
/// a `gap` control frame naming exactly the frames trimmed under it, then
/// carries on; every seq is either delivered once, in order, or reported.
#[tokio::test]
async fn slow_attached_client_is_told_of_the_gap() {
    const N: u64 = 800;
    const SIZE: usize = 64 * 1024;
    let (mut backend, t) = setup_with(|c| c.journal.max_session_frames = 10).await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    // 50 MiB, far more than the loopback socket buffers hold while the client
    // does not read.
    b.stream_padded(1, N, SIZE);
    wait_metric(t.admin_addr, "tether_journal_appends_total", N as f64).await;

    let gaps = read_through_gaps(&mut ws, N, |seq, payload| assert!(payload.starts_with(&format!("m{seq} ")))).await;
    assert!(!gaps.is_empty(), "the client fell behind 10 retained frames by hundreds");
    let lost: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
    let m = t.metrics().await;
    // Trimmed in whole 64-frame segments, leaving 10 to 10 + 64 retained.
    assert_eq!(metric(&m, r#"tether_trimmed_frames_total{reason="max_frames"}"#), ((N - 10) / 64 * 64) as f64);
    eprintln!("slow client: {} gap report(s), {lost} of {N} frames lost and reported", gaps.len());
    t.stop().await;
}

/// After `journal.retention` an ended session is purged; its token then
/// gets a new session and an `expired` report. A valid token for a session
/// too young to have been purged is `unknown_session`.
#[tokio::test]
async fn purged_and_unknown_sessions_get_a_new_session_and_a_report() {
    let (mut backend, t) = setup_with(|c| c.journal.retention = Duration::from_millis(50)).await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, 4);
    expect_stream(&mut ws, 1, 4).await;
    b.close(1000, "done");
    assert_eq!(control(&mut ws).await["type"], "end");
    // The janitor purges it once it has been ended for longer than retention.
    wait_metric(t.admin_addr, r#"tether_trimmed_frames_total{reason="session_purged"}"#, 4.0).await;

    let mut ws = resume(&t.url("/"), &token, 2).await;
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "gap");
    assert_eq!(
        w["gap"],
        json!({"reason": "expired", "requested_offset": 2, "first_available": 1, "lost": {"from": 3, "to": null}})
    );
    assert_ne!(token2, token);
    backend.next_conn().await.stream(1, 1);
    expect_stream(&mut ws, 1, 1).await;

    // Same secret, same epoch, a session id tether never created.
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
    let epoch = u64::from_be_bytes(raw[1..9].try_into().unwrap());
    // Its creation time (the id's first 48 bits) is far in the future, so
    // it cannot have been purged: never `expired`, however slow this run.
    let forged_but_valid = mint_token(epoch, [0xff; 16]);
    let mut ws = resume(&t.url("/"), &forged_but_valid, 7).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["gap"]["reason"], "unknown_session");
    assert_eq!(w["gap"]["lost"], json!({"from": 8, "to": null}));
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="gap",reason="expired"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="gap",reason="unknown_session"}"#), 1.0);
    t.stop().await;
}
