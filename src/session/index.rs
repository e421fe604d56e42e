//! Sessions by state, kept current on every transition so that neither the
//! gauges nor the janitor walk every session: the `tether_sessions`
//! gauges, the attached sessions (whose lag `/metrics` sums), and the
//! orphaned and ended ones in the order they were created, so that
//! `limits.max_retained_sessions` evicts the oldest first. A watermark lets
//! a resume of an evicted session be answered `expired` without keeping a
//! tombstone per session.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntGauge;

use super::StateLabel;
use crate::metrics::Metrics;
use crate::protocol::SessionId;

/// The sessions of an instance by state.
pub(super) struct Index {
    metrics: Arc<Metrics>,
    /// Orphaned and ended sessions, ordered by id, which starts with the
    /// creation time in Unix ms.
    retired: Mutex<BTreeSet<SessionId>>,
    /// Live sessions a client holds.
    attached: Mutex<HashSet<SessionId>>,
    /// The creation time of the newest session evicted so far.
    evicted_upto: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Index {
    /// An empty index that keeps `metrics`' session gauges.
    pub(super) fn new(metrics: Arc<Metrics>) -> Index {
        Index { metrics, retired: Mutex::default(), attached: Mutex::default(), evicted_upto: AtomicU64::new(0) }
    }

    /// Session `id` moved from state `from` to `to` (`None`: not counted,
    /// i.e. not yet created or purged). Called under the session's lock, so
    /// the moves of one session arrive in order.
    pub(super) fn moved(&self, id: SessionId, from: Option<StateLabel>, to: Option<StateLabel>) {
        if from == to {
            return;
        }
        if let Some(f) = from {
            self.gauge(f).dec();
            match f {
                StateLabel::Attached => {
                    lock(&self.attached).remove(&id);
                }
                StateLabel::Orphaned | StateLabel::Ended => {
                    lock(&self.retired).remove(&id);
                }
                StateLabel::Detached => {}
            }
        }
        if let Some(t) = to {
            self.gauge(t).inc();
            match t {
                StateLabel::Attached => {
                    lock(&self.attached).insert(id);
                }
                StateLabel::Orphaned | StateLabel::Ended => {
                    lock(&self.retired).insert(id);
                }
                StateLabel::Detached => {}
            }
        }
    }

    fn gauge(&self, label: StateLabel) -> &IntGauge {
        let g = &self.metrics.sessions;
        match label {
            StateLabel::Attached => &g.attached,
            StateLabel::Detached => &g.detached,
            StateLabel::Orphaned => &g.orphaned,
            StateLabel::Ended => &g.ended,
        }
    }

    /// How many sessions are orphaned or ended.
    pub(super) fn retired_len(&self) -> usize {
        lock(&self.retired).len()
    }

    /// The `n` oldest orphaned or ended sessions.
    pub(super) fn oldest_retired(&self, n: usize) -> Vec<SessionId> {
        lock(&self.retired).iter().take(n).copied().collect()
    }

    /// The sessions a client holds.
    pub(super) fn attached(&self) -> Vec<SessionId> {
        lock(&self.attached).iter().copied().collect()
    }

    /// Records that `id` was evicted.
    pub(super) fn evicted(&self, id: &SessionId) {
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
    fn moves_keep_gauges_and_order() {
        let metrics = Arc::new(Metrics::new());
        let ix = Index::new(metrics.clone());
        for (ms, tail) in [(30, 1), (10, 2), (20, 3)] {
            ix.moved(id(ms, tail), None, Some(StateLabel::Attached));
            ix.moved(id(ms, tail), Some(StateLabel::Attached), Some(StateLabel::Ended));
        }
        ix.moved(id(40, 4), None, Some(StateLabel::Attached));
        assert_eq!(ix.oldest_retired(2), vec![id(10, 2), id(20, 3)]);
        assert_eq!((metrics.sessions.ended.get(), metrics.sessions.attached.get()), (3, 1));
        assert_eq!(ix.attached(), vec![id(40, 4)]);
        ix.moved(id(10, 2), Some(StateLabel::Ended), None);
        ix.evicted(&id(10, 2));
        assert_eq!((ix.retired_len(), ix.evicted_upto(), metrics.sessions.ended.get()), (2, 10, 2));
    }
}
