//! Per-session retention bookkeeping: how many frames and bytes a session
//! keeps in the journal and how old they are, in coarse segments so the
//! cost is a few words per segment rather than per frame.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Frames per segment at most; trims for bytes and age happen at segment
/// boundaries, trims for the frame count are exact.
const SEGMENT_FRAMES: u64 = 64;

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
    pub(crate) fn recovered(trimmed_to: u64, last: u64, frames: u64, bytes: u64) -> Retained {
        let mut r = Retained { trimmed_to, ..Default::default() };
        if frames > 0 {
            r.segments.push_back(Segment { first: trimmed_to + 1, last, bytes, newest: Instant::now() });
            r.frames = frames;
            r.bytes = bytes;
        }
        r
    }

    /// First seq still retained (or that the next frame will have).
    pub(crate) fn first_available(&self) -> u64 {
        self.trimmed_to + 1
    }

    /// Records frame `seq` of `len` bytes.
    pub(crate) fn push(&mut self, seq: u64, len: u64, now: Instant) {
        match self.segments.back_mut() {
            Some(s) if s.last + 1 == seq && s.last + 1 - s.first < SEGMENT_FRAMES => {
                s.last = seq;
                s.bytes += len;
                s.newest = now;
            }
            _ => self.segments.push_back(Segment { first: seq, last: seq, bytes: len, newest: now }),
        }
        self.frames += 1;
        self.bytes += len;
    }

    /// The trim the frame and byte limits call for, applied to the bookkeeping.
    pub(crate) fn enforce(&mut self, max_frames: u64, max_bytes: u64) -> Option<Trim> {
        let mut trim: Option<Trim> = None;
        while self.bytes > max_bytes && self.segments.len() > 1 {
            self.pop_segment(&mut trim, TrimReason::Bytes);
        }
        if self.frames > max_frames {
            let excess = self.frames - max_frames;
            // Exact: remove whole segments, then split the next one.
            let mut left = excess;
            while left > 0 {
                let s = self.segments.front_mut().expect("frames > 0 means a segment");
                let n = s.last - s.first + 1;
                if n <= left {
                    left -= n;
                    self.pop_segment(&mut trim, TrimReason::Frames);
                } else {
                    // Bytes of a split segment are estimated pro rata.
                    let b = s.bytes * left / n;
                    s.first += left;
                    s.bytes -= b;
                    let upto = s.first - 1;
                    self.frames -= left;
                    self.bytes -= b;
                    self.trimmed_to = upto;
                    add(&mut trim, upto, left, b, TrimReason::Frames);
                    left = 0;
                }
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
    fn frame_limit_is_exact() {
        let now = Instant::now();
        let mut r = Retained::default();
        for seq in 1..=200 {
            r.push(seq, 10, now);
        }
        assert_eq!(r.enforce(1000, u64::MAX), None);
        let t = r.enforce(50, u64::MAX).unwrap();
        assert_eq!((t.upto, t.frames, t.reason), (150, 150, TrimReason::Frames));
        assert_eq!((r.frames, r.first_available()), (50, 151));
        r.push(201, 10, now);
        let t = r.enforce(50, u64::MAX).unwrap();
        assert_eq!((t.upto, t.frames), (151, 1));
    }

    #[test]
    fn byte_limit_trims_segments() {
        let now = Instant::now();
        let mut r = Retained::default();
        for seq in 1..=128 {
            r.push(seq, 10, now);
        }
        let t = r.enforce(u64::MAX, 700).unwrap();
        assert_eq!((t.upto, t.frames, t.bytes, t.reason), (64, 64, 640, TrimReason::Bytes));
        assert_eq!(r.bytes, 640);
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
