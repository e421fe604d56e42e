//! The operations sessions queue for the journal writer.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::{SessionMeta, UpMark};
use crate::protocol::SessionId;

/// One journal operation, applied in order by the writer.
pub(crate) enum Op {
    /// A chunk of `frames` consecutive frames from `first` (see [`chunk`]).
    Append {
        session: SessionId,
        first: u64,
        frames: u32,
        chunk: Bytes,
        committed: Arc<watch::Sender<u64>>,
        at: Instant,
    },
    PutMeta {
        session: SessionId,
        meta: SessionMeta,
        written: Option<oneshot::Sender<()>>,
    },
    Trim {
        session: SessionId,
        upto: u64,
        meta: SessionMeta,
    },
    Purge {
        session: SessionId,
    },
    /// A session's upstream mark; `acked` advances to `mark.written` once
    /// it is durable (the client's `up_ack` follows it).
    PutUp {
        session: SessionId,
        mark: UpMark,
        acked: Arc<watch::Sender<u64>>,
    },
    /// The request a session's backend connection was opened with.
    PutRequest {
        session: SessionId,
        request: Vec<u8>,
    },
    /// Sync, then stop the writer: later operations fail with `Closed`.
    /// `clean`: every session stopped in order (its marks are exact).
    Close {
        done: oneshot::Sender<()>,
        clean: bool,
    },
}

impl Op {
    /// Frame bytes this operation writes.
    pub(super) fn payload_bytes(&self) -> usize {
        match self {
            Op::Append { chunk, .. } => chunk.len(),
            _ => 0,
        }
    }

    /// Frames this operation appends.
    pub(super) fn frames(&self) -> usize {
        match self {
            Op::Append { frames, .. } => *frames as usize,
            _ => 0,
        }
    }
}
