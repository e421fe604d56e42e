//! Sessions: one logical client conversation with one backend WebSocket.
//!
//! A session outlives its client connections. While a client is attached its
//! frames flow both ways; when the client vanishes the session is detached
//! and its backend connection stays open for `session.linger`, journaling
//! what the backend sends. States (docs/ARCHITECTURE.md):
//!
//! - live (attached or detached): a backend task owns the backend socket;
//! - orphaned: the backend connection is gone but the session did not end
//!   (linger expired, tether restarted); a resume opens a new one (`restarted`);
//! - ended: the backend or the client closed; the journal stays readable for
//!   `journal.retention`, then the session is purged.

mod backend;
pub mod registry;
pub mod retention;
pub mod ring;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::metrics::Metrics;
use crate::journal::{EndInfo, Journal, SessionMeta};
use crate::lazy_read::LazyRead;
use crate::protocol::{unix_ms, Payload, SessionId};
pub use registry::Sessions;
use retention::{Retained, Trim};
use ring::Ring;

/// A connected backend WebSocket.
pub type BackendSocket = WebSocketStream<LazyRead<TcpStream>>;
/// The backend's answer to the upgrade (its 101).
pub type BackendResponse = http::Response<Option<Vec<u8>>>;

/// Why a client could not attach.
#[allow(clippy::large_enum_variant)] // returned once per resume, never stored
pub enum AttachError {
    /// The session is orphaned: open a backend connection and try again.
    NeedsBackend,
    /// The janitor purged the session meanwhile; the connection (if one was
    /// given) is handed back.
    Purged(Option<BackendSocket>),
}

/// What a client sends towards the backend.
#[derive(Debug)]
pub enum Upstream {
    /// A data message, forwarded as is.
    Data(Message),
    /// The client closed normally; the session ends.
    Close(Option<CloseFrame>),
}

/// Limits and collaborators every session shares.
pub struct Shared {
    /// The journal.
    pub journal: Journal,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when tether shuts down.
    pub shutdown: CancellationToken,
    /// Tracks backend tasks so a drain can wait for them.
    pub tasks: TaskTracker,
    /// Backend connection kept after the client vanished.
    pub linger: Duration,
    /// In-memory ring per session, bytes.
    pub ring_bytes: usize,
    /// Most sessions with an open backend connection.
    pub max_sessions: usize,
    /// Sessions with an open backend connection now.
    pub live: std::sync::atomic::AtomicUsize,
    /// How long ended or orphaned sessions stay resumable.
    pub retention: Duration,
    /// Per-session frame limit.
    pub max_session_frames: u64,
    /// Per-session byte limit.
    pub max_session_bytes: u64,
    /// Frame age limit.
    pub max_frame_age: Duration,
    /// Global retained-bytes budget.
    pub disk_budget_bytes: u64,
}

/// Where a session stands.
enum Life {
    Live { upstream: mpsc::Sender<Box<Upstream>>, linger: watch::Sender<Option<Instant>> },
    Orphaned { since: Instant },
    Ended { since: Instant },
}

/// The lifecycle a client attached to (decides its outcome and flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// The existing backend connection carries on.
    Live,
    /// A new backend connection was started for an orphaned session.
    Restarted,
    /// The session has ended: replay, then `end`.
    Ended,
}

/// The current client connection's claim on a session.
pub struct Attachment {
    /// Generation, to tell this attachment from its successors.
    pub gen: u64,
    /// The committed seq when the client attached: frames up to it are
    /// replays, later ones live (including a restarted backend's first frames).
    pub replay_to: u64,
    /// Fires when a newer connection takes the session over.
    pub kicked: oneshot::Receiver<()>,
    /// Dropped when this connection's pump exits.
    exited: Option<oneshot::Sender<()>>,
    previous: Option<Slot>,
}

impl Attachment {
    /// Kicks the previous connection (half-open takeover) and waits until its
    /// pump has exited, so at most one connection serves the session.
    pub async fn take_over(&mut self) -> bool {
        let Some(prev) = self.previous.take() else { return false };
        let _ = prev.kick.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), prev.exited).await;
        true
    }

    /// Signals that this connection's pump is done.
    pub fn finish(&mut self) {
        self.exited.take();
    }
}

struct Slot {
    gen: u64,
    kick: oneshot::Sender<()>,
    exited: oneshot::Receiver<()>,
}

struct Inner {
    life: Life,
    retained: Retained,
    meta: SessionMeta,
    gen: u64,
    current: Option<Slot>,
    /// Set by the janitor when it removes the session; nothing may attach.
    purged: bool,
}

/// One session.
pub struct Session {
    /// Its id.
    pub id: SessionId,
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
}

/// A session's state for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateLabel {
    /// Live with a client.
    Attached,
    /// Live, lingering without a client.
    Detached,
    /// No backend connection; resumable as `restarted`.
    Orphaned,
    /// Ended; journal kept for late resumes.
    Ended,
}

impl Session {
    fn new(
        id: SessionId,
        shared: Arc<Shared>,
        life: Life,
        retained: Retained,
        meta: SessionMeta,
        last: u64,
    ) -> Arc<Session> {
        Arc::new(Session {
            id,
            committed: Arc::new(watch::Sender::new(last)),
            assigned: AtomicU64::new(last),
            delivered: AtomicU64::new(last),
            ended: watch::Sender::new(None),
            ring: Mutex::new(Ring::new(shared.ring_bytes)),
            inner: Mutex::new(Inner { life, retained, meta, gen: 0, current: None, purged: false }),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Highest seq in the journal.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Subscribes to the committed seq.
    pub fn watch_committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Subscribes to the end of the session: `(final seq, close info)`.
    pub fn watch_ended(&self) -> watch::Receiver<Option<(u64, EndInfo)>> {
        self.ended.subscribe()
    }

    /// First seq still in the journal.
    pub fn first_available(&self) -> u64 {
        self.lock().retained.first_available()
    }

    /// True if the session has no backend connection and has not ended.
    pub fn is_orphaned(&self) -> bool {
        matches!(self.lock().life, Life::Orphaned { .. })
    }

    /// Records that the attached client has been sent everything up to `seq`.
    pub fn set_delivered(&self, seq: u64) {
        self.delivered.store(seq, Ordering::Relaxed);
    }

    /// State for gauges, and the attached client's lag in frames.
    pub fn state(&self) -> (StateLabel, u64) {
        let inner = self.lock();
        match inner.life {
            Life::Live { .. } if inner.current.is_some() => {
                let lag = self.committed().saturating_sub(self.delivered.load(Ordering::Relaxed));
                (StateLabel::Attached, lag)
            }
            Life::Live { .. } => (StateLabel::Detached, 0),
            Life::Orphaned { .. } => (StateLabel::Orphaned, 0),
            Life::Ended { .. } => (StateLabel::Ended, 0),
        }
    }

    /// Claims the session for a new client connection. An orphaned session
    /// needs a backend connection: without one this returns it back as
    /// `Err(None)`; a connection that turned out not to be needed is handed
    /// back in `Ok(.., Some(conn))` for the caller to close.
    #[allow(clippy::result_large_err)]
    pub fn attach(
        self: &Arc<Self>,
        backend: Option<BackendSocket>,
    ) -> Result<(Attachment, Attached, Option<BackendSocket>), AttachError> {
        let mut inner = self.lock();
        if inner.purged {
            return Err(AttachError::Purged(backend));
        }
        let replay_to = self.committed();
        let (kind, spare) = match (&inner.life, backend) {
            (Life::Live { linger, .. }, spare) => {
                linger.send_replace(None);
                (Attached::Live, spare)
            }
            (Life::Ended { .. }, spare) => (Attached::Ended, spare),
            (Life::Orphaned { .. }, None) => return Err(AttachError::NeedsBackend),
            (Life::Orphaned { .. }, Some(conn)) => {
                inner.life = self.start_backend(conn);
                inner.meta.orphaned_ms = None;
                (Attached::Restarted, None)
            }
        };
        let (kick, kicked) = oneshot::channel();
        let (exited_tx, exited) = oneshot::channel();
        inner.gen += 1;
        let gen = inner.gen;
        let previous = inner.current.replace(Slot { gen, kick, exited });
        Ok((Attachment { gen: inner.gen, replay_to, kicked, exited: Some(exited_tx), previous }, kind, spare))
    }

    /// The upgrade for `attachment` failed before its pump started: give the
    /// session back to the connection it would have taken over, if any, which
    /// was never kicked; otherwise detach.
    pub fn abandon(&self, mut attachment: Attachment) {
        let mut inner = self.lock();
        if inner.gen == attachment.gen {
            if let Some(prev) = attachment.previous.take() {
                inner.gen = prev.gen;
                inner.current = Some(prev);
                return;
            }
        }
        drop(inner);
        self.detach(attachment.gen);
        attachment.finish();
    }

    /// Releases the session if `gen` still holds it; a live session starts
    /// lingering.
    pub fn detach(&self, gen: u64) {
        let mut inner = self.lock();
        if inner.gen != gen || inner.current.is_none() {
            return;
        }
        inner.current = None;
        if let Life::Live { linger, .. } = &inner.life {
            linger.send_replace(Some(Instant::now() + self.shared.linger));
        }
    }

    /// Writes the session's current record to the journal (e.g. after a
    /// restart cleared its orphaned mark).
    pub async fn persist_meta(&self) {
        let meta = self.lock().meta.clone();
        let _ = self.shared.journal.put_meta(self.id, meta).await;
    }

    /// Sends a client frame towards the backend; false if the session has no
    /// backend connection any more.
    pub async fn send_upstream(&self, msg: Upstream) -> bool {
        let tx = match &self.lock().life {
            Life::Live { upstream, .. } => upstream.clone(),
            _ => return false,
        };
        tx.send(Box::new(msg)).await.is_ok()
    }

    /// Frames `from..=to` from the in-memory ring, if it still has `from`.
    pub fn from_ring(&self, from: u64, to: u64, max_bytes: usize) -> Option<Vec<(u64, Payload)>> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).get(from, to, max_bytes)
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.shared.journal
    }

    /// Starts the backend task for `conn`; returns the live state to store.
    fn start_backend(self: &Arc<Self>, conn: BackendSocket) -> Life {
        self.shared.live.fetch_add(1, Ordering::Relaxed);
        // Boxed: tokio allocates a block of 32 slots with every channel, and
        // 32 unboxed messages would cost each idle session 1.8 KB.
        let (upstream, upstream_rx) = mpsc::channel(64);
        let (linger, linger_rx) = watch::channel(None);
        self.shared.tasks.spawn(backend::run(self.clone(), conn, upstream_rx, linger_rx));
        Life::Live { upstream, linger }
    }

    /// Journals the next backend frame and applies the frame and byte limits.
    async fn journal_frame(&self, payload: Payload) -> bool {
        let seq = self.assigned.load(Ordering::Relaxed) + 1;
        self.assigned.store(seq, Ordering::Relaxed);
        let len = payload.len() as u64;
        let m = &self.shared.metrics;
        m.frames.with_label_values(&["downstream"]).inc();
        m.bytes.with_label_values(&["downstream"]).inc_by(len);
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).push(seq, payload.clone());
        // Retention is decided before the frame can be delivered, so a client
        // that has seen frame `seq` also sees the trim point it implies.
        let trim = {
            let mut inner = self.lock();
            inner.retained.push(seq, len, Instant::now());
            let s = &self.shared;
            let trim = inner.retained.enforce(s.max_session_frames, s.max_session_bytes);
            trim.map(|t| self.note_trim(&mut inner, t))
        };
        if self.shared.journal.append(self.id, seq, payload, self.committed.clone()).await.is_err() {
            return false;
        }
        match trim {
            Some(meta) => self.shared.journal.trim(self.id, meta.trimmed_to, meta).await.is_ok(),
            None => true,
        }
    }

    fn note_trim(&self, inner: &mut Inner, t: Trim) -> SessionMeta {
        self.shared.metrics.trimmed_frames.with_label_values(&[t.reason.as_str()]).inc_by(t.frames);
        inner.meta.trimmed_to = t.upto;
        inner.meta.clone()
    }

    /// Linger expired: drop the backend unless a client came back meanwhile.
    fn try_orphan(&self) -> Option<SessionMeta> {
        let mut inner = self.lock();
        if inner.current.is_some() || !matches!(inner.life, Life::Live { .. }) {
            return None;
        }
        inner.life = Life::Orphaned { since: Instant::now() };
        inner.meta.orphaned_ms = Some(unix_ms());
        Some(inner.meta.clone())
    }

    /// The backend connection closed (or the client closed normally).
    async fn end(&self, info: EndInfo) {
        let meta = {
            let mut inner = self.lock();
            inner.life = Life::Ended { since: Instant::now() };
            inner.meta.ended = Some(info.clone());
            inner.meta.ended_ms = Some(unix_ms());
            inner.meta.clone()
        };
        let _ = self.shared.journal.put_meta(self.id, meta).await;
        self.ended.send_replace(Some((self.assigned.load(Ordering::Relaxed), info)));
    }
}
