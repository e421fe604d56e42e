//! The backend's receiving side for `tether-bench upstream`: on the path
//! `/sink`, the backend counts what the client sends it (through tether,
//! the relay, or directly) and checks that every message arrived once and
//! in order.
//!
//! The protocol, all text messages, client → backend:
//! - `sink <from_ns> <to_ns>` first: the measuring window, in
//!   `CLOCK_MONOTONIC` ns (one clock for every process on the machine);
//! - then data messages `<index>,<padding>`, indexes 0, 1, 2, … in order;
//! - then `end <number sent>`.
//!
//! The backend answers the `end` with `got <received> <in window>
//! <missing> <duplicated or out of order>`, where "in window" counts the
//! data messages it read between `from_ns` and `to_ns`: the client →
//! backend throughput is measured where the messages arrive.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::sys::now_ns;

/// The path the backend serves the sink on.
pub const PATH: &str = "/sink";

/// The first message: the measuring window.
pub fn start(from_ns: u64, to_ns: u64) -> String {
    format!("sink {from_ns} {to_ns}")
}

/// The last message.
pub fn end(sent: u64) -> String {
    format!("end {sent}")
}

/// Data message `idx`: `size` bytes (at least the index and a comma), after
/// the upstream stamp `<seq>:` if `stamp` is given.
pub fn payload(stamp: Option<u64>, idx: u64, size: usize, pad: &str) -> String {
    // itoa, not `write!`: formatting was a tenth of the clients' CPU at 64 B.
    let mut num = itoa::Buffer::new();
    let mut s = String::with_capacity(size + 24);
    if let Some(seq) = stamp {
        s.push_str(num.format(seq));
        s.push(':');
    }
    let at = s.len();
    s.push_str(num.format(idx));
    s.push(',');
    let need = size.saturating_sub(s.len() - at);
    let off = (idx as usize).wrapping_mul(7919) % (pad.len() - need).max(1);
    s.push_str(&pad[off..off + need]);
    s
}

/// What the backend counted on one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Got {
    /// Data messages read.
    pub received: u64,
    /// Of them, read inside the measuring window.
    pub in_window: u64,
    /// Indexes skipped, plus those the `end` counts that never came.
    pub missing: u64,
    /// Messages read twice or out of order (or malformed).
    pub dups: u64,
}

impl Got {
    /// The backend's answer.
    pub fn reply(&self) -> String {
        format!("got {} {} {} {}", self.received, self.in_window, self.missing, self.dups)
    }

    /// Parses the answer (after any stamp was removed).
    pub fn parse(t: &str) -> Option<Got> {
        let mut it = t.strip_prefix("got ")?.split(' ').map(|v| v.parse::<u64>().ok());
        Some(Got { received: it.next()??, in_window: it.next()??, missing: it.next()??, dups: it.next()?? })
    }
}

/// One connection's count: what [`serve`] does with each text message.
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    got: Got,
    next: u64,
    window: (u64, u64),
}

impl Default for Counter {
    fn default() -> Counter {
        Counter { got: Got::default(), next: 0, window: (u64::MAX, 0) }
    }
}

impl Counter {
    /// Accounts one text message read at `now`; the answer to send, if any
    /// (after `end`).
    pub fn feed(&mut self, t: &str, now: u64) -> Option<String> {
        let got = &mut self.got;
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && t.as_bytes().get(digits) == Some(&b',') {
            let idx: u64 = t[..digits].parse().unwrap_or(u64::MAX);
            got.received += 1;
            if now >= self.window.0 && now < self.window.1 {
                got.in_window += 1;
            }
            if idx == self.next {
                self.next += 1;
            } else if idx > self.next && idx != u64::MAX {
                got.missing += idx - self.next;
                self.next = idx + 1;
            } else {
                got.dups += 1;
            }
        } else if let Some(w) = t.strip_prefix("sink ") {
            let mut it = w.split(' ').filter_map(|v| v.parse().ok());
            self.window = (it.next().unwrap_or(u64::MAX), it.next().unwrap_or(0));
        } else if let Some(n) = t.strip_prefix("end ").and_then(|n| n.parse::<u64>().ok()) {
            got.missing += n.saturating_sub(self.next);
            return Some(got.reply());
        } else {
            got.dups += 1;
        }
        None
    }
}

/// Serves one `/sink` connection: counts and checks until `end`, answers,
/// then waits for the client's close.
pub async fn serve(ws: WebSocketStream<TcpStream>) {
    let (mut tx, mut rx) = ws.split();
    let mut count = Counter::default();
    while let Some(Ok(m)) = rx.next().await {
        match m {
            Message::Text(t) => {
                if let Some(reply) = count.feed(&t, now_ns()) {
                    if tx.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_and_replies_round_trip() {
        let pad = "x".repeat(4096);
        for (idx, size) in [(0, 64), (123_456, 64), (7, 512)] {
            let p = payload(None, idx, size, &pad);
            assert_eq!(p.len(), size);
            assert!(p.starts_with(&format!("{idx},")));
            let stamped = payload(Some(42), idx, size, &pad);
            assert_eq!(stamped.strip_prefix("42:"), Some(p.as_str()));
        }
        let g = Got { received: 10, in_window: 7, missing: 1, dups: 2 };
        assert_eq!(Got::parse(&g.reply()), Some(g));
        assert_eq!(Got::parse("got 1 2 3"), None);
    }

    #[test]
    fn the_counter_finds_missing_duplicated_and_reordered_messages() {
        let pad = "y".repeat(4096);
        let run = |idxs: &[u64], end: u64| {
            let mut c = Counter::default();
            assert_eq!(c.feed(&start(10, 20), 0), None);
            for (i, &idx) in idxs.iter().enumerate() {
                assert_eq!(c.feed(&payload(None, idx, 64, &pad), 9 + i as u64), None);
            }
            Got::parse(&c.feed(&self::end(end), 30).expect("an answer to end")).expect("a count")
        };
        assert_eq!(run(&[0, 1, 2, 3], 4), Got { received: 4, in_window: 3, missing: 0, dups: 0 });
        assert_eq!(run(&[0, 1, 3], 4), Got { received: 3, in_window: 2, missing: 1, dups: 0 });
        assert_eq!(run(&[0, 1, 1, 2], 3), Got { received: 4, in_window: 3, missing: 0, dups: 1 });
        assert_eq!(run(&[0, 2, 1], 3), Got { received: 3, in_window: 2, missing: 1, dups: 1 });
        assert_eq!(run(&[0, 1], 5), Got { received: 2, in_window: 1, missing: 3, dups: 0 });
    }
}
