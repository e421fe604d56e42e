//! Sending under the upstream guarantee: the [`Sender`] handle and the
//! [`Receipt`] each message gets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::buffer::{Push, UpShared};
use crate::{Payload, UpstreamError, UpstreamReason};

/// Completes when tether acks the message (`Ok`), or fails with the reason
/// it will not be acked. Dropping it does not cancel the message.
#[derive(Debug)]
pub struct Receipt {
    rx: oneshot::Receiver<Result<(), UpstreamError>>,
}

impl Future for Receipt {
    type Output = Result<(), UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            // Every entry completes its sender, when dropped at the latest.
            r.unwrap_or_else(|_| {
                Err(UpstreamError { reason: UpstreamReason::Closed, seq: None, payload: Payload::Text(String::new()) })
            })
        })
    }
}

/// A cloneable handle that sends upstream messages from any task, see
/// [`crate::Client::sender`].
#[derive(Debug, Clone)]
pub struct Sender {
    pub(crate) up: Option<Arc<UpShared>>,
}

impl Sender {
    /// Queues `payload` for the backend under the upstream guarantee. Waits
    /// while the buffer is full ([`Upstream::max_unacked`],
    /// [`Upstream::max_unacked_bytes`]), then returns a [`Receipt`] that
    /// completes when tether acks the message. Messages are sent in the
    /// order these calls return. Cancelling the wait queues nothing.
    ///
    /// The buffer makes room as acks arrive, and acks are read by the same
    /// task that fills the event stream: keep reading the [`crate::Client`]
    /// stream, or a full event buffer stops acks too.
    ///
    /// # Errors
    /// [`UpstreamReason::Ended`] after the session ended,
    /// [`UpstreamReason::Closed`] after the client stopped,
    /// [`UpstreamReason::Disabled`] without [`crate::Builder::upstream`].
    ///
    /// [`Upstream::max_unacked`]: crate::Upstream::max_unacked
    /// [`Upstream::max_unacked_bytes`]: crate::Upstream::max_unacked_bytes
    pub async fn send_reliable(&self, payload: impl Into<Payload>) -> Result<Receipt, UpstreamError> {
        let payload = payload.into();
        let Some(up) = &self.up else {
            return Err(UpstreamError { reason: UpstreamReason::Disabled, seq: None, payload });
        };
        let mut payload = Some(payload);
        loop {
            let room = up.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match up.buf().try_push(payload.take().expect("payload")) {
                Ok(rx) => {
                    up.work.notify_one();
                    return Ok(Receipt { rx });
                }
                Err(Push::Stopped(e)) => return Err(e),
                Err(Push::Full(p)) => payload = Some(p),
            }
            room.await;
        }
    }
}

impl Sender {
    /// Waits until no message waits for its ack: every message queued so
    /// far (from any task) was acked or failed. Returns at once without
    /// [`crate::Builder::upstream`] or after the client stopped.
    pub async fn flush(&self) {
        let Some(up) = &self.up else { return };
        loop {
            let room = up.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if up.buf().is_empty() {
                return;
            }
            room.await;
        }
    }
}
