//! Markdown tables: medians over runs, ratios, and the targets.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::procs::Setup;
use crate::special::{IdleRun, ReplayRun, ResumeRun};
use crate::stats::{fixed, median, micros, ratio, thousands};
use crate::stream::Trial;

/// Everything one invocation measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// Stream trials (saturation and fixed load).
    pub trials: Vec<Trial>,
    /// Replay runs.
    pub replay: Vec<ReplayRun>,
    /// Resume-latency runs.
    pub resume: Vec<ResumeRun>,
    /// Idle-memory runs.
    pub idle: Vec<IdleRun>,
    /// Infrastructure failures (a scenario that could not run).
    pub failures: Vec<String>,
}

/// Other processes' CPU share above which a trial counts as disturbed.
pub const DISTURBED_PCT: f64 = 10.0;

/// The load used for the latency target.
pub const TARGET_LOAD: u32 = 25;

impl Results {
    /// Medians of `f` over the trials of one cell and setup.
    pub fn med(
        &self,
        phase: &str,
        size: usize,
        conns: usize,
        load: u32,
        setup: Setup,
        f: impl Fn(&Trial) -> f64,
    ) -> f64 {
        median(
            self.trials
                .iter()
                .filter(|t| t.phase == phase && t.size == size && t.conns == conns && t.load_pct == load)
                .filter(|t| t.setup == setup)
                .map(f),
        )
    }

    fn cells(&self, phase: &str) -> BTreeSet<(usize, usize, u32)> {
        self.trials.iter().filter(|t| t.phase == phase).map(|t| (t.size, t.conns, t.load_pct)).collect()
    }

    fn stalled(&self, phase: &str, size: usize, conns: usize, setup: Setup) -> bool {
        self.trials
            .iter()
            .any(|t| t.phase == phase && t.size == size && t.conns == conns && t.setup == setup && t.stalled)
    }

    fn setups(&self) -> BTreeSet<Setup> {
        self.trials.iter().map(|t| t.setup).collect()
    }

    /// Missing, duplicated and incomplete counts over every run.
    pub fn correctness(&self) -> (u64, u64, u64) {
        let mut g = self.trials.iter().map(|t| t.gaps).sum::<u64>();
        let mut d = self.trials.iter().map(|t| t.dups).sum::<u64>();
        let mut i = self.trials.iter().map(|t| t.incomplete).sum::<u64>();
        for r in &self.replay {
            g += r.gaps;
            d += r.dups;
            i += u64::from(r.incomplete);
        }
        for r in &self.resume {
            g += r.gaps;
            d += r.dups;
            i += u64::from(r.error.is_some());
        }
        (g, d, i)
    }

    /// The whole report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        self.saturation_table(&mut out);
        self.latency_table(&mut out);
        self.special_tables(&mut out);
        self.targets(&mut out);
        let disturbed = self.trials.iter().filter(|t| t.foreign_pct > DISTURBED_PCT).count();
        let repeated = self.trials.iter().filter(|t| t.repeats > 0).count();
        let _ = writeln!(
            out,
            "\n**Other processes:** {repeated} of {} stream trials were repeated because processes other than tether, the backend and the clients used more than {DISTURBED_PCT:.0} % of the CPUs while they ran; {disturbed} kept that much after their last attempt (the most any kept: {:.0} %).",
            self.trials.len(),
            self.trials.iter().map(|t| t.foreign_pct).fold(0.0, f64::max)
        );
        let (g, d, i) = self.correctness();
        let _ = writeln!(
            out,
            "\n**Delivery check, every run:** {g} missing, {d} duplicated or out of order, {i} streams incomplete."
        );
        for f in &self.failures {
            let _ = writeln!(out, "\n**Failed:** {f}");
        }
        out
    }

    fn saturation_table(&self, out: &mut String) {
        let cells = self.cells("saturation");
        if cells.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n### Throughput at saturation\n");
        let _ = writeln!(
            out,
            "| payload | conns | setup | delivered msg/s | × relay | × pass-through | × direct | tether CPU µs/msg | all CPU µs/msg | tether peak RSS MiB | disk bytes ÷ payload | missing / dup |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (size, conns, load) in cells {
            let m = |s: Setup, f: &dyn Fn(&Trial) -> f64| self.med("saturation", size, conns, load, s, f);
            let relay = m(Setup::Relay, &|t| t.rate);
            let pass = m(Setup::Pass, &|t| t.rate);
            let direct = m(Setup::Direct, &|t| t.rate);
            for s in self.setups() {
                let rate = m(s, &|t| t.rate);
                if rate.is_nan() {
                    continue;
                }
                if self.stalled("saturation", size, conns, s) {
                    let _ = writeln!(
                        out,
                        "| {} | {conns} | {} | stalled: nothing delivered (see Failed below) | | | | | | | | |",
                        size_label(size),
                        s.name()
                    );
                    continue;
                }
                let proxied = s != Setup::Direct;
                let bad: (u64, u64) = self
                    .trials
                    .iter()
                    .filter(|t| t.phase == "saturation" && t.size == size && t.conns == conns && t.setup == s)
                    .fold((0, 0), |a, t| (a.0 + t.gaps + t.incomplete, a.1 + t.dups));
                let _ = writeln!(
                    out,
                    "| {} | {conns} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                    size_label(size),
                    s.name(),
                    thousands(rate),
                    ratio(rate / relay),
                    ratio(rate / pass),
                    ratio(rate / direct),
                    if proxied { fixed(m(s, &|t| t.tether_cpu_us), 2) } else { "–".into() },
                    fixed(m(s, &|t| t.total_cpu_us()), 2),
                    if proxied { fixed(m(s, &|t| t.tether_hwm_mib), 0) } else { "–".into() },
                    if proxied { fixed(m(s, &|t| t.write_amp), 2) } else { "–".into() },
                    bad.0,
                    bad.1,
                );
            }
        }
    }

    fn latency_table(&self, out: &mut String) {
        let cells = self.cells("latency");
        if cells.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n### Latency at fixed offered load\n");
        let _ = writeln!(
            out,
            "Load is a share of the rig's pass-through capacity for paced traffic (\"capacity\"): the CPUs divided by the CPU time per message of tether, backend and clients together, measured in one light pass-through calibration run per cell, capped at the saturation throughput. Every setup gets the same offered rate. Each connection sends on its own timer with a random phase.\n"
        );
        let _ = writeln!(
            out,
            "| payload | conns | load | capacity msg/s | setup | offered msg/s | delivered msg/s | p50 µs | p99 µs | p99.9 µs | p50 added over pass-through µs | p99 added µs | p99 added over relay µs | tether CPU µs/msg | CPU ÷ relay's | machine CPU busy |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (size, conns, load) in cells {
            let m = |s: Setup, f: &dyn Fn(&Trial) -> f64| self.med("latency", size, conns, load, s, f);
            let p50 = |t: &Trial| t.p50_us.unwrap_or(f64::NAN);
            let p99 = |t: &Trial| t.p99_us.unwrap_or(f64::NAN);
            let p999 = |t: &Trial| t.p999_us.unwrap_or(f64::NAN);
            let (pass50, pass99) = (m(Setup::Pass, &p50), m(Setup::Pass, &p99));
            let (relay99, relay_cpu) = (m(Setup::Relay, &p99), m(Setup::Relay, &|t| t.tether_cpu_us));
            for s in self.setups() {
                let offered = m(s, &|t| t.offered);
                if offered.is_nan() {
                    continue;
                }
                let added = |x: f64, base: f64| {
                    if s == Setup::Pass || s == Setup::Direct || s == Setup::Relay {
                        "–".into()
                    } else {
                        micros(x - base)
                    }
                };
                let _ = writeln!(
                    out,
                    "| {} | {conns} | {load} % | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} % |",
                    size_label(size),
                    thousands(m(s, &|t| t.base)),
                    s.name(),
                    thousands(offered),
                    thousands(m(s, &|t| t.rate)),
                    micros(m(s, &p50)),
                    micros(m(s, &p99)),
                    micros(m(s, &p999)),
                    added(m(s, &p50), pass50),
                    added(m(s, &p99), pass99),
                    if s == Setup::Direct || s == Setup::Relay { "–".into() } else { micros(m(s, &p99) - relay99) },
                    if s == Setup::Direct { "–".into() } else { fixed(m(s, &|t| t.tether_cpu_us), 2) },
                    if s == Setup::Direct { "–".into() } else { ratio(m(s, &|t| t.tether_cpu_us) / relay_cpu) },
                    fixed(m(s, &|t| t.busy_pct), 0),
                );
            }
        }
    }

    fn special_tables(&self, out: &mut String) {
        if !self.replay.is_empty() {
            let r = &self.replay;
            let _ = writeln!(out, "\n### Replay\n");
            let _ = writeln!(out, "| frames behind | payload | journal fill msg/s (no client) | replay frames/s | tether CPU µs/frame | fill: disk bytes ÷ payload | runs |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                thousands(r[0].frames as f64),
                size_label(r[0].size),
                thousands(median(r.iter().map(|x| x.fill_rate))),
                thousands(median(r.iter().map(|x| x.replay_rate))),
                fixed(median(r.iter().map(|x| x.tether_cpu_us)), 2),
                fixed(median(r.iter().map(|x| x.write_amp)), 2),
                r.len()
            );
        }
        if !self.resume.is_empty() {
            let r = &self.resume;
            let _ = writeln!(out, "\n### Resume latency\n");
            let _ = writeln!(out, "From sending the upgrade request to receiving the first data frame: for a resume, the first replayed frame; for a fresh connection, the backend's first message (tether dials the backend first). Medians over runs of each run's percentile.\n");
            let _ = writeln!(out, "| connection | p50 µs | p99 µs | samples per run |");
            let _ = writeln!(out, "|---|---|---|---|");
            let _ = writeln!(
                out,
                "| fresh | {} | {} | {} |",
                micros(median(r.iter().map(|x| x.fresh_p50_us))),
                micros(median(r.iter().map(|x| x.fresh_p99_us))),
                thousands(median(r.iter().map(|x| x.fresh_samples as f64)))
            );
            let _ = writeln!(
                out,
                "| resume | {} | {} | {} |",
                micros(median(r.iter().map(|x| x.resume_p50_us))),
                micros(median(r.iter().map(|x| x.resume_p99_us))),
                thousands(median(r.iter().map(|x| x.resume_samples as f64)))
            );
        }
        if !self.idle.is_empty() {
            let r = &self.idle;
            let _ = writeln!(out, "\n### Idle memory\n");
            let _ = writeln!(out, "| idle sessions | tether RSS before (after {} warm-up sessions) MiB | tether RSS with all MiB | per session bytes |", r[0].warm);
            let _ = writeln!(out, "|---|---|---|---|");
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                thousands(median(r.iter().map(|x| x.sessions as f64))),
                fixed(median(r.iter().map(|x| x.rss_base_kib as f64 / 1024.0)), 1),
                fixed(median(r.iter().map(|x| x.rss_kib as f64 / 1024.0)), 1),
                thousands(median(r.iter().map(|x| x.per_session_bytes)))
            );
        }
    }

    fn targets(&self, out: &mut String) {
        let mut rows: Vec<[String; 3]> = Vec::new();
        let sat = self.cells("saturation");
        let worst = |num: Setup, den: Setup| {
            sat.iter()
                .map(|&(size, conns, load)| {
                    let r = self.med("saturation", size, conns, load, num, |t| t.rate)
                        / self.med("saturation", size, conns, load, den, |t| t.rate);
                    (r, size, conns)
                })
                .filter(|x| x.0.is_finite())
                .min_by(|a, b| a.0.total_cmp(&b.0))
        };
        let verdict = |ok: bool| if ok { "met".to_owned() } else { "**missed**".to_owned() };
        if let Some((r, size, conns)) = worst(Setup::JournalNone, Setup::Relay) {
            rows.push([
                "tether (`sync = none`) ≥ 0.7× the reference relay's throughput".into(),
                format!("worst cell {} × {conns}: {}", size_label(size), ratio(r)),
                verdict(r >= 0.7),
            ]);
        }
        if let Some((r, size, conns)) = worst(Setup::JournalTrim, Setup::Relay) {
            rows.push([
                "the same past `journal.max_session_frames` (trimming as it goes) ≥ 0.7× the reference relay".into(),
                format!("worst cell {} × {conns}: {}", size_label(size), ratio(r)),
                verdict(r >= 0.7),
            ]);
        }
        if let Some((r, size, conns)) = worst(Setup::JournalNone, Setup::Pass) {
            rows.push([
                "journaling (`sync = none`) ≥ 0.85× pass-through throughput".into(),
                format!("worst cell {} × {conns}: {}", size_label(size), ratio(r)),
                verdict(r >= 0.85),
            ]);
        }
        if let Some((r, size, conns)) = worst(Setup::JournalAlways, Setup::JournalNone) {
            rows.push([
                "`sync = always` ≥ 0.4× `sync = none` throughput".into(),
                format!("worst cell {} × {conns}: {}", size_label(size), ratio(r)),
                verdict(r >= 0.4),
            ]);
        }
        if !self.replay.is_empty() {
            let replay = median(self.replay.iter().map(|x| x.replay_rate));
            let size = self.replay[0].size;
            let live = self.med("saturation", size, 1, 0, Setup::JournalNone, |t| t.rate);
            rows.push([
                "replay ≥ 2,000,000 frames/s".into(),
                format!("{} frames/s", thousands(replay)),
                verdict(replay >= 2e6),
            ]);
            if live.is_finite() {
                rows.push([
                    "replay ≥ 1.5× live throughput".into(),
                    format!(
                        "{} (live: {} msg/s, {} × 1 conn, journal sync=none)",
                        ratio(replay / live),
                        thousands(live),
                        size_label(size)
                    ),
                    verdict(replay / live >= 1.5),
                ]);
            }
        }
        let lat = self.cells("latency");
        let load =
            if lat.iter().any(|c| c.2 == TARGET_LOAD) { Some(TARGET_LOAD) } else { lat.iter().map(|c| c.2).min() };
        if let Some(load) = load {
            let mut worst50 = (f64::NEG_INFINITY, 0, 0);
            let mut worst99 = (f64::NEG_INFINITY, 0, 0);
            for &(size, conns, l) in lat.iter().filter(|c| c.2 == load) {
                let m = |s, f: fn(&Trial) -> Option<f64>| {
                    self.med("latency", size, conns, l, s, |t| f(t).unwrap_or(f64::NAN))
                };
                let d50 = m(Setup::JournalNone, |t| t.p50_us) - m(Setup::Pass, |t| t.p50_us);
                let d99 = m(Setup::JournalNone, |t| t.p99_us) - m(Setup::Pass, |t| t.p99_us);
                if d50 > worst50.0 {
                    worst50 = (d50, size, conns);
                }
                if d99 > worst99.0 {
                    worst99 = (d99, size, conns);
                }
            }
            rows.push([
                format!("added p50 over pass-through at {load} % load ≤ 50 µs (`sync = none`)"),
                format!("worst cell {} × {}: {} µs", size_label(worst50.1), worst50.2, micros(worst50.0)),
                verdict(worst50.0 <= 50.0),
            ]);
            rows.push([
                format!("added p99 over pass-through at {load} % load ≤ 1 ms (`sync = none`)"),
                format!("worst cell {} × {}: {} µs", size_label(worst99.1), worst99.2, micros(worst99.0)),
                verdict(worst99.0 <= 1000.0),
            ]);
        }
        if !self.idle.is_empty() {
            let b = median(self.idle.iter().map(|x| x.per_session_bytes));
            rows.push([
                "idle memory ≤ 16 KiB per session, both sockets".into(),
                format!("{} bytes ({:.1} KiB)", thousands(b), b / 1024.0),
                verdict(b <= 16384.0),
            ]);
        }
        if !self.resume.is_empty() {
            let fresh = median(self.resume.iter().map(|x| x.fresh_p99_us));
            let resume = median(self.resume.iter().map(|x| x.resume_p99_us));
            rows.push([
                "resume p99 ≤ fresh-connection p99 + 2 ms".into(),
                format!("resume {} µs vs fresh {} µs + 2000", micros(resume), micros(fresh)),
                verdict(resume <= fresh + 2000.0),
            ]);
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n### Targets\n");
        let _ = writeln!(out, "| target | measured | verdict |");
        let _ = writeln!(out, "|---|---|---|");
        for [a, b, c] in rows {
            let _ = writeln!(out, "| {a} | {b} | {c} |");
        }
    }
}

/// `64 B`, `512 B`, `16 KiB`.
pub fn size_label(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}
