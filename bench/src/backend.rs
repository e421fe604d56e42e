//! The backend producer, run as its own process (`tether-bench backend`) so
//! its CPU time is counted apart from tether's and the clients'.
//!
//! Every connection waits for a `go <size> <rate> <ms> <count> <tick_us>`
//! text message from its client (through tether, upstream), or starts at
//! once when its path is `/auto/<size>/<rate>`. It then sends text messages
//! `<index>,<CLOCK_MONOTONIC ns>,<padding>` of exactly `size` bytes:
//! - `rate` 0 sends as fast as the socket takes them; otherwise `rate`
//!   messages per second on this connection's own timer, started at a random
//!   phase so that connections are not synchronised. The timer is a
//!   microsecond-precision [`Ticker`] thread, not tokio's 1 ms wheel (which
//!   would put every connection's sends on the same millisecond); sends on
//!   one connection are at least `tick_us` apart, so at high per-connection
//!   rates what is due goes out in small bursts;
//! - it stops after `ms` milliseconds or `count` messages (0: no limit), and
//!   then sends `end,<number sent>`;
//! - with a `window`, it keeps at most that many messages unacknowledged:
//!   the client sends `ack <messages received>` upstream now and then, so
//!   a saturation run cannot pile up an unbounded backlog in socket buffers
//!   or in tether's journal;
//! - it stops early when the connection closes.
//!
//! The padding is random alphanumeric text, so lz4 in the journal cannot
//! shrink it much (write amplification is not flattered by compression).

use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::sys::{now_ns, Rng};

/// Random printable padding; messages take slices of it.
const PAD_LEN: usize = 256 * 1024;

/// What one connection sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per second on this connection; 0: as fast as possible.
    pub rate: f64,
    /// Stop after this many milliseconds (0: no limit).
    pub ms: u64,
    /// Stop after this many messages (0: no limit).
    pub count: u64,
    /// Shortest time between two sends on this connection, µs: when the
    /// period is shorter, what is due goes out in one burst per tick.
    pub tick_us: u64,
    /// Most messages sent but not yet acknowledged by the client
    /// (`ack <n>` upstream); 0: no flow control.
    pub window: u64,
}

impl Spec {
    /// The `go` message that starts this stream.
    pub fn go(&self) -> String {
        format!("go {} {} {} {} {} {}", self.size, self.rate, self.ms, self.count, self.tick_us, self.window)
    }

    fn parse_go(t: &str) -> Option<Spec> {
        let mut it = t.strip_prefix("go ")?.split_whitespace();
        Some(Spec {
            size: it.next()?.parse().ok()?,
            rate: it.next()?.parse().ok()?,
            ms: it.next()?.parse().ok()?,
            count: it.next()?.parse().ok()?,
            tick_us: it.next()?.parse().ok()?,
            window: it.next()?.parse().ok()?,
        })
    }

    fn parse_auto(path: &str) -> Option<Spec> {
        let mut it = path.strip_prefix("/auto/")?.split('/');
        Some(Spec {
            size: it.next()?.parse().ok()?,
            rate: it.next()?.parse().ok()?,
            ms: 0,
            count: 0,
            tick_us: 1000,
            window: 0,
        })
    }
}

/// Runs the backend until killed: binds `listen`, prints `listening <addr>`.
pub fn run(listen: &str) -> anyhow::Result<()> {
    let pad: Arc<str> = padding().into();
    let ticker = Arc::new(Ticker::start());
    serve_forever(listen, move |tcp| serve(tcp, pad.clone(), ticker.clone()))
}

/// Binds `listen` on a 2-worker runtime, prints `listening <addr>` (what the
/// launcher waits for) and spawns `handle` for every connection, until killed.
pub fn serve_forever<F, Fut>(listen: &str, mut handle: F) -> anyhow::Result<()>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        println!("listening {}", listener.local_addr()?);
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(handle(tcp));
        }
    })
}

fn padding() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = Rng::new();
    (0..PAD_LEN).map(|_| ALPHABET[(rng.next_u64() % 64) as usize] as char).collect()
}

// tungstenite's handshake callback signature fixes the error type.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, pad: Arc<str>, ticker: Arc<Ticker>) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await else { return };
    let (mut sink, mut stream) = ws.split();
    // An `/auto/` stream sends its first message at once (fresh-connection
    // latency); a `go` stream starts at a random phase of its period.
    let (spec, random_phase) = match Spec::parse_auto(&path) {
        Some(s) => (s, false),
        None => loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(s) = Spec::parse_go(&t) {
                        break (s, true);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        },
    };
    let flow = Arc::new(Flow::default());
    let reader_flow = flow.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Text(t) => {
                    if let Some(n) = t.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
                        reader_flow.acked.fetch_max(n, Ordering::Relaxed);
                        reader_flow.wake.notify_one();
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        reader_flow.closed.store(true, Ordering::Relaxed);
        reader_flow.wake.notify_one();
    });
    let closed = &flow.closed;
    let sent = if spec.rate > 0.0 {
        paced(&mut sink, spec, random_phase, &pad, closed, &ticker).await
    } else {
        flat_out(&mut sink, spec, &pad, &flow).await
    };
    if let Some(n) = sent {
        let _ = sink.send(Message::text(format!("end,{n}"))).await;
    }
    // Wait for the client's close (or the socket's end), then answer it.
    let _ = reader.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

type Sink = futures_util::stream::SplitSink<tokio_tungstenite::WebSocketStream<TcpStream>, Message>;

fn message(idx: u64, size: usize, pad: &str) -> Message {
    let mut s = String::with_capacity(size.max(48));
    let _ = write!(s, "{idx},{},", now_ns());
    let need = size.saturating_sub(s.len());
    let off = (idx as usize).wrapping_mul(7919) % (pad.len() - need);
    s.push_str(&pad[off..off + need]);
    Message::text(s)
}

fn done(spec: &Spec, sent: u64, deadline: u64, closed: &AtomicBool) -> bool {
    (spec.count > 0 && sent >= spec.count) || now_ns() >= deadline || closed.load(Ordering::Relaxed)
}

/// The client's acknowledgements and whether it has gone.
#[derive(Default)]
struct Flow {
    acked: AtomicU64,
    closed: AtomicBool,
    wake: Notify,
}

/// Sends as fast as the socket (and the window) accepts; `None` if the
/// connection failed.
async fn flat_out(sink: &mut Sink, spec: Spec, pad: &str, flow: &Flow) -> Option<u64> {
    let deadline = if spec.ms > 0 { now_ns() + spec.ms * 1_000_000 } else { u64::MAX };
    let mut sent = 0u64;
    while !done(&spec, sent, deadline, &flow.closed) {
        for _ in 0..32 {
            if spec.count > 0 && sent >= spec.count {
                break;
            }
            if spec.window > 0 && sent >= flow.acked.load(Ordering::Relaxed) + spec.window {
                sink.flush().await.ok()?;
                while sent >= flow.acked.load(Ordering::Relaxed) + spec.window && !flow.closed.load(Ordering::Relaxed) {
                    flow.wake.notified().await;
                }
                if flow.closed.load(Ordering::Relaxed) || now_ns() >= deadline {
                    break;
                }
            }
            sink.feed(message(sent, spec.size, pad)).await.ok()?;
            sent += 1;
        }
    }
    sink.flush().await.ok()?;
    Some(sent)
}

/// Sends `rate` messages per second, from a random phase if asked. Sends
/// are at least `tick_us` apart: what is due by then goes out as one burst.
/// Each message carries the time it was built, so a late wake-up is not
/// counted as latency.
async fn paced(
    sink: &mut Sink,
    spec: Spec,
    random_phase: bool,
    pad: &str,
    closed: &AtomicBool,
    ticker: &Ticker,
) -> Option<u64> {
    let period = 1e9 / spec.rate;
    let tick = (spec.tick_us * 1000) as f64;
    let phase = if random_phase { Rng::new().unit() * period.max(tick) } else { 0.0 };
    let start = now_ns() + phase as u64;
    let deadline = if spec.ms > 0 { now_ns() + spec.ms * 1_000_000 } else { u64::MAX };
    let wake = Arc::new(Notify::new());
    let mut sent = 0u64;
    let mut last = 0u64;
    loop {
        let next = (start + (sent as f64 * period) as u64).max(last + tick as u64);
        ticker.sleep_until(next, &wake).await;
        if done(&spec, sent, deadline, closed) {
            break;
        }
        last = now_ns();
        let due = (last.saturating_sub(start) as f64 / period) as u64 + 1;
        let due = if spec.count > 0 { due.min(spec.count) } else { due };
        while sent < due {
            sink.feed(message(sent, spec.size, pad)).await.ok()?;
            sent += 1;
        }
        sink.flush().await.ok()?;
    }
    Some(sent)
}

/// Wakes paced connections at microsecond precision. tokio's timer wheel
/// has 1 ms slots, so every connection's timer would fire on the same
/// millisecond and their random phases would be lost.
pub struct Ticker {
    tx: std::sync::mpsc::Sender<Wake>,
}

struct Wake {
    at: u64,
    seq: u64,
    notify: Arc<Notify>,
}

impl PartialEq for Wake {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Wake {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap pops the earliest first.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl Ticker {
    /// Starts the ticker thread.
    pub fn start() -> Ticker {
        let (tx, rx) = std::sync::mpsc::channel::<Wake>();
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                // 1 µs of timer slack instead of 50 µs, for this thread only.
                // SAFETY: prctl with an integer argument has no memory effects.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
                let mut heap: BinaryHeap<Wake> = BinaryHeap::new();
                loop {
                    let now = now_ns();
                    // Coalesce wakes due within 10 µs.
                    while heap.peek().is_some_and(|w| w.at <= now + 10_000) {
                        heap.pop().expect("peeked").notify.notify_one();
                    }
                    let got = match heap.peek() {
                        None => rx.recv().map_err(|_| ()),
                        Some(w) => match rx.recv_timeout(Duration::from_nanos(w.at.saturating_sub(now))) {
                            Ok(w) => Ok(w),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(()),
                        },
                    };
                    let Ok(w) = got else { return };
                    heap.push(w);
                    while let Ok(w) = rx.try_recv() {
                        heap.push(w);
                    }
                }
            })
            .expect("spawn the ticker thread");
        Ticker { tx }
    }

    /// Returns at `at` (CLOCK_MONOTONIC ns), give or take a few µs.
    pub async fn sleep_until(&self, at: u64, notify: &Arc<Notify>) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        if at <= now_ns() + 10_000 {
            return;
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Wake { at, seq, notify: notify.clone() }).is_ok() {
            notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_messages_have_the_size() {
        let s = Spec { size: 64, rate: 12.5, ms: 300, count: 7, tick_us: 250, window: 64 };
        assert_eq!(Spec::parse_go(&s.go()), Some(s));
        let auto = Spec { size: 512, rate: 100.0, ms: 0, count: 0, tick_us: 1000, window: 0 };
        assert_eq!(Spec::parse_auto("/auto/512/100"), Some(auto));
        let pad = padding();
        for size in [64, 512, 16384] {
            let Message::Text(t) = message(123_456, size, &pad) else { panic!() };
            assert_eq!(t.len(), size);
            assert!(t.starts_with("123456,"));
        }
    }
}
