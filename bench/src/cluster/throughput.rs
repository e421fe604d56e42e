//! The throughput part: sessions owned by one replica, resumed at the owner
//! or forwarded from another replica, then streamed at saturation.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::opts::ClusterOpts;
use super::rig::Rig;
use super::session::{outcome, resume};
use crate::backend::Spec;
use crate::client::{self, Check, Watch, Ws};
use crate::sys::now_ns;

/// One saturation trial.
#[derive(Debug, Clone, Serialize)]
pub struct TputRun {
    /// Round number.
    pub run: usize,
    /// Resumed at another replica (true) or at the owner.
    pub forwarded: bool,
    /// Payload bytes.
    pub size: usize,
    /// Connections.
    pub conns: usize,
    /// Delivered messages/s, all connections.
    pub rate: f64,
    /// CPU of the three tether processes per message, µs.
    pub tether_cpu_us: f64,
    /// Missing messages.
    pub gaps: u64,
    /// Duplicated messages.
    pub dups: u64,
    /// Connections that did not reach the end marker.
    pub incomplete: u64,
    /// CPU share other processes on the machine used meanwhile, %.
    pub foreign_pct: f64,
    /// First error.
    pub error: Option<String>,
}

/// `conns` sessions opened at replica 0 and left (the sessions linger);
/// each then resumes at replica 1 (forwarded) or replica 0 and asks the
/// backend for a saturation stream with a window of unacknowledged messages,
/// as `stream.rs` does.
pub(super) async fn tput_trial(rig: &Rig, o: &ClusterOpts, forwarded: bool, run: usize) -> anyhow::Result<TputRun> {
    let owner = rig.nodes[0].url("/stream");
    let target = rig.nodes[usize::from(forwarded)].url("/stream");
    let opened = client::connect_many(&owner, o.conns, 64, false).await?;
    let mut tokens = Vec::with_capacity(o.conns);
    for mut ws in opened {
        tokens.push(client::read_welcome(&mut ws).await?["session"].as_str().context("no session")?.to_owned());
        ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "back soon".into() })).await?;
    }
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(tokens)
        .map(|token| {
            let target = target.clone();
            async move {
                let (ws, welcome) = resume(&target, &token, 0).await?;
                match outcome(&welcome) {
                    "resumed" => Ok(ws),
                    other => Err(anyhow!("resume outcome {other}: {welcome}")),
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let clients: Vec<Ws> = results.into_iter().collect::<anyhow::Result<_>>()?;
    let total = (32u64 << 20).div_ceil(o.size as u64).min(65_536);
    let window = (total / o.conns as u64).max(8);
    let go = Spec { size: o.size, rate: 0.0, ms: o.sat_ms, count: 0, tick_us: 100, window }.go();
    let check = Check { stamped: true, record_from: u64::MAX, first_seq: 1, first_idx: 0, ack_every: window / 4 };
    let cpu0 = rig.tether_cpu_ns();
    let busy = rig.busy();
    let t_go = now_ns();
    let deadline = Instant::now() + Duration::from_millis(o.sat_ms) + Duration::from_secs(120);
    let watch = Watch::default();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(client::run_stream(ws, go.clone(), check, deadline, watch.clone())))
        .collect();
    let mut tallies = Vec::with_capacity(handles.len());
    for h in handles {
        tallies.push(h.await?);
    }
    let cpu = rig.tether_cpu_ns().saturating_sub(cpu0);
    let delivered: u64 = tallies.iter().map(|t| t.data).sum();
    let t_end = tallies.iter().map(|t| t.last_ns).max().unwrap_or(t_go).max(t_go + 1);
    Ok(TputRun {
        run,
        forwarded,
        size: o.size,
        conns: o.conns,
        rate: delivered as f64 / ((t_end - t_go) as f64 / 1e9),
        tether_cpu_us: cpu as f64 / 1e3 / delivered.max(1) as f64,
        gaps: tallies.iter().map(|t| t.gaps).sum(),
        dups: tallies.iter().map(|t| t.dups).sum(),
        incomplete: tallies.iter().filter(|t| !t.complete).count() as u64,
        foreign_pct: rig.foreign_pct(busy, now_ns() - t_go),
        error: tallies.iter().find_map(|t| t.error.clone()),
    })
}
