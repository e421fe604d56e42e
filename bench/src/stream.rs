//! One stream trial: a fresh backend, a fresh tether (unless direct), N
//! clients that each ask the backend for a stream, and what it cost.
//!
//! - Saturation (`rate = None`): every backend connection sends as fast as
//!   its socket takes messages for `ms`; the throughput is the messages
//!   delivered to all clients divided by the time from `go` to the last
//!   delivery (so a backlog that tether drains after the backend stopped
//!   counts against it).
//! - Fixed load (`rate = Some(total)`): each connection sends `total / N`
//!   messages per second on its own timer; latency is measured on messages
//!   sent after a warm-up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::backend::Spec;
use crate::client::{Check, Tally, Watch};
use crate::fleet::{Fleet, Start};
use crate::procs::{Launcher, Setup};
use crate::stats::pct;
use crate::sys::{self, now_ns, Usage};

/// A trial whose clients receive nothing for this long after the backend
/// stopped sending is stopped and reported as stalled. Generous, because
/// CI runs the smoke on shared machines: a false stall would fail CI.
pub const STALL: Duration = Duration::from_secs(30);

/// Handshakes in flight at once while connecting clients.
pub const PARALLEL_CONNECTS: usize = 64;

/// One trial's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// `saturation` or `latency`.
    pub phase: &'static str,
    /// The setup.
    pub setup: Setup,
    /// Payload bytes per message.
    pub size: usize,
    /// Client connections.
    pub conns: usize,
    /// Offered load in % of pass-through saturation (0: saturation trial).
    pub load_pct: u32,
    /// Round number.
    pub run: usize,
    /// Offered messages/s, all connections (0: as fast as possible).
    pub offered: f64,
    /// The rate the load is a share of (latency trials): see [`TrialSpec::base`].
    pub base: f64,
    /// Delivered messages/s, all connections.
    pub rate: f64,
    /// Data messages delivered.
    pub delivered: u64,
    /// Seconds from `go` to the last delivery.
    pub secs: f64,
    /// Latency percentiles in µs (latency trials).
    pub p50_us: Option<f64>,
    /// p99 in µs.
    pub p99_us: Option<f64>,
    /// p99.9 in µs.
    pub p999_us: Option<f64>,
    /// Latency samples behind the percentiles.
    pub samples: usize,
    /// tether CPU (user + system) per delivered message, µs.
    pub tether_cpu_us: f64,
    /// Backend CPU per message, µs.
    pub backend_cpu_us: f64,
    /// Load-generator CPU per message, µs.
    pub client_cpu_us: f64,
    /// CPU time of tether, backend and clients ÷ (wall time × CPUs), %.
    pub busy_pct: f64,
    /// CPU time of every other process on the machine ÷ (wall time ×
    /// CPUs), %: how much someone else disturbed the trial.
    pub foreign_pct: f64,
    /// When the trial started (Unix seconds).
    pub at: u64,
    /// Earlier attempts discarded because other processes disturbed them.
    pub repeats: u32,
    /// tether peak RSS (VmHWM), MiB.
    pub tether_hwm_mib: f64,
    /// Bytes tether wrote to storage ÷ payload bytes delivered.
    pub write_amp: f64,
    /// Messages missing (see `Tally::gaps`).
    pub gaps: u64,
    /// Messages duplicated or out of order.
    pub dups: u64,
    /// Connections that did not reach the end marker.
    pub incomplete: u64,
    /// Nothing arrived for [`STALL`] and the trial was stopped.
    pub stalled: bool,
    /// The first error a connection reported.
    pub error: Option<String>,
}

impl Trial {
    /// Total CPU per message (tether + backend + clients), µs.
    pub fn total_cpu_us(&self) -> f64 {
        self.tether_cpu_us + self.backend_cpu_us + self.client_cpu_us
    }

    /// True if every connection got every message exactly once.
    pub fn clean(&self) -> bool {
        self.gaps == 0 && self.dups == 0 && self.incomplete == 0
    }
}

/// What the trial is.
#[derive(Debug, Clone, Copy)]
pub struct TrialSpec {
    /// Setup.
    pub setup: Setup,
    /// Payload bytes.
    pub size: usize,
    /// Connections.
    pub conns: usize,
    /// Offered messages/s in total, or `None` for saturation.
    pub rate: Option<f64>,
    /// Load label (% of `base`).
    pub load_pct: u32,
    /// The capacity estimate the load is a share of (0 for saturation).
    pub base: f64,
    /// A calibration run (reported apart).
    pub calibration: bool,
    /// How long the backend sends, ms.
    pub ms: u64,
    /// Round number.
    pub run: usize,
}

fn cpus() -> f64 {
    std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

/// Saturation runs keep at most ~64k messages / 32 MiB unacknowledged over
/// all connections (at least 8 per connection), acknowledged every quarter
/// window.
pub fn flow_window(size: usize, conns: usize) -> u64 {
    let total = (32u64 << 20).div_ceil(size as u64).min(65_536);
    (total / conns as u64).max(8)
}

/// Runs one trial.
pub async fn run(l: &Launcher, t: TrialSpec) -> anyhow::Result<Trial> {
    let backend = l.backend()?;
    let window = if t.rate.is_none() { flow_window(t.size, t.conns) } else { 0 };
    // Retention at twice the window: a client is never behind it, yet a
    // saturation run goes far past it (the steady state past retention).
    let trim = [("TETHER_JOURNAL_MAX_SESSION_FRAMES", (2 * window).max(1000).to_string())];
    let tether = match t.setup {
        Setup::Direct => None,
        Setup::Relay => Some(l.relay(&backend.url())?),
        Setup::JournalTrim => Some(l.tether(Setup::JournalTrim, &backend.url(), &trim)?),
        s => Some(l.tether(s, &backend.url(), &[])?),
    };
    let url = match &tether {
        Some(p) => p.url("/stream"),
        None => format!("{}/stream", backend.url()),
    };
    // Paced clients get a thread of their own (see `fleet`).
    let fleet = Fleet::connect(&url, t.conns, t.rate.is_some()).await?;
    let tether_pid = tether.as_ref().map(|p| p.pid);
    let me = std::process::id();
    let before = (tether_pid.map(sys::usage).unwrap_or_default(), sys::usage(backend.proc.pid), sys::usage(me));
    let machine_before = sys::machine_busy_ns();

    let per_conn = t.rate.map(|r| r / t.conns as f64).unwrap_or(0.0);
    // Sends on one connection are at least tick apart: 100 µs for a single
    // connection, longer with many (at most ~100,000 wake-ups/s in total).
    let tick_us = (t.conns as u64 * 10).clamp(100, 10_000);
    let spec = Spec { size: t.size, rate: per_conn, ms: t.ms, count: 0, tick_us, window };
    let go = spec.go();
    let t_go = now_ns();
    let warm = (t.ms / 5).min(500) * 1_000_000;
    let check = Check {
        stamped: t.setup.stamped(),
        record_from: if t.rate.is_some() { t_go + warm } else { u64::MAX },
        first_seq: 1,
        first_idx: 0,
        ack_every: window / 4,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(t.ms) + Duration::from_secs(300);
    let watch = Watch::default();
    watch.progress.store(t_go, Ordering::Relaxed);
    let mut running = fleet.start(Start { go, check, deadline, watch: watch.clone() });
    // Give up once the backend is done and nothing has arrived for STALL.
    let sending_ends = t_go + t.ms * 1_000_000;
    let mut stalled = false;
    while !running.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = now_ns();
        if now > sending_ends && now.saturating_sub(watch.progress.load(Ordering::Relaxed)) > STALL.as_nanos() as u64 {
            stalled = true;
            watch.cancel.cancel();
            break;
        }
    }
    let mut tallies: Vec<Tally> = running.finish().await?;
    let after = (tether_pid.map(sys::usage).unwrap_or_default(), sys::usage(backend.proc.pid), sys::usage(me));
    let machine_used = sys::machine_busy_ns().saturating_sub(machine_before);
    let wall = (now_ns() - t_go) as f64 / 1e9;
    let hwm = tether_pid.map(|p| sys::status_kib(p, "VmHWM")).unwrap_or(0);
    drop(tether);
    drop(backend);

    let delivered: u64 = tallies.iter().map(|x| x.data).sum();
    let t_end = tallies.iter().map(|x| x.last_ns).max().unwrap_or(t_go).max(t_go + 1);
    let secs = (t_end - t_go) as f64 / 1e9;
    let mut lat: Vec<u64> = tallies.iter_mut().flat_map(|x| std::mem::take(&mut x.lat)).collect();
    lat.sort_unstable();
    let q = |p: f64| (!lat.is_empty()).then(|| pct(&lat, p) as f64 / 1e3);
    let per_msg = |u: Usage| u.cpu_ns as f64 / 1e3 / delivered.max(1) as f64;
    let (tether_use, backend_use, client_use) =
        (after.0.since(&before.0), after.1.since(&before.1), after.2.since(&before.2));
    Ok(Trial {
        phase: match (t.calibration, t.rate) {
            (true, _) => "calibration",
            (false, Some(_)) => "latency",
            (false, None) => "saturation",
        },
        setup: t.setup,
        size: t.size,
        conns: t.conns,
        load_pct: t.load_pct,
        run: t.run,
        offered: t.rate.unwrap_or(0.0),
        base: t.base,
        rate: delivered as f64 / secs,
        delivered,
        secs,
        p50_us: q(0.50),
        p99_us: q(0.99),
        p999_us: q(0.999),
        samples: lat.len(),
        tether_cpu_us: per_msg(tether_use),
        backend_cpu_us: per_msg(backend_use),
        client_cpu_us: per_msg(client_use),
        busy_pct: (tether_use.cpu_ns + backend_use.cpu_ns + client_use.cpu_ns) as f64 / 1e9 / secs / cpus() * 100.0,
        foreign_pct: machine_used.saturating_sub(tether_use.cpu_ns + backend_use.cpu_ns + client_use.cpu_ns) as f64
            / 1e9
            / wall
            / cpus()
            * 100.0,
        at: sys::unix_secs(),
        repeats: 0,
        tether_hwm_mib: hwm as f64 / 1024.0,
        write_amp: tether_use.write_bytes as f64 / (delivered.max(1) * t.size as u64) as f64,
        gaps: tallies.iter().map(|x| x.gaps).sum(),
        dups: tallies.iter().map(|x| x.dups).sum(),
        incomplete: tallies.iter().filter(|x| !x.complete).count() as u64,
        stalled,
        error: tallies.iter().find_map(|x| x.error.clone()),
    })
}
