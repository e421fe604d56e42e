//! One client connection of `tether-bench upstream`: it sends the backend's
//! sink ([`crate::sink`]) data messages as fast as the socket takes them
//! until the measuring window closes, then `end`, and reads the backend's
//! count. With acks (the upstream guarantee, docs/PROTOCOL.md §12) every
//! message carries its seq stamp, at most `window` messages are sent and
//! not yet acked, and each `up_ack` gives an ack latency for every message
//! it covers: from the start of the batch the message was handed to the
//! socket library in (one clock read per batch, not per message) to
//! reading the ack. The sender and the ack reader are polled by the same
//! task (`join!`), as one application connection would be.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::sink::{self, Got};
use crate::sys::now_ns;

/// Messages handed to the socket between two flushes.
const BATCH: usize = 32;

/// What one connection does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Payload bytes per message (without the stamp).
    pub size: usize,
    /// Opted in to the upstream guarantee: stamps, acks, a window.
    pub acked: bool,
    /// Most messages sent and not yet acked (with acks).
    pub window: u64,
    /// Messages per second on this connection; 0: as fast as possible.
    pub rate: f64,
    /// The measuring window, `CLOCK_MONOTONIC` ns; sending stops at `to_ns`.
    pub from_ns: u64,
    /// End of the window.
    pub to_ns: u64,
    /// Give up (and fail) if the connection is not done by then.
    pub deadline: Instant,
}

/// What one connection saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Data messages sent.
    pub sent: u64,
    /// The backend's count.
    pub got: Option<Got>,
    /// Ack latencies (ns) of the messages sent inside the window, as
    /// (latency, messages): the messages of one batch covered by one ack
    /// share a latency, and one entry per message was a tenth of the
    /// clients' CPU at 64 B.
    pub lat: Vec<(u64, u64)>,
    /// `up_ack` frames received.
    pub acks: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Opens a connection to `url` (through tether if `tether`: its welcome is
/// read, and with `acked` the connection opts in and the welcome's `up`
/// object must say a fresh session).
pub async fn open(url: &str, tether: bool, acked: bool) -> anyhow::Result<Ws> {
    let headers: Vec<(&str, String)> = if acked { vec![("Tether-Up", "seq".to_owned())] } else { Vec::new() };
    let (mut ws, _) = client::connect(url, &headers).await?;
    if tether {
        let w = client::read_welcome(&mut ws).await?;
        let up = &w["up"];
        if acked && (up["next"] != 1 || up["acked"] != 0) {
            bail!("welcome of a fresh opted-in session: expected up next 1, acked 0, got {up}");
        }
        if !acked && !up.is_null() {
            bail!("welcome of a connection that did not opt in carries up: {up}");
        }
    }
    Ok(ws)
}

/// State the sender and the ack reader share.
struct Shared {
    /// Highest seq acked.
    acked: AtomicU64,
    /// Highest seq handed to the socket.
    sent: AtomicU64,
    /// The seq of `end` once it is known (0 before).
    last: AtomicU64,
    /// When each seq in the window was handed to the socket (`seq & mask`).
    slots: Box<[AtomicU64]>,
    mask: u64,
    /// The reader stopped (it wakes the sender, which must not wait on).
    stopped: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

/// Runs one connection to the end and closes it.
pub async fn run(ws: Ws, plan: Plan, pad: std::sync::Arc<str>) -> Outcome {
    let n = if plan.acked { (plan.window + 2).next_power_of_two() } else { 1 };
    let sh = Shared {
        acked: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        last: AtomicU64::new(0),
        slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        mask: n - 1,
        stopped: Default::default(),
        wake: tokio::sync::Notify::new(),
    };
    let (mut tx, mut rx) = ws.split();
    let reading = async {
        let r = read(&mut rx, &plan, &sh).await;
        sh.stopped.store(true, Ordering::Release);
        sh.wake.notify_one();
        r
    };
    let (sent, read) = tokio::join!(send(&mut tx, &plan, &sh, &pad), reading);
    let mut out = Outcome::default();
    match sent {
        Ok(n) => out.sent = n,
        Err(e) => out.error = Some(format!("sending: {e:#}")),
    }
    match read {
        Ok((got, lat, acks)) => (out.got, out.lat, out.acks) = (Some(got), lat, acks),
        Err(e) => {
            out.error.get_or_insert_with(|| format!("reading: {e:#}"));
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(Message::Close(None))).await;
    out
}

/// Sends `sink`, data messages until `to_ns`, then `end`; returns the
/// number of data messages.
async fn send(tx: &mut SplitSink<Ws, Message>, plan: &Plan, sh: &Shared, pad: &str) -> anyhow::Result<u64> {
    let mut seq = 1u64;
    let start = sink::start(plan.from_ns, plan.to_ns);
    let start = if plan.acked { format!("1:{start}") } else { start };
    sh.sent.store(1, Ordering::Release);
    tx.feed(Message::text(start)).await?;
    let mut idx = 0u64;
    let t0 = now_ns();
    while now_ns() < plan.to_ns {
        // Saturation: a batch per flush. Paced: what is due by now, then a
        // 1 ms sleep (tokio's timer granularity).
        let mut batch_at = now_ns();
        let due = if plan.rate > 0.0 { ((batch_at - t0) as f64 * plan.rate / 1e9) as u64 } else { idx + BATCH as u64 };
        while idx < due {
            seq += 1;
            if plan.acked {
                if seq > sh.acked.load(Ordering::Acquire) + plan.window {
                    tx.flush().await?;
                    while seq > sh.acked.load(Ordering::Acquire) + plan.window {
                        if sh.stopped.load(Ordering::Acquire) {
                            bail!("the reader stopped with seq {seq} waiting for the window");
                        }
                        tokio::time::timeout_at(plan.deadline, sh.wake.notified())
                            .await
                            .map_err(|_| anyhow!("no ack for seq {} before the deadline", seq - plan.window))?;
                    }
                    batch_at = now_ns();
                }
                sh.slots[(seq & sh.mask) as usize].store(batch_at, Ordering::Relaxed);
                sh.sent.store(seq, Ordering::Release);
            }
            tx.feed(Message::text(sink::payload(plan.acked.then_some(seq), idx, plan.size, pad))).await?;
            idx += 1;
        }
        tx.flush().await?;
        if plan.rate > 0.0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    seq += 1;
    // After the window: its ack latency is not recorded.
    sh.slots[(seq & sh.mask) as usize].store(now_ns(), Ordering::Relaxed);
    sh.last.store(seq, Ordering::Release);
    sh.sent.store(seq, Ordering::Release);
    let end = sink::end(idx);
    tx.send(Message::text(if plan.acked { format!("{seq}:{end}") } else { end })).await?;
    Ok(idx)
}

/// Reads acks and the backend's count until both are in: the count, and
/// with acks an ack of `end`. Fails on an ack that goes back, covers a
/// message not sent, or arrives on a connection that did not opt in.
async fn read(rx: &mut SplitStream<Ws>, plan: &Plan, sh: &Shared) -> anyhow::Result<(Got, Vec<(u64, u64)>, u64)> {
    let mut lat = Vec::new();
    let mut acks = 0u64;
    let mut got = None;
    let mut acked = 0u64;
    loop {
        if let Some(g) = got {
            let last = sh.last.load(Ordering::Acquire);
            if !plan.acked || (last > 0 && acked == last) {
                return Ok((g, lat, acks));
            }
        }
        let msg = tokio::time::timeout_at(plan.deadline, rx.next())
            .await
            .map_err(|_| anyhow!("deadline passed: backend count {got:?}, acked {acked}"))?
            .ok_or_else(|| anyhow!("connection ended (backend count {got:?}, acked {acked})"))?
            .context("read failed")?;
        let t = match msg {
            Message::Text(t) => t,
            Message::Close(f) => bail!("closed by the other side: {f:?} (backend count {got:?}, acked {acked})"),
            _ => continue,
        };
        if let Some(body) = t.strip_prefix('#') {
            let v: serde_json::Value = serde_json::from_str(body)?;
            if v["type"] != "up_ack" {
                if v["type"] == "gap" || v["type"] == "end" {
                    bail!("unexpected control frame {body:.120}");
                }
                continue;
            }
            let w = v["seq"].as_u64().ok_or_else(|| anyhow!("up_ack without a seq: {body:.80}"))?;
            if !plan.acked {
                bail!("up_ack on a connection that did not opt in");
            }
            if w < acked || w > sh.sent.load(Ordering::Acquire) {
                bail!("up_ack {w} after {acked}, with {} sent", sh.sent.load(Ordering::Acquire));
            }
            let now = now_ns();
            let mut run = (0u64, 0u64);
            for s in acked + 1..=w {
                let at = sh.slots[(s & sh.mask) as usize].load(Ordering::Relaxed);
                if at >= plan.from_ns && at < plan.to_ns {
                    if at != run.0 && run.1 > 0 {
                        lat.push((now.saturating_sub(run.0), run.1));
                        run.1 = 0;
                    }
                    run = (at, run.1 + 1);
                }
            }
            if run.1 > 0 {
                lat.push((now.saturating_sub(run.0), run.1));
            }
            acked = w;
            acks += 1;
            sh.acked.store(w, Ordering::Release);
            sh.wake.notify_one();
        } else {
            // Through tether the answer carries a downstream stamp `<seq>:`.
            let body = if t.starts_with("got ") { t.as_str() } else { t.split_once(':').map_or("", |(_, b)| b) };
            got = Some(
                Got::parse(body).ok_or_else(|| anyhow!("unexpected message from the backend: {:.80}", t.as_str()))?,
            );
        }
    }
}
