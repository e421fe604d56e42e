//! Layout 2 → 3, in place at start: each chunk stored inside RocksDB is
//! appended to the frame log and its value replaced by a pointer.
//!
//! All pointers and the new `layout` go in one RocksDB write, after the
//! log files are fsynced: a crash before it leaves layout 2 intact (the
//! next start migrates again; the files written by the interrupted attempt
//! hold nothing a pointer names and are deleted), a crash after it leaves
//! layout 3. The old chunks are then compacted away.

use std::sync::Arc;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use super::chunk::{self, describe_layout};
use super::framelog::{Appender, FrameLog, Record};
use super::{JournalError, CF_FRAMES, CF_META};
use crate::protocol::SessionId;

/// Chunks appended per frame log write while migrating.
const GROUP_BYTES: usize = 8 << 20;

/// Migrates a layout 2 journal; returns the frame log's files (id, length)
/// afterwards.
pub(super) fn from_layout_2(
    db: &DB,
    log: &Arc<FrameLog>,
    files: &[(u64, u64)],
    file_bytes: u64,
) -> Result<Vec<(u64, u64)>, JournalError> {
    let started = std::time::Instant::now();
    let frames = db.cf_handle(CF_FRAMES).expect("frames cf");
    let newest = files.last().map_or(0, |(id, _)| *id);
    let mut to = Target {
        app: Appender::start(log.clone(), newest, file_bytes, false)?,
        batch: WriteBatch::default(),
        lengths: files.to_vec(),
        chunks: 0,
        bytes: 0,
    };
    let mut group: Vec<Kv> = Vec::new();
    let mut group_bytes = 0usize;
    for item in db.iterator_cf(frames, IteratorMode::Start) {
        let (k, v) = item?;
        group_bytes += v.len();
        group.push((k, v));
        if group_bytes >= GROUP_BYTES {
            to.move_chunks(db, &group)?;
            (group, group_bytes) = (Vec::new(), 0);
        }
    }
    to.move_chunks(db, &group)?;
    let Target { mut batch, mut lengths, chunks, bytes, .. } = to;
    let meta = db.cf_handle(CF_META).expect("meta cf");
    batch.put_cf(meta, b"layout", chunk::LAYOUT.to_be_bytes());
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo)?;
    // The old chunks are garbage now; without new writes to the same keys
    // RocksDB might not compact them for a long time.
    db.compact_range_cf(frames, None::<&[u8]>, None::<&[u8]>);
    tracing::info!(
        chunks,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        "journal migrated from layout 2 ({}) to layout {}",
        describe_layout(2),
        chunk::LAYOUT
    );
    lengths.sort_unstable();
    Ok(lengths)
}

/// A key and value read from RocksDB.
type Kv = (Box<[u8]>, Box<[u8]>);

/// Where the migration goes: the frame log, and the RocksDB write that
/// switches to it.
struct Target {
    app: Appender,
    batch: WriteBatch,
    /// Each frame log file's length.
    lengths: Vec<(u64, u64)>,
    chunks: u64,
    bytes: u64,
}

impl Target {
    /// Appends `group`'s chunks to the frame log (fsynced) and puts their
    /// pointers in the batch.
    fn move_chunks(&mut self, db: &DB, group: &[Kv]) -> Result<(), JournalError> {
        if group.is_empty() {
            return Ok(());
        }
        let frames = db.cf_handle(CF_FRAMES).expect("frames cf");
        let mut records = Vec::with_capacity(group.len());
        for (k, v) in group {
            let session: &[u8; 16] = k.get(..16).and_then(|s| s.try_into().ok()).ok_or_else(corrupt_key)?;
            let first = u64::from_be_bytes(k.get(16..24).and_then(|s| s.try_into().ok()).ok_or_else(corrupt_key)?);
            records.push((SessionId(*session), first, chunk::frame_count(v)?));
        }
        let recs: Vec<Record<'_>> = records
            .iter()
            .zip(group)
            .map(|((s, first, n), (_, v))| Record { session: s, first: *first, frames: *n, chunk: v })
            .collect();
        let io = |source| JournalError::Io { path: "framelog".into(), source };
        let (pointers, written) = self.app.append(&recs).map_err(io)?;
        for f in written {
            f.sync_data().map_err(io)?;
        }
        for ((k, v), at) in group.iter().zip(&pointers) {
            self.batch.put_cf(frames, k, at.encode());
            self.bytes += v.len() as u64;
            let end = at.offset + at.record_bytes();
            match self.lengths.iter_mut().find(|(id, _)| *id == at.file) {
                Some((_, len)) => *len = (*len).max(end),
                None => self.lengths.push((at.file, end)),
            }
        }
        self.chunks += group.len() as u64;
        Ok(())
    }
}

fn corrupt_key() -> JournalError {
    JournalError::Corrupt("chunk key".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::JournalConfig;
    use crate::journal::chunk::{chunk_key, encode_frame};
    use crate::journal::{Journal, SessionMeta, CF_SESSIONS};
    use crate::metrics::Metrics;
    use crate::protocol::Payload;

    /// A journal written by layout 2 (chunks inside RocksDB) opens as
    /// layout 3 with every session and frame, reads back byte for byte, and
    /// its chunks are in the frame log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_layout_2_journal_is_migrated_with_every_frame() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig { data_dir: dir.path().to_owned(), ..JournalConfig::default() };
        let (a, b) = (SessionId([1; 16]), SessionId([2; 16]));
        let body = |s: u8, seq: u64| format!("session {s} frame {seq}");
        {
            let db = super::super::rocks::open_db(&config).unwrap();
            db.put_cf(db.cf_handle(CF_META).unwrap(), b"layout", 2u32.to_be_bytes()).unwrap();
            for (id, trimmed_to, firsts) in [(a, 0u64, vec![1u64, 4]), (b, 64, vec![65])] {
                let meta = SessionMeta { trimmed_to, ..SessionMeta::default() };
                db.put_cf(db.cf_handle(CF_SESSIONS).unwrap(), id.0, serde_json::to_vec(&meta).unwrap()).unwrap();
                for first in firsts {
                    let mut v = Vec::new();
                    for seq in first..first + 3 {
                        encode_frame(&mut v, &Payload::Text(body(id.0[0], seq).into()));
                    }
                    db.put_cf(db.cf_handle(CF_FRAMES).unwrap(), chunk_key(&id, first), v).unwrap();
                }
            }
        }
        let config2 = config.clone();
        let opened = tokio::task::spawn_blocking(move || Journal::open(&config2, false, Arc::new(Metrics::new())))
            .await
            .unwrap()
            .unwrap();
        let summary: Vec<_> =
            opened.recovered.iter().map(|s| (s.id, s.meta.trimmed_to, s.frames, s.last_seq)).collect();
        assert_eq!(summary, vec![(a, 0, 6, 6), (b, 64, 3, 67)]);
        let got = opened.journal.read(a, 2, 6, usize::MAX).await.unwrap();
        let want: Vec<_> = (2..=6).map(|seq| (seq, Payload::Text(body(1, seq).into()))).collect();
        assert_eq!(got, want);
        let got = opened.journal.read(b, 1, 100, usize::MAX).await.unwrap();
        assert_eq!(got.first().map(|(seq, _)| *seq), Some(65));
        assert_eq!(got.len(), 3);
        let frames = opened.journal.db.cf_handle(CF_FRAMES).unwrap();
        for item in opened.journal.db.iterator_cf(frames, IteratorMode::Start) {
            assert_eq!(item.unwrap().1.len(), 24, "a pointer, not a chunk");
        }
        let layout = opened.journal.db.get_cf(opened.journal.db.cf_handle(CF_META).unwrap(), b"layout").unwrap();
        assert_eq!(layout.as_deref(), Some(&3u32.to_be_bytes()[..]));
        assert!(opened.journal.log.disk_bytes() > 0);
        opened.journal.close(true).await.unwrap();
    }
}
