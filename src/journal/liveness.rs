//! Which frame log files still hold a frame someone may read.
//!
//! Trims and purges delete pointers (range deletes in the small `frames`
//! column family); the bytes they pointed to are freed when the last
//! pointer into a file goes, by deleting the file. This is the accounting
//! that tells when: live record bytes per file, added when a chunk is
//! written, subtracted when its pointer is deleted.
//!
//! A trim's chunks are found by reading the pointers it is about to delete
//! (committed ones from RocksDB, and the ones appended earlier in the same
//! write batch), so no per-session list of chunks is kept in memory.

use std::collections::HashMap;

use rocksdb::{ReadOptions, DB};

use super::chunk::chunk_key;
use super::framelog::{FrameLog, Pointer};
use super::{JournalError, CF_FRAMES};
use crate::protocol::SessionId;

/// Live bytes of a file whose accounting went wrong: never reaches zero.
const KEPT: u64 = u64::MAX / 2;

/// Live bytes per log file, shared by the writer and a full-disk reclaim.
#[derive(Default)]
pub(crate) struct Liveness {
    /// Live record bytes per file; a file missing here holds none.
    bytes: HashMap<u64, u64>,
    /// Per session, the first seq of the newest committed chunk already
    /// counted dead: a later trim counts only the chunks after it, so a
    /// chunk is never subtracted twice (a reclaim on a full disk counts
    /// chunks before the writer commits the trim that deletes them).
    counted: HashMap<SessionId, u64>,
    /// The file being appended to: never deleted.
    pub(crate) active: u64,
}

/// A chunk appended in the write batch being prepared.
pub(crate) struct Appended {
    /// Its session.
    pub(crate) session: SessionId,
    /// Its first seq.
    pub(crate) first: u64,
    /// Where it went.
    pub(crate) at: Pointer,
    /// Counted dead by a trim later in the same batch.
    pub(crate) dead: bool,
}

impl Liveness {
    /// Accounting for `files`, none of them live yet (a start counts the
    /// pointers it finds with [`Liveness::add`]).
    pub(crate) fn of_files(files: impl IntoIterator<Item = u64>) -> Liveness {
        Liveness { bytes: files.into_iter().map(|f| (f, 0)).collect(), ..Liveness::default() }
    }

    /// Counts a written chunk as live.
    pub(crate) fn add(&mut self, at: &Pointer) {
        *self.bytes.entry(at.file).or_default() += at.record_bytes();
    }

    fn kill(&mut self, at: &Pointer) {
        let Some(b) = self.bytes.get_mut(&at.file) else { return };
        match b.checked_sub(at.record_bytes()) {
            Some(left) => *b = left,
            None => {
                // A chunk counted dead twice: deleting the file could lose
                // other sessions' frames, so it is kept until the next start
                // counts again.
                tracing::error!(file = at.file, "frame log accounting went below zero; the file is kept");
                *b = KEPT;
            }
        }
    }

    /// Counts dead what a trim of `session` up to `upto` deletes (a purge:
    /// `u64::MAX`): its committed chunks from RocksDB and `batch`'s chunks
    /// before the trim. A chunk appended after the trim of its own frames
    /// is not deleted by it (the range delete comes first in the batch) and
    /// stays counted; the next start drops it.
    pub(crate) fn trim(
        &mut self,
        db: &DB,
        session: &SessionId,
        upto: u64,
        batch: &mut [Appended],
    ) -> Result<(), JournalError> {
        for a in batch.iter_mut().filter(|a| !a.dead && a.session == *session && a.first <= upto) {
            a.dead = true;
            let at = a.at;
            self.kill(&at);
        }
        if let Some(last) = self.kill_committed(db, session, upto)? {
            self.counted.insert(*session, last);
        }
        let c = self.counted.entry(*session).or_default();
        *c = (*c).max(upto);
        Ok(())
    }

    /// Forgets a purged session, once its purge is committed (until then a
    /// reclaim must still see its chunks as counted).
    pub(crate) fn forget(&mut self, session: &SessionId) {
        self.counted.remove(session);
    }

    /// Counts dead the committed chunks of `session` up to `upto` that no
    /// trim counted yet, before the trim that deletes them is written (the
    /// disk is full: see `Journal::reclaim`).
    pub(crate) fn reclaim(&mut self, db: &DB, session: &SessionId, upto: u64) -> Result<(), JournalError> {
        if let Some(last) = self.kill_committed(db, session, upto)? {
            self.counted.insert(*session, last);
        }
        Ok(())
    }

    /// Subtracts the committed chunks of `session` after the ones already
    /// counted, up to `upto`; the first seq of the last one.
    fn kill_committed(&mut self, db: &DB, session: &SessionId, upto: u64) -> Result<Option<u64>, JournalError> {
        let from = self.counted.get(session).map_or(0, |c| c.saturating_add(1));
        if from > upto {
            return Ok(None);
        }
        let cf = db.cf_handle(CF_FRAMES).expect("frames cf");
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(chunk_key(session, upto.saturating_add(1)).to_vec());
        let mut it = db.raw_iterator_cf_opt(cf, ro);
        it.seek(chunk_key(session, from));
        let mut last = None;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.len() != 24 || k[..16] != session.0 {
                break;
            }
            self.kill(&Pointer::decode(v)?);
            last = Some(u64::from_be_bytes(k[16..].try_into().expect("8 bytes")));
            it.next();
        }
        it.status()?;
        Ok(last)
    }

    /// Deletes the files nothing live is left in, but the active one;
    /// returns how many.
    pub(crate) fn delete_dead(&mut self, log: &FrameLog) -> usize {
        let dead: Vec<u64> = self.bytes.iter().filter(|(&f, &b)| b == 0 && f != self.active).map(|(&f, _)| f).collect();
        let mut n = 0;
        for f in dead {
            match log.remove(f) {
                Ok(()) => {
                    self.bytes.remove(&f);
                    n += 1;
                }
                // Tried again after the next write.
                Err(e) => tracing::warn!(file = f, error = %e, "could not delete a frame log file"),
            }
        }
        n
    }
}
