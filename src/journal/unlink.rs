//! Deleting dead frame log files off the journal writer's thread.
//!
//! Deleting a file that was written seconds ago waits for the writeback
//! of its pages (the kernel frees them with the inode): about 50 ms for a
//! 64 MiB file on the benchmark machine. Done by the writer, that stopped
//! every session's appends, so every session's stream, once per janitor
//! pass while sessions expired (docs/BENCHMARKS.md, "Deleting files off the
//! writer"). The writer hands such files to one thread of their own
//! instead; what the writer must delete at once (a reclaim on a full disk,
//! recovery) it still deletes itself. A file's bytes count as on disk until
//! it is gone.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// How a dead file is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unlink {
    /// Before the call returns: its space is free once it does.
    Now,
    /// By the unlink thread, soon.
    Background,
}

/// A file no pointer names any more, on its way out.
pub(super) struct Doomed {
    pub(super) path: PathBuf,
    /// The open handle: the last close frees the inode, so it is dropped
    /// after the unlink, on the same thread.
    pub(super) file: Arc<File>,
    pub(super) len: u64,
}

enum Job {
    Delete(Doomed),
    /// Answered once every deletion queued before it is done.
    Drain(mpsc::Sender<()>),
}

/// The unlink thread's handle. Dropping it finishes the queued deletions.
pub(super) struct Unlinker {
    /// `None` without a thread.
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The frame log's byte count, lowered as files go.
    disk: Arc<AtomicU64>,
}

impl Unlinker {
    /// Starts the thread; `disk` is the frame log's byte count. Without a
    /// thread (the system refused one), deletions happen on the caller's.
    pub(super) fn start(disk: Arc<AtomicU64>) -> Unlinker {
        let (tx, rx) = mpsc::channel::<Job>();
        let counter = disk.clone();
        let thread = std::thread::Builder::new().name("tether-unlink".into()).spawn(move || {
            for job in rx {
                match job {
                    Job::Delete(d) => delete(d, &counter),
                    Job::Drain(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        let (tx, thread) = match thread {
            Ok(t) => (Some(tx), Some(t)),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to delete journal files; the writer deletes them");
                (None, None)
            }
        };
        Unlinker { tx, thread, disk }
    }

    /// Deletes `d` as `how` says.
    pub(super) fn delete(&self, d: Doomed, how: Unlink) {
        if how == Unlink::Background {
            if let Some(tx) = &self.tx {
                if let Err(mpsc::SendError(Job::Delete(d))) = tx.send(Job::Delete(d)) {
                    delete(d, &self.disk);
                }
                return;
            }
        }
        delete(d, &self.disk);
    }

    /// Waits until every deletion queued so far is done.
    pub(super) fn drain(&self) {
        let (done, wait) = mpsc::channel();
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(Job::Drain(done)).is_ok());
        if sent {
            let _ = wait.recv();
        }
    }
}

impl Drop for Unlinker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Unlinks, closes, and takes the bytes off `disk`. A file that cannot be
/// deleted stays on disk and counted; recovery deletes it at the next
/// start (nothing points into it).
fn delete(d: Doomed, disk: &AtomicU64) {
    match std::fs::remove_file(&d.path) {
        Ok(()) => {
            drop(d.file);
            disk.fetch_sub(d.len, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(path = %d.path.display(), error = %e, "could not delete a frame log file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_deletions_are_done_after_a_drain() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(AtomicU64::new(30));
        let u = Unlinker::start(disk.clone());
        let doomed = |name: &str, len: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; len as usize]).unwrap();
            Doomed { file: Arc::new(File::open(&path).unwrap()), path, len }
        };
        u.delete(doomed("a", 10), Unlink::Now);
        assert!(!dir.path().join("a").exists());
        assert_eq!(disk.load(Ordering::Relaxed), 20);
        u.delete(doomed("b", 20), Unlink::Background);
        u.drain();
        assert!(!dir.path().join("b").exists());
        assert_eq!(disk.load(Ordering::Relaxed), 0);
        // A file already gone is not counted off twice.
        let c = doomed("c", 5);
        std::fs::remove_file(&c.path).unwrap();
        disk.store(5, Ordering::Relaxed);
        u.delete(c, Unlink::Background);
        drop(u);
        assert_eq!(disk.load(Ordering::Relaxed), 5);
    }
}
