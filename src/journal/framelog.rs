//! The frame log: the journal's payload bytes, each written once.
//!
//! Layout 3 keeps chunks of frames out of RocksDB. Inside RocksDB every
//! payload byte was written at least twice (its WAL, then the memtable
//! flush) and once more per compaction: 2.8 bytes written per payload byte
//! on a 6 s stream of 512 B frames, 3.5 on a 21 s one (issue 23). Here a
//! chunk is appended once to a log file, and RocksDB's `frames` column
//! family keeps only a [`Pointer`] to it (24 bytes), so RocksDB's WAL,
//! flushes and compactions move index entries, not payloads.
//!
//! - Files: `journal.data_dir/framelog/<id, 16 hex digits>.frames`, append
//!   only, one active at a time; the writer starts the next one once the
//!   active one holds `journal.memtable_bytes` (at least 1 MiB). A start
//!   never appends to an old file (its tail may be torn), it opens a new one.
//! - Records: `crc32c (4) ‖ chunk length (4) ‖ session id (16) ‖ first seq
//!   (8) ‖ chunk` (the chunk as [`super::chunk`] encodes it); the checksum
//!   covers everything after itself, so a read of a damaged or misplaced
//!   record is reported as corrupt, never sent.
//! - Order: a batch's records are written to the file before its pointers
//!   are committed to RocksDB, so a committed pointer always names bytes
//!   that were written; with `journal.sync = "always"` the file is fsynced
//!   before the RocksDB commit, with `interval` before the WAL's fsync.
//! - Space: a file is deleted whole once no pointer into it is left
//!   ([`super::liveness`]); trims and purges only delete pointers.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::dropbehind::DropBehind;
use super::unlink::{Doomed, Unlink, Unlinker};
use super::JournalError;
use crate::protocol::SessionId;

/// Bytes before each chunk in a log file.
pub(crate) const RECORD_HEADER: usize = 32;

/// The frame header inside a chunk (kind and length, see `chunk`).
const FRAME_HEADER: u64 = super::FRAME_HEADER as u64;

/// Where a chunk is: the value stored under its key in the `frames` column
/// family, `file (8) ‖ offset (8) ‖ chunk length (4) ‖ frames (4)`, all
/// big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pointer {
    /// The log file's id.
    pub(crate) file: u64,
    /// Offset of the record (its header) in the file.
    pub(crate) offset: u64,
    /// Length of the chunk, without the record header.
    pub(crate) len: u32,
    /// Frames in the chunk.
    pub(crate) frames: u32,
}

impl Pointer {
    /// The encoded form.
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..8].copy_from_slice(&self.file.to_be_bytes());
        v[8..16].copy_from_slice(&self.offset.to_be_bytes());
        v[16..20].copy_from_slice(&self.len.to_be_bytes());
        v[20..].copy_from_slice(&self.frames.to_be_bytes());
        v
    }

    /// Reads an encoded pointer.
    pub(crate) fn decode(v: &[u8]) -> Result<Pointer, JournalError> {
        let v: &[u8; 24] = v.try_into().map_err(|_| JournalError::Corrupt("chunk pointer length".into()))?;
        let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_be_bytes(v[i..i + 4].try_into().expect("4 bytes"));
        Ok(Pointer { file: u64_at(0), offset: u64_at(8), len: u32_at(16), frames: u32_at(20) })
    }

    /// Bytes the record takes in its file.
    pub(crate) fn record_bytes(&self) -> u64 {
        RECORD_HEADER as u64 + u64::from(self.len)
    }

    /// Payload bytes of the chunk's frames (without their headers).
    pub(crate) fn payload_bytes(&self) -> u64 {
        u64::from(self.len).saturating_sub(FRAME_HEADER * u64::from(self.frames))
    }
}

fn record_header(session: &SessionId, first: u64, chunk: &[u8]) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    // Chunks are bounded by the writer's batch limit (a fraction of
    // `journal.memtable_bytes`, at most 1 GiB) and one frame (at most 1 GiB).
    h[4..8].copy_from_slice(&(chunk.len() as u32).to_be_bytes());
    h[8..24].copy_from_slice(&session.0);
    h[24..].copy_from_slice(&first.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..]), chunk);
    h[..4].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The log files, shared by the writer (which creates, appends to and
/// deletes them) and the readers.
pub(crate) struct FrameLog {
    dir: PathBuf,
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Bytes in all log files.
    disk: Arc<AtomicU64>,
    /// Deletes dead files off the writer's thread.
    unlink: Unlinker,
    /// Files written since the last fsync, for `journal.sync = "interval"`.
    unsynced: Mutex<Vec<Arc<File>>>,
}

impl FrameLog {
    /// Opens the log directory under `data_dir` (created if missing) and
    /// every file in it. Returns the log and each file's id and length.
    pub(crate) fn open(data_dir: &Path) -> Result<(FrameLog, Vec<(u64, u64)>), JournalError> {
        let dir = data_dir.join("framelog");
        let io = |source| JournalError::Io { path: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let (mut files, mut found, mut disk) = (HashMap::new(), Vec::new(), 0);
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".frames")) else { continue };
            let Ok(id) = u64::from_str_radix(id, 16) else { continue };
            let file = File::open(entry.path()).map_err(|source| JournalError::Io { path: entry.path(), source })?;
            let len = file.metadata().map_err(|source| JournalError::Io { path: entry.path(), source })?.len();
            files.insert(id, Arc::new(file));
            found.push((id, len));
            disk += len;
        }
        found.sort_unstable();
        let disk = Arc::new(AtomicU64::new(disk));
        let unlink = Unlinker::start(disk.clone());
        let log = FrameLog { dir, files: Mutex::new(files), disk, unlink, unsynced: Mutex::new(Vec::new()) };
        Ok((log, found))
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.frames"))
    }

    /// Bytes in all log files.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.disk.load(Ordering::Relaxed)
    }

    /// Reads the chunk `at` points to, which must be `session`'s from seq
    /// `first`. `None` if its file was deleted (every pointer into it was
    /// trimmed after the caller read this one).
    pub(crate) fn read(&self, at: &Pointer, session: &SessionId, first: u64) -> Result<Option<Bytes>, JournalError> {
        let Some(file) = self.files.lock().expect("frame log lock").get(&at.file).cloned() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; at.record_bytes() as usize];
        file.read_exact_at(&mut buf, at.offset).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => JournalError::Corrupt(format!("chunk past the end of frame log {:x}", at.file)),
            _ => JournalError::Io { path: self.path(at.file), source: e },
        })?;
        let (head, chunk) = buf.split_at(RECORD_HEADER);
        if record_header(session, first, chunk) != head {
            return Err(JournalError::Corrupt(format!(
                "chunk of session {session} from seq {first} in frame log {:x} at {} does not match its checksum",
                at.file, at.offset
            )));
        }
        Ok(Some(Bytes::from(buf).slice(RECORD_HEADER..)))
    }

    /// The records in file `id`, `(offset, session, first seq, chunk
    /// length)`, read in 1 MiB blocks, up to a torn tail (which nothing
    /// points into).
    pub(crate) fn scan(&self, id: u64) -> Result<Vec<(u64, SessionId, u64, u32)>, JournalError> {
        let Some(file) = self.files.lock().expect("frame log lock").get(&id).cloned() else {
            return Ok(Vec::new());
        };
        let io = |source| JournalError::Io { path: self.path(id), source };
        let size = file.metadata().map_err(io)?.len();
        let mut out = Vec::new();
        let mut block = vec![0u8; 1 << 20];
        let (mut at, mut block_at, mut filled) = (0u64, 0u64, 0usize);
        while at + RECORD_HEADER as u64 <= size {
            // The header must be in the block; read the next one from `at`.
            if at < block_at || at + RECORD_HEADER as u64 > block_at + filled as u64 {
                let want = block.len().min((size - at) as usize);
                file.read_exact_at(&mut block[..want], at).map_err(io)?;
                (block_at, filled) = (at, want);
            }
            let h = &block[(at - block_at) as usize..][..RECORD_HEADER];
            let len = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
            let session = SessionId(h[8..24].try_into().expect("16 bytes"));
            let first = u64::from_be_bytes(h[24..].try_into().expect("8 bytes"));
            let end = at + RECORD_HEADER as u64 + u64::from(len);
            if end > size {
                break;
            }
            out.push((at, session, first, len));
            at = end;
        }
        Ok(out)
    }

    /// Deletes a file no pointer names any more, as `how` says. Readers no
    /// longer find it from now on.
    pub(crate) fn remove(&self, id: u64, how: Unlink) {
        let Some(file) = self.files.lock().expect("frame log lock").remove(&id) else { return };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.unlink.delete(Doomed { path: self.path(id), file, len }, how);
    }

    /// Waits for the deletions handed to the unlink thread so far.
    pub(crate) fn drain_unlinks(&self) {
        self.unlink.drain();
    }

    /// Fsyncs the files written since the last call (`interval` mode and
    /// a drain); on an error, what was not synced is tried again next time.
    pub(crate) fn sync_written(&self) -> std::io::Result<()> {
        let files = std::mem::take(&mut *self.unsynced.lock().expect("frame log lock"));
        for (i, f) in files.iter().enumerate() {
            if let Err(e) = f.sync_data() {
                self.unsynced.lock().expect("frame log lock").extend(files[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }
}

/// One chunk to append: its session, first seq and bytes.
pub(crate) struct Record<'a> {
    /// The session.
    pub(crate) session: &'a SessionId,
    /// Its first seq.
    pub(crate) first: u64,
    /// Frames in it.
    pub(crate) frames: u32,
    /// The chunk.
    pub(crate) chunk: &'a [u8],
}

/// The writer's end of the log: the active file.
pub(crate) struct Appender {
    log: Arc<FrameLog>,
    id: u64,
    file: Arc<File>,
    len: u64,
    max: u64,
    /// Remember the files written for [`FrameLog::sync_written`]
    /// (`journal.sync = "interval"`); otherwise a deleted file's space
    /// would stay held by the open descriptor kept for it.
    track: bool,
    /// What of the written bytes stays in the page cache.
    cache: DropBehind,
}

impl Appender {
    /// Starts a new active file after every existing one; its files hold
    /// `max` bytes (at least 1 MiB). `track`: see [`FrameLog::sync_written`].
    pub(crate) fn start(log: Arc<FrameLog>, after: u64, max: u64, track: bool) -> Result<Appender, JournalError> {
        let id = after + 1;
        let file = log.create(id)?;
        Ok(Appender { log, id, file, len: 0, max: max.max(1 << 20), track, cache: DropBehind::new(None) })
    }

    /// Keeps only the last `keep` bytes written in the page cache
    /// ([`super::dropbehind`]); `None` (the default) leaves it to the kernel.
    pub(crate) fn dropping_behind(mut self, keep: Option<u64>) -> Appender {
        self.cache = DropBehind::new(keep);
        self
    }

    /// The active file's id: never deleted while it is active.
    pub(crate) fn active(&self) -> u64 {
        self.id
    }

    /// Appends `records` (starting new files as they fill up) and returns
    /// where each went and the files written, for an fsync. On an error
    /// nothing is reported written; a retry writes the records again (a
    /// partial write is overwritten, or left unreferenced in a file that
    /// was already full).
    pub(crate) fn append(&mut self, records: &[Record<'_>]) -> std::io::Result<(Vec<Pointer>, Vec<Arc<File>>)> {
        let mut pointers = Vec::with_capacity(records.len());
        let mut written = vec![self.file.clone()];
        let mut start = 0;
        while start < records.len() {
            let first_bytes = (RECORD_HEADER + records[start].chunk.len()) as u64;
            if self.len > 0 && self.len + first_bytes > self.max {
                self.roll()?;
                written.push(self.file.clone());
            }
            // The records that fit in the active file (at least one: a
            // chunk larger than a file gets a file of its own).
            let (mut end, mut at) = (start + 1, self.len + first_bytes);
            while end < records.len() && at + ((RECORD_HEADER + records[end].chunk.len()) as u64) <= self.max {
                at += (RECORD_HEADER + records[end].chunk.len()) as u64;
                end += 1;
            }
            let headers: Vec<[u8; RECORD_HEADER]> =
                records[start..end].iter().map(|r| record_header(r.session, r.first, r.chunk)).collect();
            let mut slices = Vec::with_capacity(2 * (end - start));
            let mut offset = self.len;
            for (r, h) in records[start..end].iter().zip(&headers) {
                slices.push(IoSlice::new(h));
                slices.push(IoSlice::new(r.chunk));
                pointers.push(Pointer { file: self.id, offset, len: r.chunk.len() as u32, frames: r.frames });
                offset += (RECORD_HEADER + r.chunk.len()) as u64;
            }
            pwritev_all(&self.file, &mut slices, self.len)?;
            self.cache.written(&self.file, self.len, offset);
            self.log.disk.fetch_add(offset - self.len, Ordering::Relaxed);
            self.len = offset;
            start = end;
        }
        written.dedup_by(|a, b| Arc::ptr_eq(a, b));
        if self.track {
            let mut unsynced = self.log.unsynced.lock().expect("frame log lock");
            for f in &written {
                if !unsynced.iter().any(|u| Arc::ptr_eq(u, f)) {
                    unsynced.push(f.clone());
                }
            }
        }
        Ok((pointers, written))
    }

    /// Seals the active file and starts the next.
    fn roll(&mut self) -> std::io::Result<()> {
        let next = self.id + 1;
        let file = self.log.create(next).map_err(|e| match e {
            JournalError::Io { source, .. } => source,
            e => std::io::Error::other(e.to_string()),
        })?;
        (self.id, self.file, self.len) = (next, file, 0);
        Ok(())
    }
}

impl FrameLog {
    fn create(&self, id: u64) -> Result<Arc<File>, JournalError> {
        let path = self.path(id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| JournalError::Io { path: path.clone(), source })?;
        let file = Arc::new(file);
        self.files.lock().expect("frame log lock").insert(id, file.clone());
        Ok(file)
    }
}

/// Writes every slice at `offset` with as few `pwritev` calls as it takes.
fn pwritev_all(file: &File, mut slices: &mut [IoSlice<'_>], mut offset: u64) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = slices.len().min(1024); // IOV_MAX on Linux
                                        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the slices
                                        // and the file outlive the call.
        let wrote = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                n as libc::c_int,
                offset as libc::off_t,
            )
        };
        if wrote < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if wrote == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        offset += wrote as u64;
        IoSlice::advance_slices(&mut slices, wrote as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(s: &'a SessionId, first: u64, chunk: &'a [u8]) -> Record<'a> {
        Record { session: s, first, frames: 1, chunk }
    }

    #[test]
    fn records_read_back_and_damage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (log, found) = FrameLog::open(dir.path()).unwrap();
        assert!(found.is_empty());
        let log = Arc::new(log);
        let mut app = Appender::start(log.clone(), 0, 1 << 20, false).unwrap();
        let s = SessionId([7; 16]);
        let (ptrs, _) = app.append(&[rec(&s, 1, b"hello"), rec(&s, 2, b"world!")]).unwrap();
        assert_eq!(ptrs[1], Pointer { file: 1, offset: 37, len: 6, frames: 1 });
        assert_eq!(Pointer::decode(&ptrs[1].encode()).unwrap(), ptrs[1]);
        assert_eq!(&log.read(&ptrs[1], &s, 2).unwrap().unwrap()[..], b"world!");
        assert_eq!(log.disk_bytes(), 32 + 5 + 32 + 6);
        // The wrong session or seq is corrupt, not someone else's frames.
        assert!(log.read(&ptrs[1], &s, 3).is_err());
        assert!(log.read(&ptrs[1], &SessionId([8; 16]), 2).is_err());
        // A deleted file reads as gone.
        log.remove(99, Unlink::Now);
        drop(app);
        log.remove(1, Unlink::Now);
        assert_eq!(log.read(&ptrs[0], &s, 1).unwrap(), None);
        assert_eq!(log.disk_bytes(), 0);
    }

    #[test]
    fn a_full_file_rolls_over_and_a_restart_finds_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(FrameLog::open(dir.path()).unwrap().0);
        let mut app = Appender::start(log.clone(), 4, 1 << 20, false).unwrap();
        let s = SessionId([1; 16]);
        let big = vec![b'x'; 700 << 10];
        let (ptrs, written) = app.append(&[rec(&s, 1, &big), rec(&s, 2, &big), rec(&s, 3, b"y")]).unwrap();
        assert_eq!(
            ptrs.iter().map(|p| (p.file, p.offset)).collect::<Vec<_>>(),
            [(5, 0), (6, 0), (6, 32 + (700 << 10))]
        );
        assert_eq!(written.len(), 2);
        assert_eq!(app.active(), 6);
        drop((app, log));
        let (_, found) = FrameLog::open(dir.path()).unwrap();
        assert_eq!(found, [(5, 32 + (700 << 10)), (6, 2 * 32 + (700 << 10) + 1)]);
    }
}
