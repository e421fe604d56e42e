//! Drop and resume: nothing lost, duplicated or reordered, and the backend
//! never notices.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn abrupt_drop_and_resume_with_headers() {
    let (mut backend, t) = setup().await;
    let (mut ws, token, mut b) = attach(&mut backend, &t.url("/feed")).await;
    b.stream(1, 5);
    expect_stream(&mut ws, 1, 5).await;
    drop_abruptly(ws);
    // While the client is away the backend keeps sending; the connection stays up.
    b.stream(6, 10);
    let mut ws = resume(&t.url("/feed"), &token, 3).await;
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed");
    assert_eq!(w["gap"], serde_json::Value::Null);
    assert_rotated(&token2, &token);
    // Everything after offset 3, in order: replay (4..=committed) then live.
    expect_stream(&mut ws, 4, 10).await;
    b.stream(11, 12);
    expect_stream(&mut ws, 11, 12).await;
    // Upstream still reaches the same backend connection.
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(b.recv().await, Some(Message::text("still here")));
    assert_eq!(backend.count(), 1, "the backend never saw a reconnect");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="resumed",reason="none"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="abnormal"}"#), 1.0);
    t.stop().await;
}

#[tokio::test]
async fn welcome_names_the_replay_range() {
    let (mut backend, t) = setup().await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, 6);
    expect_stream(&mut ws, 1, 6).await;
    drop_abruptly(ws);
    let mut ws = resume(&t.url("/"), &token, 2).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["replay"], serde_json::json!({"from": 3, "to": 6}));
    expect_stream(&mut ws, 3, 6).await;
    let m = t.metrics().await;
    assert_eq!(metric(&m, "tether_replayed_frames_total"), 4.0);
    // Resuming at the head replays nothing.
    drop_abruptly(ws);
    let mut ws = resume(&t.url("/"), &token, 6).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["replay"], serde_json::Value::Null);
    t.stop().await;
}

/// The backend streams without pause while the client drops and resumes;
/// repeated, each hand-over from replay to live must be exact.
#[tokio::test]
async fn replay_to_live_handover_under_streaming() {
    let (mut backend, t) = setup().await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    let mut last = 0u64;
    let mut sent = 0u64;
    for round in 0..30u64 {
        // A burst in flight while we read part of it, drop, and resume.
        b.stream(sent + 1, sent + 500);
        sent += 500;
        let read = 50 + (round * 37) % 400;
        for _ in 0..read {
            let (seq, payload) = data(&mut ws).await;
            assert_eq!((seq, payload), (last + 1, format!("m{}", last + 1)));
            last = seq;
        }
        drop_abruptly(ws);
        ws = resume(&t.url("/"), &token, last).await;
        let (w, _) = welcome(&mut ws).await;
        assert_eq!(w["outcome"], "resumed", "round {round}");
    }
    while last < sent {
        let (seq, payload) = data(&mut ws).await;
        assert_eq!((seq, payload), (last + 1, format!("m{}", last + 1)));
        last = seq;
    }
    assert_eq!(backend.count(), 1);
    t.stop().await;
}

/// A resume while the old socket still looks attached (half-open TCP) takes
/// the session over and closes the old socket with 4001.
#[tokio::test]
async fn half_open_takeover() {
    let (mut backend, t) = setup().await;
    let (mut old, token, mut b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, 3);
    expect_stream(&mut old, 1, 3).await;
    let mut new = resume(&t.url("/"), &token, 2).await;
    let (w, _) = welcome(&mut new).await;
    assert_eq!(w["outcome"], "resumed");
    assert_eq!(close_code(&mut old).await, 4001);
    expect_stream(&mut new, 3, 3).await;
    b.stream(4, 4);
    expect_stream(&mut new, 4, 4).await;
    new.send(Message::text("from new")).await.unwrap();
    assert_eq!(b.recv().await, Some(Message::text("from new")));
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="takeover"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_sessions{state="attached"}"#), 1.0);
    t.stop().await;
}

#[tokio::test]
async fn backend_close_sends_end_after_every_frame() {
    let (mut backend, t) = setup().await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, 2);
    expect_stream(&mut ws, 1, 2).await;
    drop_abruptly(ws);
    b.stream(3, 4);
    b.close(4100, "game over");
    // A late resume of the ended session replays what is left, then `end`.
    let mut ws = resume(&t.url("/"), &token, 2).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed");
    expect_stream(&mut ws, 3, 4).await;
    let end = control(&mut ws).await;
    assert_eq!(end, serde_json::json!({"type": "end", "code": 4100, "reason": "game over"}));
    assert_eq!(close_code(&mut ws).await, 4100);
    t.stop().await;
}

#[tokio::test]
async fn client_close_1000_ends_the_session() {
    let (mut backend, t) = setup().await;
    let (mut ws, _, mut b) = attach(&mut backend, &t.url("/")).await;
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
    let f = b.closed().await.expect("backend got a close frame");
    assert_eq!(u16::from(f.code), 1000);
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="clean"}"#), 1.0);
    t.stop().await;
}

/// Close codes other than 1000 (here 1001 going away) only detach.
#[tokio::test]
async fn client_close_1001_detaches() {
    let (mut backend, t) = setup().await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "tab hidden".into() })).await.unwrap();
    b.stream(1, 2);
    let mut ws = resume(&t.url("/"), &token, 0).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed");
    expect_stream(&mut ws, 1, 2).await;
    assert_eq!(backend.count(), 1);
    t.stop().await;
}

/// Every `journal.sync` mode journals, delivers and replays.
#[tokio::test]
async fn every_sync_mode_delivers_and_resumes() {
    use tether::config::SyncMode;
    for mode in [SyncMode::None, SyncMode::Interval, SyncMode::Always] {
        let (mut backend, t) = setup_with(|c| {
            c.journal.sync = mode;
            c.journal.sync_interval = std::time::Duration::from_millis(5);
        })
        .await;
        let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
        b.stream(1, 50);
        expect_stream(&mut ws, 1, 50).await;
        drop_abruptly(ws);
        b.stream(51, 60);
        let mut ws = resume(&t.url("/"), &token, 40).await;
        assert_eq!(welcome(&mut ws).await.0["outcome"], "resumed", "{mode:?}");
        expect_stream(&mut ws, 41, 60).await;
        let m = t.metrics().await;
        assert_eq!(metric(&m, "tether_journal_appends_total"), 60.0, "{mode:?}");
        let fsyncs =
            |m: &str, trigger: &str| metric(m, &format!(r#"tether_journal_fsyncs_total{{trigger="{trigger}"}}"#));
        match mode {
            SyncMode::None => assert_eq!((fsyncs(&m, "batch"), fsyncs(&m, "interval")), (0.0, 0.0)),
            SyncMode::Always => assert!(fsyncs(&m, "batch") >= 1.0 && fsyncs(&m, "interval") == 0.0, "{m}"),
            SyncMode::Interval => {
                // The syncer runs every 5 ms once something was written.
                assert_eq!(fsyncs(&m, "batch"), 0.0);
                within("an interval fsync", async {
                    while fsyncs(&t.metrics().await, "interval") < 1.0 {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                })
                .await;
            }
        }
        t.stop().await;
    }
}
