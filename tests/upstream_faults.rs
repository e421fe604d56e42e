//! The upstream guarantee under faults (docs/PROTOCOL.md §12): a network
//! that loses in-flight bytes and resets, a SIGTERM drain, a kill -9. The
//! client here is a minimal, strict implementation of §12's rules, so a
//! wrong `next`, `acked` or `exact` from tether fails the test.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tether_testkit::CutProxy;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Messages a client keeps in flight before it waits for acks.
const WINDOW: usize = 256;

/// The client side of §12: unacked messages, where to resume from.
struct Upstream {
    token: Option<String>,
    /// Sent (or to resend) and not acked: (seq, payload).
    unacked: VecDeque<(u64, String)>,
    /// Seq of the next new message.
    next_seq: u64,
    acked: u64,
    /// The backend connection the client last sent on.
    conn: Option<u64>,
    /// Highest seq written to a socket.
    sent: u64,
    /// Highest `up_ack` received.
    last_ack: u64,
    welcomes: Vec<Value>,
}

impl Upstream {
    fn new() -> Upstream {
        Upstream {
            token: None,
            unacked: VecDeque::new(),
            next_seq: 1,
            acked: 0,
            conn: None,
            sent: 0,
            last_ack: 0,
            welcomes: Vec::new(),
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("tether-up", "seq".to_owned())];
        if let Some(t) = &self.token {
            h.push(("tether-session", t.clone()));
            h.push(("tether-offset", "0".to_owned()));
        }
        h
    }

    fn on_ack(&mut self, seq: u64) {
        assert!(seq >= self.last_ack, "acks never go back: {seq} after {}", self.last_ack);
        assert!(seq <= self.sent, "ack {seq} for a message never sent (sent {})", self.sent);
        self.last_ack = seq;
        self.acked = self.acked.max(seq);
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
    }

    /// Applies a welcome's `up` as §12 says; returns the messages in doubt
    /// (sent on an older backend connection, maybe written) if any.
    fn on_welcome(&mut self, w: &Value) -> Vec<(u64, String)> {
        self.welcomes.push(w.clone());
        self.token = Some(w["session"].as_str().unwrap().to_owned());
        let u = &w["up"];
        let (next, acked, conn) =
            (u["next"].as_u64().unwrap(), u["acked"].as_u64().unwrap(), u["conn"].as_u64().unwrap());
        assert!(acked >= self.last_ack, "an ack was taken back: {w} after ack {}", self.last_ack);
        assert!(next > acked && next <= self.sent + 1, "next out of range (sent {}): {w}", self.sent);
        self.on_ack(acked);
        let mut doubt = Vec::new();
        if self.conn.is_some_and(|c| c != conn) && u["exact"] == false {
            doubt = self.unacked.iter().filter(|(s, _)| *s >= next).cloned().collect();
            self.unacked.retain(|(s, _)| *s < next);
        }
        self.conn = Some(conn);
        // Whatever is left at or above `next` is sent again, renumbered
        // from `next` (the same seqs unless messages in doubt were dropped).
        let mut seq = next;
        for m in self.unacked.iter_mut().filter(|(s, _)| *s >= next) {
            m.0 = seq;
            seq += 1;
        }
        self.next_seq = seq;
        self.sent = next - 1;
        doubt
    }

    fn stamped(seq: u64, payload: &str) -> Message {
        Message::text(format!("{seq}:{payload}"))
    }

    /// Connects (retrying while the network refuses), reads the welcome and
    /// resends what §12 says to. `None` if the connection broke meanwhile.
    async fn connect(&mut self, url: &str) -> Option<(Ws, Vec<(u64, String)>)> {
        let headers = self.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        for (k, v) in &headers {
            req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let mut ws = match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => panic!("refused: {}", r.status()),
            Err(_) => return None,
        };
        let w = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t[1..]).unwrap(),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        };
        assert_eq!(w["type"], "welcome", "{w}");
        let doubt = self.on_welcome(&w);
        for (s, p) in self.unacked.clone() {
            if s > self.sent {
                ws.send(Upstream::stamped(s, &p)).await.ok()?;
                self.sent = s;
            }
        }
        Some((ws, doubt))
    }

    /// Sends new messages `payload(i)` until `until` of them exist, keeping
    /// at most [`WINDOW`] unacked, and reads acks; `cut` is called after
    /// each new message with its seq. Returns when all are acked (true) or
    /// the connection broke (false).
    async fn pump(&mut self, ws: Ws, until: u64, payload: impl Fn(u64) -> String, mut cut: impl FnMut(u64)) -> bool {
        let (mut tx, mut rx) = ws.split();
        loop {
            if self.next_seq > until && self.unacked.is_empty() {
                return true;
            }
            if self.next_seq <= until && self.unacked.len() < WINDOW {
                let (s, p) = (self.next_seq, payload(self.next_seq));
                self.next_seq += 1;
                self.unacked.push_back((s, p.clone()));
                if tx.send(Upstream::stamped(s, &p)).await.is_err() {
                    return false;
                }
                self.sent = s;
                cut(s);
                continue;
            }
            match rx.next().await {
                Some(Ok(Message::Text(t))) => {
                    let c: Value = serde_json::from_str(t.strip_prefix('#').expect("only control frames")).unwrap();
                    match c["type"].as_str() {
                        Some("up_ack") => self.on_ack(c["seq"].as_u64().unwrap()),
                        Some("draining") => {}
                        other => panic!("unexpected control frame {other:?}: {c}"),
                    }
                }
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    }
}

/// Collects every message a backend connection receives until it ends.
fn record(mut conn: BackendConn) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = conn.recv_any().await {
            if let Message::Text(t) = m {
                let _ = tx.send(t.to_string());
            }
        }
    });
    rx
}

/// Takes `n` recorded messages.
async fn take(rx: &mut mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    within(&format!("{n} backend messages"), async {
        while out.len() < n {
            out.push(rx.recv().await.expect("backend connection ended early"));
        }
    })
    .await;
    out
}

/// Everything still recorded once the connection has ended.
async fn rest(mut rx: mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    within("the backend connection to end", async {
        while let Some(m) = rx.recv().await {
            out.push(m);
        }
    })
    .await;
    out
}

fn m(i: u64) -> String {
    format!("m{i}")
}

/// Payloads of messages first sent after a kill -9 (new seqs may reuse
/// those of messages in doubt).
fn n(i: u64) -> String {
    format!("n{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_thirty_cuts_reach_the_backend_once_in_order() {
    const TOTAL: u64 = 10_000;
    const CUTS: usize = 30;
    let (mut backend, t) = setup().await;
    let proxy = std::sync::Arc::new(CutProxy::start(t.data_addr.port()).await);
    let url = format!("ws://127.0.0.1:{}/", proxy.port);
    // Cut points spread pseudo-randomly (fixed seed) over the stream.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut points: Vec<u64> = (0..CUTS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + x % (TOTAL - 1)
        })
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut up = Upstream::new();
    let mut recorded = None;
    let mut cuts = 0;
    let mut pending = points.into_iter().peekable();
    let done = within("the stream through cuts", async {
        loop {
            let Some((ws, doubt)) = up.connect(&url).await else { continue };
            assert!(doubt.is_empty(), "tether never restarted: nothing is in doubt");
            if recorded.is_none() {
                recorded = Some(record(backend.next_conn().await));
            }
            let proxy = proxy.clone();
            let ok = up
                .pump(ws, TOTAL, m, |s| {
                    if pending.next_if(|p| *p <= s).is_some() {
                        cuts += 1;
                        let proxy = proxy.clone();
                        // 50 ms of lost bytes, then resets on both sides.
                        tokio::spawn(async move { proxy.cut(Duration::from_millis(50)).await });
                    }
                })
                .await;
            if ok {
                return true;
            }
        }
    })
    .await;
    assert!(done);
    assert!(cuts >= CUTS - 2, "only {cuts} cuts");
    let got = take(recorded.as_mut().unwrap(), TOTAL as usize).await;
    let want: Vec<String> = (1..=TOTAL).map(m).collect();
    assert!(got == want, "the backend must receive m1..m{TOTAL} once each, in order");
    assert_eq!(backend.count(), 1, "one backend connection for the whole session");
    let conns: std::collections::HashSet<_> = up.welcomes.iter().map(|w| w["up"]["conn"].as_u64()).collect();
    assert_eq!(conns.len(), 1);
    assert!(up.welcomes.len() > 10, "resumed {} times", up.welcomes.len());
    let metrics = t.metrics().await;
    assert_eq!(metric(&metrics, "tether_upstream_frames_total{result=\"forwarded\"}"), TOTAL as f64);
    t.stop().await;
}

/// Streams 1,500 acked messages and 200 more unacked, then stops tether
/// (SIGTERM, or SIGKILL if `kill`), restarts it on the same journal and
/// finishes the stream to 3,000 with `later` payloads for new messages.
/// Returns the client, both backend connections' messages and what the
/// client found in doubt.
async fn stream_across_a_restart(
    kill: bool,
    later: fn(u64) -> String,
) -> (Upstream, Vec<String>, Vec<String>, Vec<(u64, String)>) {
    const TOTAL: u64 = 3000;
    const STOP_AT: u64 = 1500;
    let (mut backend, dir, p) = setup_process().await;
    let mut up = Upstream::new();
    let (ws, _) = up.connect(&p.url("/")).await.expect("connects");
    let first = record(backend.next_conn().await);
    // Stream half, stop sending, then stop tether while acks are in flight.
    let ok = up.pump(ws, STOP_AT, m, |_| {}).await;
    assert!(ok, "all of the first half acked");
    let (ws, _) = up.connect(&p.url("/")).await.expect("resumes");
    let (mut tx, rx) = ws.split();
    for i in STOP_AT + 1..=STOP_AT + 200 {
        up.unacked.push_back((i, m(i)));
        tx.send(Upstream::stamped(i, &m(i))).await.unwrap();
        up.sent = i;
    }
    up.next_seq = STOP_AT + 201;
    drop(rx);
    if kill {
        p.kill9().await;
    } else {
        assert!(p.signal("-TERM").await.success());
    }
    drop(tx);
    let before = rest(first).await;
    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    let (ws, doubt) = up.connect(&p.url("/")).await.expect("resumes after the restart");
    let second = record(backend.next_conn().await);
    assert!(up.pump(ws, TOTAL, later, |_| {}).await, "the rest is acked");
    p.kill9().await;
    let after = rest(second).await;
    (up, before, after, doubt)
}

#[tokio::test]
async fn after_a_drain_the_accounting_is_exact() {
    let (up, before, after, doubt) = stream_across_a_restart(false, m).await;
    let w = up.welcomes.last().unwrap();
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["up"]["exact"], true, "{w}");
    assert!(doubt.is_empty());
    let acked = w["up"]["acked"].as_u64().unwrap();
    assert_eq!(before.len() as u64, acked, "acked is exactly what the old connection got: {w}");
    let mut all = before;
    all.extend(after);
    let want: Vec<String> = (1..=3000).map(m).collect();
    assert!(all == want, "across the drain, each message once, in order ({} messages)", all.len());
}

#[tokio::test]
async fn after_a_kill_9_what_may_be_lost_is_reported_in_doubt() {
    let (up, before, after, doubt) = stream_across_a_restart(true, n).await;
    let w = up.welcomes.last().unwrap();
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["up"]["exact"], false, "{w}");
    let acked = w["up"]["acked"].as_u64().unwrap();
    assert!(acked >= 1500, "acks received before the kill are kept: {w}");
    // The old connection got a prefix, and everything acked is in it.
    let prefix: Vec<String> = (1..=before.len() as u64).map(m).collect();
    assert!(before == prefix, "the old connection got m1..m{}, in order", before.len());
    assert!(before.len() as u64 >= acked, "acked {acked} but only {} written", before.len());
    // Every message the old connection may have missed was reported.
    let reported: Vec<u64> = doubt.iter().map(|(s, _)| *s).collect();
    let sent_after_ack: Vec<u64> = (acked + 1..=1700).collect();
    assert_eq!(reported, sent_after_ack, "in doubt: every message sent and not acked");
    // Nothing at or below the ack was written again; new messages continue at next.
    let next = w["up"]["next"].as_u64().unwrap();
    assert_eq!(next, acked + 1);
    let want: Vec<String> = (next..=3000).map(n).collect();
    assert!(after == want, "the new connection gets only new messages, from next, in order");
}
