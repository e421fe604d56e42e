//! The backend producer, run as its own process (`tether-bench backend`) so
//! its CPU time is counted apart from tether's and the clients'.
//!
//! Every connection waits for a `go <size> <rate> <ms> <count> <tick_us>`
//! text message from its client (through tether, upstream), or starts at
//! once when its path is `/auto/<size>/<rate>`. It then sends text messages
//! `<index>,<CLOCK_MONOTONIC ns>,<padding>` of exactly `size` bytes:
//! - `rate` 0 sends as fast as the socket takes them; otherwise `rate`
//!   messages per second on this connection's own schedule, started at a
//!   random phase so that connections are not synchronised. One
//!   microsecond-precision thread sends for every paced connection
//!   ([`crate::pacer`]), not tokio's 1 ms wheel (which would put every
//!   connection's sends on the same millisecond); sends on one connection
//!   are at least `tick_us` apart, so at high per-connection rates what is
//!   due goes out in small bursts;
//! - it stops after `ms` milliseconds or `count` messages (0: no limit), and
//!   then sends `end,<number sent>`;
//! - with a `window`, it keeps at most that many messages unacknowledged:
//!   the client sends `ack <messages received>` upstream now and then, so
//!   a saturation run cannot pile up an unbounded backlog in socket buffers
//!   or in tether's journal;
//! - it stops early when the connection closes.
//!
//! On the path `/sink` it receives instead ([`crate::sink`]).
//!
//! The padding is random alphanumeric text, so lz4 in the journal cannot
//! shrink it much (write amplification is not flattered by compression).

use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::pacer::Pacer;
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
    let pacer = Arc::new(Pacer::start(pad.clone()));
    serve_forever(listen, move |tcp| serve(tcp, pad.clone(), pacer.clone()))
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
        let listener = listen_wide(listen).await?;
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

/// Binds `listen` with an accept queue of 4096, as tether's listeners. With
/// the 128 of `TcpListener::bind`, a thousand connections arriving together
/// overflowed the relay's and this backend's queues, and the SYNs dropped
/// were retried a second later, so those streams started late.
pub async fn listen_wide(listen: &str) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{listen} resolves to no address")))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Random printable padding, [`PAD_LEN`] bytes.
pub fn padding() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = Rng::new();
    (0..PAD_LEN).map(|_| ALPHABET[(rng.next_u64() % 64) as usize] as char).collect()
}

// tungstenite's handshake callback signature fixes the error type.
#[allow(clippy::result_large_err)]
async fn serve(tcp: TcpStream, pad: Arc<str>, pacer: Arc<Pacer>) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await else { return };
    if path == crate::sink::PATH {
        return crate::sink::serve(ws).await;
    }
    // The pacer writes through a duplicate of it while `ws` lives.
    let fd = ws.get_ref().as_raw_fd();
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
    let sent = if spec.rate > 0.0 {
        let closed = Arc::new(AtomicBool::new(false));
        let watcher = (flow.clone(), closed.clone());
        let watch = tokio::spawn(async move {
            while !watcher.0.closed.load(Ordering::Relaxed) {
                watcher.0.wake.notified().await;
            }
            watcher.1.store(true, Ordering::Relaxed);
        });
        let sent = pacer.pace(fd, spec, random_phase, closed).await;
        watch.abort();
        sent
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
    Message::text(payload(idx, size, pad))
}

/// Message `idx`: `<idx>,<now ns>,<padding>`, `size` bytes.
pub fn payload(idx: u64, size: usize, pad: &str) -> String {
    let mut s = String::with_capacity(size.max(48));
    let _ = write!(s, "{idx},{},", now_ns());
    let need = size.saturating_sub(s.len());
    let off = (idx as usize).wrapping_mul(7919) % (pad.len() - need);
    s.push_str(&pad[off..off + need]);
    s
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
