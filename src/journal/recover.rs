//! Opening an existing journal: its layout is checked, and its sessions
//! are found with what they retain.

use std::path::Path;

use rocksdb::{IteratorMode, DB};

use super::chunk::{self, chunk_key};
use super::{
    upmark, JournalError, RecoveredSession, SessionMeta, CF_FRAMES, CF_META, CF_REQUESTS, CF_SESSIONS, CF_UPSTREAM,
};
use crate::protocol::SessionId;

/// Layout 1 (one key per frame, no `layout` key) is refused rather than
/// misread; a database with no frames at all is simply (re)stamped with the
/// current layout.
pub(super) fn check_layout(db: &DB, dir: &Path) -> Result<(), JournalError> {
    let meta = db.cf_handle(CF_META).expect("meta cf");
    let found = match db.get_cf(meta, b"layout")? {
        Some(v) => u32::from_be_bytes(v.as_slice().try_into().map_err(|_| JournalError::Corrupt("layout".into()))?),
        None => {
            let frames = db.cf_handle(CF_FRAMES).expect("frames cf");
            if db.iterator_cf(frames, IteratorMode::Start).next().transpose()?.is_some() {
                1
            } else {
                let mut wo = rocksdb::WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, b"layout", chunk::LAYOUT.to_be_bytes(), &wo)?;
                chunk::LAYOUT
            }
        }
    };
    if found != chunk::LAYOUT {
        return Err(JournalError::Layout { path: dir.to_owned(), found });
    }
    Ok(())
}

/// Scans the journal for sessions. Frames and upstream marks whose session
/// record is missing cannot be resumed by anyone and are deleted. A mark
/// counts as `stopped` only if the last drain was clean (`clean_stop`).
pub(super) fn recover(db: &DB, clean_stop: bool) -> Result<Vec<RecoveredSession>, JournalError> {
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
    let mut orphans: Vec<SessionId> = Vec::new();
    for item in db.iterator_cf(frames, IteratorMode::Start) {
        let (k, v) = item?;
        if k.len() != 24 {
            return Err(JournalError::Corrupt("chunk key".into()));
        }
        let id = SessionId(k[..16].try_into().expect("16 bytes"));
        let first = u64::from_be_bytes(k[16..].try_into().expect("8 bytes"));
        match out.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => {
                let s = &mut out[i];
                let (n, bytes) = chunk::count(&v)?;
                // A chunk never straddles a trim (see `chunk`); one left
                // behind by a trim queued before its append is not counted.
                if first > s.meta.trimmed_to {
                    // Chunks follow one another; a hole means files were
                    // deleted for a trim (or purge) whose record a restart
                    // interrupted (`reclaim`): what precedes the hole was
                    // being trimmed, and is reported as trimmed.
                    if first != s.meta.trimmed_to + s.frames + 1 {
                        s.meta.trimmed_to = first - 1;
                        (s.frames, s.bytes) = (0, 0);
                    }
                    s.last_seq = s.last_seq.max(first + n - 1);
                    s.frames += n;
                    s.bytes += bytes;
                }
            }
            Err(_) => {
                if orphans.last() != Some(&id) {
                    orphans.push(id);
                }
            }
        }
    }
    for id in orphans {
        db.delete_range_cf(frames, chunk_key(&id, 0), chunk_key(&id, u64::MAX))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JournalConfig;
    use crate::protocol::Payload;

    /// Writes chunks of 64 one-byte frames of `id` starting at each of
    /// `firsts`, and the session's record.
    fn write(db: &DB, id: &SessionId, firsts: &[u64]) {
        let meta = SessionMeta::default();
        db.put_cf(db.cf_handle(CF_SESSIONS).unwrap(), id.0, serde_json::to_vec(&meta).unwrap()).unwrap();
        for &first in firsts {
            let mut v = Vec::new();
            for _ in 0..64 {
                chunk::encode_frame(&mut v, &Payload::Text("x".into()));
            }
            db.put_cf(db.cf_handle(CF_FRAMES).unwrap(), chunk_key(id, first), v).unwrap();
        }
    }

    /// Contiguous chunks are all retained; after a hole (files deleted for
    /// a trim whose record never landed) only the chunks after it are, and
    /// the rest counts as trimmed.
    #[test]
    fn a_hole_in_a_sessions_chunks_counts_as_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig { data_dir: dir.path().to_owned(), ..JournalConfig::default() };
        let db = super::super::rocks::open_db(&config).unwrap();
        let (whole, holed) = (SessionId([1; 16]), SessionId([2; 16]));
        write(&db, &whole, &[1, 65, 129]);
        write(&db, &holed, &[1, 129, 193]);
        let got = recover(&db, false).unwrap();
        let summary: Vec<_> = got.iter().map(|s| (s.id, s.meta.trimmed_to, s.frames, s.last_seq)).collect();
        assert_eq!(summary, vec![(whole, 0, 192, 192), (holed, 128, 128, 256)]);
    }
}
