//! The set of sessions this instance holds, and the janitor that enforces
//! age, disk budget and end-of-retention purges.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::retention::Retained;
use super::{BackendSocket, Life, Session, Shared, StateLabel};
use crate::journal::{RecoveredSession, SessionMeta};
use crate::protocol::{unix_ms, SessionId};

/// How often the janitor runs.
const JANITOR_PERIOD: Duration = Duration::from_secs(1);

/// The session is at `limits.max_sessions`.
#[derive(Debug, thiserror::Error)]
#[error("tether holds its maximum of {0} sessions")]
pub struct Full(pub usize);

/// Every session of this instance.
pub struct Sessions {
    shared: Arc<Shared>,
    map: Mutex<HashMap<SessionId, Arc<Session>>>,
}

impl Sessions {
    /// A registry holding the sessions found in the journal: open ones become
    /// orphaned (resumable as `restarted`), ended ones stay ended.
    pub fn restore(
        shared: Arc<Shared>,
        recovered: Vec<RecoveredSession>,
    ) -> (Arc<Sessions>, Vec<(SessionId, SessionMeta)>) {
        let mut map = HashMap::new();
        let mut rewrite = Vec::new();
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
                    rewrite.push((r.id, meta.clone()));
                }
                Life::Orphaned { since: now.checked_sub(age(meta.orphaned_ms)).unwrap_or(now) }
            };
            let s = Session::new(r.id, shared.clone(), life, retained, meta, r.last_seq);
            if let Some(info) = ended {
                s.ended.send_replace(Some((r.last_seq, info)));
            }
            map.insert(r.id, s);
        }
        (Arc::new(Sessions { shared, map: Mutex::new(map) }), rewrite)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session, if this instance holds it.
    pub fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    /// True if another backend connection would exceed `limits.max_sessions`
    /// (orphaned and ended sessions hold no sockets and do not count).
    pub fn is_full(&self) -> bool {
        self.shared.live.load(Ordering::Relaxed) >= self.shared.max_sessions
    }

    /// Creates a session around a connected backend and starts its task.
    pub async fn create(&self, backend: BackendSocket) -> Result<Arc<Session>, Full> {
        let id = SessionId::generate();
        let meta = SessionMeta::default();
        if self.is_full() {
            return Err(Full(self.shared.max_sessions));
        }
        // The record goes into the journal queue before any frame of the session.
        let _ = self.shared.journal.put_meta(id, meta.clone()).await;
        let orphan = Life::Orphaned { since: Instant::now() };
        let session = Session::new(id, self.shared.clone(), orphan, Retained::default(), meta, 0);
        {
            let mut inner = session.lock();
            inner.life = session.start_backend(backend);
        }
        self.lock().insert(id, session.clone());
        Ok(session)
    }

    /// Counts sessions by state and sums attached clients' lag into the gauges.
    pub fn refresh_gauges(&self) {
        let sessions: Vec<Arc<Session>> = self.lock().values().cloned().collect();
        let (mut att, mut det, mut orph, mut ended, mut lag) = (0, 0, 0, 0, 0u64);
        let mut retained = 0u64;
        for s in &sessions {
            let (state, l) = s.state();
            match state {
                StateLabel::Attached => att += 1,
                StateLabel::Detached => det += 1,
                StateLabel::Orphaned => orph += 1,
                StateLabel::Ended => ended += 1,
            }
            lag += l;
            retained += s.lock().retained.bytes;
        }
        let m = &self.shared.metrics;
        m.sessions.with_label_values(&["attached"]).set(att);
        m.sessions.with_label_values(&["detached"]).set(det);
        m.sessions.with_label_values(&["orphaned"]).set(orph);
        m.sessions.with_label_values(&["ended"]).set(ended);
        m.delivery_lag_frames.set(lag as i64);
        m.journal_retained_bytes.set(retained as i64);
    }

    /// Runs until shutdown: trims by age and disk budget, purges sessions
    /// past `journal.retention`, and refreshes the disk gauge.
    pub async fn janitor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(JANITOR_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sweep().await;
            let disk = self.shared.journal.disk_bytes().await;
            self.shared.metrics.journal_disk_bytes.set(disk as i64);
        }
    }

    /// One janitor pass.
    pub async fn sweep(&self) {
        let now = Instant::now();
        let sessions: Vec<Arc<Session>> = self.lock().values().cloned().collect();
        let s = &self.shared;
        let mut total = 0u64;
        for session in &sessions {
            let (trim, purge, purged_frames) = {
                let mut inner = session.lock();
                let purge = inner.current.is_none()
                    && match inner.life {
                        Life::Orphaned { since } | Life::Ended { since } => now.duration_since(since) > s.retention,
                        Life::Live { .. } => false,
                    };
                // Under the session lock, so no resume can attach after this.
                inner.purged = purge;
                let trim = if purge { None } else { inner.retained.enforce_age(s.max_frame_age, now) };
                if !purge {
                    total += inner.retained.bytes;
                }
                let frames = inner.retained.frames;
                (trim.map(|t| session.note_trim(&mut inner, t)), purge, frames)
            };
            if purge {
                self.lock().remove(&session.id);
                s.metrics.trimmed_frames.with_label_values(&["session_purged"]).inc_by(purged_frames);
                tracing::info!(session = %session.id, "session purged after journal.retention");
                let _ = s.journal.purge(session.id).await;
            } else if let Some(meta) = trim {
                let _ = s.journal.trim(session.id, meta.trimmed_to, meta).await;
            }
        }
        // Over the disk budget: trim the oldest segment anywhere, repeatedly.
        while total > s.disk_budget_bytes {
            let oldest = sessions
                .iter()
                .filter_map(|x| x.lock().retained.oldest().map(|t| (t, x)))
                .min_by_key(|(t, _)| *t)
                .map(|(_, x)| x.clone());
            let Some(victim) = oldest else { break };
            let meta = {
                let mut inner = victim.lock();
                let Some(t) = inner.retained.trim_oldest() else { break };
                total = total.saturating_sub(t.bytes);
                victim.note_trim(&mut inner, t)
            };
            let _ = s.journal.trim(victim.id, meta.trimmed_to, meta).await;
        }
    }
}

fn age(ms: Option<u64>) -> Duration {
    Duration::from_millis(unix_ms().saturating_sub(ms.unwrap_or_else(unix_ms)))
}
