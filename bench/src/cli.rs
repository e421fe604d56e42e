//! The command line and what each command runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::procs::{Launcher, Setup, SETUPS};

/// Load harness for tether: throughput, latency, CPU, memory, replay and
/// resume, direct vs pass-through vs journaling.
#[derive(Debug, Parser)]
#[command(name = "tether-bench")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole matrix (about 30 minutes on 2 cores); Markdown on stdout.
    Full(Opts),
    /// Every setup and scenario once with tiny counts (seconds); fails on any
    /// missing or duplicated message. This is what CI runs.
    Smoke(Opts),
    /// One stream trial, for profiling (prints tether's pid).
    One(OneOpts),
    /// TLS on both sides ÷ plain, interleaved rounds; Markdown on stdout.
    Tls(crate::tls::TlsOpts),
    /// Scale-out: 3 replicas in cluster mode behind HAProxy (forwarded resume latency, throughput, reconnect storm).
    Cluster(crate::cluster::ClusterOpts),
    /// Client → backend throughput with the upstream guarantee (acks) ÷
    /// without, ÷ the relay, and ack latency; Markdown on stdout.
    Upstream(crate::upstream::UpOpts),
    /// Time to reopen N sessions' backend connections after tether is
    /// killed and restarted (`session.backend_on_restart = "eager"`), and
    /// the backend's peak connection rate; Markdown on stdout.
    Reopen(ReopenOpts),
    /// tether's peak RSS at `limits.max_sessions` with every session's ring
    /// full and no client reading (the memory budget's worst case);
    /// Markdown on stdout.
    Memory(crate::memory::MemoryOpts),
    /// Streams flat out for a minute (relay, tether with nothing trimmed,
    /// trimming, sessions expiring): the rate over the last 30 s, CPU per
    /// message, disk bytes written and compacted per payload byte, peak RSS
    /// and the journal's size (issue 23); Markdown on stdout.
    Sustained(crate::sustained::SustainedOpts),
    /// Internal: the backend producer.
    #[command(hide = true)]
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Internal: the reference relay (no journal, no stamps).
    #[command(hide = true)]
    Relay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long)]
        upstream: String,
    },
    /// Internal: tether itself (`tether run` flags), from the linked library.
    #[command(hide = true, disable_help_flag = true)]
    Tether {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args, Default)]
pub struct Opts {
    /// Rounds per cell; every figure is the median over them.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Payload sizes in bytes, e.g. 64,512,16384.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Connection counts, e.g. 1,100,1000.
    #[arg(long, value_delimiter = ',')]
    pub conns: Vec<usize>,
    /// Offered loads in % of the pass-through capacity for paced traffic, e.g. 10,25.
    #[arg(long, value_delimiter = ',')]
    pub loads: Vec<u32>,
    /// Setups: direct, relay, pass, journal-none, journal-interval, journal-always.
    #[arg(long, value_delimiter = ',')]
    pub setups: Vec<String>,
    /// Scenarios to run: stream, replay, resume, idle (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// How long the backend sends in a saturation trial, ms.
    #[arg(long)]
    pub sat_ms: Option<u64>,
    /// How long the backend sends in a fixed-load trial, ms.
    #[arg(long)]
    pub lat_ms: Option<u64>,
    /// Frames a resuming client is behind in the replay scenario.
    #[arg(long)]
    pub replay_frames: Option<u64>,
    /// Seconds of the resume-latency scenario.
    #[arg(long)]
    pub resume_secs: Option<f64>,
    /// Idle sessions to hold in the memory scenario.
    #[arg(long)]
    pub idle_sessions: Option<usize>,
    /// Attempts per trial when other processes use over 10 % of the CPUs
    /// during it (full: 3, waiting for a quiet machine in between; smoke: 1).
    #[arg(long)]
    pub attempts: Option<u32>,
    /// Which tether, where its journals go, and where the raw figures go.
    #[command(flatten)]
    pub tether: TetherArgs,
}

/// The options every multi-run command shares (`full`, `smoke`, `cluster`).
#[derive(Debug, Args, Default)]
pub struct TetherArgs {
    /// Where the journals go (default /var/tmp/tether-bench-<pid>; needs a real disk).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Run this `tether` binary instead of the library linked into tether-bench.
    #[arg(long)]
    pub tether_bin: Option<PathBuf>,
    /// Extra tether setting for every instance, e.g. TETHER_LIMITS_READ_BUFFER_BYTES=1024 (repeatable).
    #[arg(long, value_parser = parse_env)]
    pub tether_env: Vec<(String, String)>,
    /// Also write every run's raw figures to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `--data-root`, or /var/tmp/tether-bench-<pid>.
pub fn data_root(o: Option<PathBuf>) -> PathBuf {
    o.unwrap_or_else(|| PathBuf::from(format!("/var/tmp/tether-bench-{}", std::process::id())))
}

impl TetherArgs {
    /// A launcher for the chosen tether, with the extra settings.
    pub fn launcher(&self) -> anyhow::Result<Launcher> {
        Ok(Launcher::new(self.tether_bin.clone(), data_root(self.data_root.clone()))?.with_env(self.tether_env.clone()))
    }
}

#[derive(Debug, Args)]
pub struct OneOpts {
    /// Setup (see `full --help`).
    #[arg(long, default_value = "journal-none")]
    pub setup: String,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// How long the backend sends, ms.
    #[arg(long, default_value_t = 10_000)]
    pub ms: u64,
    /// Offered messages/s in total (default: saturation).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run this `tether` binary instead of the linked library.
    #[arg(long)]
    pub tether_bin: Option<PathBuf>,
    /// Extra tether setting, e.g. TETHER_JOURNAL_MAX_BATCH=256 (repeatable).
    #[arg(long, value_parser = parse_env)]
    pub tether_env: Vec<(String, String)>,
}

pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if k.starts_with("TETHER_") => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected TETHER_<SECTION>_<KEY>=<value>, got {s:?}")),
    }
}

/// What one invocation runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub runs: usize,
    pub sizes: Vec<usize>,
    pub conns: Vec<usize>,
    pub loads: Vec<u32>,
    pub setups: Vec<Setup>,
    pub parts: Vec<String>,
    pub sat_ms: u64,
    pub lat_ms: u64,
    pub replay_frames: u64,
    pub resume_secs: f64,
    pub resume_workers: usize,
    pub idle_sessions: usize,
    pub attempts: u32,
}

impl Plan {
    /// The documented matrix.
    pub fn full() -> Plan {
        Plan {
            runs: 5,
            sizes: vec![64, 512, 16384],
            conns: vec![1, 100, 1000],
            loads: vec![10, 25],
            setups: SETUPS.to_vec(),
            parts: ["stream", "replay", "resume", "idle"].map(String::from).to_vec(),
            sat_ms: 1500,
            lat_ms: 2000,
            replay_frames: 1_000_000,
            resume_secs: 6.0,
            resume_workers: 16,
            idle_sessions: 10_000,
            attempts: 3,
        }
    }

    /// Every part once with tiny counts, for CI.
    pub fn smoke() -> Plan {
        Plan {
            runs: 1,
            sizes: vec![64, 16384],
            conns: vec![1, 16],
            sat_ms: 150,
            lat_ms: 250,
            replay_frames: 20_000,
            resume_secs: 1.5,
            resume_workers: 4,
            idle_sessions: 200,
            attempts: 1,
            ..Plan::full()
        }
    }

    /// The plan with the command line's overrides.
    pub fn apply(mut self, o: &Opts) -> anyhow::Result<Plan> {
        if let Some(r) = o.runs {
            self.runs = r.max(1);
        }
        if !o.sizes.is_empty() {
            self.sizes.clone_from(&o.sizes);
        }
        if !o.conns.is_empty() {
            self.conns.clone_from(&o.conns);
        }
        if !o.loads.is_empty() {
            self.loads.clone_from(&o.loads);
        }
        if !o.setups.is_empty() {
            self.setups = o
                .setups
                .iter()
                .map(|s| Setup::parse(s).ok_or_else(|| anyhow::anyhow!("unknown setup {s:?}")))
                .collect::<anyhow::Result<_>>()?;
        }
        if !o.only.is_empty() {
            self.parts.clone_from(&o.only);
        }
        self.sat_ms = o.sat_ms.unwrap_or(self.sat_ms);
        self.lat_ms = o.lat_ms.unwrap_or(self.lat_ms);
        self.replay_frames = o.replay_frames.unwrap_or(self.replay_frames);
        self.resume_secs = o.resume_secs.unwrap_or(self.resume_secs);
        self.idle_sessions = o.idle_sessions.unwrap_or(self.idle_sessions);
        self.attempts = o.attempts.unwrap_or(self.attempts).max(1);
        Ok(self)
    }

    /// True if `part` (stream, replay, resume, idle) is to run.
    pub fn has(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

/// `tether-bench reopen` options.
#[derive(Debug, Args)]
pub struct ReopenOpts {
    /// Sessions open (each with a backend connection) when tether is killed.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Restart limits to try, each `DIALS_PER_SECOND/CONCURRENCY` (e.g.
    /// 200/32,2000/64): one trial each, the restart run with
    /// `session.restart_dials_per_second` and `restart_dial_concurrency` set
    /// to them. None: one trial with tether's defaults (or `--tether-env`).
    #[arg(long, value_delimiter = ',', value_parser = parse_limits)]
    pub limits: Vec<(u32, u32)>,
    /// Trials per setting.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Fail a trial if not every session is reopened this many seconds
    /// after the restart (default: 30 + 3 × sessions ÷ dials per second).
    #[arg(long)]
    pub bound_secs: Option<f64>,
    /// `session.linger` of both processes: long enough that no session
    /// expires while the others are opened.
    #[arg(long, default_value = "10m")]
    pub linger: String,
    /// The backend answers no upgrade for this many ms after the restart
    /// (a backend slow for a while; keep it under
    /// `server.backend_connect_timeout`, 5 s by default, or the dials fail).
    #[arg(long, default_value_t = 0)]
    pub backend_stall_ms: u64,
    /// Before each trial, wait up to this many seconds for a quiet machine.
    #[arg(long, default_value_t = 0)]
    pub wait_quiet: u64,
    /// Which tether, where its journals go, and where the raw figures go.
    /// `--tether-env` applies to both processes (and after `--limits`).
    #[command(flatten)]
    pub tether: TetherArgs,
}

pub fn parse_limits(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("expected DIALS_PER_SECOND/CONCURRENCY, e.g. 200/32, got {s:?}");
    let (r, c) = s.split_once('/').ok_or_else(bad)?;
    match (r.trim().parse(), c.trim().parse()) {
        (Ok(r), Ok(c)) if r > 0 && c > 0 => Ok((r, c)),
        _ => Err(bad()),
    }
}
