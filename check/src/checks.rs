//! The checks, what each one observed, and the run's counts.

use std::collections::BTreeMap;

use serde::Serialize;

/// One check of tether's promise (docs/CHECK.md explains each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Every data frame on a connection is the one after the previous one,
    /// unless a gap report announced the jump: no unreported hole.
    Contiguous,
    /// No seq arrives twice: not on one connection, and not at or below
    /// the offset a resume sent.
    Duplicates,
    /// No seq arrives after a higher one (a reorder).
    Order,
    /// Every gap report is exact: its reason fits the outcome, its range
    /// starts right after what the checker had, and delivery continues at
    /// `first_available`.
    Gaps,
    /// A resume from an older offset replays byte-identical frames.
    Replay,
    /// Outcomes, 101 headers, welcome fields, takeover (4001) and draining
    /// (1012) as docs/PROTOCOL.md says.
    Outcomes,
    /// Deliberately bad resumes are refused with the documented status,
    /// `error` and JSON body.
    Refusals,
    /// Every interrupted session resumed within --resume-timeout.
    Resume,
    /// With --send: every message acked (`up_ack`) or reported in doubt.
    Upstream,
    /// Every message is a stamped data frame or a well-formed control frame
    /// of a type tether sends.
    Frames,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 10] = [
        Check::Contiguous,
        Check::Duplicates,
        Check::Order,
        Check::Gaps,
        Check::Replay,
        Check::Outcomes,
        Check::Refusals,
        Check::Resume,
        Check::Upstream,
        Check::Frames,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Check::Contiguous => "contiguous",
            Check::Duplicates => "duplicates",
            Check::Order => "order",
            Check::Gaps => "gaps",
            Check::Replay => "replay",
            Check::Outcomes => "outcomes",
            Check::Refusals => "refusals",
            Check::Resume => "resume",
            Check::Upstream => "upstream",
            Check::Frames => "frames",
        }
    }

    /// What one observation of it is, for the summary.
    pub fn unit(self) -> &'static str {
        match self {
            Check::Contiguous | Check::Duplicates | Check::Order => "frames",
            Check::Frames => "messages",
            Check::Gaps => "gap reports",
            Check::Replay => "replayed frames compared",
            Check::Outcomes => "welcome, takeover and close checks",
            Check::Refusals => "refusals",
            Check::Resume => "resumes",
            Check::Upstream => "messages sent",
        }
    }
}

/// What one check observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Observations that agreed with the promise.
    pub passed: u64,
    /// Observations that did not.
    pub failed: u64,
    /// The first few failures, described.
    pub examples: Vec<String>,
}

/// Failures described per check, at most.
const EXAMPLES: usize = 5;

/// Every check's tally.
#[derive(Debug, Clone, Default)]
pub struct Checks(pub BTreeMap<Check, Tally>);

impl Checks {
    /// One observation that agreed.
    pub fn pass(&mut self, c: Check) {
        self.0.entry(c).or_default().passed += 1;
    }

    /// One that did not, and why.
    pub fn fail(&mut self, c: Check, why: String) {
        let t = self.0.entry(c).or_default();
        t.failed += 1;
        if t.examples.len() < EXAMPLES {
            t.examples.push(why);
        }
    }

    /// Passes if `ok`, else fails with `why()`.
    pub fn expect(&mut self, c: Check, ok: bool, why: impl FnOnce() -> String) {
        if ok {
            self.pass(c)
        } else {
            self.fail(c, why())
        }
    }

    /// Adds another session's tallies.
    pub fn merge(&mut self, other: Checks) {
        for (c, t) in other.0 {
            let mine = self.0.entry(c).or_default();
            mine.passed += t.passed;
            mine.failed += t.failed;
            let room = EXAMPLES.saturating_sub(mine.examples.len());
            mine.examples.extend(t.examples.into_iter().take(room));
        }
    }

    /// Failures in all.
    pub fn failures(&self) -> u64 {
        self.0.values().map(|t| t.failed).sum()
    }
}

/// What happened during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Sessions opened (a session that ended or was lost is replaced).
    pub sessions: u64,
    /// Connections that got a 101.
    pub connections: u64,
    /// Data frames received.
    pub frames: u64,
    /// Data frames received again by a deliberate rewind, compared byte for byte.
    pub replayed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Connections that ended without a fault of the checker's (draining,
    /// a server close, an error), by cause.
    pub interruptions: BTreeMap<String, u64>,
    /// Successful resumes, by how the credentials were sent (`header`,
    /// `query`) and `rewind` for those from an older offset.
    pub resumes: BTreeMap<String, u64>,
    /// Welcome outcomes.
    pub outcomes: BTreeMap<String, u64>,
    /// Gap reports, by reason.
    pub gaps: BTreeMap<String, u64>,
    /// Refusals the probes asked for, by `status error`.
    pub refusals: BTreeMap<String, u64>,
    /// Retryable refusals and failed connects while resuming, by cause.
    pub retries: BTreeMap<String, u64>,
    /// Sessions the backend ended (`end` frame).
    pub ended: u64,
    /// With --send: messages sent (resends not counted), acked, reported in
    /// doubt, and sent again after a welcome asked for it.
    pub sent: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages reported in doubt.
    pub in_doubt: u64,
    /// Messages sent again.
    pub resent: u64,
}

impl Counts {
    /// Adds one to `map[key]`.
    pub fn bump(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
        *map.entry(key.into()).or_default() += 1;
    }

    /// Adds another session's counts.
    pub fn merge(&mut self, o: Counts) {
        let add = |a: &mut BTreeMap<String, u64>, b: BTreeMap<String, u64>| {
            for (k, v) in b {
                *a.entry(k).or_default() += v;
            }
        };
        self.sessions += o.sessions;
        self.connections += o.connections;
        self.frames += o.frames;
        self.replayed += o.replayed;
        add(&mut self.faults, o.faults);
        add(&mut self.interruptions, o.interruptions);
        add(&mut self.resumes, o.resumes);
        add(&mut self.outcomes, o.outcomes);
        add(&mut self.gaps, o.gaps);
        add(&mut self.refusals, o.refusals);
        add(&mut self.retries, o.retries);
        self.ended += o.ended;
        self.sent += o.sent;
        self.acked += o.acked;
        self.in_doubt += o.in_doubt;
        self.resent += o.resent;
    }
}
