//! tether as a real process: kill -9, a lost journal directory and a SIGTERM
//! drain. Sessions survive a restart as `restarted` when their frames are in
//! the journal, and a lost journal is reported as a `gap`, never a wrong replay.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The admin port's `/metrics` text of a tether process.
async fn process_metrics(p: &TetherProcess) -> String {
    let (status, body) = http_get(p.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// kill -9 loses nothing tether had committed: after a restart on the same
/// journal, a resume replays every frame after the offset (outcome
/// `restarted`), then a new backend connection carries on at the next seq.
#[tokio::test]
async fn kill9_then_restart_replays_from_the_journal() {
    let (mut backend, dir, p) = setup_process().await;
    let mut ws = open(&p.url("/feed"), &[]).await;
    let (w, token) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "new");
    let mut b1 = backend.next_conn().await;
    assert_eq!(b1.path, "/feed");
    b1.stream(1, 50);
    // The client processes 1..=20; it also receives 21..=50, which proves
    // tether committed all 50 to the journal before the kill.
    expect_stream(&mut ws, 1, 20).await;
    expect_stream(&mut ws, 21, 50).await;
    let processed = 20;

    p.kill9().await;
    drop(ws);
    // The first backend connection died with the process, without a close frame.
    assert!(b1.closed().await.is_none());

    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    let mut ws = resume(&p.url("/feed"), &token, processed).await;
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["replay"], json!({"from": 21, "to": 50}));
    assert_eq!(w["gap"], Value::Null);
    assert_rotated(&token2, &token);
    expect_stream(&mut ws, 21, 50).await;

    // A new backend connection continues the session's seq space.
    let mut b2 = backend.next_conn().await;
    assert_eq!(b2.path, "/feed");
    assert_eq!(backend.count(), 2);
    b2.stream(51, 53);
    expect_stream(&mut ws, 51, 53).await;
    ws.send(Message::text("after restart")).await.unwrap();
    assert_eq!(b2.recv().await, Some(Message::text("after restart")));

    let m = process_metrics(&p).await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="restarted",reason="none"}"#), 1.0);
    assert_eq!(metric(&m, "tether_replayed_frames_total"), 30.0);
    p.kill9().await;
}

/// The journal directory is wiped while tether is down: the old token is from
/// another epoch, so the resume gets a new session and a `journal_lost` gap
/// report covering everything after the offset.
#[tokio::test]
async fn wiped_journal_is_reported_as_journal_lost() {
    let (mut backend, dir, p) = setup_process().await;
    let (mut ws, token, b1) = attach(&mut backend, &p.url("/feed")).await;
    b1.stream(1, 7);
    expect_stream(&mut ws, 1, 7).await;
    let offset = 5;

    p.kill9().await;
    drop(ws);
    std::fs::remove_dir_all(dir.path()).unwrap();
    assert!(!dir.path().exists());

    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    let (mut ws, headers) =
        connect(&p.url("/feed"), &[("tether-session", token.as_str()), ("tether-offset", offset.to_string().as_str())])
            .await
            .unwrap_or_else(|r| panic!("refused: {r:?}"));
    assert_eq!(headers["tether-outcome"], "gap");
    assert_eq!(headers["tether-gap"], "reason=journal_lost; from=6; to=unknown; first_available=1");
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "gap", "{w}");
    assert_eq!(
        w["gap"],
        json!({
            "reason": "journal_lost",
            "requested_offset": offset,
            "first_available": 1,
            "lost": {"from": offset + 1, "to": null},
        })
    );
    assert_eq!(w["replay"], Value::Null);
    assert_ne!(token2, token, "a new session needs a new token");
    assert_eq!(headers["tether-session"], token2.as_str());

    // The new session has its own backend connection and starts at seq 1.
    let b2 = backend.next_conn().await;
    assert_eq!(b2.path, "/feed");
    assert_eq!(backend.count(), 2);
    b2.stream(1, 3);
    expect_stream(&mut ws, 1, 3).await;

    // The new token resumes the new session.
    drop_abruptly(ws);
    let mut ws = resume(&p.url("/feed"), &token2, 1).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_eq!(w["replay"], json!({"from": 2, "to": 3}));
    expect_stream(&mut ws, 2, 3).await;
    assert_eq!(backend.count(), 2);

    let m = process_metrics(&p).await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="gap",reason="journal_lost"}"#), 1.0);
    p.kill9().await;
}

/// SIGTERM: the client is told `draining` and closed with 1012, the backend
/// connection is closed with 1001, the process exits 0, and after a restart
/// the session resumes as `restarted` with nothing lost.
#[tokio::test]
async fn sigterm_drains_and_the_session_survives() {
    let (mut backend, dir, p) = setup_process().await;
    let (mut ws, token, mut b1) = attach(&mut backend, &p.url("/live")).await;
    b1.stream(1, 20);
    expect_stream(&mut ws, 1, 20).await;
    // Received 20, processed 15.
    let processed = 15;

    let t0 = std::time::Instant::now();
    let (status, (draining, code)) = tokio::join!(p.signal("-TERM"), async {
        let draining = control(&mut ws).await;
        (draining, close_code(&mut ws).await)
    });
    assert_eq!(draining, json!({"type": "draining"}));
    assert_eq!(code, 1012);
    assert!(status.success(), "{status:?}");
    assert_eq!(status.code(), Some(0));
    // A measurement for the record, not a threshold.
    eprintln!("drain: SIGTERM to exit 0 in {:?}", t0.elapsed());
    drop(ws);
    let f = b1.closed().await.expect("the backend got a close frame");
    assert_eq!(u16::from(f.code), 1001);
    assert_eq!(f.reason.as_str(), "tether is restarting");

    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    let mut ws = resume(&p.url("/live"), &token, processed).await;
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["gap"], Value::Null);
    assert_eq!(w["replay"], json!({"from": 16, "to": 20}));
    assert_rotated(&token2, &token);
    expect_stream(&mut ws, 16, 20).await;
    let mut b2 = backend.next_conn().await;
    assert_eq!(b2.path, "/live");
    assert_eq!(backend.count(), 2);
    b2.stream(21, 22);
    expect_stream(&mut ws, 21, 22).await;
    ws.send(Message::text("back")).await.unwrap();
    assert_eq!(b2.recv().await, Some(Message::text("back")));
    p.kill9().await;
}

/// A client that goes away while tether is still dialing the backend for its
/// restarted session leaves that backend connection with the session: the
/// next resume is `resumed`, and the backend sees one connection, not a
/// second one for the same restart.
#[tokio::test]
async fn a_restart_cut_short_by_its_client_keeps_the_new_backend_connection() {
    use std::time::Duration;

    let (mut backend, dir, p) = setup_process().await;
    let mut ws = open(&p.url("/feed"), &[]).await;
    let (_, token) = welcome(&mut ws).await;
    let b1 = backend.next_conn().await;
    b1.stream(1, 3);
    expect_stream(&mut ws, 1, 3).await;
    p.kill9().await;
    drop(ws);

    // The restarted tether's backend answers its upgrade by hand. Lazy: the
    // resume dials (an eager reopen would dial first, at start-up).
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lazy = [("TETHER_SESSION_BACKEND_ON_RESTART", "lazy")];
    let p = TetherProcess::start(&format!("ws://{}", held.local_addr().unwrap()), dir.path(), &lazy).await;
    let (url, t) = (p.url("/feed"), token.clone());
    let client = tokio::spawn(async move {
        let _ = connect(&url, &[("tether-session", &t), ("tether-offset", "3")]).await;
    });
    let mut dial = HeldUpgrade::accept(&held).await;
    // The client gives up before the backend answers. Had tether abandoned
    // the dial with it, the backend connection would close now.
    client.abort();
    let _ = client.await;
    let closed = dial.closed_within(Duration::from_millis(500)).await;
    assert!(!closed, "tether closed the backend connection of a restart its client left");
    let _socket = dial.answer().await;
    // The restart completed without its client, and the session now has
    // the connection: the next resume finds it live.
    wait_metric(p.admin_addr, r#"tether_sessions{state="detached"}"#, 1.0).await;
    let mut ws = resume(&p.url("/feed"), &token, 3).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    let m = process_metrics(&p).await;
    assert_eq!(metric(&m, r#"tether_backend_connects_total{result="ok"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="restarted",reason="none"}"#), 1.0);
    p.signal("-TERM").await;
}
