//! What one `tether-bench sustained` trial measured, and the Markdown
//! tables of medians over rounds.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::journal_disk::{DirSize, Io, RocksLog};
use crate::stats::{fixed, median, ratio, thousands};

/// The load and configuration of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    /// The reference relay: no journal.
    Relay,
    /// tether, `journal.sync = "none"`, nothing trimmed.
    None,
    /// tether past `journal.max_session_frames` all along.
    Trim,
    /// tether with sessions that end and expire (`journal.retention`).
    Expire,
}

impl Kind {
    /// Parses a `--setups` name.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "relay" => Kind::Relay,
            "none" => Kind::None,
            "trim" => Kind::Trim,
            "expire" => Kind::Expire,
            _ => return None,
        })
    }

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Relay => "relay",
            Kind::None => "none",
            Kind::Trim => "trim",
            Kind::Expire => "expire",
        }
    }
}

/// One trial's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The setup.
    pub kind: Kind,
    /// Which `--tether-bin` (0 for the relay).
    pub bin: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Sessions at once.
    pub conns: usize,
    /// Round number, from 0.
    pub round: usize,
    /// Seconds the backend sends.
    pub seconds: f64,
    /// Seconds of the first and last windows.
    pub window: f64,
    /// `(seconds since go, messages delivered so far)`, about once a second.
    pub samples: Vec<(f64, u64)>,
    /// tether's RSS and its journal's size, about once a second.
    pub points: Vec<crate::soak::Point>,
    /// Data messages delivered over the whole run.
    pub delivered: u64,
    /// Sessions the clients opened.
    pub sessions: u64,
    /// Delivered msg/s over the first `window` seconds.
    pub first_rate: f64,
    /// Delivered msg/s over the last `window` seconds of sending.
    pub last_rate: f64,
    /// tether's (or the relay's) CPU per delivered message, µs.
    pub cpu_us: f64,
    /// Its storage writes over the run.
    pub io: Io,
    /// RocksDB's event log at the end (tether only).
    pub log: Option<RocksLog>,
    /// Peak RSS (VmHWM) at the end, KiB.
    pub hwm_kib: u64,
    /// The journal directory at the end (tether only).
    pub disk: Option<DirSize>,
    /// Payload bytes the journal retains at the end, from the settings.
    pub retained: Option<u64>,
    /// Other processes' share of the CPUs during the run, %.
    pub foreign_pct: f64,
    /// Messages missing.
    pub gaps: u64,
    /// Messages twice or out of order.
    pub dups: u64,
    /// Sessions that did not reach their end marker.
    pub incomplete: u64,
    /// The first delivery error, and every measurement that failed.
    pub errors: Vec<String>,
}

impl Run {
    /// Payload bytes delivered.
    pub fn payload(&self) -> f64 {
        (self.delivered * self.size as u64) as f64
    }

    /// Nothing missing, nothing twice, every measurement read.
    pub fn ok(&self) -> bool {
        self.gaps == 0 && self.dups == 0 && self.incomplete == 0 && self.errors.is_empty()
    }

    fn per_payload(&self, bytes: Option<u64>) -> f64 {
        bytes.map(|b| b as f64 / self.payload().max(1.0)).unwrap_or(f64::NAN)
    }

    fn tether(&self) -> bool {
        self.kind != Kind::Relay
    }
}

/// Every trial, and the labels of the tether binaries.
pub struct Table<'a> {
    /// Every trial.
    pub runs: &'a [Run],
    /// `T1`, `T2`...: one per `--tether-bin`.
    pub bins: &'a [String],
}

impl Table<'_> {
    /// The relay's last-window rate in the trial's round and cell.
    fn relay_rate(&self, r: &Run) -> f64 {
        self.runs
            .iter()
            .find(|x| x.kind == Kind::Relay && x.size == r.size && x.conns == r.conns && x.round == r.round)
            .map(|x| x.last_rate)
            .unwrap_or(f64::NAN)
    }

    fn cells(&self) -> BTreeSet<(usize, usize, Kind, usize)> {
        self.runs.iter().map(|r| (r.size, r.conns, r.kind, r.bin)).collect()
    }

    fn med(&self, cell: (usize, usize, Kind, usize), f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().filter(|r| (r.size, r.conns, r.kind, r.bin) == cell).map(f))
    }

    /// The setup's name in tables, with its binary's label if there are several.
    pub fn label(&self, kind: Kind, bin: usize) -> String {
        match kind {
            Kind::Relay => "relay".into(),
            _ if self.bins.len() > 1 => format!("{} ({})", kind.name(), self.bins[bin]),
            _ => kind.name().into(),
        }
    }

    /// Both tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let w = self.runs.first().map(|r| r.window).unwrap_or(0.0);
        let _ = writeln!(out, "\n### Throughput, CPU and memory\n");
        let _ = writeln!(
            out,
            "| payload × sessions | setup | msg/s, last {w:.0} s | MB/s, last {w:.0} s | last ÷ first {w:.0} s | ÷ relay | CPU µs/msg | peak RSS MiB | messages | sessions | missing / dup / incomplete | others' CPU % |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for cell in self.cells() {
            let (size, conns, kind, bin) = cell;
            let m = |f: &dyn Fn(&Run) -> f64| self.med(cell, f);
            let rel = if kind == Kind::Relay { f64::NAN } else { m(&|r| r.last_rate / self.relay_rate(r)) };
            let sum = |f: &dyn Fn(&Run) -> u64| -> u64 {
                self.runs.iter().filter(|r| (r.size, r.conns, r.kind, r.bin) == cell).map(f).sum()
            };
            let _ = writeln!(
                out,
                "| {size} B × {conns} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
                self.label(kind, bin),
                thousands(m(&|r| r.last_rate)),
                fixed(m(&|r| r.last_rate * r.size as f64 / 1e6), 1),
                fixed(m(&|r| r.last_rate / r.first_rate), 2),
                ratio(rel),
                fixed(m(&|r| r.cpu_us), 2),
                fixed(m(&|r| r.hwm_kib as f64 / 1024.0), 0),
                thousands(m(&|r| r.delivered as f64)),
                thousands(m(&|r| r.sessions as f64)),
                sum(&|r| r.gaps),
                sum(&|r| r.dups),
                sum(&|r| r.incomplete),
                fixed(m(&|r| r.foreign_pct), 0),
            );
        }
        let _ = writeln!(out, "\n### Disk: bytes per payload byte, and the journal at the end\n");
        let _ = writeln!(
            out,
            "| payload × sessions | setup | payload MB | written ÷ payload | cancelled ÷ payload | net ÷ payload | flushed ÷ payload | compacted ÷ payload | rest ÷ payload | flushes / compactions | journal MiB (du) | retained payload MB | journal ÷ retained |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for cell in self.cells() {
            let (size, conns, kind, bin) = cell;
            let m = |f: &dyn Fn(&Run) -> f64| self.med(cell, f);
            let t = |f: &dyn Fn(&Run) -> f64| if kind == Kind::Relay { f64::NAN } else { m(f) };
            let log = |f: fn(&RocksLog) -> u64| move |r: &Run| r.per_payload(r.log.as_ref().map(f));
            let _ = writeln!(
                out,
                "| {size} B × {conns} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                self.label(kind, bin),
                thousands(m(&|r| r.payload() / 1e6)),
                fixed(m(&|r| r.per_payload(Some(r.io.write_bytes))), 2),
                fixed(m(&|r| r.per_payload(Some(r.io.cancelled))), 2),
                fixed(m(&|r| r.per_payload(Some(r.io.write_bytes.saturating_sub(r.io.cancelled)))), 2),
                fixed(t(&log(|l| l.flushed)), 2),
                fixed(t(&log(|l| l.compaction_tables)), 2),
                fixed(
                    t(&|r| r
                        .per_payload(r.log.map(|l| r.io.write_bytes.saturating_sub(l.flushed + l.compaction_tables)))),
                    2
                ),
                thousands(t(&|r| r.log.map_or(f64::NAN, |l| l.flushes as f64))),
                thousands(t(&|r| r.log.map_or(f64::NAN, |l| l.compactions as f64))),
                fixed(t(&|r| r.disk.map_or(f64::NAN, |d| d.allocated as f64 / (1 << 20) as f64)), 0),
                fixed(t(&|r| r.retained.map_or(f64::NAN, |b| b as f64 / 1e6)), 0),
                fixed(
                    t(&|r| match (r.disk, r.retained) {
                        (Some(d), Some(b)) if r.tether() => d.allocated as f64 / b.max(1) as f64,
                        _ => f64::NAN,
                    }),
                    2
                ),
            );
        }
        for r in self.runs.iter().filter(|r| !r.errors.is_empty()) {
            let _ = writeln!(
                out,
                "\n**Failed:** {} {} B × {}, round {}: {}",
                self.label(r.kind, r.bin),
                r.size,
                r.conns,
                r.round + 1,
                r.errors.join("; ")
            );
        }
        out
    }
}
