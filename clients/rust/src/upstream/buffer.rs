//! The upstream buffer: the unacked messages in seq order, what a welcome,
//! an ack or the end of the session does to them (in-doubt handling
//! included), and the handle the client and its connection task share.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};
use tokio_tungstenite::tungstenite;

use crate::frame::{self, UpWelcome};
use crate::{InDoubt, Payload, UpMessage, Upstream, UpstreamError, UpstreamReason, UpstreamStats};

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
mod tests;
