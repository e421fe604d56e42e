//! Which client connection holds a session. One at a time: a newer
//! connection takes the session over (half-open TCP) and the older one is
//! kicked and waited for, so two pumps never serve one session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{BackendConn, Inner, Life, Session};
use crate::journal::{JournalError, Wire, WireStamp};
use crate::protocol::control::RestartNote;

/// How long a takeover waits for the kicked connection's pump to exit.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The lifecycle a client attached to (decides its outcome and flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attached {
    /// The existing backend connection carries on.
    Live,
    /// A new backend connection was started for an orphaned session.
    Restarted,
    /// The session has ended: replay, then `end`.
    Ended,
}

/// Why a client could not attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachError {
    /// The session is orphaned: open a backend connection and
    /// [`Session::restart`] it.
    NeedsBackend,
    /// The janitor purged the session meanwhile.
    Purged,
}

/// The current client connection's claim on a session.
pub(crate) struct Attachment {
    /// What the client attached to.
    pub(crate) kind: Attached,
    /// Generation, to tell this attachment from its successors.
    gen: u64,
    /// The committed seq when the client attached: frames up to it are
    /// replays, later ones live (including a restarted backend's first frames).
    pub(crate) replay_to: u64,
    /// How the backend connection was reopened after a restart, for the
    /// welcome (outcome `restarted`).
    pub(crate) restart: Option<Box<RestartNote>>,
    /// Fires when a newer connection takes the session over.
    kicked: Option<oneshot::Receiver<()>>,
    /// Dropped when this connection's pump exits.
    exited: Option<oneshot::Sender<()>>,
    previous: Option<Slot>,
}

impl Attachment {
    /// Kicks the previous connection (half-open takeover) and waits until its
    /// pump has exited, so at most one connection serves the session.
    pub(crate) async fn take_over(&mut self) -> bool {
        let Some(prev) = self.previous.take() else { return false };
        let _ = prev.kick.send(());
        let _ = tokio::time::timeout(TAKEOVER_WAIT, prev.exited).await;
        true
    }

    /// Fires when a newer connection takes the session over (once: the
    /// pump takes it into its loop).
    pub(crate) fn take_kicked(&mut self) -> oneshot::Receiver<()> {
        self.kicked.take().expect("the kick is taken once")
    }

    /// Signals that this connection's pump is done.
    pub(crate) fn finish(&mut self) {
        self.exited.take();
    }
}

/// The holder of a session, as the session sees it.
struct Slot {
    gen: u64,
    kick: oneshot::Sender<()>,
    exited: oneshot::Receiver<()>,
}

/// A session's claims: the generation counter and the current holder.
#[derive(Default)]
pub(super) struct Claims {
    gen: u64,
    current: Option<Slot>,
}

impl Claims {
    /// True while a client connection holds the session.
    pub(super) fn is_held(&self) -> bool {
        self.current.is_some()
    }

    fn claim(&mut self, kind: Attached, replay_to: u64) -> Attachment {
        let (kick, kicked) = oneshot::channel();
        let (exited_tx, exited) = oneshot::channel();
        self.gen += 1;
        let gen = self.gen;
        let previous = self.current.replace(Slot { gen, kick, exited });
        Attachment { kind, gen, replay_to, restart: None, kicked: Some(kicked), exited: Some(exited_tx), previous }
    }
}

impl Session {
    /// Frames `from..=to` from the in-memory ring as one buffer of wire
    /// bytes, stamped (at most `max_bytes` of payload, at least one frame),
    /// and the last seq in it; `None` if `from` is no longer there. The
    /// ring stays locked while the frames are copied (at most
    /// `limits.replay_batch_bytes`, a few µs), which is what spares a
    /// reference count per frame.
    pub(crate) fn ring_wire(&self, from: u64, to: u64, max_bytes: usize, stamp: WireStamp) -> Option<(Bytes, u64)> {
        let mut out = Vec::new();
        let last = self.ring.lock().unwrap_or_else(|p| p.into_inner()).wire(from, to, max_bytes, stamp, &mut out)?;
        Some((out.into(), last))
    }

    /// Starts reading frames `from..=to` from the journal as wire bytes for a
    /// client that fell behind the ring; the pump awaits it when it is done
    /// writing the previous batch.
    pub(crate) fn journal_wire(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
        stamp: WireStamp,
    ) -> tokio::task::JoinHandle<Result<Wire, JournalError>> {
        self.shared.journal.read_wire(self.id, from, to, max_bytes, stamp)
    }

    /// Claims the session for a new client connection. An orphaned session
    /// first needs a backend connection ([`Session::restart`]).
    pub(crate) fn attach(self: &Arc<Self>) -> Result<Attachment, AttachError> {
        let mut inner = self.lock();
        self.claim(&mut inner)
    }

    fn claim(&self, inner: &mut Inner) -> Result<Attachment, AttachError> {
        let kind = match &inner.life {
            Life::Live { linger, .. } => {
                linger.send_replace(None);
                Attached::Live
            }
            Life::Ended { .. } => Attached::Ended,
            Life::Orphaned { .. } => return Err(AttachError::NeedsBackend),
            Life::Purged => return Err(AttachError::Purged),
        };
        let mut attachment = inner.claims.claim(kind, self.committed());
        if kind == Attached::Live {
            attachment.restart = inner.restart.take();
        }
        self.recount(inner);
        Ok(attachment)
    }

    /// Claims an orphaned session with a new backend connection, and
    /// records that it is no longer orphaned. If a concurrent resume
    /// revived or ended it first, `conn` is not needed and is closed; if
    /// the janitor purged it, `conn` is handed back to serve a new session.
    pub(crate) async fn restart(self: &Arc<Self>, mut conn: BackendConn) -> Result<Attachment, BackendConn> {
        let saved = conn.saved.take();
        let (attachment, restarted) = {
            let mut inner = self.lock();
            match self.claim(&mut inner) {
                Err(AttachError::Purged) => return Err(conn),
                Err(AttachError::NeedsBackend) => {
                    inner.life = self.start_link(conn);
                    inner.meta.orphaned_ms = None;
                    let mut attachment = inner.claims.claim(Attached::Restarted, self.committed());
                    let error = inner.restart.take().and_then(|r| r.error);
                    attachment.restart =
                        Some(Box::new(RestartNote { since: self.committed() + 1, early: false, error }));
                    self.recount(&mut inner);
                    (attachment, Ok(inner.meta.clone()))
                }
                Ok(attachment) => (attachment, Err(conn)),
            }
        };
        match restarted {
            Ok(meta) => {
                self.persist(meta).await;
                if let Err(e) = self.save_request(saved).await {
                    tracing::warn!(session = %self.id, error = %e, "backend request not stored");
                }
            }
            Err(spare) => spare.close(),
        }
        Ok(attachment)
    }

    /// The upgrade for `attachment` failed before its pump started: give the
    /// session back to the connection it would have taken over, if any, which
    /// was never kicked; otherwise detach.
    pub(crate) fn abandon(&self, mut attachment: Attachment) {
        let mut inner = self.lock();
        if inner.claims.gen == attachment.gen {
            if let Some(prev) = attachment.previous.take() {
                inner.claims.gen = prev.gen;
                inner.claims.current = Some(prev);
                self.recount(&mut inner);
                return;
            }
        }
        drop(inner);
        self.detach(&attachment);
        attachment.finish();
    }

    /// Releases the session if `attachment` still holds it; a live session
    /// starts lingering.
    pub(crate) fn detach(&self, attachment: &Attachment) {
        let mut inner = self.lock();
        if inner.claims.gen != attachment.gen || inner.claims.current.is_none() {
            return;
        }
        inner.claims.current = None;
        if let Life::Live { linger, .. } = &inner.life {
            linger.send_replace(Some(Instant::now() + self.shared.config.session.linger));
        }
        self.recount(&mut inner);
    }
}
