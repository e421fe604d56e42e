//! `session.slow_consumer = "backpressure"`: the link task stops reading
//! the backend while journaling one more batch could make the frame or
//! byte limit trim a frame no client has been sent yet. The backend's own
//! TCP flow control then slows it down, and nothing unread is trimmed by
//! those limits (age and disk-budget trims still apply: they protect the
//! disk, not one session).
//!
//! "Sent" is the last seq written to a client connection (`delivered`): a
//! client that drops loses at most what was in flight, and a resume that
//! finds it trimmed still gets an exact gap report.

use std::sync::atomic::Ordering;

use tokio::sync::Notify;

use super::retention::SEGMENT_FRAMES;
use super::Session;

impl Session {
    /// True if a batch of up to `batch_bytes` can be journaled without a
    /// frame or byte trim reaching a frame no client was sent. Trims remove
    /// whole segments back to the limit, so two segments are kept in hand.
    pub(super) fn room_for_batch(&self, batch_bytes: u64) -> bool {
        let j = &self.shared.config.journal;
        let sent = self.delivered.load(Ordering::Relaxed);
        let unsent = self.assigned.load(Ordering::Relaxed).saturating_sub(sent);
        let unsent_bytes = self.lock().retained.bytes_after(sent);
        unsent + 2 * SEGMENT_FRAMES <= j.max_session_frames && unsent_bytes + batch_bytes <= j.max_session_bytes
    }

    /// Resolves when a client was sent more frames since the last call.
    pub(super) async fn sent_more(&self) {
        self.sent_more.get_or_init(|| Box::new(Notify::new())).notified().await;
    }
}
