//! The set of sessions this instance holds, the `limits.max_sessions`
//! capacity, the `limits.max_retained_sessions` cap, and the janitor that
//! sweeps them once a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::index::Index;
use super::retention::Retained;
use super::{BackendConn, Life, Session, Shared, Swept};
use crate::journal::{JournalError, RecoveredSession, SessionMeta};
use crate::protocol::{unix_ms, SessionId};

/// How often the janitor runs.
const JANITOR_PERIOD: Duration = Duration::from_secs(1);

/// Every session of this instance.
pub(crate) struct Sessions {
    shared: Arc<Shared>,
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
    ) -> Result<Arc<Sessions>, JournalError> {
        let mut map = HashMap::new();
        let index = Arc::new(Index::new(shared.rt.metrics.clone()));
        let now = Instant::now();
        for r in recovered {
            let mut meta = r.meta;
            let retained = Retained::recovered(meta.trimmed_to, r.last_seq, r.frames, r.bytes);
            let ended = meta.ended.clone();
            let life = if ended.is_some() {
                Life::Ended { since: now.checked_sub(age(meta.ended_ms)).unwrap_or(now) }
            } else {
                if meta.orphaned_ms.is_none() {
                    meta.orphaned_ms = Some(unix_ms());
                    shared.journal.put_meta(r.id, meta.clone()).await?;
                }
                Life::Orphaned { since: now.checked_sub(age(meta.orphaned_ms)).unwrap_or(now) }
            };
            let s = Session::new(r.id, (shared.clone(), index.clone()), life, retained, meta, r.last_seq);
            if let Some(info) = ended {
                s.ended.send_replace(Some((r.last_seq, info)));
            }
            map.insert(r.id, s);
        }
        let capacity = Arc::new(Semaphore::new(shared.config.limits.max_sessions));
        Ok(Arc::new(Sessions { shared, map: Mutex::new(map), capacity, index }))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.lock().values().cloned().collect()
    }

    /// The session, if this instance holds it.
    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    /// Why the journal failed for good, if it did (no session can be served).
    pub(crate) fn journal_failure(&self) -> Option<Arc<str>> {
        self.shared.journal.failure()
    }

    /// Reserves a backend connection slot, if `limits.max_sessions` allows.
    pub(crate) fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.capacity.clone().try_acquire_owned().ok()
    }

    /// Creates a session around a connected backend and starts its link task.
    pub(crate) async fn create(&self, conn: BackendConn) -> Result<Arc<Session>, JournalError> {
        let id = SessionId::generate();
        let meta = SessionMeta::default();
        // The record goes into the journal queue before any frame of the session.
        self.shared.journal.put_meta(id, meta.clone()).await?;
        let orphan = Life::Orphaned { since: Instant::now() };
        let parts = (self.shared.clone(), self.index.clone());
        let session = Session::new(id, parts, orphan, Retained::default(), meta, 0);
        {
            let mut inner = session.lock();
            inner.life = session.start_link(conn);
            session.recount(&mut inner);
        }
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
    /// (summed over attached sessions only) and the slots in use. The state
    /// gauges are kept current on every transition ([`Index`]), and
    /// `tether_journal_retained_bytes` on every append, trim and purge
    /// (`Session::journal_frames`, `Session::note_trim`, `Session::recount`).
    pub(crate) fn refresh_gauges(&self) {
        let lag: u64 = self.index.attached().iter().filter_map(|id| self.get(id)).map(|s| s.lag()).sum();
        let m = &self.shared.rt.metrics;
        m.delivery_lag_frames.set(lag as i64);
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

    /// One janitor pass.
    async fn sweep(&self) {
        let now = Instant::now();
        let mut kept = self.all();
        let mut purged = Vec::new();
        for session in &kept {
            match session.sweep(now).await {
                Swept::Kept => {}
                Swept::Purged => purged.push(session.id),
            }
        }
        // The running total of retained payload bytes, kept per append and trim.
        let mut total = self.shared.rt.metrics.journal_retained_bytes.get().max(0) as u64;
        if !purged.is_empty() {
            let mut map = self.lock();
            for id in &purged {
                map.remove(id);
            }
            drop(map);
            kept.retain(|s| !purged.contains(&s.id));
        }
        // Over the disk budget: trim the oldest segment anywhere, repeatedly.
        while total > self.shared.config.journal.disk_budget_bytes {
            let oldest = kept.iter().filter_map(|s| s.oldest_segment().map(|t| (t, s))).min_by_key(|(t, _)| *t);
            let Some((_, victim)) = oldest else { break };
            let Some(freed) = victim.trim_oldest().await else { break };
            total = total.saturating_sub(freed);
        }
    }
}

fn age(ms: Option<u64>) -> Duration {
    Duration::from_millis(unix_ms().saturating_sub(ms.unwrap_or_else(unix_ms)))
}
