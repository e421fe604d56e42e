//! `tether-bench cluster`'s options, and what every part shares: the
//! replica count. Its own module, so that the parts depend on it and never
//! on the module that runs them.

use std::path::PathBuf;

use clap::Args;

use crate::cli::TetherArgs;

/// Replicas in every part.
pub const REPLICAS: usize = 3;

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
    /// Whether `--only` selects `part` (all parts when it is empty).
    pub(super) fn has(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}
