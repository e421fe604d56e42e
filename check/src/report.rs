//! The report: a summary for people, JSON for machines (schema version 1,
//! docs/CHECK.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::checks::{Check, Checks, Counts};
use crate::opts::Opts;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Schema version: 1.
    pub version: u32,
    /// The URL checked.
    pub url: String,
    /// Every check passed.
    pub passed: bool,
    /// The fault schedule's seed (`--seed` repeats it).
    pub seed: u64,
    /// Wall time of the run, seconds.
    pub elapsed_secs: f64,
    /// The options that shape the run.
    pub options: Options,
    /// Each check, in a fixed order.
    pub checks: Vec<CheckReport>,
    /// What happened.
    pub counts: Counts,
    /// From each fault (or interruption) to the welcome of the resumed connection.
    pub resume_latency_ms: Latency,
}

/// The options in the report.
#[derive(Debug, Serialize)]
pub struct Options {
    /// `--sessions`.
    pub sessions: usize,
    /// `--duration`, seconds.
    pub duration_secs: f64,
    /// `--faults`.
    pub faults: Vec<String>,
    /// `--send`.
    pub send: bool,
}

/// One check's verdict.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// Its name (docs/CHECK.md).
    pub name: &'static str,
    /// `pass`, `fail` or `skip`.
    pub status: &'static str,
    /// Observations that agreed.
    pub passed: u64,
    /// Observations that did not.
    pub failed: u64,
    /// The first few failures.
    pub examples: Vec<String>,
}

/// Percentiles of the resume latency, milliseconds (null with no resume).
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Resumes measured.
    pub count: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Report {
    /// Builds the report of a finished run.
    pub fn new(
        opts: &Opts,
        seed: u64,
        elapsed: Duration,
        checks: Checks,
        counts: Counts,
        latencies: Vec<Duration>,
    ) -> Report {
        let mut tallies = checks.0;
        let checks: Vec<CheckReport> = Check::ALL
            .iter()
            .map(|&c| {
                let t = tallies.remove(&c).unwrap_or_default();
                let status = if t.failed > 0 {
                    "fail"
                } else if c == Check::Upstream && !opts.send {
                    "skip"
                } else {
                    "pass"
                };
                CheckReport { name: c.name(), status, passed: t.passed, failed: t.failed, examples: t.examples }
            })
            .collect();
        let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| (!ms.is_empty()).then(|| ms[((ms.len() - 1) as f64 * p).round() as usize]);
        Report {
            version: 1,
            url: opts.url.clone(),
            passed: checks.iter().all(|c| c.status != "fail"),
            seed,
            elapsed_secs: elapsed.as_secs_f64(),
            options: Options {
                sessions: opts.sessions,
                duration_secs: opts.duration.as_secs_f64(),
                faults: opts.faults.iter().map(|f| f.name().to_owned()).collect(),
                send: opts.send,
            },
            resume_latency_ms: Latency { count: ms.len(), p50: pct(0.5), p99: pct(0.99), max: ms.last().copied() },
            checks,
            counts,
        }
    }

    /// The summary for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let c = &self.counts;
        let _ = writeln!(
            s,
            "tether check {}: {} sessions, {:.1} s (seed {})",
            self.url, self.options.sessions, self.elapsed_secs, self.seed
        );
        for r in &self.checks {
            let unit = Check::ALL.iter().find(|c| c.name() == r.name).map_or("", |c| c.unit());
            let detail = match r.status {
                "skip" => "not run (--send not given)".to_owned(),
                _ if r.failed > 0 => format!("{} of {} {unit} failed", r.failed, r.failed + r.passed),
                _ => format!("{} {unit}", r.passed),
            };
            let _ = writeln!(s, "  {:<4} {:<11} {detail}", r.status.to_uppercase(), r.name);
            for e in &r.examples {
                let _ = writeln!(s, "         - {e}");
            }
        }
        let _ = writeln!(
            s,
            "counts: {} connections, {} frames ({} replayed and compared), {} session(s) opened, {} ended by the backend",
            c.connections, c.frames, c.replayed, c.sessions, c.ended
        );
        let _ = writeln!(s, "  faults:      {}", list(&c.faults));
        let _ = writeln!(s, "  resumes:     {}", list(&c.resumes));
        let _ = writeln!(s, "  outcomes:    {}", list(&c.outcomes));
        let _ = writeln!(s, "  refusals:    {}", list(&c.refusals));
        if !c.gaps.is_empty() {
            let _ = writeln!(s, "  gap reports: {}", list(&c.gaps));
        }
        if !c.interruptions.is_empty() {
            let _ = writeln!(s, "  interrupted: {}", list(&c.interruptions));
        }
        if !c.retries.is_empty() {
            let _ = writeln!(s, "  retried:     {}", list(&c.retries));
        }
        if self.options.send {
            let _ = writeln!(
                s,
                "  upstream:    {} sent, {} acked, {} reported in doubt, {} sent again",
                c.sent, c.acked, c.in_doubt, c.resent
            );
        }
        let l = &self.resume_latency_ms;
        match (l.p50, l.p99, l.max) {
            (Some(p50), Some(p99), Some(max)) => {
                let _ = writeln!(
                    s,
                    "resume latency: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} resumes)",
                    l.count
                );
            }
            _ => {
                let _ = writeln!(s, "resume latency: no resume");
            }
        }
        let failed: Vec<&str> = self.checks.iter().filter(|c| c.status == "fail").map(|c| c.name).collect();
        if failed.is_empty() {
            let _ = writeln!(s, "result: PASS");
        } else {
            let _ = writeln!(s, "result: FAIL ({})", failed.join(", "));
        }
        s
    }
}

fn list(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}
