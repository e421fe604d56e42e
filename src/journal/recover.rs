//! Opening an existing journal: its layout is checked, and its sessions
//! are found with what they retain.

use std::path::Path;

use rocksdb::{IteratorMode, DB};

use super::chunk::{self, chunk_key};
use super::framelog::{FrameLog, Pointer};
use super::liveness::Liveness;
use super::unlink::Unlink;
use super::{
    upmark, JournalError, RecoveredSession, SessionMeta, CF_FRAMES, CF_META, CF_REQUESTS, CF_SESSIONS, CF_UPSTREAM,
};
use crate::protocol::SessionId;

/// The journal's layout: the current one, or 2, which `migrate` converts.
/// Layout 1 (one key per frame, no `layout` key) is refused rather than
/// misread; a database with no frames at all is simply (re)stamped with the
/// current layout.
pub(super) fn check_layout(db: &DB, dir: &Path) -> Result<u32, JournalError> {
    let meta = db.cf_handle(CF_META).expect("meta cf");
    let frames = db.cf_handle(CF_FRAMES).expect("frames cf");
    let stored = match db.get_cf(meta, b"layout")? {
        Some(v) => {
            Some(u32::from_be_bytes(v.as_slice().try_into().map_err(|_| JournalError::Corrupt("layout".into()))?))
        }
        None => None,
    };
    if stored == Some(chunk::LAYOUT) {
        return Ok(chunk::LAYOUT);
    }
    if db.iterator_cf(frames, IteratorMode::Start).next().transpose()?.is_none() {
        // No frames: nothing a layout changes.
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.put_cf_opt(meta, b"layout", chunk::LAYOUT.to_be_bytes(), &wo)?;
        return Ok(chunk::LAYOUT);
    }
    match stored {
        Some(2) => Ok(2),
        found => Err(JournalError::Layout { path: dir.to_owned(), found: found.unwrap_or(1) }),
    }
}

/// Scans the journal for sessions, and counts what is live in the frame
/// log's `files` (id, length), deleting the files nothing points into.
/// Frames and upstream marks whose session record is missing cannot be
/// resumed by anyone and are deleted; so are pointers to chunks a trim
/// already covers (appended after it was queued), and pointers to bytes
/// that are not in the frame log. If the file is gone (deleted by a
/// full-disk reclaim whose trim record a restart interrupted), the frames
/// before such a hole count as trimmed. If the file is there but ends
/// before the chunk, the chunk was torn by a power loss: it, and what the
/// session wrote after it, were never acknowledged with `sync = always`
/// (its pointer can reach the disk first, see `datasync`) and are the last
/// writes `none` may lose, so the session's journal ends before it. A mark
/// counts as `stopped` only if the last drain was clean (`clean_stop`).
pub(super) fn recover(
    db: &DB,
    log: &FrameLog,
    files: &[(u64, u64)],
    clean_stop: bool,
) -> Result<(Vec<RecoveredSession>, Liveness), JournalError> {
    let sessions = db.cf_handle(CF_SESSIONS).expect("sessions cf");
    let frames = db.cf_handle(CF_FRAMES).expect("frames cf");
    let mut out: Vec<RecoveredSession> = Vec::new();
    for item in db.iterator_cf(sessions, IteratorMode::Start) {
        let (k, v) = item?;
        let id = SessionId(k.as_ref().try_into().map_err(|_| JournalError::Corrupt("session key".into()))?);
        let meta: SessionMeta =
            serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt(format!("session {id}: {e}")))?;
        let last_seq = meta.trimmed_to;
        out.push(RecoveredSession { id, meta, last_seq, frames: 0, bytes: 0, up: None, request: None });
    }
    out.sort_by_key(|s| s.id);
    let upstream = db.cf_handle(CF_UPSTREAM).expect("upstream cf");
    let requests = db.cf_handle(CF_REQUESTS).expect("requests cf");
    for item in db.iterator_cf(requests, IteratorMode::Start) {
        let (k, v) = item?;
        let id = SessionId(k.as_ref().try_into().map_err(|_| JournalError::Corrupt("request key".into()))?);
        match out.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => out[i].request = Some(v.to_vec()),
            Err(_) => db.delete_cf(requests, id.0)?,
        }
    }
    for (id, mut mark) in upmark::read_all(db)? {
        mark.stopped &= clean_stop;
        match out.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => out[i].up = Some(mark),
            Err(_) => db.delete_cf(upstream, id.0)?,
        }
    }
    let mut live = Liveness::of_files(files);
    let mut orphans: Vec<SessionId> = Vec::new();
    let mut dropped: Vec<Box<[u8]>> = Vec::new();
    // The session whose journal ended at a torn chunk (keys are sorted by
    // session, then seq).
    let mut cut: Option<SessionId> = None;
    for item in db.iterator_cf(frames, IteratorMode::Start) {
        let (k, v) = item?;
        if k.len() != 24 {
            return Err(JournalError::Corrupt("chunk key".into()));
        }
        let id = SessionId(k[..16].try_into().expect("16 bytes"));
        let first = u64::from_be_bytes(k[16..].try_into().expect("8 bytes"));
        let Ok(i) = out.binary_search_by_key(&id, |s| s.id) else {
            if orphans.last() != Some(&id) {
                orphans.push(id);
            }
            continue;
        };
        let s = &mut out[i];
        let at = Pointer::decode(&v)?;
        let file_len = files.binary_search_by_key(&at.file, |(f, _)| *f).ok().map(|j| files[j].1);
        let written = file_len.is_some_and(|len| at.offset + at.record_bytes() <= len);
        if file_len.is_some() && !written {
            cut = Some(id);
        }
        // A chunk never straddles a trim (see `chunk`); one left behind by
        // a trim queued before its append is not counted.
        if cut == Some(id) || first <= s.meta.trimmed_to || !written {
            dropped.push(k);
            continue;
        }
        // Chunks follow one another; a hole means files were deleted for a
        // trim (or purge) whose record a restart interrupted (`reclaim`):
        // what precedes the hole was being trimmed, and is reported as
        // trimmed.
        if first != s.meta.trimmed_to + s.frames + 1 {
            s.meta.trimmed_to = first - 1;
            (s.frames, s.bytes) = (0, 0);
        }
        let n = u64::from(at.frames);
        s.last_seq = s.last_seq.max(first + n - 1);
        s.frames += n;
        s.bytes += at.payload_bytes();
        live.add(&at);
    }
    for k in dropped {
        db.delete_cf(frames, k)?;
    }
    for id in orphans {
        db.delete_range_cf(frames, chunk_key(&id, 0), chunk_key(&id, u64::MAX))?;
    }
    live.delete_dead(log, Unlink::Now);
    Ok((out, live))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::JournalConfig;
    use crate::journal::framelog::{Appender, Record};
    use crate::protocol::Payload;

    /// Writes chunks of 64 one-byte frames of `id` starting at each of
    /// `firsts` to the frame log, their pointers, and the session's record.
    fn write(db: &DB, app: &mut Appender, id: &SessionId, firsts: &[u64]) {
        let meta = SessionMeta::default();
        db.put_cf(db.cf_handle(CF_SESSIONS).unwrap(), id.0, serde_json::to_vec(&meta).unwrap()).unwrap();
        let mut v = Vec::new();
        for _ in 0..64 {
            chunk::encode_frame(&mut v, &Payload::Text("x".into()));
        }
        for &first in firsts {
            let (at, _) = app.append(&[Record { session: id, first, frames: 64, chunk: &v }]).unwrap();
            db.put_cf(db.cf_handle(CF_FRAMES).unwrap(), chunk_key(id, first), at[0].encode()).unwrap();
        }
    }

    /// Contiguous chunks are all retained; after a hole (files deleted for
    /// a trim whose record never landed) only the chunks after it are, and
    /// the rest counts as trimmed. A pointer past the end of its file (a
    /// write torn by a power loss) ends the session's journal before it:
    /// the chunks before it stay, none after it. A file nothing points into
    /// is deleted.
    #[test]
    fn a_hole_in_a_sessions_chunks_counts_as_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig { data_dir: dir.path().to_owned(), ..JournalConfig::default() };
        let db = super::super::rocks::open_db(&config).unwrap();
        let log = Arc::new(FrameLog::open(dir.path()).unwrap().0);
        let mut app = Appender::start(log.clone(), 0, 1 << 20, false).unwrap();
        let (whole, holed, torn) = (SessionId([1; 16]), SessionId([2; 16]), SessionId([3; 16]));
        write(&db, &mut app, &whole, &[1, 65, 129]);
        write(&db, &mut app, &holed, &[1, 129, 193]);
        write(&db, &mut app, &torn, &[1, 65, 129]);
        // A second file nothing points into.
        Appender::start(log.clone(), 1, 1 << 20, false).unwrap();
        drop((app, log));
        // The torn session's second chunk points past the end of the file;
        // its third was written.
        let mut bad =
            Pointer::decode(&db.get_cf(db.cf_handle(CF_FRAMES).unwrap(), chunk_key(&torn, 65)).unwrap().unwrap())
                .unwrap();
        bad.offset += 1 << 20;
        db.put_cf(db.cf_handle(CF_FRAMES).unwrap(), chunk_key(&torn, 65), bad.encode()).unwrap();
        let (log, files) = FrameLog::open(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let (got, _) = recover(&db, &log, &files, false).unwrap();
        let summary: Vec<_> = got.iter().map(|s| (s.id, s.meta.trimmed_to, s.frames, s.bytes, s.last_seq)).collect();
        assert_eq!(summary, vec![(whole, 0, 192, 192, 192), (holed, 128, 128, 128, 256), (torn, 0, 64, 64, 64)]);
        let left = db.iterator_cf(db.cf_handle(CF_FRAMES).unwrap(), IteratorMode::Start).filter(|kv| {
            let (k, _) = kv.as_ref().unwrap();
            k[..16] == torn.0
        });
        assert_eq!(left.count(), 1, "the torn chunk and the one after it are deleted");
        assert_eq!(FrameLog::open(dir.path()).unwrap().1.len(), 1, "the empty file is deleted");
    }
}
