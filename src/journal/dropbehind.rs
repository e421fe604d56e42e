//! Drop-behind: the frame log keeps only its recent tail in the page cache.
//!
//! A stream journals hundreds of MB/s, and left to itself the kernel keeps
//! every byte of it cached until memory runs short. That costs more than
//! memory: each page of a new file is memory the kernel must find, and on a
//! virtual machine memory the guest has not touched lately (after it was
//! reported free to the host) faults to the host on first touch. Measured
//! here (docs/BENCHMARKS.md, "Drop-behind"): writing 8 GiB in 1 MiB writes
//! took 15–21 s of system CPU left to the kernel, 1.8 s when written-back
//! pages 128 MiB behind the write point were dropped, so the kernel reused
//! the same pages; 44 % of tether's CPU at 512 B × 100 sessions was that
//! copy. In a container, the page cache also counts against the memory
//! limit.
//!
//! So the appender starts the write-back of every few MiB it writes
//! (`sync_file_range`, asynchronous: it does not wait for the disk and
//! promises nothing about durability, which stays `journal.sync`'s job) and
//! drops from the cache what lies more than `keep` bytes behind the write
//! point (`posix_fadvise(DONTNEED)`, which leaves dirty pages and pages
//! still being written alone). Replays of recent frames still come from
//! memory; a client further behind reads from the disk.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Weak};

/// Start the write-back after this many bytes written.
const KICK_BYTES: u64 = 8 << 20;

/// A written range of one log file, still in the page cache.
struct Region {
    /// Weak: a deleted file's space must not stay held by its descriptor.
    file: Weak<File>,
    from: u64,
    to: u64,
    kicked: bool,
}

/// The ranges written and not yet dropped, oldest first.
pub(crate) struct DropBehind {
    keep: u64,
    regions: VecDeque<Region>,
    /// Bytes in `regions`.
    held: u64,
    /// Bytes in `regions` whose write-back was not started yet.
    unkicked: u64,
}

impl DropBehind {
    /// Keeps the last `keep` bytes written in the page cache; `None` leaves
    /// the cache to the kernel.
    pub(crate) fn new(keep: Option<u64>) -> DropBehind {
        DropBehind { keep: keep.unwrap_or(u64::MAX), regions: VecDeque::new(), held: 0, unkicked: 0 }
    }

    /// Records that `file` was written from `from` to `to`, starts the
    /// write-back of what was written since the last start, and drops what
    /// is now more than `keep` bytes behind.
    pub(crate) fn written(&mut self, file: &Arc<File>, from: u64, to: u64) {
        if self.keep == u64::MAX || to <= from {
            return;
        }
        match self.regions.back_mut() {
            Some(last) if !last.kicked && last.to == from && Weak::as_ptr(&last.file) == Arc::as_ptr(file) => {
                last.to = to
            }
            _ => self.regions.push_back(Region { file: Arc::downgrade(file), from, to, kicked: false }),
        }
        self.held += to - from;
        self.unkicked += to - from;
        if self.unkicked >= KICK_BYTES {
            for r in self.regions.iter_mut().rev().take_while(|r| !r.kicked) {
                if let Some(file) = r.file.upgrade() {
                    start_writeback(&file, r.from, r.to);
                }
                r.kicked = true;
            }
            self.unkicked = 0;
        }
        while let Some(first) = self.regions.front() {
            let len = first.to - first.from;
            if !first.kicked || self.held - len < self.keep {
                break;
            }
            if let Some(file) = first.file.upgrade() {
                drop_cached(&file, first.from, first.to);
            }
            self.held -= len;
            self.regions.pop_front();
        }
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor the `File` keeps open. Its
    // result is advice only: on an error the kernel writes back later.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(target_os = "linux")]
fn drop_cached(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: as above; advice only, pages still dirty stay cached.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            (to - from) as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) {}

#[cfg(not(target_os = "linux"))]
fn drop_cached(_: &File, _: u64, _: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_drops_what_is_further_behind() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(File::create(dir.path().join("a")).unwrap());
        let b = Arc::new(File::create(dir.path().join("b")).unwrap());
        let mut d = DropBehind::new(Some(KICK_BYTES));
        // Contiguous writes to one file merge until they are kicked.
        d.written(&a, 0, 4 << 20);
        d.written(&a, 4 << 20, 6 << 20);
        assert_eq!((d.regions.len(), d.held, d.unkicked), (1, 6 << 20, 6 << 20));
        // The kick starts the write-back; nothing is dropped yet: 8 MiB held
        // is within `keep`.
        d.written(&a, 6 << 20, 8 << 20);
        assert_eq!((d.regions.len(), d.held, d.unkicked), (1, 8 << 20, 0));
        // A new file is a new region; once it is kicked, the first region is
        // more than `keep` behind and goes.
        d.written(&b, 0, 8 << 20);
        assert_eq!((d.regions.len(), d.held), (1, 8 << 20));
        assert_eq!(d.regions[0].file.as_ptr(), Arc::as_ptr(&b));
        // A deleted file is not kept open.
        drop(b);
        assert!(d.regions[0].file.upgrade().is_none());
        // Leaving the cache to the kernel holds nothing.
        let mut off = DropBehind::new(None);
        off.written(&a, 0, 64 << 20);
        assert_eq!((off.regions.len(), off.held), (0, 0));
    }
}
