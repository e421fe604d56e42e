//! An async client for tether, the resumable WebSocket proxy.
//!
//! tether stamps every backend → client message with a sequence number (seq),
//! journals it, and replays what a reconnecting client missed. This crate is
//! the client half of that contract (`docs/PROTOCOL.md` in the tether
//! repository): it connects, reads the `welcome`, keeps the session token
//! (a new one in every welcome: tokens rotate on every resume) and the
//! offset, resumes with the token in `Sec-WebSocket-Protocol` (or the
//! `Tether-Session` header, [`TokenIn`]) and the `Tether-Offset` header
//! after any drop (exponential backoff with full jitter), drops the
//! duplicates a resume brings, and turns tether's control frames into
//! [`Event`]s. The application sees a [`Stream`] of
//! events, among them each data message once, in seq order.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tether_client::{Client, Event};
//!
//! # async fn run() -> Result<(), tether_client::Error> {
//! let mut client = Client::builder("ws://127.0.0.1:8080/feed").build()?;
//! while let Some(event) = client.next().await {
//!     match event? {
//!         // Acknowledged (the offset advances) when the stream is polled again.
//!         Event::Message(m) => println!("{} {:?}", m.seq, m.payload),
//!         Event::Gap(g) => eprintln!("lost {}..={:?}: resync", g.lost.from, g.lost.to),
//!         Event::End { code, reason } => println!("ended: {code} {reason}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - A message is acknowledged (its seq becomes the offset sent on the next
//!   resume) when the application polls the stream again after receiving it,
//!   or calls [`Client::ack`]. Across reconnects delivery is at-least-once
//!   (tether resends everything after the offset); within one [`Client`] each
//!   seq reaches the application at most once, because seqs not above the
//!   last one delivered are dropped and counted in [`Stats::duplicates`].
//! - Nothing is skipped without an [`Event::Gap`] that names the lost range.
//! - Messages sent with [`Client::send`] have **no** delivery guarantee: one in
//!   flight when the connection drops is lost, unless the client opts in to
//!   the upstream guarantee (below).
//! - Stamp mode `none` is not supported: without seqs there is nothing to
//!   resume from safely.
//!
//! # The upstream guarantee
//!
//! With [`Builder::upstream`], every message to the backend carries a seq
//! (docs/PROTOCOL.md §12) and stays in the client until tether acks it
//! (written to the backend connection). [`Client::send_reliable`] (or a
//! cloneable [`Sender`]) returns a [`Receipt`] that completes with `Ok(())`
//! on the ack, or fails with an [`UpstreamError`] whose
//! [`reason`](UpstreamError::reason) says why the message will not be written:
//! the session [ended](UpstreamReason::Ended), it was
//! [in doubt](UpstreamReason::InDoubt) after tether crashed, or the client
//! [closed](UpstreamReason::Closed). After a drop the client resends what
//! tether did not accept, with the same seqs: the backend gets each message
//! once, in order.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tether_client::{Client, Event, Upstream};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = Client::builder("ws://127.0.0.1:8080/feed").upstream(Upstream::default()).build()?;
//! let sender = client.sender();
//! tokio::spawn(async move {
//!     for i in 0..100 {
//!         // Waits while 1000 messages (or 1 MiB) are unacked.
//!         let receipt = sender.send_reliable(format!("order {i}")).await?;
//!         receipt.await?; // or keep the receipt and go on sending
//!     }
//!     Ok::<_, tether_client::UpstreamError>(())
//! });
//! // Keep reading the events: acks arrive on the same connection.
//! while let Some(event) = client.next().await {
//!     if let Event::InDoubt(messages) = event? {
//!         eprintln!("{} messages may or may not have reached the backend", messages.len());
//!     }
//! }
//! # Ok(()) }
//! ```

mod builder;
mod error;
mod event;
mod frame;
mod message;
mod shared;
mod upstream;

pub use builder::{Backoff, Builder, TokenIn};
pub use error::Error;
pub use event::{Event, GapReport, Lost, Outcome, Replay, ResetInfo, ResetReason, Welcome};
pub use message::{Message, Payload, StampMode, UpMessage};
pub use shared::{State, Stats};
pub use upstream::{InDoubt, Receipt, Sender, Upstream, UpstreamError, UpstreamReason, UpstreamStats};

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use builder::request;
use frame::Frame;
use shared::{Cursor, Item, Shared};
use upstream::{Push, UpShared};

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

/// A small PRNG for the jitter (xorshift64*, seeded per client).
struct Jitter(u64);
impl Jitter {
    fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        Jitter(h.finish() | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Why a connection stopped.
enum Exit {
    /// Reconnect (`welcomed`: the connection got as far as the welcome).
    Retry { error: String, welcomed: bool },
    /// The client is done.
    Stop,
}

/// Upstream messages written per turn of the connection loop, between reads.
const UP_BATCH: usize = 64;

/// What a turn of the connection loop does.
enum Turn {
    /// Write upstream messages.
    Up,
    /// Handle what tether sent.
    Read(Option<Result<tungstenite::Message, tungstenite::Error>>),
}

/// Completes when there may be upstream messages to write.
async fn up_work(up: Option<&UpShared>) {
    match up {
        Some(up) => up.work.notified().await,
        None => std::future::pending().await,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(cfg: Builder, shared: Arc<Shared>, tx: mpsc::Sender<Item>, mut out: mpsc::Receiver<Payload>) {
    let mut jitter = Jitter::new();
    let mut attempt = 0u32;
    let mut failed_resumes = 0u32;
    loop {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        shared.set_state(State::Connecting);
        let resume = {
            let c = shared.cursor();
            c.token.clone().map(|t| (t, c.offset))
        };
        let req = match request(&cfg, resume.as_ref().map(|(t, o)| (t.as_str(), *o))) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Item::Fatal(e)).await;
                return;
            }
        };
        let connect = tokio::time::timeout(cfg.connect_timeout, tokio_tungstenite::connect_async(req));
        let result = tokio::select! {
            r = connect => r,
            _ = shared.notify.notified() => return,
        };
        let (error, refused, welcomed) = match result {
            Ok(Ok((mut ws, _))) => {
                let exit = connection(&cfg, &shared, &tx, &mut out, &mut ws).await;
                if let Some(up) = &shared.up {
                    up.buf().disconnected();
                }
                match exit {
                    Exit::Stop => return,
                    Exit::Retry { error, welcomed } => (error, None, welcomed),
                }
            }
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                (format!("refused: {status} {body}"), Some(status), false)
            }
            Ok(Err(e)) => (e.to_string(), None, false),
            Err(_) => ("connect timed out".to_owned(), None, false),
        };
        if welcomed {
            attempt = 0;
            failed_resumes = 0;
        } else if resume.is_some() {
            // A resume that never got its welcome failed. A refusal that no
            // retry can change gives the session up at once.
            failed_resumes += 1;
            let definitive = matches!(refused, Some(400 | 401 | 409));
            if definitive || failed_resumes >= cfg.max_failed_resumes {
                let reset = {
                    let mut c = shared.cursor();
                    let info = ResetInfo {
                        reason: match refused {
                            Some(status) if definitive => ResetReason::Refused(status),
                            _ => ResetReason::FailedResumes,
                        },
                        failed_attempts: failed_resumes,
                        last_offset: c.offset,
                    };
                    c.token = None;
                    c.offset = 0;
                    c.last = 0;
                    c.epoch += 1;
                    Item::Event(c.epoch, Event::Reset(info))
                };
                failed_resumes = 0;
                if tx.send(reset).await.is_err() {
                    return;
                }
            }
        }
        let retry_in = cfg.backoff.delay(attempt, jitter.next());
        attempt = attempt.saturating_add(1);
        shared.set_state(State::Reconnecting);
        let epoch = shared.cursor().epoch;
        if tx.send(Item::Event(epoch, Event::Disconnected { error, retry_in })).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = shared.notify.notified() => return,
        }
    }
}

/// One connection, from the upgrade to its end.
async fn connection(
    cfg: &Builder,
    shared: &Shared,
    tx: &mpsc::Sender<Item>,
    out: &mut mpsc::Receiver<Payload>,
    ws: &mut Ws,
) -> Exit {
    let mut welcomed = false;
    let mut replay_to = 0u64;
    let mut ended = false;
    let up = shared.up.as_deref();
    // Upstream writes and reads take turns first, so neither starves the other.
    let mut up_first = false;
    loop {
        // Upstream messages go out only after this connection's welcome.
        let up_ready = welcomed && !ended && up.is_some();
        up_first = !up_first;
        let turn = tokio::select! {
            biased;
            _ = shared.notify.notified() => return close(shared, ws).await,
            _ = up_work(up), if up_ready && up_first => Turn::Up,
            p = out.recv(), if welcomed => {
                let m = match p {
                    Some(Payload::Text(t)) => tungstenite::Message::text(t),
                    Some(Payload::Binary(b)) => tungstenite::Message::binary(b),
                    None => return Exit::Stop,
                };
                if let Err(e) = ws.send(m).await {
                    return Exit::Retry { error: e.to_string(), welcomed };
                }
                continue;
            }
            m = ws.next() => Turn::Read(m),
            _ = up_work(up), if up_ready && !up_first => Turn::Up,
        };
        let msg = match turn {
            Turn::Read(m) => m,
            Turn::Up => {
                let up = up.expect("upstream");
                let batch = up.buf().take(UP_BATCH);
                let more = batch.len() == UP_BATCH;
                for m in batch {
                    if let Err(e) = ws.feed(m).await {
                        return Exit::Retry { error: e.to_string(), welcomed };
                    }
                }
                if let Err(e) = ws.flush().await {
                    return Exit::Retry { error: e.to_string(), welcomed };
                }
                if more {
                    up.work.notify_one(); // the rest at the next turn
                }
                continue;
            }
        };
        let frame = match msg {
            Some(Ok(tungstenite::Message::Text(t))) => frame::parse_text(&t, cfg.stamp_mode, &cfg.json_field),
            Some(Ok(tungstenite::Message::Binary(b))) => frame::parse_binary(b),
            Some(Ok(tungstenite::Message::Close(f))) => {
                let code = f.as_ref().map(|f| u16::from(f.code));
                if ended {
                    shared.set_state(State::Ended);
                    return Exit::Stop;
                }
                if code == Some(4001) {
                    shared.set_state(State::TakenOver);
                    let epoch = shared.cursor().epoch;
                    let _ = tx.send(Item::Event(epoch, Event::TakenOver)).await;
                    return Exit::Stop;
                }
                if let (Some(up), Some(code @ (4003 | 4004))) = (up, code) {
                    up.buf().rejected();
                    let epoch = shared.cursor().epoch;
                    let reason = f.as_ref().map(|f| f.reason.to_string()).unwrap_or_default();
                    if tx.send(Item::Event(epoch, Event::UpstreamRejected { code, reason })).await.is_err() {
                        return Exit::Stop;
                    }
                }
                let why = f.map(|f| format!("closed {} {}", f.code, f.reason)).unwrap_or_else(|| "closed".into());
                return Exit::Retry { error: why, welcomed };
            }
            Some(Ok(_)) => continue, // ping, pong: tungstenite answers pings
            Some(Err(e)) if !ended => return Exit::Retry { error: e.to_string(), welcomed },
            None if !ended => return Exit::Retry { error: "connection lost".into(), welcomed },
            Some(Err(_)) | None => {
                shared.set_state(State::Ended);
                return Exit::Stop;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // A wrong stamp mode would misread every frame: stop rather than guess.
                shared.set_state(State::Closed);
                let _ = tx.send(Item::Fatal(Error::Protocol(e))).await;
                let _ = ws
                    .close(Some(CloseFrame { code: CloseCode::Library(4000), reason: "client protocol error".into() }))
                    .await;
                return Exit::Stop;
            }
        };
        let epoch = shared.cursor().epoch;
        let item = match frame {
            Frame::Data { seq, payload } => {
                shared.received.fetch_add(1, Ordering::Relaxed);
                Item::Message(epoch, Message { seq, payload, replay: seq <= replay_to })
            }
            Frame::Welcome(w, up_welcome) => {
                welcomed = true;
                replay_to = w.replay.map_or(0, |r| r.to);
                let new_session = w.gap.as_ref().is_some_and(|g| g.new_session);
                let epoch = {
                    let mut c = shared.cursor();
                    c.token = Some(w.session.clone());
                    if new_session {
                        c.epoch += 1;
                        c.offset = 0;
                        c.last = 0;
                    }
                    c.epoch
                };
                let in_doubt = match (up, up_welcome) {
                    (None, _) => Vec::new(),
                    // A new session (after a reset) or a gap's: seqs restart.
                    (Some(up), Some(u)) => up.update(|b| b.welcome(new_session || w.outcome == Outcome::New, u)),
                    (Some(_), None) => {
                        // Stamped messages would reach the backend stamped.
                        shared.set_state(State::Closed);
                        let e = "tether accepted no upstream guarantee (no `up` in the welcome): is it older than \
                                 this client?";
                        let _ = tx.send(Item::Fatal(Error::Protocol(e.into()))).await;
                        let _ = ws.close(Some(CloseFrame { code: CloseCode::Library(4000), reason: "".into() })).await;
                        return Exit::Stop;
                    }
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                shared.set_state(State::Open);
                let gap = w.gap.clone();
                if tx.send(Item::Event(epoch, Event::Welcome(w))).await.is_err() {
                    return gone(shared, ws).await;
                }
                if let Some(g) = gap {
                    if tx.send(Item::Event(epoch, Event::Gap(g))).await.is_err() {
                        return gone(shared, ws).await;
                    }
                }
                if let Some(up) = up {
                    up.work.notify_one();
                }
                if in_doubt.is_empty() {
                    continue;
                }
                Item::Event(epoch, Event::InDoubt(in_doubt))
            }
            Frame::UpAck(seq) => {
                if let Some(up) = up {
                    up.update(|b| b.ack(seq));
                }
                continue;
            }
            Frame::Gap(g) => Item::Event(epoch, Event::Gap(g)),
            Frame::Draining => Item::Event(epoch, Event::Draining),
            Frame::End { code, reason, up_acked } => {
                ended = true;
                if let Some(up) = up {
                    up.update(|b| b.end(up_acked));
                }
                Item::Event(epoch, Event::End { code, reason })
            }
            Frame::Unknown => continue,
        };
        if tx.send(item).await.is_err() {
            return gone(shared, ws).await;
        }
    }
}

/// The application stopped reading: close() was called, or the client dropped.
async fn gone(shared: &Shared, ws: &mut Ws) -> Exit {
    if shared.closing.load(Ordering::SeqCst) {
        close(shared, ws).await
    } else {
        Exit::Stop
    }
}

/// Ends the session: close 1000, then wait (bounded) for tether's close.
async fn close(shared: &Shared, ws: &mut Ws) -> Exit {
    if !shared.closing.load(Ordering::SeqCst) {
        return Exit::Stop;
    }
    let reason = shared.close_reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let frame = CloseFrame { code: CloseCode::Normal, reason: reason.into() };
    if ws.close(Some(frame)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                // Acks still count while tether answers the close.
                if let (Some(up), Ok(tungstenite::Message::Text(t))) = (&shared.up, m) {
                    if let Ok(Frame::UpAck(seq) | Frame::End { up_acked: Some(seq), .. }) =
                        frame::parse_text(&t, StampMode::Prefix, "")
                    {
                        up.update(|b| b.ack(seq));
                    }
                }
            }
        })
        .await;
    }
    Exit::Stop
}
