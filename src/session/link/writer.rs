//! The link task's write half: forwards the client's messages from the
//! session's bounded channel to the backend socket, in order, each once.
//!
//! Messages that are already queued go out together: they are handed to
//! the socket one after another (up to [`BATCH_FRAMES`] messages and
//! [`BATCH_BYTES`] bytes) and flushed once. One write per message was one
//! `sendto` per message, and held tether to a fifth of the relay's rate
//! upstream (docs/BENCHMARKS.md). What waits for the backend stays bounded:
//! the channel (64 messages) plus one batch.

use std::pin::Pin;

use futures_util::stream::SplitSink;
use futures_util::{FutureExt, Sink};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::super::up::Accept;
use super::super::{Session, ToBackend};
use crate::journal::EndInfo;
use crate::upstream::BackendSocket;

/// Messages handed to the socket before one flush, at most.
const BATCH_FRAMES: u32 = 64;
/// Bytes after which no further message joins a batch.
const BATCH_BYTES: usize = 64 * 1024;

/// Messages handed to the socket together.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Batch {
    /// Data messages.
    pub(super) frames: u32,
    /// Their payload bytes.
    pub(super) bytes: usize,
    /// Stamped messages among them (upstream guarantee).
    pub(super) stamped: u32,
    /// The last stamped seq, if any: once the batch is flushed, every seq
    /// up to it was written.
    pub(super) last_seq: Option<u64>,
}

impl Batch {
    fn add(&mut self, m: &Message, seq: Option<u64>) {
        self.frames += 1;
        self.bytes += m.len();
        if seq.is_some() {
            self.stamped += 1;
            self.last_seq = seq;
        }
    }
}

/// What the writer did.
pub(super) enum Wrote {
    /// A batch of data messages reached the socket.
    Data(Batch),
    /// Only stamped messages taken before (or out of order): none written.
    Skipped,
    /// The client's close reached the socket.
    Close(EndInfo),
    /// The session dropped its sender: nothing more will come.
    Done,
}

/// The write half of a backend connection.
pub(super) struct Writer {
    pub(super) sink: SplitSink<BackendSocket, Message>,
    pub(super) upstream: mpsc::Receiver<Box<ToBackend>>,
    /// A batch handed to the socket but not yet flushed; counted as
    /// forwarded (and its seqs as written) once flushed.
    pub(super) unflushed: Option<Batch>,
    /// A close was handed to the socket: only flushing is left.
    pub(super) closed: bool,
    /// A close taken from the channel behind a batch; it goes next.
    pub(super) held: Option<Box<ToBackend>>,
}

impl Writer {
    /// A writer for `sink`, fed by `upstream`.
    pub(super) fn new(sink: SplitSink<BackendSocket, Message>, upstream: mpsc::Receiver<Box<ToBackend>>) -> Writer {
        Writer { sink, upstream, unflushed: None, closed: false, held: None }
    }

    /// Flushes what the socket holds, then hands it the client's next
    /// messages and flushes them. Cancel-safe at every await: a message is
    /// either still in the channel or already in the socket's buffer (and
    /// `unflushed` says so), so the `select!` may drop this future whenever
    /// another arm fires and call it again later.
    pub(super) async fn forward(&mut self, session: &Session) -> Result<Wrote, WsError> {
        if let Some(batch) = self.unflushed {
            self.flush().await?;
            self.unflushed = None;
            return Ok(Wrote::Data(batch));
        }
        if self.closed {
            self.flush().await?;
            return std::future::pending().await;
        }
        std::future::poll_fn(|cx| Pin::new(&mut self.sink).poll_ready(cx)).await?;
        let first = match self.held.take() {
            Some(cmd) => cmd,
            None => match self.upstream.recv().await {
                Some(cmd) => cmd,
                None => return Ok(Wrote::Done),
            },
        };
        let mut batch = Batch::default();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match *cmd {
                ToBackend::Data(m) => self.hand(m, None, &mut batch)?,
                ToBackend::Stamped(seq, m) => match session.up().accept(seq) {
                    Accept::Next => self.hand(m, Some(seq), &mut batch)?,
                    Accept::Duplicate => session.shared.rt.metrics.up.duplicate.inc(),
                    Accept::Gap => {
                        tracing::error!(session = %session.id, seq, "upstream seq out of order; not written");
                        session.shared.rt.metrics.up.seq_gap.inc();
                    }
                },
                ToBackend::Close(frame) if batch.frames == 0 => return self.close(frame),
                close @ ToBackend::Close(_) => {
                    self.held = Some(Box::new(close));
                    break;
                }
            }
            if batch.frames >= BATCH_FRAMES || batch.bytes >= BATCH_BYTES {
                break;
            }
            // Only what is queued already, and only while the socket takes
            // more without a flush: a lone message is not delayed.
            match std::future::poll_fn(|cx| Pin::new(&mut self.sink).poll_ready(cx)).now_or_never() {
                Some(ready) => ready?,
                None => break,
            }
            next = self.upstream.try_recv().ok();
        }
        if batch.frames == 0 {
            return Ok(Wrote::Skipped);
        }
        self.flush().await?;
        self.unflushed = None;
        Ok(Wrote::Data(batch))
    }

    /// Hands `m` to the socket as part of `batch` (see `unflushed`).
    fn hand(&mut self, m: Message, seq: Option<u64>, batch: &mut Batch) -> Result<(), WsError> {
        batch.add(&m, seq);
        Pin::new(&mut self.sink).start_send(m)?;
        self.unflushed = Some(*batch);
        Ok(())
    }

    /// Hands the client's normal close to the socket.
    fn close(&mut self, frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Result<Wrote, WsError> {
        let info = frame
            .as_ref()
            .map_or_else(EndInfo::normal, |f| EndInfo { code: f.code.into(), reason: f.reason.to_string() });
        Pin::new(&mut self.sink).start_send(Message::Close(frame))?;
        // The backend's answer is awaited from now on, whether or not the
        // close can be flushed: a backend that stopped reading must not
        // keep the session open.
        self.closed = true;
        Ok(Wrote::Close(info))
    }

    /// Flushes what the socket holds.
    pub(super) async fn flush(&mut self) -> Result<(), WsError> {
        std::future::poll_fn(|cx| Pin::new(&mut self.sink).poll_flush(cx)).await
    }
}
