//! A socket wrapper whose read buffer exists only while it holds data.
//!
//! tungstenite reads at most `read_buffer_size` bytes per system call into a
//! buffer every connection keeps for its whole life. Large buffers make idle
//! sessions expensive (tether holds two sockets per session); small ones mean
//! many system calls for large messages. `LazyRead` takes both: tungstenite
//! keeps a small buffer (`limits.read_buffer_bytes`), and each read from the
//! kernel takes up to [`BURST`] bytes into a stack buffer. What tungstenite
//! did not ask for yet is kept on the heap until it is consumed, then freed,
//! so an idle socket holds no burst buffer at all.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes one read system call takes in.
pub(crate) const BURST: usize = 16 * 1024;

/// Wraps `S`; see the module documentation.
#[derive(Debug)]
pub(crate) struct LazyRead<S> {
    inner: S,
    /// Bytes read from the kernel but not handed out yet; empty (and
    /// unallocated) most of the time.
    pending: Vec<u8>,
    /// How much of `pending` has been handed out.
    pos: usize,
}

impl<S> LazyRead<S> {
    /// Wraps `inner`, with nothing buffered.
    pub(crate) fn new(inner: S) -> LazyRead<S> {
        LazyRead { inner, pending: Vec::new(), pos: 0 }
    }

    /// Hands out as much of `bytes` as `out` takes and keeps the rest.
    fn hand_out(&mut self, bytes: &[u8], out: &mut ReadBuf<'_>) {
        let n = bytes.len().min(out.remaining());
        out.put_slice(&bytes[..n]);
        if n < bytes.len() {
            self.pending = bytes[n..].to_vec();
            self.pos = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LazyRead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.pending.len() {
            let n = (this.pending.len() - this.pos).min(out.remaining());
            out.put_slice(&this.pending[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.pending.len() {
                this.pending = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= BURST {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut scratch = [MaybeUninit::<u8>::uninit(); BURST];
        let mut burst = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut this.inner).poll_read(cx, &mut burst) {
            Poll::Ready(Ok(())) => {
                this.hand_out(burst.filled(), out);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
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
        assert_eq!((r.pending.capacity(), r.pos), (0, 0));
    }
}
