//! The storm part: sessions opened through HAProxy all drop their TCP
//! connections at once and resume through HAProxy; every message checked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::opts::ClusterOpts;
use super::rig::Rig;
use super::session::{check_frame, new_tally, outcome, resume};
use crate::client::{self, Tally, Ws};
use crate::stats::pct;
use crate::sys::{self, now_ns, Rng};

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

pub(super) async fn storm(rig: &Rig, o: &ClusterOpts) -> anyhow::Result<StormRun> {
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
