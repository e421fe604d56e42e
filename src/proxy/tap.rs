//! A side door into a client socket's write half for WebSocket frames that
//! are already encoded: a batch stamped and framed into one buffer, by the
//! pump from the ring or on the blocking pool from journal chunks (see
//! `journal::chunk::read_wire`), goes out as that buffer, without one
//! tungstenite `Message`, one copy into tungstenite's write buffer, one
//! UTF-8 check and one `BiLock` round per frame (that per-frame work held
//! replay near 3 M frames/s, docs/BENCHMARKS.md).
//!
//! Server frames are unmasked, so the wire bytes of a frame are a header
//! and the stamped payload, and frames from the door can be put between
//! tungstenite's frames as long as neither is cut: the door's bytes go out
//! only at a frame boundary of tungstenite's stream (tungstenite's write
//! buffer only ever holds whole frames, so a write it makes in full ends
//! at one), and once started they go out in full before tungstenite's next
//! byte. The pump flushes tungstenite before it opens the door and waits
//! for the door to drain before it writes through tungstenite again, so
//! its own frames stay in order; a pong the reader task writes meanwhile
//! may land on either side of a batch, which is allowed.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the door holds: at most one batch, waiting or partly written.
type Slot = Arc<Mutex<Bytes>>;

/// The pump's end of the door.
#[derive(Clone)]
pub(super) struct Tap(Slot);

impl Tap {
    /// Queues `wire` (whole frames) for the next write or flush. The caller
    /// flushes the socket afterwards and before queueing again.
    pub(super) fn put(&self, wire: Bytes) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        debug_assert!(slot.is_empty(), "the previous batch was flushed");
        *slot = wire;
    }
}

/// The socket's end: wraps the I/O that tungstenite writes to.
pub(crate) struct RawTap<S> {
    inner: S,
    slot: Slot,
    /// tungstenite's last write went out in full: its stream is at a frame
    /// boundary.
    boundary: bool,
    /// tungstenite wrote a close frame: no data frame may follow it.
    closed: bool,
}

impl<S> RawTap<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S) -> RawTap<S> {
        RawTap { inner, slot: Slot::default(), boundary: true, closed: false }
    }

    /// The door's other end, for the pump.
    pub(super) fn tap(&self) -> Tap {
        Tap(self.slot.clone())
    }
}

impl<S: AsyncWrite + Unpin> RawTap<S> {
    /// Writes out whatever the door holds.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.closed {
            *slot = Bytes::new();
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "data after a close frame")));
        }
        while !slot.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &slot))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            slot.advance(n);
        }
        *slot = Bytes::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RawTap<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RawTap<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.boundary {
            ready!(this.drain(cx))?;
            // The first byte at a boundary is a frame's: FIN and opcode.
            if buf.first().is_some_and(|b| b & 0x0f == 0x8) {
                this.closed = true;
            }
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.boundary = n == buf.len();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.boundary {
            ready!(this.drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The door's bytes never cut a frame tungstenite is part-way through,
    /// and nothing passes a close frame.
    #[tokio::test]
    async fn batches_go_out_between_frames() {
        let (a, mut b) = tokio::io::duplex(4);
        let mut t = RawTap::new(a);
        let tap = t.tap();
        // tungstenite's frame, cut short by the 4-byte pipe.
        let n = t.write(b"\x81\x05hello").await.unwrap();
        assert_eq!(n, 4);
        tap.put(Bytes::from_static(b"\x81\x01x"));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        t.write_all(b"llo").await.unwrap();
        t.flush().await.unwrap();
        t.write_all(b"\x88\x00").await.unwrap();
        tap.put(Bytes::from_static(b"\x81\x01y"));
        assert_eq!(t.flush().await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        t.shutdown().await.unwrap();
        drop(t);
        assert_eq!(reader.await.unwrap(), b"\x81\x05hello\x81\x01x\x88\x00");
    }
}
