//! The upstream guarantee from the client's side (docs/PROTOCOL.md §12):
//! what the checker sent, what tether acked, and what a welcome says to
//! send again or to report in doubt.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::checks::{Check, Checks, Counts};

/// One session's messages toward the backend.
#[derive(Debug, Default)]
pub struct Up {
    /// The seq the next new message gets.
    next: u64,
    /// Sent, neither acked nor reported: seq → payload.
    unacked: BTreeMap<u64, String>,
    /// The highest ack so far.
    acked: u64,
    /// The backend connection (`conn` of the welcome) the checker last sent on.
    sent_on: Option<u64>,
    /// The current connection's `conn`.
    conn: Option<u64>,
}

impl Up {
    /// A fresh session's.
    pub fn new() -> Up {
        Up { next: 1, ..Up::default() }
    }

    /// Messages sent and not yet acked or reported.
    pub fn outstanding(&self) -> usize {
        self.unacked.len()
    }

    /// The next message of session `session`, stamped; it is recorded as sent.
    pub fn send(&mut self, session: usize, counts: &mut Counts) -> String {
        let seq = self.next;
        self.next += 1;
        let text = format!("check {session} {seq}");
        self.unacked.insert(seq, text.clone());
        self.sent_on = self.conn;
        counts.sent += 1;
        format!("{seq}:{text}")
    }

    /// `up_ack` with seq `w`.
    pub fn ack(&mut self, w: u64, checks: &mut Checks, counts: &mut Counts) {
        if w < self.acked {
            checks.fail(Check::Upstream, format!("up_ack {w} is below the earlier ack {}", self.acked));
            return;
        }
        if w >= self.next {
            checks.fail(Check::Upstream, format!("up_ack {w} acks a message never sent (last sent {})", self.next - 1));
            return;
        }
        self.settle(w, checks, counts);
    }

    /// Marks everything up to `w` acked.
    fn settle(&mut self, w: u64, checks: &mut Checks, counts: &mut Counts) {
        let rest = self.unacked.split_off(&(w + 1));
        for _ in std::mem::replace(&mut self.unacked, rest) {
            counts.acked += 1;
            checks.pass(Check::Upstream);
        }
        self.acked = self.acked.max(w);
    }

    /// A welcome's `up` object; returns the stamped messages to send again,
    /// in order.
    pub fn welcome(&mut self, up: Option<&Value>, checks: &mut Checks, counts: &mut Counts) -> Vec<String> {
        let fields = up.and_then(|u| {
            Some((u["next"].as_u64()?, u["acked"].as_u64()?, u["conn"].as_u64()?, u["exact"].as_bool()?))
        });
        let Some((next, acked, conn, exact)) = fields else {
            checks.fail(Check::Upstream, format!("a welcome without a valid `up` on a Tether-Up connection: {up:?}"));
            return Vec::new();
        };
        let mut ok = true;
        if acked < self.acked {
            ok = false;
            checks.fail(Check::Upstream, format!("welcome: acked {acked} is below the earlier ack {}", self.acked));
        }
        if next == 0 || next > self.next || acked >= next {
            ok = false;
            checks.fail(
                Check::Upstream,
                format!("welcome: next {next}, acked {acked} do not fit what was sent (1..={})", self.next - 1),
            );
        }
        if ok {
            self.settle(acked, checks, counts);
        }
        let changed = self.sent_on.is_some_and(|c| c != conn);
        self.conn = Some(conn);
        let above: Vec<(u64, String)> = self.unacked.range(next..).map(|(s, t)| (*s, t.clone())).collect();
        if changed && !exact {
            // In doubt: reported. New messages continue at `next`.
            for (s, _) in &above {
                self.unacked.remove(s);
                counts.in_doubt += 1;
                checks.pass(Check::Upstream);
            }
            self.next = next.max(1);
            return Vec::new();
        }
        counts.resent += above.len() as u64;
        if !above.is_empty() {
            self.sent_on = Some(conn);
        }
        above.into_iter().map(|(s, t)| format!("{s}:{t}")).collect()
    }

    /// The backend ended the session; its `end` frame said `acked`: the
    /// rest will never be written, and is reported.
    pub fn ended(&mut self, acked: Option<u64>, checks: &mut Checks, counts: &mut Counts) {
        match acked {
            Some(w) => self.ack(w, checks, counts),
            None if !self.unacked.is_empty() => {
                checks.fail(Check::Upstream, "an `end` frame without `up` on a Tether-Up connection".into())
            }
            None => {}
        }
        self.report_rest(counts);
    }

    /// The session is gone (a gap that started a new one): what was not
    /// acked is reported by that gap.
    pub fn report_rest(&mut self, counts: &mut Counts) {
        counts.in_doubt += self.unacked.len() as u64;
        self.unacked.clear();
    }

    /// End of the run: what is neither acked nor reported fails.
    pub fn finish(&mut self, session: usize, checks: &mut Checks) {
        for s in self.unacked.keys() {
            checks
                .fail(Check::Upstream, format!("session {session}: message {s} was never acked nor reported in doubt"));
        }
        self.unacked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn acks_resends_and_doubt() {
        let (mut c, mut n) = (Checks::default(), Counts::default());
        let mut up = Up::new();
        assert!(up.welcome(Some(&json!({"next":1,"acked":0,"conn":7,"exact":true})), &mut c, &mut n).is_empty());
        assert_eq!(up.send(0, &mut n), "1:check 0 1");
        up.send(0, &mut n);
        up.send(0, &mut n);
        up.ack(1, &mut c, &mut n);
        assert_eq!(up.outstanding(), 2);
        // Same connection, tether had only 2: send 3 again.
        let again = up.welcome(Some(&json!({"next":3,"acked":1,"conn":7,"exact":true})), &mut c, &mut n);
        assert_eq!(again, vec!["3:check 0 3".to_owned()]);
        // A new connection after a kill -9: 3 is in doubt; the next is 3 again.
        let again = up.welcome(Some(&json!({"next":3,"acked":2,"conn":8,"exact":false})), &mut c, &mut n);
        assert!(again.is_empty());
        assert_eq!((up.outstanding(), n.in_doubt, n.acked), (0, 1, 2));
        assert_eq!(up.send(0, &mut n), "3:check 0 3");
        assert_eq!(c.failures(), 0);
        up.ack(9, &mut c, &mut n);
        assert_eq!(c.failures(), 1);
    }
}
