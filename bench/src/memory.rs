//! `tether-bench memory`: tether's peak RSS at `limits.max_sessions` with
//! every session's ring full and no client reading — the worst case the
//! memory budget in docs/OPERATIONS.md is for.
//!
//! tether runs with its own defaults (the harness's usual overrides of the
//! session and retention limits are put back). N clients each open a
//! session, read the welcome, send the backend a `go` for `count` messages
//! of `size` bytes and then never read again. The backend sends them flat
//! out; tether journals every one (`slow_consumer = "gap"`), keeps the
//! newest `ring_bytes` of each session in its ring, and writes to each
//! client until the kernel's socket buffers are full. Once tether has
//! counted every frame (`tether_frames_total{direction="downstream"}`),
//! the harness waits `--settle-secs` and reads tether's peak (VmHWM) and
//! current RSS, and the kernel's TCP buffer memory (which a container's
//! memory cgroup is charged for, too).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::backend::Spec;
use crate::cli::TetherArgs;
use crate::client;
use crate::procs::Setup;
use crate::stats::thousands;
use crate::sys;

/// `tether-bench memory` options.
#[derive(Debug, Args)]
pub struct MemoryOpts {
    /// Sessions (tether's default `limits.max_sessions`).
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Bytes the backend sends each session (more than `limits.ring_bytes`,
    /// 64 KiB, so every ring is full, and than the kernel buffers of a
    /// client that does not read).
    #[arg(long, default_value_t = 256 * 1024)]
    pub per_session_bytes: usize,
    /// Seconds to wait after the last frame before reading the RSS.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Give up if the frames are not all in after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub bound_secs: u64,
    /// Which tether, where its journal goes.
    #[command(flatten)]
    pub tether: TetherArgs,
}

/// tether's defaults for what the harness overrides (config/tether.toml).
const DEFAULTS: &[(&str, &str)] = &[
    ("TETHER_LIMITS_MAX_SESSIONS", "10000"),
    ("TETHER_JOURNAL_MAX_SESSION_FRAMES", "100000"),
    ("TETHER_JOURNAL_MAX_SESSION_BYTES", "67108864"),
    ("TETHER_JOURNAL_DISK_BUDGET_BYTES", "1073741824"),
];

/// Runs the measurement and prints a Markdown report.
pub fn main(o: MemoryOpts) -> anyhow::Result<bool> {
    if o.sessions == 0 || o.size == 0 || o.per_session_bytes < o.size {
        bail!("--sessions, --size and --per-session-bytes must be positive, and a message must fit");
    }
    // tether holds two sockets per session (the harness and the backend
    // one each); raise the hard limit too where that is allowed.
    let want = (2 * o.sessions + 1024) as u64;
    let nofile = raise_nofile_to(want);
    if nofile < want {
        bail!("open-files limit {nofile} is too low for {} sessions (needs {want})", o.sessions);
    }
    eprintln!("tether-bench memory: {}", sys::machine(nofile));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(&o))
}

async fn run(o: &MemoryOpts) -> anyhow::Result<bool> {
    let l = o.tether.launcher()?;
    let backend = l.backend()?;
    let mut extra: Vec<(&str, String)> = DEFAULTS.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    // At least as many sessions as asked for may be open.
    extra[0].1 = o.sessions.max(10_000).to_string();
    let tether = l.tether(Setup::JournalNone, &backend.url(), &extra)?;
    let rss_start = sys::status_kib(tether.pid, "VmRSS");
    let t0 = Instant::now();
    let mut held = client::connect_many(&tether.url("/memory"), o.sessions, 128, true).await?;
    let open_secs = t0.elapsed().as_secs_f64();
    let rss_open = sys::status_kib(tether.pid, "VmRSS");
    let count = (o.per_session_bytes / o.size) as u64;
    let go = Spec { size: o.size, rate: 0.0, ms: 0, count, tick_us: 1000, window: 0 }.go();
    for ws in &mut held {
        ws.send(Message::text(go.clone())).await?;
    }
    let want = (count * o.sessions as u64) as f64;
    let sample = "tether_frames_total{direction=\"downstream\"}";
    let bound = Instant::now() + Duration::from_secs(o.bound_secs);
    loop {
        let got = tether.metric(sample).await?;
        if got >= want {
            break;
        }
        if Instant::now() > bound {
            return Err(anyhow!("only {got} of {want} frames after {} s", o.bound_secs));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fill_secs = t0.elapsed().as_secs_f64() - open_secs;
    tokio::time::sleep(Duration::from_secs(o.settle_secs)).await;
    let peak = sys::status_kib(tether.pid, "VmHWM");
    let rss = sys::status_kib(tether.pid, "VmRSS");
    let tcp_kib = tcp_buffer_kib();
    let sessions = tether.metric("tether_sessions{state=\"attached\"}").await.unwrap_or(f64::NAN);
    drop(held);
    drop(tether);

    let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
    let rings = o.sessions as f64 * 64.0 / 1024.0;
    println!("## tether memory at {} sessions, every ring full, no client reading\n", thousands(o.sessions as f64));
    println!("| figure | value |\n| --- | --- |");
    println!("| sessions (attached at the end) | {} ({sessions}) |", thousands(o.sessions as f64));
    println!("| backend → each session | {} × {} B = {} KiB |", count, o.size, count as usize * o.size / 1024);
    println!("| RSS at start | {} |", mib(rss_start));
    println!("| RSS with the sessions open, idle | {} |", mib(rss_open));
    println!("| **peak RSS (VmHWM)** | **{}** |", mib(peak));
    println!("| RSS at the end | {} |", mib(rss));
    println!("| rings at `ring_bytes` 64 KiB (payload only) | {rings:.0} MiB |");
    println!("| kernel TCP buffers, whole machine (`/proc/net/sockstat`) | {} |", mib(tcp_kib));
    println!("| time to open / to deliver every frame | {open_secs:.1} s / {fill_secs:.1} s |");
    Ok(true)
}

/// Raises the open-files limit (soft and, as root, hard) to `want`.
fn raise_nofile_to(want: u64) -> u64 {
    let have = sys::raise_nofile();
    if have >= want {
        return have;
    }
    let lim = libc::rlimit { rlim_cur: want, rlim_max: want };
    // SAFETY: setrlimit on a valid struct; failing leaves the limit as it was.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return want;
    }
    have
}

/// Pages of TCP socket buffers in use on the machine, in KiB.
fn tcp_buffer_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4
}
