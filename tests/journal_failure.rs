//! A journal whose disk fills up (issue 12, item 2). The journal lives on a
//! small tmpfs that the test fills, which makes RocksDB's next WAL append
//! fail with ENOSPC, deterministically. tether waits for space in-process
//! (RocksDB's `SstFileManager` resumes writes once `journal.memtable_bytes`
//! is free), delivering nothing unjournaled meanwhile; a purge can free
//! that space itself; a shutdown does not wait for it. These tests mount a
//! tmpfs, so they need root; where mounting is not permitted they print why
//! and skip. (A journal that fails for good is tests/fd_exhaustion.rs.)

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
    /// Mounts a tmpfs of `mib` MiB, or `None` (with a message) where that
    /// is not permitted.
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tether-test", dir.path().to_str().unwrap()])
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

/// Frames streamed after the disk is full, 4 KiB each: 8 MiB, several
/// times what a 1 MiB memtable's WAL preallocates, so some append fails.
const FLOOD: u64 = 2_000;
const PAD: usize = 4096;
/// `journal.memtable_bytes` in these tests: the free space RocksDB waits
/// for before it resumes writes.
const MEMTABLE: &str = "1048576";

/// Reads the padded frames `from..=to`, exactly and in order.
async fn expect_padded(ws: &mut Ws, from: u64, to: u64) {
    for want in from..=to {
        let (seq, payload) = data(ws).await;
        assert_eq!(seq, want, "in order, nothing skipped");
        assert!(payload.starts_with(&format!("m{want} ")) && payload.len() == PAD, "exact payload of {want}");
    }
}

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

/// In process: while the disk is full, `/readyz` says so (`/livez` does
/// not: the process is fine), new sessions get `503 journal_full`, and the
/// attached client gets nothing unjournaled. Once space is freed, RocksDB
/// resumes writes by itself and every held frame arrives, exactly, with no
/// gap and no restart.
#[tokio::test]
async fn a_full_disk_is_waited_out_in_process() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let (mut backend, t) = setup_with(|c| {
        c.journal.data_dir = fs.path().join("journal");
        c.journal.memtable_bytes = MEMTABLE.parse().unwrap();
    })
    .await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, 10);
    expect_stream(&mut ws, 1, 10).await;
    let filler = fs.fill();
    b.stream_padded(11, 10 + FLOOD, PAD);
    wait_metric(t.admin_addr, "tether_journal_disk_full", 1.0).await;
    // A scrape reads the error counter before the gauge, and the writer
    // counts the error before it sets the gauge: the scrape that saw the
    // gauge may have read the counter just before. The next one cannot.
    let m = t.metrics().await;
    assert!(metric(&m, "tether_journal_write_errors_total") >= 1.0);
    let committed = metric(&m, "tether_journal_appends_total") as u64;
    assert!(committed < 10 + FLOOD, "{committed} committed");
    assert_eq!(http_get(t.admin_addr, "/livez").await, (200, "ok\n".to_string()));
    let (status, body) = http_get(t.admin_addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: the journal's disk is full; waiting for space\n"));

    let refused = connect(&t.url("/"), &[]).await.expect_err("refused");
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(refused.body["error"], "journal_full");
    assert_eq!(backend.count(), 1, "refused before dialing the backend");
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="journal_full",status="503"}"#), 1.0);

    std::fs::remove_file(filler).unwrap();
    expect_padded(&mut ws, 11, 10 + FLOOD).await;
    let m = wait_metric(t.admin_addr, "tether_journal_disk_full", 0.0).await;
    assert_eq!(metric(&m, "tether_journal_appends_total"), (10 + FLOOD) as f64);
    assert_eq!(http_get(t.admin_addr, "/readyz").await, (200, "ready\n".to_string()));
    // The same process takes new sessions again.
    let (mut ws2, _, b2) = attach(&mut backend, &t.url("/")).await;
    b2.stream(1, 3);
    expect_stream(&mut ws2, 1, 3).await;
    b.stream(11 + FLOOD, 11 + FLOOD);
    assert_eq!(data(&mut ws).await, (11 + FLOOD, format!("m{}", 11 + FLOOD)));
    t.stop().await;
}

/// While the disk is full, a purge deletes the purged session's journal
/// files outright (a retention trim is itself a write, which cannot land),
/// and that space is enough for RocksDB to resume: the held frames of the
/// other session arrive, with no operator action.
#[tokio::test]
async fn a_purge_frees_space_while_the_disk_is_full() {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let (mut backend, t) = setup_with(|c| {
        c.journal.data_dir = fs.path().join("journal");
        c.journal.memtable_bytes = MEMTABLE.parse().unwrap();
        // The second retired session evicts (purges) the first.
        c.limits.max_retained_sessions = 1;
    })
    .await;
    let (mut kept, _, b) = attach(&mut backend, &t.url("/")).await;
    // 24 MiB of one session: RocksDB flushes and compacts it into files
    // that hold nothing else.
    const BIG: u64 = 6_000;
    let (mut old, _, a) = attach(&mut backend, &t.url("/")).await;
    a.stream_padded(1, BIG, PAD);
    expect_padded(&mut old, 1, BIG).await;
    a.close(1000, "done");
    assert_eq!(control(&mut old).await["type"], "end");

    let _filler = fs.fill();
    b.stream_padded(1, FLOOD, PAD);
    wait_metric(t.admin_addr, "tether_journal_disk_full", 1.0).await;
    // The kept session retires too: one retired session too many, so the
    // janitor evicts the oldest, which frees the space.
    b.close(1000, "done");
    expect_padded(&mut kept, 1, FLOOD).await;
    assert_eq!(control(&mut kept).await["type"], "end");
    let m = wait_metric(t.admin_addr, "tether_journal_disk_full", 0.0).await;
    assert!(metric(&m, "tether_journal_reclaimed_files_total") >= 1.0, "files deleted while full");
    assert_eq!(metric(&m, r#"tether_trimmed_frames_total{reason="session_evicted"}"#), BIG as f64);
    t.stop().await;
}

/// A drain does not wait for space: it ends, the process exits non-zero
/// (what it held was never acknowledged), and the restart, with only
/// 256 KiB freed, replays every journaled frame as `restarted`.
#[tokio::test]
async fn shutdown_with_a_full_disk_exits_and_the_restart_replays() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let dir = fs.path().join("journal");
    let mut backend = Backend::start().await;
    let env = [("TETHER_JOURNAL_MEMTABLE_BYTES", MEMTABLE)];
    let p = TetherProcess::start(&backend.url(), &dir, &env).await;
    let (mut ws, token, b) = attach(&mut backend, &p.url("/")).await;
    b.stream(1, 50);
    expect_stream(&mut ws, 1, 50).await;
    let filler = fs.fill();
    b.stream_padded(51, 50 + FLOOD, PAD);
    let m = wait_metric(p.admin_addr, "tether_journal_disk_full", 1.0).await;
    let committed = metric(&m, "tether_journal_appends_total") as u64;
    let logs = p.logs.clone();
    let exited = tokio::spawn(p.signal("-TERM"));
    let (c, last) = frames_until_control(&mut ws, 51).await;
    assert_eq!(c, json!({"type": "draining"}));
    assert!(last <= committed, "delivered {last}, committed {committed}: nothing unjournaled");
    assert_eq!(close_code(&mut ws).await, 1012);
    let status = within("tether to exit", exited).await.unwrap();
    assert_eq!(status.code(), Some(1), "exits non-zero so the supervisor restarts it");
    let logs = logs.lock().unwrap().join("\n");
    assert!(logs.contains("journal failed; tether drains and exits so that it is restarted"), "{logs}");

    // Free only 256 KiB: the restart must not need RocksDB's recovery
    // reserve (nor flush the recovered WAL into new files).
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(len - 256 * 1024).unwrap();
    let p = TetherProcess::start(&backend.url(), &dir, &env).await;
    let mut ws = resume(&p.url("/"), &token, 0).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted");
    // Everything journaled comes back: at least what the client was sent.
    let to = w["replay"]["to"].as_u64().unwrap();
    assert_eq!(w["replay"]["from"], 1);
    assert!(to >= last, "replay to {to}, delivered {last}");
    expect_stream(&mut ws, 1, 50).await;
    expect_padded(&mut ws, 51, to).await;
    let b2 = backend.next_conn().await;
    b2.stream(to + 1, to + 1);
    assert_eq!(data(&mut ws).await, (to + 1, format!("m{}", to + 1)), "the numbering continues after the replay");
    assert_eq!(p.signal("-TERM").await.code(), Some(0));
}
