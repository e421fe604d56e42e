//! Per-session retention bookkeeping: how many frames and bytes a session
//! keeps in the journal and how old they are, in coarse segments so the
//! cost is a few words per segment rather than per frame.
//!
//! Every trim is one RocksDB range delete, and each range tombstone makes
//! later writes and reads slower until compaction drops it (one tombstone per
//! frame stalled a fast stream: issue 12, item 0). So the frame and byte
//! limits are enforced in chunks: a session may overshoot a limit by one
//! trim chunk, and is then trimmed back to it in whole segments, one range
//! delete for the whole chunk. Segments are aligned to seq multiples of
//! [`SEGMENT_FRAMES`], so trims always end on such a boundary.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Frames per segment at most. A segment holds the seqs `64k+1 ..= 64k+64`
/// (or part of them), and every trim removes whole segments.
pub(crate) const SEGMENT_FRAMES: u64 = 64;

/// How far past `max_frames` a session may grow before it is trimmed back:
/// an eighth of the limit, rounded up to whole segments, at least one.
pub(crate) fn frame_chunk(max_frames: u64) -> u64 {
    (max_frames / 8).div_ceil(SEGMENT_FRAMES).max(1) * SEGMENT_FRAMES
}

/// How far past `max_bytes` a session may grow before it is trimmed back.
pub(crate) fn byte_chunk(max_bytes: u64) -> u64 {
    max_bytes / 8
}

/// The segment (by index) that holds `seq`.
fn segment_of(seq: u64) -> u64 {
    (seq.max(1) - 1) / SEGMENT_FRAMES
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    first: u64,
    last: u64,
    bytes: u64,
    newest: Instant,
}

/// Why frames were trimmed (the `reason` label of `tether_trimmed_frames_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrimReason {
    /// `journal.max_session_frames`.
    Frames,
    /// `journal.max_session_bytes`.
    Bytes,
    /// `journal.max_frame_age`.
    Age,
    /// `journal.disk_budget_bytes`.
    DiskBudget,
}

impl TrimReason {
    /// Label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TrimReason::Frames => "max_frames",
            TrimReason::Bytes => "max_bytes",
            TrimReason::Age => "max_age",
            TrimReason::DiskBudget => "disk_budget",
        }
    }
}

/// A decided trim: delete every frame up to `upto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trim {
    /// Last seq removed.
    pub(crate) upto: u64,
    /// Frames removed.
    pub(crate) frames: u64,
    /// Payload bytes removed.
    pub(crate) bytes: u64,
    /// Why.
    pub(crate) reason: TrimReason,
}

/// What one session retains.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    segments: VecDeque<Segment>,
    /// Frames retained.
    pub(crate) frames: u64,
    /// Payload bytes retained.
    pub(crate) bytes: u64,
    /// Every seq <= this has been trimmed.
    pub(crate) trimmed_to: u64,
}

impl Retained {
    /// Bookkeeping for a session recovered with `frames` frames (`trimmed_to+1
    /// ..=last`) and `bytes` bytes; their age is unknown and counts from now.
    /// They are split into aligned segments, with the bytes spread pro rata,
    /// so later trims remove a chunk of them, not all at once.
    pub(crate) fn recovered(trimmed_to: u64, last: u64, frames: u64, bytes: u64) -> Retained {
        let mut r = Retained { trimmed_to, ..Default::default() };
        if frames == 0 {
            return r;
        }
        let now = Instant::now();
        let span = last - trimmed_to;
        let (mut first, mut spread) = (trimmed_to + 1, 0u64);
        while first <= last {
            let end = ((segment_of(first) + 1) * SEGMENT_FRAMES).min(last);
            // Bytes up to `end`, pro rata; the last segment takes the rest.
            let upto =
                if end == last { bytes } else { (bytes as u128 * (end - trimmed_to) as u128 / span as u128) as u64 };
            r.segments.push_back(Segment { first, last: end, bytes: upto - spread, newest: now });
            spread = upto;
            first = end + 1;
        }
        // The recovery scan counted `frames`; the segments cover the span.
        debug_assert_eq!(frames, span, "retained frames are contiguous");
        r.frames = span;
        r.bytes = bytes;
        r
    }

    /// First seq still retained (or that the next frame will have).
    /// Payload bytes of the segments that hold any frame after `seq` (whole
    /// segments: an upper bound).
    pub(crate) fn bytes_after(&self, seq: u64) -> u64 {
        self.segments.iter().rev().take_while(|s| s.last > seq).map(|s| s.bytes).sum()
    }

    pub(crate) fn first_available(&self) -> u64 {
        self.trimmed_to + 1
    }

    /// Records frame `seq` of `len` bytes.
    pub(crate) fn push(&mut self, seq: u64, len: u64, now: Instant) {
        match self.segments.back_mut() {
            Some(s) if s.last + 1 == seq && segment_of(s.first) == segment_of(seq) => {
                s.last = seq;
                s.bytes += len;
                s.newest = now;
            }
            _ => self.segments.push_back(Segment { first: seq, last: seq, bytes: len, newest: now }),
        }
        self.frames += 1;
        self.bytes += len;
    }

    /// The trim the frame and byte limits call for, applied to the
    /// bookkeeping. Nothing is trimmed until a limit is exceeded by its chunk
    /// ([`frame_chunk`], [`byte_chunk`]); then whole segments go:
    /// - frames: while at least `max_frames` remain without the oldest
    ///   segment, so `max_frames ..= max_frames + frame_chunk` are retained;
    /// - bytes: until at most `max_bytes` remain, but never the newest segment.
    pub(crate) fn enforce(&mut self, max_frames: u64, max_bytes: u64) -> Option<Trim> {
        let mut trim: Option<Trim> = None;
        if self.bytes > max_bytes.saturating_add(byte_chunk(max_bytes)) {
            while self.bytes > max_bytes && self.segments.len() > 1 {
                self.pop_segment(&mut trim, TrimReason::Bytes);
            }
        }
        if self.frames > max_frames.saturating_add(frame_chunk(max_frames)) {
            while self.segments.front().is_some_and(|s| self.frames - (s.last - s.first + 1) >= max_frames) {
                self.pop_segment(&mut trim, TrimReason::Frames);
            }
        }
        trim
    }

    /// Trims whole segments whose newest frame is older than `max_age`.
    pub(crate) fn enforce_age(&mut self, max_age: Duration, now: Instant) -> Option<Trim> {
        let mut trim = None;
        while self.segments.front().is_some_and(|s| now.duration_since(s.newest) > max_age) {
            self.pop_segment(&mut trim, TrimReason::Age);
        }
        trim
    }

    /// When the oldest retained segment was last written, if any.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.segments.front().map(|s| s.newest)
    }

    /// Trims the oldest segment (disk budget).
    pub(crate) fn trim_oldest(&mut self) -> Option<Trim> {
        let mut trim = None;
        if !self.segments.is_empty() {
            self.pop_segment(&mut trim, TrimReason::DiskBudget);
        }
        trim
    }

    fn pop_segment(&mut self, trim: &mut Option<Trim>, reason: TrimReason) {
        let s = self.segments.pop_front().expect("caller checked");
        let n = s.last - s.first + 1;
        self.frames -= n;
        self.bytes -= s.bytes;
        self.trimmed_to = s.last;
        add(trim, s.last, n, s.bytes, reason);
    }
}

fn add(trim: &mut Option<Trim>, upto: u64, frames: u64, bytes: u64, reason: TrimReason) {
    match trim {
        Some(t) => {
            t.upto = upto;
            t.frames += frames;
            t.bytes += bytes;
            if reason == TrimReason::Bytes {
                t.reason = reason;
            }
        }
        None => *trim = Some(Trim { upto, frames, bytes, reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_limit_trims_a_chunk_of_whole_segments() {
        let now = Instant::now();
        let mut r = Retained::default();
        assert_eq!(frame_chunk(50), 64);
        assert_eq!(frame_chunk(2_000), 256);
        assert_eq!(frame_chunk(100_000), 12_544);
        for seq in 1..=114 {
            r.push(seq, 10, now);
            assert_eq!(r.enforce(50, u64::MAX), None, "up to the limit plus one chunk");
        }
        r.push(115, 10, now);
        let t = r.enforce(50, u64::MAX).unwrap();
        assert_eq!((t.upto, t.frames, t.bytes, t.reason), (64, 64, 640, TrimReason::Frames));
        assert_eq!((r.frames, r.first_available()), (51, 65));
        for seq in 116..=178 {
            r.push(seq, 10, now);
            assert_eq!(r.enforce(50, u64::MAX), None);
        }
        r.push(179, 10, now);
        let t = r.enforce(50, u64::MAX).unwrap();
        assert_eq!((t.upto, t.frames), (128, 64), "segment-aligned");
    }

    #[test]
    fn byte_limit_trims_segments() {
        let now = Instant::now();
        let mut r = Retained::default();
        for seq in 1..=128 {
            r.push(seq, 10, now);
        }
        assert_eq!(r.enforce(u64::MAX, 1_200), None, "within an eighth over the limit");
        let t = r.enforce(u64::MAX, 700).unwrap();
        assert_eq!((t.upto, t.frames, t.bytes, t.reason), (64, 64, 640, TrimReason::Bytes));
        assert_eq!(r.bytes, 640);
    }

    #[test]
    fn recovered_frames_are_split_into_aligned_segments() {
        let mut r = Retained::recovered(100, 300, 200, 2_000);
        assert_eq!(r.frames, 200);
        // 101..=128 is the first (partial) segment: 28 frames, 280 bytes.
        let t = r.trim_oldest().unwrap();
        assert_eq!((t.upto, t.frames, t.bytes), (128, 28, 280));
        let t = r.trim_oldest().unwrap();
        assert_eq!((t.upto, t.frames, t.bytes), (192, 64, 640));
        assert_eq!((r.frames, r.bytes), (108, 1_080));
    }

    #[test]
    fn age_limit() {
        let t0 = Instant::now();
        let mut r = Retained::default();
        for seq in 1..=64 {
            r.push(seq, 1, t0);
        }
        let later = t0 + Duration::from_secs(10);
        r.push(65, 1, later);
        let t = r.enforce_age(Duration::from_secs(5), later).unwrap();
        assert_eq!((t.upto, t.reason), (64, TrimReason::Age));
        assert_eq!(r.frames, 1);
    }
}
