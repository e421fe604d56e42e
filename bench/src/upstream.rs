//! `tether-bench upstream`: what the upstream guarantee (docs/PROTOCOL.md
//! §12) costs client → backend throughput.
//!
//! Each round runs, for every cell (payload size × connections), four
//! setups one after the other: **direct** (clients to the backend),
//! **relay** (the reference relay, no journal), **tether without acks**
//! (plain messages, the connection does not opt in) and **tether with
//! acks** (`Tether-Up: seq`: stamped messages, at most `--window`
//! unacked per connection). Both tether setups run the same configuration
//! (prefix stamps, `journal.sync` from `--sync`). Every client sends as
//! fast as its socket (and window) takes messages for `--warmup` +
//! `--seconds`; the throughput is what the backend read during the
//! `--seconds` window, and the CPU time of tether, backend and clients is
//! sampled at the window's edges. The backend checks every message's index
//! (once, in order, none missing) and the run fails on any difference, on
//! a connection error and on an ack that goes back or covers a message not
//! sent. Ratios are taken within each round; figures are medians.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;

use crate::cli::TetherArgs;
use crate::procs::{Launcher, Setup};
use crate::stats::{fixed, median, pct_weighted, ratio, thousands};
use crate::stream::PARALLEL_CONNECTS;
use crate::sys::{self, now_ns, Usage};
use crate::upclient::{self, Plan};

/// `tether-bench upstream` options.
#[derive(Debug, Args)]
pub struct UpOpts {
    /// Payload sizes in bytes (the seq stamp comes on top).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 512])]
    pub sizes: Vec<usize>,
    /// Connection counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 100])]
    pub conns: Vec<usize>,
    /// Rounds; each runs direct, relay, tether without acks and with acks.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of the measuring window of each trial.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Seconds of sending before the window opens.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// With acks: most messages a connection has sent and not yet seen acked.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// Offered messages/s over all connections (0: saturation): for ack
    /// latency below saturation, where it is not the window's queueing.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// `journal.sync` of both tether setups: none, interval or always.
    #[arg(long, default_value = "none")]
    pub sync: String,
    /// Before each round, wait up to this many seconds for a quiet machine.
    #[arg(long, default_value_t = 0)]
    pub wait_quiet: u64,
    /// Which tether, where its journals go, and where the raw figures go.
    #[command(flatten)]
    pub tether: TetherArgs,
}

/// The four setups, in the order each round runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Direct,
    Relay,
    NoAcks,
    Acks,
}

const KINDS: [Kind; 4] = [Kind::Direct, Kind::Relay, Kind::NoAcks, Kind::Acks];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relay => "reference relay",
            Kind::NoAcks => "tether, no acks",
            Kind::Acks => "tether, acks",
        }
    }
}

/// One trial's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct UpTrial {
    pub kind: Kind,
    pub size: usize,
    pub conns: usize,
    pub run: usize,
    /// Messages/s the backend read during the window, all connections.
    pub rate: f64,
    /// Data messages the clients sent, the backend read, and read in the window.
    pub sent: u64,
    pub received: u64,
    pub in_window: u64,
    /// Ack latency percentiles, µs (with acks), and their sample count.
    pub ack_p50_us: Option<f64>,
    pub ack_p99_us: Option<f64>,
    pub ack_p999_us: Option<f64>,
    pub samples: usize,
    /// `up_ack` frames the clients received (with acks).
    pub acks: u64,
    /// CPU time per message read in the window, µs (tether's or the relay's).
    pub tether_cpu_us: f64,
    pub backend_cpu_us: f64,
    pub client_cpu_us: f64,
    /// CPU share other processes used during the window, %.
    pub foreign_pct: f64,
    /// Messages missing, duplicated or out of order (backend's count, and
    /// sent − read), connections that failed, and the first failure.
    pub missing: u64,
    pub dups: u64,
    pub failed: usize,
    pub error: Option<String>,
}

impl UpTrial {
    fn clean(&self) -> bool {
        self.missing == 0 && self.dups == 0 && self.failed == 0
    }
}

fn tether_setup(sync: &str) -> anyhow::Result<Setup> {
    Ok(match sync {
        "none" => Setup::JournalNone,
        "interval" => Setup::JournalInterval,
        "always" => Setup::JournalAlways,
        s => bail!("--sync must be none, interval or always, not {s:?}"),
    })
}

/// Runs the matrix, prints Markdown on stdout; Ok(false) if any message
/// was lost, duplicated or reordered or any trial failed.
pub fn main(o: UpOpts) -> anyhow::Result<bool> {
    if o.runs == 0 || o.sizes.is_empty() || o.conns.is_empty() || o.conns.contains(&0) || o.window == 0 {
        bail!("--runs, --sizes, --conns and --window must be non-empty and positive");
    }
    if !(o.seconds > 0.0 && o.warmup >= 0.0 && o.rate >= 0.0) {
        bail!("--seconds must be positive, --warmup and --rate not negative");
    }
    let setup = tether_setup(&o.sync)?;
    let nofile = sys::raise_nofile();
    let machine = sys::machine(nofile);
    eprintln!("tether-bench upstream: {machine}");
    let launcher = o.tether.launcher()?;
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (trials, failures) = rt.block_on(matrix(&o, &launcher, setup));
    let _ = std::fs::remove_dir_all(launcher.data_root());
    let command = std::iter::once("tether-bench".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
    println!("## tether-bench upstream\n");
    println!("- Command: `{}` ({:.0} s)", command.join(" "), started.elapsed().as_secs_f64());
    println!("- Machine: {machine}");
    println!("- tether under test: {}, `journal.sync = {}`, prefix stamps", launcher.tether_description(), o.sync);
    println!(
        "- {} rounds, setups alternated in each; {} s of sending, then a {} s window; with acks at most {} unacked messages per connection; offered load {}.\n",
        o.runs,
        o.warmup,
        o.seconds,
        o.window,
        if o.rate > 0.0 { format!("{} msg/s in all", thousands(o.rate)) } else { "saturation".into() }
    );
    print!("{}", table(&o, &trials));
    if let Some(path) = &o.tether.json {
        std::fs::write(path, serde_json::to_vec_pretty(&trials)?)?;
    }
    for f in &failures {
        println!("- FAILED: {f}");
    }
    let ok = failures.is_empty();
    eprintln!("tether-bench upstream: {}, {} failures", if ok { "PASS" } else { "FAIL" }, failures.len());
    Ok(ok)
}

async fn matrix(o: &UpOpts, l: &Launcher, setup: Setup) -> (Vec<UpTrial>, Vec<String>) {
    let (mut trials, mut failures) = (Vec::new(), Vec::new());
    for &size in &o.sizes {
        for &conns in &o.conns {
            for run in 0..o.runs {
                if o.wait_quiet > 0 {
                    let waited =
                        sys::wait_for_quiet(crate::report::DISTURBED_PCT, Duration::from_secs(o.wait_quiet)).await;
                    eprintln!("(waited {waited} s for a quiet machine)");
                }
                for kind in KINDS {
                    let label = format!("[{size} B × {conns}, round {}/{}] {}", run + 1, o.runs, kind.name());
                    match trial(l, o, setup, kind, size, conns, run).await {
                        Ok(t) => {
                            eprintln!("{} {label}: {}", clock(), summary(&t));
                            if !t.clean() {
                                failures.push(format!(
                                    "{label}: {} missing, {} duplicated or out of order, {} connections failed: {}",
                                    t.missing,
                                    t.dups,
                                    t.failed,
                                    t.error.as_deref().unwrap_or("")
                                ));
                            }
                            trials.push(t);
                        }
                        Err(e) => {
                            eprintln!("{} {label}: FAILED {e:#}", clock());
                            failures.push(format!("{label}: {e:#}"));
                        }
                    }
                }
            }
        }
    }
    (trials, failures)
}

fn clock() -> String {
    let c = sys::unix_secs() % 86_400;
    format!("{:02}:{:02}:{:02}", c / 3600, c / 60 % 60, c % 60)
}

fn summary(t: &UpTrial) -> String {
    let lat = match (t.ack_p50_us, t.ack_p99_us, t.ack_p999_us) {
        (Some(a), Some(b), Some(c)) => format!(
            ", ack p50 {} p99 {} p99.9 {} ms, {} messages per ack",
            ms(a),
            ms(b),
            ms(c),
            fixed(t.sent as f64 / t.acks.max(1) as f64, 1)
        ),
        _ => String::new(),
    };
    format!(
        "{} msg/s, proxy {} µs/msg, all {} µs/msg{lat}; other processes {}% CPU; {}",
        thousands(t.rate),
        fixed(t.tether_cpu_us, 2),
        fixed(t.tether_cpu_us + t.backend_cpu_us + t.client_cpu_us, 2),
        fixed(t.foreign_pct, 0),
        if t.clean() { "ok" } else { "FAILED" }
    )
}

/// µs as ms with 2 decimals.
fn ms(us: f64) -> String {
    fixed(us / 1e3, 2)
}

async fn sleep_to(ns: u64) {
    tokio::time::sleep(Duration::from_nanos(ns.saturating_sub(now_ns()))).await;
}

/// One trial: a fresh backend, a fresh relay or tether, `conns` clients.
async fn trial(
    l: &Launcher,
    o: &UpOpts,
    setup: Setup,
    kind: Kind,
    size: usize,
    conns: usize,
    run: usize,
) -> anyhow::Result<UpTrial> {
    let backend = l.backend()?;
    let proxy = match kind {
        Kind::Direct => None,
        Kind::Relay => Some(l.relay(&backend.url())?),
        Kind::NoAcks | Kind::Acks => Some(l.tether(setup, &backend.url(), &[])?),
    };
    let url = match &proxy {
        Some(p) => p.url(crate::sink::PATH),
        None => format!("{}{}", backend.url(), crate::sink::PATH),
    };
    let (tether, acked) = (matches!(kind, Kind::NoAcks | Kind::Acks), kind == Kind::Acks);
    let opened: Vec<anyhow::Result<_>> = futures_util::stream::iter(0..conns)
        .map(|_| upclient::open(&url, tether, acked))
        .buffer_unordered(PARALLEL_CONNECTS)
        .collect()
        .await;
    let sockets = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let pad: Arc<str> = crate::backend::padding().into();
    let from_ns = now_ns() + (o.warmup * 1e9) as u64;
    let to_ns = from_ns + (o.seconds * 1e9) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(o.warmup + o.seconds + 120.0);
    let plan = Plan { size, acked, window: o.window, rate: o.rate / conns as f64, from_ns, to_ns, deadline };
    let tasks: Vec<_> = sockets.into_iter().map(|ws| tokio::spawn(upclient::run(ws, plan, pad.clone()))).collect();

    let pids = [proxy.as_ref().map(|p| p.pid), Some(backend.proc.pid), Some(std::process::id())];
    let sample = || (pids.map(|p| p.map(sys::usage).unwrap_or_default()), sys::machine_busy_ns());
    sleep_to(from_ns).await;
    let before = sample();
    sleep_to(to_ns).await;
    let after = sample();
    let wall = (now_ns() - from_ns) as f64 / 1e9;

    let mut outcomes = Vec::with_capacity(conns);
    for t in tasks {
        outcomes.push(t.await.map_err(|e| anyhow!("a client task failed: {e}"))?);
    }
    drop(proxy);
    drop(backend);

    let used: [Usage; 3] = std::array::from_fn(|i| after.0[i].since(&before.0[i]));
    let ours: u64 = used.iter().map(|u| u.cpu_ns).sum();
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let in_window: u64 = outcomes.iter().filter_map(|x| x.got).map(|g| g.in_window).sum();
    let per_msg = |u: Usage| u.cpu_ns as f64 / 1e3 / in_window.max(1) as f64;
    let mut lat: Vec<(u64, u64)> = outcomes.iter_mut().flat_map(|x| std::mem::take(&mut x.lat)).collect();
    lat.sort_unstable();
    let samples: u64 = lat.iter().map(|&(_, n)| n).sum();
    let q = |p: f64| (samples > 0).then(|| pct_weighted(&lat, samples, p) as f64 / 1e3);
    let sent: u64 = outcomes.iter().map(|x| x.sent).sum();
    let received: u64 = outcomes.iter().filter_map(|x| x.got).map(|g| g.received).sum();
    // Per connection: what the backend says, and what it read against what was sent.
    let missing = outcomes.iter().filter_map(|x| x.got.map(|g| g.missing.max(x.sent.saturating_sub(g.received)))).sum();
    let dups = outcomes.iter().filter_map(|x| x.got.map(|g| g.dups.max(g.received.saturating_sub(x.sent)))).sum();
    Ok(UpTrial {
        kind,
        size,
        conns,
        run,
        rate: in_window as f64 / o.seconds,
        sent,
        received,
        in_window,
        ack_p50_us: q(0.50),
        ack_p99_us: q(0.99),
        ack_p999_us: q(0.999),
        samples: samples as usize,
        acks: outcomes.iter().map(|x| x.acks).sum(),
        tether_cpu_us: per_msg(used[0]),
        backend_cpu_us: per_msg(used[1]),
        client_cpu_us: per_msg(used[2]),
        foreign_pct: (after.1.saturating_sub(before.1).saturating_sub(ours)) as f64 / 1e9 / wall / cpus * 100.0,
        missing,
        dups,
        failed: outcomes.iter().filter(|x| x.error.is_some() || x.got.is_none()).count(),
        error: outcomes.iter().find_map(|x| x.error.clone()),
    })
}

/// The Markdown table: per cell, medians over rounds; ratios per round.
fn table(o: &UpOpts, trials: &[UpTrial]) -> String {
    let mut s = String::from(
        "| payload | conns | direct msg/s | relay msg/s | tether no acks msg/s | tether acks msg/s | acks ÷ no acks (worst) | acks ÷ relay | ack p50 / p99 ms | msgs per ack | µs/msg relay / no acks / acks | other processes % CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &size in &o.sizes {
        for &conns in &o.conns {
            let cell: Vec<&UpTrial> = trials.iter().filter(|t| t.size == size && t.conns == conns).collect();
            let get = |k: Kind, run: usize| cell.iter().find(|t| t.kind == k && t.run == run);
            let med = |k: Kind, f: &dyn Fn(&UpTrial) -> f64| median(cell.iter().filter(|t| t.kind == k).map(|t| f(t)));
            let per_round = |num: Kind, den: Kind| -> Vec<f64> {
                (0..o.runs).filter_map(|r| Some(get(num, r)?.rate / get(den, r)?.rate)).collect()
            };
            let vs_plain = per_round(Kind::Acks, Kind::NoAcks);
            let worst = vs_plain.iter().copied().fold(f64::INFINITY, f64::min);
            let rate = |k| thousands(med(k, &|t| t.rate));
            s += &format!(
                "| {size} B | {conns} | {} | {} | {} | {} | {} ({}) | {} | {} / {} | {} | {} / {} / {} | {} |\n",
                rate(Kind::Direct),
                rate(Kind::Relay),
                rate(Kind::NoAcks),
                rate(Kind::Acks),
                ratio(median(vs_plain.iter().copied())),
                ratio(worst),
                ratio(median(per_round(Kind::Acks, Kind::Relay))),
                ms(med(Kind::Acks, &|t| t.ack_p50_us.unwrap_or(f64::NAN))),
                ms(med(Kind::Acks, &|t| t.ack_p99_us.unwrap_or(f64::NAN))),
                fixed(med(Kind::Acks, &|t| t.sent as f64 / t.acks.max(1) as f64), 1),
                fixed(med(Kind::Relay, &|t| t.tether_cpu_us), 2),
                fixed(med(Kind::NoAcks, &|t| t.tether_cpu_us), 2),
                fixed(med(Kind::Acks, &|t| t.tether_cpu_us), 2),
                fixed(median(cell.iter().map(|t| t.foreign_pct)), 0),
            );
        }
    }
    s
}
