//! The frame log's cleaner: moves the live chunks out of a mostly dead file
//! so the file can be deleted.
//!
//! A file is deleted once nothing in it is live, and most files die whole:
//! sessions trim their oldest frames, sessions end and are purged. But a
//! chunk kept for long (a quiet session that keeps its last frames, a
//! session that lives for hours) would keep its whole file, and the frame
//! log could grow far past what it retains. So when the log holds more than
//! half again what is live (plus a few files), the writer takes the file
//! with the smallest live share (at most half), appends the chunks the
//! index still points to to the active file, and points the index at the
//! copies in one RocksDB write; the emptied file is then deleted. It runs
//! on the writer thread between two batches, holding the liveness lock, so
//! no trim, purge or full-disk reclaim interleaves with a move. A reader
//! that finds a moved chunk's file gone reads its pointer again.

use rocksdb::{WriteBatch, WriteOptions, DB};

use super::chunk::chunk_key;
use super::framelog::{Appender, FrameLog, Pointer, Record};
use super::liveness::Liveness;
use super::unlink::Unlink;
use super::{JournalError, CF_FRAMES};
use crate::protocol::SessionId;

/// Bytes moved per frame log write and RocksDB write.
const GROUP_BYTES: u64 = 4 << 20;

/// A cleaning that did not finish; the file is left as it is.
#[derive(Debug, thiserror::Error)]
pub(super) enum CleanError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("frame log: {0}")]
    Io(#[from] std::io::Error),
}

/// What the cleaner works with: the writer's parts.
pub(super) struct Cleaner<'a> {
    pub(super) db: &'a DB,
    pub(super) log: &'a FrameLog,
    pub(super) appender: &'a mut Appender,
    /// fsync the copies and the pointers (`journal.sync = "always"`).
    pub(super) sync: bool,
}

impl Cleaner<'_> {
    /// Empties `file` and deletes it; the bytes moved.
    pub(super) fn clean(&mut self, live: &mut Liveness, file: u64) -> Result<u64, CleanError> {
        let frames = self.db.cf_handle(CF_FRAMES).expect("frames cf");
        // The records the index still points to; the rest is dead.
        let mut moving: Vec<(SessionId, u64, Pointer)> = Vec::new();
        for (offset, session, first, _) in self.log.scan(file)? {
            let Some(v) = self.db.get_pinned_cf(frames, chunk_key(&session, first))? else { continue };
            let at = Pointer::decode(&v)?;
            if at.file == file && at.offset == offset {
                moving.push((session, first, at));
            }
        }
        let mut moved = 0;
        let mut rest = &moving[..];
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && (n == 0 || bytes + rest[n].2.record_bytes() <= GROUP_BYTES) {
                bytes += rest[n].2.record_bytes();
                n += 1;
            }
            let (group, next) = rest.split_at(n);
            moved += self.move_group(live, group)?;
            rest = next;
        }
        live.emptied(file);
        live.delete_dead(self.log, Unlink::Background);
        Ok(moved)
    }

    fn move_group(&mut self, live: &mut Liveness, group: &[(SessionId, u64, Pointer)]) -> Result<u64, CleanError> {
        let mut chunks = Vec::with_capacity(group.len());
        for (session, first, at) in group {
            let chunk = self.log.read(at, session, *first)?.ok_or_else(|| {
                JournalError::Corrupt(format!("frame log {:x} vanished while it was being cleaned", at.file))
            })?;
            chunks.push(chunk);
        }
        let records: Vec<Record<'_>> = group
            .iter()
            .zip(&chunks)
            .map(|((session, first, at), chunk)| Record { session, first: *first, frames: at.frames, chunk })
            .collect();
        let (copies, written) = self.appender.append(&records)?;
        if self.sync {
            for f in &written {
                f.sync_data()?;
            }
        }
        let frames = self.db.cf_handle(CF_FRAMES).expect("frames cf");
        let mut batch = WriteBatch::default();
        for ((session, first, _), to) in group.iter().zip(&copies) {
            batch.put_cf(frames, chunk_key(session, *first), to.encode());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(batch, &wo)?;
        live.active = self.appender.active();
        let mut bytes = 0;
        for ((_, _, from), to) in group.iter().zip(&copies) {
            live.moved(from, to);
            bytes += to.record_bytes();
        }
        Ok(bytes)
    }
}
