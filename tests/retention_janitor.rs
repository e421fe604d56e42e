//! The janitor's limits, `journal.max_frame_age` and
//! `journal.disk_budget_bytes`: what they trim is reported exactly, and the
//! disk budget takes the instance's oldest segment, whichever session holds it.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// Frames older than `max_frame_age` go in whole segments, whether or not a
/// client read them, and a resume from before them is told exactly what.
#[tokio::test]
async fn frames_past_max_frame_age_are_trimmed_and_reported() {
    let (mut backend, t) = setup_with(|c| c.journal.max_frame_age = Duration::from_millis(300)).await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    // One whole segment (seqs 1..=64).
    b.stream(1, 64);
    expect_stream(&mut ws, 1, 64).await;
    drop_abruptly(ws);
    let m = wait_metric(t.admin_addr, r#"tether_trimmed_frames_total{reason="max_age"}"#, 64.0).await;
    assert_eq!(metric(&m, "tether_journal_retained_bytes"), 0.0);

    let mut ws = resume(&t.url("/"), &token, 10).await;
    let (w, token2) = welcome(&mut ws).await;
    assert_rotated(&token2, &token);
    assert_eq!(w["outcome"], "gap");
    assert_eq!(
        w["gap"],
        json!({"reason": "trimmed", "requested_offset": 10, "first_available": 65, "lost": {"from": 11, "to": 64}})
    );
    // Nothing left to replay; the stream goes on live.
    b.stream(65, 66);
    expect_stream(&mut ws, 65, 66).await;
    assert_eq!(backend.count(), 1);
    t.stop().await;
}

/// Over `disk_budget_bytes`, the oldest segment anywhere goes first: here
/// session A's first one, written before anything of session B.
#[tokio::test]
async fn disk_budget_trims_the_oldest_segment_of_the_instance() {
    const SIZE: usize = 1000;
    const SEGMENT: u64 = 64 * SIZE as u64;
    // Room for three of the four segments the two sessions write.
    let (mut backend, t) = setup_with(|c| c.journal.disk_budget_bytes = 3 * SEGMENT + SEGMENT / 2).await;
    let (mut a, token_a, ba) = attach(&mut backend, &t.url("/a")).await;
    ba.stream_padded(1, 128, SIZE);
    assert_eq!(read_through_gaps(&mut a, 128, |_, _| {}).await, vec![]);
    drop_abruptly(a);
    let (mut b, token_b, bb) = attach(&mut backend, &t.url("/b")).await;
    bb.stream_padded(1, 128, SIZE);
    assert_eq!(read_through_gaps(&mut b, 128, |_, _| {}).await, vec![]);
    drop_abruptly(b);

    let m = wait_metric(t.admin_addr, r#"tether_trimmed_frames_total{reason="disk_budget"}"#, 64.0).await;
    assert_eq!(metric(&m, "tether_journal_retained_bytes"), (3 * SEGMENT) as f64);

    let mut a = resume(&t.url("/a"), &token_a, 0).await;
    let (w, _) = welcome(&mut a).await;
    assert_eq!(
        w["gap"],
        json!({"reason": "trimmed", "requested_offset": 0, "first_available": 65, "lost": {"from": 1, "to": 64}})
    );
    assert_eq!(w["replay"], json!({"from": 65, "to": 128}));
    let mut b = resume(&t.url("/b"), &token_b, 0).await;
    let (w, _) = welcome(&mut b).await;
    assert_eq!(w["outcome"], "resumed");
    assert_eq!(w["replay"], json!({"from": 1, "to": 128}));
    assert_eq!(read_through_gaps(&mut b, 128, |_, _| {}).await, vec![], "session B lost nothing");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_trimmed_frames_total{reason="disk_budget"}"#), 64.0);
    t.stop().await;
}
