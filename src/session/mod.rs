//! Sessions: one logical client conversation with one backend WebSocket.
//!
//! A session outlives its client connections. While a client is attached its
//! frames flow both ways; when the client vanishes the session is detached
//! and its backend connection stays open for `session.linger`, journaling
//! what the backend sends. States (docs/ARCHITECTURE.md):
//!
//! - live (attached or detached): a [`link`] task owns the backend socket;
//! - orphaned: the backend connection is gone but the session did not end
//!   (linger expired, tether restarted); a resume opens a new one (`restarted`);
//! - ended: the backend or the client closed; the journal stays readable for
//!   `journal.retention`;
//! - purged: removed by the janitor; nothing attaches any more.
//!
//! Everything that changes a session's state is a method here, under the
//! session's own lock; the registry and the proxy only call them.

mod attach;
mod backpressure;
mod eager;
mod index;
mod link;
mod registry;
mod retention;
mod ring;
mod rotation;
mod up;
mod upkeep;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::config::Config;
use crate::journal::{ChunkBuilder, EndInfo, Journal, JournalError, SessionMeta};
use crate::protocol::control::RestartNote;
use crate::protocol::{unix_ms, Payload, SessionId};
use crate::runtime::Runtime;
use crate::upstream::{BackendSocket, SavedKey, SavedRequest};
pub(crate) use attach::{AttachError, Attached, Attachment};
pub(crate) use eager::Reopen;
use index::{Counted, Index};
pub(crate) use registry::Sessions;
use retention::{Retained, Trim, SEGMENT_FRAMES};
use ring::Ring;
pub(crate) use rotation::RotationError;
pub(crate) use up::Up;

/// A backend connection and the `limits.max_sessions` slot it holds; the
/// slot is reserved before dialing and freed when the link task ends.
pub(crate) struct BackendConn {
    /// The connected socket.
    pub(crate) socket: BackendSocket,
    /// The reserved slot.
    pub(crate) permit: OwnedSemaphorePermit,
    /// The request it was opened with, to store for an eager reopen after
    /// a restart (`None` when not stored, or already stored).
    pub(crate) saved: Option<SavedRequest>,
}

impl BackendConn {
    /// Closes a connection that turned out not to be needed.
    fn close(mut self) {
        tokio::spawn(async move {
            let _ = self.socket.close(None).await;
        });
    }
}

/// What a client sends towards the backend.
#[derive(Debug)]
pub(crate) enum ToBackend {
    /// A data message, forwarded as is.
    Data(Message),
    /// A data message of a connection with the upstream guarantee, its
    /// stamp removed: written once, in seq order (see [`up`]).
    Stamped(u64, Message),
    /// The client closed normally; the session ends.
    Close(Option<CloseFrame>),
}

/// The session has no backend connection (orphaned, ended or purged).
#[derive(Debug, thiserror::Error)]
#[error("the session has no backend connection")]
pub(crate) struct NoBackend;

/// What every session shares.
pub(crate) struct Shared {
    /// The journal.
    pub(crate) journal: Journal,
    /// Metrics, shutdown and the task tracker.
    pub(crate) rt: Runtime,
    /// `session.*`, `limits.ring_bytes` and the `journal.*` retention limits.
    pub(crate) config: Arc<Config>,
    /// Seals stored requests' credentials; `None` unless
    /// `session.backend_on_restart = "eager"` (nothing is stored then).
    pub(crate) restart_key: Option<Arc<SavedKey>>,
}

/// Where a session stands.
enum Life {
    Live { upstream: mpsc::Sender<Box<ToBackend>>, linger: watch::Sender<Option<Instant>> },
    Orphaned { since: Instant },
    Ended { since: Instant },
    Purged,
}

/// A session's state for gauges (see [`index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateLabel {
    /// Live with a client.
    Attached,
    /// Live, lingering without a client.
    Detached,
    /// No backend connection; resumable as `restarted`.
    Orphaned,
    /// Ended; journal kept for late resumes.
    Ended,
}

struct Inner {
    life: Life,
    retained: Retained,
    meta: SessionMeta,
    /// Which client connection holds the session (see [`attach`]).
    claims: attach::Claims,
    /// The state the index counts the session in (`None`: purged).
    counted: Option<Counted>,
    /// The retained bytes the index counts for the session.
    counted_bytes: u64,
    /// Whether the index's aging queue holds the session.
    aging: bool,
    /// How the backend connection was reopened, for the next client to
    /// attach (see [`eager`]).
    restart: Option<Box<RestartNote>>,
    /// Closed when an eager reopen in flight is done: a resume waits for
    /// it rather than dial a second connection.
    reopening: Option<Arc<tokio::sync::Semaphore>>,
}

/// One session.
pub(crate) struct Session {
    /// Its id.
    pub(crate) id: SessionId,
    shared: Arc<Shared>,
    /// Highest seq durable in the journal; pumps never send past it.
    committed: Arc<watch::Sender<u64>>,
    /// Highest seq handed to the journal.
    assigned: AtomicU64,
    /// Highest seq written to the attached client (for the lag gauge).
    delivered: AtomicU64,
    ended: watch::Sender<Option<(u64, EndInfo)>>,
    ring: Mutex<Ring>,
    inner: Mutex<Inner>,
    /// The registry's sessions by state, told of every transition.
    index: Arc<Index>,
    /// The upstream guarantee's accounting, once a client opted in (boxed:
    /// most sessions never do, and pay 8 bytes for it).
    up: OnceLock<Box<Up>>,
    /// Wakes a link task held back by `slow_consumer = "backpressure"` when
    /// a client was sent more (see [`backpressure`]); made on first use.
    sent_more: OnceLock<Box<tokio::sync::Notify>>,
}

impl Session {
    fn new(
        id: SessionId,
        (shared, index): (Arc<Shared>, Arc<Index>),
        life: Life,
        retained: Retained,
        meta: SessionMeta,
        last: u64,
    ) -> Arc<Self> {
        let session = Arc::new(Session {
            id,
            committed: Arc::new(watch::Sender::new(last)),
            assigned: AtomicU64::new(last),
            delivered: AtomicU64::new(last),
            ended: watch::Sender::new(None),
            ring: Mutex::new(Ring::new(shared.config.limits.ring_bytes)),
            inner: Mutex::new(Inner {
                life,
                retained,
                meta,
                claims: attach::Claims::default(),
                counted: None,
                counted_bytes: 0,
                aging: false,
                restart: None,
                reopening: None,
            }),
            shared,
            index,
            up: OnceLock::new(),
            sent_more: OnceLock::new(),
        });
        {
            let mut inner = session.lock();
            session.recount(&mut inner);
        }
        session
    }

    /// Tells the index the session's state, retained bytes and oldest
    /// segment after a change made under `inner` (its lock), so gauges and
    /// the janitor never walk every session. Cheap enough for every frame:
    /// nothing but an atomic add unless the state changed or the session
    /// just started retaining frames.
    fn recount(&self, inner: &mut Inner) {
        let counted = |label| Some(Counted { label, retired: None });
        let now = match inner.life {
            Life::Live { .. } if inner.claims.is_held() => counted(StateLabel::Attached),
            Life::Live { .. } => counted(StateLabel::Detached),
            Life::Orphaned { since } => Some(Counted { label: StateLabel::Orphaned, retired: Some(since) }),
            Life::Ended { since } => Some(Counted { label: StateLabel::Ended, retired: Some(since) }),
            Life::Purged => None,
        };
        let before = std::mem::replace(&mut inner.counted, now);
        self.index.moved(self.id, before, now);
        let bytes = if now.is_some() { inner.retained.bytes } else { 0 };
        if bytes != inner.counted_bytes {
            self.index.resized(inner.counted_bytes, bytes);
            inner.counted_bytes = bytes;
        }
        if !inner.aging && now.is_some() {
            if let Some(oldest) = inner.retained.oldest() {
                self.index.queue_aging(oldest, self.id);
                inner.aging = true;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Highest seq in the journal.
    pub(crate) fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Subscribes to the committed seq.
    pub(crate) fn watch_committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Subscribes to the end of the session: `(final seq, close info)`.
    pub(crate) fn watch_ended(&self) -> watch::Receiver<Option<(u64, EndInfo)>> {
        self.ended.subscribe()
    }

    /// First seq still in the journal.
    pub(crate) fn first_available(&self) -> u64 {
        self.lock().retained.first_available()
    }

    /// Records that the attached client has been sent everything up to `seq`.
    pub(crate) fn set_delivered(&self, seq: u64) {
        self.delivered.store(seq, Ordering::Relaxed);
        if let Some(wake) = self.sent_more.get() {
            wake.notify_one();
        }
    }

    /// Frames committed but not yet written to the attached client.
    pub(crate) fn lag(&self) -> u64 {
        self.committed().saturating_sub(self.delivered.load(Ordering::Relaxed))
    }

    /// Frames `from..=to`, at most about `max_bytes` of them: from the
    /// in-memory ring while it still holds `from`, else from the journal.
    /// Trimmed frames are absent; the caller compares the first seq.
    pub(crate) async fn frames(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Payload)>, JournalError> {
        let cached = self.ring.lock().unwrap_or_else(|p| p.into_inner()).get(from, to, max_bytes);
        match cached {
            Some(frames) => Ok(frames),
            None => self.shared.journal.read(self.id, from, to, max_bytes).await,
        }
    }

    /// The instance's metrics.
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.rt.metrics
    }

    /// The upstream guarantee's accounting, created when the first client
    /// of the session opts in.
    pub(crate) fn up(&self) -> &Up {
        self.up.get_or_init(|| Box::new(Up::new()))
    }

    /// The accounting, if any client of the session opted in.
    pub(super) fn up_used(&self) -> Option<&Up> {
        self.up.get().map(|b| &**b)
    }

    /// The queue toward the backend, for a client connection's reader to
    /// keep while it is attached: the backend connection of a session does
    /// not change while a client holds it (only orphaned, unheld sessions
    /// are reopened). `None` without a backend connection.
    pub(crate) fn upstream_queue(&self) -> Option<mpsc::Sender<Box<ToBackend>>> {
        match &self.lock().life {
            Life::Live { upstream, .. } => Some(upstream.clone()),
            _ => None,
        }
    }

    /// Sends a client frame towards the backend.
    pub(crate) async fn send_upstream(&self, msg: ToBackend) -> Result<(), NoBackend> {
        let tx = match &self.lock().life {
            Life::Live { upstream, .. } => upstream.clone(),
            _ => return Err(NoBackend),
        };
        tx.send(Box::new(msg)).await.map_err(|_| NoBackend)
    }

    /// Starts the link task for `conn`; returns the live state to store.
    fn start_link(self: &Arc<Self>, conn: BackendConn) -> Life {
        // Boxed: tokio allocates a block of 32 slots with every channel, and
        // 32 unboxed messages would cost each idle session 1.8 KB.
        let (upstream, upstream_rx) = mpsc::channel(64);
        let (linger, linger_rx) = watch::channel(None);
        if let Some(up) = self.up_used() {
            up.new_conn();
        }
        let link = link::Link::new(self.clone(), conn, upstream_rx, linger_rx);
        self.shared.rt.tasks.spawn(link.run());
        Life::Live { upstream, linger }
    }

    /// How many frames the next [`Session::journal_frames`] may take: up to
    /// the end of the current retention segment, so that no journal chunk
    /// straddles a point a trim can end at (see `journal::chunk`).
    fn batch_room(&self) -> usize {
        let next = self.assigned.load(Ordering::Relaxed) + 1;
        (SEGMENT_FRAMES - (next - 1) % SEGMENT_FRAMES) as usize
    }

    /// Journals a batch of backend frames (at most [`Session::batch_room`])
    /// as one chunk, one queue operation, and applies the frame and byte
    /// limits once.
    async fn journal_frames(&self, frames: ChunkBuilder) -> Result<(), JournalError> {
        let n = frames.len() as u64;
        debug_assert!(n > 0 && n as usize <= self.batch_room());
        let first = self.assigned.load(Ordering::Relaxed) + 1;
        self.assigned.store(first + n - 1, Ordering::Relaxed);
        let bytes = frames.payload_bytes() as u64;
        let (chunk, mut batch) = frames.finish();
        self.shared.rt.metrics.downstream.count_many(n, bytes);
        let now = Instant::now();
        // Retention is decided before the frames can be delivered, so a
        // client that has seen frame `seq` also sees the trim point it implies.
        let trim = {
            let mut inner = self.lock();
            for (seq, p) in (first..).zip(batch.iter()) {
                inner.retained.push(seq, p.len() as u64, now);
            }
            if inner.restart.as_ref().is_some_and(|r| r.early) {
                self.shared.rt.metrics.backend_orphan_frames.inc_by(n);
            }
            let j = &self.shared.config.journal;
            let trim = inner.retained.enforce(j.max_session_frames, j.max_session_bytes);
            let trim = trim.map(|t| self.note_trim(&mut inner, t));
            self.recount(&mut inner);
            trim
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.push_batch(first, &mut batch);
        }
        self.shared.journal.append(self.id, first, n as u32, chunk, self.committed.clone()).await?;
        match trim {
            Some(mut meta) => {
                // A resume may have recorded a newer token generation while
                // the append waited: this record must not take it back.
                meta.token_used = self.lock().meta.token_used;
                self.shared.journal.trim(self.id, meta.trimmed_to, meta).await
            }
            None => Ok(()),
        }
    }

    fn note_trim(&self, inner: &mut Inner, t: Trim) -> SessionMeta {
        self.shared.rt.metrics.trimmed(t.reason.as_str(), t.frames);
        inner.meta.trimmed_to = t.upto;
        inner.meta.clone()
    }

    /// Linger expired: the session loses its backend connection unless a
    /// client came back meanwhile. True if it is now orphaned (and its
    /// record says so).
    async fn orphan(&self) -> bool {
        let meta = {
            let mut inner = self.lock();
            if inner.claims.is_held() || !matches!(inner.life, Life::Live { .. }) {
                return false;
            }
            inner.life = Life::Orphaned { since: Instant::now() };
            inner.meta.orphaned_ms = Some(unix_ms());
            self.recount(&mut inner);
            inner.meta.clone()
        };
        self.persist(meta).await;
        true
    }

    /// The backend connection closed (or the client closed normally).
    async fn end(&self, info: EndInfo) {
        let meta = {
            let mut inner = self.lock();
            inner.life = Life::Ended { since: Instant::now() };
            inner.meta.ended = Some(info.clone());
            inner.meta.ended_ms = Some(unix_ms());
            self.recount(&mut inner);
            inner.meta.clone()
        };
        self.persist(meta).await;
        self.ended.send_replace(Some((self.assigned.load(Ordering::Relaxed), info)));
    }

    /// Writes the session's record. Fails only once the journal has closed
    /// (a drain), when the record on disk already says what a restart needs.
    async fn persist(&self, meta: SessionMeta) {
        if let Err(e) = self.shared.journal.put_meta(self.id, meta).await {
            tracing::warn!(session = %self.id, error = %e, "session record not written");
        }
    }
}
