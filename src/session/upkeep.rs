//! The janitor's work on one session (`Sessions::janitor` decides when):
//! purge it after `journal.retention`, evict it for
//! `limits.max_retained_sessions`, and trim it by `journal.max_frame_age`
//! and for `journal.disk_budget_bytes`. Each decision is taken under the
//! session's lock, so no resume attaches to what is being removed; the
//! journal operation follows.

use std::time::Instant;

use super::{Life, Session};
use crate::journal::JournalError;

impl Session {
    /// Purges the session if it has been orphaned or ended for
    /// `journal.retention` with no client; true if it did.
    pub(crate) async fn expire(&self, now: Instant) -> bool {
        let retention = self.shared.config.journal.retention;
        let frames = {
            let mut inner = self.lock();
            let expired = !inner.claims.is_held()
                && match inner.life {
                    Life::Orphaned { since } | Life::Ended { since } => now.duration_since(since) > retention,
                    Life::Live { .. } | Life::Purged => false,
                };
            if !expired {
                return false;
            }
            // Under the session lock, so no resume can attach after this.
            inner.life = Life::Purged;
            self.recount(&mut inner);
            inner.retained.frames
        };
        self.shared.rt.metrics.trimmed("session_purged", frames);
        tracing::info!(session = %self.id, "session purged after journal.retention");
        self.journal_op(self.shared.journal.purge(self.id).await);
        true
    }

    /// Trims the segments older than `journal.max_frame_age`; called when
    /// the aging queue says the oldest may be, and queues the session again
    /// under its new oldest segment.
    pub(crate) async fn trim_aged(&self, now: Instant) {
        let trim = {
            let mut inner = self.lock();
            inner.aging = false;
            if inner.counted.is_none() {
                return;
            }
            let trim = inner.retained.enforce_age(self.shared.config.journal.max_frame_age, now);
            let trim = trim.map(|t| self.note_trim(&mut inner, t));
            self.recount(&mut inner);
            trim
        };
        if let Some(meta) = trim {
            self.journal_op(self.shared.journal.trim(self.id, meta.trimmed_to, meta).await);
        }
    }

    /// Evicted for `limits.max_retained_sessions`: purged now, unless it
    /// has a backend connection again or a client is reading it. The frames
    /// it still retained, if it was evicted.
    pub(crate) async fn evict(&self) -> Option<u64> {
        let frames = {
            let mut inner = self.lock();
            let retired = matches!(inner.life, Life::Orphaned { .. } | Life::Ended { .. });
            if !retired || inner.claims.is_held() {
                return None;
            }
            // Under the session lock, so no resume can attach after this.
            inner.life = Life::Purged;
            self.recount(&mut inner);
            inner.retained.frames
        };
        self.shared.rt.metrics.trimmed("session_evicted", frames);
        tracing::info!(session = %self.id, "session evicted (limits.max_retained_sessions)");
        self.journal_op(self.shared.journal.purge(self.id).await);
        Some(frames)
    }

    /// Trims the oldest segment for the disk budget, if it was last written
    /// no later than `queued` (the aging queue's key for the session, which
    /// it has just popped); else queues the session again under its real
    /// age, so the budget always trims the instance's oldest segment.
    pub(crate) async fn trim_for_budget(&self, queued: Instant) {
        let meta = {
            let mut inner = self.lock();
            inner.aging = false;
            let oldest = if inner.counted.is_some() { inner.retained.oldest() } else { None };
            let result = match oldest {
                None => None,
                Some(t) if t > queued => None,
                Some(_) => inner.retained.trim_oldest().map(|t| self.note_trim(&mut inner, t)),
            };
            self.recount(&mut inner);
            result
        };
        if let Some(meta) = meta {
            self.journal_op(self.shared.journal.trim(self.id, meta.trimmed_to, meta).await);
        }
    }

    /// Logs a janitor operation the journal did not take (it is closing).
    fn journal_op(&self, result: Result<(), JournalError>) {
        if let Err(e) = result {
            tracing::warn!(session = %self.id, error = %e, "janitor journal operation not queued");
        }
    }
}
