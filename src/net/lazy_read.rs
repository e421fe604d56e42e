//! A socket wrapper whose read buffer exists only while the socket streams.
//!
//! tungstenite reads at most `read_buffer_size` bytes per system call into a
//! buffer every connection keeps for its whole life. Large buffers make idle
//! sessions expensive (tether holds two sockets per session); small ones mean
//! many system calls for large messages. `LazyRead` takes both: tungstenite
//! keeps a small buffer (`limits.read_buffer_bytes`), and each read from the
//! kernel takes up to [`BURST`] bytes. A read that brings more than
//! tungstenite asked for means the socket is streaming: from then on the
//! kernel's bytes go straight into a burst buffer on the heap, kept until a
//! read finds the socket empty. So an idle socket holds no burst buffer, and
//! a streaming one allocates it once, not once per burst.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes one read system call takes in.
pub(crate) const BURST: usize = 16 * 1024;

/// Wraps `S`; see the module documentation.
#[derive(Debug)]
pub(crate) struct LazyRead<S> {
    inner: S,
    /// The burst buffer: empty (unallocated) unless the socket streams,
    /// else [`BURST`] bytes, of which `start..end` are not handed out yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<S> LazyRead<S> {
    /// Wraps `inner`, with nothing buffered.
    pub(crate) fn new(inner: S) -> LazyRead<S> {
        LazyRead { inner, buf: Vec::new(), start: 0, end: 0 }
    }

    /// Frees the burst buffer (nothing in it is unread).
    fn release(&mut self) {
        debug_assert_eq!(self.start, self.end);
        self.buf = Vec::new();
        (self.start, self.end) = (0, 0);
    }
}
impl<S: AsyncRead + Unpin> LazyRead<S> {
    /// A read while no burst buffer is kept: into the stack, and whatever
    /// `out` has no room for starts a burst buffer.
    fn read_via_stack(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); BURST];
        let mut burst = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut burst))?;
        let filled = burst.filled();
        let n = filled.len().min(out.remaining());
        out.put_slice(&filled[..n]);
        if n < filled.len() {
            let rest = &filled[n..];
            self.buf = vec![0; BURST];
            self.buf[..rest.len()].copy_from_slice(rest);
            (self.start, self.end) = (0, rest.len());
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LazyRead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            if out.remaining() >= BURST {
                this.release();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                return this.read_via_stack(cx, out);
            }
            // Streaming: straight into the kept buffer.
            let mut burst = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut burst) {
                Poll::Ready(Ok(())) if !burst.filled().is_empty() => (this.start, this.end) = (0, burst.filled().len()),
                // Nothing more for now (or the end, or an error): the
                // socket stopped streaming, the buffer goes.
                other => {
                    this.release();
                    return other;
                }
            }
        }
        let n = (this.end - this.start).min(out.remaining());
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LazyRead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads see every byte in order, a read as large as a burst goes
    /// straight through, and nothing stays buffered once consumed.
    #[tokio::test]
    async fn hands_out_everything_in_order_and_frees_it() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut r = LazyRead::new(a);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        b.write_all(&data).await.unwrap();
        drop(b);
        let mut got = Vec::new();
        let mut small = [0u8; 1000];
        while got.len() < 20_000 {
            let n = r.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        assert_eq!(got, data);
        assert_eq!((r.buf.capacity(), r.start, r.end), (0, 0, 0));
    }

    /// A streaming socket keeps one burst buffer while data flows and
    /// frees it when a read finds the socket empty.
    #[tokio::test]
    async fn keeps_the_buffer_only_while_streaming() {
        use futures_util::FutureExt;
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut r = LazyRead::new(a);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        b.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 1000];
        let mut kept = None;
        while got.len() < data.len() {
            let n = r.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
            let ptr = r.buf.as_ptr();
            if !r.buf.is_empty() {
                // One allocation for the whole stream.
                assert_eq!(*kept.get_or_insert(ptr), ptr);
            }
        }
        assert_eq!(got, data);
        assert!(kept.is_some());
        assert!(r.read(&mut small).now_or_never().is_none(), "nothing more to read yet");
        assert_eq!((r.buf.capacity(), r.start, r.end), (0, 0, 0));
        b.write_all(b"more").await.unwrap();
        let n = r.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"more");
        assert_eq!(r.buf.capacity(), 0);
    }
}
