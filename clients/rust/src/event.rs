//! What the [`Client`](crate::Client) stream yields: the [`Event`]s, and the
//! welcome, gap and reset reports they carry.

use std::time::Duration;

use crate::{Message, UpMessage};

/// How tether answered a connection (the welcome's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new session.
    New,
    /// The session resumed; the backend connection was kept.
    Resumed,
    /// The session resumed on a new backend connection (per-connection
    /// backend state such as subscriptions is gone).
    Restarted,
    /// Frames were lost; see the [`GapReport`].
    Gap,
}

/// Frames `from..=to` were journaled before this connection started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// First replayed seq.
    pub from: u64,
    /// Last replayed seq; later seqs are live.
    pub to: u64,
}

/// The `welcome` control frame that starts every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The session token.
    pub session: String,
    /// How the connection was resolved.
    pub outcome: Outcome,
    /// What is replayed, if anything.
    pub replay: Option<Replay>,
    /// The gap report when `outcome` is [`Outcome::Gap`] (also delivered as
    /// an [`Event::Gap`] right after the welcome).
    pub gap: Option<GapReport>,
}

/// The range of seqs that will never be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// First lost seq.
    pub from: u64,
    /// Last lost seq, `None` when unknown (the old session is gone).
    pub to: Option<u64>,
}

/// Frames the application will not get (docs/PROTOCOL.md §6, §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapReport {
    /// `trimmed`, `expired`, `unknown_session` or `journal_lost`.
    pub reason: String,
    /// The offset the client resumed with (for a mid-stream gap: the last seq
    /// sent on this connection).
    pub requested_offset: u64,
    /// The next seq that will be delivered.
    pub first_available: u64,
    /// What is lost.
    pub lost: Lost,
    /// True for a `gap` frame during a connection, false for a welcome's.
    pub mid_stream: bool,
    /// True if a new session started (every reason but `trimmed`): seqs
    /// restart at 1 and the backend sees a new connection. Resync.
    pub new_session: bool,
}

/// Why the client gave up its session and started a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetReason {
    /// tether refused the resume with this HTTP status (400, 401 or 409):
    /// the token or the offset will never be accepted.
    Refused(u16),
    /// [`Builder::max_failed_resumes`] resume attempts in a row failed.
    ///
    /// [`Builder::max_failed_resumes`]: crate::Builder::max_failed_resumes
    FailedResumes,
}

/// The client dropped its session; the next connection starts a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetInfo {
    /// Why.
    pub reason: ResetReason,
    /// Failed resume attempts in a row.
    pub failed_attempts: u32,
    /// The offset of the abandoned session.
    pub last_offset: u64,
}

/// What the [`Client`] stream yields.
///
/// [`Client`]: crate::Client
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A data message, each seq once and in order.
    Message(Message),
    /// A connection was established.
    Welcome(Welcome),
    /// Frames were lost; resync if it matters.
    Gap(GapReport),
    /// tether is shutting down; the client reconnects after the 1012 close.
    Draining,
    /// The connection dropped; the client retries after `retry_in`.
    Disconnected {
        /// What happened, for logs.
        error: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// The session was given up; a new one starts. Resync.
    Reset(ResetInfo),
    /// The session ended (the backend closed, or another client ended it);
    /// the stream ends after this.
    End {
        /// The backend's close code (1005: none, 1006: it vanished).
        code: u16,
        /// The backend's close reason.
        reason: String,
    },
    /// Another connection resumed this session (close 4001); this client
    /// stops and the stream ends.
    TakenOver,
    /// Upstream guarantee, policy [`InDoubt::Report`]: these messages were
    /// sent on a backend connection that is gone (tether was killed, or the
    /// session was replaced) and may or may not have been written to it.
    /// Their receipts fail with [`UpstreamReason::InDoubt`]. Follows the
    /// [`Event::Welcome`] that revealed them.
    ///
    /// [`InDoubt::Report`]: crate::InDoubt::Report
    /// [`UpstreamReason::InDoubt`]: crate::UpstreamReason::InDoubt
    InDoubt(Vec<UpMessage>),
    /// Upstream guarantee: tether closed the connection because a message
    /// had no valid stamp (4003) or skipped seqs (4004). A bug of this
    /// client; it resumes, and resends from the welcome's `up.next`.
    UpstreamRejected {
        /// 4003 or 4004.
        code: u16,
        /// tether's close reason.
        reason: String,
    },
}
