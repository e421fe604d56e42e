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

/// Bytes of the files under `dir` (a file deleted meanwhile counts 0).
fn du(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

/// The frame log's bytes once they are at most `bound`: dead files are
/// deleted by their own thread, soon after the write that killed them.
async fn framelog_within(dir: &std::path::Path, bound: u64) -> u64 {
    let framelog = dir.join("framelog");
    let mut last = du(&framelog);
    let settled = tokio::time::timeout(WAIT, async {
        while last > bound {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            last = du(&framelog);
        }
    })
    .await;
    assert!(settled.is_ok(), "frame log {last} > {bound}");
    last
}

/// tether with its journal in `<dir>/journal`, files of [`FILE`] bytes and
/// the frame limit [`LIMIT`].
async fn start() -> (tempfile::TempDir, Backend, Tether) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("journal");
    let (backend, t) = setup_with(move |c| {
        c.journal.data_dir = data_dir;
        c.journal.max_session_frames = LIMIT;
        c.journal.memtable_bytes = FILE as usize;
    })
    .await;
    (dir, backend, t)
}

#[tokio::test]
async fn streams_of_twenty_times_the_limit_keep_the_journal_bounded_and_gaps_exact() {
    let (dir, mut backend, t) = start().await;
    let data_dir = dir.path().join("journal");
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

    // What the frame log may hold: twice what is live (the cleaner empties
    // files at most half live while the log holds more than 1.5 times what
    // is live and four files) and five files (those four, and the active
    // one). Live: each session's retained frames (the limit and one chunk
    // more), each with its 5-byte frame header and at most a 32-byte
    // record header (a chunk is at least one frame).
    let live = 2 * (LIMIT + CHUNK) * (SIZE as u64 + 5 + 32);
    let bound = 2 * live + 5 * FILE;
    let streamed = 2 * N * SIZE as u64;
    let framelog = framelog_within(&data_dir, bound).await;
    eprintln!("frame log {framelog} bytes, bound {bound}, streamed {streamed}, trimmed {trimmed}");
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

/// A quiet session keeps one frame in each of many files while a busy one
/// streams and trims (both detached): the cleaner moves the quiet session's chunks out of
/// the files that are otherwise dead, so the frame log stays near what is
/// live, and the moved frames replay byte for byte.
#[tokio::test]
async fn the_cleaner_frees_files_a_quiet_session_would_pin() {
    const QUIET: u64 = 40;
    let (dir, mut backend, t) = start().await;
    let data_dir = dir.path().join("journal");
    let (ws, quiet_token, quiet) = attach(&mut backend, &t.url("/")).await;
    drop_abruptly(ws);
    wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, 1.0).await;
    let (ws, _, busy) = attach(&mut backend, &t.url("/")).await;
    drop_abruptly(ws);
    wait_metric(t.admin_addr, r#"tether_sessions{state="detached"}"#, 2.0).await;
    // A file's worth of the busy stream, then one quiet frame, 40 times:
    // each quiet frame lands in another file.
    let per_file = FILE / SIZE as u64;
    for q in 1..=QUIET {
        let from = (q - 1) * per_file + 1;
        busy.stream_padded(from, q * per_file, SIZE);
        wait_metric(t.admin_addr, "tether_journal_appends_total", (q * per_file + q - 1) as f64).await;
        quiet.stream_padded(q, q, SIZE);
        wait_metric(t.admin_addr, "tether_journal_appends_total", (q * per_file + q) as f64).await;
    }
    let m = t.metrics().await;
    let cleaned = metric(&m, "tether_journal_cleaned_bytes_total");
    // Live: the busy session's limit and one chunk, the quiet frames.
    let live = (LIMIT + CHUNK + QUIET) * (SIZE as u64 + 5 + 32);
    let bound = 2 * live + 5 * FILE;
    let framelog = framelog_within(&data_dir, bound).await;
    eprintln!("frame log {framelog} bytes, bound {bound}, {cleaned} bytes cleaned, {} streamed", QUIET * FILE);
    assert!(cleaned > 0.0, "the cleaner ran");
    let mut ws2 = resume(&t.url("/"), &quiet_token, 0).await;
    let (w, _) = welcome(&mut ws2).await;
    assert_eq!(w["outcome"], "resumed");
    assert_eq!(w["replay"], json!({"from": 1, "to": QUIET}));
    for i in 1..=QUIET {
        assert_eq!(next_text(&mut ws2).await, format!("{i}:{}", body(i)));
    }
    t.stop().await;
}
