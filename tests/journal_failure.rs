//! A journal that cannot be written (issue 12, item 2): tether stops
//! pretending. The journal lives on a small tmpfs that the test fills, which
//! makes RocksDB's next WAL append fail with ENOSPC, deterministically; after
//! that RocksDB refuses every write until it is reopened. These tests mount a
//! tmpfs, so they need root; where mounting is not permitted they print why
//! and skip.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a 32 MiB tmpfs, or `None` (with a message) where that is not
    /// permitted.
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=32m", "tether-test", dir.path().to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the full-disk journal test did not run");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system: the next RocksDB write gets ENOSPC.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "ENOSPC: {e}");
                break;
            }
        }
        // A partial last block may still fit.
        let _ = f.write_all(&chunk[..512]);
        let _ = f.write_all(&chunk[..1]);
        path
    }
}

/// Frames streamed after the disk is full, 4 KiB each: far more than the
/// tmpfs holds, so some append fails whatever RocksDB preallocated.
const FLOOD: u64 = 20_000;
const PAD: usize = 4096;

/// Reads padded frames `from..` in order until a control frame; returns the
/// control frame and the last seq received.
async fn frames_until_control(ws: &mut Ws, from: u64) -> (serde_json::Value, u64) {
    let mut next_seq = from;
    loop {
        let text = next_text(ws).await;
        if let Some(c) = text.strip_prefix('#') {
            return (serde_json::from_str(c).unwrap(), next_seq - 1);
        }
        let (seq, payload) = text.split_once(':').unwrap();
        assert_eq!(seq.parse::<u64>().unwrap(), next_seq, "in order, nothing skipped");
        assert!(payload.starts_with(&format!("m{next_seq} ")) && payload.len() == PAD, "exact payload");
        next_seq += 1;
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// In process: once a write fails for good, `/livez` and `/readyz` say so,
/// new sessions are refused with `503 journal_failed`, nothing unjournaled
/// is delivered, and the drain reports the failure.
#[tokio::test]
async fn failed_journal_is_reported_and_refuses_sessions() {
    let Some(fs) = Tmpfs::mount() else { return };
    let (mut backend, t) = setup_with(|c| c.journal.data_dir = fs.path().join("journal")).await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, 10);
    expect_stream(&mut ws, 1, 10).await;
    fs.fill();
    b.stream_padded(11, 10 + FLOOD, PAD);
    // One failed write, then the writer stops.
    let m = wait_metric(t.admin_addr, "tether_journal_write_errors_total", 1.0).await;
    let committed = metric(&m, "tether_journal_appends_total") as u64;
    assert!(committed < 10 + FLOOD);
    let (status, body) = http_get(t.admin_addr, "/livez").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("journal failed: IO error: No space left on device"), "{body}");
    let (status, body) = http_get(t.admin_addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("journal failed:"), "{body}");

    let refused = connect(&t.url("/"), &[]).await.expect_err("refused");
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(refused.body["error"], "journal_failed");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="journal_failed",status="503"}"#), 1.0);
    assert_eq!(metric(&m, "tether_journal_appends_total"), committed as f64, "nothing commits after the failure");

    // The drain closes the client, which got at most what was committed,
    // and reports the failure.
    let stopping = tokio::spawn(t.stop_err());
    let (c, last) = frames_until_control(&mut ws, 11).await;
    assert_eq!(c, json!({"type": "draining"}));
    assert!(last <= committed, "delivered {last}, committed {committed}: nothing unjournaled");
    assert_eq!(close_code(&mut ws).await, 1012);
    let err = stopping.await.unwrap();
    assert!(err.starts_with("the journal failed: IO error: No space left on device"), "{err}");
}

/// As a process: the failure drains and exits non-zero; restarted on the
/// same data directory (256 KiB freed), tether replays every journaled frame
/// as `restarted`, and the numbering continues.
#[tokio::test]
async fn failed_journal_exits_and_the_restart_replays() {
    let Some(fs) = Tmpfs::mount() else { return };
    let dir = fs.path().join("journal");
    let mut backend = Backend::start().await;
    let mut p = TetherProcess::start(&backend.url(), &dir, &[]).await;
    let (mut ws, token, b) = attach(&mut backend, &p.url("/")).await;
    b.stream(1, 50);
    expect_stream(&mut ws, 1, 50).await;
    let filler = fs.fill();
    b.stream_padded(51, 50 + FLOOD, PAD);
    let (c, last) = frames_until_control(&mut ws, 51).await;
    assert_eq!(c, json!({"type": "draining"}));
    assert!(last < 50 + FLOOD);
    assert_eq!(close_code(&mut ws).await, 1012);
    let status = within("tether to exit", p.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(1), "exits non-zero so the supervisor restarts it");
    p.wait_log("journal failed; tether drains and exits so that it is restarted").await;

    // Free only 256 KiB: the restart must not need RocksDB's 64 MiB
    // recovery reserve (nor flush the recovered WAL into new files).
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(len - 256 * 1024).unwrap();
    let p = TetherProcess::start(&backend.url(), &dir, &[]).await;
    let mut ws = resume(&p.url("/"), &token, 0).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted");
    // Everything journaled comes back: at least what the client was sent.
    let to = w["replay"]["to"].as_u64().unwrap();
    assert_eq!(w["replay"]["from"], 1);
    assert!(to >= last, "replay to {to}, delivered {last}");
    expect_stream(&mut ws, 1, 50).await;
    let b2 = backend.next_conn().await;
    b2.stream(to + 1, to + 1);
    let (c, end) = {
        let mut got = 51;
        while got <= to {
            let (seq, payload) = data(&mut ws).await;
            assert_eq!(seq, got);
            assert!(payload.starts_with(&format!("m{got} ")) && payload.len() == PAD);
            got += 1;
        }
        (data(&mut ws).await, to + 1)
    };
    assert_eq!(c, (end, format!("m{end}")), "the numbering continues after the replay");
    assert_eq!(p.signal("-TERM").await.code(), Some(0));
}
