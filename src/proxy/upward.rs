//! One client connection's side of the upstream guarantee (docs/PROTOCOL.md
//! §12): the reader checks each stamped message against the seq this
//! connection must send next; the pump sends `up_ack` frames as the
//! session's journaled mark moves. Which messages are written, and once
//! only, is the session's link task's business (`session::up`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Message;

use super::pump::{Exit, Gone};
use crate::metrics::UpMetrics;
use crate::protocol::control::Control;
use crate::protocol::upstamp::unstamp;
use crate::session::{Session, ToBackend};

/// The oldest message read and not yet acked, and when it was read: what
/// `tether_upstream_ack_seconds` measures. The reader only loads `seq`
/// per message; the lock is taken once per ack.
#[derive(Default)]
struct OldestUnacked {
    /// Its seq; 0 when every message read was acked.
    seq: AtomicU64,
    at: Mutex<Option<Instant>>,
}

type Oldest = Arc<OldestUnacked>;

/// The reader's half: contiguity on this connection.
pub(super) struct UpReader {
    /// The seq this connection must send next.
    expected: u64,
    /// Wakes the pump to ack again after a duplicate.
    reack: Arc<Notify>,
    oldest: Oldest,
}

impl UpReader {
    /// Checks a client data message: `Ok(Some)` to queue toward the
    /// backend, `Ok(None)` for a message this connection (or the welcome)
    /// already covered, or how the connection ends (4003, 4004).
    pub(super) fn check(&mut self, msg: Message, metrics: &UpMetrics) -> Result<Option<ToBackend>, Exit> {
        let (seq, msg) = unstamp(msg).map_err(|e| {
            tracing::info!(error = %e, "client message without a valid upstream stamp; closing 4003");
            metrics.unstamped.inc();
            Exit::Gone(Gone::BadStamp)
        })?;
        if seq > self.expected {
            tracing::info!(seq, expected = self.expected, "client skipped upstream seqs; closing 4004");
            metrics.seq_gap.inc();
            return Err(Exit::Gone(Gone::SeqGap));
        }
        if seq < self.expected {
            metrics.duplicate.inc();
            self.reack.notify_one();
            return Ok(None);
        }
        self.expected += 1;
        if self.oldest.seq.load(Ordering::Acquire) == 0 {
            *self.oldest.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.oldest.seq.store(seq, Ordering::Release);
        }
        Ok(Some(ToBackend::Stamped(seq, msg)))
    }
}

/// The pump's half: the acks.
pub(super) struct UpAcks {
    acked: watch::Receiver<u64>,
    reack: Arc<Notify>,
    oldest: Oldest,
}

impl UpAcks {
    /// Subscribes to `session`'s acked seq. Subscribe before the welcome is
    /// built, so no ack after it is missed.
    pub(super) fn subscribe(session: &Session) -> UpAcks {
        UpAcks { acked: session.up().watch_acked(), reack: Arc::default(), oldest: Arc::default() }
    }

    /// The reader's half, for a connection whose welcome said `next`.
    pub(super) fn reader(&self, next: u64) -> UpReader {
        UpReader { expected: next, reack: self.reack.clone(), oldest: self.oldest.clone() }
    }

    /// Resolves when an ack is due: the mark moved, or a duplicate came.
    pub(super) async fn due(&mut self) {
        tokio::select! {
            r = self.acked.changed() => if r.is_err() { std::future::pending::<()>().await },
            () = self.reack.notified() => {}
        }
    }

    /// The ack to send now.
    pub(super) fn ack(&mut self, metrics: &UpMetrics) -> Control {
        let seq = *self.acked.borrow_and_update();
        let oldest = self.oldest.seq.load(Ordering::Acquire);
        if oldest != 0 && oldest <= seq {
            if let Some(at) = *self.oldest.at.lock().unwrap_or_else(|p| p.into_inner()) {
                metrics.ack_seconds.observe(at.elapsed().as_secs_f64());
            }
            self.oldest.seq.store(0, Ordering::Release);
        }
        metrics.acks.inc();
        Control::UpAck { seq }
    }
}
