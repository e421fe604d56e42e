//! Sessions by state and by deadline, kept current on every transition so
//! that neither the gauges nor the janitor walk every session:
//!
//! - the `tether_sessions` gauges and the retained-bytes total;
//! - the attached sessions (whose lag `/metrics` sums);
//! - the orphaned and ended ones in the order they were created, so that
//!   `limits.max_retained_sessions` evicts the oldest first, and in the
//!   order they retired, so the janitor visits only those past
//!   `journal.retention`;
//! - the sessions that retain frames, by the age of their oldest segment,
//!   so `journal.max_frame_age` and `journal.disk_budget_bytes` visit only
//!   the sessions they trim.
//!
//! A watermark lets a resume of an evicted session be answered `expired`
//! without keeping a tombstone per session.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus::IntGauge;

use super::StateLabel;
use crate::metrics::Metrics;
use crate::protocol::SessionId;

/// How a session is counted: its state and, once orphaned or ended, since
/// when (the start of its `journal.retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    /// The gauge it counts in.
    pub(super) label: StateLabel,
    /// When it retired (orphaned and ended only).
    pub(super) retired: Option<Instant>,
}

/// The sessions of an instance by state.
pub(super) struct Index {
    metrics: Arc<Metrics>,
    /// Orphaned and ended sessions, ordered by id, which starts with the
    /// creation time in Unix ms.
    retired: Mutex<BTreeSet<SessionId>>,
    /// The same sessions by the time they retired.
    expiring: Mutex<BTreeSet<(Instant, SessionId)>>,
    /// Sessions that may retain frames, keyed by a time at or before the
    /// last write to their oldest segment. A key goes stale (too early) as
    /// that segment is written to or trimmed; whoever pops it re-queues the
    /// session under its real key, so the queue costs one entry per session
    /// and one update per trim, never one per frame.
    aging: Mutex<BTreeSet<(Instant, SessionId)>>,
    /// Payload bytes retained across sessions.
    retained_bytes: AtomicU64,
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
        Index {
            metrics,
            retired: Mutex::default(),
            expiring: Mutex::default(),
            aging: Mutex::default(),
            retained_bytes: AtomicU64::new(0),
            attached: Mutex::default(),
            evicted_upto: AtomicU64::new(0),
        }
    }

    /// Session `id` moved from state `from` to `to` (`None`: not counted,
    /// i.e. not yet created or purged). Called under the session's lock, so
    /// the moves of one session arrive in order.
    pub(super) fn moved(&self, id: SessionId, from: Option<Counted>, to: Option<Counted>) {
        if from == to {
            return;
        }
        if let Some(f) = from {
            self.gauge(f.label).dec();
            match f.label {
                StateLabel::Attached => {
                    lock(&self.attached).remove(&id);
                }
                StateLabel::Orphaned | StateLabel::Ended => {
                    lock(&self.retired).remove(&id);
                }
                StateLabel::Detached => {}
            }
            if let Some(since) = f.retired {
                lock(&self.expiring).remove(&(since, id));
            }
        }
        if let Some(t) = to {
            self.gauge(t.label).inc();
            match t.label {
                StateLabel::Attached => {
                    lock(&self.attached).insert(id);
                }
                StateLabel::Orphaned | StateLabel::Ended => {
                    lock(&self.retired).insert(id);
                }
                StateLabel::Detached => {}
            }
            if let Some(since) = t.retired {
                lock(&self.expiring).insert((since, id));
            }
        }
    }

    /// A session's retained bytes went from `before` to `after`.
    pub(super) fn resized(&self, before: u64, after: u64) {
        if after >= before {
            self.retained_bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.retained_bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Payload bytes retained across sessions.
    pub(super) fn retained_bytes(&self) -> u64 {
        self.retained_bytes.load(Ordering::Relaxed)
    }

    /// Retired sessions that retired before `cutoff`, oldest first.
    pub(super) fn retired_before(&self, cutoff: Instant) -> Vec<SessionId> {
        lock(&self.expiring).range(..(cutoff, SessionId([0; 16]))).map(|(_, id)| *id).collect()
    }

    /// Queues `id` under `key`, a time at or before the last write to its
    /// oldest segment.
    pub(super) fn queue_aging(&self, key: Instant, id: SessionId) {
        lock(&self.aging).insert((key, id));
    }

    /// Takes the queued session with the earliest key if that key is
    /// before `cutoff` (`None`: any key).
    pub(super) fn pop_aging(&self, cutoff: Option<Instant>) -> Option<(Instant, SessionId)> {
        let mut q = lock(&self.aging);
        let first = *q.first()?;
        if cutoff.is_some_and(|c| first.0 >= c) {
            return None;
        }
        q.pop_first()
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

    fn live(label: StateLabel) -> Option<Counted> {
        Some(Counted { label, retired: None })
    }

    fn retired(label: StateLabel, since: Instant) -> Option<Counted> {
        Some(Counted { label, retired: Some(since) })
    }

    #[test]
    fn moves_keep_gauges_and_order() {
        let metrics = Arc::new(Metrics::new());
        let ix = Index::new(metrics.clone());
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        // Created in the order 10, 20, 30; retired in the order 30, 10, 20.
        for (ms, tail, retired_at) in [(30, 1, 1), (10, 2, 2), (20, 3, 3)] {
            ix.moved(id(ms, tail), None, live(StateLabel::Attached));
            ix.moved(id(ms, tail), live(StateLabel::Attached), retired(StateLabel::Ended, at(retired_at)));
        }
        ix.moved(id(40, 4), None, live(StateLabel::Attached));
        assert_eq!(ix.oldest_retired(2), vec![id(10, 2), id(20, 3)]);
        assert_eq!(ix.retired_before(at(3)), vec![id(30, 1), id(10, 2)]);
        assert_eq!(ix.retired_before(at(1)), vec![]);
        assert_eq!((metrics.sessions.ended.get(), metrics.sessions.attached.get()), (3, 1));
        assert_eq!(ix.attached(), vec![id(40, 4)]);
        ix.moved(id(10, 2), retired(StateLabel::Ended, at(2)), None);
        ix.evicted(&id(10, 2));
        assert_eq!((ix.retired_len(), ix.evicted_upto(), metrics.sessions.ended.get()), (2, 10, 2));
        assert_eq!(ix.retired_before(at(9)), vec![id(30, 1), id(20, 3)]);
    }

    #[test]
    fn aging_pops_in_key_order_up_to_the_cutoff() {
        let ix = Index::new(Arc::new(Metrics::new()));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        ix.queue_aging(at(5), id(1, 1));
        ix.queue_aging(at(3), id(2, 2));
        assert_eq!(ix.pop_aging(Some(at(3))), None);
        assert_eq!(ix.pop_aging(Some(at(4))), Some((at(3), id(2, 2))));
        assert_eq!(ix.pop_aging(Some(at(5))), None);
        assert_eq!(ix.pop_aging(None), Some((at(5), id(1, 1))));
        assert_eq!(ix.pop_aging(None), None);
        ix.resized(0, 100);
        ix.resized(100, 40);
        ix.resized(0, 2);
        assert_eq!(ix.retained_bytes(), 42);
    }
}
