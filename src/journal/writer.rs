//! The one journal writer: drains the queue shared by every session, commits
//! what it drained as one RocksDB write batch (group commit), then tells each
//! session how far its frames are durable.
//!
//! It runs on its own OS thread so RocksDB writes and fsyncs never block an
//! async worker. A failed write (disk full, I/O error) is retried with backoff
//! and nothing after it is acknowledged meanwhile, so no frame reaches a
//! client without being in the journal, and nothing queued is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::mpsc;

use super::{encode_payload, frame_key, Op, CF_FRAMES, CF_SESSIONS};
use crate::admin::metrics::Metrics;
use crate::config::{JournalConfig, SyncMode};

pub(super) fn spawn(
    db: Arc<DB>,
    rx: mpsc::Receiver<Op>,
    config: JournalConfig,
    healthy: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("tether-journal".into())
        .spawn(move || Writer { db, config, healthy, metrics, last_sync: Instant::now(), dirty: false }.run(rx))
        .expect("spawn journal writer thread")
}

struct Writer {
    db: Arc<DB>,
    config: JournalConfig,
    healthy: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    last_sync: Instant,
    /// Written since the last fsync (`interval` mode).
    dirty: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let _fail_fast = AbortOnPanic;
        // A tiny runtime of its own lets the thread wait for work with a
        // timeout, so `interval` syncs happen even when traffic stops.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("writer runtime");
        let mut ops: Vec<Op> = Vec::with_capacity(self.config.max_batch);
        loop {
            let first = if self.dirty {
                let wait = self.config.sync_interval.saturating_sub(self.last_sync.elapsed());
                // The timer is created inside the runtime: `timeout` needs its
                // time driver when it is constructed, not only when polled.
                match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(op) => op,
                    Err(_) => {
                        self.sync_wal();
                        continue;
                    }
                }
            } else {
                rx.blocking_recv()
            };
            let Some(first) = first else { break };
            ops.push(first);
            while ops.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            if self.commit(&mut ops) {
                return;
            }
        }
        self.sync_wal();
    }

    /// Writes `ops` (retrying until it succeeds), then acknowledges them.
    /// Returns true if one of them closes the journal.
    fn commit(&mut self, ops: &mut Vec<Op>) -> bool {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.write(ops) {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.journal_write_errors.inc();
                    if self.healthy.swap(false, Ordering::Relaxed) {
                        tracing::error!(error = %e, "journal write failed; retrying, nothing is forwarded until it succeeds");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("journal writes succeed again");
        }
        self.metrics.journal_batch_ops.observe(ops.len() as f64);
        let mut syncs = Vec::new();
        let mut closing = false;
        for op in ops.drain(..) {
            match op {
                Op::Append { seq, committed, at, .. } => {
                    self.metrics.journal_appends.inc();
                    self.metrics.journal_append_seconds.observe(at.elapsed().as_secs_f64());
                    committed.send_if_modified(|c| {
                        let newer = seq > *c;
                        if newer {
                            *c = seq;
                        }
                        newer
                    });
                }
                Op::Sync { done } => syncs.push(done),
                Op::Close { done } => {
                    closing = true;
                    syncs.push(done);
                }
                _ => {}
            }
        }
        if !syncs.is_empty() {
            self.sync_wal();
            for done in syncs {
                let _ = done.send(());
            }
        }
        closing
    }

    fn write(&mut self, ops: &[Op]) -> Result<(), rocksdb::Error> {
        let frames = self.db.cf_handle(CF_FRAMES).expect("frames cf");
        let sessions = self.db.cf_handle(CF_SESSIONS).expect("sessions cf");
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Append { session, seq, payload, .. } => {
                    batch.put_cf(frames, frame_key(session, *seq), encode_payload(payload));
                }
                Op::PutMeta { session, meta } => {
                    batch.put_cf(sessions, session.0, serde_json::to_vec(meta).expect("meta serializes"));
                }
                Op::Trim { session, upto, meta } => {
                    batch.delete_range_cf(frames, frame_key(session, 0), frame_key(session, upto.saturating_add(1)));
                    batch.put_cf(sessions, session.0, serde_json::to_vec(meta).expect("meta serializes"));
                }
                Op::Purge { session } => {
                    batch.delete_range_cf(frames, frame_key(session, 0), frame_key(session, u64::MAX));
                    batch.delete_cf(sessions, session.0);
                }
                Op::Sync { .. } | Op::Close { .. } => {}
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.config.sync == SyncMode::Always);
        self.db.write_opt(batch, &wo)?;
        if self.config.sync == SyncMode::Interval {
            self.dirty = true;
            if self.last_sync.elapsed() >= self.config.sync_interval {
                self.sync_wal();
            }
        }
        Ok(())
    }

    fn sync_wal(&mut self) {
        if let Err(e) = self.db.flush_wal(true) {
            self.metrics.journal_write_errors.inc();
            tracing::error!(error = %e, "journal fsync failed");
            return;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }
}

/// Without its writer tether can deliver nothing, and would stall silently:
/// a panic here ends the process so the supervisor restarts it, and every
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
