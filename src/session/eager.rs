//! `session.backend_on_restart = "eager"`: after tether starts, every
//! session that had a backend connection when tether stopped gets one
//! again, with the request that opened the last one, before its client
//! returns. What the backend sends meanwhile is journaled with seqs
//! continuing; the client's resume is `restarted`, and its welcome says
//! where the new connection began. No client within `session.linger`: the
//! connection closes as any lingering one does.
//!
//! Dials are paced (`restart_dials_per_second`, `restart_dial_concurrency`)
//! so a restart with 10,000 such sessions does not dial 10,000 at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{BackendConn, Life, Session, Sessions};
use crate::journal::JournalError;
use crate::protocol::control::RestartNote;
use crate::upstream::{ConnectError, DialError, SavedKey, SavedRequest, Upstream};

/// A session to reopen and its stored request.
pub(crate) struct Reopen {
    /// The session (orphaned by the restart).
    pub(crate) session: Arc<Session>,
    /// Its stored request (`SavedRequest`).
    pub(crate) request: Vec<u8>,
}

impl Sessions {
    /// Reopens `todo`'s backend connections, paced, until done or shutdown.
    pub(crate) async fn reopen_all(self: Arc<Self>, upstream: Upstream, key: Arc<SavedKey>, todo: Vec<Reopen>) {
        let config = &self.shared.config.session;
        let gap = Duration::from_secs(1) / config.restart_dials_per_second;
        let inflight = Arc::new(Semaphore::new(config.restart_dial_concurrency as usize));
        let upstream = Arc::new(upstream);
        let shutdown: CancellationToken = self.shared.rt.shutdown.clone();
        let (total, started) = (todo.len(), Instant::now());
        tracing::info!(sessions = total, "reopening backend connections (session.backend_on_restart = eager)");
        let mut next = tokio::time::Instant::now();
        for job in todo {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = inflight.clone().acquire_owned() => p.expect("never closed"),
            };
            // The next dial comes a gap after this one really starts: a
            // backend that held the dials back (or a late timer) must not
            // be paid back with a burst of the slots it missed.
            next = tokio::time::Instant::now() + gap;
            let (sessions, upstream, key) = (self.clone(), upstream.clone(), key.clone());
            self.shared.rt.tasks.spawn(async move {
                sessions.reopen_one(&upstream, &key, job).await;
                drop(permit);
            });
        }
        // Waits for the last dials, so the log line says when all were done.
        let _ = inflight.acquire_many(config.restart_dial_concurrency).await;
        tracing::info!(sessions = total, elapsed = ?started.elapsed(), "backend connections reopened");
    }

    async fn reopen_one(&self, upstream: &Upstream, key: &SavedKey, Reopen { session, request }: Reopen) {
        let metrics = &self.shared.rt.metrics;
        let Some(slot) = self.reserve() else { return metrics.backend_reopen("over_capacity") };
        let Some(claim) = session.claim_dial() else { return metrics.backend_reopen("skipped") };
        self.dial_again(upstream, key, &session, request, slot).await;
        drop(claim);
    }

    async fn dial_again(
        &self,
        upstream: &Upstream,
        key: &SavedKey,
        session: &Arc<Session>,
        request: Vec<u8>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let metrics = &self.shared.rt.metrics;
        let (uri, headers, peer) = match SavedRequest::decode(&request, &session.id, key) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "backend connection not reopened");
                return metrics.backend_reopen("error");
            }
        };
        match upstream.connect(&uri, &headers, peer).await {
            Ok(c) => {
                let reopened = session.reopen(BackendConn { socket: c.socket, permit: slot, saved: None }).await;
                metrics.backend_reopen(if reopened { "ok" } else { "skipped" });
            }
            Err(e) => {
                let result = match e {
                    ConnectError::Handshake(DialError::Refused(_)) => "refused",
                    _ => "error",
                };
                tracing::warn!(session = %session.id, error = %e, "backend connection not reopened; the client's resume will try again");
                metrics.backend_reopen(result);
                session.reopen_failed(e.to_string());
            }
        }
    }
}

/// The right to open an orphaned session's backend connection. One dial at
/// a time per session, an eager reopen's or a resume's, so the backend never
/// sees two connections for one restart; dropping it lets the others go on.
pub(crate) struct DialClaim {
    session: Arc<Session>,
    gate: Arc<Semaphore>,
}

impl Drop for DialClaim {
    fn drop(&mut self) {
        let mut inner = self.session.lock();
        if inner.reopening.as_ref().is_some_and(|g| Arc::ptr_eq(g, &self.gate)) {
            inner.reopening = None;
        }
        drop(inner);
        self.gate.close();
    }
}

impl Session {
    /// Claims the dial of an orphaned session; `None` if it is not orphaned
    /// (a client or a reopen got there first) or a dial is under way.
    pub(crate) fn claim_dial(self: &Arc<Self>) -> Option<DialClaim> {
        let mut inner = self.lock();
        if !matches!(inner.life, Life::Orphaned { .. }) || inner.reopening.is_some() {
            return None;
        }
        let gate = Arc::new(Semaphore::new(0));
        inner.reopening = Some(gate.clone());
        Some(DialClaim { session: self.clone(), gate })
    }

    /// Waits (bounded by the backend connect timeout) for a dial under way,
    /// so that a client that returns meanwhile joins the connection it
    /// opens instead of dialing a second one.
    pub(crate) async fn dial_done(&self) {
        let gate = self.lock().reopening.clone();
        if let Some(gate) = gate {
            let wait = self.shared.config.server.backend_connect_timeout + Duration::from_secs(1);
            let _ = tokio::time::timeout(wait, gate.acquire()).await;
        }
    }

    /// Gives an orphaned session no client holds the backend connection
    /// `conn`, lingering as if its client had just left. False (and `conn`
    /// closed) if a client came back first.
    async fn reopen(self: &Arc<Self>, conn: BackendConn) -> bool {
        let meta = {
            let mut inner = self.lock();
            if !matches!(inner.life, Life::Orphaned { .. }) || inner.claims.is_held() {
                drop(inner);
                conn.close();
                return false;
            }
            let life = self.start_link(conn);
            if let Life::Live { linger, .. } = &life {
                linger.send_replace(Some(Instant::now() + self.shared.config.session.linger));
            }
            inner.life = life;
            inner.meta.orphaned_ms = None;
            inner.restart = Some(Box::new(RestartNote { since: self.committed() + 1, early: true, error: None }));
            self.recount(&mut inner);
            inner.meta.clone()
        };
        self.persist(meta).await;
        tracing::info!(session = %self.id, "backend connection reopened before the client returned");
        true
    }

    /// An early reopen failed: the client's resume will dial, and hear why
    /// (unless a client already restarted the session meanwhile).
    fn reopen_failed(&self, error: String) {
        let since = self.committed() + 1;
        let mut inner = self.lock();
        if matches!(inner.life, Life::Orphaned { .. }) {
            inner.restart = Some(Box::new(RestartNote { since, early: false, error: Some(error) }));
        }
    }

    /// Stores the request that opened this session's backend connection,
    /// for an eager reopen after a restart (nothing without a key).
    pub(crate) async fn save_request(&self, request: Option<SavedRequest>) -> Result<(), JournalError> {
        match (request, &self.shared.restart_key) {
            (Some(r), Some(key)) => self.shared.journal.put_request(self.id, r.encode(&self.id, key)).await,
            _ => Ok(()),
        }
    }
}
