//! The upstream guarantee's public types: its options, why a message will
//! not be acked, and its counters.

use std::fmt;

use crate::Payload;

/// Opts in to the upstream guarantee ([`crate::Builder::upstream`]) and sets
/// its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// At most this many messages wait for their ack, sent or not (default
    /// 1000). A full buffer makes [`Sender::send_reliable`] wait.
    ///
    /// [`Sender::send_reliable`]: crate::Sender::send_reliable
    pub max_unacked: usize,
    /// At most this many payload bytes wait for their ack (default 1 MiB). A
    /// single message larger than this is accepted when the buffer is empty.
    pub max_unacked_bytes: usize,
    /// What to do with messages in doubt after tether stopped without a
    /// drain (default [`InDoubt::Report`]).
    pub in_doubt: InDoubt,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream { max_unacked: 1000, max_unacked_bytes: 1 << 20, in_doubt: InDoubt::Report }
    }
}

/// The policy for messages *in doubt*: sent on a backend connection that is
/// gone, above what tether recorded as written, after tether stopped without
/// a drain (kill -9, power loss; the welcome's `up.exact` is false). They may
/// or may not have been written to the old backend connection. Messages sent
/// in a session that was replaced by a new one (a reset, or a gap with a new
/// session) are in doubt too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InDoubt {
    /// Emit [`crate::Event::InDoubt`] listing them, and fail their receipts
    /// with [`UpstreamReason::InDoubt`]. The application decides.
    #[default]
    Report,
    /// Send them again on the new connection (at-least-once: the old
    /// connection may have processed them too).
    Resend,
    /// Forget them: their receipts fail with [`UpstreamReason::Dropped`], no
    /// event (at-most-once).
    Drop,
}

/// Why an upstream message will not be acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamReason {
    /// The session ended (the backend closed, or the client ended it) and
    /// tether's `end` says the message was not written: it never will be.
    Ended,
    /// The message may or may not have been written (see [`InDoubt`]);
    /// policy [`InDoubt::Report`].
    InDoubt,
    /// The message was in doubt and policy [`InDoubt::Drop`] forgot it.
    Dropped,
    /// The client stopped (closed, taken over, dropped, or a protocol error)
    /// before tether acked the message. If it had been sent it may have been
    /// written.
    Closed,
    /// The client was built without [`crate::Builder::upstream`].
    Disabled,
}

impl UpstreamReason {
    /// `ended`, `in_doubt`, `dropped`, `closed` or `disabled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamReason::Ended => "ended",
            UpstreamReason::InDoubt => "in_doubt",
            UpstreamReason::Dropped => "dropped",
            UpstreamReason::Closed => "closed",
            UpstreamReason::Disabled => "disabled",
        }
    }
}

impl fmt::Display for UpstreamReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream message that tether did not ack, and why; the payload comes
/// back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream message not acked: {reason}")]
pub struct UpstreamError {
    /// Why.
    pub reason: UpstreamReason,
    /// The seq it was last sent with, `None` if it was never sent.
    pub seq: Option<u64>,
    /// The message.
    pub payload: Payload,
}

/// Upstream counters, see [`crate::Client::upstream_stats`] (all zero
/// without [`crate::Builder::upstream`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamStats {
    /// Messages waiting for their ack, sent or not.
    pub unacked: usize,
    /// Their payload bytes.
    pub unacked_bytes: usize,
    /// Stamped messages written to tether connections, resends included.
    pub sent: u64,
    /// Messages acked by tether (their receipts completed `Ok`).
    pub acked: u64,
    /// Messages sent again after a reconnect (never reached tether, or
    /// [`InDoubt::Resend`]).
    pub resends: u64,
    /// Messages found in doubt, whatever the policy did with them.
    pub in_doubt: u64,
    /// Receipts failed with [`UpstreamReason::Dropped`].
    pub dropped: u64,
    /// Receipts failed with [`UpstreamReason::Ended`].
    pub ended: u64,
    /// Connections tether closed with 4003 or 4004 (a bug of this client).
    pub rejected: u64,
    /// The highest seq tether acked in the current session.
    pub acked_seq: u64,
    /// The seq the next message sent will carry.
    pub next_seq: u64,
    /// The backend connection (welcome `up.conn`) of the last welcome.
    pub conn: Option<u64>,
}
