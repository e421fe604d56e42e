//! The upstream guarantee's durable state (docs/PROTOCOL.md §12): per
//! session, how far the client's messages were written to the backend
//! connection, and the marker a clean drain leaves so the next start knows
//! those marks are exact.
//!
//! A mark is written after the messages it covers were written to the
//! backend, and the client's ack waits for the mark: so an ack is never
//! taken back. After a kill -9 a mark may lag what was written (the
//! messages after it are in doubt); after a drain it is exact.

use rocksdb::DB;

use super::{JournalError, CF_META, CF_UPSTREAM};
use crate::protocol::SessionId;

/// The `meta` key a clean drain writes just before the journal closes.
const CLEAN_STOP: &[u8] = b"clean_stop";

/// Flag bit: the backend connection stopped with no write in flight.
const STOPPED: u8 = 1;

/// One session's written mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct UpMark {
    /// Every client message up to this seq was written to a backend
    /// connection of the session.
    pub(crate) written: u64,
    /// True if the connection that wrote them has stopped, with nothing
    /// after `written` handed to its socket: `written` is then exact.
    pub(crate) stopped: bool,
}

impl UpMark {
    /// The stored form: `written` (8 bytes, big-endian), then a flag byte.
    pub(super) fn encode(&self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[..8].copy_from_slice(&self.written.to_be_bytes());
        b[8] = if self.stopped { STOPPED } else { 0 };
        b
    }

    pub(super) fn decode(id: &SessionId, v: &[u8]) -> Result<UpMark, JournalError> {
        let bad = || JournalError::Corrupt(format!("upstream mark of session {id}"));
        let written: [u8; 8] = v.get(..8).and_then(|w| w.try_into().ok()).ok_or_else(bad)?;
        let flags = *v.get(8).ok_or_else(bad)?;
        Ok(UpMark { written: u64::from_be_bytes(written), stopped: flags & STOPPED != 0 })
    }
}

/// True if the last process to use the journal drained cleanly. The marker
/// is removed (synced) before anything else is written, so a crash of this
/// process is never mistaken for a clean stop by the next.
pub(super) fn take_clean_stop(db: &DB) -> Result<bool, JournalError> {
    let meta = db.cf_handle(CF_META).expect("meta cf");
    if db.get_cf(meta, CLEAN_STOP)?.is_none() {
        return Ok(false);
    }
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.delete_cf_opt(meta, CLEAN_STOP, &wo)?;
    Ok(true)
}

/// Adds the clean-stop marker to the drain's last batch.
pub(super) fn put_clean_stop(db: &DB, batch: &mut rocksdb::WriteBatch) {
    batch.put_cf(db.cf_handle(CF_META).expect("meta cf"), CLEAN_STOP, []);
}

/// Every session's mark, sorted by session.
pub(super) fn read_all(db: &DB) -> Result<Vec<(SessionId, UpMark)>, JournalError> {
    let cf = db.cf_handle(CF_UPSTREAM).expect("upstream cf");
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let id = SessionId(k.as_ref().try_into().map_err(|_| JournalError::Corrupt("upstream key".into()))?);
        out.push((id, UpMark::decode(&id, &v)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = SessionId([3; 16]);
        for m in [UpMark { written: 0, stopped: false }, UpMark { written: u64::MAX, stopped: true }] {
            assert_eq!(UpMark::decode(&id, &m.encode()).unwrap(), m);
        }
        assert!(UpMark::decode(&id, &[0; 8]).is_err());
    }
}
