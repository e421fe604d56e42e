//! `/metrics`, `/livez` and `/readyz` after real scenarios, with exact values.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn delivery_metrics_after_a_drop_and_resume() {
    let (mut backend, t) = setup().await;
    let admin = t.admin_addr;
    assert_eq!(http_get(admin, "/livez").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    let (mut a, _, ba) = attach(&mut backend, &t.url("/")).await;
    ba.stream(1, 3);
    expect_stream(&mut a, 1, 3).await;

    let (mut b, token, bb) = attach(&mut backend, &t.url("/")).await;
    bb.stream(1, 2);
    expect_stream(&mut b, 1, 2).await;
    drop_abruptly(b);
    let m = wait_metric(admin, r#"tether_sessions{state="detached"}"#, 1.0).await;
    assert_eq!(metric(&m, r#"tether_sessions{state="attached"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_client_disconnects_total{kind="abnormal"}"#), 1.0);

    bb.stream(3, 5);
    // All of 3..=5 journaled before the resume, so all three are replays
    // (a frame committed after the attach would be live).
    wait_metric(admin, "tether_journal_appends_total", 8.0).await;
    let r = connect(&t.url("/"), &[("tether-session", &token), ("tether-offset", "9")]).await;
    assert_eq!(r.err().map(|r| r.status), Some(409));
    let mut b = resume(&t.url("/"), &token, 2).await;
    welcome(&mut b).await;
    expect_stream(&mut b, 3, 5).await;

    let m = wait_metric(admin, "tether_delivery_lag_frames", 0.0).await;
    let exact = [
        (r#"tether_sessions{state="attached"}"#, 2.0),
        (r#"tether_sessions{state="detached"}"#, 0.0),
        (r#"tether_frames_total{direction="downstream"}"#, 8.0),
        (r#"tether_bytes_total{direction="downstream"}"#, 16.0),
        ("tether_journal_appends_total", 8.0),
        ("tether_journal_append_seconds_count", 8.0),
        ("tether_replayed_frames_total", 3.0),
        ("tether_replay_seconds_count", 1.0),
        (r#"tether_resumes_total{outcome="new",reason="none"}"#, 2.0),
        (r#"tether_resumes_total{outcome="resumed",reason="none"}"#, 1.0),
        (r#"tether_backend_connects_total{result="ok"}"#, 2.0),
        (r#"tether_refusals_total{error="offset_ahead",status="409"}"#, 1.0),
        ("tether_journal_write_errors_total", 0.0),
        ("tether_journal_retained_bytes", 16.0),
    ];
    for (sample, want) in exact {
        assert_eq!(metric(&m, sample), want, "{sample}");
    }
    let info = m.lines().find(|l| l.starts_with("tether_build_info{")).expect("build info");
    assert!(info.contains(r#"version="0.1.0""#) && info.contains(r#"rocksdb=""#), "{info}");
    assert!(info.ends_with(" 1") && !info.contains(r#"commit="""#), "{info}");
    // Known label values exist from the start, at 0, so rate() sees the first event.
    assert!(m.contains("tether_resumes_total{outcome=\"gap\",reason=\"journal_lost\"} 0\n"), "{m}");
    assert!(m.contains("tether_trimmed_frames_total{reason=\"max_frames\"} 0\n"), "{m}");
    assert!(metric(&m, "tether_journal_batch_ops_count") >= 1.0);
    // Every op is in a batch: 2 session records and at least one chunk for
    // each of the 3 bursts (frames that arrive together share a chunk).
    assert!(metric(&m, "tether_journal_batch_ops_sum") >= 5.0, "every op is in a batch");
    t.stop().await;
}

/// Frames that arrive steadily but one at a time share commits
/// (`journal.commit_delay`): far fewer RocksDB writes than frames, and
/// every frame still delivered, in order.
#[tokio::test]
async fn a_steady_trickle_of_frames_shares_commits() {
    let (mut backend, t) = setup_with(|c| c.journal.commit_delay = Duration::from_millis(10)).await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    let before = metric(&t.metrics().await, "tether_journal_batch_ops_count");
    // One frame a millisecond, so tether reads each on its own: without the
    // delay each would be a commit of its own.
    for i in 1..=60 {
        b.text(&format!("m{i}"));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    expect_stream(&mut ws, 1, 60).await;
    let commits = metric(&t.metrics().await, "tether_journal_batch_ops_count") - before;
    assert!(commits <= 20.0, "{commits} commits for 60 frames");
    t.stop().await;
}
