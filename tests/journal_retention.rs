//! Retention at full speed (issue 12, item 0): a session streaming many times
//! `journal.max_session_frames` keeps flowing, every trimmed frame is
//! reported exactly, and what is retained stays bounded.

mod common;

use common::*;
use serde_json::json;

/// The frame limit of these tests.
const LIMIT: u64 = 2_000;
/// Frames streamed: ten times the limit, back to back, as fast as the backend
/// can write them.
const N: u64 = 20_000;
/// 64-byte messages, as in the report.
const SIZE: usize = 64;
/// At most this many frames beyond the limit before a trim (docs:
/// `journal.max_session_frames`): an eighth of the limit rounded up to whole
/// 64-frame segments, at least one segment.
const CHUNK: u64 = 256;

/// The text of frame `i` as the backend sends it.
fn body(i: u64) -> String {
    let mut m = format!("m{i} ");
    m.push_str(&".".repeat(SIZE - m.len()));
    m
}

/// An attached client reading as fast as it can receives every frame in
/// order, or a `gap` frame naming exactly the frames trimmed under it; the
/// delivered and reported frames add up to what the backend sent.
#[tokio::test]
async fn attached_client_keeps_up_past_the_frame_limit() {
    let (mut backend, t) = setup_with(|c| c.journal.max_session_frames = LIMIT).await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    b.stream_padded(1, N, SIZE);

    let mut delivered = 0u64;
    let gaps = read_through_gaps(&mut ws, N, |seq, payload| {
        assert_eq!(payload, body(seq), "exact payload");
        delivered += 1;
    })
    .await;
    let lost: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(delivered + lost, N, "delivered + reported lost = sent");

    let m = wait_metric(t.admin_addr, "tether_journal_appends_total", N as f64).await;
    let trimmed = metric(&m, r#"tether_trimmed_frames_total{reason="max_frames"}"#) as u64;
    let retained = N - trimmed;
    assert!((LIMIT..=LIMIT + CHUNK).contains(&retained), "retains between the limit and one chunk more: {retained}");
    assert!(trimmed >= lost, "a client is only told of frames that were trimmed");
    // Every trim removes at least one chunk: one range delete per chunk, not per frame.
    let trims = metric(&m, "tether_journal_trims_total");
    assert!(trims > 0.0 && trims <= (trimmed / CHUNK) as f64, "{trims} trims for {trimmed} frames");
    // Bounded memory: what is retained is the limit plus one chunk, not the stream.
    // (the janitor refreshes this gauge once a second).
    wait_metric(t.admin_addr, "tether_journal_retained_bytes", (retained * SIZE as u64) as f64).await;
    eprintln!("attached: {delivered} delivered, {lost} reported lost, {trimmed} trimmed in {trims} trims");
    t.stop().await;
}

/// A detached session streams ten times its limit; the resume reports
/// exactly the trimmed prefix and replays exactly what is retained.
#[tokio::test]
async fn detached_session_resumes_with_the_exact_gap() {
    let (mut backend, t) = setup_with(|c| c.journal.max_session_frames = LIMIT).await;
    let (ws, token, b) = attach(&mut backend, &t.url("/")).await;
    drop_abruptly(ws);
    wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, 1.0).await;
    b.stream_padded(1, N, SIZE);
    let m = wait_metric(t.admin_addr, "tether_journal_appends_total", N as f64).await;
    let trimmed = metric(&m, r#"tether_trimmed_frames_total{reason="max_frames"}"#) as u64;
    let retained = N - trimmed;
    assert!((LIMIT..=LIMIT + CHUNK).contains(&retained), "retained {retained}");
    wait_metric(t.admin_addr, "tether_journal_retained_bytes", (retained * SIZE as u64) as f64).await;

    let mut ws = resume(&t.url("/"), &token, 0).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "gap");
    let first = trimmed + 1;
    assert_eq!(
        w["gap"],
        json!({"reason": "trimmed", "requested_offset": 0, "first_available": first, "lost": {"from": 1, "to": trimmed}})
    );
    assert_eq!(w["replay"], json!({"from": first, "to": N}));
    for i in first..=N {
        assert_eq!(next_text(&mut ws).await, format!("{i}:{}", body(i)));
    }
    b.stream_padded(N + 1, N + 1, SIZE);
    assert_eq!(next_text(&mut ws).await, format!("{}:{}", N + 1, body(N + 1)));
    t.stop().await;
}

/// Each trim is a range delete, and every journal read re-fragments the
/// range deletes in the memtable, so past 1,000 of them the memtable is
/// flushed (`memtable_max_range_deletions`), the first memtable too: a
/// bound set after the database opened reached only the memtables after
/// the first flush, which a memtable of pointers can take minutes to reach.
/// RocksDB's LOG names the reason of every flush.
#[tokio::test]
async fn a_thousand_trims_flush_the_memtable() {
    // A trim every 64-frame segment.
    const LIMIT: u64 = 64;
    const N: u64 = 200_000;
    let (mut backend, t) = setup_with(|c| c.journal.max_session_frames = LIMIT).await;
    let (ws, _, b) = attach(&mut backend, &t.url("/")).await;
    drop_abruptly(ws);
    wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, 1.0).await;
    b.stream_padded(1, N, SIZE);
    let m = wait_metric(t.admin_addr, "tether_journal_appends_total", N as f64).await;
    let trims = metric(&m, "tether_journal_trims_total");
    assert!(trims >= 1_000.0, "{trims} trims");
    let log = t.dir.path().join("LOG");
    within("RocksDB to flush for range deletions", async {
        while !std::fs::read_to_string(&log).unwrap().contains("Memtable Max Range Deletions") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    eprintln!("{trims} trims");
    t.stop().await;
}
