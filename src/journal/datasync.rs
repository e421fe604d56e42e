//! `journal.sync = "always"`: the frame log's fdatasync on its own thread,
//! so that it runs while the writer writes the batch's pointers to the WAL
//! with `sync`. One after the other, each commit waited for two of the
//! filesystem's journal commits in a row; together they overlap (the
//! `sync = always` p50 at light load in docs/BENCHMARKS.md).
//!
//! A pointer may then reach the disk before the bytes it points to. Only a
//! power loss (not a crash: the page cache keeps both) can leave it so, and
//! only for a batch that was never acknowledged, as the writer waits for
//! both before it tells any session. Recovery ends a session's journal at
//! such a pointer (`recover`): nothing after it was acknowledged either.

use std::fs::File;
use std::io;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::writer::AbortOnPanic;

/// The fdatasync thread. Each [`DataSync::start`] must be followed by one
/// [`DataSync::wait`] before the next.
pub(super) struct DataSync {
    files: Option<mpsc::Sender<Vec<Arc<File>>>>,
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DataSync {
    /// Starts the `tether-datasync` thread.
    pub(super) fn spawn() -> DataSync {
        let (files, todo) = mpsc::channel::<Vec<Arc<File>>>();
        let (tell, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tether-datasync".into())
            .spawn(move || {
                let _fail_fast = AbortOnPanic;
                for batch in todo {
                    if tell.send(batch.iter().try_for_each(|f| f.sync_data())).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn datasync thread");
        DataSync { files: Some(files), done, thread: Some(thread) }
    }

    /// Starts fdatasyncing `files`, in order.
    pub(super) fn start(&self, files: Vec<Arc<File>>) {
        self.files.as_ref().expect("datasync running").send(files).expect("datasync thread alive");
    }

    /// Waits for the fdatasyncs [`DataSync::start`] began.
    pub(super) fn wait(&self) -> io::Result<()> {
        self.done.recv().expect("datasync thread alive")
    }
}

impl Drop for DataSync {
    fn drop(&mut self) {
        drop(self.files.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Files are synced in batches, each waited for; the thread ends with
    /// its owner.
    #[test]
    fn syncs_each_batch_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = File::create(dir.path().join("a")).unwrap();
        f.write_all(b"x").unwrap();
        let f = Arc::new(f);
        let d = DataSync::spawn();
        for _ in 0..3 {
            d.start(vec![f.clone(), f.clone()]);
            d.wait().unwrap();
        }
        drop(d);
        assert_eq!(Arc::strong_count(&f), 1, "the thread let go of every file");
    }
}
