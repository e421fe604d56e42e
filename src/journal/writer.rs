//! The one journal writer: drains the queue shared by every session, commits
//! what it drained as one RocksDB write batch (group commit), then tells each
//! session how far its frames are durable.
//!
//! It runs on its own OS thread so RocksDB writes and fsyncs never block an
//! async worker. Nothing after a failed write is acknowledged, so no frame
//! reaches a client without being in the journal. Failures come in three
//! kinds:
//! - transient (busy, try again, timed out): retried with backoff;
//! - a full disk: RocksDB refuses every write until its `SstFileManager`
//!   sees enough free space and resumes it (`space`), so the writer holds
//!   the batch and retries it until then, or until tether shuts down;
//! - anything else (an I/O error such as EMFILE, corruption) leaves RocksDB
//!   stopped until it is reopened: the writer marks the journal failed and
//!   stops; the server drains and exits non-zero, and the restart replays
//!   the WAL: everything acknowledged is there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::{ErrorKind, WriteBatch, WriteOptions, DB};
use tokio::sync::{mpsc, watch};

use super::chunk::chunk_key;
use super::space;
use super::{upmark, Op, CF_FRAMES, CF_REQUESTS, CF_SESSIONS, CF_UPSTREAM};
use crate::config::{JournalConfig, SyncMode};
use crate::metrics::{Fsync, Metrics};

/// How the writer is doing, as the rest of tether sees it, and what it is
/// told: handles shared with every `Journal`.
#[derive(Clone)]
pub(super) struct Health {
    /// False while a failed write is being retried.
    pub(super) healthy: Arc<AtomicBool>,
    /// True while the write being retried failed for want of disk space.
    pub(super) disk_full: Arc<AtomicBool>,
    /// Set by a drain: a full disk is not waited out any longer.
    pub(super) give_up: Arc<AtomicBool>,
    /// Set once when the journal has failed for good.
    pub(super) failed: Arc<watch::Sender<Option<Arc<str>>>>,
}

impl Health {
    /// Healthy, not failed.
    pub(super) fn new() -> Health {
        Health {
            healthy: Arc::new(AtomicBool::new(true)),
            disk_full: Arc::new(AtomicBool::new(false)),
            give_up: Arc::new(AtomicBool::new(false)),
            failed: Arc::new(watch::Sender::new(None)),
        }
    }
}

/// Whether a failed write may succeed if tried again in this process: only
/// statuses RocksDB returns without recording a background error.
fn is_transient(e: &rocksdb::Error) -> bool {
    matches!(e.kind(), ErrorKind::Busy | ErrorKind::TryAgain | ErrorKind::TimedOut | ErrorKind::Incomplete)
}

pub(super) fn spawn(
    db: Arc<DB>,
    rx: mpsc::Receiver<Op>,
    config: JournalConfig,
    health: Health,
    metrics: Arc<Metrics>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("tether-journal".into())
        .spawn(move || {
            precise_sleeps();
            let dirty = Arc::new(AtomicBool::new(false));
            let syncer = (config.sync == SyncMode::Interval)
                .then(|| Syncer::spawn(db.clone(), config.sync_interval, dirty.clone(), metrics.clone()));
            Writer { db, config, health, metrics, dirty }.run(rx);
            if let Some(s) = syncer {
                s.stop();
            }
        })
        .expect("spawn journal writer thread")
}

struct Writer {
    db: Arc<DB>,
    config: JournalConfig,
    health: Health,
    metrics: Arc<Metrics>,
    /// Written since the syncer's last fsync (`interval` mode).
    dirty: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let _fail_fast = AbortOnPanic;
        let mut ops: Vec<Op> = Vec::with_capacity(self.config.max_batch);
        // A write lands in one memtable whatever its size, and after a full
        // disk RocksDB must flush the memtables before writes resume: a
        // bounded batch keeps that near `memtable_bytes`, the free space it
        // waits for.
        let max_bytes = self.config.memtable_bytes / 8;
        let max_ops = self.config.max_batch;
        let delay = self.config.commit_delay;
        let mut last_commit: Option<Instant> = None;
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.payload_bytes();
            ops.push(first);
            fill(&mut rx, &mut ops, &mut bytes, max_ops, max_bytes);
            // Group commit under light load: frames that arrive one at a
            // time would each cost this thread a wake-up and a WAL write
            // (waiting saves 12 % of tether's CPU per message at 1,000
            // sessions × 20 msg/s). While they keep coming (the last commit ended
            // less than `commit_delay` ago) and the batch is small, wait for
            // more to join it; a sender then finds this thread awake and
            // wakes no one. A busy session's chunks hold many frames, so
            // saturation never waits.
            // A batch without frames (upstream marks, records) does not
            // wait: a client's window of unacked messages waits on it, and
            // the delay would be added to every `up_ack`.
            let frames = ops.iter().map(Op::frames).sum::<usize>();
            let steady = last_commit.is_some_and(|t| t.elapsed() < delay);
            if steady && ops.len() < FEW && frames > 0 && frames < FEW {
                std::thread::sleep(delay);
                fill(&mut rx, &mut ops, &mut bytes, max_ops, max_bytes);
            }
            let result = self.commit(&mut ops);
            last_commit = Some(Instant::now());
            match result {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => return self.fail(&e),
            }
        }
        sync_wal(&self.db, &self.metrics, Fsync::Drain);
    }

    /// The journal cannot be written in this process any more: nothing more
    /// is acknowledged, and dropping the queue fails every later operation.
    fn fail(&self, e: &rocksdb::Error) {
        tracing::error!(error = %e, "journal failed; tether drains and exits so that it is restarted");
        let reason: Arc<str> = e.to_string().into();
        self.health.failed.send_replace(Some(reason));
    }

    /// Writes `ops` (retrying transient failures and a full disk), then
    /// acknowledges them. Returns true if one of them closes the journal, or
    /// the error that failed it.
    fn commit(&mut self, ops: &mut Vec<Op>) -> Result<bool, rocksdb::Error> {
        let mut backoff = Duration::from_millis(10);
        while let Err(e) = self.write(ops) {
            self.metrics.journal_write_errors.inc();
            let full = space::is_full_disk(&e);
            // At shutdown a full disk is not waited for: what is held was
            // never acknowledged, so no client has seen it.
            if !(is_transient(&e) || full && !self.health.give_up.load(Ordering::Relaxed)) {
                return Err(e);
            }
            self.health.disk_full.store(full, Ordering::Relaxed);
            self.metrics.journal_disk_full.set(i64::from(full));
            if self.health.healthy.swap(false, Ordering::Relaxed) {
                tracing::error!(error = %e, "journal write failed; retrying, nothing is forwarded until it succeeds");
            }
            std::thread::sleep(backoff);
            // RocksDB resumes a full disk within 5 s of space returning;
            // a quarter-second retry adds little to that.
            let cap = if full { Duration::from_millis(250) } else { Duration::from_secs(1) };
            backoff = (backoff * 2).min(cap);
        }
        if !self.health.healthy.swap(true, Ordering::Relaxed) {
            self.health.disk_full.store(false, Ordering::Relaxed);
            self.metrics.journal_disk_full.set(0);
            tracing::info!("journal writes succeed again");
        }
        self.metrics.journal_batch_ops.observe(ops.len() as f64);
        let mut syncs = Vec::new();
        let mut closing = false;
        // One wake-up per session per commit: consecutive chunks of the same
        // session (one busy backend) only advance `committed` once.
        let mut wake: Option<(Arc<watch::Sender<u64>>, u64)> = None;
        for op in ops.drain(..) {
            match op {
                Op::Append { first, frames: n, committed, at, .. } => {
                    self.metrics.journal_appends.inc_by(u64::from(n));
                    let waited = at.elapsed().as_secs_f64();
                    for _ in 0..n {
                        self.metrics.journal_append_seconds.observe(waited);
                    }
                    let last = first + u64::from(n) - 1;
                    match &mut wake {
                        Some((to, seq)) if Arc::ptr_eq(to, &committed) => *seq = last,
                        _ => {
                            if let Some((to, seq)) = wake.replace((committed, last)) {
                                advance(&to, seq);
                            }
                        }
                    }
                }
                Op::Trim { .. } => self.metrics.journal_trims.inc(),
                Op::PutUp { mark, acked, .. } => advance(&acked, mark.written),
                Op::PutMeta { written: Some(written), .. } => {
                    let _ = written.send(());
                }
                Op::Close { done, .. } => {
                    closing = true;
                    syncs.push(done);
                }
                _ => {}
            }
        }
        if let Some((to, seq)) = wake {
            advance(&to, seq);
        }
        if !syncs.is_empty() {
            sync_wal(&self.db, &self.metrics, Fsync::Drain);
            for done in syncs {
                let _ = done.send(());
            }
        }
        Ok(closing)
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), rocksdb::Error> {
        let frames = self.db.cf_handle(CF_FRAMES).expect("frames cf");
        let sessions = self.db.cf_handle(CF_SESSIONS).expect("sessions cf");
        let upstream = self.db.cf_handle(CF_UPSTREAM).expect("upstream cf");
        let requests = self.db.cf_handle(CF_REQUESTS).expect("requests cf");
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Append { session, first, chunk, .. } => {
                    batch.put_cf(frames, chunk_key(session, *first), chunk);
                }
                Op::PutMeta { session, meta, .. } => {
                    batch.put_cf(sessions, session.0, serde_json::to_vec(meta).expect("meta serializes"));
                }
                Op::Trim { session, upto, meta } => {
                    // Deletes every chunk starting at or before `upto`: exactly the
                    // frames up to it, as no chunk straddles a trim (see `chunk`).
                    batch.delete_range_cf(frames, chunk_key(session, 0), chunk_key(session, upto.saturating_add(1)));
                    batch.put_cf(sessions, session.0, serde_json::to_vec(meta).expect("meta serializes"));
                }
                Op::Purge { session } => {
                    batch.delete_range_cf(frames, chunk_key(session, 0), chunk_key(session, u64::MAX));
                    batch.delete_cf(sessions, session.0);
                    batch.delete_cf(upstream, session.0);
                    batch.delete_cf(requests, session.0);
                }
                Op::PutRequest { session, request } => batch.put_cf(requests, session.0, request),
                Op::PutUp { session, mark, .. } => batch.put_cf(upstream, session.0, mark.encode()),
                Op::Close { clean: true, .. } => upmark::put_clean_stop(&self.db, &mut batch),
                Op::Close { clean: false, .. } => {}
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.config.sync == SyncMode::Always);
        self.db.write_opt(batch, &wo)?;
        match self.config.sync {
            SyncMode::Always => self.metrics.fsync(Fsync::Batch),
            SyncMode::Interval => self.dirty.store(true, Ordering::Release),
            SyncMode::None => {}
        }
        Ok(())
    }
}

/// Linux lets a thread's timed sleeps overrun by its timer slack, 50 µs by
/// default: a fifth of the 250 µs `commit_delay`, added to every delayed
/// frame. 1 µs makes the delay what the config says.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes an integer and only affects this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
}

/// A batch with fewer operations and frames than this is worth delaying
/// for company (`journal.commit_delay`).
const FEW: usize = 8;

/// Adds what is already queued to `ops`, up to `max_ops` operations or
/// `max_bytes` of frames.
fn fill(rx: &mut mpsc::Receiver<Op>, ops: &mut Vec<Op>, bytes: &mut usize, max_ops: usize, max_bytes: usize) {
    while ops.len() < max_ops && *bytes < max_bytes {
        match rx.try_recv() {
            Ok(op) => {
                *bytes += op.payload_bytes();
                ops.push(op);
            }
            Err(_) => break,
        }
    }
}

/// Tells a session's pumps that its frames up to `seq` are durable.
fn advance(committed: &watch::Sender<u64>, seq: u64) {
    committed.send_if_modified(|c| {
        let newer = seq > *c;
        if newer {
            *c = seq;
        }
        newer
    });
}

/// `sync = interval`: fsyncs the WAL every `sync_interval` if anything was
/// written since the last time. It has its own thread so the writer keeps
/// committing while an fsync runs: on the writer thread, every frame that
/// arrived during an fsync waited for it (p99 of 0.8–7.8 ms at 16 KiB in
/// docs/BENCHMARKS.md). An fsync covers everything written before it started,
/// so a power loss still loses at most about one interval of writes.
struct Syncer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    fn spawn(db: Arc<DB>, interval: Duration, dirty: Arc<AtomicBool>, metrics: Arc<Metrics>) -> Syncer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tether-wal-sync".into())
            .spawn(move || {
                let _fail_fast = AbortOnPanic;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    if dirty.swap(false, Ordering::AcqRel) && !sync_wal(&db, &metrics, Fsync::Interval) {
                        // Tried again at the next interval.
                        dirty.store(true, Ordering::Release);
                    }
                }
            })
            .expect("spawn WAL sync thread");
        Syncer { stop, thread }
    }

    /// Stops the thread, once the writer has made its own final fsync.
    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Fsyncs the WAL; false (counted and logged) if that failed.
fn sync_wal(db: &DB, metrics: &Metrics, trigger: Fsync) -> bool {
    match db.flush_wal(true) {
        Ok(()) => {
            metrics.fsync(trigger);
            true
        }
        Err(e) => {
            metrics.journal_write_errors.inc();
            tracing::error!(error = %e, "journal fsync failed");
            false
        }
    }
}

/// Without its writer tether can deliver nothing, and would stall silently
/// (nor may the WAL silently stop being synced): a panic here ends the process so the supervisor restarts it, and every
/// session resumes from the intact journal as `restarted`.
struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tether: the journal writer panicked; aborting so the process is restarted");
            std::process::abort();
        }
    }
}
