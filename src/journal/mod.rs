//! The journal: every backend→client frame, in RocksDB, before any client
//! can see it.
//!
//! Layout 2 (column families):
//! - `frames`: `session id (16) ‖ first seq (8, big-endian)` → a chunk of
//!   consecutive frames ([`chunk`])
//! - `sessions`: `session id` → [`SessionMeta`] as JSON
//! - `meta`: `layout` (u32, big-endian: 2), `epoch` (8 bytes, big-endian)
//!   and, if none is configured, `secret`
//!
//! All writes go through one writer thread ([`writer`]) that batches
//! operations from every session into one RocksDB write; reads run on the
//! blocking pool. No RocksDB call runs on an async worker.

mod chunk;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::JournalConfig;
use crate::metrics::Metrics;
use crate::protocol::{Payload, SessionId};
use chunk::chunk_key;

const CF_FRAMES: &str = "frames";
const CF_SESSIONS: &str = "sessions";
const CF_META: &str = "meta";
/// Range deletes (trims, purges) a memtable of `frames` holds before it is
/// flushed.
const MEMTABLE_MAX_RANGE_DELETIONS: &str = "1000";

pub(crate) use chunk::{encode_frame, put_frame, Wire, WireStamp, FRAME_HEADER};

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// RocksDB refused.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record does not decode.
    #[error("corrupt journal record: {0}")]
    Corrupt(String),
    /// The data directory could not be created or read.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The data directory holds a journal in a layout this tether does not
    /// read (an older tether's per-frame layout): refused at start.
    #[error(
        "{path}: the journal there is in layout {found} (one key per frame, written by an older tether); this tether \
         reads layout {} only. Let the old tether's clients finish and start this one with an empty journal.data_dir",
        chunk::LAYOUT
    )]
    Layout {
        /// The directory.
        path: std::path::PathBuf,
        /// The layout found.
        found: u32,
    },
    /// The writer has stopped (shutdown).
    #[error("journal writer has stopped")]
    Closed,
    /// A write failed in a way this process cannot recover from; tether
    /// drains and exits non-zero so its supervisor restarts it.
    #[error("the journal failed: {0}")]
    Failed(Arc<str>),
}

/// What the journal remembers of a session between frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionMeta {
    /// Every frame with seq <= this was trimmed (0: none).
    pub(crate) trimmed_to: u64,
    /// Set once the session ended: the backend's or client's close.
    pub(crate) ended: Option<EndInfo>,
    /// When the session lost its backend connection without ending (linger
    /// expiry, restart), in Unix ms; it is resumable as `restarted`.
    pub(crate) orphaned_ms: Option<u64>,
    /// When the session ended, in Unix ms.
    pub(crate) ended_ms: Option<u64>,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EndInfo {
    /// Close code (1006 when the backend vanished without one).
    pub(crate) code: u16,
    /// Close reason.
    pub(crate) reason: String,
}

impl EndInfo {
    /// The connection ended without a close frame (1006).
    pub(crate) fn abnormal() -> EndInfo {
        EndInfo { code: 1006, reason: String::new() }
    }

    /// A close frame without a status code (1005).
    pub(crate) fn no_status() -> EndInfo {
        EndInfo { code: 1005, reason: String::new() }
    }

    /// A normal close without a reason (1000).
    pub(crate) fn normal() -> EndInfo {
        EndInfo { code: 1000, reason: String::new() }
    }
}

/// A session found in the journal at start-up.
#[derive(Debug, Clone)]
pub(crate) struct RecoveredSession {
    /// Its id.
    pub(crate) id: SessionId,
    /// Its stored record.
    pub(crate) meta: SessionMeta,
    /// Highest seq ever journaled (or trimmed).
    pub(crate) last_seq: u64,
    /// Frames retained.
    pub(crate) frames: u64,
    /// Payload bytes retained.
    pub(crate) bytes: u64,
}

/// One journal operation, applied in order by the writer.
pub(crate) enum Op {
    /// A chunk of `frames` consecutive frames from `first` (see [`chunk`]).
    Append {
        session: SessionId,
        first: u64,
        frames: u32,
        chunk: Vec<u8>,
        committed: Arc<watch::Sender<u64>>,
        at: Instant,
    },
    PutMeta {
        session: SessionId,
        meta: SessionMeta,
    },
    Trim {
        session: SessionId,
        upto: u64,
        meta: SessionMeta,
    },
    Purge {
        session: SessionId,
    },
    /// Sync, then stop the writer: later operations fail with `Closed`.
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A cheap handle to the journal.
#[derive(Clone)]
pub(crate) struct Journal {
    db: Arc<DB>,
    tx: mpsc::Sender<Op>,
    epoch: u64,
    healthy: Arc<AtomicBool>,
    /// Set once, by the writer, when the journal has failed for good.
    failed: Arc<watch::Sender<Option<Arc<str>>>>,
}

/// What `open` hands back besides the journal.
pub(crate) struct Opened {
    /// The journal.
    pub(crate) journal: Journal,
    /// The token secret kept in the journal (generated on first open); `None`
    /// if the caller passed one.
    pub(crate) stored_secret: Option<Vec<u8>>,
    /// Sessions found on disk.
    pub(crate) recovered: Vec<RecoveredSession>,
    /// The writer thread; joins after every `Journal` handle is dropped.
    pub(crate) writer: std::thread::JoinHandle<()>,
}

impl Journal {
    /// Opens (or creates) the journal under `config.data_dir`, recovers its
    /// sessions and starts the writer. Blocking: call from a blocking context.
    pub(crate) fn open(
        config: &JournalConfig,
        want_stored_secret: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Opened, JournalError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| JournalError::Io { path: config.data_dir.clone(), source })?;
        let db = Arc::new(open_db(&config.data_dir)?);
        let meta = db.cf_handle(CF_META).expect("meta cf");
        check_layout(&db, &config.data_dir)?;
        let epoch = match db.get_cf(meta, b"epoch")? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| JournalError::Corrupt("epoch".into()))?),
            None => {
                let mut b = [0u8; 8];
                getrandom::getrandom(&mut b).expect("OS random source");
                let epoch = u64::from_be_bytes(b) | 1;
                let mut wo = rocksdb::WriteOptions::default();
                wo.set_sync(true);
                db.put_cf_opt(meta, b"epoch", epoch.to_be_bytes(), &wo)?;
                epoch
            }
        };
        let stored_secret = if want_stored_secret {
            Some(match db.get_cf(meta, b"secret")? {
                Some(v) => v,
                None => {
                    let mut s = vec![0u8; 32];
                    getrandom::getrandom(&mut s).expect("OS random source");
                    let mut wo = rocksdb::WriteOptions::default();
                    wo.set_sync(true);
                    db.put_cf_opt(meta, b"secret", &s, &wo)?;
                    s
                }
            })
        } else {
            None
        };
        let recovered = recover(&db)?;
        let (tx, rx) = mpsc::channel(config.max_batch * 4);
        let health = writer::Health::new();
        let (healthy, failed) = (health.healthy.clone(), health.failed.clone());
        let writer = writer::spawn(db.clone(), rx, config.clone(), health, metrics);
        Ok(Opened { journal: Journal { db, tx, epoch, healthy, failed }, stored_secret, recovered, writer })
    }

    /// The epoch created with this database; tokens carry it.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// False while the writer is retrying a write that failed transiently,
    /// and once the journal has failed.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.failure().is_none()
    }

    /// Why the journal failed for good, if it did: no write will succeed in
    /// this process any more (see `writer::is_transient`).
    pub(crate) fn failure(&self) -> Option<Arc<str>> {
        self.failed.borrow().clone()
    }

    /// Resolves once the journal has failed for good, with the reason.
    pub(crate) async fn failed(&self) -> Arc<str> {
        let mut rx = self.failed.subscribe();
        let reason = rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone());
        match reason {
            Some(reason) => reason,
            // The sender lives as long as this handle does; never in practice.
            None => std::future::pending().await,
        }
    }

    /// Queues `frames` consecutive frames of `session` from seq `first`,
    /// encoded in `chunk` ([`encode_frame`]) and stored under one key;
    /// `committed` is advanced to the last of them once they are durable per
    /// `journal.sync`. Waits only while the writer's queue is full, which is
    /// how a slow disk slows the backend readers down.
    pub(crate) async fn append(
        &self,
        session: SessionId,
        first: u64,
        frames: u32,
        chunk: Vec<u8>,
        committed: Arc<watch::Sender<u64>>,
    ) -> Result<(), JournalError> {
        self.send(Op::Append { session, first, frames, chunk, committed, at: Instant::now() }).await
    }

    /// Stores a session's record.
    pub(crate) async fn put_meta(&self, session: SessionId, meta: SessionMeta) -> Result<(), JournalError> {
        self.send(Op::PutMeta { session, meta }).await
    }

    /// Deletes frames up to and including `upto`, storing `meta` with them.
    pub(crate) async fn trim(&self, session: SessionId, upto: u64, meta: SessionMeta) -> Result<(), JournalError> {
        self.send(Op::Trim { session, upto, meta }).await
    }

    /// Deletes a session and all its frames.
    pub(crate) async fn purge(&self, session: SessionId) -> Result<(), JournalError> {
        self.send(Op::Purge { session }).await
    }

    /// Writes and fsyncs everything queued, then stops the writer thread so
    /// the database is idle before the process exits.
    pub(crate) async fn close(&self) -> Result<(), JournalError> {
        let (done, rx) = oneshot::channel();
        self.send(Op::Close { done }).await?;
        rx.await.map_err(|_| JournalError::Closed)
    }

    async fn send(&self, op: Op) -> Result<(), JournalError> {
        if let Some(reason) = self.failure() {
            return Err(JournalError::Failed(reason));
        }
        self.tx.send(op).await.map_err(|_| match self.failure() {
            Some(reason) => JournalError::Failed(reason),
            None => JournalError::Closed,
        })
    }

    /// Reads frames `from..=to` of `session`, stopping after `max_bytes` of
    /// payload (at least one frame is returned if any exists). Frames already
    /// trimmed are simply absent: the caller compares the first seq.
    pub(crate) async fn read(
        &self,
        session: SessionId,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Payload)>, JournalError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || chunk::read(&db, session, from, to, max_bytes))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// Starts reading frames `from..=to` of `session` as a replay batch of
    /// wire bytes ([`chunk::read_wire`]) on the blocking pool, so that the
    /// pump can write one batch while the next one is read.
    pub(crate) fn read_wire(
        &self,
        session: SessionId,
        from: u64,
        to: u64,
        max_bytes: usize,
        stamp: chunk::WireStamp,
    ) -> tokio::task::JoinHandle<Result<chunk::Wire, JournalError>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || chunk::read_wire(&db, session, from, to, max_bytes, stamp))
    }

    /// Bytes of the journal on disk (SST files plus live WAL files).
    pub(crate) async fn disk_bytes(&self) -> u64 {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let sst = db.property_int_value("rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
            let wal = db.property_int_value("rocksdb.live-wal-files-size").ok().flatten().unwrap_or(0);
            let mem = db.property_int_value("rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
            sst + wal.max(mem)
        })
        .await
        .unwrap_or(0)
    }
}

fn open_db(dir: &Path) -> Result<DB, JournalError> {
    // A restart after a failed write (e.g. a full disk) replays the WAL into
    // memtables without writing new SST files first, so it needs little free
    // space (no SstFileManager is configured, hence no 64 MiB recovery
    // reserve either). The old WAL is kept until the memtables are flushed.
    // The option has no setter in the `rocksdb` crate.
    let mut opts = Options::default().get_options_from_string("avoid_flush_during_recovery=true")?;
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Most frames are replayed or trimmed while they are young: the memtable
    // flush (L0) and the first compaction (L1) write them uncompressed, which
    // was a sixth of tether's CPU time at 512 B (docs/BENCHMARKS.md); data
    // that lives long enough to reach L2 and below is compressed with lz4.
    let mut frames = Options::default();
    use rocksdb::DBCompressionType::{Lz4, None as Plain};
    frames.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_FRAMES, frames),
        ColumnFamilyDescriptor::new(CF_SESSIONS, Options::default()),
        ColumnFamilyDescriptor::new(CF_META, Options::default()),
    ];
    let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
    // Range tombstones in the memtable are re-fragmented by every iterator,
    // so each one makes every journal read slower until the memtable is
    // flushed. Trims come in chunks (session/retention.rs), so this bound is
    // rarely reached; when it is, the memtable is flushed early.
    let frames = db.cf_handle(CF_FRAMES).expect("frames cf");
    db.set_options_cf(frames, &[("memtable_max_range_deletions", MEMTABLE_MAX_RANGE_DELETIONS)])?;
    Ok(db)
}

/// Layout 1 (one key per frame, no `layout` key) is refused rather than
/// misread; a database with no frames at all is simply (re)stamped with the
/// current layout.
fn check_layout(db: &DB, dir: &Path) -> Result<(), JournalError> {
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

/// Scans the journal for sessions. Frames whose session record is missing
/// cannot be resumed by anyone and are deleted.
fn recover(db: &DB) -> Result<Vec<RecoveredSession>, JournalError> {
    let sessions = db.cf_handle(CF_SESSIONS).expect("sessions cf");
    let frames = db.cf_handle(CF_FRAMES).expect("frames cf");
    let mut out: Vec<RecoveredSession> = Vec::new();
    for item in db.iterator_cf(sessions, IteratorMode::Start) {
        let (k, v) = item?;
        let id = SessionId(k.as_ref().try_into().map_err(|_| JournalError::Corrupt("session key".into()))?);
        let meta: SessionMeta =
            serde_json::from_slice(&v).map_err(|e| JournalError::Corrupt(format!("session {id}: {e}")))?;
        let last_seq = meta.trimmed_to;
        out.push(RecoveredSession { id, meta, last_seq, frames: 0, bytes: 0 });
    }
    out.sort_by_key(|s| s.id);
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
