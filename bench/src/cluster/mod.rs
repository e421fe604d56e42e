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
mod throughput;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::cli::TetherArgs;
use crate::client::{self, Tally, Ws};
use crate::procs::Launcher;
use crate::stats::{fixed, median, micros, pct, ratio, thousands};
use crate::sys::{self, now_ns, Rng};

use latency::{latency_round, LatencyRun};
use rig::Rig;
use session::{check_frame, new_tally, outcome, resume};
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

// ---------------------------------------------------------------- storm

/// The reconnect storm.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StormRun {
    /// Sessions opened through the balancer.
    pub sessions: usize,
    /// Messages per second per session.
    pub rate: f64,
    /// Sessions per replica (`tether_sessions` summed by instance), before the drop.
    pub per_replica: Vec<f64>,
    /// Seconds to open every session.
    pub open_secs: f64,
    /// From the drop to the last session's welcome, ms.
    pub last_back_ms: f64,
    /// Per session, drop to welcome: p50 ms.
    pub back_p50_ms: f64,
    /// p99 ms.
    pub back_p99_ms: f64,
    /// Sessions that came back with outcome `resumed`.
    pub resumed: usize,
    /// Sessions that came back `restarted` (the backend saw a new connection).
    pub restarted: usize,
    /// Sessions that did not come back, or came back with a gap.
    pub not_back: usize,
    /// Upgrade attempts that failed and were retried (e.g. 503).
    pub retries: u64,
    /// The first failure a retry saw.
    pub retry_error: Option<String>,
    /// Messages delivered over the whole run.
    pub delivered: u64,
    /// Messages missing (seq jumps, gap reports).
    pub lost: u64,
    /// Messages duplicated or out of order.
    pub dups: u64,
    /// RSS per replica just before the drop, MiB.
    pub rss_before_mib: Vec<f64>,
    /// Peak RSS (VmHWM) per replica over the whole run, MiB.
    pub peak_rss_mib: Vec<f64>,
    /// CPU of the three replicas from the drop until the last session was back, s.
    pub tether_cpu_s: f64,
    /// CPU share other processes on the machine used from the drop until the last was back, %.
    pub foreign_pct: f64,
    /// Forwarding metrics after the storm (summed over replicas).
    pub forward_metrics: Vec<(String, f64)>,
    /// First error.
    pub error: Option<String>,
}

#[derive(Default)]
struct StormOut {
    tally: Option<Tally>,
    back_ns: Option<u64>,
    outcome: String,
    retries: u64,
    retry_error: Option<String>,
    error: Option<String>,
}

/// Shared state of the storm's clients.
struct StormCtl {
    /// 0: streaming, 1: drop now, 2: stop.
    phase: tokio::sync::watch::Receiver<u8>,
    drop_ns: AtomicU64,
    back: AtomicUsize,
}

async fn storm(rig: &Rig, o: &ClusterOpts) -> anyhow::Result<StormRun> {
    let n = o.sessions;
    let url = rig.lb_url(&format!("/auto/64/{}", o.storm_rate));
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(0u8);
    let ctl = Arc::new(StormCtl { phase: phase_rx, drop_ns: AtomicU64::new(0), back: AtomicUsize::new(0) });
    eprintln!("[storm] opening {n} sessions through HAProxy");
    let t_open = now_ns();
    let opened: Vec<anyhow::Result<(Ws, String)>> = futures_util::stream::iter(0..n)
        .map(|_| {
            let url = url.clone();
            async move {
                let (mut ws, _) = client::connect(&url, &[]).await?;
                let token = client::read_welcome(&mut ws).await?["session"].as_str().context("no session")?.to_owned();
                Ok((ws, token))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let opened: Vec<(Ws, String)> = opened.into_iter().collect::<anyhow::Result<_>>()?;
    let open_secs = (now_ns() - t_open) as f64 / 1e9;
    let handles: Vec<_> =
        opened.into_iter().map(|(ws, token)| tokio::spawn(storm_client(ws, token, url.clone(), ctl.clone()))).collect();
    let per_replica = rig.sessions_per_replica().await;
    eprintln!("[storm] {n} sessions open in {open_secs:.1} s; streaming {} s", o.storm_secs);
    tokio::time::sleep(Duration::from_secs_f64(o.storm_secs)).await;
    let rss_before: Vec<f64> = rig.pids().iter().map(|&p| sys::status_kib(p, "VmRSS") as f64 / 1024.0).collect();
    let cpu0 = rig.tether_cpu_ns();
    let busy = rig.busy();
    ctl.drop_ns.store(now_ns(), Ordering::SeqCst);
    phase_tx.send(1)?;
    eprintln!("[storm] every client dropped its connection; resuming through HAProxy");
    let give_up = Instant::now() + Duration::from_secs(300);
    while ctl.back.load(Ordering::SeqCst) < n && Instant::now() < give_up && !handles.iter().all(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = rig.tether_cpu_ns().saturating_sub(cpu0);
    let foreign_pct = rig.foreign_pct(busy, now_ns() - ctl.drop_ns.load(Ordering::SeqCst));
    eprintln!("[storm] {} of {n} back; streaming {} s more", ctl.back.load(Ordering::SeqCst), o.storm_secs);
    tokio::time::sleep(Duration::from_secs_f64(o.storm_secs)).await;
    phase_tx.send(2)?;
    let mut outs = Vec::with_capacity(n);
    for h in handles {
        outs.push(h.await?);
    }
    let drop_ns = ctl.drop_ns.load(Ordering::SeqCst);
    let mut back: Vec<u64> = outs.iter().filter_map(|x| x.back_ns.map(|b| b - drop_ns)).collect();
    back.sort_unstable();
    let q = |p: f64| if back.is_empty() { f64::NAN } else { pct(&back, p) as f64 / 1e6 };
    let peak: Vec<f64> = rig.pids().iter().map(|&p| sys::status_kib(p, "VmHWM") as f64 / 1024.0).collect();
    let forward_metrics = rig.metrics("tether_forward").await;
    let tallies = outs.iter().filter_map(|x| x.tally.as_ref());
    let (delivered, gaps, dups) = tallies.fold((0, 0, 0), |a, t| (a.0 + t.data, a.1 + t.gaps, a.2 + t.dups));
    Ok(StormRun {
        sessions: n,
        rate: o.storm_rate,
        per_replica,
        open_secs,
        last_back_ms: back.last().map(|&b| b as f64 / 1e6).unwrap_or(f64::NAN),
        back_p50_ms: q(0.5),
        back_p99_ms: q(0.99),
        resumed: outs.iter().filter(|x| x.outcome == "resumed").count(),
        restarted: outs.iter().filter(|x| x.outcome == "restarted").count(),
        not_back: outs.iter().filter(|x| x.back_ns.is_none() || x.outcome == "gap").count(),
        retries: outs.iter().map(|x| x.retries).sum(),
        retry_error: outs.iter().find_map(|x| x.retry_error.clone()),
        delivered,
        lost: gaps,
        dups,
        rss_before_mib: rss_before,
        peak_rss_mib: peak,
        tether_cpu_s: cpu as f64 / 1e9,
        foreign_pct,
        forward_metrics,
        error: outs.iter().find_map(|x| x.error.clone().or_else(|| x.tally.as_ref().and_then(|t| t.error.clone()))),
    })
}

/// One storm client: reads until told to drop, drops the TCP connection,
/// resumes through the balancer (retrying failed upgrades every 100–300 ms),
/// reads until told to stop, then ends the session (close 1000).
async fn storm_client(ws: Ws, token: String, url: String, ctl: Arc<StormCtl>) -> StormOut {
    let mut out = StormOut::default();
    let mut tally = new_tally();
    if let Err(e) = storm_client_inner(ws, &token, &url, &ctl, &mut tally, &mut out).await {
        out.error.get_or_insert(format!("{e:#}"));
    }
    out.tally = Some(tally);
    out
}

async fn storm_client_inner(
    mut ws: Ws,
    token: &str,
    url: &str,
    ctl: &StormCtl,
    tally: &mut Tally,
    out: &mut StormOut,
) -> anyhow::Result<()> {
    let mut phase = ctl.phase.clone();
    let far = Instant::now() + Duration::from_secs(3600);
    read_until_phase(&mut ws, &mut phase, 1, tally, far).await?;
    drop(ws);
    let mut rng = Rng::new();
    let give_up = Instant::now() + Duration::from_secs(240);
    let (mut ws, welcome) = loop {
        match resume(url, token, tally.next_seq - 1).await {
            Ok(x) => break x,
            Err(e) => {
                out.retries += 1;
                out.retry_error.get_or_insert_with(|| format!("{e:#}"));
                if Instant::now() > give_up {
                    return Err(e.context("gave up resuming"));
                }
                tokio::time::sleep(Duration::from_millis(100 + rng.next_u64() % 200)).await;
            }
        }
    };
    out.back_ns = Some(now_ns());
    out.outcome = outcome(&welcome).to_owned();
    ctl.back.fetch_add(1, Ordering::SeqCst);
    if out.outcome != "resumed" {
        tally.gaps += u64::from(out.outcome == "gap");
        tally.error.get_or_insert_with(|| format!("resume outcome {welcome}"));
    }
    read_until_phase(&mut ws, &mut phase, 2, tally, far).await?;
    let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
    Ok(())
}

/// Reads data frames into `tally` until the storm reaches `until` phase.
async fn read_until_phase(
    ws: &mut Ws,
    phase: &mut tokio::sync::watch::Receiver<u8>,
    until: u8,
    tally: &mut Tally,
    deadline: Instant,
) -> anyhow::Result<()> {
    while *phase.borrow() < until {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            frame = client::next_data(ws, deadline) => match frame? {
                Some((seq, idx)) => {
                    check_frame(tally, seq, idx);
                    tally.data += 1;
                }
                None => return Err(anyhow!("no frame before the deadline")),
            }
        }
    }
    Ok(())
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
