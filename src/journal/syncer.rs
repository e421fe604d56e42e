//! `journal.sync = "interval"`: the thread that fsyncs in the background,
//! and the fsync every mode makes when tether drains.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use rocksdb::DB;

use super::framelog::FrameLog;
use super::writer::AbortOnPanic;
use crate::metrics::{Fsync, Metrics};

/// `sync = interval`: fsyncs the frame log files written, then the WAL,
/// every `sync_interval` if anything was written since the last time. It has its own thread so the writer keeps
/// committing while an fsync runs: on the writer thread, every frame that
/// arrived during an fsync waited for it (p99 of 0.8–7.8 ms at 16 KiB in
/// docs/BENCHMARKS.md). An fsync covers everything written before it started,
/// so a power loss still loses at most about one interval of writes.
pub(super) struct Syncer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    pub(super) fn spawn(
        db: Arc<DB>,
        log: Arc<FrameLog>,
        interval: Duration,
        dirty: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Syncer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tether-wal-sync".into())
            .spawn(move || {
                let _fail_fast = AbortOnPanic;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    if dirty.swap(false, Ordering::AcqRel) && !sync_all(&db, &log, &metrics, Fsync::Interval) {
                        // Tried again at the next interval.
                        dirty.store(true, Ordering::Release);
                    }
                }
            })
            .expect("spawn WAL sync thread");
        Syncer { stop, thread }
    }

    /// Stops the thread, once the writer has made its own final fsync.
    pub(super) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Fsyncs the frame log files written since the last time, then the WAL
/// (whose pointers name them); false (counted and logged) if that failed.
pub(super) fn sync_all(db: &DB, log: &FrameLog, metrics: &Metrics, trigger: Fsync) -> bool {
    if let Err(e) = log.sync_written() {
        metrics.journal_write_errors.inc();
        tracing::error!(error = %e, "journal fsync failed (frame log)");
        return false;
    }
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
