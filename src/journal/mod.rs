//! The journal: every backend→client frame, in RocksDB, before any client
//! can see it.
//!
//! Layout 3: the frames themselves are in the frame log ([`framelog`]),
//! files of chunks written once; RocksDB holds everything else, in column
//! families:
//! - `frames`: `session id (16) ‖ first seq (8, big-endian)` → where a chunk
//!   of consecutive frames ([`chunk`]) is in the frame log
//!   ([`framelog::Pointer`])
//! - `sessions`: `session id` → [`SessionMeta`] as JSON
//! - `upstream`: `session id` → the upstream guarantee's written mark
//!   ([`UpMark`]), for sessions whose clients opted in
//! - `requests`: `session id` → the upgrade request that opened the
//!   session's backend connection (`session::eager`), when reopened eagerly
//! - `meta`: `layout` (u32, big-endian: 3), `epoch` (8 bytes, big-endian),
//!   if none is configured, `secret`, and `clean_stop` between a drain and
//!   the next start
//!
//! All writes go through one writer thread ([`writer`]) that batches
//! operations from every session into one frame log append and one RocksDB
//! write; reads run on the blocking pool. No RocksDB call or file I/O runs
//! on an async worker.

mod chunk;
mod cleaner;
mod datasync;
mod dir;
mod dropbehind;
mod framelog;
mod liveness;
mod migrate;
mod op;
mod recover;
mod rocks;
mod space;
mod syncer;
mod unlink;
mod upmark;
mod writer;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rocksdb::DB;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::JournalConfig;
use crate::metrics::Metrics;
use crate::protocol::{Payload, SessionId};

const CF_FRAMES: &str = "frames";
const CF_SESSIONS: &str = "sessions";
const CF_META: &str = "meta";
/// Per session, the upstream guarantee's written mark ([`UpMark`]).
const CF_UPSTREAM: &str = "upstream";
/// Per session, the request its backend connection was opened with, for
/// `session.backend_on_restart = "eager"`.
const CF_REQUESTS: &str = "requests";

pub(crate) use chunk::{builder as chunk_builder, put_frame, ChunkBuilder, Wire, WireStamp, FRAME_HEADER};
pub use dir::DirError;
pub(crate) use op::Op;
pub(crate) use upmark::UpMark;

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
    /// The data directory cannot hold a journal (a file in the way, no
    /// write access, another tether using it).
    #[error(transparent)]
    Dir(#[from] dir::DirError),
    /// The data directory holds a journal in a layout this tether does not
    /// read (an older tether's): refused at start.
    #[error(
        "{path}: the journal there is in layout {found} ({}, written by an older tether); this tether \
         reads layout {} and migrates layout 2. Let the old tether's clients finish and start this one with an \
         empty journal.data_dir",
        chunk::describe_layout(*found),
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
    /// The highest token generation a client resumed with (absent: 0).
    #[serde(default)]
    pub(crate) token_used: u32,
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
    /// The upstream guarantee's mark, if its clients opted in; `stopped`
    /// only if the journal was also closed by a clean drain.
    pub(crate) up: Option<UpMark>,
    /// The stored backend request (`put_request`), if any.
    pub(crate) request: Option<Vec<u8>>,
}

/// A cheap handle to the journal.
#[derive(Clone)]
pub(crate) struct Journal {
    db: Arc<DB>,
    log: Arc<framelog::FrameLog>,
    live: Arc<Mutex<liveness::Liveness>>,
    tx: mpsc::Sender<Op>,
    epoch: u64,
    /// Shared with the writer: how its writes are going.
    health: writer::Health,
    metrics: Arc<Metrics>,
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
        dir::prepare(&config.data_dir)?;
        let db = Arc::new(rocks::open_db(config)?);
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let layout = recover::check_layout(&db, &config.data_dir)?;
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
        let clean_stop = upmark::take_clean_stop(&db)?;
        let (log, files) = framelog::FrameLog::open(&config.data_dir)?;
        let log = Arc::new(log);
        let files = match layout {
            2 => migrate::from_layout_2(&db, &log, &files, config.memtable_bytes as u64)?,
            _ => files,
        };
        let (recovered, mut live) = recover::recover(&db, &log, &files, clean_stop)?;
        let newest = files.last().map_or(0, |(id, _)| *id);
        let appender = framelog::Appender::start(
            log.clone(),
            newest,
            config.memtable_bytes as u64,
            config.sync == crate::config::SyncMode::Interval,
        )?
        .dropping_behind((config.page_cache_bytes > 0).then_some(config.page_cache_bytes as u64));
        live.active = appender.active();
        let live = Arc::new(Mutex::new(live));
        let (tx, rx) = mpsc::channel(config.max_batch * 4);
        let health = writer::Health::new();
        let parts = writer::Parts { db: db.clone(), log: log.clone(), appender, live: live.clone() };
        let writer = writer::spawn(parts, rx, config.clone(), health.clone(), metrics.clone());
        let journal = Journal { db, log, live, tx, epoch, health, metrics };
        Ok(Opened { journal, stored_secret, recovered, writer })
    }

    /// The epoch created with this database; tokens carry it.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// False while the writer is retrying a failed write (transient, or a
    /// full disk), and once the journal has failed.
    pub(crate) fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed) && self.failure().is_none()
    }

    /// True while journal writes wait for free disk space.
    pub(crate) fn is_disk_full(&self) -> bool {
        self.health.disk_full.load(Ordering::Relaxed)
    }

    /// A drain has begun: a full disk is no longer waited out, so the drain
    /// ends (and tether exits non-zero) instead of waiting for space.
    pub(crate) fn give_up_when_disk_full(&self) {
        self.health.give_up.store(true, Ordering::Relaxed);
    }

    /// Why the journal failed for good, if it did: no write will succeed in
    /// this process any more (see `writer::is_transient`).
    pub(crate) fn failure(&self) -> Option<Arc<str>> {
        self.health.failed.borrow().clone()
    }

    /// Resolves once the journal has failed for good, with the reason.
    pub(crate) async fn failed(&self) -> Arc<str> {
        let mut rx = self.health.failed.subscribe();
        let reason = rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone());
        match reason {
            Some(reason) => reason,
            // The sender lives as long as this handle does; never in practice.
            None => std::future::pending().await,
        }
    }

    /// Queues `frames` consecutive frames of `session` from seq `first`,
    /// encoded in `chunk` ([`chunk_builder`]) and stored under one key;
    /// `committed` is advanced to the last of them once they are durable per
    /// `journal.sync`. Waits only while the writer's queue is full, which is
    /// how a slow disk slows the backend readers down.
    pub(crate) async fn append(
        &self,
        session: SessionId,
        first: u64,
        frames: u32,
        chunk: Bytes,
        committed: Arc<watch::Sender<u64>>,
    ) -> Result<(), JournalError> {
        self.send(Op::Append { session, first, frames, chunk, committed, at: Instant::now() }).await
    }

    /// Records that the session's client messages up to `mark.written` were
    /// written to its backend; `acked` follows once that is durable.
    pub(crate) async fn put_up(
        &self,
        session: SessionId,
        mark: UpMark,
        acked: Arc<watch::Sender<u64>>,
    ) -> Result<(), JournalError> {
        self.send(Op::PutUp { session, mark, acked }).await
    }

    /// Stores the request a session's backend connection was opened with
    /// (opaque bytes, see `session::eager`).
    pub(crate) async fn put_request(&self, session: SessionId, request: Vec<u8>) -> Result<(), JournalError> {
        self.send(Op::PutRequest { session, request }).await
    }

    /// Stores a session's record.
    pub(crate) async fn put_meta(&self, session: SessionId, meta: SessionMeta) -> Result<(), JournalError> {
        self.send(Op::PutMeta { session, meta, written: None }).await
    }

    /// [`Journal::put_meta`], returning once the record is written (as a frame).
    pub(crate) async fn put_meta_written(&self, session: SessionId, meta: SessionMeta) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::PutMeta { session, meta, written: Some(tx) }).await?;
        rx.await.map_err(|_| self.failure().map_or(JournalError::Closed, JournalError::Failed))
    }

    /// Deletes frames up to and including `upto`, storing `meta` with them.
    /// While the disk is full, the journal files that hold nothing but
    /// those frames are deleted first (see `reclaim`).
    pub(crate) async fn trim(&self, session: SessionId, upto: u64, meta: SessionMeta) -> Result<(), JournalError> {
        if self.is_disk_full() {
            self.reclaim(session, upto).await;
        }
        self.send(Op::Trim { session, upto, meta }).await
    }

    /// Deletes a session and all its frames. While the disk is full, the
    /// journal files that hold only this session's frames are deleted at
    /// once (that needs no write, and lets RocksDB resume writes), and the
    /// purge itself is queued in the background, so the janitor can go on
    /// to the next session meanwhile; the queue is first come, first
    /// served, so the purge still lands after the session's last write.
    pub(crate) async fn purge(&self, session: SessionId) -> Result<(), JournalError> {
        if !self.is_disk_full() {
            return self.send(Op::Purge { session }).await;
        }
        self.reclaim(session, u64::MAX - 1).await;
        let journal = self.clone();
        tokio::spawn(async move {
            if let Err(e) = journal.send(Op::Purge { session }).await {
                tracing::warn!(%session, error = %e, "session purge not written");
            }
        });
        Ok(())
    }

    /// Counts `session`'s chunks up to `upto` dead before the trim or purge
    /// that deletes them is written, and deletes the frame log files that
    /// leaves with nothing live, on the blocking pool: that writes nothing,
    /// so it works while the disk is full. The trim or purge record is
    /// queued after it; should a restart come first, `recover` sees the
    /// hole and counts the frames before it as trimmed, so they are
    /// reported, never replayed in part.
    async fn reclaim(&self, session: SessionId, upto: u64) {
        let (db, log, live) = (self.db.clone(), self.log.clone(), self.live.clone());
        let deleted = tokio::task::spawn_blocking(move || {
            let mut live = live.lock().expect("liveness lock");
            live.reclaim(&db, &session, upto)?;
            Ok::<_, JournalError>(live.delete_dead(&log, unlink::Unlink::Now))
        })
        .await;
        match deleted {
            Ok(Ok(n)) => {
                self.metrics.journal_reclaimed_files.inc_by(n as u64);
                tracing::info!(%session, upto, files = n, "disk full: deleted journal files of trimmed frames");
            }
            Ok(Err(e)) => {
                tracing::warn!(%session, error = %e, "disk full: could not delete the purged session's files")
            }
            Err(_) => {}
        }
    }

    /// Writes and fsyncs everything queued, then stops the writer thread so
    /// the database is idle before the process exits. `clean`: every
    /// session's tasks stopped in order, so the next start may trust their
    /// upstream marks as exact.
    pub(crate) async fn close(&self, clean: bool) -> Result<(), JournalError> {
        let (done, rx) = oneshot::channel();
        self.send(Op::Close { done, clean }).await?;
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
        let (db, log) = (self.db.clone(), self.log.clone());
        tokio::task::spawn_blocking(move || chunk::read(&db, &log, session, from, to, max_bytes))
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
        let (db, log) = (self.db.clone(), self.log.clone());
        tokio::task::spawn_blocking(move || chunk::read_wire(&db, &log, session, from, to, max_bytes, stamp))
    }

    /// Bytes of the journal on disk (frame log files, SST files and live
    /// WAL files).
    pub(crate) async fn disk_bytes(&self) -> u64 {
        let db = self.db.clone();
        let log = self.log.disk_bytes();
        log + tokio::task::spawn_blocking(move || {
            let sst = db.property_int_value("rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
            let wal = db.property_int_value("rocksdb.live-wal-files-size").ok().flatten().unwrap_or(0);
            let mem = db.property_int_value("rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
            sst + wal.max(mem)
        })
        .await
        .unwrap_or(0)
    }
}
