//! `tether-bench reopen`: how long tether takes, after a crash, to reopen
//! the backend connections of N sessions (`session.backend_on_restart =
//! "eager"`, docs/PROTOCOL.md §1), and how hard that hits the backend.
//!
//! Each trial: a recording backend ([`crate::upgrades`]) and tether in
//! front of it on a fresh journal directory; N clients each open a session,
//! read the welcome and drop the TCP connection (the session lingers with
//! its backend connection open, which the backend holds); tether is killed
//! (SIGKILL) and, once the backend has seen every old connection close,
//! started again on the same directory with the settings under test
//! (`--limits`, `--tether-env`). Measured from just before the harness
//! spawns the new process (time 0) until the backend has completed N new
//! upgrades and tether's `tether_backend_reopens_total{result="ok"}` says N:
//! the total, the start-up until "tether is serving" (the journal's
//! recovery), the backend's mean and peak upgrade rate (most upgrades in
//! any 100 ms, ×10), and the most handshakes in flight at the backend at
//! once (accept to 101 written). A trial fails if tether does not set out
//! to reopen exactly N, or if not all N are reopened within the bound.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::StreamExt;
use serde::Serialize;

use crate::cli::ReopenOpts;
use crate::procs::{Launcher, Setup};
use crate::stats::{fixed, thousands};
use crate::sys::{self, now_ns};
use crate::upgrades::{peak_in_window, Upgrades};

/// The settings' names.
const RATE_VAR: &str = "TETHER_SESSION_RESTART_DIALS_PER_SECOND";
const CONC_VAR: &str = "TETHER_SESSION_RESTART_DIAL_CONCURRENCY";
/// tether's defaults (config/tether.toml), for the report.
const DEFAULT_LIMITS: (u32, u32) = (200, 32);
/// Client handshakes at a time while the sessions are opened.
const OPEN_PARALLEL: usize = 128;
/// The metric sample that must reach N.
const OK_SAMPLE: &str = "tether_backend_reopens_total{result=\"ok\"}";

/// One trial's measurements. Times are seconds from just before the
/// harness spawned the restarted tether.
#[derive(Debug, Clone, Serialize)]
pub struct ReopenTrial {
    pub dials_per_second: u32,
    pub concurrency: u32,
    pub run: usize,
    pub sessions: usize,
    /// Seconds to open the sessions before the kill.
    pub open_secs: f64,
    /// The "tether is serving" log line was read.
    pub serving_secs: f64,
    /// The "reopening backend connections" log line, and how many it named.
    pub reopen_start_secs: Option<f64>,
    pub to_reopen: Option<usize>,
    /// The backend's first and N-th new upgrade.
    pub first_upgrade_secs: f64,
    pub last_upgrade_secs: f64,
    /// `tether_backend_reopens_total{result="ok"}` first seen at N (polled
    /// every 50 ms): the total.
    pub done_secs: f64,
    /// tether's own figure, s ("backend connections reopened", `elapsed`:
    /// from its first dial until its last one ended).
    pub tether_elapsed: Option<f64>,
    /// Upgrades/s between the first and the N-th; the most in any 100 ms,
    /// ×10; the most in any second.
    pub mean_rate: f64,
    pub peak_rate: f64,
    pub peak_1s: usize,
    /// Most handshakes in flight at the backend at once.
    pub peak_inflight: i64,
    /// `tether_backend_reopens_total` by result at the end.
    pub results: Vec<(String, f64)>,
    /// Upgrades the backend failed during the restart, and all it completed
    /// (more than N: a session dialed twice).
    pub backend_failed: u64,
    pub upgrades: usize,
    /// CPU share other processes used from time 0 to the end, %.
    pub foreign_pct: f64,
}

/// Runs the trials and prints Markdown on stdout; Ok(false) if any failed.
pub fn main(o: ReopenOpts) -> anyhow::Result<bool> {
    if o.sessions == 0 || o.runs == 0 {
        bail!("--sessions and --runs must be positive");
    }
    let nofile = sys::raise_nofile();
    // The harness holds the backend's side of every session, and the old
    // connections may not all be closed yet when the new ones arrive.
    if (nofile as usize) < o.sessions + 1024 {
        bail!("open-files limit {nofile} is too low for {} sessions (needs about sessions + 1024)", o.sessions);
    }
    let machine = sys::machine(nofile);
    eprintln!("tether-bench reopen: {machine}");
    let launcher = o.tether.launcher()?;
    let started = std::time::Instant::now();
    let settings: Vec<Option<(u32, u32)>> =
        if o.limits.is_empty() { vec![None] } else { o.limits.iter().copied().map(Some).collect() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (mut trials, mut failures) = (Vec::new(), Vec::new());
    for (i, &limits) in settings.iter().enumerate() {
        for run in 0..o.runs {
            if o.wait_quiet > 0 {
                let quiet = sys::wait_for_quiet(crate::report::DISTURBED_PCT, Duration::from_secs(o.wait_quiet));
                eprintln!("(waited {} s for a quiet machine)", rt.block_on(quiet));
            }
            let (rate, conc) = effective(limits, launcher.env());
            let label = format!("[{rate}/s, {conc} in flight, run {}/{}]", run + 1, o.runs);
            let dir = launcher.data_root().join(format!("reopen-{i}-{run}"));
            match rt.block_on(trial(&launcher, &o, limits, &dir, run)) {
                Ok(t) => {
                    eprintln!("{} {label} {}", clock(), summary(&t));
                    trials.push(t);
                }
                Err(e) => {
                    eprintln!("{} {label} FAILED {e:#}", clock());
                    failures.push(format!("{label}: {e:#}"));
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(launcher.data_root());
    let command = std::iter::once("tether-bench".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
    println!("## tether-bench reopen\n");
    println!("- Command: `{}` ({:.0} s)", command.join(" "), started.elapsed().as_secs_f64());
    println!("- Machine: {machine}");
    println!("- tether under test: {}, prefix stamps, `journal.sync = none`", launcher.tether_description());
    if !launcher.env().is_empty() {
        let env: Vec<String> = launcher.env().iter().map(|(k, v)| format!("`{k}={v}`")).collect();
        println!("- Extra tether settings: {}", env.join(", "));
    }
    println!(
        "- {} sessions, each opened by a client that read the welcome and dropped its TCP connection (`session.linger = {}`); tether killed with SIGKILL and started again on the same journal. Times from just before the new process was spawned.\n",
        thousands(o.sessions as f64),
        o.linger
    );
    if o.backend_stall_ms > 0 {
        println!("- The backend answered no upgrade for the first {} ms after the restart.\n", o.backend_stall_ms);
    }
    print!("{}", table(&trials));
    if let Some(path) = &o.tether.json {
        std::fs::write(path, serde_json::to_vec_pretty(&trials)?)?;
    }
    for f in &failures {
        println!("- FAILED: {f}");
    }
    let ok = failures.is_empty();
    eprintln!("tether-bench reopen: {}, {} failures", if ok { "PASS" } else { "FAIL" }, failures.len());
    Ok(ok)
}

/// The limits the restarted tether runs with: `--tether-env` wins over
/// `--limits`, which wins over tether's defaults.
fn effective(limits: Option<(u32, u32)>, env: &[(String, String)]) -> (u32, u32) {
    let (mut rate, mut conc) = limits.unwrap_or(DEFAULT_LIMITS);
    for (k, v) in env {
        match k.as_str() {
            RATE_VAR => rate = v.parse().unwrap_or(rate),
            CONC_VAR => conc = v.parse().unwrap_or(conc),
            _ => {}
        }
    }
    (rate, conc)
}

fn summary(t: &ReopenTrial) -> String {
    let others: Vec<String> =
        t.results.iter().filter(|(r, v)| r != "ok" && *v > 0.0).map(|(r, v)| format!("{r} {v}")).collect();
    let odd = format!(
        "{}{}{}",
        if others.is_empty() { String::new() } else { format!("; reopens also {}", others.join(", ")) },
        if t.upgrades == t.sessions { String::new() } else { format!("; {} upgrades in all", t.upgrades) },
        if t.backend_failed == 0 { String::new() } else { format!("; {} upgrades failed", t.backend_failed) },
    );
    format!(
        "{} sessions (opened in {} s): serving at {} s, all reopened at {} s (tether: {} s), upgrades {}..{} s, mean {}/s, peak {}/s (100 ms), {} in 1 s, {} handshakes in flight at most; other processes {}% CPU{odd}",
        t.sessions,
        fixed(t.open_secs, 1),
        fixed(t.serving_secs, 2),
        fixed(t.done_secs, 2),
        t.tether_elapsed.map(|e| fixed(e, 2)).unwrap_or_else(|| "?".into()),
        fixed(t.first_upgrade_secs, 2),
        fixed(t.last_upgrade_secs, 2),
        thousands(t.mean_rate),
        thousands(t.peak_rate),
        t.peak_1s,
        t.peak_inflight,
        fixed(t.foreign_pct, 0)
    )
}

/// One trial on the journal directory `dir`.
async fn trial(
    l: &Launcher,
    o: &ReopenOpts,
    limits: Option<(u32, u32)>,
    dir: &std::path::Path,
    run: usize,
) -> anyhow::Result<ReopenTrial> {
    let n = o.sessions;
    let (rate, conc) = effective(limits, l.env());
    let bound = o.bound_secs.unwrap_or(30.0 + 3.0 * n as f64 / f64::from(rate));
    let _ = std::fs::remove_dir_all(dir);
    let backend = Upgrades::start()?;
    let linger = ("TETHER_SESSION_LINGER", o.linger.clone());
    let first = l.tether_on(dir, Setup::JournalNone, &backend.url(), std::slice::from_ref(&linger), None)?;

    // The sessions: each client reads its welcome and vanishes.
    let opened = std::time::Instant::now();
    let url = first.url("/reopen");
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                let (mut ws, _) = crate::client::connect(&url, &[]).await?;
                crate::client::read_welcome(&mut ws).await?;
                Ok(())
            }
        })
        .buffer_unordered(OPEN_PARALLEL)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        bail!("{failed} of {n} sessions could not be opened; the first: {e:#}");
    }
    let open_secs = opened.elapsed().as_secs_f64();
    wait_for("every session's backend connection", 30.0, || backend.live() == n as i64).await?;
    // journal.sync = none: what tether wrote is in the page cache, which a
    // SIGKILL does not lose; this leaves its writer thread time to write it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(first);
    wait_for("the killed tether's backend connections to close", 30.0, || backend.live() == 0).await?;

    // The restart under test.
    let mut extra = vec![linger];
    if let Some((r, c)) = limits {
        extra.push((RATE_VAR, r.to_string()));
        extra.push((CONC_VAR, c.to_string()));
    }
    let mark = backend.count();
    let failed_before = backend.failed();
    backend.reset_peak();
    let (tap, log) = mpsc::channel();
    let busy0 = sys::machine_busy_ns();
    let ours0 = sys::usage(std::process::id()).cpu_ns;
    let t0 = now_ns();
    if o.backend_stall_ms > 0 {
        backend.stall_until(t0 + o.backend_stall_ms * 1_000_000);
    }
    let second = l.tether_on(dir, Setup::JournalNone, &backend.url(), &extra, Some(tap))?;
    let secs = |t: u64| t.saturating_sub(t0) as f64 / 1e9;
    let deadline = t0 + (bound * 1e9) as u64;
    let done_at = loop {
        if backend.count() - mark >= n {
            let text = tether_testkit::http_get(second.admin, "/metrics").await.context("scraping /metrics")?.1;
            if tether_testkit::metric(&text, OK_SAMPLE) >= n as f64 {
                break now_ns();
            }
        }
        if now_ns() > deadline {
            let text = tether_testkit::http_get(second.admin, "/metrics").await.map(|r| r.1).unwrap_or_default();
            bail!(
                "not all {n} sessions reopened within {bound:.0} s: the backend saw {} new upgrades, tether counts {}",
                backend.count() - mark,
                reopen_results(&text).iter().map(|(r, v)| format!("{r} {v}")).collect::<Vec<_>>().join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let busy = sys::machine_busy_ns().saturating_sub(busy0);
    let ours = sys::usage(second.pid).cpu_ns + sys::usage(std::process::id()).cpu_ns.saturating_sub(ours0);
    let wall = secs(now_ns());
    // tether logs "backend connections reopened" once its last dial is done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = tether_testkit::http_get(second.admin, "/metrics").await.context("scraping /metrics")?.1;
    let results = reopen_results(&text);
    let backend_failed = backend.failed() - failed_before;
    let times = backend.times_from(mark);
    let peak_inflight = backend.peak_inflight();
    drop(second);
    drop(backend);

    let lines: Vec<(u64, serde_json::Value)> =
        log.try_iter().filter_map(|(t, l)| Some((t, serde_json::from_str(&l).ok()?))).collect();
    let find = |msg: &str| lines.iter().find(|(_, v)| v["fields"]["message"] == msg);
    let serving = find("tether is serving").ok_or_else(|| anyhow!("no \"tether is serving\" line"))?.0;
    let start = find("reopening backend connections (session.backend_on_restart = eager)");
    let to_reopen = start.and_then(|(_, v)| v["fields"]["sessions"].as_u64()).map(|v| v as usize);
    if to_reopen != Some(n) {
        bail!("tether set out to reopen {to_reopen:?} backend connections, not {n}");
    }
    let tether_elapsed =
        find("backend connections reopened").and_then(|(_, v)| v["fields"]["elapsed"].as_str().and_then(debug_secs));
    let upgrades = times.len();
    let mut times: Vec<u64> = times.into_iter().take(n).collect();
    times.sort_unstable();
    let (first_t, last_t) = (times[0], times[n - 1]);
    let span = (last_t - first_t) as f64 / 1e9;
    Ok(ReopenTrial {
        dials_per_second: rate,
        concurrency: conc,
        run,
        sessions: n,
        open_secs,
        serving_secs: secs(serving),
        reopen_start_secs: start.map(|(t, _)| secs(*t)),
        to_reopen,
        first_upgrade_secs: secs(first_t),
        last_upgrade_secs: secs(last_t),
        done_secs: secs(done_at),
        tether_elapsed,
        mean_rate: if span > 0.0 { (n - 1) as f64 / span } else { f64::NAN },
        peak_rate: peak_in_window(&times, 100_000_000) as f64 * 10.0,
        peak_1s: peak_in_window(&times, 1_000_000_000),
        peak_inflight,
        results,
        backend_failed,
        upgrades,
        foreign_pct: busy.saturating_sub(ours) as f64 / 1e9 / wall / cpus() * 100.0,
    })
}

fn clock() -> String {
    let c = sys::unix_secs() % 86_400;
    format!("{:02}:{:02}:{:02}", c / 3600, c / 60 % 60, c % 60)
}

/// A `Duration`'s `Debug` text (`9.99662514s`, `13.2ms`) in seconds.
fn debug_secs(s: &str) -> Option<f64> {
    let unit = s.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let v: f64 = s[..s.len() - unit.len()].parse().ok()?;
    Some(match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    })
}

fn cpus() -> f64 {
    std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

/// `tether_backend_reopens_total` by result.
fn reopen_results(text: &str) -> Vec<(String, f64)> {
    ["ok", "refused", "error", "over_capacity", "skipped"]
        .iter()
        .map(|r| {
            let sample = format!("tether_backend_reopens_total{{result=\"{r}\"}}");
            ((*r).to_owned(), tether_testkit::metric(text, &sample))
        })
        .collect()
}

/// Polls `cond` every 20 ms for up to `secs`.
async fn wait_for(what: &str, secs: f64, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
    while !cond() {
        if std::time::Instant::now() > until {
            bail!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The Markdown table, one row per trial.
fn table(trials: &[ReopenTrial]) -> String {
    let mut s = String::from(
        "| dials/s | in flight | sessions | run | start → serving s | → first upgrade s | → all reopened s | tether's own | mean upgrades/s | peak upgrades/s (100 ms) | most upgrades in 1 s | peak handshakes in flight | other processes % CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in trials {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.dials_per_second,
            t.concurrency,
            thousands(t.sessions as f64),
            t.run + 1,
            fixed(t.serving_secs, 2),
            fixed(t.first_upgrade_secs, 2),
            fixed(t.done_secs, 2),
            t.tether_elapsed.map(|e| fixed(e, 2)).unwrap_or_else(|| "?".into()),
            thousands(t.mean_rate),
            thousands(t.peak_rate),
            thousands(t.peak_1s as f64),
            t.peak_inflight,
            fixed(t.foreign_pct, 0)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::debug_secs;
    use crate::cli::parse_limits;

    #[test]
    fn parses_limits_and_durations() {
        assert_eq!(parse_limits("2000/64"), Ok((2000, 64)));
        assert!(parse_limits("2000").is_err() && parse_limits("0/3").is_err());
        assert_eq!(debug_secs("9.5s"), Some(9.5));
        assert_eq!(debug_secs("13.25ms"), Some(0.01325));
        assert_eq!(debug_secs("nonsense"), None);
    }
}
