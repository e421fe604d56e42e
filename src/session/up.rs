//! The upstream guarantee's accounting for one session (docs/PROTOCOL.md
//! §12): which client messages the session's link task took in order
//! (`accepted`), wrote to the backend (`written`), and has the journal
//! record (`acked`, what `up_ack` frames say).
//!
//! Only the link task moves `accepted` and `written`: it is the one
//! consumer of the session's queue toward the backend, so the order it takes
//! messages in is the order they are written, and one high-water mark is
//! all the dedup a session needs. Readers only check contiguity on their own
//! connection. A session whose clients never opted in has no `Up` at all
//! (its idle memory stays as it was).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::journal::UpMark;
use crate::protocol::control::UpWelcome;

/// Marks written to the journal at least once per this many messages of a
/// session whose client keeps sending, so acks flow under a steady stream
/// without a journal write per batch. Three quarters of the clients'
/// default window (1,000 messages): a streaming client has a quarter of it
/// left while the mark commits. At 512 (half) 100 clients of 64 B messages
/// got 3.5 % fewer messages through (docs/BENCHMARKS.md). The other
/// trigger: the client went quiet (see [`Up::set_quiet`]).
pub(super) const MARK_EVERY: u64 = 768;

/// One session's upstream accounting.
pub(crate) struct Up {
    /// Highest seq the link task took from the queue, in order.
    accepted: AtomicU64,
    /// Highest seq written to the backend connection.
    written: AtomicU64,
    /// Highest seq the journal records as written.
    acked: Arc<watch::Sender<u64>>,
    /// Names the current backend connection.
    conn: AtomicU64,
    /// Whether `written` is exactly where writing stopped, for every
    /// message a client may still hold from an earlier backend connection.
    exact: AtomicBool,
    /// A message was taken on the current backend connection: its client
    /// read this connection's welcome (clients send nothing before it).
    taken: AtomicBool,
    /// The client's reader found nothing more to read: the client stopped
    /// sending, perhaps to wait for an ack.
    quiet: AtomicBool,
    /// Tells the link task the client went quiet.
    went_quiet: Notify,
}

impl Up {
    /// Accounting for a session that has not sent anything upstream yet.
    pub(super) fn new() -> Up {
        Up::recovered(UpMark { written: 0, stopped: true })
    }

    /// Accounting from the journal's mark; after a kill -9 (`stopped`
    /// false) the messages after `written` are in doubt.
    pub(super) fn recovered(mark: UpMark) -> Up {
        Up {
            accepted: AtomicU64::new(mark.written),
            written: AtomicU64::new(mark.written),
            acked: Arc::new(watch::Sender::new(mark.written)),
            conn: AtomicU64::new(conn_id()),
            exact: AtomicBool::new(mark.stopped),
            taken: AtomicBool::new(false),
            quiet: AtomicBool::new(true),
            went_quiet: Notify::new(),
        }
    }

    /// A new backend connection starts: the next welcome names it.
    pub(super) fn new_conn(&self) {
        self.conn.store(conn_id(), Ordering::Relaxed);
        self.taken.store(false, Ordering::Relaxed);
    }

    /// The welcome's `up` object.
    pub(crate) fn welcome(&self) -> UpWelcome {
        UpWelcome {
            next: self.accepted.load(Ordering::Acquire) + 1,
            acked: *self.acked.borrow(),
            conn: self.conn.load(Ordering::Relaxed),
            exact: self.exact.load(Ordering::Relaxed),
        }
    }

    /// Subscribes to the acked seq (the pump's `up_ack` frames).
    pub(crate) fn watch_acked(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// The client's reader has (`false`) or has not (`true`) more to read.
    ///
    /// A mark costs a journal write and an ack a wake-up on both sides; one
    /// per batch written cost a third of the throughput of 100 streaming
    /// clients (docs/BENCHMARKS.md). So the link marks when the client
    /// stops sending, which is when a client that waits for an ack (a
    /// full window, one `await` per message) needs it, and otherwise every
    /// [`MARK_EVERY`] messages. Going quiet wakes the link, which may have
    /// found its queue empty just before.
    pub(crate) fn set_quiet(&self, quiet: bool) {
        if self.quiet.swap(quiet, Ordering::AcqRel) != quiet && quiet {
            self.went_quiet.notify_one();
        }
    }

    /// Whether the client stopped sending for now.
    pub(super) fn quiet(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    /// Resolves when the client goes quiet.
    pub(super) async fn went_quiet(&self) {
        self.went_quiet.notified().await
    }

    /// The acked seq now.
    pub(crate) fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    /// What the link does with message `seq`: write it if it is the next
    /// one (and count it accepted), drop it if it was taken before.
    pub(super) fn accept(&self, seq: u64) -> Accept {
        let a = self.accepted.load(Ordering::Relaxed);
        if seq <= a {
            Accept::Duplicate
        } else if seq == a + 1 {
            self.accepted.store(seq, Ordering::Release);
            self.taken.store(true, Ordering::Relaxed);
            Accept::Next
        } else {
            Accept::Gap
        }
    }

    /// Message `seq` was written to the backend.
    pub(super) fn wrote(&self, seq: u64) {
        self.written.store(seq, Ordering::Relaxed);
    }

    /// The highest seq written.
    pub(super) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The backend connection stopped; messages taken but not written are
    /// gone with its queue (the client sends them again from `next`).
    /// `in_flight`: one was handed to the socket and may have been written.
    ///
    /// Doubt left by an earlier connection (a kill -9) stays until a client
    /// has sent on a later one, which proves it read a welcome that reported
    /// the doubt: otherwise a client that missed that welcome would be told
    /// `exact` by the next, and resend messages that may have been written.
    pub(super) fn stopped(&self, in_flight: bool) -> UpMark {
        let written = self.written();
        self.accepted.store(written, Ordering::Release);
        let settled = self.exact.load(Ordering::Relaxed) || self.taken.load(Ordering::Relaxed);
        let exact = !in_flight && settled;
        self.exact.store(exact, Ordering::Relaxed);
        UpMark { written, stopped: exact }
    }

    /// The journal's commit handle for marks.
    pub(super) fn acked_sender(&self) -> Arc<watch::Sender<u64>> {
        self.acked.clone()
    }
}

/// What the link does with a stamped message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accept {
    /// The next seq: write it.
    Next,
    /// Taken before (a resend that overlapped an older connection's): drop.
    Duplicate,
    /// Skips ahead. Readers refuse these (4004), so it cannot happen; if it
    /// did, writing it would hide a loss, so it is dropped.
    Gap,
}

/// A fresh backend connection name: random, below 2^53 so that JavaScript
/// numbers hold it exactly.
fn conn_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("OS random source");
    (u64::from_be_bytes(b) >> 11).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_in_order_and_forgets_the_queue_when_stopped() {
        let up = Up::new();
        assert_eq!(up.welcome().next, 1);
        assert_eq!(up.accept(2), Accept::Gap);
        assert_eq!(up.accept(1), Accept::Next);
        assert_eq!(up.accept(2), Accept::Next);
        assert_eq!(up.accept(1), Accept::Duplicate);
        up.wrote(1);
        assert_eq!(up.welcome().next, 3);
        let conn = up.welcome().conn;
        assert_eq!(up.stopped(true), UpMark { written: 1, stopped: false });
        up.new_conn();
        let w = up.welcome();
        assert_eq!((w.next, w.acked, w.exact), (2, 0, false));
        assert_ne!(w.conn, conn);
        assert!(w.conn < 1 << 53);
    }

    #[test]
    fn going_quiet_wakes_the_link_once_per_pause() {
        use futures_util::FutureExt;
        let up = Up::new();
        assert!(up.quiet(), "no client has sent yet");
        up.set_quiet(false);
        assert!(!up.quiet());
        assert!(up.went_quiet().now_or_never().is_none(), "still sending: no wake-up");
        up.set_quiet(true);
        up.set_quiet(true);
        assert!(up.quiet());
        assert!(up.went_quiet().now_or_never().is_some(), "the pause wakes the link");
        assert!(up.went_quiet().now_or_never().is_none(), "once");
    }

    #[test]
    fn doubt_stays_until_a_client_sent_on_a_later_connection() {
        let up = Up::recovered(UpMark { written: 5, stopped: false });
        // A connection whose client never sent (it may have missed the
        // welcome that reported the doubt) stops cleanly: still in doubt.
        assert_eq!(up.stopped(false), UpMark { written: 5, stopped: false });
        up.new_conn();
        assert!(!up.welcome().exact);
        assert_eq!(up.accept(6), Accept::Next);
        up.wrote(6);
        assert_eq!(up.stopped(false), UpMark { written: 6, stopped: true });
        up.new_conn();
        assert!(up.welcome().exact);
    }
}
