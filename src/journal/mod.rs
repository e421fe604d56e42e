//! The journal: every backend→client frame, in RocksDB, before any client
//! can see it.
//!
//! Layout (column families):
//! - `frames`: `session id (16) ‖ seq (8, big-endian)` → `kind (1) ‖ payload`
//! - `sessions`: `session id` → [`SessionMeta`] as JSON
//! - `meta`: `epoch` (8 bytes, big-endian) and, if none is configured, `secret`
//!
//! All writes go through one writer thread ([`writer`]) that batches
//! operations from every session into one RocksDB write; reads run on the
//! blocking pool. No RocksDB call runs on an async worker.

mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::JournalConfig;
use crate::metrics::Metrics;
use crate::protocol::{Payload, SessionId};

const CF_FRAMES: &str = "frames";
const CF_SESSIONS: &str = "sessions";
const CF_META: &str = "meta";
/// Range deletes (trims, purges) a memtable of `frames` holds before it is
/// flushed.
const MEMTABLE_MAX_RANGE_DELETIONS: &str = "1000";
const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;

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
    Append {
        session: SessionId,
        seq: u64,
        payload: Payload,
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

    /// Queues frame `seq` of `session`; `committed` is advanced to `seq` once
    /// it is durable per `journal.sync`. Waits only while the writer's queue
    /// is full, which is how a slow disk slows the backend readers down.
    pub(crate) async fn append(
        &self,
        session: SessionId,
        seq: u64,
        payload: Payload,
        committed: Arc<watch::Sender<u64>>,
    ) -> Result<(), JournalError> {
        self.send(Op::Append { session, seq, payload, committed, at: Instant::now() }).await
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
        tokio::task::spawn_blocking(move || read_frames(&db, session, from, to, max_bytes))
            .await
            .map_err(|_| JournalError::Closed)?
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
    // Frames are mostly small and compress well; lz4 is cheap on the write path.
    let mut frames = Options::default();
    frames.set_compression_type(rocksdb::DBCompressionType::Lz4);
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

/// `session ‖ seq` in big-endian, so a session's frames sort by seq.
pub(crate) fn frame_key(session: &SessionId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&session.0);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn encode_payload(p: &Payload) -> Vec<u8> {
    let (kind, body): (u8, &[u8]) = match p {
        Payload::Text(t) => (KIND_TEXT, t.as_bytes()),
        Payload::Binary(b) => (KIND_BINARY, b),
    };
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(kind);
    v.extend_from_slice(body);
    v
}

fn decode_payload(v: &[u8]) -> Result<Payload, JournalError> {
    let (kind, body) = v.split_first().ok_or_else(|| JournalError::Corrupt("empty frame".into()))?;
    let body = Bytes::copy_from_slice(body);
    match *kind {
        KIND_TEXT => Utf8Bytes::try_from(body)
            .map(Payload::Text)
            .map_err(|_| JournalError::Corrupt("text frame is not UTF-8".into())),
        KIND_BINARY => Ok(Payload::Binary(body)),
        k => Err(JournalError::Corrupt(format!("frame kind {k}"))),
    }
}

fn read_frames(
    db: &DB,
    session: SessionId,
    from: u64,
    to: u64,
    max_bytes: usize,
) -> Result<Vec<(u64, Payload)>, JournalError> {
    let cf = db.cf_handle(CF_FRAMES).expect("frames cf");
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(frame_key(&session, to.saturating_add(1)).to_vec());
    let start = frame_key(&session, from);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward)) {
        let (k, v) = item?;
        if k.len() != 24 || k[..16] != session.0 {
            break;
        }
        let seq = u64::from_be_bytes(k[16..].try_into().expect("8 bytes"));
        bytes += v.len();
        out.push((seq, decode_payload(&v)?));
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
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
            return Err(JournalError::Corrupt("frame key".into()));
        }
        let id = SessionId(k[..16].try_into().expect("16 bytes"));
        let seq = u64::from_be_bytes(k[16..].try_into().expect("8 bytes"));
        match out.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => {
                let s = &mut out[i];
                s.last_seq = s.last_seq.max(seq);
                s.frames += 1;
                s.bytes += v.len().saturating_sub(1) as u64;
            }
            Err(_) => {
                if orphans.last() != Some(&id) {
                    orphans.push(id);
                }
            }
        }
    }
    for id in orphans {
        db.delete_range_cf(frames, frame_key(&id, 0), frame_key(&id, u64::MAX))?;
    }
    Ok(out)
}
