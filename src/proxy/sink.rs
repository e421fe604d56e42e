//! The client connection's write half: data batches, control frames,
//! pings and closes, each with the rules that apply to it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::config::StampMode;
use crate::net::LazyRead;
use crate::protocol::control::Control;
use crate::protocol::stamp::Stamper;
use crate::protocol::Payload;

use super::tap::{RawTap, Tap};

/// An upgraded client connection.
pub(super) type ClientSocket = WebSocketStream<RawTap<LazyRead<TokioIo<Upgraded>>>>;

/// Bytes a prefix stamp adds at most: 20 digits and ':'.
const STAMP_ROOM: usize = 21;

/// How long tether waits to deliver a last frame (a close, `draining`,
/// `end`) to a client that may no longer read.
pub(super) const LAST_WORDS: Duration = Duration::from_secs(1);

/// Writes to one client.
pub(super) struct ClientSink {
    sink: SplitSink<ClientSocket, Message>,
    /// Where replay batches of wire bytes go in.
    tap: Tap,
    /// False for `stamp = "none"` clients, which get no control frames.
    inband: bool,
}

impl ClientSink {
    /// Wraps the write half of a client socket and its tap.
    pub(super) fn new(sink: SplitSink<ClientSocket, Message>, tap: Tap, inband: bool) -> ClientSink {
        ClientSink { sink, tap, inband }
    }

    /// True if the client gets in-band control frames.
    pub(super) fn inband(&self) -> bool {
        self.inband
    }

    /// Sends a control frame (nothing for a client without control frames).
    pub(super) async fn control(&mut self, control: Control) -> Result<(), WsError> {
        if !self.inband {
            return Ok(());
        }
        self.sink.send(control.to_message()).await
    }

    /// A control frame on the way out, given [`LAST_WORDS`] at most.
    pub(super) async fn last_control(&mut self, control: Control) {
        let _ = tokio::time::timeout(LAST_WORDS, self.control(control)).await;
    }

    /// A keepalive ping.
    pub(super) async fn ping(&mut self) -> Result<(), WsError> {
        self.sink.send(Message::Ping(Default::default())).await
    }

    /// Queues `message` behind what is already queued, writing out earlier
    /// ones first if the buffer is full. Once this returns, the message goes
    /// out with the next write or flush, even if the caller is dropped.
    pub(super) async fn queue(&mut self, message: Message) -> Result<(), WsError> {
        self.sink.feed(message).await
    }

    /// Queues a replay batch of wire bytes (whole frames, stamped) behind
    /// what tungstenite holds, which is flushed first, so frames stay in
    /// order (see `tap`). The batch goes out with the next write or flush.
    pub(super) async fn put_wire(&mut self, wire: Bytes) -> Result<(), WsError> {
        self.sink.flush().await?;
        self.tap.put(wire);
        Ok(())
    }

    /// Writes out everything queued.
    pub(super) async fn flush(&mut self) -> Result<(), WsError> {
        self.sink.flush().await
    }

    /// Sends a close frame with `code` and `reason` (truncated to fit).
    pub(super) async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: truncate(reason).into() };
        let _ = tokio::time::timeout(LAST_WORDS, self.sink.send(Message::Close(Some(frame)))).await;
    }

    /// Flushes the close reply tungstenite queued when it read the
    /// client's close, and closes the write half.
    pub(super) async fn close_reply(&mut self) {
        let _ = tokio::time::timeout(LAST_WORDS, self.sink.close()).await;
    }
}

/// One buffer for the stamped copies of `frames` (see `Stamper::stamp_in`):
/// no allocation per frame.
pub(super) fn stamp_arena(frames: &[(u64, Payload)], stamper: &Stamper) -> BytesMut {
    let room = match stamper.mode() {
        StampMode::None => 0,
        _ => frames.iter().map(|(_, p)| p.len() + STAMP_ROOM).sum(),
    };
    BytesMut::with_capacity(room)
}

/// Close reasons are limited to 123 bytes.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Codes that may appear in a close frame on the wire (RFC 6455 §7.4).
pub(super) fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
