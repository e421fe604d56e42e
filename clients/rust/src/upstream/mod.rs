//! The upstream guarantee (docs/PROTOCOL.md §12, opt-in): every client →
//! backend message is stamped with a per-session seq and kept until tether
//! acks it (`up_ack`: written to the backend connection), resent after a
//! reconnect from the welcome's `up.next`, and failed with a reason when it
//! will not be written.

mod sender;
mod types;

pub use sender::{Receipt, Sender};
pub use types::{InDoubt, UpMessage, Upstream, UpstreamError, UpstreamReason, UpstreamStats};

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};
use tokio_tungstenite::tungstenite;

use crate::frame::{self, UpWelcome};
use crate::Payload;

type Done = oneshot::Sender<Result<(), UpstreamError>>;

pub(crate) enum Push {
    Full(Payload),
    Stopped(UpstreamError),
}

/// What the client and its connection task share.
pub(crate) struct UpShared {
    buf: Mutex<Buf>,
    /// Woken when the buffer made room or stopped.
    pub(crate) room: Notify,
    /// Woken when there is something to send.
    pub(crate) work: Notify,
}

impl fmt::Debug for UpShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The counters, not every payload.
        f.debug_struct("UpShared").field("stats", &self.buf().stats()).finish_non_exhaustive()
    }
}

impl UpShared {
    pub(crate) fn new(cfg: Upstream) -> UpShared {
        UpShared { buf: Mutex::new(Buf::new(cfg)), room: Notify::new(), work: Notify::new() }
    }
    pub(crate) fn buf(&self) -> MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Runs `f` on the buffer, then wakes senders waiting for room.
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut Buf) -> T) -> T {
        let out = f(&mut self.buf());
        self.room.notify_waiters();
        out
    }
}

#[derive(Debug)]
struct Entry {
    payload: Payload,
    /// The seq it carries on the current numbering; `None`: (re)send it.
    seq: Option<u64>,
    /// The seq it was last sent with, for errors.
    last_seq: Option<u64>,
    /// The backend connection (`up.conn`) it was last sent for.
    conn: Option<u64>,
    done: Option<Done>,
}

impl Entry {
    fn finish(mut self, result: Result<(), UpstreamReason>) {
        if let Some(done) = self.done.take() {
            let payload = std::mem::replace(&mut self.payload, Payload::Text(String::new()));
            let _ = done.send(result.map_err(|reason| UpstreamError { reason, seq: self.last_seq, payload }));
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let payload = std::mem::replace(&mut self.payload, Payload::Text(String::new()));
            let _ = done.send(Err(UpstreamError { reason: UpstreamReason::Closed, seq: self.last_seq, payload }));
        }
    }
}

fn len(p: &Payload) -> usize {
    match p {
        Payload::Text(t) => t.len(),
        Payload::Binary(b) => b.len(),
    }
}

/// The unacked messages, in seq order: `entries[..stamped]` carry a seq of
/// the current numbering (sent, waiting for their ack), the rest are to be
/// sent, stamped from `next`.
#[derive(Debug)]
pub(crate) struct Buf {
    cfg: Upstream,
    entries: VecDeque<Entry>,
    stamped: usize,
    bytes: usize,
    next: u64,
    acked: u64,
    /// The backend connection of the live, welcomed connection: nothing is
    /// sent without one.
    live: Option<u64>,
    last_conn: Option<u64>,
    stopped: Option<UpstreamReason>,
    stats: UpstreamStats,
}

impl Buf {
    fn new(cfg: Upstream) -> Buf {
        Buf {
            cfg,
            entries: VecDeque::new(),
            stamped: 0,
            bytes: 0,
            next: 1,
            acked: 0,
            live: None,
            last_conn: None,
            stopped: None,
            stats: UpstreamStats::default(),
        }
    }

    /// Queues a message if there is room (a message larger than the byte
    /// bound fits an empty buffer).
    pub(crate) fn try_push(&mut self, payload: Payload) -> Result<oneshot::Receiver<Result<(), UpstreamError>>, Push> {
        if let Some(reason) = self.stopped {
            return Err(Push::Stopped(UpstreamError { reason, seq: None, payload }));
        }
        let n = len(&payload);
        let fits = self.entries.len() < self.cfg.max_unacked
            && (self.entries.is_empty() || self.bytes + n <= self.cfg.max_unacked_bytes);
        if !fits {
            return Err(Push::Full(payload));
        }
        let (tx, rx) = oneshot::channel();
        self.bytes += n;
        self.entries.push_back(Entry { payload, seq: None, last_seq: None, conn: None, done: Some(tx) });
        Ok(rx)
    }

    /// A welcome with `up`; `other_session`: it is not the session the sent
    /// messages were stamped for (a new one after a reset, or a gap's new
    /// session). (Tokens cannot tell: they change on every resume.) Returns
    /// the messages to report in doubt ([`InDoubt::Report`]).
    pub(crate) fn welcome(&mut self, other_session: bool, up: UpWelcome) -> Vec<UpMessage> {
        enum Fate {
            Done,
            Pending,
            Resend,
            Doubt,
        }
        // Seqs of another session mean nothing to this one.
        let mut report = Vec::new();
        let old = std::mem::take(&mut self.entries);
        let mut stamped = 0;
        for (i, mut e) in old.into_iter().enumerate() {
            let seq = match e.seq {
                Some(seq) if i < self.stamped => seq,
                _ => {
                    self.entries.push_back(e);
                    continue;
                }
            };
            let fate = if other_session {
                Fate::Doubt
            } else if seq <= up.acked {
                Fate::Done
            } else if seq < up.next {
                // Accepted: queued or written on the backend connection,
                // the old one if it changed; tether acks them.
                Fate::Pending
            } else if e.conn == Some(up.conn) || up.exact {
                // Never reached tether, or never written anywhere.
                Fate::Resend
            } else {
                Fate::Doubt
            };
            let fate = match fate {
                Fate::Doubt => {
                    self.stats.in_doubt += 1;
                    match self.cfg.in_doubt {
                        InDoubt::Report => {
                            report.push(UpMessage { seq, payload: e.payload.clone() });
                            self.bytes -= len(&e.payload);
                            e.finish(Err(UpstreamReason::InDoubt));
                            continue;
                        }
                        InDoubt::Drop => {
                            self.stats.dropped += 1;
                            self.bytes -= len(&e.payload);
                            e.finish(Err(UpstreamReason::Dropped));
                            continue;
                        }
                        InDoubt::Resend => Fate::Resend,
                    }
                }
                f => f,
            };
            match fate {
                Fate::Done => {
                    self.stats.acked += 1;
                    self.bytes -= len(&e.payload);
                    e.finish(Ok(()));
                }
                Fate::Pending => {
                    stamped += 1;
                    self.entries.push_back(e);
                }
                _ => {
                    self.stats.resends += 1;
                    e.seq = None;
                    self.entries.push_back(e);
                }
            }
        }
        self.stamped = stamped;
        self.next = up.next;
        self.acked = if other_session { up.acked } else { self.acked.max(up.acked) };
        self.live = Some(up.conn);
        self.last_conn = Some(up.conn);
        self.stats.acked_seq = self.acked;
        report
    }

    /// Stamps up to `max` unsent messages for the live connection.
    pub(crate) fn take(&mut self, max: usize) -> Vec<tungstenite::Message> {
        let Some(conn) = self.live else { return Vec::new() };
        let mut out = Vec::new();
        while out.len() < max && self.stamped < self.entries.len() {
            let e = &mut self.entries[self.stamped];
            e.seq = Some(self.next);
            e.last_seq = e.seq;
            e.conn = Some(conn);
            out.push(frame::stamp(self.next, &e.payload));
            self.next += 1;
            self.stamped += 1;
        }
        self.stats.sent += out.len() as u64;
        out
    }

    /// True if [`Buf::take`] has something to send.
    #[cfg(test)]
    fn has_unsent(&self) -> bool {
        self.live.is_some() && self.stamped < self.entries.len()
    }

    /// `up_ack`: everything up to `seq` was written.
    pub(crate) fn ack(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        self.stats.acked_seq = self.acked;
        while self.stamped > 0 && self.entries.front().and_then(|e| e.seq).is_some_and(|s| s <= seq) {
            let e = self.entries.pop_front().expect("front");
            self.stamped -= 1;
            self.bytes -= len(&e.payload);
            self.stats.acked += 1;
            e.finish(Ok(()));
        }
    }

    /// The session ended; `end.up.acked` says what was written. Without it,
    /// what was sent and not acked is in doubt.
    pub(crate) fn end(&mut self, acked: Option<u64>) {
        if let Some(w) = acked {
            self.ack(w);
        }
        let in_doubt = if acked.is_some() { 0 } else { self.stamped };
        self.stopped.get_or_insert(UpstreamReason::Ended);
        for (i, e) in std::mem::take(&mut self.entries).into_iter().enumerate() {
            if i < in_doubt {
                self.stats.in_doubt += 1;
                e.finish(Err(UpstreamReason::InDoubt));
            } else {
                self.stats.ended += 1;
                e.finish(Err(UpstreamReason::Ended));
            }
        }
        self.stamped = 0;
        self.bytes = 0;
    }

    /// Nothing waits for an ack.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The connection dropped: nothing is sent until the next welcome.
    pub(crate) fn disconnected(&mut self) {
        self.live = None;
    }

    /// tether closed the connection with 4003 or 4004.
    pub(crate) fn rejected(&mut self) {
        self.stats.rejected += 1;
    }

    /// The client stopped: fail what is left.
    pub(crate) fn stop(&mut self, reason: UpstreamReason) {
        self.stopped.get_or_insert(reason);
        self.live = None;
        for e in std::mem::take(&mut self.entries) {
            e.finish(Err(reason));
        }
        self.stamped = 0;
        self.bytes = 0;
    }

    pub(crate) fn stats(&self) -> UpstreamStats {
        UpstreamStats {
            unacked: self.entries.len(),
            unacked_bytes: self.bytes,
            next_seq: self.next,
            conn: self.last_conn,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rx = oneshot::Receiver<Result<(), UpstreamError>>;

    fn buf(in_doubt: InDoubt) -> Buf {
        Buf::new(Upstream { in_doubt, ..Upstream::default() })
    }

    fn push(b: &mut Buf, n: usize) -> Vec<Rx> {
        (0..n).map(|_| b.try_push(Payload::Text(format!("p{}", b.entries.len() + 1))).ok().unwrap()).collect()
    }

    fn up(next: u64, acked: u64, conn: u64, exact: bool) -> UpWelcome {
        UpWelcome { next, acked, conn, exact }
    }

    fn texts(msgs: Vec<tungstenite::Message>) -> Vec<String> {
        msgs.into_iter().map(|m| m.into_text().unwrap().to_string()).collect()
    }

    /// `None` while pending, else the outcome (reason, seq, payload).
    type Fate = Result<(), (UpstreamReason, Option<u64>, Payload)>;

    fn outcome(rx: &mut Rx) -> Option<Fate> {
        rx.try_recv().ok().map(|r| r.map_err(|e| (e.reason, e.seq, e.payload)))
    }

    fn pending(rxs: &mut [Rx]) -> usize {
        rxs.iter_mut().map(|rx| rx.try_recv()).filter(|r| matches!(r, Err(oneshot::error::TryRecvError::Empty))).count()
    }

    #[test]
    fn nothing_is_sent_before_a_welcome_then_seqs_start_at_next() {
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 3);
        assert!(!b.has_unsent());
        assert!(b.take(10).is_empty());
        assert!(b.welcome(false, up(1, 0, 7, true)).is_empty());
        assert!(b.has_unsent());
        assert_eq!(texts(b.take(2)), ["1:p1", "2:p2"]);
        assert_eq!(texts(b.take(2)), ["3:p3"]);
        assert!(!b.has_unsent());
        b.ack(2);
        assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
        assert_eq!(outcome(&mut rx[1]), Some(Ok(())));
        assert_eq!(outcome(&mut rx[2]), None);
        let s = b.stats();
        assert_eq!((s.unacked, s.unacked_bytes, s.sent, s.acked, s.acked_seq, s.next_seq), (1, 2, 3, 2, 2, 4));
        // An old or repeated ack changes nothing.
        b.ack(1);
        assert_eq!(b.stats().acked, 2);
        b.ack(3);
        assert_eq!(outcome(&mut rx[2]), Some(Ok(())));
        assert_eq!((b.stats().unacked, b.stats().unacked_bytes), (0, 0));
    }

    #[test]
    fn same_conn_keeps_the_accepted_and_resends_from_next() {
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 6);
        b.welcome(false, up(1, 0, 7, true));
        assert_eq!(b.take(5).len(), 5); // 1..=5 sent, p6 not yet
        b.disconnected();
        assert!(b.take(5).is_empty(), "nothing is sent between a drop and the welcome");
        // tether accepted 1..=3, wrote 1; 4 and 5 were lost in the cut.
        let report = b.welcome(false, up(4, 1, 7, true));
        assert!(report.is_empty());
        assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
        assert_eq!(pending(&mut rx[1..]), 5);
        assert_eq!(texts(b.take(10)), ["4:p4", "5:p5", "6:p6"]);
        let s = b.stats();
        assert_eq!((s.resends, s.sent, s.acked, s.in_doubt, s.unacked), (2, 8, 1, 0, 5));
        b.ack(6);
        assert_eq!(pending(&mut rx), 0);
        assert_eq!(b.stats().acked, 6);
    }

    #[test]
    fn a_welcome_can_ack_everything_sent() {
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 2);
        b.welcome(false, up(1, 0, 7, true));
        b.take(10);
        let _ = push(&mut b, 1);
        b.welcome(false, up(3, 2, 7, true));
        assert_eq!(pending(&mut rx), 0);
        assert_eq!(texts(b.take(10)), ["3:p3"]);
    }

    #[test]
    fn changed_conn_exact_resends_what_was_never_written() {
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 5);
        b.welcome(false, up(1, 0, 7, true));
        b.take(10);
        // A drain: 1..=2 written and recorded, 3 accepted and written to the
        // old connection (acked later), 4..=5 never written.
        let report = b.welcome(false, up(4, 2, 8, true));
        assert!(report.is_empty());
        assert_eq!(pending(&mut rx), 3);
        assert_eq!(texts(b.take(10)), ["4:p4", "5:p5"]);
        assert_eq!(b.stats().conn, Some(8));
        b.ack(5);
        assert_eq!(pending(&mut rx), 0);
    }

    #[test]
    fn changed_conn_not_exact_reports_the_doubt_and_renumbers_the_rest() {
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 5);
        b.welcome(false, up(1, 0, 7, true));
        assert_eq!(b.take(4).len(), 4);
        // kill -9: tether recorded 1 as written and 2 as accepted; 3 and 4
        // were sent on conn 7 and may have been written. p5 was never sent.
        let report = b.welcome(false, up(3, 1, 8, false));
        assert_eq!(report, [UpMessage { seq: 3, payload: "p3".into() }, UpMessage { seq: 4, payload: "p4".into() }]);
        assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
        assert_eq!(outcome(&mut rx[1]), None);
        assert_eq!(outcome(&mut rx[2]), Some(Err((UpstreamReason::InDoubt, Some(3), "p3".into()))));
        assert_eq!(outcome(&mut rx[3]), Some(Err((UpstreamReason::InDoubt, Some(4), "p4".into()))));
        assert_eq!(texts(b.take(10)), ["3:p5"], "new messages continue at next");
        let s = b.stats();
        assert_eq!((s.in_doubt, s.resends, s.unacked, s.unacked_bytes), (2, 0, 2, 4));
        b.ack(3);
        assert_eq!(pending(&mut rx), 0);
        assert_eq!(outcome(&mut rx[4]), None, "already taken");
    }

    #[test]
    fn in_doubt_resend_and_drop_policies() {
        let mut b = buf(InDoubt::Resend);
        let mut rx = push(&mut b, 3);
        b.welcome(false, up(1, 0, 7, true));
        b.take(10);
        assert!(b.welcome(false, up(2, 1, 8, false)).is_empty());
        assert_eq!(texts(b.take(10)), ["2:p2", "3:p3"]);
        assert_eq!((b.stats().in_doubt, b.stats().resends), (2, 2));
        b.ack(3);
        assert!(rx.iter_mut().all(|r| outcome(r) == Some(Ok(()))));

        let mut b = buf(InDoubt::Drop);
        let mut rx = push(&mut b, 3);
        b.welcome(false, up(1, 0, 7, true));
        b.take(2);
        assert!(b.welcome(false, up(2, 1, 8, false)).is_empty());
        assert_eq!(outcome(&mut rx[0]), Some(Ok(())));
        assert_eq!(outcome(&mut rx[1]), Some(Err((UpstreamReason::Dropped, Some(2), "p2".into()))));
        assert_eq!(texts(b.take(10)), ["2:p3"]);
        assert_eq!((b.stats().in_doubt, b.stats().dropped, b.stats().resends), (1, 1, 0));
    }

    #[test]
    fn a_new_session_puts_everything_sent_in_doubt() {
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 3);
        b.welcome(false, up(1, 0, 7, true));
        b.take(2);
        b.ack(1);
        // The session expired: seqs restart at 1 on another backend connection.
        let report = b.welcome(true, up(1, 0, 9, true));
        assert_eq!(report, [UpMessage { seq: 2, payload: "p2".into() }]);
        assert_eq!(outcome(&mut rx[1]), Some(Err((UpstreamReason::InDoubt, Some(2), "p2".into()))));
        assert_eq!(texts(b.take(10)), ["1:p3"]);
        assert_eq!(b.stats().acked_seq, 0);
    }

    #[test]
    fn end_fails_what_was_not_written() {
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 4);
        b.welcome(false, up(1, 0, 7, true));
        b.take(3);
        b.end(Some(2));
        assert_eq!(outcome(&mut rx[1]), Some(Ok(())));
        assert_eq!(outcome(&mut rx[2]), Some(Err((UpstreamReason::Ended, Some(3), "p3".into()))));
        assert_eq!(outcome(&mut rx[3]), Some(Err((UpstreamReason::Ended, None, "p4".into()))));
        let Err(Push::Stopped(e)) = b.try_push("late".into()) else { panic!() };
        assert_eq!((e.reason, e.payload), (UpstreamReason::Ended, "late".into()));
        let s = b.stats();
        assert_eq!((s.acked, s.ended, s.unacked, s.unacked_bytes), (2, 2, 0, 0));

        // Without `up` in the end, what was sent is in doubt.
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 2);
        b.welcome(false, up(1, 0, 7, true));
        b.take(1);
        b.end(None);
        assert_eq!(outcome(&mut rx[0]), Some(Err((UpstreamReason::InDoubt, Some(1), "p1".into()))));
        assert_eq!(outcome(&mut rx[1]), Some(Err((UpstreamReason::Ended, None, "p2".into()))));
    }

    #[test]
    fn bounds_and_stop() {
        let mut b = Buf::new(Upstream { max_unacked: 2, max_unacked_bytes: 10, in_doubt: InDoubt::Report });
        let mut rx = Vec::new();
        rx.push(b.try_push("123456".into()).ok().unwrap());
        assert!(matches!(b.try_push("12345".into()), Err(Push::Full(p)) if p == "12345".into()), "bytes bound");
        rx.push(b.try_push("1234".into()).ok().unwrap());
        assert!(matches!(b.try_push("".into()), Err(Push::Full(_))), "message bound");
        b.welcome(false, up(1, 0, 7, true));
        b.take(10);
        b.ack(2);
        // An oversized message fits an empty buffer.
        rx.push(b.try_push(vec![0u8; 100].into()).ok().unwrap());
        b.stop(UpstreamReason::Closed);
        assert_eq!(outcome(&mut rx[2]), Some(Err((UpstreamReason::Closed, None, vec![0u8; 100].into()))));
        assert!(matches!(b.try_push("x".into()), Err(Push::Stopped(e)) if e.reason == UpstreamReason::Closed));
        // Dropping the buffer completes what it holds.
        let mut b = buf(InDoubt::Report);
        let mut rx = push(&mut b, 1);
        drop(b);
        assert_eq!(outcome(&mut rx[0]), Some(Err((UpstreamReason::Closed, None, "p1".into()))));
    }
}
