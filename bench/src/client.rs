//! The load clients: connect, read streams, and check every message for
//! gaps and duplicates (by the backend's index and, when stamped, by
//! tether's seq), recording one-way latency from the send time in the
//! payload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::sys::now_ns;

/// A client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for one upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens one connection with optional extra headers; returns the socket and
/// the `tether-session` response header, if any.
pub async fn connect(url: &str, headers: &[(&str, String)]) -> anyhow::Result<(Ws, Option<String>)> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, resp) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async_with_config(req, Some(config), true))
            .await
            .map_err(|_| anyhow!("upgrade to {url} timed out"))?
            .with_context(|| format!("upgrade to {url}"))?;
    let token = resp.headers().get("tether-session").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((ws, token))
}

/// Opens `n` connections, at most `parallel` handshakes at a time. With
/// `welcome`, each one also waits for tether's welcome frame (so its session
/// is attached before the call returns).
pub async fn connect_many(url: &str, n: usize, parallel: usize, welcome: bool) -> anyhow::Result<Vec<Ws>> {
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(0..n)
        .map(|_| async move {
            let (mut ws, _) = connect(url, &[]).await?;
            if welcome {
                read_welcome(&mut ws).await?;
            }
            Ok(ws)
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Reads the welcome control frame; returns it parsed.
pub async fn read_welcome(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(CONNECT_TIMEOUT, ws.next())
            .await
            .map_err(|_| anyhow!("no welcome frame"))?
            .ok_or_else(|| anyhow!("connection ended before the welcome"))??;
        if let Message::Text(t) = msg {
            let body = t.strip_prefix('#').ok_or_else(|| anyhow!("expected a welcome, got {:.60}", t.as_str()))?;
            let v: Value = serde_json::from_str(body)?;
            if v["type"] != "welcome" {
                return Err(anyhow!("expected a welcome, got {body:.80}"));
            }
            return Ok(v);
        }
    }
}

/// How to read a stream.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Data frames carry tether's `<seq>:` prefix.
    pub stamped: bool,
    /// Record latency for messages sent at or after this time (`u64::MAX`: none).
    pub record_from: u64,
    /// Seq of the first data frame expected (prefix mode).
    pub first_seq: u64,
    /// Backend index of the first data frame expected.
    pub first_idx: u64,
    /// Send `ack <received>` upstream every this many messages (0: never).
    pub ack_every: u64,
}

/// What one connection saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Data messages received (the end marker excluded).
    pub data: u64,
    /// Messages missing: index or seq jumps, a `gap` control frame, or
    /// messages the end marker counts that never arrived.
    pub gaps: u64,
    /// Messages received twice or out of order.
    pub dups: u64,
    /// The end marker arrived.
    pub complete: bool,
    /// When the last message arrived.
    pub last_ns: u64,
    /// One-way latencies in ns.
    pub lat: Vec<u64>,
    /// Why the stream stopped early, if it did.
    pub error: Option<String>,
    /// Next backend index expected.
    pub next_idx: u64,
    /// Next seq expected (stamped streams).
    pub next_seq: u64,
}

impl Tally {
    /// A tally for a stream starting at `check`'s first index and seq.
    pub fn new(check: &Check) -> Tally {
        Tally { next_idx: check.first_idx, next_seq: check.first_seq, ..Tally::default() }
    }

    /// Accounts one text message; true once the end marker has been seen.
    pub fn feed(&mut self, text: &str, check: &Check) -> bool {
        let now = now_ns();
        self.last_ns = now;
        if let Some(control) = text.strip_prefix('#') {
            if control.contains("\"type\":\"gap\"") {
                self.gaps += 1;
                self.error.get_or_insert_with(|| format!("gap report: {control:.120}"));
            }
            return false;
        }
        let body = if check.stamped {
            let Some((seq, body)) = text.split_once(':') else {
                self.fail(format!("unstamped frame {text:.40}"));
                return false;
            };
            let seq: u64 = seq.parse().unwrap_or(0);
            self.check_seq(seq);
            body
        } else {
            text
        };
        if let Some(n) = body.strip_prefix("end,") {
            let n: u64 = n.parse().unwrap_or(0);
            if n > self.next_idx {
                self.gaps += n - self.next_idx;
            }
            self.complete = true;
            return true;
        }
        let mut fields = body.splitn(3, ',');
        let idx: Option<u64> = fields.next().and_then(|v| v.parse().ok());
        let sent: Option<u64> = fields.next().and_then(|v| v.parse().ok());
        let (Some(idx), Some(sent)) = (idx, sent) else {
            self.fail(format!("malformed payload {body:.40}"));
            return false;
        };
        self.check_idx(idx);
        self.data += 1;
        if sent >= check.record_from {
            self.lat.push(now.saturating_sub(sent));
        }
        false
    }

    /// Checks a backend index against the one expected.
    pub fn check_idx(&mut self, idx: u64) {
        if idx == self.next_idx {
            self.next_idx += 1;
        } else if idx > self.next_idx {
            self.gaps += idx - self.next_idx;
            self.next_idx = idx + 1;
        } else {
            self.dups += 1;
        }
    }

    /// Checks a stamped seq against the one expected.
    pub fn check_seq(&mut self, seq: u64) {
        if seq == self.next_seq {
            self.next_seq += 1;
        } else if seq > self.next_seq {
            self.gaps += seq - self.next_seq;
            self.next_seq = seq + 1;
        } else {
            self.dups += 1;
        }
    }

    fn fail(&mut self, why: String) {
        self.dups += 1;
        self.error.get_or_insert(why);
    }
}

/// Lets the trial see progress across all clients and stop a stalled one.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Cancelled when the trial gives up.
    pub cancel: CancellationToken,
    /// `now_ns()` of a recent delivery to any client.
    pub progress: Arc<AtomicU64>,
    /// Data messages delivered to all clients so far, added in steps of up
    /// to [`COUNT_STEP`] per client (`sustained` samples it every second).
    pub delivered: Arc<AtomicU64>,
}

/// How many messages a client counts before adding them to
/// [`Watch::delivered`]: one shared atomic add per message would make the
/// clients' cores contend for it.
pub const COUNT_STEP: u64 = 32;

/// Sends `go` and reads until the end marker (or `deadline`, or cancellation).
pub async fn run_stream(mut ws: Ws, go: String, check: Check, deadline: Instant, watch: Watch) -> Tally {
    let mut tally = Tally::new(&check);
    if let Err(e) = ws.send(Message::text(go)).await {
        tally.error = Some(format!("sending go: {e}"));
        return tally;
    }
    read_until_end(&mut ws, &mut tally, &check, deadline, &watch).await;
    tally
}

/// Reads messages into `tally` until the end marker, an error, `deadline`
/// or cancellation.
pub async fn read_until_end(ws: &mut Ws, tally: &mut Tally, check: &Check, deadline: Instant, watch: &Watch) {
    let mut counted = tally.data;
    read_loop(ws, tally, check, deadline, watch, &mut counted).await;
    watch.delivered.fetch_add(tally.data - counted, Ordering::Relaxed);
}

/// [`read_until_end`]'s loop; `counted` is how much of `tally.data` is in
/// `watch.delivered` already.
async fn read_loop(ws: &mut Ws, tally: &mut Tally, check: &Check, deadline: Instant, watch: &Watch, counted: &mut u64) {
    loop {
        if tally.data - *counted >= COUNT_STEP {
            watch.delivered.fetch_add(tally.data - *counted, Ordering::Relaxed);
            *counted = tally.data;
        }
        let next = tokio::select! {
            biased;
            _ = watch.cancel.cancelled() => {
                tally.error.get_or_insert_with(|| "stalled: the trial stopped waiting".into());
                return;
            }
            n = tokio::time::timeout_at(deadline, ws.next()) => n,
        };
        if tally.data % 64 == 0 {
            watch.progress.store(now_ns(), Ordering::Relaxed);
        }
        match next {
            Err(_) => {
                tally.error.get_or_insert_with(|| "timed out before the end marker".into());
                return;
            }
            Ok(None) => {
                tally.error.get_or_insert_with(|| "connection ended before the end marker".into());
                return;
            }
            Ok(Some(Err(e))) => {
                tally.error.get_or_insert_with(|| format!("read failed: {e}"));
                return;
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                if tally.feed(&t, check) {
                    return;
                }
                if check.ack_every > 0 && tally.data % check.ack_every == 0 && !t.starts_with('#') {
                    if let Err(e) = ws.send(Message::text(format!("ack {}", tally.data))).await {
                        tally.error.get_or_insert_with(|| format!("sending an ack: {e}"));
                        return;
                    }
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                tally.error.get_or_insert_with(|| format!("closed before the end marker: {f:?}"));
                return;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Next data frame of a stamped stream as `(seq, backend index)`, skipping
/// control frames; `None` at `deadline`.
pub async fn next_data(ws: &mut Ws, deadline: Instant) -> anyhow::Result<Option<(u64, u64)>> {
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(anyhow!("connection ended")),
            Ok(Some(m)) => m?,
        };
        let Message::Text(t) = msg else { continue };
        if t.starts_with('#') {
            if t.contains("\"type\":\"gap\"") {
                return Err(anyhow!("gap report: {:.120}", t.as_str()));
            }
            continue;
        }
        let (seq, body) = t.split_once(':').ok_or_else(|| anyhow!("unstamped frame"))?;
        let idx = body.split(',').next().and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("bad payload"))?;
        return Ok(Some((seq.parse()?, idx)));
    }
}
