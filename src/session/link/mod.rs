//! The link task: owns one backend WebSocket for the life of a session's
//! backend connection, journals everything the backend sends (journal
//! first: clients read from the journal's committed seq), and forwards
//! client frames to it. It keeps running while the client is away, until
//! linger expires, and holds the session's `limits.max_sessions` slot.
//!
//! Reading and writing the backend proceed independently: the socket is
//! split, and the writer half is one more arm of the task's `select!`
//! whose every await is cancel-safe. A backend that writes its reply
//! before it reads the next message (an echo or RPC loop) therefore never
//! deadlocks with a client that pipelines large messages, and shutdown
//! and linger win even while a write to a backend that stopped reading is
//! blocked.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

mod writer;

use super::up::MARK_EVERY;
use super::{BackendConn, Session, ToBackend};
use crate::config::SlowConsumer;
use crate::journal::{chunk_builder, EndInfo, UpMark};
use crate::protocol::Payload;
use crate::select_arm::optional;
use crate::upstream::BackendSocket;
use writer::{Batch, Writer, Wrote};

/// How long tether waits for the backend to answer a close it forwarded.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long tether tries to deliver its own close to the backend.
const GOING_AWAY_WAIT: Duration = Duration::from_secs(1);

/// Why the loop stopped.
enum Stop {
    /// The session ended: the backend or the client closed, or the backend
    /// connection failed.
    Ended(EndInfo),
    /// tether drains, or linger expired: the session stays resumable as
    /// `restarted`, and the backend is told tether is going away.
    Away(&'static str),
    /// The journal stopped accepting frames (tether is shutting down).
    Journal,
}

/// What the loop does next.
type Next = Result<(), Stop>;

/// Payload bytes a link task drains from its backend socket into one
/// journal chunk at most (besides the frame limit, [`Session::batch_room`]).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The largest size a batch's chunk is reserved at (see `Link::last_batch`).
const LAST_BATCH_MAX: usize = MAX_BATCH_BYTES + 64 * 1024;

/// One backend connection of a session. Built before its task is spawned,
/// so the task's future holds it once (an `async fn`'s arguments stay in
/// its state for its whole life, even after they are moved out).
pub(super) struct Link {
    session: Arc<Session>,
    reader: SplitStream<BackendSocket>,
    writer: Writer,
    /// The session's `limits.max_sessions` slot, held while the connection is.
    _slot: OwnedSemaphorePermit,
    /// When linger expires (set while no client is attached).
    linger: watch::Receiver<Option<Instant>>,
    /// The linger deadline being waited for, on the heap while there is one.
    linger_sleep: Option<(Instant, Pin<Box<Sleep>>)>,
    /// Set once the client closed normally: the close was forwarded, and the
    /// backend has until the deadline to answer it.
    client_close: Option<(EndInfo, tokio::time::Instant)>,
    /// The last upstream mark handed to the journal (see [`super::up`]).
    marked: u64,
    /// The session's acked mark, once a mark had to wait for the one
    /// before it to commit: at most one is in flight per session.
    acked: Option<watch::Receiver<u64>>,
    /// A mark is due as soon as the one in flight commits.
    mark_waiting: bool,
    /// Bytes and frames of the last batch read from the backend: the next
    /// batch's chunk is sized for as much.
    last_batch: (u32, u32),
}

impl Link {
    /// The link for `conn`, fed by `upstream`, told of linger by `linger`.
    pub(super) fn new(
        session: Arc<Session>,
        conn: BackendConn,
        upstream: mpsc::Receiver<Box<ToBackend>>,
        linger: watch::Receiver<Option<Instant>>,
    ) -> Link {
        let BackendConn { socket, permit, .. } = conn;
        let (sink, reader) = socket.split();
        let marked = session.up_used().map_or(0, |up| up.written());
        Link {
            session,
            reader,
            writer: Writer::new(sink, upstream),
            _slot: permit,
            linger,
            linger_sleep: None,
            client_close: None,
            marked,
            acked: None,
            mark_waiting: false,
            last_batch: (0, 0),
        }
    }

    /// Runs the connection until the session ends, tether drains or linger
    /// expires. Arms that only some sessions use are [`optional`] and
    /// handlers are boxed, so an idle session's task holds no more than its
    /// `select!` needs.
    pub(super) async fn run(mut self) {
        let shutdown = self.session.shared.rt.shutdown.clone();
        let backpressure = self.session.shared.config.session.slow_consumer == SlowConsumer::Backpressure;
        let mut held = false;
        let stop = loop {
            // Under backpressure the backend is not read while one more batch
            // could trim a frame no client was sent (see `backpressure`).
            let hold = backpressure && !self.session.room_for_batch(MAX_BATCH_BYTES as u64);
            if hold && !held {
                self.session.metrics().slow_consumer_backpressure.inc();
                tracing::debug!(session = %self.session.id, "client behind: backend no longer read");
            }
            held = hold;
            self.track_linger();
            let closing = self.client_close.as_ref().map(|(_, at)| *at);
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err(Stop::Away("tether is restarting")),
                msg = self.reader.next(), if !hold => Box::pin(self.on_backend(msg)).await,
                () = optional(hold.then(|| self.session.sent_more())) => Ok(()),
                wrote = self.writer.forward(&self.session) => Box::pin(self.on_wrote(wrote)).await,
                () = optional(self.mark_waiting.then(|| committed(self.acked.as_mut()))) => Box::pin(self.mark_written()).await,
                () = optional(self.session.up_used().map(super::up::Up::went_quiet)) => Box::pin(self.mark_written()).await,
                () = optional(closing.map(tokio::time::sleep_until)) => Err(Stop::Ended(self.client_ended())),
                () = lingered(&mut self.linger_sleep) => Box::pin(self.linger_expired()).await,
                changed = self.linger.changed() => changed.map_err(|_| Stop::Ended(EndInfo::abnormal())),
            };
            if let Err(stop) = next {
                break stop;
            }
        };
        Box::pin(self.stop(stop)).await;
    }

    /// Winds the connection down as `stop` says.
    async fn stop(mut self, stop: Stop) {
        match stop {
            Stop::Ended(end) => {
                self.settle_up(false).await;
                tracing::info!(session = %self.session.id, code = end.code, "session ended");
                self.session.end(end).await;
            }
            Stop::Away(reason) => {
                self.settle_up(true).await;
                going_away(&mut self.writer.sink, reason).await
            }
            Stop::Journal => {}
        }
    }

    /// Keeps `linger_sleep` on the deadline the session last set.
    fn track_linger(&mut self) {
        let deadline = *self.linger.borrow_and_update();
        match (deadline, &mut self.linger_sleep) {
            (None, sleep) => *sleep = None,
            (Some(at), Some((current, _))) if *current == at => {}
            (Some(at), sleep) => *sleep = Some((at, Box::pin(tokio::time::sleep_until(at.into())))),
        }
    }
}

impl Link {
    /// A message (or the end) from the backend, and every further one the
    /// socket already holds (up to a chunk): data is journaled as one chunk,
    /// with one queue operation and one commit wake-up for all of it.
    async fn on_backend(&mut self, msg: Option<Result<Message, WsError>>) -> Next {
        let room = self.session.batch_room();
        // A fresh chunk per batch: one kept in the link would hold its
        // capacity in every idle session. Each message is copied in as it
        // is read, so the socket's read buffer is free again for the next
        // (see `protocol::pack`). Sized like the last batch: growing by
        // doubling and shrinking at the end copied each byte about twice.
        let (bytes, frames) = self.last_batch;
        let mut batch = chunk_builder(bytes as usize, frames as usize);
        let mut next = msg;
        let end = loop {
            match next {
                Some(Ok(Message::Text(t))) => batch.push(&Payload::Text(t)),
                Some(Ok(Message::Binary(b))) => batch.push(&Payload::Binary(b)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                other => break Some(other),
            }
            if batch.len() >= room || batch.payload_bytes() >= MAX_BATCH_BYTES {
                break None;
            }
            // What the socket holds already, without waiting: a batch is
            // what arrived together, so a lone message is not delayed.
            match self.reader.next().now_or_never() {
                Some(m) => next = m,
                None => break None,
            }
        };
        if !batch.is_empty() {
            // A batch holds at most `room` frames; one giant message must
            // not make every later batch reserve its size.
            self.last_batch = (batch.bytes().min(LAST_BATCH_MAX) as u32, batch.len() as u32);
            self.session.journal_frames(batch).await.map_err(|_| Stop::Journal)?;
        }
        match end {
            Some(end) => self.on_end(end),
            None => Ok(()),
        }
    }

    /// The backend closed or failed (`msg` is neither data nor ping/pong).
    fn on_end(&mut self, msg: Option<Result<Message, WsError>>) -> Next {
        match msg {
            Some(Ok(Message::Close(frame))) => {
                let theirs = frame.map(|f| EndInfo { code: f.code.into(), reason: f.reason.to_string() });
                let client = self.client_close.take().map(|c| c.0);
                Err(Stop::Ended(client.or(theirs).unwrap_or_else(EndInfo::no_status)))
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                tracing::debug!(session = %self.session.id, error = %e, "backend connection failed");
                Err(Stop::Ended(self.client_ended()))
            }
            None => Err(Stop::Ended(self.client_ended())),
        }
    }

    /// The writer forwarded a client message; a normal close starts the
    /// wait for the backend's answer.
    async fn on_wrote(&mut self, wrote: Result<Wrote, WsError>) -> Next {
        match wrote {
            Ok(Wrote::Data(batch)) => {
                self.wrote(batch);
                self.mark_written().await
            }
            Ok(Wrote::Skipped) => self.mark_written().await,
            Ok(Wrote::Close(info)) => {
                self.client_close = Some((info, tokio::time::Instant::now() + CLOSE_WAIT));
                Ok(())
            }
            Ok(Wrote::Done) => Err(Stop::Ended(EndInfo::abnormal())),
            Err(e) => {
                tracing::debug!(session = %self.session.id, error = %e, "backend write failed");
                Err(Stop::Ended(self.client_ended()))
            }
        }
    }

    /// Hands the upstream mark to the journal when the queue toward the
    /// backend runs empty while the client is quiet (it sent nothing more,
    /// see [`super::up::Up::set_quiet`]), and at least every [`MARK_EVERY`]
    /// messages of a steady stream: the client's acks follow the journal's
    /// commit.
    async fn mark_written(&mut self) -> Next {
        let Some(up) = self.session.up_used() else { return Ok(()) };
        let written = up.written();
        if written <= self.marked {
            self.mark_waiting = false;
            return Ok(());
        }
        // One mark in flight per session: while the last one has not
        // committed, the next waits for it (and then covers everything
        // written meanwhile), instead of one journal write per batch.
        let acked = self.acked.get_or_insert_with(|| up.watch_acked());
        if *acked.borrow_and_update() < self.marked {
            self.mark_waiting = true;
            return Ok(());
        }
        let due =
            self.mark_waiting || written >= self.marked + MARK_EVERY || self.writer.upstream.is_empty() && up.quiet();
        if due {
            self.mark_waiting = false;
            let mark = UpMark { written, stopped: false };
            self.session
                .shared
                .journal
                .put_up(self.session.id, mark, up.acked_sender())
                .await
                .map_err(|_| Stop::Journal)?;
            self.marked = written;
        }
        Ok(())
    }

    /// The backend connection stops: its last upstream mark says exactly
    /// what was written, unless a stamped message was handed to the socket
    /// and not confirmed (then the ones after the mark are in doubt). On a
    /// drain or linger expiry (`flush_first`) that message is given
    /// [`GOING_AWAY_WAIT`] to go out first. After the backend ended the
    /// session, the mark is awaited, so the client's `end` carries it.
    async fn settle_up(&mut self, flush_first: bool) {
        let Some(up) = self.session.up_used() else { return };
        if let (true, Some(batch)) = (flush_first, self.writer.unflushed) {
            if let Ok(Ok(())) = tokio::time::timeout(GOING_AWAY_WAIT, self.writer.flush()).await {
                self.writer.unflushed = None;
                self.wrote(batch);
            }
        }
        let mark = up.stopped(self.writer.unflushed.is_some_and(|b| b.last_seq.is_some()));
        let journal = &self.session.shared.journal;
        if journal.put_up(self.session.id, mark, up.acked_sender()).await.is_ok() && !flush_first {
            let mut acked = up.watch_acked();
            let _ = tokio::time::timeout(GOING_AWAY_WAIT, acked.wait_for(|a| *a >= mark.written)).await;
        }
    }

    /// Counts a batch the writer flushed to the backend.
    fn wrote(&self, batch: Batch) {
        let metrics = &self.session.shared.rt.metrics;
        metrics.upstream.count_many(u64::from(batch.frames), batch.bytes as u64);
        if let Some(seq) = batch.last_seq {
            self.session.up().wrote(seq);
            metrics.up.forwarded.inc_by(u64::from(batch.stamped));
        }
    }

    /// How the session ends when the backend connection does: with the
    /// client's close if it sent one, else abnormally.
    fn client_ended(&mut self) -> EndInfo {
        self.client_close.take().map_or_else(EndInfo::abnormal, |c| c.0)
    }

    /// Linger expired: unless a client came back meanwhile, the session is
    /// orphaned and the backend connection goes.
    async fn linger_expired(&mut self) -> Next {
        if !self.session.orphan().await {
            return Ok(());
        }
        tracing::info!(session = %self.session.id, "linger expired; backend connection closed, session resumable as restarted");
        Err(Stop::Away("client did not return"))
    }
}

/// Tells the backend tether is going away (close 1001), briefly: a backend
/// that stopped reading gets no more than [`GOING_AWAY_WAIT`].
async fn going_away(sink: &mut SplitSink<BackendSocket, Message>, reason: &'static str) {
    let frame = CloseFrame { code: CloseCode::Away, reason: reason.into() };
    let _ = tokio::time::timeout(GOING_AWAY_WAIT, sink.send(Message::Close(Some(frame)))).await;
}

/// Resolves when the linger deadline passes; never without one.
async fn lingered(sleep: &mut Option<(Instant, Pin<Box<Sleep>>)>) {
    match sleep {
        Some((_, s)) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the session's acked mark moves; never without a watch.
async fn committed(acked: Option<&mut watch::Receiver<u64>>) {
    match acked {
        Some(a) => {
            if a.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
