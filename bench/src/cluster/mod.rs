//! `tether-bench cluster`: what scale-out (issue 9) costs. Three tether
//! processes in cluster mode (`static` peer list on loopback), one backend,
//! and a real HAProxy (`balance roundrobin`, no stickiness) in front:
//!
//! - **latency**: resume latency at the session's owner against a resume
//!   that reaches another replica and is forwarded to the owner. Each client
//!   alternates between the two, so both see the same load.
//! - **throughput**: sessions owned by one replica, resumed either at the
//!   owner or at another replica (forwarded: a byte splice to the owner),
//!   then streamed at saturation; forwarded ÷ direct, interleaved rounds.
//! - **storm**: N sessions opened through HAProxy (so spread over the three
//!   owners), streaming; all clients drop their TCP connections at once and
//!   resume through HAProxy (two in three land on a non-owner). Time until
//!   the last session is back, peak RSS per replica, and every message
//!   checked: lost = duplicated = 0 is the pass condition.
//!
//! Prints Markdown on stdout and progress on stderr; exits non-zero if a
//! message was lost or duplicated, or a session did not come back.

mod haproxy;
mod latency;
mod rig;
mod session;
mod storm;
mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::cli::TetherArgs;
use crate::procs::Launcher;
use crate::stats::{fixed, median, micros, ratio, thousands};
use crate::sys;

use latency::{latency_round, LatencyRun};
use rig::Rig;
use storm::{storm, StormRun};
use throughput::{tput_trial, TputRun};

/// Replicas in every part.
pub const REPLICAS: usize = 3;

/// Throughput goal: forwarded ÷ direct at 64 B × 100 connections.
const TPUT_GOAL: f64 = 0.8;

/// `tether-bench cluster` options.
#[derive(Debug, Args)]
pub struct ClusterOpts {
    /// Parts to run: latency, throughput, storm (default: all three).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Rounds of the latency and throughput parts; figures are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of each resume-latency round.
    #[arg(long, default_value_t = 6.0)]
    pub resume_secs: f64,
    /// Resuming clients in the latency part.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// Payload bytes in the throughput part.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Connections in the throughput part.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// How long the backend sends in a throughput trial, ms.
    #[arg(long, default_value_t = 1500)]
    pub sat_ms: u64,
    /// Sessions in the reconnect storm.
    #[arg(long, default_value_t = 3000)]
    pub sessions: usize,
    /// Messages per second each storm session receives (64 B each).
    #[arg(long, default_value_t = 1.0)]
    pub storm_rate: f64,
    /// Seconds the storm's sessions stream before they all drop, and again
    /// after the last one is back.
    #[arg(long, default_value_t = 5.0)]
    pub storm_secs: f64,
    /// Before each round, wait up to this many seconds for a quiet machine
    /// (other processes under 10 % of the CPUs for 3 s); 0: do not wait.
    #[arg(long, default_value_t = 0)]
    pub wait_quiet: u64,
    /// The HAProxy binary.
    #[arg(long, default_value = "haproxy")]
    pub haproxy: PathBuf,
    /// Which tether, where its journals go, and where the raw figures go.
    #[command(flatten)]
    pub tether: TetherArgs,
}

impl ClusterOpts {
    fn has(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

// ---------------------------------------------------------------- report

/// Everything `tether-bench cluster` measured.
#[derive(Debug, Default, Serialize)]
pub struct ClusterResults {
    /// Resume-latency rounds.
    pub latency: Vec<LatencyRun>,
    /// Throughput trials.
    pub throughput: Vec<TputRun>,
    /// The storm.
    pub storm: Option<StormRun>,
    /// Parts that could not run.
    pub failures: Vec<String>,
}

impl ClusterResults {
    fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if !self.latency.is_empty() {
            let l = &self.latency;
            let m = |f: fn(&LatencyRun) -> f64| median(l.iter().map(f));
            let _ = writeln!(out, "\n### Forwarded resume latency\n");
            let _ = writeln!(out, "From the upgrade request to the first replayed frame; each client alternates between resuming at its session's owner and at one of the two other replicas. Medians over rounds of each round's percentile.\n");
            let _ = writeln!(out, "| resume | p50 µs | p99 µs | samples per round |");
            let _ = writeln!(out, "|---|---|---|---|");
            let _ = writeln!(
                out,
                "| at the owner | {} | {} | {} |",
                micros(m(|x| x.owner_p50_us)),
                micros(m(|x| x.owner_p99_us)),
                thousands(m(|x| x.owner_samples as f64))
            );
            let _ = writeln!(
                out,
                "| at another replica, forwarded | {} | {} | {} |",
                micros(m(|x| x.fwd_p50_us)),
                micros(m(|x| x.fwd_p99_us)),
                thousands(m(|x| x.fwd_samples as f64))
            );
            let _ = writeln!(
                out,
                "| added by forwarding | {} | {} | |",
                signed_us(m(|x| x.fwd_p50_us) - m(|x| x.owner_p50_us)),
                signed_us(m(|x| x.fwd_p99_us) - m(|x| x.owner_p99_us))
            );
            let _ = writeln!(
                out,
                "\nOther processes used {} % of the CPUs during the rounds (median).",
                fixed(m(|x| x.foreign_pct), 0)
            );
        }
        if !self.throughput.is_empty() {
            let t = &self.throughput;
            let m = |fwd: bool, f: fn(&TputRun) -> f64| median(t.iter().filter(|x| x.forwarded == fwd).map(f));
            let (direct, fwd) = (m(false, |x| x.rate), m(true, |x| x.rate));
            let r = fwd / direct;
            let _ = writeln!(out, "\n### Throughput of a forwarded connection\n");
            let _ = writeln!(out, "Sessions owned by one replica, resumed at the owner (direct) or at another replica (forwarded), then streamed at saturation; rounds interleaved, medians over rounds. CPU is the three tether processes together.\n");
            let _ = writeln!(out, "| payload | conns | direct msg/s | forwarded msg/s | forwarded ÷ direct | tether CPU µs/msg direct | forwarded | missing / dup | goal ≥ {TPUT_GOAL} |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
            let bad = t.iter().fold((0, 0), |a, x| (a.0 + x.gaps + x.incomplete, a.1 + x.dups));
            let _ = writeln!(
                out,
                "| {} B | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                t[0].size,
                t[0].conns,
                thousands(direct),
                thousands(fwd),
                ratio(r),
                fixed(m(false, |x| x.tether_cpu_us), 2),
                fixed(m(true, |x| x.tether_cpu_us), 2),
                bad.0,
                bad.1,
                if r >= TPUT_GOAL { "met" } else { "**missed**" }
            );
            let per_round: Vec<String> = (0..t.iter().map(|x| x.run + 1).max().unwrap_or(0))
                .filter_map(|run| {
                    let d = t.iter().find(|x| x.run == run && !x.forwarded)?;
                    let f = t.iter().find(|x| x.run == run && x.forwarded)?;
                    Some(format!(
                        "{} (others used {} % / {} % of the CPUs)",
                        ratio(f.rate / d.rate),
                        fixed(d.foreign_pct, 0),
                        fixed(f.foreign_pct, 0)
                    ))
                })
                .collect();
            let _ = writeln!(
                out,
                "\nForwarded ÷ direct per round: {}. Median share of the CPUs other processes used during a trial: {} %.",
                per_round.join(", "),
                fixed(median(t.iter().map(|x| x.foreign_pct)), 0)
            );
        }
        if let Some(s) = &self.storm {
            let mib = |v: &[f64]| v.iter().map(|x| fixed(*x, 0)).collect::<Vec<_>>().join(" / ");
            let _ = writeln!(out, "\n### Reconnect storm\n");
            let _ = writeln!(out, "{} sessions opened through HAProxy (round robin over {REPLICAS} replicas, no stickiness), each receiving {} × 64 B messages/s; then every client drops its TCP connection at the same moment and resumes through HAProxy at once (a failed upgrade is retried after 100–300 ms).\n", thousands(s.sessions as f64), s.rate);
            let _ = writeln!(out, "| sessions | per replica | last session back | per session p50 / p99 | resumed / restarted / not back | retried upgrades | messages checked | lost | dup | tether CPU in the storm | RSS before the drop MiB | peak RSS MiB |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
            let _ = writeln!(
                out,
                "| {} | {} | {} ms | {} / {} ms | {} / {} / {} | {} | {} | {} | {} | {} s | {} | {} |",
                thousands(s.sessions as f64),
                s.per_replica.iter().map(|x| thousands(*x)).collect::<Vec<_>>().join(" / "),
                fixed(s.last_back_ms, 0),
                fixed(s.back_p50_ms, 0),
                fixed(s.back_p99_ms, 0),
                s.resumed,
                s.restarted,
                s.not_back,
                s.retries,
                thousands(s.delivered as f64),
                s.lost,
                s.dups,
                fixed(s.tether_cpu_s, 2),
                mib(&s.rss_before_mib),
                mib(&s.peak_rss_mib)
            );
            let _ = writeln!(out, "\nOther processes used {} % of the CPUs from the drop until the last session was back; opening the sessions took {} s.", fixed(s.foreign_pct, 0), fixed(s.open_secs, 1));
            if !s.forward_metrics.is_empty() {
                let _ = writeln!(out, "\nForwarding counters after the run, summed over the replicas:\n");
                for (k, v) in &s.forward_metrics {
                    if !k.contains("_bucket") {
                        let _ = writeln!(out, "- `{k}` {}", fixed(*v, 3).trim_end_matches('0').trim_end_matches('.'));
                    }
                }
            }
            if let Some(e) = &s.retry_error {
                let _ = writeln!(out, "\nFirst retried failure: `{e}`.");
            }
            if let Some(e) = &s.error {
                let _ = writeln!(out, "\n**First error:** {e}");
            }
        }
        for f in &self.failures {
            let _ = writeln!(out, "\n**Failed:** {f}");
        }
        out
    }

    fn clean(&self) -> bool {
        self.failures.is_empty()
            && self.latency.iter().all(|x| x.gaps == 0 && x.dups == 0 && x.error.is_none())
            && self.throughput.iter().all(|x| x.gaps == 0 && x.dups == 0 && x.incomplete == 0)
            && self.storm.as_ref().is_none_or(|s| s.lost == 0 && s.dups == 0 && s.not_back == 0 && s.error.is_none())
    }
}

/// A latency in µs as `micros` writes it, with its unit.
fn with_unit(x: f64) -> String {
    let s = micros(x);
    if s.ends_with("ms") || s == "–" {
        s
    } else {
        format!("{s} µs")
    }
}

/// A difference in µs with its sign (`+254`, `−1,203`).
fn signed_us(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    format!("{}{}", if x < 0.0 { "−" } else { "+" }, thousands(x.abs()))
}

// ---------------------------------------------------------------- main

/// Runs `tether-bench cluster`; Ok(false) if anything was lost.
pub fn main(o: ClusterOpts) -> anyhow::Result<bool> {
    let nofile = sys::raise_nofile();
    let launcher = o.tether.launcher()?;
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let res = rt.block_on(run(&o, &launcher, nofile));
    let _ = std::fs::remove_dir_all(launcher.data_root());
    let elapsed = started.elapsed().as_secs_f64();
    let command = std::iter::once("tether-bench".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("## tether-bench cluster results\n");
    println!("- Command: `{}` ({elapsed:.0} s)", command.join(" "));
    println!(
        "- Machine: {nproc} CPUs shared by the backend, {REPLICAS} tether processes, HAProxy and the clients; load average at the end {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "- tether under test: {}; cluster mode `static`, journal sync=none, prefix stamps",
        launcher.tether_description()
    );
    println!(
        "- Balancer: {} (`balance roundrobin`, HTTP mode, no stickiness), open-files limit {nofile}",
        o.haproxy.display()
    );
    print!("{}", res.markdown());
    if let Some(path) = &o.tether.json {
        std::fs::write(path, serde_json::to_vec_pretty(&res)?)?;
    }
    let ok = res.clean();
    eprintln!("tether-bench cluster: {} in {elapsed:.0} s", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

async fn run(o: &ClusterOpts, l: &Launcher, nofile: u64) -> ClusterResults {
    let mut res = ClusterResults::default();
    let quiet = || async {
        if o.wait_quiet > 0 {
            let waited = sys::wait_for_quiet(10.0, Duration::from_secs(o.wait_quiet)).await;
            eprintln!("(waited {waited} s for a quiet machine)");
        }
    };
    if o.has("latency") {
        for run in 0..o.runs {
            quiet().await;
            let r = async {
                let rig = Rig::start(l, o, nofile, &format!("lat{run}"))?;
                latency_round(&rig, o.resume_secs, o.workers, run).await
            }
            .await;
            match r {
                Ok(r) => {
                    eprintln!(
                        "[latency round {}/{}] owner p50 {} p99 {} ({}), forwarded p50 {} p99 {} ({}){}",
                        run + 1,
                        o.runs,
                        with_unit(r.owner_p50_us),
                        with_unit(r.owner_p99_us),
                        r.owner_samples,
                        with_unit(r.fwd_p50_us),
                        with_unit(r.fwd_p99_us),
                        r.fwd_samples,
                        r.error.as_deref().map(|e| format!(" ERROR {e}")).unwrap_or_default()
                    );
                    res.latency.push(r);
                }
                Err(e) => res.failures.push(format!("latency round {}: {e:#}", run + 1)),
            }
        }
    }
    if o.has("throughput") {
        for run in 0..o.runs {
            for forwarded in [false, true] {
                quiet().await;
                let r = async {
                    let rig = Rig::start(l, o, nofile, &format!("tput{run}{forwarded}"))?;
                    tput_trial(&rig, o, forwarded, run).await
                }
                .await;
                match r {
                    Ok(r) => {
                        eprintln!(
                            "[throughput {} B × {}, round {}/{}] {}: {} msg/s, tether {} µs/msg, {} missing, {} dup, others {} % CPU{}",
                            o.size,
                            o.conns,
                            run + 1,
                            o.runs,
                            if forwarded { "forwarded" } else { "direct" },
                            thousands(r.rate),
                            fixed(r.tether_cpu_us, 2),
                            r.gaps,
                            r.dups,
                            fixed(r.foreign_pct, 0),
                            r.error.as_deref().map(|e| format!(" ERROR {e}")).unwrap_or_default()
                        );
                        res.throughput.push(r);
                    }
                    Err(e) => res.failures.push(format!("throughput round {} forwarded={forwarded}: {e:#}", run + 1)),
                }
            }
        }
    }
    if o.has("storm") {
        quiet().await;
        let r = async {
            let rig = Rig::start(l, o, nofile, "storm")?;
            storm(&rig, o).await
        }
        .await;
        match r {
            Ok(s) => {
                eprintln!(
                    "[storm] {} sessions: last back after {} ms (p50 {} p99 {} ms), {} retries, lost {}, dup {}, peak RSS {:?} MiB",
                    s.sessions,
                    fixed(s.last_back_ms, 0),
                    fixed(s.back_p50_ms, 0),
                    fixed(s.back_p99_ms, 0),
                    s.retries,
                    s.lost,
                    s.dups,
                    s.peak_rss_mib
                );
                res.storm = Some(s);
            }
            Err(e) => res.failures.push(format!("storm: {e:#}")),
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(signed_us(405.2), "+405");
        assert_eq!(signed_us(-2237.1), "−2,237");
        assert_eq!(signed_us(f64::NAN), "–");
        assert_eq!(with_unit(603.0), "603 µs");
        assert_eq!(with_unit(13_300.0), "13.3 ms");
    }
}
