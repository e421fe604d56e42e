//! Token rotation (docs/PROTOCOL.md §8): every resume is answered with the
//! next generation of the session's token, and once a client resumed with a
//! generation, every older one is refused. A token copied from a log is
//! then useless as soon as its owner resumed again.
//!
//! The session keeps `token_used`, the highest generation presented, in its
//! journaled record, so the rule holds across a restart. It is written
//! before the 101 (which carries the next generation) is sent: a restarted
//! tether never accepts a generation it had already superseded. Every other
//! writer of the record copies it under the session's lock and queues it
//! right away (the frame path refreshes `token_used` after its append), and
//! the journal's queue is first come, first served, so an older copy cannot
//! land after this one — except behind a trim that waits out a full disk.

use super::Session;
use crate::journal::JournalError;

/// Why a token's generation is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RotationError {
    /// A newer generation of the session's token was used (401
    /// `token_superseded`).
    #[error("this token was superseded: the session was resumed with a newer one")]
    Superseded,
    /// The record could not be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl Session {
    /// A client resumes with generation `generation` of the session's token:
    /// refused if a newer one was used, else recorded as the newest used
    /// (returns once it is journaled).
    ///
    /// Both the newest generation handed out and the one before it are
    /// accepted: the client that resumed with generation g may not have
    /// received the welcome with g + 1 (the connection dropped first), so g
    /// must keep working until g + 1 is used. A generation higher than
    /// g + 1 can only be one tether minted before losing an unsynced write
    /// (`journal.sync` other than `always`); the MAC says tether minted it,
    /// so it is accepted too.
    pub(crate) async fn use_token(&self, generation: u32) -> Result<(), RotationError> {
        let meta = {
            let mut inner = self.lock();
            if generation < inner.meta.token_used {
                return Err(RotationError::Superseded);
            }
            if generation == inner.meta.token_used {
                return Ok(());
            }
            inner.meta.token_used = generation;
            inner.meta.clone()
        };
        self.shared.journal.put_meta_written(self.id, meta).await?;
        Ok(())
    }
}
