//! The pump: serves one attached client connection until it goes away.
//!
//! Downstream it is a cursor over the session's committed seqs: every frame
//! it sends comes from the session (its in-memory ring or, when the client
//! is behind, the journal), so replay and live traffic are the same loop and
//! the hand-over from one to the other has no gap, duplicate or reorder by
//! construction. Upstream, a reader task forwards the client's frames to the
//! session's link task.

mod exit;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::reader::{read_client, ClientStream};
use super::sink::{self, ClientSink, ClientSocket};
use super::upward::{UpAcks, UpReader};
use super::Context;
use crate::config::{SlowConsumer, StampMode};
use crate::journal::{EndInfo, JournalError, Wire, WireStamp};
use crate::protocol::control::{Control, GapReason, GapReport, Outcome, SeqRange};
use crate::protocol::unix_ms;
use crate::select_arm::optional;
use crate::session::{Attachment, Session};
pub(super) use exit::{Exit, Gone};

/// What the handshake decided, for the welcome frame.
pub(super) struct Greeting {
    /// The token to give the client.
    pub(super) token: String,
    /// The outcome.
    pub(super) outcome: Outcome,
    /// The gap report, for outcome `gap`.
    pub(super) gap: Option<GapReport>,
    /// First seq to send.
    pub(super) start: u64,
    /// The connection opted in to the upstream guarantee.
    pub(super) up: bool,
}

enum Step {
    Progress,
    Ended(EndInfo),
}

#[derive(Debug, thiserror::Error)]
enum PumpError {
    #[error("client write failed: {0}")]
    Ws(#[from] WsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("frames were trimmed under a client that cannot be told in-band")]
    GapUnreportable,
}

impl From<PumpError> for Exit {
    fn from(e: PumpError) -> Exit {
        match e {
            PumpError::Ws(_) => Exit::Gone(Gone::Abnormal),
            PumpError::Journal(e) => Exit::Journal(e),
            PumpError::GapUnreportable => Exit::GapUnreportable,
        }
    }
}

/// One attached client connection.
pub(super) struct Pump {
    sink: ClientSink,
    /// The read half: the reader task's while it runs, then `linger`'s.
    stream: ClientStream,
    session: Arc<Session>,
    attachment: Attachment,
    ctx: Arc<Context>,
    committed: watch::Receiver<u64>,
    ended: watch::Receiver<Option<(u64, EndInfo)>>,
    /// Next seq to send.
    cursor: u64,
    /// The connection opted in to the upstream guarantee.
    up: bool,
    /// How replay batches from the journal are stamped (`None`: they go
    /// through tungstenite, as `json` stamps need).
    wire: Option<WireStamp>,
    /// The journal read of the batch after the one being written, and the
    /// seq it starts at: a client far behind is sent one batch while the
    /// next is read on the blocking pool.
    ahead: Option<(u64, JoinHandle<Result<Wire, JournalError>>)>,
}

impl Pump {
    /// A pump for `ws`, which `attachment` holds `session` for.
    pub(super) fn new(ws: ClientSocket, session: Arc<Session>, attachment: Attachment, ctx: Arc<Context>) -> Pump {
        let tap = ws.get_ref().tap();
        let (sink, stream) = ws.split();
        let inband = ctx.stamper.mode() != StampMode::None;
        let wire = match ctx.stamper.mode() {
            StampMode::Prefix => Some(WireStamp::Prefix),
            StampMode::None => Some(WireStamp::None),
            StampMode::Json => None,
        };
        #[cfg(feature = "fault-injection")]
        let wire = wire.filter(|_| crate::fault::active().is_none());
        Pump {
            sink: ClientSink::new(sink, tap, inband),
            wire,
            ahead: None,
            stream: Arc::new(tokio::sync::Mutex::new(stream)),
            committed: session.watch_committed(),
            ended: session.watch_ended(),
            session,
            attachment,
            ctx,
            cursor: 0,
            up: false,
        }
    }

    /// Serves the connection until the client leaves, is taken over, the
    /// session ends, or tether drains; then detaches.
    /// (`greeting` is boxed: an `async fn`'s arguments stay in its future
    /// for its whole life, in every idle session.)
    pub(super) async fn run(mut self, greeting: Box<Greeting>) {
        if self.attachment.take_over().await {
            tracing::info!(session = %self.session.id, "took the session over from an older connection");
        }
        self.cursor = greeting.start;
        self.up = greeting.up;
        let replay_to = self.attachment.replay_to;
        let acks = greeting.up.then(|| UpAcks::subscribe(&self.session));
        let up = acks.as_ref().map(|_| self.session.up().welcome());
        if let Some(u) = &up {
            let m = &self.ctx.rt.metrics.up;
            if u.exact {
                m.welcomes_exact.inc()
            } else {
                m.welcomes_in_doubt.inc()
            }
        }
        let Greeting { token, outcome, gap, .. } = *greeting;
        #[cfg(feature = "fault-injection")]
        let outcome = crate::fault::outcome(outcome);
        let welcome = Control::Welcome {
            v: 1,
            session: token,
            outcome,
            replay: (self.cursor <= replay_to).then_some(SeqRange { from: self.cursor, to: Some(replay_to) }),
            gap,
            up,
            backend: self.attachment.restart.take().map(|note| *note),
        };
        let reader = up.zip(acks.as_ref()).map(|(u, a)| a.reader(u.next));
        let exit = match Box::pin(self.sink.control(welcome)).await {
            Ok(()) => self.serve(reader, acks).await,
            Err(_) => Exit::Gone(Gone::Abnormal),
        };
        Box::pin(self.finish(exit)).await;
    }

    /// The loop: deliver frames, ping, ack the client's messages, and watch
    /// for the reader's exit, a takeover and shutdown.
    async fn serve(&mut self, up: Option<UpReader>, mut acks: Option<UpAcks>) -> Exit {
        let last_seen = Arc::new(AtomicU64::new(unix_ms()));
        // The reader's own join handle reports how it left: a channel for that
        // one message would cost every idle session about 1.8 KB.
        let stall = self.ctx.config.session.upstream_stall_timeout;
        let mut reader =
            tokio::spawn(read_client(self.stream.clone(), self.session.clone(), last_seen.clone(), stall, up));
        let attached_at = Instant::now();
        let replay_to = self.attachment.replay_to;
        let mut replaying = self.cursor <= replay_to;
        let mut ping = tokio::time::interval(self.ctx.config.session.ping_interval);
        ping.reset();
        let shutdown = self.ctx.rt.shutdown.clone();
        let mut kicked = self.attachment.take_kicked();
        // `slow_consumer = "disconnect"`: checked whenever the backend's
        // frames advance. Only frames committed after the welcome's replay
        // count, so a resume far behind is never cut for catching up.
        let session_config = &self.ctx.config.session;
        let too_slow =
            (session_config.slow_consumer == SlowConsumer::Disconnect).then_some(session_config.slow_consumer_lag);
        let mut behind = too_slow.map(|_| self.session.watch_committed());
        let exit = loop {
            tokio::select! {
                biased;
                _ = &mut kicked => break Exit::TakenOver,
                _ = shutdown.cancelled() => break Exit::Draining,
                exit = &mut reader => break exit.unwrap_or(Exit::Gone(Gone::Abnormal)),
                Ok(()) = optional(behind.as_mut().map(|b| b.changed())) => {
                    let sent = self.cursor.saturating_sub(1).max(replay_to);
                    if too_slow.is_some_and(|lag| self.session.committed().saturating_sub(sent) > lag) {
                        break Exit::Gone(Gone::TooSlow);
                    }
                }
                () = optional(acks.as_mut().map(UpAcks::due)) => {
                    let ack = acks.as_mut().map(|a| a.ack(&self.ctx.rt.metrics.up)).expect("due only when opted in");
                    if Box::pin(self.sink.control(ack)).await.is_err() {
                        break Exit::Gone(Gone::Abnormal);
                    }
                }
                _ = ping.tick() => {
                    let silent = unix_ms().saturating_sub(last_seen.load(Ordering::Relaxed));
                    if u128::from(silent) > self.ctx.config.session.ping_timeout.as_millis() {
                        break Exit::Gone(Gone::Timeout);
                    }
                    if Box::pin(self.sink.ping()).await.is_err() {
                        break Exit::Gone(Gone::Abnormal);
                    }
                }
                step = self.deliver() => match step {
                    Ok(Step::Progress) => {
                        if replaying && self.cursor > replay_to {
                            replaying = false;
                            self.ctx.rt.metrics.replay_seconds.observe(attached_at.elapsed().as_secs_f64());
                        }
                        // Last, so a lag of 0 on /metrics implies the counts above.
                        self.session.set_delivered(self.cursor - 1);
                    }
                    Ok(Step::Ended(info)) => break Exit::BackendEnded(info),
                    Err(e) => break e.into(),
                },
            }
        };
        reader.abort();
        if acks.is_some() {
            // Gone, so quiet: the link marks what it wrote, and a resume's
            // welcome reports it acked.
            self.session.up().set_quiet(true);
        }
        exit
    }

    /// Waits for frames past the cursor, then writes one batch of them. The
    /// wait is all an idle session's task holds; the write's larger state
    /// lives on the heap while it runs.
    async fn deliver(&mut self) -> Result<Step, PumpError> {
        match self.wait_committed().await {
            Ok(top) => Box::pin(self.send_batch(top)).await,
            Err(info) => Ok(Step::Ended(info)),
        }
    }

    /// Writes one batch of the frames from the cursor to `top`: from the
    /// ring, the journal, or (`json` stamps) as tungstenite messages.
    async fn send_batch(&mut self, top: u64) -> Result<Step, PumpError> {
        let batch = self.ctx.config.limits.replay_batch_bytes;
        if let Some(stamp) = self.wire {
            // A read started while the previous batch was written, if it
            // starts at the cursor (a gap report may have moved it).
            let ahead = match self.ahead.take() {
                Some((from, read)) if from == self.cursor => Some(read),
                Some((_, read)) => {
                    read.abort();
                    None
                }
                None => None,
            };
            if ahead.is_none() {
                if let Some((bytes, last)) = self.session.ring_wire(self.cursor, top, batch, stamp) {
                    // As in `deliver_wire`: queued, then the cursor, then the flush.
                    self.sink.put_wire(bytes).await?;
                    self.advance(last);
                    self.sink.flush().await?;
                    return Ok(Step::Progress);
                }
            }
            // Behind the ring: the journal.
            let read = ahead.unwrap_or_else(|| self.session.journal_wire(self.cursor, top, batch, stamp));
            let wire = read.await.map_err(|_| JournalError::Closed)??;
            return self.deliver_wire(wire, top, batch, stamp).await;
        }
        // `json` stamps: tungstenite messages.
        let frames = self.session.frames(self.cursor, top, batch).await?;
        let first = frames.first().map(|f| f.0);
        if first != Some(self.cursor) {
            self.report_trimmed(first).await?;
            if frames.is_empty() {
                return Ok(Step::Progress);
            }
        }
        #[cfg(feature = "fault-injection")]
        let (frames, last) = crate::fault::plant(frames, self.attachment.replay_to);
        let mut arena = sink::stamp_arena(&frames, &self.ctx.stamper);
        for (seq, payload) in &frames {
            self.sink.queue(self.ctx.stamper.stamp_in(*seq, payload, &mut arena)).await?;
            // Queued, so it goes out with the next write even if this future
            // is dropped (a ping won the select while the client was slow to
            // read): the cursor counts it now, or it would be sent again.
            self.advance(*seq);
        }
        #[cfg(feature = "fault-injection")]
        if let Some(last) = last {
            self.cursor = last + 1;
        }
        self.sink.flush().await?;
        Ok(Step::Progress)
    }

    /// Writes a batch read from the journal as wire bytes, after starting
    /// the read of the next one if the client is still behind.
    async fn deliver_wire(&mut self, wire: Wire, top: u64, batch: usize, stamp: WireStamp) -> Result<Step, PumpError> {
        if wire.first != Some(self.cursor) {
            self.report_trimmed(wire.first).await?;
            if wire.first.is_none() {
                return Ok(Step::Progress);
            }
        }
        if wire.last < top {
            let next = wire.last + 1;
            self.ahead = Some((next, self.session.journal_wire(next, top, batch, stamp)));
        }
        self.sink.put_wire(wire.bytes).await?;
        // The batch is in the tap: whatever is written next, it goes out
        // first. So the cursor moves now, and if this future is dropped
        // while the flush waits (a ping won the select), nothing is sent twice.
        self.advance(wire.last);
        self.sink.flush().await?;
        Ok(Step::Progress)
    }

    /// Moves the cursor past `last`, the last frame written.
    fn advance(&mut self, last: u64) {
        let replay_to = self.attachment.replay_to;
        let replayed = replay_to.min(last).saturating_add(1).saturating_sub(self.cursor);
        self.cursor = last + 1;
        self.ctx.rt.metrics.replayed_frames.inc_by(replayed);
    }

    /// The highest committed seq once it reaches the cursor, or how the
    /// session ended if it never will.
    async fn wait_committed(&mut self) -> Result<u64, EndInfo> {
        loop {
            let top = *self.committed.borrow_and_update();
            if self.cursor <= top {
                return Ok(top);
            }
            if let Some((last, info)) = self.ended.borrow_and_update().clone() {
                if self.cursor > last {
                    return Err(info);
                }
            }
            tokio::select! {
                r = self.committed.changed() => if r.is_err() { std::future::pending::<()>().await },
                r = self.ended.changed() => if r.is_err() { std::future::pending::<()>().await },
            }
        }
    }

    /// Retention removed frames this client had not been sent yet (the first
    /// one left is `first`): tell the client, and move the cursor past them.
    async fn report_trimmed(&mut self, first: Option<u64>) -> Result<(), PumpError> {
        let cursor = self.cursor;
        let available = first.unwrap_or_else(|| self.session.first_available());
        if available <= cursor {
            return Err(JournalError::Corrupt(format!("frame {cursor} is missing from the journal")).into());
        }
        if !self.sink.inband() {
            return Err(PumpError::GapUnreportable);
        }
        let report = GapReport {
            reason: GapReason::Trimmed,
            requested_offset: cursor - 1,
            first_available: available,
            lost: SeqRange { from: cursor, to: Some(available - 1) },
        };
        tracing::warn!(session = %self.session.id, from = cursor, to = available - 1, "client fell behind retention");
        // As for frames: once queued, the report goes out whatever happens
        // to this future, so the cursor moves before the flush.
        self.sink.queue(Control::Gap(report).to_message()).await?;
        self.cursor = available;
        self.sink.flush().await?;
        Ok(())
    }
}
