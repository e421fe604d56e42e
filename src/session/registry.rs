//! The set of sessions this instance holds, the `limits.max_sessions`
//! capacity, the `limits.max_retained_sessions` cap, and the janitor that
//! enforces retention once a second. The janitor visits only the sessions
//! it purges or trims, found through the [`Index`]'s deadline queues; no
//! periodic task walks every session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::index::Index;
use super::retention::Retained;
use super::{BackendConn, Life, Reopen, Session, Shared, Up};
use crate::journal::{JournalError, RecoveredSession, SessionMeta};
use crate::protocol::{unix_ms, SessionId};

/// How often the janitor runs.
const JANITOR_PERIOD: Duration = Duration::from_secs(1);

/// Every session of this instance.
pub(crate) struct Sessions {
    pub(super) shared: Arc<Shared>,
    map: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// One permit per backend connection (`limits.max_sessions`), reserved
    /// before dialing and held by the session's link task: orphaned and
    /// ended sessions hold no socket and no permit.
    capacity: Arc<Semaphore>,
    /// Sessions by state: the gauges, the attached ones and the retained
    /// ones (oldest first, for the retained cap).
    index: Arc<Index>,
}

/// Candidates looked at beyond the excess in one eviction pass: sessions a
/// client is reading are skipped, at most this many per pass.
const EVICTION_SLACK: usize = 64;

impl Sessions {
    /// A registry holding the sessions found in the journal: open ones become
    /// orphaned (resumable as `restarted`), ended ones stay ended. Records
    /// that now say "orphaned" are written back.
    pub(crate) async fn restore(
        shared: Arc<Shared>,
        recovered: Vec<RecoveredSession>,
    ) -> Result<(Arc<Sessions>, Vec<Reopen>), JournalError> {
        let mut reopen = Vec::new();
        let mut map = HashMap::new();
        let index = Arc::new(Index::new(shared.rt.metrics.clone()));
        let now = Instant::now();
        for r in recovered {
            let mut meta = r.meta;
            let retained = Retained::recovered(meta.trimmed_to, r.last_seq, r.frames, r.bytes);
            let ended = meta.ended.clone();
            // It had a backend connection when tether stopped.
            let was_live = ended.is_none() && meta.orphaned_ms.is_none();
            if was_live {
                meta.orphaned_ms = Some(unix_ms());
                shared.journal.put_meta(r.id, meta.clone()).await?;
            }
            let retired_at = if ended.is_some() { meta.ended_ms } else { meta.orphaned_ms };
            let since = now.checked_sub(age(retired_at)).unwrap_or(now);
            // Past retention already (tether was down, or it purged the
            // session and stopped before the purge was written): purged
            // now, so it is never served, not even in part.
            if now.duration_since(since) > shared.config.journal.retention {
                shared.rt.metrics.trimmed("session_purged", retained.frames);
                shared.journal.purge(r.id).await?;
                continue;
            }
            let life = if ended.is_some() { Life::Ended { since } } else { Life::Orphaned { since } };
            let s = Session::new(r.id, (shared.clone(), index.clone()), life, retained, meta, r.last_seq);
            if let Some(mark) = r.up {
                let _ = s.up.set(Box::new(Up::recovered(mark)));
            }
            if let (true, Some(request), true) = (was_live, r.request, shared.restart_key.is_some()) {
                reopen.push(Reopen { session: s.clone(), request });
            }
            if let Some(info) = ended {
                s.ended.send_replace(Some((r.last_seq, info)));
            }
            map.insert(r.id, s);
        }
        let capacity = Arc::new(Semaphore::new(shared.config.limits.max_sessions));
        Ok((Arc::new(Sessions { shared, map: Mutex::new(map), capacity, index }), reopen))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session, if this instance holds it.
    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    /// Why the journal failed for good, if it did (no session can be served).
    pub(crate) fn journal_failure(&self) -> Option<Arc<str>> {
        self.shared.journal.failure()
    }

    /// True while journal writes wait for disk space (no new session).
    pub(crate) fn journal_disk_full(&self) -> bool {
        self.shared.journal.is_disk_full()
    }

    /// Reserves a backend connection slot, if `limits.max_sessions` allows.
    pub(crate) fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.capacity.clone().try_acquire_owned().ok()
    }

    /// Creates a session around a connected backend and starts its link task.
    pub(crate) async fn create(&self, mut conn: BackendConn) -> Result<Arc<Session>, JournalError> {
        let id = SessionId::generate();
        let meta = SessionMeta::default();
        // The record goes into the journal queue before any frame of the session.
        self.shared.journal.put_meta(id, meta.clone()).await?;
        let saved = conn.saved.take();
        let orphan = Life::Orphaned { since: Instant::now() };
        let parts = (self.shared.clone(), self.index.clone());
        let session = Session::new(id, parts, orphan, Retained::default(), meta, 0);
        {
            let mut inner = session.lock();
            inner.life = session.start_link(conn);
            session.recount(&mut inner);
        }
        session.save_request(saved).await?;
        self.lock().insert(id, session.clone());
        // Each new session will be retired one day: keep the cap here too,
        // not only once a second, however fast sessions come and go.
        self.evict_over_cap().await;
        Ok(session)
    }

    /// Every session created at or before this time (Unix ms) that this
    /// instance no longer holds may have been evicted: its resume is
    /// answered `expired`.
    pub(crate) fn evicted_upto(&self) -> u64 {
        self.index.evicted_upto()
    }

    /// Evicts the oldest orphaned or ended sessions beyond
    /// `limits.max_retained_sessions`, with their frames. Costs what it
    /// evicts, not what the registry holds.
    async fn evict_over_cap(&self) {
        let cap = self.shared.config.limits.max_retained_sessions;
        let mut excess = self.index.retired_len().saturating_sub(cap);
        if excess == 0 {
            return;
        }
        for id in self.index.oldest_retired(excess + EVICTION_SLACK) {
            if excess == 0 {
                break;
            }
            let Some(session) = self.get(&id) else { continue };
            if session.evict().await.is_some() {
                self.lock().remove(&id);
                self.index.evicted(&id);
                self.shared.rt.metrics.sessions_evicted.inc();
                excess -= 1;
            }
        }
    }

    /// Fills the gauges computed at scrape time: the attached clients' lag
    /// (summed over attached sessions only), the retained bytes and the
    /// slots in use. The state gauges and the retained total are kept
    /// current on every change ([`Index`]).
    pub(crate) fn refresh_gauges(&self) {
        let lag: u64 = self.index.attached().iter().filter_map(|id| self.get(id)).map(|s| s.lag()).sum();
        let retained = self.index.retained_bytes();
        let m = &self.shared.rt.metrics;
        m.delivery_lag_frames.set(lag as i64);
        m.journal_retained_bytes.set(retained as i64);
        let in_use = self.shared.config.limits.max_sessions.saturating_sub(self.capacity.available_permits());
        m.backend_connections.set(in_use as i64);
    }

    /// Runs until shutdown: sweeps every session, enforces the disk budget,
    /// and refreshes the disk gauge.
    pub(crate) async fn janitor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(JANITOR_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.rt.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.evict_over_cap().await;
            self.sweep().await;
            let disk = self.shared.journal.disk_bytes().await;
            self.shared.rt.metrics.journal_disk_bytes.set(disk as i64);
        }
    }

    /// One janitor pass: purges the sessions past `journal.retention`,
    /// trims segments past `journal.max_frame_age`, then trims the oldest
    /// segments anywhere while over `journal.disk_budget_bytes`.
    async fn sweep(&self) {
        let now = Instant::now();
        let j = &self.shared.config.journal;
        if let Some(cutoff) = now.checked_sub(j.retention) {
            for id in self.index.retired_before(cutoff) {
                let Some(session) = self.get(&id) else { continue };
                if session.expire(now).await {
                    self.lock().remove(&id);
                }
            }
        }
        if let Some(cutoff) = now.checked_sub(j.max_frame_age) {
            while let Some((_, id)) = self.index.pop_aging(Some(cutoff)) {
                if let Some(session) = self.get(&id) {
                    session.trim_aged(now).await;
                }
            }
        }
        // Each pass either frees a segment or corrects one stale queue key,
        // so this ends after at most twice the segments it frees.
        while self.index.retained_bytes() > j.disk_budget_bytes {
            let Some((queued, id)) = self.index.pop_aging(None) else { break };
            let Some(session) = self.get(&id) else { continue };
            session.trim_for_budget(queued).await;
        }
    }
}

fn age(ms: Option<u64>) -> Duration {
    Duration::from_millis(unix_ms().saturating_sub(ms.unwrap_or_else(unix_ms)))
}
