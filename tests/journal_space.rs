//! The journal's space while sessions stream twenty times their frame limit
//! (issue 23): an attached and a detached session share the frame log's
//! files, the gap reports stay exact, and what the journal holds on disk
//! stays under a bound computed from the settings, not from the stream.

mod common;

use common::*;
use serde_json::json;

/// `journal.max_session_frames`.
const LIMIT: u64 = 2_000;
/// Frames each session streams: twenty times the limit.
const N: u64 = 20 * LIMIT;
/// Payload bytes per frame.
const SIZE: usize = 1_024;
/// Frames a session may hold beyond the limit before a trim: an eighth of
/// it in whole 64-frame segments.
const CHUNK: u64 = 256;
/// `journal.memtable_bytes`, which is also each frame log file's size.
const FILE: u64 = 1 << 20;

fn body(i: u64) -> String {
    let mut m = format!("m{i} ");
    m.push_str(&".".repeat(SIZE - m.len()));
    m
}

/// Bytes of the files under `dir`.
fn du(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

#[tokio::test]
async fn streams_of_twenty_times_the_limit_keep_the_journal_bounded_and_gaps_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("journal");
    let dd = data_dir.clone();
    let (mut backend, t) = setup_with(move |c| {
        c.journal.data_dir = dd;
        c.journal.max_session_frames = LIMIT;
        c.journal.memtable_bytes = FILE as usize;
    })
    .await;
    let (ws, token, detached) = attach(&mut backend, &t.url("/")).await;
    drop_abruptly(ws);
    wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, 1.0).await;
    let (mut ws, _, attached) = attach(&mut backend, &t.url("/")).await;
    // Both at once, so their chunks share files.
    detached.stream_padded(1, N, SIZE);
    attached.stream_padded(1, N, SIZE);
    let mut delivered = 0u64;
    let gaps = read_through_gaps(&mut ws, N, |seq, payload| {
        assert_eq!(payload, body(seq), "exact payload");
        delivered += 1;
    })
    .await;
    let lost: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(delivered + lost, N, "attached: delivered + reported lost = sent");
    let m = wait_metric(t.admin_addr, "tether_journal_appends_total", (2 * N) as f64).await;
    let trimmed = metric(&m, r#"tether_trimmed_frames_total{reason="max_frames"}"#) as u64;
    assert!(trimmed >= 2 * (N - LIMIT - CHUNK), "{trimmed} trimmed");

    // What the frame log may hold: each session's retained frames (the
    // limit and one chunk more, each with its 5-byte frame header), the
    // 32-byte record header of each chunk (a chunk is at least one frame),
    // the active file, and per session one file whose other chunks are
    // dead (a trim ends inside it), with a file's slack for the one being
    // written when it rolls.
    let retained = (LIMIT + CHUNK) * (SIZE as u64 + 5 + 32);
    let bound = 2 * retained + 4 * FILE;
    let streamed = 2 * N * SIZE as u64;
    let framelog = du(&data_dir.join("framelog"));
    eprintln!("frame log {framelog} bytes, bound {bound}, streamed {streamed}, trimmed {trimmed}");
    assert!(framelog <= bound, "frame log {framelog} > {bound}");
    // The gauge (frame log, SST files, WAL; refreshed once a second) adds
    // RocksDB's index and memtables: pointers, not payloads.
    let gauge_bound = (bound + 4 * FILE) as f64;
    within("tether_journal_disk_bytes under its bound", async {
        while metric(&t.metrics().await, "tether_journal_disk_bytes") > gauge_bound {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;

    // The detached session: the exact trimmed prefix, then exactly what is
    // left, which is the limit and at most one chunk more.
    let mut ws2 = resume(&t.url("/"), &token, 0).await;
    let (w, _) = welcome(&mut ws2).await;
    assert_eq!(w["outcome"], "gap");
    let first = w["gap"]["first_available"].as_u64().unwrap();
    assert!((LIMIT..=LIMIT + CHUNK).contains(&(N - first + 1)), "{w}");
    assert_eq!(
        w["gap"],
        json!({"reason": "trimmed", "requested_offset": 0, "first_available": first, "lost": {"from": 1, "to": first - 1}})
    );
    assert_eq!(w["replay"], json!({"from": first, "to": N}));
    for i in first..=N {
        assert_eq!(next_text(&mut ws2).await, format!("{i}:{}", body(i)));
    }
    t.stop().await;
}
