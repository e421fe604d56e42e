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
use super::unlink::Unlink;
use super::{JournalError, CF_FRAMES};
use crate::protocol::SessionId;

/// Live bytes of a file whose accounting went wrong: never reaches zero.
const KEPT: u64 = u64::MAX / 2;

/// How much more than what is live the frame log may hold before the
/// cleaner moves live chunks out of mostly dead files (see `to_clean`).
const SLACK: f64 = 1.5;

/// Live bytes per log file, shared by the writer and a full-disk reclaim.
#[derive(Default)]
pub(crate) struct Liveness {
    /// Live record bytes per file; a file missing here holds none.
    bytes: HashMap<u64, u64>,
    /// Bytes written to each file (its length).
    sizes: HashMap<u64, u64>,
    /// The sum of `bytes`.
    total: u64,
    /// Per session, the first seq of the newest committed chunk already
    /// counted dead: a later trim counts only the chunks after it, so a
    /// chunk is never subtracted twice (a reclaim on a full disk counts
    /// chunks before the writer commits the trim that deletes them).
    counted: HashMap<SessionId, u64>,
    /// The file being appended to: never deleted.
    pub(crate) active: u64,
    /// Files the cleaner failed on: not tried again in this process.
    unclean: std::collections::HashSet<u64>,
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
    pub(crate) fn of_files(files: &[(u64, u64)]) -> Liveness {
        Liveness {
            bytes: files.iter().map(|(f, _)| (*f, 0)).collect(),
            sizes: files.iter().copied().collect(),
            ..Liveness::default()
        }
    }

    /// Counts a written chunk as live.
    pub(crate) fn add(&mut self, at: &Pointer) {
        *self.bytes.entry(at.file).or_default() += at.record_bytes();
        self.total += at.record_bytes();
        let size = self.sizes.entry(at.file).or_default();
        *size = (*size).max(at.offset + at.record_bytes());
    }

    fn kill(&mut self, at: &Pointer) {
        let Some(b) = self.bytes.get_mut(&at.file) else { return };
        match b.checked_sub(at.record_bytes()) {
            Some(left) => {
                *b = left;
                self.total -= at.record_bytes();
            }
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

    /// Counts a chunk moved out of its file by [`super::cleaner`] dead
    /// there and live at `to`.
    pub(crate) fn moved(&mut self, from: &Pointer, to: &Pointer) {
        self.kill(from);
        self.add(to);
    }

    /// A file no pointer names any more (the cleaner moved every chunk the
    /// index points to out of it): nothing in it is live, whatever the
    /// count says (a chunk left behind by a trim, say).
    pub(crate) fn emptied(&mut self, file: u64) {
        if let Some(b) = self.bytes.get_mut(&file) {
            if *b != KEPT {
                self.total -= *b;
            }
            *b = 0;
        }
    }

    /// The file the cleaner should empty next, if the frame log holds more
    /// than `SLACK` times what is live plus four files of `file_bytes`: of
    /// the files but the active one, the one with the smallest share live,
    /// if at most half of it is.
    pub(crate) fn to_clean(&self, file_bytes: u64) -> Option<(u64, u64, u64)> {
        let on_disk: u64 = self.sizes.values().sum();
        if on_disk as f64 <= SLACK * self.total as f64 + 4.0 * file_bytes as f64 {
            return None;
        }
        self.sizes
            .iter()
            .filter(|(&f, _)| f != self.active && !self.unclean.contains(&f))
            .map(|(&f, &size)| (f, self.bytes.get(&f).copied().unwrap_or(0), size))
            .filter(|&(_, live, size)| size > 0 && live <= size / 2)
            .min_by(|a, b| (a.1 as f64 / a.2 as f64).total_cmp(&(b.1 as f64 / b.2 as f64)))
    }

    /// The cleaner could not empty `file`: it is not tried again.
    pub(crate) fn give_up(&mut self, file: u64) {
        self.unclean.insert(file);
    }

    /// Deletes the files nothing live is left in, but the active one, as
    /// `how` says; returns how many.
    pub(crate) fn delete_dead(&mut self, log: &FrameLog, how: Unlink) -> usize {
        let dead: Vec<u64> = self.bytes.iter().filter(|(&f, &b)| b == 0 && f != self.active).map(|(&f, _)| f).collect();
        for &f in &dead {
            log.remove(f, how);
            self.bytes.remove(&f);
            self.sizes.remove(&f);
        }
        dead.len()
    }
}
