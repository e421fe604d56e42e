//! A real tether (the workspace's release binary), a real WebSocket backend
//! and a TCP proxy the test cuts, all on loopback.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Every await of a test is bounded by this.
pub const BOUND: Duration = Duration::from_secs(60);

pub async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn tether_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TETHER_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("release/tether")
}

/// A stand-in child while the real one is being replaced.
fn spawn_later() -> Child {
    Command::new("true").spawn().unwrap()
}

/// A free port below Linux's ephemeral range (32768..): a port from that
/// range may be taken, while tether restarts, as the source port of some
/// outgoing connection of a test running in parallel.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000")
}

pub struct Tether {
    pub url: String,
    pub data_port: u16,
    admin: SocketAddr,
    child: Child,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Tether {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &std::path::Path) -> Child {
    let bin = tether_bin();
    assert!(bin.exists(), "{} is missing: cargo build --release --bin tether, or set TETHER_BIN", bin.display());
    Command::new(&bin).arg("--config").arg(config).stdin(Stdio::null()).spawn().unwrap()
}

impl Tether {
    pub async fn start(upstream: &str, stamp: &str, max_session_frames: u64) -> Tether {
        let dir = tempfile::tempdir().unwrap();
        let (data_port, admin_port) = (free_port(), free_port());
        let config = dir.path().join("tether.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{data_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
                 upstream = \"{upstream}\"\nshutdown_grace = \"5s\"\n[stamp]\nmode = \"{stamp}\"\n\
                 [journal]\ndata_dir = \"{}\"\nmax_session_frames = {max_session_frames}\n[log]\nlevel = \"warn\"\n",
                dir.path().join("journal").display()
            ),
        )
        .unwrap();
        let child = spawn(&config);
        let mut t = Tether {
            url: format!("ws://127.0.0.1:{data_port}"),
            data_port,
            admin: ([127, 0, 0, 1], admin_port).into(),
            child,
            config,
            _dir: dir,
        };
        t.ready().await;
        t
    }

    /// SIGKILL (no drain: the journal is left as a crash leaves it), then
    /// the same tether again on the same ports and journal.
    pub async fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn(&self.config);
        self.ready().await;
    }

    /// SIGTERM (tether drains: `draining`, then close 1012), then the same
    /// tether again on the same ports and journal.
    pub async fn restart(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let mut old = std::mem::replace(&mut self.child, spawn_later());
        let status = bounded("tether to exit", tokio::task::spawn_blocking(move || old.wait())).await;
        assert!(status.unwrap().unwrap().success(), "tether exits 0 after draining");
        self.child = spawn(&self.config);
        self.ready().await;
    }

    async fn ready(&mut self) {
        let t = self;
        bounded("tether /readyz", async {
            loop {
                if let Some(status) = t.child.try_wait().unwrap() {
                    panic!("tether exited at start: {status}");
                }
                if t.get("/readyz").await.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await; // polling a process we do not control
            }
        })
        .await;
    }

    async fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(self.admin).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").await.unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits until `tether_journal_appends_total` reaches `n`.
    pub async fn journaled(&self, n: u64) {
        bounded("journal appends", async {
            while self.metric("tether_journal_appends_total").await < n as f64 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

pub enum Cmd {
    /// Send `count` text frames `m<i>`, `batch` at a time with a 1 ms pause in between.
    Send {
        from: u64,
        count: u64,
        batch: u64,
    },
    Close(u16, String),
    /// Stop (false) or resume (true) reading: a backend that does not read
    /// backs tether's writes up.
    Read(bool),
}

/// One backend WebSocket connection (tether's upstream side).
pub struct BackendConn {
    pub cmd: mpsc::UnboundedSender<Cmd>,
    /// The close the backend received from tether (code, reason).
    pub closed: mpsc::UnboundedReceiver<Option<(u16, String)>>,
    /// Every data message the backend read, in order; ends with the
    /// connection.
    pub received: mpsc::UnboundedReceiver<Message>,
}

pub struct Backend {
    pub url: String,
    conns: mpsc::UnboundedReceiver<BackendConn>,
    pub accepted: Arc<Mutex<u64>>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (tx, conns) = mpsc::unbounded_channel();
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { continue };
                *count.lock().unwrap() += 1;
                let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                let (closed_tx, closed) = mpsc::unbounded_channel();
                let (received_tx, received) = mpsc::unbounded_channel();
                tokio::spawn(serve(ws, cmd_rx, closed_tx, received_tx));
                if tx.send(BackendConn { cmd: cmd_tx, closed, received }).is_err() {
                    return;
                }
            }
        });
        Backend { url, conns, accepted }
    }

    pub async fn next_conn(&mut self) -> BackendConn {
        bounded("a backend connection", self.conns.recv()).await.expect("backend listener")
    }
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    mut cmd: mpsc::UnboundedReceiver<Cmd>,
    closed: mpsc::UnboundedSender<Option<(u16, String)>>,
    received: mpsc::UnboundedSender<Message>,
) {
    let mut reading = true;
    loop {
        tokio::select! {
            c = cmd.recv() => match c {
                Some(Cmd::Send { from, count, batch }) => {
                    for i in from..from + count {
                        if ws.feed(Message::text(format!("m{i}"))).await.is_err() { return; }
                        if (i - from + 1) % batch == 0 {
                            if ws.flush().await.is_err() { return; }
                            tokio::time::sleep(Duration::from_millis(1)).await; // pacing, not synchronisation
                        }
                    }
                    if ws.flush().await.is_err() { return; }
                }
                Some(Cmd::Close(code, reason)) => {
                    let _ = ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() })).await;
                }
                Some(Cmd::Read(on)) => reading = on,
                None => return,
            },
            m = ws.next(), if reading => match m {
                Some(Ok(Message::Close(f))) => {
                    let _ = closed.send(f.map(|f| (u16::from(f.code), f.reason.to_string())));
                    let _ = ws.close(None).await;
                    return;
                }
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => { let _ = received.send(m); }
                Some(Ok(_)) => {}
                _ => { let _ = closed.send(None); return; }
            },
        }
    }
}

/// A TCP proxy in front of tether that the test cuts like a tunnel does:
/// both sockets are dropped with no close frame, and tether sees a reset.
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    live: Vec<(AbortHandle, Weak<TcpStream>)>,
    blocked: bool,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if st.lock().unwrap().blocked {
                    let _ = client.set_zero_linger();
                    continue; // dropped: a reset
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else { continue };
                let client = Arc::new(client);
                let upstream = Arc::new(upstream);
                let (c, u) = (client.clone(), upstream.clone());
                let task = tokio::spawn(async move {
                    // Either direction ending ends both, which drops both sockets.
                    tokio::select! {
                        _ = pipe(c.clone(), u.clone()) => {}
                        _ = pipe(u, c) => {}
                    }
                });
                let mut s = st.lock().unwrap();
                s.live.retain(|(h, _)| !h.is_finished());
                s.live.push((task.abort_handle(), Arc::downgrade(&client)));
                s.live.push((task.abort_handle(), Arc::downgrade(&upstream)));
            }
        });
        Proxy { port, state }
    }

    /// Cuts every live connection with a TCP reset on both sides. Returns
    /// how many client connections were cut.
    pub fn cut(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        let live: Vec<_> = s.live.drain(..).filter(|(h, _)| !h.is_finished()).collect();
        for (h, sock) in &live {
            if let Some(sock) = sock.upgrade() {
                let _ = sock.set_zero_linger();
            }
            h.abort();
        }
        live.len() / 2
    }

    /// While blocked, new connections are reset at once.
    pub fn block(&self, blocked: bool) {
        self.state.lock().unwrap().blocked = blocked;
    }
}

/// Never set: this proxy cuts, it does not lose bytes in flight.
static KEEP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn pipe(from: Arc<TcpStream>, to: Arc<TcpStream>) {
    tether_testkit::pipe(from, to, &KEEP).await
}
