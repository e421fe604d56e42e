//! The most recent frames of a session, in memory, so that attached clients
//! that keep up are served without touching the journal.

use std::collections::VecDeque;

use crate::journal::{put_frame, WireStamp};
use crate::protocol::pack::repack;
use crate::protocol::Payload;

/// A byte-bounded window of consecutive frames.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    frames: VecDeque<(u64, Payload)>,
    bytes: usize,
    cap: usize,
}

impl Ring {
    /// An empty ring holding at most `cap` payload bytes.
    pub(crate) fn new(cap: usize) -> Ring {
        Ring { frames: VecDeque::new(), bytes: 0, cap }
    }

    /// Appends frame `seq` (must follow the last one) and evicts the oldest
    /// frames beyond the byte budget.
    fn push(&mut self, seq: u64, payload: Payload) {
        if self.frames.back().is_some_and(|(last, _)| *last + 1 != seq) {
            self.clear();
        }
        self.bytes += payload.len();
        self.frames.push_back((seq, payload));
        while self.bytes > self.cap {
            let Some((_, old)) = self.frames.pop_front() else { break };
            self.bytes -= old.len();
        }
        if self.frames.is_empty() {
            self.frames.shrink_to_fit();
        }
    }

    /// Appends a batch of frames from seq `first` (emptying `batch`): what
    /// [`Ring::push`] of each would leave, without keeping a large batch's
    /// buffer alive for the few frames the ring keeps of it.
    pub(crate) fn push_batch(&mut self, mut first: u64, batch: &mut Vec<Payload>) {
        let total: usize = batch.iter().map(Payload::len).sum();
        if total > self.cap {
            // Only the newest frames that fit stay; they get a buffer of
            // their own (at most `cap` bytes) instead of pinning the chunk.
            let (mut keep, mut kept) = (batch.len(), 0);
            while keep > 0 && kept + batch[keep - 1].len() <= self.cap {
                keep -= 1;
                kept += batch[keep].len();
            }
            repack(&mut batch[keep..]);
            batch.drain(..keep);
            first += keep as u64;
            // The frames skipped would have evicted everything before them.
            self.clear();
        }
        for (seq, p) in (first..).zip(batch.drain(..)) {
            self.push(seq, p);
        }
    }

    /// Copies frames `from..=to` out of the ring, at most `max_bytes` of them
    /// (at least one), or `None` if `from` is not in the ring.
    pub(crate) fn get(&self, from: u64, to: u64, max_bytes: usize) -> Option<Vec<(u64, Payload)>> {
        let first = self.frames.front()?.0;
        if from < first || from > self.frames.back()?.0 {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for (seq, p) in self.frames.iter().skip((from - first) as usize) {
            if *seq > to || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            bytes += p.len();
            out.push((*seq, p.clone()));
        }
        Some(out)
    }

    /// Stamps and frames `from..=to` into `out` as WebSocket wire bytes (at
    /// most `max_bytes` of payload, at least one frame), straight from the
    /// ring: no `Payload` clone, so no reference count taken and dropped
    /// per frame. The last seq written, or `None` if `from` is not in the
    /// ring.
    pub(crate) fn wire(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
        stamp: WireStamp,
        out: &mut Vec<u8>,
    ) -> Option<u64> {
        let first = self.frames.front()?.0;
        if from < first || from > self.frames.back()?.0 {
            return None;
        }
        // Headers and stamps add about a third to 64 B frames.
        out.reserve(self.bytes.min(max_bytes) * 3 / 2 + 64);
        let (mut bytes, mut last) = (0, None);
        for (seq, p) in self.frames.iter().skip((from - first) as usize) {
            if *seq > to || (bytes >= max_bytes && last.is_some()) {
                break;
            }
            bytes += p.len();
            match p {
                Payload::Text(t) => put_frame(out, stamp, *seq, true, t.as_bytes()),
                Payload::Binary(b) => put_frame(out, stamp, *seq, false, b),
            }
            last = Some(*seq);
        }
        last
    }

    /// Drops everything (e.g. when the seq space restarts).
    pub(crate) fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn p(n: usize) -> Payload {
        Payload::Binary(vec![0; n].into())
    }

    /// A batch leaves the ring as pushing its frames one by one would, and
    /// what it keeps of a batch larger than the ring is not a slice of it.
    #[test]
    fn a_batch_is_kept_as_its_frames_would_be() {
        let sizes = [[1, 2, 3].as_slice(), &[4, 4, 4], &[11], &[2, 9], &[], &[3, 3, 3, 3, 3], &[10], &[1]];
        let (mut one, mut batched) = (Ring::new(10), Ring::new(10));
        let mut seq = 1;
        for sizes in sizes {
            let mut batch: Vec<Payload> = sizes.iter().map(|n| p(*n)).collect();
            for (i, p) in batch.iter().enumerate() {
                one.push(seq + i as u64, p.clone());
            }
            let big = Bytes::from(vec![7u8; sizes.iter().sum()]);
            let mut at = 0;
            for p in batch.iter_mut() {
                *p = Payload::Binary(big.slice(at..at + p.len()));
                at += p.len();
            }
            batched.push_batch(seq, &mut batch);
            assert!(batch.is_empty());
            seq += sizes.len() as u64;
            let all = |r: &Ring| r.frames.iter().map(|(s, p)| (*s, p.len())).collect::<Vec<_>>();
            assert_eq!(all(&batched), all(&one), "after {sizes:?}");
            assert_eq!(batched.bytes, one.bytes);
            if sizes.iter().sum::<usize>() > 10 {
                let base = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
                assert!(batched.frames.iter().all(|(_, p)| !base.contains(&(p.as_bytes().as_ptr() as usize))));
            }
        }
    }

    #[test]
    fn window_and_eviction() {
        let mut r = Ring::new(10);
        for seq in 1..=5 {
            r.push(seq, p(3));
        }
        // 5 frames of 3 bytes, budget 10: seqs 3, 4, 5 remain.
        assert!(r.get(2, 5, 100).is_none());
        let got: Vec<u64> = r.get(3, 5, 100).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(got, vec![3, 4, 5]);
        let got: Vec<u64> = r.get(4, 4, 100).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(got, vec![4]);
        assert_eq!(r.get(3, 5, 1).unwrap().len(), 1);
        assert!(r.get(6, 9, 100).is_none());
        let mut out = Vec::new();
        assert_eq!(r.wire(4, 9, 100, WireStamp::Prefix, &mut out), Some(5));
        assert_eq!(out, b"\x82\x0b\0\0\0\0\0\0\0\x04\0\0\0\x82\x0b\0\0\0\0\0\0\0\x05\0\0\0");
        assert_eq!(r.wire(3, 5, 1, WireStamp::None, &mut out), Some(3));
        assert!(r.wire(2, 5, 100, WireStamp::None, &mut out).is_none());
    }
}
