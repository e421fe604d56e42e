//! `tether check`: checks a running tether deployment from outside
//! (docs/CHECK.md). Each session slot goes through a cutting proxy of its
//! own on 127.0.0.1 ([`proxy`]); [`session`] breaks and resumes its
//! connections; [`judge`] holds the verdict on every frame; [`report`]
//! prints it.

pub mod checks;
pub mod connect;
pub mod frames;
pub mod judge;
pub mod opts;
pub mod proxy;
pub mod report;
pub mod session;
pub mod target;
pub mod token;
pub mod upstream;
pub mod wire;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use opts::Opts;
pub use report::Report;

use checks::{Checks, Counts};
use target::{Target, TargetError};

/// Why the check could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The URL or the TLS options.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// An option out of range.
    #[error("{0}")]
    Usage(String),
    /// Not one session could be opened.
    #[error("cannot check {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The first slot's failure.
        why: String,
    },
}

/// What every slot shares.
pub struct Ctx {
    /// The options.
    pub opts: Opts,
    /// The deployment.
    pub target: Target,
    /// When the fault phase ends.
    pub fault_until: Instant,
    /// Live figures for the progress line.
    pub progress: Progress,
    /// When any slot saw the deployment disturbed (a drain, a failed
    /// connection, a retryable refusal): a takeover whose older connection
    /// ends without a close frame (or with 1012) near such a moment was cut
    /// by it.
    pub disturbed: std::sync::Mutex<Vec<Instant>>,
}

impl Ctx {
    /// Notes a disturbance now.
    pub fn disturbed(&self) {
        self.disturbed.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
    }
}

/// How close to a disturbance a takeover without 4001 is excused.
const NEAR: Duration = Duration::from_secs(5);

/// Live figures, summed over the slots.
#[derive(Debug, Default)]
pub struct Progress {
    /// Data frames received.
    pub frames: AtomicU64,
    /// Connections that got a welcome.
    pub connections: AtomicU64,
    /// Successful resumes.
    pub resumes: AtomicU64,
    /// Failed observations.
    pub failures: AtomicU64,
}

/// Runs the check and returns its report.
pub async fn run(opts: Opts) -> Result<Report, CheckError> {
    if opts.sessions == 0 || opts.sessions > 10_000 {
        return Err(CheckError::Usage("--sessions must be between 1 and 10000".into()));
    }
    if opts.faults.is_empty() || opts.fault_interval.is_zero() || opts.send_interval.is_zero() {
        return Err(CheckError::Usage(
            "--faults, --fault-interval and --send-interval must not be empty or zero".into(),
        ));
    }
    let target = Target::new(&opts)?;
    let seed = opts.seed.unwrap_or_else(|| std::time::UNIX_EPOCH.elapsed().map_or(1, |d| d.as_nanos() as u64));
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        fault_until: started + opts.duration,
        opts: opts.clone(),
        target,
        progress: Progress::default(),
        disturbed: std::sync::Mutex::default(),
    });
    let ticker = std::io::stderr().is_terminal().then(|| tokio::spawn(progress(ctx.clone(), started)));
    let slots: Vec<_> = (0..opts.sessions).map(|i| tokio::spawn(session::run(ctx.clone(), i, seed))).collect();
    let (mut checks, mut counts, mut latencies, mut unreachable, mut opened) =
        (Checks::default(), Counts::default(), Vec::new(), None, false);
    for s in slots {
        let Ok(r) = s.await else { continue };
        opened |= r.judge.counts.sessions > 0;
        if unreachable.is_none() {
            unreachable = r.unreachable;
        }
        let (mut slot_checks, mut slot_counts) = (r.judge.checks, r.judge.counts);
        let disturbed = ctx.disturbed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (at, why) in r.takeovers {
            if disturbed.iter().any(|d| d.max(&at).duration_since(*d.min(&at)) <= NEAR) {
                Counts::bump(&mut slot_counts.interruptions, "takeover cut by a disturbance");
            } else {
                slot_checks.fail(checks::Check::Outcomes, why);
            }
        }
        checks.merge(slot_checks);
        counts.merge(slot_counts);
        latencies.extend(r.latencies);
    }
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[2K");
    }
    if !opened {
        let why = unreachable.unwrap_or_else(|| "no session could be opened".into());
        return Err(CheckError::Unreachable { url: opts.url.clone(), why });
    }
    Ok(Report::new(&opts, seed, started.elapsed(), checks, counts, latencies))
}

/// The live progress line on stderr (only when it is a terminal).
async fn progress(ctx: Arc<Ctx>, started: Instant) {
    let p = &ctx.progress;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let phase = if Instant::now() < ctx.fault_until { "faults" } else { "verifying" };
        eprint!(
            "\r\x1b[2K[{:>5.1}s/{}s {phase}] {} sessions, {} connections, {} frames, {} resumes, {} failures",
            started.elapsed().as_secs_f64(),
            ctx.opts.duration.as_secs(),
            ctx.opts.sessions,
            p.connections.load(Ordering::Relaxed),
            p.frames.load(Ordering::Relaxed),
            p.resumes.load(Ordering::Relaxed),
            p.failures.load(Ordering::Relaxed),
        );
    }
}
