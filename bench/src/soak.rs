//! The soak side of `tether-bench sustained` (issue 23: "throughput flat,
//! journal size bounded by the retention settings, RSS flat"): a thread
//! that samples tether's RSS and its journal directory once a second, and
//! the per-trial curve table built from those samples and the clients'
//! delivered counts.
//!
//! The sampler is a plain thread, not a task: walking the journal directory
//! is blocking file-system work, and it must not delay the clients' tasks.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;

use crate::stats::{fixed, thousands};
use crate::sys::{self, now_ns};

/// Allocated bytes (`du`) under a journal directory, by kind of file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Journal {
    /// The frame log: files under `framelog/` (layout 3's `*.frames`).
    pub framelog: u64,
    /// RocksDB's table files (`*.sst`).
    pub sst: u64,
    /// RocksDB's write-ahead logs (`*.log`).
    pub wal: u64,
    /// Everything else (MANIFEST, LOG, OPTIONS...).
    pub other: u64,
}

impl Journal {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.framelog + self.sst + self.wal + self.other
    }
}

/// One sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Seconds since go.
    pub t: f64,
    /// tether's (or the relay's) `VmRSS`, KiB (0 if unreadable).
    pub rss_kib: u64,
    /// The journal directory (`None` for the relay, or if unreadable).
    pub journal: Option<Journal>,
}

/// Walks `dir`; `None` if it cannot be listed. Files RocksDB deletes
/// during the walk are skipped.
pub fn journal(dir: &Path) -> Option<Journal> {
    let mut out = Journal::default();
    walk(dir, false, &mut out).then_some(out)
}

fn walk(dir: &Path, in_framelog: bool, out: &mut Journal) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if meta.is_dir() {
            walk(&entry.path(), in_framelog || name == "framelog", out);
            continue;
        }
        let bytes = meta.blocks() * 512;
        let slot = if in_framelog || name.ends_with(".frames") {
            &mut out.framelog
        } else if name.ends_with(".sst") {
            &mut out.sst
        } else if name.ends_with(".log") {
            &mut out.wal
        } else {
            &mut out.other
        };
        *slot += bytes;
    }
    true
}

/// Samples a process and its journal directory once a second from its own
/// thread, until dropped or finished.
pub struct Sampler {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Vec<Point>>,
}

impl Sampler {
    /// Starts sampling `pid` (and `dir`) at every whole second after `go_ns`
    /// (a `CLOCK_MONOTONIC` time from [`now_ns`]).
    pub fn start(pid: u32, dir: Option<PathBuf>, go_ns: u64) -> std::io::Result<Sampler> {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("soak-sampler".into()).spawn(move || {
            let sample =
                |t: f64| Point { t, rss_kib: sys::status_kib(pid, "VmRSS"), journal: dir.as_deref().and_then(journal) };
            let mut points = vec![sample(0.0)];
            for n in 1u64.. {
                let at = go_ns + n * 1_000_000_000;
                let wait = Duration::from_nanos(at.saturating_sub(now_ns()));
                if rx.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout) {
                    break;
                }
                points.push(sample(now_ns().saturating_sub(go_ns) as f64 / 1e9));
            }
            points
        })?;
        Ok(Sampler { stop, thread })
    }

    /// Takes one last sample now and returns them all.
    pub fn finish(self) -> Vec<Point> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

/// Messages per second between `a` and `b` seconds after go, the counts
/// interpolated between samples `(seconds since go, delivered so far)`.
pub fn rate_between(samples: &[(f64, u64)], a: f64, b: f64) -> f64 {
    let at = |t: f64| -> f64 {
        let i = samples.partition_point(|s| s.0 < t);
        match (i.checked_sub(1).and_then(|j| samples.get(j)), samples.get(i)) {
            (Some(p), Some(n)) if n.0 > p.0 => p.1 as f64 + (n.1 - p.1) as f64 * (t - p.0) / (n.0 - p.0),
            (_, Some(n)) => n.1 as f64,
            (Some(p), None) => p.1 as f64,
            (None, None) => f64::NAN,
        }
    };
    (at(b) - at(a)) / (b - a)
}

/// One row of a curve: an interval of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Seconds since go: `[from, to)`.
    pub from: f64,
    /// End of the interval.
    pub to: f64,
    /// Delivered msg/s over the interval.
    pub rate: f64,
    /// `VmRSS` at the last sample of the interval, KiB.
    pub rss_kib: u64,
    /// The journal at the last sample of the interval.
    pub journal: Option<Journal>,
    /// The largest journal sampled during the interval, bytes (files come
    /// and go, so the last sample alone can miss the peaks).
    pub journal_max: Option<u64>,
}

/// The intervals of `every` seconds over `seconds` of sending (the last one
/// shorter if `every` does not divide it).
pub fn curve(delivered: &[(f64, u64)], points: &[Point], seconds: f64, every: f64) -> Vec<Row> {
    let every = every.max(1.0);
    let n = (seconds / every).ceil().max(1.0) as usize;
    (0..n)
        .map(|i| {
            let (from, to) = (i as f64 * every, ((i + 1) as f64 * every).min(seconds));
            // The last sample taken before the interval's end (+ 0.5 s, as
            // samples land a little after each whole second).
            let last = points.iter().take_while(|p| p.t <= to + 0.5).last();
            let during = points.iter().filter(|p| p.t > from + 0.5 && p.t <= to + 0.5);
            let journal_max = during.filter_map(|p| p.journal.map(|j| j.total())).max();
            Row {
                from,
                to,
                rate: rate_between(delivered, from, to),
                rss_kib: last.map_or(0, |p| p.rss_kib),
                journal: last.and_then(|p| p.journal),
                journal_max,
            }
        })
        .collect()
}

/// The curve as a Markdown table, with a closing "last ÷ first" row.
pub fn markdown(rows: &[Row], title: &str) -> String {
    let mib = |b: u64| fixed(b as f64 / (1 << 20) as f64, 0);
    let j = |r: &Row, f: fn(&Journal) -> u64| r.journal.as_ref().map_or("–".to_owned(), |x| mib(f(x)));
    let mut out = format!("\n#### Curve: {title}\n\n");
    out.push_str(
        "| seconds | delivered msg/s | RSS MiB | journal MiB (du) | max in interval | framelog MiB | SST MiB | WAL MiB | other MiB |\n",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {:.0}–{:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.from,
            r.to,
            thousands(r.rate),
            fixed(r.rss_kib as f64 / 1024.0, 0),
            j(r, Journal::total),
            r.journal_max.map_or("–".to_owned(), mib),
            j(r, |x| x.framelog),
            j(r, |x| x.sst),
            j(r, |x| x.wal),
            j(r, |x| x.other),
        );
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
        let q = |x: f64, y: f64| fixed(y / x, 2);
        let jq = |f: fn(&Journal) -> u64| match (a.journal, b.journal) {
            (Some(x), Some(y)) => q(f(&x) as f64, f(&y) as f64),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| **last ÷ first** | **{}** | **{}** | **{}** | **{}** | {} | {} | {} | {} |",
            q(a.rate, b.rate),
            q(a.rss_kib as f64, b.rss_kib as f64),
            jq(Journal::total),
            match (a.journal_max, b.journal_max) {
                (Some(x), Some(y)) => q(x as f64, y as f64),
                _ => "–".to_owned(),
            },
            jq(|x| x.framelog),
            jq(|x| x.sst),
            jq(|x| x.wal),
            jq(|x| x.other),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_interpolate_between_samples() {
        let s = [(0.0, 0), (1.0, 100), (2.0, 300), (3.0, 600)];
        assert_eq!(rate_between(&s, 0.0, 1.0), 100.0);
        assert_eq!(rate_between(&s, 1.5, 3.0), (600.0 - 200.0) / 1.5);
    }

    #[test]
    fn curve_rows_take_the_last_sample_of_each_interval() {
        let delivered: Vec<(f64, u64)> = (0..=5).map(|t| (t as f64, t * 100)).collect();
        let j = |n: u64| Some(Journal { framelog: n, sst: 0, wal: 0, other: 0 });
        let points: Vec<Point> =
            (0..=5).map(|t| Point { t: t as f64 + 0.01, rss_kib: 1000 + t, journal: j(t * 10) }).collect();
        let rows = curve(&delivered, &points, 5.0, 2.0);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].from, rows[0].to, rows[0].rate, rows[0].rss_kib), (0.0, 2.0, 100.0, 1002));
        assert_eq!((rows[2].from, rows[2].to, rows[2].rss_kib, rows[2].journal), (4.0, 5.0, 1005, j(50)));
        let md = markdown(&rows, "x");
        assert_eq!((rows[0].journal_max, rows[1].journal_max, rows[2].journal_max), (Some(20), Some(40), Some(50)));
        assert!(md.contains("| 4–5 | 100 | 1 | 0 | 0 | 0 | 0 | 0 | 0 |"), "{md}");
        assert!(md.contains("| **last ÷ first** | **1.00** | **1.00** | **2.50** | **2.50** |"), "{md}");
    }

    #[test]
    fn journal_files_are_told_apart_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("framelog")).expect("mkdir");
        for (name, len) in [("framelog/00001.frames", 8192), ("000009.sst", 4096), ("000010.log", 4096), ("LOG", 4096)]
        {
            std::fs::write(dir.path().join(name), vec![7u8; len]).expect("write");
        }
        let j = journal(dir.path()).expect("readable");
        assert!(j.framelog >= 8192 && j.sst >= 4096 && j.wal >= 4096 && j.other >= 4096, "{j:?}");
        assert_eq!(journal(&dir.path().join("missing")), None);
    }
}
