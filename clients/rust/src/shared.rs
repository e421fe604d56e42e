//! What a [`Client`](crate::Client) and its connection task share: the
//! cursor (token, offset, what was delivered), the [`State`], the counters
//! ([`Stats`]), the upstream buffer, and the items the task queues for the
//! stream.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::upstream::UpShared;
use crate::{Error, Event, Message, UpstreamReason};

/// The connection state, see [`Client::state`].
///
/// [`Client::state`]: crate::Client::state
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connecting (first attempt, or right after a backoff).
    Connecting,
    /// Welcomed; messages flow.
    Open,
    /// Waiting for the backoff before the next attempt.
    Reconnecting,
    /// [`Client::close`] was called.
    ///
    /// [`Client::close`]: crate::Client::close
    Closed,
    /// The session ended.
    Ended,
    /// Another connection took the session over.
    TakenOver,
}

impl State {
    pub(crate) fn from_u8(v: u8) -> State {
        [State::Connecting, State::Open, State::Reconnecting, State::Closed, State::Ended, State::TakenOver]
            [usize::from(v).min(5)]
    }
}

/// Counters, see [`Client::stats`].
///
/// [`Client::stats`]: crate::Client::stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Data frames received from tether.
    pub received: u64,
    /// Frames dropped because their seq was already delivered.
    pub duplicates: u64,
    /// Messages yielded to the application.
    pub delivered: u64,
    /// Connections welcomed.
    pub connections: u64,
}

pub(crate) struct Cursor {
    pub(crate) token: Option<String>,
    /// Last seq acknowledged by the application: the offset of the next resume.
    pub(crate) offset: u64,
    /// Last seq yielded to the application (≥ offset): anything not above is a duplicate.
    pub(crate) last: u64,
    /// Bumped when the session changes (new session after a gap, reset):
    /// what was queued from the old one is dropped.
    pub(crate) epoch: u64,
}

pub(crate) struct Shared {
    pub(crate) cursor: Mutex<Cursor>,
    pub(crate) state: AtomicU8,
    pub(crate) closing: AtomicBool,
    pub(crate) close_reason: Mutex<String>,
    pub(crate) notify: Notify,
    pub(crate) received: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) up: Option<Arc<UpShared>>,
}

impl Shared {
    pub(crate) fn cursor(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    /// Fails the upstream messages left (no-op without the guarantee).
    pub(crate) fn stop_up(&self, reason: UpstreamReason) {
        if let Some(up) = &self.up {
            up.update(|b| b.stop(reason));
        }
    }
}

pub(crate) enum Item {
    Message(u64, Message),
    Event(u64, Event),
    Fatal(Error),
}
