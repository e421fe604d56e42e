//! The latency part: resume latency at the session's owner against a
//! resume forwarded from another replica.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use serde::Serialize;
use tokio::time::Instant;

use super::opts::REPLICAS;
use super::rig::Rig;
use super::session::{check_frame, new_tally, outcome, resume};
use crate::client;
use crate::stats::pct;
use crate::sys::{now_ns, Rng};

/// One resume-latency round.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// Round number.
    pub run: usize,
    /// Resume at the owner: upgrade request to first replayed frame, p50 µs.
    pub owner_p50_us: f64,
    /// p99 µs.
    pub owner_p99_us: f64,
    /// Resume at another replica, forwarded to the owner, p50 µs.
    pub fwd_p50_us: f64,
    /// p99 µs.
    pub fwd_p99_us: f64,
    /// Samples at the owner.
    pub owner_samples: usize,
    /// Forwarded samples.
    pub fwd_samples: usize,
    /// Missing frames.
    pub gaps: u64,
    /// Duplicated frames.
    pub dups: u64,
    /// CPU share other processes on the machine used meanwhile, %.
    pub foreign_pct: f64,
    /// First error.
    pub error: Option<String>,
}

#[derive(Default)]
struct LatOut {
    owner: Vec<u64>,
    fwd: Vec<u64>,
    gaps: u64,
    dups: u64,
    error: Option<String>,
}

pub(super) async fn latency_round(rig: &Rig, secs: f64, workers: usize, run: usize) -> anyhow::Result<LatencyRun> {
    let (busy, t0) = (rig.busy(), now_ns());
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let urls: Vec<String> = rig.nodes.iter().map(|n| n.url("/auto/64/100")).collect();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let urls = urls.clone();
            tokio::spawn(async move {
                let mut out = LatOut::default();
                if let Err(e) = latency_worker(&urls, w % REPLICAS, stop, &mut out).await {
                    out.error.get_or_insert(format!("{e:#}"));
                }
                out
            })
        })
        .collect();
    let mut all = LatOut::default();
    for h in handles {
        let o = h.await?;
        all.owner.extend(o.owner);
        all.fwd.extend(o.fwd);
        all.gaps += o.gaps;
        all.dups += o.dups;
        if all.error.is_none() {
            all.error = o.error;
        }
    }
    all.owner.sort_unstable();
    all.fwd.sort_unstable();
    let q = |v: &[u64], p: f64| if v.is_empty() { f64::NAN } else { pct(v, p) as f64 / 1e3 };
    Ok(LatencyRun {
        run,
        owner_p50_us: q(&all.owner, 0.5),
        owner_p99_us: q(&all.owner, 0.99),
        fwd_p50_us: q(&all.fwd, 0.5),
        fwd_p99_us: q(&all.fwd, 0.99),
        owner_samples: all.owner.len(),
        fwd_samples: all.fwd.len(),
        gaps: all.gaps,
        dups: all.dups,
        foreign_pct: rig.foreign_pct(busy, now_ns() - t0),
        error: all.error,
    })
}

/// Opens a session at replica `owner`, then reads for 50–150 ms, drops the
/// TCP connection, waits 30 ms and resumes: every other time at the owner,
/// else at one of the two other replicas (forwarded).
async fn latency_worker(urls: &[String], owner: usize, stop: Instant, out: &mut LatOut) -> anyhow::Result<()> {
    let mut rng = Rng::new();
    let (mut ws, _) = client::connect(&urls[owner], &[]).await?;
    let token = client::read_welcome(&mut ws).await?["session"].as_str().context("no session")?.to_owned();
    let mut tally = new_tally();
    let mut i = 0u64;
    loop {
        let until = Instant::now() + Duration::from_millis(50 + rng.next_u64() % 100);
        while let Some((seq, idx)) = client::next_data(&mut ws, until).await? {
            check_frame(&mut tally, seq, idx);
        }
        drop(ws);
        tokio::time::sleep(Duration::from_millis(30)).await;
        if Instant::now() >= stop {
            break;
        }
        let forwarded = i % 2 == 1;
        let target = if forwarded { (owner + 1 + (i / 2 % 2) as usize) % REPLICAS } else { owner };
        i += 1;
        let t0 = now_ns();
        let (mut next, welcome) = resume(&urls[target], &token, tally.next_seq - 1).await?;
        if outcome(&welcome) != "resumed" {
            tally.gaps += 1;
            return Err(anyhow!("resume at t{target} (owner t{owner}): outcome {welcome}"));
        }
        let replays = !welcome["replay"].is_null();
        let (seq, idx) = client::next_data(&mut next, Instant::now() + Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow!("no frame after resuming"))?;
        let t1 = now_ns();
        check_frame(&mut tally, seq, idx);
        if replays {
            if forwarded { &mut out.fwd } else { &mut out.owner }.push(t1 - t0);
        }
        ws = next;
    }
    out.gaps += tally.gaps;
    out.dups += tally.dups;
    if tally.error.is_some() {
        out.error = tally.error;
    }
    Ok(())
}
