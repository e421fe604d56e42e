//! Frames are stored in **chunks**, one per batch of consecutive frames of
//! one session that a link task drained from its backend socket at once.
//!
//! - key (in RocksDB's `frames` column family): `session id (16) ‖ first
//!   seq (8, big-endian)`, so a session's chunks sort by seq; its value is
//!   where the chunk is in the frame log (layout 3, [`super::framelog`]);
//!   in layout 2 it was the chunk itself;
//! - chunk: the frames one after another, each `kind (1: 0 text, 1 binary)
//!   ‖ payload length (4, big-endian) ‖ payload`; the seqs are implied.
//!
//! One key per batch instead of one per frame is what makes journaling
//! cheap: a memtable insert, a WAL record header and (later) an SST index
//! entry, a flush and a compaction comparison per batch, not per frame.
//!
//! A chunk never holds frames on both sides of a point a trim can end at:
//! it never crosses a retention segment boundary (`64k | 64k+1`, see
//! session/retention.rs), and it holds exactly one append operation, whose
//! frames are pushed into the retention bookkeeping under one lock. Trims
//! end at a segment boundary or at the newest frame pushed, i.e. at the end
//! of an append. So a trim up to `upto` is one `delete_range` of every
//! chunk whose first seq is `<= upto`, and deletes exactly the frames
//! `<= upto`: gap reports stay exact.
//!
//! A read seeks to the chunk holding its first seq (`seek_for_prev`), reads
//! it from the frame log and skips the frames before it.

use bytes::Bytes;
use rocksdb::{ReadOptions, DB};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::framelog::{FrameLog, Pointer};
use super::{JournalError, CF_FRAMES};
use crate::protocol::pack::Packer;
use crate::protocol::{Payload, SessionId};

/// The layout this code writes and reads, stored under `layout` in the
/// `meta` column family. Layout 1 (no `layout` key) had one key per frame;
/// layout 2 kept chunks inside RocksDB.
pub(crate) const LAYOUT: u32 = 3;

/// What a layout was, for the line that refuses it.
pub(crate) fn describe_layout(layout: u32) -> &'static str {
    match layout {
        1 => "one RocksDB key per frame",
        2 => "frames inside RocksDB",
        _ => "unknown",
    }
}

const KIND_TEXT: u8 = 0;
const KIND_BINARY: u8 = 1;
/// Bytes before each payload in a chunk: kind and length.
pub(crate) const FRAME_HEADER: usize = 5;

/// `session ‖ seq` in big-endian, so a session's chunks sort by first seq.
pub(crate) fn chunk_key(session: &SessionId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&session.0);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Appends one frame to a chunk value being built (tests build chunks
/// by hand).
#[cfg(test)]
pub(crate) fn encode_frame(buf: &mut Vec<u8>, p: &Payload) {
    buf.extend_from_slice(&frame_header(p));
    buf.extend_from_slice(p.as_bytes());
}

/// A chunk being built from frames as they are read.
pub(crate) type ChunkBuilder = Packer<fn(&Payload) -> [u8; FRAME_HEADER]>;

/// An empty chunk with room for `bytes` in `frames` frames (the size of
/// the last one): [`Packer::push`] each frame, [`Packer::finish`] gives the
/// chunk and the frames as slices of it.
pub(crate) fn builder(bytes: usize, frames: usize) -> ChunkBuilder {
    Packer::sized(frame_header, bytes, frames)
}

/// A frame's header in a chunk: kind and payload length.
fn frame_header(p: &Payload) -> [u8; FRAME_HEADER] {
    let kind = match p {
        Payload::Text(_) => KIND_TEXT,
        Payload::Binary(_) => KIND_BINARY,
    };
    let mut h = [kind, 0, 0, 0, 0];
    // Frames are bounded by limits.max_message_bytes (at most 1 GiB, validated).
    h[1..].copy_from_slice(&(p.len() as u32).to_be_bytes());
    h
}

/// The frames of a chunk, `(offset of the payload, length, kind)`, without
/// copying: what reads slice.
fn frames(value: &[u8]) -> impl Iterator<Item = Result<(usize, usize, u8), JournalError>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at == value.len() {
            return None;
        }
        let Some(head) = value.get(at..at + FRAME_HEADER) else {
            at = value.len();
            return Some(Err(JournalError::Corrupt("truncated frame header in chunk".into())));
        };
        let kind = head[0];
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        let start = at + FRAME_HEADER;
        if start + len > value.len() {
            at = value.len();
            return Some(Err(JournalError::Corrupt("truncated frame in chunk".into())));
        }
        at = start + len;
        Some(Ok((start, len, kind)))
    })
}

/// Frames in a chunk (checked), for a migration from layout 2.
pub(crate) fn frame_count(chunk: &[u8]) -> Result<u32, JournalError> {
    let mut n = 0u32;
    for f in frames(chunk) {
        f?;
        n += 1;
    }
    Ok(n)
}

fn payload(chunk: &Bytes, start: usize, len: usize, kind: u8) -> Result<Payload, JournalError> {
    let body = chunk.slice(start..start + len);
    match kind {
        KIND_TEXT => Utf8Bytes::try_from(body)
            .map(Payload::Text)
            .map_err(|_| JournalError::Corrupt("text frame is not UTF-8".into())),
        KIND_BINARY => Ok(Payload::Binary(body)),
        k => Err(JournalError::Corrupt(format!("frame kind {k}"))),
    }
}

/// Frames `from..=to` of `session`, stopping after `max_bytes` of payload
/// (at least one frame is returned if any exists). Trimmed frames are
/// absent: the caller compares the first seq. Each chunk is read from the
/// frame log once; its frames are slices of that copy.
pub(crate) fn read(
    db: &DB,
    log: &FrameLog,
    session: SessionId,
    from: u64,
    to: u64,
    max_bytes: usize,
) -> Result<Vec<(u64, Payload)>, JournalError> {
    let cf = db.cf_handle(CF_FRAMES).expect("frames cf");
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(chunk_key(&session, to.saturating_add(1)).to_vec());
    let mut it = db.raw_iterator_cf_opt(cf, ro);
    let start = chunk_key(&session, from);
    // The chunk holding `from` starts at or before it.
    it.seek_for_prev(start);
    if !it.valid() || it.key().is_none_or(|k| k.len() != 24 || k[..16] != session.0) {
        it.seek(start);
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k.len() != 24 || k[..16] != session.0 {
            break;
        }
        let first = u64::from_be_bytes(k[16..].try_into().expect("8 bytes"));
        let Some(chunk) = fetch(db, log, v, &session, first, out.is_empty())? else { break };
        for (seq, f) in (first..).zip(frames(&chunk)) {
            let (start, len, kind) = f?;
            if seq > to {
                return Ok(out);
            }
            if seq >= from {
                bytes += len;
                out.push((seq, payload(&chunk, start, len, kind)?));
                if bytes >= max_bytes {
                    return Ok(out);
                }
            }
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// A replay batch as WebSocket wire bytes: what a client is sent for
/// frames `first..=last`, stamped and framed, ready to write.
#[derive(Debug)]
pub(crate) struct Wire {
    /// The frames, header and stamped payload each.
    pub(crate) bytes: Bytes,
    /// First seq found (`None`: no frame in the range is left).
    pub(crate) first: Option<u64>,
    /// Last seq in `bytes` (meaningless without `first`).
    pub(crate) last: u64,
}

/// How a replay batch stamps its frames: what `protocol::stamp` does for
/// `prefix` and `none`. `json` needs the payload parsed and is not built here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireStamp {
    /// `<seq>:` before text, the seq as 8 big-endian bytes before binary.
    Prefix,
    /// The payload as it came.
    None,
}

/// Appends the server frame (unmasked, FIN) carrying frame `seq` of
/// `body`, a text frame if `text`: header, stamp, body.
pub(crate) fn put_frame(out: &mut Vec<u8>, stamp: WireStamp, seq: u64, text: bool, body: &[u8]) {
    let mut digits = [0u8; 21];
    let prefix: &[u8] = match (stamp, text) {
        (WireStamp::None, _) => &[],
        (WireStamp::Prefix, true) => {
            // `{seq}:` without `fmt`, which was a tenth of the pump's time.
            digits[20] = b':';
            let (mut at, mut n) = (20, seq);
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            &digits[at..]
        }
        (WireStamp::Prefix, false) => {
            digits[..8].copy_from_slice(&seq.to_be_bytes());
            &digits[..8]
        }
    };
    let opcode = if text { 0x81 } else { 0x82 };
    let len = prefix.len() + body.len();
    match len {
        0..=125 => out.extend_from_slice(&[opcode, len as u8]),
        126..=0xffff => {
            out.extend_from_slice(&[opcode, 126]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[opcode, 127]);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(prefix);
    out.extend_from_slice(body);
}

/// [`put_frame`] for a frame of a chunk, checked.
fn put_wire(out: &mut Vec<u8>, stamp: WireStamp, seq: u64, kind: u8, body: &[u8]) -> Result<(), JournalError> {
    let text = match kind {
        KIND_TEXT => {
            // Checked when it was received; checked again so that a corrupt
            // journal is reported rather than sent.
            std::str::from_utf8(body).map_err(|_| JournalError::Corrupt("text frame is not UTF-8".into()))?;
            true
        }
        KIND_BINARY => false,
        k => return Err(JournalError::Corrupt(format!("frame kind {k}"))),
    };
    put_frame(out, stamp, seq, text, body);
    Ok(())
}

/// The chunk a pointer names. `None` if its file is gone: every pointer
/// into it was deleted since this read's iterator started, so the chunk was
/// trimmed. Trims delete a prefix of a session's chunks, so before the
/// first frame is found (`skip`) that is skipped and the read goes on;
/// after it, the read ends there.
///
/// The cleaner also deletes files, after moving their chunks: a chunk whose
/// file is gone but whose key is still there is read again where its
/// pointer now says.
fn fetch(
    db: &DB,
    log: &FrameLog,
    v: &[u8],
    session: &SessionId,
    first: u64,
    skip: bool,
) -> Result<Option<Bytes>, JournalError> {
    let mut at = Pointer::decode(v)?;
    loop {
        if let Some(chunk) = log.read(&at, session, first)? {
            return Ok(Some(chunk));
        }
        let cf = db.cf_handle(CF_FRAMES).expect("frames cf");
        // The same pointer: its file was deleted by a full-disk reclaim
        // for a trim that is still queued.
        match db.get_pinned_cf(cf, chunk_key(session, first))?.map(|v| Pointer::decode(&v)).transpose()? {
            Some(moved) if moved != at => at = moved,
            _ => return Ok(skip.then(Bytes::new)),
        }
    }
}

/// Like [`read`], but the frames come out as one buffer of wire bytes,
/// stamped (no `Payload`, no `Message` per frame), ready for the pump.
pub(crate) fn read_wire(
    db: &DB,
    log: &FrameLog,
    session: SessionId,
    from: u64,
    to: u64,
    max_bytes: usize,
    stamp: WireStamp,
) -> Result<Wire, JournalError> {
    let cf = db.cf_handle(CF_FRAMES).expect("frames cf");
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(chunk_key(&session, to.saturating_add(1)).to_vec());
    let mut it = db.raw_iterator_cf_opt(cf, ro);
    let start = chunk_key(&session, from);
    it.seek_for_prev(start);
    if !it.valid() || it.key().is_none_or(|k| k.len() != 24 || k[..16] != session.0) {
        it.seek(start);
    }
    // Headers and stamps add about a third to small frames.
    let mut out = Vec::with_capacity(max_bytes.min(1 << 20) * 3 / 2);
    let (mut first, mut last, mut bytes) = (None, 0u64, 0usize);
    'chunks: while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k.len() != 24 || k[..16] != session.0 {
            break;
        }
        let chunk_first = u64::from_be_bytes(k[16..].try_into().expect("8 bytes"));
        let Some(chunk) = fetch(db, log, v, &session, chunk_first, first.is_none())? else { break };
        for (seq, f) in (chunk_first..).zip(frames(&chunk)) {
            let (start, len, kind) = f?;
            if seq > to {
                break 'chunks;
            }
            if seq >= from {
                put_wire(&mut out, stamp, seq, kind, &chunk[start..start + len])?;
                first.get_or_insert(seq);
                last = seq;
                bytes += len;
                if bytes >= max_bytes {
                    break 'chunks;
                }
            }
        }
        it.next();
    }
    it.status()?;
    Ok(Wire { bytes: out.into(), first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_count() {
        let mut v = Vec::new();
        encode_frame(&mut v, &Payload::Text("héllo".into()));
        encode_frame(&mut v, &Payload::Binary(Bytes::from_static(b"\0\x01")));
        encode_frame(&mut v, &Payload::Text("".into()));
        assert_eq!(frames(&v).map(|f| f.unwrap().1).collect::<Vec<_>>(), [6, 2, 0]);
        let chunk = Bytes::from(v);
        let got: Vec<Payload> =
            frames(&chunk).map(|f| f.unwrap()).map(|(s, l, k)| payload(&chunk, s, l, k).unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Payload::Text("héllo".into()),
                Payload::Binary(Bytes::from_static(b"\0\x01")),
                Payload::Text("".into())
            ]
        );
    }

    #[test]
    fn wire_frames_are_stamped_and_framed() {
        let mut out = Vec::new();
        put_wire(&mut out, WireStamp::Prefix, 1207, KIND_TEXT, b"hi").unwrap();
        put_wire(&mut out, WireStamp::Prefix, 0, KIND_TEXT, b"").unwrap();
        put_wire(&mut out, WireStamp::Prefix, 2, KIND_BINARY, b"\xff").unwrap();
        put_wire(&mut out, WireStamp::None, 3, KIND_TEXT, &[b'a'; 200]).unwrap();
        let mut want = b"\x81\x071207:hi\x81\x020:\x82\x09\0\0\0\0\0\0\0\x02\xff\x81\x7e\x00\xc8".to_vec();
        want.extend_from_slice(&[b'a'; 200]);
        assert_eq!(out, want);
        assert!(put_wire(&mut out, WireStamp::None, 4, KIND_TEXT, b"\xff").is_err());
    }

    #[test]
    fn truncated_chunks_are_corrupt() {
        let mut v = Vec::new();
        encode_frame(&mut v, &Payload::Binary(Bytes::from_static(b"abcdef")));
        assert!(frames(&v[..v.len() - 1]).any(|f| f.is_err()));
        assert!(frames(&v[..3]).any(|f| f.is_err()));
    }
}
