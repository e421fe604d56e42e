//! The backend half of the harness: a real WebSocket server on loopback
//! whose connections a test drives message by message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::within;

enum Cmd {
    Send(Message),
    Stream { from: u64, to: u64, pad: usize },
    Close(u16, String),
    Drop,
}

/// One backend connection as the backend sees it.
pub struct BackendConn {
    /// Request path and query as received.
    pub path: String,
    /// Request headers as received.
    pub headers: HeaderMap,
    tx: mpsc::UnboundedSender<Cmd>,
    rx: mpsc::UnboundedReceiver<Option<Message>>,
}

impl BackendConn {
    /// Sends a text message to the client (through tether).
    pub fn text(&self, s: &str) {
        let _ = self.tx.send(Cmd::Send(Message::text(s)));
    }
    /// Sends any message.
    pub fn send(&self, m: Message) {
        let _ = self.tx.send(Cmd::Send(m));
    }
    /// Sends text messages `m<from>` ..= `m<to>` back to back.
    pub fn stream(&self, from: u64, to: u64) {
        let _ = self.tx.send(Cmd::Stream { from, to, pad: 0 });
    }
    /// As [`BackendConn::stream`], each message `m<i>` followed by a space
    /// and padded with `.` to at least `size` bytes.
    pub fn stream_padded(&self, from: u64, to: u64, size: usize) {
        let _ = self.tx.send(Cmd::Stream { from, to, pad: size });
    }
    /// Closes with `code`.
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.tx.send(Cmd::Close(code, reason.into()));
    }
    /// Drops the TCP connection without a close frame.
    pub fn kill(&self) {
        let _ = self.tx.send(Cmd::Drop);
    }
    /// Next message the backend received; `None` when the connection ended
    /// (a received Close is returned as a message first).
    pub async fn recv(&mut self) -> Option<Message> {
        within("a backend message", self.rx.recv()).await.flatten()
    }
    /// As [`BackendConn::recv`], with no deadline (for a task that records
    /// a whole connection).
    pub async fn recv_any(&mut self) -> Option<Message> {
        self.rx.recv().await.flatten()
    }
    /// Waits until the connection has ended, returning the close frame if any.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        within("the backend connection to end", async {
            let mut close = None;
            while let Some(m) = self.rx.recv().await.flatten() {
                if let Message::Close(f) = m {
                    close = f;
                }
            }
            close
        })
        .await
    }
}

/// A real WebSocket backend on 127.0.0.1.
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Handshakes in flight.
    pub in_flight: Arc<InFlight>,
    conns: mpsc::UnboundedReceiver<BackendConn>,
}

/// How the backend answers upgrades.
#[derive(Clone, Default)]
pub struct BackendOptions {
    /// Subprotocol to select if the client offers it.
    pub subprotocol: Option<String>,
    /// Answer this status instead of 101.
    pub refuse: Option<u16>,
    /// Answer 401 to an upgrade without this header.
    pub require_header: Option<&'static str>,
}

/// Upgrades the backend is answering now, and the most at once so far
/// (while [`Backend::delay_handshakes`] holds each one back).
#[derive(Default)]
pub struct InFlight {
    now: AtomicUsize,
    pub max: AtomicUsize,
    delay_ms: std::sync::atomic::AtomicU64,
}

impl Backend {
    /// A backend that accepts everything.
    pub async fn start() -> Backend {
        Backend::start_with(BackendOptions::default()).await
    }

    /// A backend with options.
    pub async fn start_with(opts: BackendOptions) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(InFlight::default());
        let (count, flight) = (accepted.clone(), in_flight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                tokio::spawn(serve_backend_conn(tcp, opts.clone(), tx.clone(), count.clone(), flight.clone()));
            }
        });
        Backend { addr, accepted, in_flight, conns }
    }

    /// The upstream URL for tether.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next connection, with no deadline; `None` once the backend stopped.
    pub async fn try_next_conn(&mut self) -> Option<BackendConn> {
        self.conns.recv().await
    }

    /// The next connection tether opens to the backend.
    pub async fn next_conn(&mut self) -> BackendConn {
        within("a backend connection", self.conns.recv()).await.expect("backend stopped")
    }

    /// Holds each later upgrade back for `ms` before answering it.
    pub fn delay_handshakes(&self, ms: u64) {
        self.in_flight.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve_backend_conn(
    tcp: TcpStream,
    opts: BackendOptions,
    conns: mpsc::UnboundedSender<BackendConn>,
    count: Arc<AtomicUsize>,
    flight: Arc<InFlight>,
) {
    let now = flight.now.fetch_add(1, Ordering::SeqCst) + 1;
    flight.max.fetch_max(now, Ordering::SeqCst);
    let delay = flight.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let mut seen: Option<(String, HeaderMap)> = None;
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        seen = Some((req.uri().to_string(), req.headers().clone()));
        if let Some(h) = opts.require_header.filter(|h| !req.headers().contains_key(*h)) {
            let mut e = ErrorResponse::new(Some(format!("{h} required")));
            *e.status_mut() = http::StatusCode::UNAUTHORIZED;
            return Err(e);
        }
        if let Some(status) = opts.refuse {
            let mut e = ErrorResponse::new(Some("refused by test backend".into()));
            *e.status_mut() = http::StatusCode::from_u16(status).unwrap();
            return Err(e);
        }
        if let Some(p) = &opts.subprotocol {
            let offered = req.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
            if offered.split(',').any(|o| o.trim() == p) {
                resp.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
            }
        }
        resp.headers_mut().insert("x-backend", "yes".parse().unwrap());
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
    flight.now.fetch_sub(1, Ordering::SeqCst);
    let Ok(mut ws) = ws else { return };
    count.fetch_add(1, Ordering::SeqCst);
    let (path, headers) = seen.expect("callback ran");
    let (cmd_tx, mut cmds) = mpsc::unbounded_channel();
    let (in_tx, rx) = mpsc::unbounded_channel();
    let _ = conns.send(BackendConn { path, headers, tx: cmd_tx, rx });
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Send(m)) => { if ws.send(m).await.is_err() { break; } }
                Some(Cmd::Stream { from, to, pad }) => {
                    for i in from..=to {
                        let mut m = format!("m{i}");
                        if pad > 0 {
                            m.push(' ');
                            let fill = pad.saturating_sub(m.len());
                            m.push_str(&".".repeat(fill));
                        }
                        if ws.feed(Message::text(m)).await.is_err() { break; }
                    }
                    if ws.flush().await.is_err() { break; }
                }
                Some(Cmd::Close(code, reason)) => {
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() })).await;
                }
                Some(Cmd::Drop) | None => return,
            },
            msg = ws.next() => match msg {
                Some(Ok(m)) => { let _ = in_tx.send(Some(m)); }
                _ => break,
            },
        }
    }
    let _ = in_tx.send(None);
}

/// An upgrade request a test backend has read and not answered yet: the
/// test decides when tether's dial completes.
pub struct HeldUpgrade {
    tcp: TcpStream,
    head: String,
}

impl HeldUpgrade {
    /// Accepts the next connection on `listener` and reads its request head.
    pub async fn accept(listener: &TcpListener) -> HeldUpgrade {
        use tokio::io::AsyncReadExt;
        let (mut tcp, _) = within("tether to dial the backend", listener.accept()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "request head ended early");
            head.push(byte[0]);
        }
        HeldUpgrade { tcp, head: String::from_utf8(head).unwrap() }
    }

    /// True if tether closed the connection within `wait` (it gave up the dial).
    pub async fn closed_within(&mut self, wait: std::time::Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        tokio::time::timeout(wait, self.tcp.read(&mut byte)).await.is_ok()
    }

    /// Answers 101, completing tether's dial; returns the socket.
    pub async fn answer(mut self) -> TcpStream {
        use tokio::io::AsyncWriteExt;
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        let key =
            self.head.lines().find_map(|l| l.strip_prefix("sec-websocket-key: ")).expect("a Sec-WebSocket-Key header");
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        self.tcp.write_all(reply.as_bytes()).await.unwrap();
        self.tcp
    }
}
