//! `limits.max_retained_sessions` caps the orphaned and ended sessions kept
//! for late resumes: the oldest are evicted with their frames, and a resume
//! of an evicted session is answered `gap`/`expired`.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn oldest_ended_sessions_are_evicted_beyond_the_cap() {
    let (mut backend, t) = setup_with(|c| c.limits.max_retained_sessions = 3).await;
    let (admin, url) = (t.admin_addr, t.url("/"));
    let mut tokens = Vec::new();
    for i in 1..=5u64 {
        // Session ids carry their creation time in ms, which orders eviction:
        // keep the five apart.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (mut ws, token, b) = attach(&mut backend, &url).await;
        b.stream(1, i);
        expect_stream(&mut ws, 1, i).await;
        b.close(1000, "done");
        assert_eq!(control(&mut ws).await["type"], "end");
        assert_eq!(close_code(&mut ws).await, 1000);
        tokens.push(token);
    }
    // Session 1 went when session 5 was created, session 2 at the janitor's
    // next pass after session 5 ended.
    let m = wait_metric(admin, "tether_sessions_evicted_total", 2.0).await;
    let m = if metric(&m, r#"tether_sessions{state="ended"}"#) == 3.0 {
        m
    } else {
        wait_metric(admin, r#"tether_sessions{state="ended"}"#, 3.0).await
    };
    let exact = [
        (r#"tether_sessions{state="attached"}"#, 0.0),
        (r#"tether_sessions{state="detached"}"#, 0.0),
        (r#"tether_sessions{state="orphaned"}"#, 0.0),
        (r#"tether_sessions{state="ended"}"#, 3.0),
        ("tether_sessions_evicted_total", 2.0),
        (r#"tether_trimmed_frames_total{reason="session_evicted"}"#, 3.0),
        // Sessions 3, 4 and 5: frames "m1".."m<i>", 2 bytes each.
        ("tether_journal_retained_bytes", 2.0 * (3.0 + 4.0 + 5.0)),
    ];
    for (sample, want) in exact {
        assert_eq!(metric(&m, sample), want, "{sample}");
    }

    // An evicted session: gap/expired, and a new session on a new backend
    // connection.
    let mut ws = resume(&url, &tokens[0], 1).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!((w["outcome"].as_str(), w["gap"]["reason"].as_str()), (Some("gap"), Some("expired")), "{w}");
    assert_eq!(w["gap"]["lost"]["from"], 2);
    let b = backend.next_conn().await;
    b.stream(1, 1);
    expect_stream(&mut ws, 1, 1).await;

    // A kept one replays what it retained, then ends.
    let mut kept = resume(&url, &tokens[2], 0).await;
    let (w, _) = welcome(&mut kept).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    expect_stream(&mut kept, 1, 3).await;
    assert_eq!(control(&mut kept).await["type"], "end");

    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="gap",reason="expired"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="resumed",reason="none"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_sessions{state="attached"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_sessions{state="ended"}"#), 3.0);
    assert_eq!(metric(&m, "tether_sessions_evicted_total"), 2.0);
    drop(b);
    t.stop().await;
}

/// Waits until `tether_sessions{state}` reads `want` (attached, detached,
/// orphaned, ended), then checks all four at once.
async fn expect_states(admin: std::net::SocketAddr, want: [f64; 4]) {
    let states = ["attached", "detached", "orphaned", "ended"];
    within("the session gauges", async {
        loop {
            let m = scrape(admin).await;
            let got = states.map(|s| metric(&m, &format!(r#"tether_sessions{{state="{s}"}}"#)));
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The `/metrics` text.
async fn scrape(admin: std::net::SocketAddr) -> String {
    http_get(admin, "/metrics").await.1
}

#[tokio::test]
async fn state_gauges_follow_every_transition() {
    let (mut backend, t) = setup_with(|c| c.session.linger = Duration::from_millis(200)).await;
    let (admin, url) = (t.admin_addr, t.url("/"));
    let (mut ws, token, b) = attach(&mut backend, &url).await;
    expect_states(admin, [1.0, 0.0, 0.0, 0.0]).await;
    b.stream(1, 2);
    expect_stream(&mut ws, 1, 2).await;
    drop_abruptly(ws);
    expect_states(admin, [0.0, 1.0, 0.0, 0.0]).await;
    expect_states(admin, [0.0, 0.0, 1.0, 0.0]).await;

    // Restarted on a new backend connection, then taken over: one attached.
    let mut ws = resume(&url, &token, 2).await;
    assert_eq!(welcome(&mut ws).await.0["outcome"], "restarted");
    let b = backend.next_conn().await;
    expect_states(admin, [1.0, 0.0, 0.0, 0.0]).await;
    let mut newer = resume(&url, &token, 2).await;
    assert_eq!(welcome(&mut newer).await.0["outcome"], "resumed");
    assert_eq!(close_code(&mut ws).await, 4001);
    expect_states(admin, [1.0, 0.0, 0.0, 0.0]).await;

    b.close(1000, "bye");
    assert_eq!(control(&mut newer).await["type"], "end");
    expect_states(admin, [0.0, 0.0, 0.0, 1.0]).await;
    let m = t.metrics().await;
    assert_eq!(metric(&m, "tether_sessions_evicted_total"), 0.0);
    assert_eq!(metric(&m, "tether_delivery_lag_frames"), 0.0);
    t.stop().await;
}
