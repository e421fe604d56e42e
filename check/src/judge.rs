//! One session as the checker knows it, and the verdict on everything tether
//! sends it: welcomes, data frames, gap reports, closes.

use std::collections::HashMap;

use serde_json::Value;

use crate::checks::{Check, Checks, Counts};
use crate::frames::Hash;
use crate::token;
use crate::wire::header;

/// How a connection was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Without credentials.
    New,
    /// With the session's token and this offset.
    Resume(u64),
}

/// What a control frame means for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing to do.
    None,
    /// `draining`: a 1012 close follows.
    Draining,
    /// `end`: the session is over.
    End,
    /// `up_ack`.
    UpAck(u64),
}

/// The welcome, as far as the driver needs it.
#[derive(Debug)]
pub struct Welcomed {
    /// `new`, `resumed`, `restarted` or `gap`.
    pub outcome: String,
    /// The session is a new one (outcome `new`, or a gap that started one).
    pub new_session: bool,
    /// The `up` object.
    pub up: Option<Value>,
    /// The last seq already journaled when the connection started.
    pub replay_to: Option<u64>,
}

/// The connection being read.
#[derive(Debug, Default)]
struct Conn {
    /// The seq that must come next.
    next: u64,
    /// Ranges skipped without a report, so far: a seq that later fills one
    /// is a reorder; what is left when the connection ends was lost.
    holes: Vec<(u64, u64)>,
    /// A `draining` frame came.
    draining: bool,
}

/// The checker's model of one session (and of the sessions that replace it
/// in the same slot).
pub struct Judge {
    /// The slot's number, for reports.
    pub slot: usize,
    /// Verdicts.
    pub checks: Checks,
    /// Counts.
    pub counts: Counts,
    token: Option<String>,
    /// The token the last successful resume presented: tether's newest used.
    used: Option<String>,
    /// A token of this session older than `used`: tether must refuse it.
    superseded: Option<String>,
    hashes: HashMap<u64, Hash>,
    max_seen: u64,
    conn: Conn,
}

impl Judge {
    /// An empty slot.
    pub fn new(slot: usize) -> Judge {
        Judge {
            slot,
            checks: Checks::default(),
            counts: Counts::default(),
            token: None,
            used: None,
            superseded: None,
            hashes: HashMap::new(),
            max_seen: 0,
            conn: Conn::default(),
        }
    }

    /// The token of the current session.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A token of the current session that a later resume superseded: tether
    /// must answer it with 401 `token_superseded` (docs/PROTOCOL.md §8).
    pub fn superseded_token(&self) -> Option<&str> {
        self.superseded.as_deref()
    }

    /// The last seq processed: what a resume sends as its offset.
    pub fn offset(&self) -> u64 {
        self.conn.next.saturating_sub(1)
    }

    /// The highest seq received in this session.
    pub fn max_seen(&self) -> u64 {
        self.max_seen
    }

    /// Forgets the session (it ended or was replaced).
    pub fn forget(&mut self) {
        self.token = None;
        self.used = None;
        self.superseded = None;
        self.hashes.clear();
        self.max_seen = 0;
        self.conn = Conn::default();
    }

    fn fail(&mut self, c: Check, why: String) {
        let why = format!("session {}: {why}", self.slot);
        self.checks.fail(c, why);
    }

    fn expect(&mut self, c: Check, ok: bool, why: impl FnOnce() -> String) {
        if ok {
            self.checks.pass(c)
        } else {
            self.fail(c, why())
        }
    }

    /// A 101 and its welcome frame. `None` if the welcome is unusable.
    pub fn welcome(&mut self, start: Start, headers: &[(String, String)], w: &Value) -> Option<Welcomed> {
        self.counts.connections += 1;
        let session = w["session"].as_str().unwrap_or_default().to_owned();
        let outcome = w["outcome"].as_str().unwrap_or_default().to_owned();
        if w["type"] != "welcome" || w["v"] != 1 || session.is_empty() {
            self.fail(Check::Frames, format!("the first frame is not a v1 welcome with a session: {w}"));
            return None;
        }
        self.checks.pass(Check::Frames);
        Counts::bump(&mut self.counts.outcomes, outcome.clone());
        self.expect(Check::Outcomes, header(headers, "tether-session") == Some(session.as_str()), || {
            "the Tether-Session header is not the welcome's session".into()
        });
        self.expect(Check::Outcomes, header(headers, "tether-outcome") == Some(outcome.as_str()), || {
            format!("Tether-Outcome {:?} but the welcome says {outcome:?}", header(headers, "tether-outcome"))
        });
        let mut new_session = false;
        let old_token = self.token.clone();
        match (start, outcome.as_str()) {
            (Start::New, "new") => {
                self.expect(Check::Outcomes, w["gap"].is_null(), || format!("outcome new with a gap report: {w}"));
                new_session = true;
                self.forget();
                self.conn.next = 1;
            }
            (Start::New, o) => self.fail(Check::Outcomes, format!("a request without credentials got outcome {o:?}")),
            (Start::Resume(offset), "resumed" | "restarted") => {
                self.conn = Conn { next: offset + 1, ..Conn::default() };
                self.expect(Check::Outcomes, token::is_next(old_token.as_deref(), &session), || {
                    format!("outcome {outcome} with a token that is not the next one of the session's")
                });
                self.expect(Check::Outcomes, w["gap"].is_null(), || format!("outcome {outcome} with a gap report"));
                let restarted = outcome == "restarted";
                self.expect(Check::Outcomes, w["backend"]["since"].is_u64() == restarted, || {
                    format!("outcome {outcome} with backend {}", w["backend"])
                });
            }
            (Start::Resume(offset), "gap") => {
                self.conn = Conn { next: offset + 1, ..Conn::default() };
                new_session = self.gap_welcome(offset, headers, w, old_token.as_deref(), &session);
            }
            (Start::Resume(_), o) => self.fail(Check::Outcomes, format!("a resume got outcome {o:?}")),
        }
        if matches!(start, Start::Resume(_)) && !new_session {
            // The token presented is now the newest used; the one presented
            // before it, if another (its welcome arrived), is superseded.
            if let Some(presented) = old_token {
                if let Some(before) = self.used.replace(presented.clone()) {
                    if before != presented {
                        self.superseded = Some(before);
                    }
                }
            }
        }
        self.token = Some(session);
        let replay = &w["replay"];
        let replay_to = replay["to"].as_u64();
        if !replay.is_null() {
            let from = replay["from"].as_u64();
            let next = self.conn.next;
            self.expect(Check::Outcomes, from == Some(next) && replay_to >= from, || {
                format!("welcome replay {replay} after offset {}", next - 1)
            });
        }
        Some(Welcomed { outcome, new_session, up: w.get("up").cloned(), replay_to })
    }

    /// Outcome `gap` in a welcome: true if it started a new session.
    fn gap_welcome(
        &mut self,
        offset: u64,
        headers: &[(String, String)],
        w: &Value,
        old: Option<&str>,
        token: &str,
    ) -> bool {
        let g = &w["gap"];
        let reason = g["reason"].as_str().unwrap_or_default().to_owned();
        Counts::bump(&mut self.counts.gaps, reason.clone());
        let fa = g["first_available"].as_u64();
        let (from, to) = (g["lost"]["from"].as_u64(), &g["lost"]["to"]);
        self.expect(Check::Gaps, g["requested_offset"].as_u64() == Some(offset) && from == Some(offset + 1), || {
            format!("gap report {g} after a resume from offset {offset}")
        });
        let tg = header(headers, "tether-gap").unwrap_or_default();
        let shown = format!(
            "reason={reason}; from={}; to={}; first_available={}",
            offset + 1,
            to.as_u64().map_or("unknown".to_owned(), |t| t.to_string()),
            fa.unwrap_or(0)
        );
        self.expect(Check::Gaps, tg == shown, || format!("Tether-Gap {tg:?} does not match the welcome's report {g}"));
        match reason.as_str() {
            "trimmed" => {
                let fa = fa.unwrap_or(0);
                self.expect(
                    Check::Gaps,
                    fa > offset + 1 && to.as_u64() == Some(fa - 1) && token::is_next(old, token),
                    || format!("trimmed gap {g} after offset {offset} (same session expected)"),
                );
                self.conn.next = fa.max(offset + 1);
                false
            }
            "expired" | "unknown_session" | "journal_lost" => {
                self.expect(Check::Gaps, fa == Some(1) && to.is_null() && !token::same_session(old, token), || {
                    format!("{reason} gap {g} must start a new session at 1 with a new token")
                });
                self.forget();
                self.conn.next = 1;
                self.counts.sessions += 1;
                true
            }
            _ => {
                self.fail(Check::Gaps, format!("unknown gap reason in {g}"));
                false
            }
        }
    }

    /// A data frame on the current connection.
    pub fn data(&mut self, seq: u64, hash: Hash) {
        self.counts.frames += 1;
        self.checks.pass(Check::Frames);
        let next = self.conn.next;
        if seq >= next {
            if seq > next {
                self.conn.holes.push((next, seq - 1));
            } else {
                self.checks.pass(Check::Contiguous);
            }
            self.checks.pass(Check::Duplicates);
            self.checks.pass(Check::Order);
            self.conn.next = seq + 1;
            self.accept(seq, hash);
        } else if let Some(i) = self.conn.holes.iter().position(|&(a, b)| a <= seq && seq <= b) {
            self.fail(Check::Order, format!("seq {seq} arrived after seq {}", next - 1));
            let (a, b) = self.conn.holes.remove(i);
            if a < seq {
                self.conn.holes.push((a, seq - 1));
            }
            if seq < b {
                self.conn.holes.push((seq + 1, b));
            }
            self.accept(seq, hash);
        } else {
            self.fail(Check::Duplicates, format!("seq {seq} arrived again (expected {next})"));
        }
    }

    /// A frame on a connection that a newer one took over: only compared.
    pub fn superseded(&mut self, seq: u64, hash: Hash) {
        if let Some(h) = self.hashes.get(&seq).copied() {
            self.compare(seq, h, hash);
        }
    }

    fn accept(&mut self, seq: u64, hash: Hash) {
        match self.hashes.get(&seq).copied() {
            Some(h) => {
                self.counts.replayed += 1;
                self.compare(seq, h, hash);
            }
            None => {
                self.hashes.insert(seq, hash);
            }
        }
        self.max_seen = self.max_seen.max(seq);
    }

    fn compare(&mut self, seq: u64, was: Hash, now: Hash) {
        self.expect(Check::Replay, was == now, || format!("seq {seq} was replayed with other bytes"));
    }

    /// A control frame after the welcome.
    pub fn control(&mut self, v: &Value) -> Event {
        let known = ["gap", "up_ack", "draining", "end"];
        if known.contains(&v["type"].as_str().unwrap_or_default()) {
            self.checks.pass(Check::Frames);
        }
        match v["type"].as_str().unwrap_or_default() {
            "gap" => {
                self.mid_gap(v);
                Event::None
            }
            "up_ack" => match v["seq"].as_u64() {
                Some(s) => Event::UpAck(s),
                None => {
                    self.fail(Check::Frames, format!("up_ack without a seq: {v}"));
                    Event::None
                }
            },
            "draining" => {
                self.conn.draining = true;
                Event::Draining
            }
            "end" => {
                self.counts.ended += 1;
                Event::End
            }
            other => {
                self.fail(Check::Frames, format!("unexpected control frame type {other:?}: {v}"));
                Event::None
            }
        }
    }

    /// A mid-stream `gap` (docs/PROTOCOL.md §7).
    fn mid_gap(&mut self, g: &Value) {
        Counts::bump(&mut self.counts.gaps, g["reason"].as_str().unwrap_or("?").to_owned());
        let last = self.conn.next - 1;
        let fa = g["first_available"].as_u64().unwrap_or(0);
        let ok = g["reason"] == "trimmed"
            && g["requested_offset"].as_u64() == Some(last)
            && g["lost"]["from"].as_u64() == Some(last + 1)
            && fa > last + 1
            && g["lost"]["to"].as_u64() == Some(fa - 1);
        self.expect(Check::Gaps, ok, || format!("mid-stream gap {g} after seq {last}"));
        self.conn.next = self.conn.next.max(fa);
    }

    /// The server closed the connection with `code` (`None`: no close
    /// frame). `expected`: a takeover or our own close asked for it.
    pub fn server_closed(&mut self, code: Option<u16>) {
        match code {
            Some(c) if self.conn.draining => {
                self.expect(Check::Outcomes, c == 1012, || format!("closed with {c} after `draining` (1012 expected)"))
            }
            Some(4001) => {
                self.fail(Check::Outcomes, "closed with 4001 (takeover) though no other connection resumed".into())
            }
            Some(c @ (4003 | 4004)) => {
                self.fail(Check::Upstream, format!("closed with {c}: tether judged the stamps wrong"))
            }
            _ => {}
        }
    }

    /// The connection is over: what is still missing was lost unreported.
    pub fn conn_over(&mut self) {
        for (a, b) in std::mem::take(&mut self.conn.holes) {
            let what = if a == b { format!("seq {a}") } else { format!("seqs {a}..={b}") };
            self.fail(Check::Contiguous, format!("{what} never arrived and no gap report named them"));
        }
        self.conn.draining = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(n: u8) -> Hash {
        [n; 32]
    }

    fn started(j: &mut Judge) {
        let tok = token::tests::v3([7; 16], 0);
        let headers = vec![("tether-session".into(), tok.clone()), ("tether-outcome".into(), "new".into())];
        let w = json!({"type":"welcome","v":1,"session":tok,"outcome":"new","replay":null,"gap":null});
        assert!(j.welcome(Start::New, &headers, &w).unwrap().new_session);
    }

    #[test]
    fn holes_reorders_duplicates() {
        let mut j = Judge::new(0);
        started(&mut j);
        for s in [1, 2, 4, 3, 4, 6] {
            j.data(s, h(s as u8));
        }
        j.conn_over();
        let c = &j.checks.0;
        assert_eq!(c[&Check::Order].failed, 1, "{c:?}");
        assert_eq!(c[&Check::Duplicates].failed, 1);
        assert_eq!(c[&Check::Contiguous].failed, 1, "seq 5");
        assert_eq!(j.offset(), 6);
    }

    #[test]
    fn rewind_compares_and_gap_moves_on() {
        let mut j = Judge::new(0);
        started(&mut j);
        for s in 1..=5 {
            j.data(s, h(s as u8));
        }
        j.conn_over();
        let tok = token::tests::v3([7; 16], 1);
        let headers = vec![("tether-session".into(), tok.clone()), ("tether-outcome".into(), "resumed".into())];
        let w = json!({"type":"welcome","v":1,"session":tok,"outcome":"resumed","replay":{"from":3,"to":5},"gap":null});
        j.welcome(Start::Resume(2), &headers, &w).unwrap();
        j.data(3, h(3));
        j.data(4, h(9));
        j.data(5, h(5));
        assert_eq!(j.checks.0[&Check::Replay].failed, 1);
        let g = json!({"type":"gap","reason":"trimmed","requested_offset":5,"first_available":65,"lost":{"from":6,"to":64}});
        assert_eq!(j.control(&g), Event::None);
        j.data(65, h(65));
        j.conn_over();
        assert_eq!(j.checks.failures(), 1, "{:?}", j.checks);
    }

    #[test]
    fn a_token_is_superseded_once_its_successor_was_presented() {
        let mut j = Judge::new(0);
        started(&mut j);
        let resume = |j: &mut Judge, generation: u32| {
            let tok = token::tests::v3([7; 16], generation);
            let headers = vec![("tether-session".into(), tok.clone()), ("tether-outcome".into(), "resumed".into())];
            let w = json!({"type":"welcome","v":1,"session":tok,"outcome":"resumed","replay":null,"gap":null});
            j.conn_over();
            j.welcome(Start::Resume(0), &headers, &w).unwrap();
        };
        resume(&mut j, 1); // presented generation 0
        assert_eq!(j.superseded_token(), None);
        resume(&mut j, 2); // presented 1: 0 is superseded
        assert_eq!(j.superseded_token(), Some(token::tests::v3([7; 16], 0).as_str()));
        j.token = Some(token::tests::v3([7; 16], 1)); // the welcome with 2 was lost: 1 again
        resume(&mut j, 2);
        assert_eq!(j.superseded_token(), Some(token::tests::v3([7; 16], 0).as_str()));
        resume(&mut j, 3); // presented 2: 1 is superseded
        assert_eq!(j.superseded_token(), Some(token::tests::v3([7; 16], 1).as_str()));
        assert_eq!(j.checks.failures(), 0, "{:?}", j.checks);
        j.forget();
        assert_eq!(j.superseded_token(), None);
    }
}
