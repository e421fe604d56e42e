//! The crate's [`Error`].

use crate::Payload;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL or a header could not make an upgrade request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// tether sent something this client cannot read (often: the wrong
    /// [`StampMode`]). The client closes the connection (4000) and stops.
    ///
    /// [`StampMode`]: crate::StampMode
    #[error("protocol error: {0}")]
    Protocol(String),
    /// [`Client::send`]: the queue is full ([`Builder::send_queue`]).
    ///
    /// [`Client::send`]: crate::Client::send
    /// [`Builder::send_queue`]: crate::Builder::send_queue
    #[error("the send queue is full")]
    QueueFull(Payload),
    /// [`Client::send`]: the client has stopped (closed, ended, taken over).
    ///
    /// [`Client::send`]: crate::Client::send
    #[error("the client has stopped")]
    Stopped(Payload),
}
