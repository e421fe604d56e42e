//! The scenarios beyond streams: replay of a long backlog, resume latency
//! against fresh-connection latency, and idle memory per session. All run
//! tether with prefix stamps and `journal.sync = none`.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures_util::SinkExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::backend::Spec;
use crate::client::{self, Check, Tally, Ws};
use crate::procs::{Launcher, Setup};
use crate::rawws;
use crate::stats::pct;
use crate::sys::{self, now_ns, Rng};

// ---------------------------------------------------------------- replay

/// One replay run.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRun {
    /// Round number.
    pub run: usize,
    /// Frames behind.
    pub frames: u64,
    /// Payload bytes per frame.
    pub size: usize,
    /// Frames/s tether journaled while no client was attached.
    pub fill_rate: f64,
    /// Frames/s delivered from the resume request to the last frame.
    pub replay_rate: f64,
    /// tether CPU per replayed frame, µs.
    pub tether_cpu_us: f64,
    /// Bytes tether wrote to storage while filling ÷ payload bytes.
    pub write_amp: f64,
    /// Missing frames.
    pub gaps: u64,
    /// Duplicated frames.
    pub dups: u64,
    /// The replay did not reach the end marker.
    pub incomplete: bool,
    /// Why, if it failed.
    pub error: Option<String>,
}

/// A client starts a session, asks the backend for `frames` frames and
/// leaves (close 1001: the session lingers). Once the journal holds them
/// all, it resumes from offset 0 and reads them back.
pub async fn replay(l: &Launcher, frames: u64, size: usize, run: usize) -> anyhow::Result<ReplayRun> {
    let backend = l.backend()?;
    let tether = l.tether(Setup::JournalNone, &backend.url(), &[])?;
    let url = tether.url("/replay");
    let (mut ws, _) = client::connect(&url, &[]).await?;
    let token = client::read_welcome(&mut ws).await?["session"].as_str().context("welcome without session")?.to_owned();
    let u0 = sys::usage(tether.pid);
    let t0 = now_ns();
    ws.send(Message::text(Spec { size, rate: 0.0, ms: 0, count: frames, tick_us: 0, window: 0 }.go())).await?;
    ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "back later".into() })).await?;
    drop(ws);
    let fill_deadline = Instant::now() + Duration::from_secs(900);
    while tether.metric("tether_journal_appends_total").await? < (frames + 1) as f64 {
        if Instant::now() > fill_deadline {
            return Err(anyhow!("the journal did not reach {frames} frames"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fill_secs = (now_ns() - t0) as f64 / 1e9;
    let u1 = sys::usage(tether.pid);

    let check = Check { stamped: true, record_from: u64::MAX, first_seq: 1, first_idx: 0, ack_every: 0 };
    let mut tally = Tally::new(&check);
    let t1 = now_ns();
    let headers = [("tether-session", token), ("tether-offset", "0".to_owned())];
    let deadline = Instant::now() + Duration::from_secs(600);
    // The raw reader: the tungstenite client took a whole CPU at 3 M frames/s.
    rawws::read_stream(&url, &headers, &mut tally, &check, deadline).await;
    let u2 = sys::usage(tether.pid);
    let secs = (tally.last_ns.max(t1 + 1) - t1) as f64 / 1e9;
    Ok(ReplayRun {
        run,
        frames,
        size,
        fill_rate: frames as f64 / fill_secs,
        replay_rate: tally.data as f64 / secs,
        tether_cpu_us: u2.since(&u1).cpu_ns as f64 / 1e3 / tally.data.max(1) as f64,
        write_amp: u1.since(&u0).write_bytes as f64 / (frames * size as u64) as f64,
        gaps: tally.gaps,
        dups: tally.dups,
        incomplete: !tally.complete || tally.data != frames,
        error: tally.error,
    })
}

// ---------------------------------------------------------------- resume

/// One resume-latency run.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeRun {
    /// Round number.
    pub run: usize,
    /// Fresh connection: upgrade request to first data frame, p50 µs.
    pub fresh_p50_us: f64,
    /// p99 µs.
    pub fresh_p99_us: f64,
    /// Resume: upgrade request to first replayed frame, p50 µs.
    pub resume_p50_us: f64,
    /// p99 µs.
    pub resume_p99_us: f64,
    /// Fresh samples.
    pub fresh_samples: usize,
    /// Resume samples.
    pub resume_samples: usize,
    /// Resumes with nothing to replay (not sampled).
    pub skipped: u64,
    /// Missing frames across resumes.
    pub gaps: u64,
    /// Duplicated frames across resumes.
    pub dups: u64,
    /// First error.
    pub error: Option<String>,
}

#[derive(Default)]
struct WorkerOut {
    samples: Vec<u64>,
    skipped: u64,
    gaps: u64,
    dups: u64,
    error: Option<String>,
}

/// Stream every session reads: 64 B at 100 messages/s, first one at once.
const AUTO: &str = "/auto/64/100";

/// `workers` clients each read a session for 50–150 ms, drop the TCP
/// connection, wait 30 ms and resume with their last seq; as many others
/// open fresh sessions, time the first frame and close. For `secs` seconds.
pub async fn resume(l: &Launcher, secs: f64, workers: usize, run: usize) -> anyhow::Result<ResumeRun> {
    let backend = l.backend()?;
    let tether = l.tether(Setup::JournalNone, &backend.url(), &[])?;
    let url = tether.url(AUTO);
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let resumers: Vec<_> = (0..workers).map(|_| tokio::spawn(resume_worker(url.clone(), stop))).collect();
    let fresh: Vec<_> = (0..workers).map(|_| tokio::spawn(fresh_worker(url.clone(), stop))).collect();
    let mut r = WorkerOut::default();
    let mut f = WorkerOut::default();
    for (handles, into) in [(resumers, &mut r), (fresh, &mut f)] {
        for h in handles {
            let out = h.await?;
            into.samples.extend(out.samples);
            into.skipped += out.skipped;
            into.gaps += out.gaps;
            into.dups += out.dups;
            if into.error.is_none() {
                into.error = out.error;
            }
        }
    }
    drop(tether);
    r.samples.sort_unstable();
    f.samples.sort_unstable();
    let q = |v: &[u64], p: f64| if v.is_empty() { f64::NAN } else { pct(v, p) as f64 / 1e3 };
    Ok(ResumeRun {
        run,
        fresh_p50_us: q(&f.samples, 0.5),
        fresh_p99_us: q(&f.samples, 0.99),
        resume_p50_us: q(&r.samples, 0.5),
        resume_p99_us: q(&r.samples, 0.99),
        fresh_samples: f.samples.len(),
        resume_samples: r.samples.len(),
        skipped: r.skipped,
        gaps: r.gaps + f.gaps,
        dups: r.dups + f.dups,
        error: r.error.or(f.error),
    })
}

/// Checks that a frame's backend index matches its seq (an `/auto/` stream
/// sends index `seq - 1`).
fn check_frame(tally: &mut Tally, out: &mut WorkerOut, seq: u64, idx: u64) {
    tally.check_seq(seq);
    if idx + 1 != seq {
        out.dups += 1;
        out.error.get_or_insert_with(|| format!("seq {seq} carries backend index {idx}"));
    }
}

async fn resume_worker(url: String, stop: Instant) -> WorkerOut {
    let mut out = WorkerOut::default();
    if let Err(e) = resume_loop(&url, stop, &mut out).await {
        out.error.get_or_insert(format!("{e:#}"));
    }
    out
}

async fn resume_loop(url: &str, stop: Instant, out: &mut WorkerOut) -> anyhow::Result<()> {
    let mut rng = Rng::new();
    let (mut ws, _) = client::connect(url, &[]).await?;
    let token = client::read_welcome(&mut ws).await?["session"].as_str().context("no session")?.to_owned();
    let check = Check { stamped: true, record_from: u64::MAX, first_seq: 1, first_idx: 0, ack_every: 0 };
    let mut tally = Tally::new(&check);
    loop {
        let until = Instant::now() + Duration::from_millis(50 + rng.next_u64() % 100);
        while let Some((seq, idx)) = client::next_data(&mut ws, until).await? {
            check_frame(&mut tally, out, seq, idx);
        }
        drop(ws);
        tokio::time::sleep(Duration::from_millis(30)).await;
        if Instant::now() >= stop {
            break;
        }
        let offset = tally.next_seq - 1;
        let headers = [("tether-session", token.clone()), ("tether-offset", offset.to_string())];
        let t0 = now_ns();
        let (mut next, _) = client::connect(url, &headers).await?;
        let welcome = client::read_welcome(&mut next).await?;
        let replays = !welcome["replay"].is_null();
        let (seq, idx) = client::next_data(&mut next, Instant::now() + Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow!("no frame after resuming"))?;
        let t1 = now_ns();
        check_frame(&mut tally, out, seq, idx);
        if replays {
            out.samples.push(t1 - t0);
        } else {
            out.skipped += 1;
        }
        ws = next;
    }
    out.gaps += tally.gaps;
    out.dups += tally.dups;
    Ok(())
}

async fn fresh_worker(url: String, stop: Instant) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut rng = Rng::new();
    while Instant::now() < stop {
        match fresh_once(&url, &mut out).await {
            Ok(mut ws) => {
                let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
            }
            Err(e) => {
                out.error.get_or_insert(format!("{e:#}"));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(80 + rng.next_u64() % 100)).await;
    }
    out
}

async fn fresh_once(url: &str, out: &mut WorkerOut) -> anyhow::Result<Ws> {
    let t0 = now_ns();
    let (mut ws, _) = client::connect(url, &[]).await?;
    client::read_welcome(&mut ws).await?;
    let (seq, idx) = client::next_data(&mut ws, Instant::now() + Duration::from_secs(10))
        .await?
        .ok_or_else(|| anyhow!("no first frame"))?;
    out.samples.push(now_ns() - t0);
    let mut tally =
        Tally::new(&Check { stamped: true, record_from: u64::MAX, first_seq: 1, first_idx: 0, ack_every: 0 });
    check_frame(&mut tally, out, seq, idx);
    out.gaps += tally.gaps;
    out.dups += tally.dups;
    Ok(ws)
}

// ---------------------------------------------------------------- idle

/// One idle-memory run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    /// Round number.
    pub run: usize,
    /// Idle sessions held at the end.
    pub sessions: usize,
    /// Sessions opened before the baseline.
    pub warm: usize,
    /// tether RSS at the baseline, KiB.
    pub rss_base_kib: u64,
    /// tether RSS with every session open, KiB.
    pub rss_kib: u64,
    /// RSS growth per session after the baseline, bytes.
    pub per_session_bytes: f64,
    /// tether's open-files limit (each session holds two sockets).
    pub nofile: u64,
}

/// Opens `warm` sessions, takes tether's RSS as the baseline, opens up to
/// `target` in total (fewer if tether's open-files limit cannot hold two
/// sockets for each), and reports RSS growth per added session. Every
/// session is attached (welcome received) and idle.
pub async fn idle(l: &Launcher, target: usize, run: usize) -> anyhow::Result<IdleRun> {
    let backend = l.backend()?;
    let tether = l.tether(Setup::JournalNone, &backend.url(), &[])?;
    let url = tether.url("/idle");
    let warm = 100.min(target / 2).max(1);
    let mut held = client::connect_many(&url, warm, 64, true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base_kib = sys::status_kib(tether.pid, "VmRSS");
    let nofile = sys::nofile_limit(tether.pid);
    let room = (nofile as usize).saturating_sub(sys::open_fds(tether.pid) + 64) / 2;
    let more = target.saturating_sub(warm).min(room);
    held.extend(client::connect_many(&url, more, 128, true).await?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_kib = sys::status_kib(tether.pid, "VmRSS");
    let sessions = held.len();
    drop(held);
    drop(tether);
    Ok(IdleRun {
        run,
        sessions,
        warm,
        rss_base_kib,
        rss_kib,
        per_session_bytes: rss_kib.saturating_sub(rss_base_kib) as f64 * 1024.0 / more.max(1) as f64,
        nofile,
    })
}
