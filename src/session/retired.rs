//! Sessions that hold no backend connection (orphaned or ended), in the
//! order they were created, so that `limits.max_retained_sessions` evicts
//! the oldest first without walking every session, and a watermark that
//! lets a resume of an evicted session be answered `expired` without
//! keeping a tombstone per session.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::protocol::SessionId;

/// The orphaned and ended sessions of an instance, oldest first.
#[derive(Debug, Default)]
pub(super) struct Retired {
    /// Ordered by id, which starts with the creation time in Unix ms.
    ids: Mutex<BTreeSet<SessionId>>,
    /// The creation time of the newest session evicted so far.
    evicted_upto: AtomicU64,
}

impl Retired {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<SessionId>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session lost its backend connection (orphaned or ended).
    pub(super) fn insert(&self, id: SessionId) {
        self.lock().insert(id);
    }

    /// The session has a backend connection again, or is gone.
    pub(super) fn remove(&self, id: &SessionId) {
        self.lock().remove(id);
    }

    /// How many sessions are retired.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The `n` oldest retired sessions.
    pub(super) fn oldest(&self, n: usize) -> Vec<SessionId> {
        self.lock().iter().take(n).copied().collect()
    }

    /// Records that `id` was evicted.
    pub(super) fn evicted(&self, id: &SessionId) {
        self.remove(id);
        self.evicted_upto.fetch_max(id.created_ms(), Ordering::Relaxed);
    }

    /// Every session created at or before this time (Unix ms) that this
    /// instance no longer holds may have been evicted.
    pub(super) fn evicted_upto(&self) -> u64 {
        self.evicted_upto.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, tail: u8) -> SessionId {
        let mut b = [tail; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        SessionId(b)
    }

    #[test]
    fn oldest_first_and_watermark() {
        let r = Retired::default();
        for (ms, tail) in [(30, 1), (10, 2), (20, 3)] {
            r.insert(id(ms, tail));
        }
        assert_eq!(r.oldest(2), vec![id(10, 2), id(20, 3)]);
        r.evicted(&id(20, 3));
        r.evicted(&id(10, 2));
        assert_eq!((r.len(), r.evicted_upto()), (1, 20));
    }
}
