//! The one journal writer: drains the queue shared by every session, appends
//! the chunks it drained to the frame log, commits their pointers and every
//! other operation as one RocksDB write batch (group commit), then tells
//! each session how far its frames are durable.
//!
//! It runs on its own OS thread so file writes, RocksDB writes and fsyncs
//! never block an async worker. Nothing after a failed write is
//! acknowledged, so no frame reaches a client without being in the journal.
//! Failures come in three kinds:
//! - transient (busy, try again, timed out): retried with backoff;
//! - a full disk: the frame log's write fails with ENOSPC, or RocksDB
//!   refuses every write until its `SstFileManager` sees enough free space
//!   and resumes it (`space`); the writer holds the batch and retries it
//!   until then (trims and purges meanwhile delete whole log files, see
//!   `Journal::reclaim`), or until tether shuts down;
//! - anything else (an I/O error such as EMFILE, corruption) leaves the
//!   journal stopped until it is reopened: the writer marks it failed and
//!   stops; the server drains and exits non-zero, and the restart replays
//!   the WAL: everything acknowledged is there.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rocksdb::{ErrorKind, WriteBatch, WriteOptions, DB};
use tokio::sync::{mpsc, watch};

use super::chunk::chunk_key;
use super::cleaner::Cleaner;
use super::datasync::DataSync;
use super::framelog::{Appender, FrameLog, Pointer, Record};
use super::liveness::{Appended, Liveness};
use super::syncer::{sync_all, Syncer};
use super::unlink::Unlink;
use super::{space, upmark, JournalError, Op, CF_FRAMES, CF_REQUESTS, CF_SESSIONS, CF_UPSTREAM};
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

/// A failed write, of the frame log or of RocksDB.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("frame log: {0}")]
    Log(#[from] std::io::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl WriteError {
    /// Whether the write may succeed if tried again in this process: only
    /// statuses RocksDB returns without recording a background error.
    fn is_transient(&self) -> bool {
        match self {
            WriteError::Rocks(e) => {
                matches!(e.kind(), ErrorKind::Busy | ErrorKind::TryAgain | ErrorKind::TimedOut | ErrorKind::Incomplete)
            }
            WriteError::Log(e) => e.kind() == std::io::ErrorKind::Interrupted,
            WriteError::Journal(_) => false,
        }
    }

    /// Whether it failed for want of disk space, which is waited out.
    fn is_full_disk(&self) -> bool {
        match self {
            WriteError::Rocks(e) => space::is_full_disk(e),
            WriteError::Log(e) => matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
            WriteError::Journal(_) => false,
        }
    }
}

/// What the writer thread works with.
pub(super) struct Parts {
    pub(super) db: Arc<DB>,
    pub(super) log: Arc<FrameLog>,
    pub(super) appender: Appender,
    pub(super) live: Arc<Mutex<Liveness>>,
}

pub(super) fn spawn(
    parts: Parts,
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
            let Parts { db, log, appender, live } = parts;
            let syncer = (config.sync == SyncMode::Interval)
                .then(|| Syncer::spawn(db.clone(), log.clone(), config.sync_interval, dirty.clone(), metrics.clone()));
            let datasync = (config.sync == SyncMode::Always).then(DataSync::spawn);
            Writer { db, log, appender, live, config, health, metrics, dirty, datasync }.run(rx);
            if let Some(s) = syncer {
                s.stop();
            }
        })
        .expect("spawn journal writer thread")
}

struct Writer {
    db: Arc<DB>,
    log: Arc<FrameLog>,
    appender: Appender,
    live: Arc<Mutex<Liveness>>,
    config: JournalConfig,
    health: Health,
    metrics: Arc<Metrics>,
    /// Written since the syncer's last fsync (`interval` mode).
    dirty: Arc<AtomicBool>,
    /// `always` mode: fdatasyncs the frame log while the WAL is written.
    datasync: Option<DataSync>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let _fail_fast = AbortOnPanic;
        let mut ops: Vec<Op> = Vec::with_capacity(self.config.max_batch);
        // A write lands in one memtable whatever its size, and after a full
        // disk RocksDB must flush the memtables before writes resume: a
        // bounded batch keeps that near `memtable_bytes`, the free space it
        // waits for. (Frames go to the frame log, but a batch is also what
        // one retry holds.)
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
        sync_all(&self.db, &self.log, &self.metrics, Fsync::Drain);
    }

    /// The journal cannot be written in this process any more: nothing more
    /// is acknowledged, and dropping the queue fails every later operation.
    fn fail(&self, e: &WriteError) {
        tracing::error!(error = %e, "journal failed; tether drains and exits so that it is restarted");
        let reason: Arc<str> = e.to_string().into();
        self.health.failed.send_replace(Some(reason));
    }

    /// Runs `attempt` until it succeeds, retrying transient failures and a
    /// full disk; the error that failed the journal otherwise.
    fn retry<T>(&mut self, mut attempt: impl FnMut(&mut Self) -> Result<T, WriteError>) -> Result<T, WriteError> {
        let mut backoff = Duration::from_millis(10);
        let done = loop {
            let e = match attempt(self) {
                Ok(done) => break done,
                Err(e) => e,
            };
            self.metrics.journal_write_errors.inc();
            let full = e.is_full_disk();
            // At shutdown a full disk is not waited for: what is held was
            // never acknowledged, so no client has seen it.
            if !(e.is_transient() || full && !self.health.give_up.load(Ordering::Relaxed)) {
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
        };
        if !self.health.healthy.swap(true, Ordering::Relaxed) {
            self.health.disk_full.store(false, Ordering::Relaxed);
            self.metrics.journal_disk_full.set(0);
            tracing::info!("journal writes succeed again");
        }
        Ok(done)
    }

    /// Writes `ops` (chunks to the frame log, then everything to RocksDB),
    /// then acknowledges them. Returns true if one of them closes the
    /// journal, or the error that failed it.
    fn commit(&mut self, ops: &mut Vec<Op>) -> Result<bool, WriteError> {
        let (pointers, files) = self.retry(|w| w.append(ops))?;
        // `always`: the frame log's fdatasync and the WAL's overlap; both
        // end before anything is acknowledged (see `datasync`).
        let syncing = match &self.datasync {
            Some(d) if !files.is_empty() => {
                d.start(files.clone());
                true
            }
            _ => false,
        };
        let written = self.count(ops, &pointers).and_then(|appended| self.retry(|w| w.write(ops, &appended)));
        if syncing {
            if let Err(e) = self.datasync.as_ref().expect("started").wait() {
                self.metrics.journal_write_errors.inc();
                let e = WriteError::from(e);
                // Pages whose write-back failed may be marked clean, so a
                // second fdatasync can succeed without them: only a
                // transient failure is tried again. Anything else fails the
                // journal; nothing in the batch was acknowledged.
                if !e.is_transient() {
                    return Err(e);
                }
                self.retry(|_| files.iter().try_for_each(|f| f.sync_data()).map_err(WriteError::from))?;
            }
        }
        written?;
        {
            let mut live = self.live.lock().expect("liveness lock");
            for op in ops.iter() {
                if let Op::Purge { session } = op {
                    live.forget(session);
                }
            }
            // Not here: an unlink waits for the file's writeback.
            live.delete_dead(&self.log, Unlink::Background);
        }
        self.clean();
        self.metrics.journal_batch_ops.observe(ops.len() as f64);
        let mut syncs = Vec::new();
        let mut closing = false;
        // One wake-up per session per commit: consecutive chunks of the same
        // session (one busy backend) only advance `committed` once.
        let mut wake: Option<(Arc<watch::Sender<u64>>, u64)> = None;
        self.observe_appends(ops);
        for op in ops.drain(..) {
            match op {
                Op::Append { first, frames: n, committed, .. } => {
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
        if closing {
            // Dead files go before the journal closes, so a drained
            // tether leaves none behind.
            self.log.drain_unlinks();
        }
        if !syncs.is_empty() {
            sync_all(&self.db, &self.log, &self.metrics, Fsync::Drain);
            for done in syncs {
                let _ = done.send(());
            }
        }
        Ok(closing)
    }

    /// Counts the appends of a commit, each frame with its wait, before any
    /// session is woken (a client that has a frame sees it counted). One
    /// local histogram per commit: the shared one's atomics per frame were
    /// 1.6 % of tether's CPU on a saturated stream.
    fn observe_appends(&self, ops: &[Op]) {
        let waits = self.metrics.journal_append_seconds.local();
        for op in ops {
            if let Op::Append { frames, at, .. } = op {
                self.metrics.journal_appends.inc_by(u64::from(*frames));
                let waited = at.elapsed().as_secs_f64();
                for _ in 0..*frames {
                    waits.observe(waited);
                }
            }
        }
        waits.flush();
    }

    /// Empties one mostly dead frame log file if the log holds much more
    /// than is live ([`super::cleaner`]). Not while the disk is full: the
    /// copies need space, and a full-disk reclaim frees files without them.
    fn clean(&mut self) {
        if self.health.disk_full.load(Ordering::Relaxed) {
            return;
        }
        let mut live = self.live.lock().expect("liveness lock");
        let Some((file, before, size)) = live.to_clean(self.config.memtable_bytes as u64) else { return };
        let sync = self.config.sync == SyncMode::Always;
        let mut cleaner = Cleaner { db: &self.db, log: &self.log, appender: &mut self.appender, sync };
        match cleaner.clean(&mut live, file) {
            Ok(moved) => {
                self.metrics.journal_cleaned_bytes.inc_by(moved);
                tracing::debug!(file, live = before, size, moved, "frame log file cleaned");
            }
            Err(e) => {
                live.give_up(file);
                tracing::warn!(file, error = %e, "could not clean a frame log file; it stays until a restart");
            }
        }
    }

    /// Appends the batch's chunks to the frame log: where each went, in
    /// order, and the files written (`always` mode fdatasyncs them).
    fn append(&mut self, ops: &[Op]) -> Result<(Vec<Pointer>, Vec<Arc<File>>), WriteError> {
        let records: Vec<Record<'_>> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Append { session, first, frames, chunk, .. } => {
                    Some(Record { session, first: *first, frames: *frames, chunk })
                }
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        Ok(self.appender.append(&records)?)
    }

    /// Counts the batch's chunks live in their files, and the chunks its
    /// trims and purges delete dead (before the batch is written: a reclaim
    /// on a full disk must not count them again). The batch's chunks, in
    /// order.
    fn count(&mut self, ops: &[Op], pointers: &[Pointer]) -> Result<Vec<Appended>, WriteError> {
        let mut live = self.live.lock().expect("liveness lock");
        live.active = self.appender.active();
        let mut appended: Vec<Appended> = Vec::with_capacity(pointers.len());
        let mut next = pointers.iter();
        for op in ops {
            match op {
                Op::Append { session, first, .. } => {
                    let at = *next.next().expect("a pointer per chunk");
                    live.add(&at);
                    appended.push(Appended { session: *session, first: *first, at, dead: false });
                }
                Op::Trim { session, upto, .. } => live.trim(&self.db, session, *upto, &mut appended)?,
                Op::Purge { session } => live.trim(&self.db, session, u64::MAX, &mut appended)?,
                _ => {}
            }
        }
        Ok(appended)
    }

    fn write(&mut self, ops: &[Op], appended: &[Appended]) -> Result<(), WriteError> {
        let frames = self.db.cf_handle(CF_FRAMES).expect("frames cf");
        let sessions = self.db.cf_handle(CF_SESSIONS).expect("sessions cf");
        let upstream = self.db.cf_handle(CF_UPSTREAM).expect("upstream cf");
        let requests = self.db.cf_handle(CF_REQUESTS).expect("requests cf");
        let mut batch = WriteBatch::default();
        let mut chunks = appended.iter();
        for op in ops {
            match op {
                Op::Append { session, first, .. } => {
                    let a = chunks.next().expect("a pointer per chunk");
                    batch.put_cf(frames, chunk_key(session, *first), a.at.encode());
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

/// Without its writer tether can deliver nothing, and would stall silently
/// (nor may the WAL silently stop being synced): a panic here ends the process so the supervisor restarts it, and every
/// session resumes from the intact journal as `restarted`.
pub(super) struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tether: the journal writer panicked; aborting so the process is restarted");
            std::process::abort();
        }
    }
}
