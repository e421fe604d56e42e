//! The [`Client`]: starting it ([`Client::builder`], [`Builder::build`]),
//! the [`Stream`] of events with its dedup and acks, sending, closing.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::builder::request;
use crate::connection::run;
use crate::shared::{Cursor, Item, Shared};
use crate::upstream::{Push, UpShared};
use crate::{
    Builder, Error, Event, Payload, Receipt, Sender, State, Stats, UpstreamError, UpstreamReason, UpstreamStats,
};

impl Builder {
    /// Starts the client: a task on the current tokio runtime connects and
    /// keeps reconnecting. Returns at once; failures to connect are reported
    /// as [`Event::Disconnected`] and retried.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] if the URL or a header is not valid.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn build(self) -> Result<Client, Error> {
        // Fail now, not in the task, for what no retry can fix.
        request(&self, None)?;
        let (token, offset) = match &self.resume {
            Some((t, o)) => (Some(t.clone()), *o),
            None => (None, 0),
        };
        let shared = Arc::new(Shared {
            cursor: Mutex::new(Cursor { token, offset, last: offset, epoch: 0 }),
            state: AtomicU8::new(State::Connecting as u8),
            closing: AtomicBool::new(false),
            close_reason: Mutex::new(String::new()),
            notify: Notify::new(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            up: self.upstream.map(|u| Arc::new(UpShared::new(u))),
        });
        let (tx, rx) = mpsc::channel(self.buffer);
        let (out_tx, out_rx) = mpsc::channel(self.send_queue);
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                run(self, shared.clone(), tx, out_rx).await;
                shared.stop_up(UpstreamReason::Closed);
            }
        });
        Ok(Client { rx, out: out_tx, shared, pending: None, task: Some(task) })
    }
}

/// A tether session: a [`Stream`] of [`Event`]s that reconnects and resumes
/// on its own until [`Client::close`], an [`Event::End`] or an
/// [`Event::TakenOver`]. Dropping it drops the connection without ending the
/// session (tether keeps it for `session.linger`, resumable with
/// [`Builder::resume`]); upstream messages not acked by then fail with
/// [`UpstreamReason::Closed`].
pub struct Client {
    rx: mpsc::Receiver<Item>,
    out: mpsc::Sender<Payload>,
    shared: Arc<Shared>,
    pending: Option<(u64, u64)>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("state", &self.state()).field("offset", &self.offset()).finish_non_exhaustive()
    }
}

impl Client {
    /// A [`Builder`] for `url` (`ws://…` or `wss://` if tokio-tungstenite has
    /// a TLS feature enabled).
    pub fn builder(url: impl Into<String>) -> Builder {
        Builder::new(url)
    }

    /// Acknowledges the last message yielded now rather than at the next
    /// poll: its seq becomes the offset of the next resume.
    pub fn ack(&mut self) {
        if let Some((epoch, seq)) = self.pending.take() {
            let mut c = self.shared.cursor();
            if c.epoch == epoch && seq > c.offset {
                c.offset = seq;
            }
        }
    }

    /// Sends a message to the backend, or queues it until the next
    /// connection is welcomed. No delivery guarantee: a message in flight
    /// when the connection drops is lost, and the client is not told.
    ///
    /// With [`Builder::upstream`] the message goes through the upstream
    /// buffer instead, with the guarantee but without a [`Receipt`]: use
    /// [`Client::send_reliable`] to learn its fate.
    ///
    /// # Errors
    /// [`Error::QueueFull`] (the send queue, or with the upstream guarantee
    /// its buffer, is full) or [`Error::Stopped`], with the message back.
    pub fn send(&self, payload: impl Into<Payload>) -> Result<(), Error> {
        let payload = payload.into();
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err(Error::Stopped(payload));
        }
        if let Some(up) = &self.shared.up {
            let pushed = up.buf().try_push(payload);
            return match pushed {
                Ok(_) => {
                    up.work.notify_one();
                    Ok(())
                }
                Err(Push::Full(p)) => Err(Error::QueueFull(p)),
                Err(Push::Stopped(e)) => Err(Error::Stopped(e.payload)),
            };
        }
        self.out.try_send(payload).map_err(|e| match e {
            mpsc::error::TrySendError::Full(p) => Error::QueueFull(p),
            mpsc::error::TrySendError::Closed(p) => Error::Stopped(p),
        })
    }

    /// Sends a message to the backend under the upstream guarantee
    /// ([`Builder::upstream`]): waits while the buffer is full, then returns a
    /// [`Receipt`] that completes when tether acks the message (it was
    /// written to the backend connection), or fails with the
    /// [`UpstreamReason`] it will not be. See [`Sender::send_reliable`]; use
    /// [`Client::sender`] to send from another task while this one reads the
    /// events.
    ///
    /// # Errors
    /// As [`Sender::send_reliable`].
    pub async fn send_reliable(&self, payload: impl Into<Payload>) -> Result<Receipt, UpstreamError> {
        self.sender().send_reliable(payload).await
    }

    /// Waits until every upstream message queued so far was acked or
    /// failed (see [`Sender::flush`]): call it before [`Client::close`] to
    /// close with nothing in flight. Acks are read by the task that fills
    /// the event stream: if more than [`Builder::buffer`] events may arrive
    /// meanwhile, flush with a [`Sender`] in another task and keep reading
    /// events here.
    pub async fn flush(&self) {
        self.sender().flush().await
    }

    /// A cloneable handle for [`Sender::send_reliable`] from other tasks.
    pub fn sender(&self) -> Sender {
        Sender { up: self.shared.up.clone() }
    }

    /// Upstream counters: unacked messages and bytes, resends, messages in
    /// doubt (all zero without [`Builder::upstream`]).
    pub fn upstream_stats(&self) -> UpstreamStats {
        self.shared.up.as_ref().map(|up| up.buf().stats()).unwrap_or_default()
    }

    /// Ends the session at tether (close 1000, which closes the backend
    /// connection) and stops. While disconnected there is nobody to tell:
    /// tether then orphans the session after `session.linger`. Events not
    /// yet read are discarded. Upstream messages not acked by then fail
    /// with [`UpstreamReason::Closed`]: await their receipts first.
    pub async fn close(&mut self, reason: &str) {
        *self.shared.close_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_owned();
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.notify.notify_one();
        // The task may be waiting for room in the event queue.
        self.rx.close();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.shared.stop_up(UpstreamReason::Closed);
        self.shared.set_state(State::Closed);
    }

    /// The connection state.
    pub fn state(&self) -> State {
        State::from_u8(self.shared.state.load(Ordering::Relaxed))
    }

    /// The session token, once welcomed (or as given to [`Builder::resume`]).
    pub fn token(&self) -> Option<String> {
        self.shared.cursor().token.clone()
    }

    /// The last acknowledged seq (0 if none): persist it with the token to
    /// resume after a restart of the application.
    pub fn offset(&self) -> u64 {
        self.shared.cursor().offset
    }

    /// Counters since the client started.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            received: s.received.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.shared.stop_up(UpstreamReason::Closed);
    }
}

impl Stream for Client {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Polling again means the application is done with the last message.
        self.ack();
        loop {
            let item = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match item {
                Item::Message(epoch, m) => {
                    let mut c = self.shared.cursor();
                    if c.epoch != epoch {
                        continue; // from a session given up: in the reported lost range
                    }
                    if m.seq <= c.last {
                        self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    c.last = m.seq;
                    drop(c);
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    self.pending = Some((epoch, m.seq));
                    return Poll::Ready(Some(Ok(Event::Message(m))));
                }
                Item::Event(epoch, ev) => {
                    if let Event::Gap(g) = &ev {
                        let mut c = self.shared.cursor();
                        // Skipping the trimmed range keeps the next resume from reporting it again.
                        if c.epoch == epoch && !g.new_session {
                            let skip = g.first_available.saturating_sub(1);
                            c.offset = c.offset.max(skip);
                            c.last = c.last.max(skip);
                        }
                    }
                    return Poll::Ready(Some(Ok(ev)));
                }
                Item::Fatal(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}
