//! Journal layout 2 (src/journal/chunk.rs): frames are stored one chunk per
//! drained batch. A resume from any offset, inside a chunk or at its edge,
//! gets exactly the frames after it from the journal; a data directory in
//! the old per-frame layout is refused at start with one line.

mod common;

use std::process::Command;

use common::*;

/// Frames streamed in one burst, so the link task drains them in chunks
/// (up to 64 frames, never across a 64-frame segment boundary).
const N: u64 = 300;

/// With no ring (`limits.ring_bytes = 0`) every read comes from RocksDB: a
/// resume at each offset, including offsets inside a chunk, at segment
/// boundaries and at the last frame but one, replays exactly `offset+1..=N`.
#[tokio::test]
async fn resumes_read_exactly_from_inside_a_chunk() {
    let (mut backend, t) = setup_with(|c| c.limits.ring_bytes = 0).await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, N);
    expect_stream(&mut ws, 1, N).await;
    drop_abruptly(ws);
    for offset in [0, 1, 37, 63, 64, 65, 127, 128, 129, 250, N - 1] {
        let mut ws = resume(&t.url("/"), &token, offset).await;
        let (w, _) = welcome(&mut ws).await;
        assert_eq!(w["replay"]["from"], offset + 1, "{w}");
        assert_eq!(w["replay"]["to"], N, "{w}");
        expect_stream(&mut ws, offset + 1, N).await;
        drop_abruptly(ws);
    }
    let m = t.metrics().await;
    assert_eq!(metric(&m, "tether_journal_appends_total"), N as f64);
    assert!(metric(&m, "tether_journal_batch_ops_sum") <= N as f64 + 1.0, "at most one op per frame plus the record");
    t.stop().await;
}

/// A data directory written by an older tether (one key per frame, no
/// `layout` in `meta`) is not misread as chunks: tether refuses it at start
/// with one line naming the directory and the layout, and exits 2.
#[test]
fn old_per_frame_layout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["frames", "sessions", "meta"]).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"epoch", 7u64.to_be_bytes()).unwrap();
        let sessions = db.cf_handle("sessions").unwrap();
        let id = [9u8; 16];
        db.put_cf(sessions, id, br#"{"trimmed_to":0,"ended":null,"orphaned_ms":null,"ended_ms":null}"#).unwrap();
        // Layout 1: session ‖ seq → kind ‖ payload, one key per frame.
        let frames = db.cf_handle("frames").unwrap();
        for seq in 1u64..=3 {
            let mut key = id.to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            db.put_cf(frames, key, b"\0hello").unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TETHER_TOKEN_SECRET", SECRET)
        .env("RUST_BACKTRACE", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tether");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("tether: "), "{stderr}");
    // The line docs/OPERATIONS.md#upgrades quotes.
    assert_eq!(
        stderr,
        format!(
            "tether: cannot open the journal: {}: the journal there is in layout 1 (one RocksDB key per frame, written by an \
             older tether); this tether reads layout 3 and migrates layout 2. Let the old tether's clients finish and \
             start this one with an empty journal.data_dir\n",
            dir.path().display()
        )
    );
    assert!(!stderr.contains("corrupt") && !stderr.contains("panicked"), "{stderr}");
}
