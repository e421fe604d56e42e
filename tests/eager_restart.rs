//! `session.backend_on_restart`: after a kill -9, sessions that had a
//! backend connection get one again at start-up ("eager", the default),
//! with the request that opened the last one, so what the backend sends
//! before the client returns is journaled; or only when the client returns
//! ("lazy"). Real tether processes, a real backend.

mod common;

use common::*;
use serde_json::json;

/// Opens a session through `p`, reads m1..m10, and leaves abruptly.
async fn session_then_drop(backend: &mut Backend, url: &str, headers: &[(&str, &str)]) -> (String, BackendConn) {
    let (mut ws, _) = connect(url, headers).await.unwrap();
    let (_, token) = welcome(&mut ws).await;
    let b = backend.next_conn().await;
    b.stream(1, 10);
    expect_stream(&mut ws, 1, 10).await;
    drop_abruptly(ws);
    (token, b)
}

#[tokio::test]
async fn eager_a_killed_tether_reopens_the_backend_connection_and_journals_what_it_sends() {
    let (mut backend, dir, p) = setup_process().await;
    let headers = [("x-app", "hello"), ("authorization", "Bearer abc")];
    let url = p.url("/feed?room=7");
    let (token, _old) = session_then_drop(&mut backend, &url, &headers).await;
    p.kill9().await;

    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    // No client yet: tether opens the backend connection by itself.
    let b = backend.next_conn().await;
    assert_eq!(b.path, "/feed?room=7");
    assert_eq!(b.headers["x-app"], "hello");
    assert!(b.headers.get("authorization").is_none(), "credentials are not stored by default");
    // The backend keeps pushing; tether journals it, seqs continuing.
    b.stream(11, 60);
    wait_metric(p.admin_addr, "tether_backend_orphan_frames_total", 50.0).await;

    let mut ws = resume(&p.url("/feed?room=7"), &token, 10).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["backend"], json!({"since": 11, "early": true, "error": null}), "{w}");
    expect_stream(&mut ws, 11, 60).await;
    b.text("live");
    assert_eq!(data(&mut ws).await, (61, "live".into()));
    assert_eq!(backend.count(), 2, "the resume reused the reopened connection");
    let m = http_get(p.admin_addr, "/metrics").await.1;
    assert_eq!(metric(&m, "tether_backend_reopens_total{result=\"ok\"}"), 1.0);
    assert_eq!(metric(&m, "tether_resumes_total{outcome=\"restarted\",reason=\"none\"}"), 1.0);
    p.kill9().await;
}

#[tokio::test]
async fn lazy_waits_for_the_client() {
    let (mut backend, dir, p) = setup_process().await;
    let url = p.url("/");
    let (token, _old) = session_then_drop(&mut backend, &url, &[]).await;
    p.kill9().await;
    let lazy = [("TETHER_SESSION_BACKEND_ON_RESTART", "lazy")];
    let p = TetherProcess::start(&backend.url(), dir.path(), &lazy).await;
    let mut ws = resume(&p.url("/"), &token, 10).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["backend"], json!({"since": 11, "early": false, "error": null}), "{w}");
    let b = backend.next_conn().await;
    b.text("after");
    assert_eq!(data(&mut ws).await, (11, "after".into()));
    let m = http_get(p.admin_addr, "/metrics").await.1;
    let reopens: f64 = ["ok", "refused", "error", "over_capacity", "skipped"]
        .iter()
        .map(|r| metric(&m, &format!("tether_backend_reopens_total{{result=\"{r}\"}}")))
        .sum();
    assert_eq!(reopens, 0.0);
    assert_eq!(backend.count(), 2);
    p.kill9().await;
}

#[tokio::test]
async fn a_refused_reopen_is_counted_and_reported_and_credentials_can_be_kept() {
    let mut backend =
        Backend::start_with(BackendOptions { require_header: Some("authorization"), ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    let auth = [("authorization", "Bearer abc")];
    let (token, _old) = session_then_drop(&mut backend, &p.url("/"), &auth).await;
    p.kill9().await;

    // Without the credentials, the backend refuses the early reopen.
    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    wait_metric(p.admin_addr, "tether_backend_reopens_total{result=\"refused\"}", 1.0).await;
    let (mut ws, _) =
        connect(&p.url("/"), &[("tether-session", &token), ("tether-offset", "10"), auth[0]]).await.unwrap();
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["backend"]["early"], false, "{w}");
    let error = w["backend"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("401"), "the client hears why: {w}");
    let b = backend.next_conn().await;
    assert_eq!(b.headers["authorization"], "Bearer abc", "the resume's own request");
    drop_abruptly(ws);
    p.kill9().await;

    // With restart_keep_credentials, they are stored sealed and the reopen works.
    let keep = [("TETHER_SESSION_RESTART_KEEP_CREDENTIALS", "true")];
    let p = TetherProcess::start(&backend.url(), dir.path(), &keep).await;
    let (token, _) = session_then_drop(&mut backend, &p.url("/"), &auth).await;
    p.kill9().await;
    let p = TetherProcess::start(&backend.url(), dir.path(), &keep).await;
    let b = backend.next_conn().await;
    assert_eq!(b.headers["authorization"], "Bearer abc");
    wait_metric(p.admin_addr, "tether_backend_reopens_total{result=\"ok\"}", 1.0).await;
    let mut ws = resume(&p.url("/"), &token, 10).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["backend"]["early"], true, "{w}");
    p.kill9().await;
}

#[tokio::test]
async fn two_thousand_sessions_reopen_within_the_dial_limits() {
    const SESSIONS: usize = 2000;
    const CONCURRENCY: usize = 8;
    let mut backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    // Held: a dropped backend connection closes, which ends its session.
    let mut held = Vec::with_capacity(2 * SESSIONS);
    for _ in 0..SESSIONS {
        let mut ws = open(&p.url("/"), &[]).await;
        welcome(&mut ws).await;
        let conn = backend.next_conn().await;
        // A frame the client received was journaled, and with it, before
        // it, the session's record and stored request: a kill -9 now
        // loses neither.
        conn.text("hi");
        assert_eq!(data(&mut ws).await, (1, "hi".into()));
        drop_abruptly(ws);
        held.push(conn);
    }
    p.kill9().await;
    // Each upgrade now takes 5 ms to answer, so dials overlap as much as
    // tether lets them.
    backend.delay_handshakes(5);
    backend.in_flight.max.store(0, std::sync::atomic::Ordering::SeqCst);
    let limits =
        [("TETHER_SESSION_RESTART_DIAL_CONCURRENCY", "8"), ("TETHER_SESSION_RESTART_DIALS_PER_SECOND", "5000")];
    let p = TetherProcess::start(&backend.url(), dir.path(), &limits).await;
    for _ in 0..SESSIONS {
        held.push(backend.next_conn().await);
    }
    wait_metric(p.admin_addr, "tether_backend_reopens_total{result=\"ok\"}", SESSIONS as f64).await;
    let max = backend.in_flight.max.load(std::sync::atomic::Ordering::SeqCst);
    assert!(max <= CONCURRENCY, "{max} handshakes at once, limit {CONCURRENCY}");
    assert!(max >= 2, "dials do overlap ({max})");
    wait_metric(p.admin_addr, "tether_sessions{state=\"detached\"}", SESSIONS as f64).await;
    p.kill9().await;
}

/// A client that returns while tether is still reopening its session's
/// backend connection joins that dial instead of opening a second one.
#[tokio::test]
async fn a_resume_during_the_reopen_joins_it() {
    use std::time::Duration;

    let (mut backend, dir, p) = setup_process().await;
    let (token, _old) = session_then_drop(&mut backend, &p.url("/feed"), &[]).await;
    p.kill9().await;
    // The restarted tether's backend holds its answer to the reopen.
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = TetherProcess::start(&format!("ws://{}", held.local_addr().unwrap()), dir.path(), &[]).await;
    let reopen = HeldUpgrade::accept(&held).await;
    let url = p.url("/feed");
    let client = tokio::spawn(async move {
        let mut ws = resume(&url, &token, 10).await;
        welcome(&mut ws).await.0
    });
    // Meanwhile the resume must not dial a second connection.
    let second = tokio::time::timeout(Duration::from_millis(500), held.accept()).await;
    assert!(second.is_err(), "the resume dialed a second backend connection");
    let _socket = reopen.answer().await;
    let w = within("the resume's welcome", client).await.unwrap();
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["backend"]["early"], true, "it joined the reopen: {w}");
    let m = http_get(p.admin_addr, "/metrics").await.1;
    assert_eq!(metric(&m, r#"tether_backend_connects_total{result="ok"}"#), 1.0);
    p.kill9().await;
}
