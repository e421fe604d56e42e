//! `tether-bench sustained`: what a stream costs when it runs for a minute,
//! not 1.5 seconds (issue 23): delivered rate over the last seconds and how
//! it moved since the first, CPU per message, bytes written per payload
//! byte and where they went (RocksDB's flushes and compactions), peak RSS,
//! and the journal's size at the end against the payload it retains.
//!
//! Each round runs, per payload size × sessions, the setups in order:
//! `relay` (the reference relay), then each tether setup once per
//! `--tether-bin` (their order alternates between rounds). Every session's
//! backend streams flat out for `--seconds` (the flow window of `full`'s
//! saturation trials), the clients read as fast as they can and check every
//! message (index and seq, none missing, none twice).
//! - `none`: the harness's usual limits, so nothing is trimmed.
//! - `trim`: `journal.max_session_frames` is `--trim-frames`, by default a
//!   tenth of what a session delivered in the first `none` trial (so the
//!   journal retains about a tenth of the stream), at least twice the flow
//!   window (a client is never behind retention).
//! - `expire`: each client closes its session (code 1000, which ends it)
//!   every `--session-secs` and opens a new one (the first sessions are
//!   staggered so that sessions end all the time), and `journal.retention`
//!   is as long, so ended sessions are purged during the run.
//!
//! With `--rate`, the backends send at that fixed total rate instead of
//! flat out (the soak of issue 23: half the saturation rate for ten
//! minutes), and every trial also gets a curve ([`crate::soak`]): per
//! `--curve-secs` interval, the delivered rate, tether's RSS and the
//! journal directory's size.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;

use crate::backend::Spec;
use crate::churn::{Cycle, Seen};
use crate::cli::{data_root, parse_env};
use crate::client::{Check, Watch};
use crate::fleet::{Fleet, Start};
use crate::journal_disk::{self, Io};
use crate::procs::{Launcher, Setup, TetherProc};
use crate::report::DISTURBED_PCT;
use crate::soak::{self, rate_between, Sampler};
use crate::stats::{fixed, thousands};
use crate::stream::{flow_window, STALL};
use crate::sustained_table::{Kind, Run, Table};
use crate::sys::{self, now_ns};

/// `tether-bench sustained` options.
#[derive(Debug, Args)]
pub struct SustainedOpts {
    /// Seconds every backend connection streams.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Rates are over the last (and first) this many seconds (default 30,
    /// or half of --seconds if that is shorter).
    #[arg(long)]
    pub window: Option<u64>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [512])]
    pub sizes: Vec<usize>,
    /// Sessions streaming at once.
    #[arg(long, value_delimiter = ',', default_values_t = [100])]
    pub conns: Vec<usize>,
    /// Setups: relay, none, trim, expire.
    #[arg(long, value_delimiter = ',', default_values_t = ["relay".to_owned(), "none".into(), "trim".into(), "expire".into()])]
    pub setups: Vec<String>,
    /// Rounds.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// `trim`: `journal.max_session_frames` (default: see above).
    #[arg(long)]
    pub trim_frames: Option<u64>,
    /// `expire`: how long each session streams before its client ends it,
    /// and `journal.retention` (default: an eighth of --seconds, 0.5 to 5).
    #[arg(long)]
    pub session_secs: Option<f64>,
    /// tether binaries to compare (comma-separated or repeated), each run
    /// in every round; default: the tether library inside tether-bench.
    #[arg(long, value_delimiter = ',')]
    pub tether_bin: Vec<PathBuf>,
    /// Where the journals go (default /var/tmp/tether-bench-<pid>; needs a real disk).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Extra tether setting for every instance, e.g. TETHER_JOURNAL_MEMTABLE_BYTES=16777216 (repeatable).
    #[arg(long, value_parser = parse_env)]
    pub tether_env: Vec<(String, String)>,
    /// Before each trial, wait up to this many seconds for a quiet machine
    /// (other processes under 10 % of the CPUs for 3 s).
    #[arg(long, default_value_t = 0)]
    pub wait_quiet: u64,
    /// Also write every trial's raw figures (with the per-second samples) to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Total messages per second over all sessions, split evenly (default: flat out).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds per row of each trial's curve table (rate, RSS, journal size).
    #[arg(long, default_value_t = 60)]
    pub curve_secs: u64,
}

/// What every trial of one invocation shares.
struct Plan {
    seconds: u64,
    window: u64,
    session_ms: u64,
    kinds: Vec<Kind>,
    trim_frames: Option<u64>,
    /// Total msg/s over all sessions; 0: flat out.
    rate: f64,
}

/// Runs the rounds, prints the report; Ok(false) if a message went missing
/// or twice, or a measurement could not be read.
pub fn main(o: SustainedOpts) -> anyhow::Result<bool> {
    if o.seconds < 2 {
        bail!("--seconds must be at least 2");
    }
    let window = o.window.unwrap_or(30).min(o.seconds / 2).max(1);
    let kinds = o
        .setups
        .iter()
        .map(|s| Kind::parse(s).ok_or_else(|| anyhow!("unknown setup {s:?} (relay, none, trim, expire)")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let session_secs = o.session_secs.unwrap_or((o.seconds as f64 / 8.0).clamp(0.5, 5.0));
    let plan = Plan {
        seconds: o.seconds,
        window,
        session_ms: (session_secs * 1000.0).round().max(100.0) as u64,
        kinds,
        trim_frames: o.trim_frames,
        rate: o.rate.unwrap_or(0.0),
    };
    if !(plan.rate >= 0.0 && plan.rate.is_finite()) {
        bail!("--rate must be a positive number of messages per second");
    }
    let nofile = sys::raise_nofile();
    let root = data_root(o.data_root.clone());
    let bins: Vec<Option<PathBuf>> =
        if o.tether_bin.is_empty() { vec![None] } else { o.tether_bin.iter().cloned().map(Some).collect() };
    let launchers = bins
        .iter()
        .enumerate()
        .map(|(i, b)| Ok(Launcher::new(b.clone(), root.join(format!("bin{i}")))?.with_env(o.tether_env.clone())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let machine = sys::machine(nofile);
    eprintln!("tether-bench: {machine}");
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (runs, trims) = rt.block_on(rounds(&o, &plan, &launchers));
    let _ = std::fs::remove_dir_all(&root);

    let command = std::iter::once("tether-bench".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
    println!("## tether-bench sustained\n");
    println!("- Command: `{}` ({:.0} s)", command.join(" "), started.elapsed().as_secs_f64());
    println!("- Machine: {machine}");
    let labels: Vec<String> = launchers.iter().enumerate().map(|(i, _)| format!("T{}", i + 1)).collect();
    for (label, l) in labels.iter().zip(&launchers) {
        println!("- tether {label}: {}", l.tether_description());
    }
    if !o.tether_env.is_empty() {
        let env: Vec<String> = o.tether_env.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
        println!("- Extra tether settings: {}", env.join(", "));
    }
    let load = if plan.rate > 0.0 {
        format!(
            "sends {} msg/s in all, split evenly over the sessions (each on its own schedule from a random phase, not flow-controlled)",
            thousands(plan.rate)
        )
    } else {
        "streams flat out (at most 32 MiB or 65,536 messages unread over all sessions)".to_owned()
    };
    println!(
        "- Load: every session's backend {load} for {} s; clients read as fast as they can. {} round(s); figures are medians over rounds.",
        plan.seconds, o.runs
    );
    println!("- Setups (tether: prefix stamps, `journal.sync = \"none\"`, `max_session_bytes` and `disk_budget_bytes` 1 TiB, `max_frame_age` 1 h):");
    println!("  - `relay`: the reference relay (no journal).");
    println!("  - `none`: `max_session_frames` 10⁹: nothing is trimmed; the journal retains every message.");
    for (size, conns, frames) in &trims {
        println!(
            "  - `trim` ({size} B × {conns}): `max_session_frames` {}, trimmed all along; retained payload counted as min(delivered, limit) per session (a session holds up to an eighth more between trims).",
            thousands(*frames as f64)
        );
    }
    println!(
        "  - `expire`: each client ends its session (close 1000) every {:.1} s and opens a new one, first sessions staggered; `journal.retention` {} ms, so ended sessions are purged during the run; retained payload = sessions that ended less than the retention before the end (the janitor runs once a second, so up to 1 s more may still be on disk).",
        plan.session_ms as f64 / 1000.0,
        plan.session_ms
    );
    println!("- Columns: msg/s and MB/s (payload) delivered over the last {w} s of sending (from the clients' counts, sampled once a second); last ÷ first: that rate over the rate of the first {w} s; ÷ relay: over the relay's in the same round; CPU µs/msg: utime + stime of tether (or the relay) from `/proc/PID/stat` over the run ÷ messages; peak RSS: VmHWM at the end; written, cancelled: `write_bytes`, `cancelled_write_bytes` of `/proc/PID/io` over the run, net = written − cancelled; flushed: `file_size` of the `table_file_creation` events of flush jobs in RocksDB's `LOG`; compacted: `file_size` of the `table_file_creation` events of compaction jobs (this counts the finished output files of a compaction still running at the end, which `total_output_size` of `compaction_finished` does not); rest = written − flushed − compacted (the WAL, MANIFEST, LOG, and the unfinished output file of a compaction still running); journal: blocks allocated under the journal directory at the end (`du`; RocksDB preallocates WAL files); others' CPU: what processes other than tether, the backend and the clients used, % of all CPUs.", w = plan.window);
    print!("{}", Table { runs: &runs, bins: &labels }.markdown());
    println!("\n### Curves\n\nPer {c} s interval: delivered msg/s (from the clients' counts); RSS: `VmRSS` of tether (or the relay) from `/proc/PID/status`, and journal: blocks allocated under the journal directory (`du`), both at the last once-a-second sample of the interval; max in interval: the largest journal sampled during it; framelog: files under `framelog/`; SST: `*.sst`; WAL: `*.log`; other: MANIFEST, LOG, OPTIONS... last ÷ first: the last interval's figure over the first's.", c = o.curve_secs);
    for r in &runs {
        let title = format!(
            "{} {} B × {}, round {}",
            Table { runs: &runs, bins: &labels }.label(r.kind, r.bin),
            r.size,
            r.conns,
            r.round + 1
        );
        print!("{}", soak::markdown(&soak::curve(&r.samples, &r.points, r.seconds, o.curve_secs as f64), &title));
    }
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_vec_pretty(&runs)?)?;
    }
    let ok = runs.iter().all(Run::ok) && runs.len() == expected(&o, &plan, launchers.len());
    eprintln!(
        "tether-bench sustained: {} in {:.0} s",
        if ok { "PASS" } else { "FAIL" },
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

fn expected(o: &SustainedOpts, plan: &Plan, bins: usize) -> usize {
    let per_round: usize = plan.kinds.iter().map(|k| if *k == Kind::Relay { 1 } else { bins }).sum();
    per_round * o.runs * o.sizes.len() * o.conns.len()
}

/// Every trial; also the trim limit used per cell.
async fn rounds(o: &SustainedOpts, plan: &Plan, launchers: &[Launcher]) -> (Vec<Run>, Vec<(usize, usize, u64)>) {
    let mut runs: Vec<Run> = Vec::new();
    let mut trims = Vec::new();
    for &size in &o.sizes {
        for &conns in &o.conns {
            let mut trim = plan.trim_frames;
            for round in 0..o.runs {
                for &kind in &plan.kinds {
                    let mut order: Vec<usize> = (0..launchers.len()).collect();
                    if round % 2 == 1 {
                        order.reverse();
                    }
                    if kind == Kind::Relay {
                        order.truncate(1);
                    }
                    if kind == Kind::Trim && trim.is_none() {
                        trim = Some(trim_limit(&runs, size, conns));
                        trims.push((size, conns, trim.unwrap_or(0)));
                    }
                    for bin in order {
                        if o.wait_quiet > 0 {
                            sys::wait_for_quiet(DISTURBED_PCT, Duration::from_secs(o.wait_quiet)).await;
                        }
                        let cell = Cell { kind, bin, size, conns, round, trim_frames: trim.unwrap_or(0) };
                        let clock = sys::unix_secs() % 86_400;
                        let at = format!("{:02}:{:02}:{:02}", clock / 3600, clock / 60 % 60, clock % 60);
                        match trial(plan, &launchers[bin], cell).await {
                            Ok(r) => {
                                eprintln!("{at} {}", progress(&r));
                                runs.push(r);
                            }
                            Err(e) => eprintln!(
                                "{at} [{} {size} B × {conns}, round {}] FAILED: {e:#}",
                                kind.name(),
                                round + 1
                            ),
                        }
                    }
                }
            }
            if plan.trim_frames.is_some() && plan.kinds.contains(&Kind::Trim) {
                trims.push((size, conns, plan.trim_frames.unwrap_or(0)));
            }
        }
    }
    (runs, trims)
}

/// A tenth of what a session delivered in the first `none` trial of the
/// cell (or a thirtieth of the relay's, tether's being about a third of
/// it), in whole 64-frame segments, at least twice the flow window.
fn trim_limit(runs: &[Run], size: usize, conns: usize) -> u64 {
    let of = |k: Kind| runs.iter().find(|r| r.kind == k && r.size == size && r.conns == conns);
    let per_session = match (of(Kind::None), of(Kind::Relay)) {
        (Some(r), _) => r.delivered / conns as u64 / 10,
        (None, Some(r)) => r.delivered / conns as u64 / 30,
        (None, None) => 0,
    };
    let floor = (2 * flow_window(size, conns)).div_ceil(64) * 64;
    (per_session / 64 * 64).max(floor)
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    kind: Kind,
    bin: usize,
    size: usize,
    conns: usize,
    round: usize,
    trim_frames: u64,
}

fn progress(r: &Run) -> String {
    let curve: Vec<String> = r
        .samples
        .windows(2)
        .step_by(5)
        .map(|w| thousands((w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0).max(1e-3)))
        .collect();
    format!(
        "[{} T{} {} B × {}, round {}] last {:.0} s {} msg/s (÷ first {}), {} µs/msg, written {} MB, RSS {} MiB, {} missing, {} dup, {} incomplete{}; msg/s every 5 s: {}",
        r.kind.name(),
        r.bin + 1,
        r.size,
        r.conns,
        r.round + 1,
        r.window,
        thousands(r.last_rate),
        fixed(r.last_rate / r.first_rate, 2),
        fixed(r.cpu_us, 2),
        thousands(r.io.write_bytes as f64 / 1e6),
        r.hwm_kib / 1024,
        r.gaps,
        r.dups,
        r.incomplete,
        if r.errors.is_empty() { String::new() } else { format!(" ERRORS: {}", r.errors.join("; ")) },
        curve.join(" ")
    )
}

async fn trial(plan: &Plan, l: &Launcher, c: Cell) -> anyhow::Result<Run> {
    let backend = l.backend()?;
    let url = backend.url();
    let retention = format!("{}ms", plan.session_ms);
    let proc: TetherProc = match c.kind {
        Kind::Relay => l.relay(&url)?,
        Kind::None => l.tether(Setup::JournalNone, &url, &[])?,
        Kind::Trim => {
            l.tether(Setup::JournalNone, &url, &[("TETHER_JOURNAL_MAX_SESSION_FRAMES", c.trim_frames.to_string())])?
        }
        Kind::Expire => l.tether(Setup::JournalNone, &url, &[("TETHER_JOURNAL_RETENTION", retention)])?,
    };
    let url = proc.url("/stream");
    let window = flow_window(c.size, c.conns);
    let rate = plan.rate / c.conns.max(1) as f64;
    let spec = Spec { size: c.size, rate, ms: plan.seconds * 1000, count: 0, tick_us: 1000, window };
    let check = Check {
        stamped: c.kind != Kind::Relay,
        record_from: u64::MAX,
        first_seq: 1,
        first_idx: 0,
        ack_every: window / 4,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(plan.seconds + 300);
    let watch = Watch::default();
    // The other setups connect first: their sessions live the whole run.
    let fleet = match c.kind {
        Kind::Expire => None,
        _ => Some(Fleet::connect(&url, c.conns, false).await?),
    };
    let me = std::process::id();
    let mut errors = Vec::new();
    let io_before = journal_disk::io(proc.pid).unwrap_or_else(|e| {
        errors.push(format!("{e:#}"));
        Io::default()
    });
    let before = (sys::usage(proc.pid), sys::usage(backend.proc.pid), sys::usage(me), sys::machine_busy_ns());
    let t_go = now_ns();
    let send_end = t_go + plan.seconds * 1_000_000_000;
    watch.progress.store(t_go, std::sync::atomic::Ordering::Relaxed);
    let sampler = Sampler::start(proc.pid, proc.dir().map(Into::into), t_go)?;
    let mut running: Vec<tokio::task::JoinHandle<Seen>> = Vec::new();
    let mut fleet_run = None;
    match fleet {
        Some(f) => fleet_run = Some(f.start(Start { go: spec.go(), check, deadline, watch: watch.clone() })),
        None => {
            for i in 0..c.conns {
                // Staggered: client i's first session is (i + 1) / N of a full one.
                let first = (plan.session_ms * (i as u64 + 1) / c.conns as u64).max(100);
                let cycle =
                    Cycle { url: url.clone(), first_ms: first, session_ms: plan.session_ms, send_end, spec, check };
                running.push(tokio::spawn(cycle.run(deadline, watch.clone())));
            }
        }
    }

    // Sample the clients' count once a second until every client is done.
    let mut samples = vec![(0.0, 0u64)];
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        let finished = match &mut fleet_run {
            Some(f) => f.is_finished(),
            None => running.iter().all(|h| h.is_finished()),
        };
        if finished {
            let now = now_ns();
            samples.push(((now - t_go) as f64 / 1e9, watch.delivered.load(std::sync::atomic::Ordering::Relaxed)));
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                let now = now_ns();
                samples.push(((now - t_go) as f64 / 1e9, watch.delivered.load(std::sync::atomic::Ordering::Relaxed)));
                let quiet = now.saturating_sub(watch.progress.load(std::sync::atomic::Ordering::Relaxed));
                if now > send_end && quiet > STALL.as_nanos() as u64 {
                    errors.push(format!("stalled: nothing delivered for {} s", STALL.as_secs()));
                    watch.cancel.cancel();
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let mut seen = Seen::default();
    match fleet_run {
        Some(f) => {
            let end = now_ns();
            for t in f.finish().await? {
                seen.add(&t, end);
            }
        }
        None => {
            for h in running {
                seen.merge(h.await?);
            }
        }
    }
    let points = sampler.finish();
    let measured_at = now_ns();
    let after = (sys::usage(proc.pid), sys::usage(backend.proc.pid), sys::usage(me), sys::machine_busy_ns());
    let io = match journal_disk::io(proc.pid) {
        Ok(now) => now.since(&io_before),
        Err(e) => {
            errors.push(format!("{e:#}"));
            Io::default()
        }
    };
    let hwm_kib = sys::status_kib(proc.pid, "VmHWM");
    if hwm_kib == 0 {
        errors.push(format!("no VmHWM in /proc/{}/status", proc.pid));
    }
    let (log, disk) = match proc.dir() {
        None if c.kind == Kind::Relay => (None, None),
        None => {
            errors.push("tether has no journal directory".into());
            (None, None)
        }
        Some(dir) => {
            let log = journal_disk::rocks_log(dir).map_err(|e| errors.push(format!("{e:#}"))).ok();
            let disk = journal_disk::dir_size(dir).map_err(|e| errors.push(format!("{e:#}"))).ok();
            (log, disk)
        }
    };
    drop(proc);
    drop(backend);
    if let Some(e) = &seen.error {
        errors.insert(0, format!("first delivery error: {e}"));
    }
    let size = c.size as u64;
    let retained = match c.kind {
        Kind::Relay => None,
        Kind::None => Some(seen.delivered * size),
        Kind::Trim => Some(seen.ends.iter().map(|&(_, n)| n.min(c.trim_frames)).sum::<u64>() * size),
        Kind::Expire => {
            let cutoff = measured_at.saturating_sub(plan.session_ms * 1_000_000);
            Some(seen.ends.iter().filter(|&&(end, _)| end > cutoff).map(|&(_, n)| n).sum::<u64>() * size)
        }
    };
    let used = |i: usize| match i {
        0 => after.0.since(&before.0).cpu_ns,
        1 => after.1.since(&before.1).cpu_ns,
        _ => after.2.since(&before.2).cpu_ns,
    };
    let wall = (measured_at - t_go) as f64 / 1e9;
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let foreign = after.3.saturating_sub(before.3).saturating_sub(used(0) + used(1) + used(2));
    let (secs, w) = (plan.seconds as f64, plan.window as f64);
    Ok(Run {
        kind: c.kind,
        bin: c.bin,
        size: c.size,
        conns: c.conns,
        round: c.round,
        seconds: secs,
        window: w,
        first_rate: rate_between(&samples, 0.0, w),
        last_rate: rate_between(&samples, secs - w, secs),
        samples,
        points,
        delivered: seen.delivered,
        sessions: seen.sessions,
        cpu_us: used(0) as f64 / 1e3 / seen.delivered.max(1) as f64,
        io,
        log,
        hwm_kib,
        disk,
        retained,
        foreign_pct: foreign as f64 / 1e9 / wall / cpus * 100.0,
        gaps: seen.gaps,
        dups: seen.dups,
        incomplete: seen.incomplete,
        errors,
    })
}
