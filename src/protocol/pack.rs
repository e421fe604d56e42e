//! Payloads copied into one buffer as they arrive.
//!
//! tungstenite hands out each payload as a slice of its read buffer. A
//! payload that is kept (in a batch being read, then in the session's ring
//! until evicted) keeps that whole buffer alive, so the next read has to
//! allocate a fresh one: about one allocation, and a free later, per two
//! 512 B frames, 17 % of tether's CPU on a saturated stream. Copying each
//! payload out at once (the journal copies it into its chunk anyway) lets
//! tungstenite reuse its buffer in place, and a batch costs one allocation.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Payload;

/// Builds one buffer of payloads, each after the bytes `header` gives for
/// it; [`Packer::finish`] gives the buffer and the payloads as slices of it.
pub(crate) struct Packer<H> {
    buf: Vec<u8>,
    /// Per payload: text or not, where it starts, its length.
    frames: Vec<(bool, usize, usize)>,
    payload_bytes: usize,
    header: H,
}

impl<H: AsRef<[u8]>, F: Fn(&Payload) -> H> Packer<F> {
    /// An empty packer; `header` gives what precedes each payload.
    #[cfg(test)]
    pub(crate) fn new(header: F) -> Packer<F> {
        Packer::sized(header, 0, 0)
    }

    /// An empty packer with room for `bytes` (headers included) in
    /// `frames` payloads: the size of the last batch from the same source,
    /// so that a steady stream's batches neither grow by doubling (each
    /// step a copy) nor shrink at [`Packer::finish`] (another copy).
    pub(crate) fn sized(header: F, bytes: usize, frames: usize) -> Packer<F> {
        Packer { buf: Vec::with_capacity(bytes), frames: Vec::with_capacity(frames), payload_bytes: 0, header }
    }

    /// Copies `p` in (it can be dropped right after).
    pub(crate) fn push(&mut self, p: &Payload) {
        let header = (self.header)(p);
        // The first payload decides the first size (a lone message costs
        // what it needs); more grow the buffer by doubling.
        self.buf.extend_from_slice(header.as_ref());
        self.frames.push((matches!(p, Payload::Text(_)), self.buf.len(), p.len()));
        self.buf.extend_from_slice(p.as_bytes());
        self.payload_bytes += p.len();
    }

    /// Payloads pushed.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Payload bytes pushed (without headers).
    pub(crate) fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Bytes pushed, headers included.
    pub(crate) fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The buffer, and every payload pushed as a slice of it, in order.
    pub(crate) fn finish(mut self) -> (Bytes, Vec<Payload>) {
        // The buffer lives as long as any of its payloads (in the ring):
        // it should not keep the doubling's spare room too.
        if self.buf.capacity() > self.buf.len() + self.buf.len() / 8 {
            self.buf.shrink_to_fit();
        }
        let buf = Bytes::from(self.buf);
        let payloads = self
            .frames
            .into_iter()
            .map(|(text, start, len)| {
                let body = buf.slice(start..start + len);
                if text {
                    // SAFETY: `body` is a byte-for-byte copy of a text
                    // payload (`push`), whose bytes are UTF-8.
                    Payload::Text(unsafe { Utf8Bytes::from_bytes_unchecked(body) })
                } else {
                    Payload::Binary(body)
                }
            })
            .collect();
        (buf, payloads)
    }
}

/// Copies `payloads` into one new buffer (no headers) and re-points each to
/// its copy.
pub(crate) fn repack(payloads: &mut [Payload]) {
    let bytes = payloads.iter().map(Payload::len).sum();
    let mut packer = Packer::sized(|_: &Payload| [0u8; 0], bytes, payloads.len());
    for p in payloads.iter() {
        packer.push(p);
    }
    for (p, packed) in payloads.iter_mut().zip(packer.finish().1) {
        *p = packed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_come_back_as_slices_of_one_buffer() {
        let mut packer = Packer::new(|p: &Payload| [p.len() as u8]);
        let input = [
            Payload::Text("h\u{e9}llo".into()),
            Payload::Binary(Bytes::from_static(b"\0\x01")),
            Payload::Text("".into()),
        ];
        for p in &input {
            packer.push(p);
        }
        assert_eq!((packer.len(), packer.payload_bytes()), (3, 8));
        let (buf, out) = packer.finish();
        assert_eq!(&buf[..], b"\x06h\xc3\xa9llo\x02\0\x01\x00");
        assert_eq!(out, input);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(out[..2].iter().all(|p| range.contains(&(p.as_bytes().as_ptr() as usize))));
    }

    #[test]
    fn a_packer_sized_for_its_batch_keeps_its_first_buffer() {
        let mut packer = Packer::sized(|p: &Payload| [p.len() as u8], 1 + 3 + 1 + 4, 2);
        let first = packer.buf.as_ptr();
        packer.push(&Payload::Binary(Bytes::from_static(b"abc")));
        packer.push(&Payload::Text("defg".into()));
        assert_eq!(packer.bytes(), 9);
        let (buf, out) = packer.finish();
        assert_eq!(&buf[..], b"\x03abc\x04defg");
        assert_eq!(buf.as_ptr(), first, "neither grown nor shrunk: no copy");
        assert_eq!(out[1], Payload::Text("defg".into()));
    }
}
