//! Test harness: a real WebSocket backend on loopback, tether in-process or
//! as a real process, and a client with helpers that assert on exact frames.
// Each test binary uses a different part of this module.
#![allow(dead_code, unreachable_pub, missing_docs)]
// tungstenite's handshake callback signature fixes the error type.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::HeaderMap;
use serde_json::Value;
use tether::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod backend;
pub mod cluster;

pub use backend::*;

/// Upper bound for any single awaited event; a test that hits it failed.
pub const WAIT: Duration = Duration::from_secs(20);
/// A secret long enough for tether's config check.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Awaits `f` or panics after [`WAIT`].
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------- tether

/// A configuration for tests: loopback ports chosen by the OS, the journal in
/// `dir`, a fixed secret.
pub fn config(upstream: &str, dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.server.upstream = upstream.to_owned();
    c.journal.data_dir = dir.to_owned();
    c.token.secret = SECRET.into();
    c
}

/// tether in this process. End every test with [`Tether::stop`]: the
/// journal must be closed before the test binary exits.
pub struct Tether {
    running: Option<tether::server::Running>,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Drop for Tether {
    fn drop(&mut self) {
        if self.running.is_some() && !std::thread::panicking() {
            panic!("a test must end with Tether::stop()");
        }
    }
}

impl Tether {
    /// Starts tether in front of `backend` with defaults.
    pub async fn start(backend: &Backend) -> Tether {
        Tether::start_with(backend, |_| {}).await
    }

    /// Starts tether with a configuration tweak.
    pub async fn start_with(backend: &Backend, tweak: impl FnOnce(&mut Config)) -> Tether {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&backend.url(), dir.path());
        tweak(&mut c);
        let running = tether::server::start(c).await.expect("tether starts");
        Tether { data_addr: running.data_addr, admin_addr: running.admin_addr, running: Some(running), dir }
    }

    /// Drains and closes the journal.
    pub async fn stop(mut self) {
        let running = self.running.take().expect("running");
        within("tether to drain", running.drain()).await.expect("drain");
    }

    /// Drains, expecting the drain to fail; returns its error.
    pub async fn stop_err(mut self) -> String {
        let running = self.running.take().expect("running");
        within("tether to drain", running.drain()).await.expect_err("the drain fails").to_string()
    }

    /// ws:// URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.data_addr, path)
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(self.admin_addr, "/metrics").await.1
    }
}

/// tether as a real child process.
pub struct TetherProcess {
    pub child: tokio::process::Child,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Every stderr line so far (JSON logs).
    pub logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TetherProcess {
    /// Starts the `tether` binary with `args` and waits for its
    /// "tether is serving" log line, which carries the bound addresses.
    pub async fn start(upstream: &str, dir: &Path, extra_env: &[(&str, &str)]) -> TetherProcess {
        TetherProcess::start_on(upstream, dir, "127.0.0.1:0", "127.0.0.1:0", extra_env).await
    }

    /// As [`TetherProcess::start`], with at most `nofile` file descriptors
    /// (RLIMIT_NOFILE, soft and hard, set in the child before exec).
    pub async fn start_with_nofile(
        upstream: &str,
        dir: &Path,
        extra_env: &[(&str, &str)],
        nofile: u64,
    ) -> TetherProcess {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        TetherProcess::launch(cmd, upstream, dir, ("127.0.0.1:0", "127.0.0.1:0"), extra_env).await
    }

    /// Waits until a log line's message is `message` and returns all lines.
    pub async fn wait_log(&self, message: &str) -> Vec<String> {
        within(&format!("log {message:?}"), async {
            loop {
                let lines = self.logs.lock().unwrap().clone();
                let found = lines
                    .iter()
                    .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["fields"]["message"] == message));
                if found {
                    return lines;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// ws:// URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.data_addr, path)
    }

    /// SIGKILL, then wait for the process to be gone.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        within("tether to die", self.child.wait()).await.unwrap();
    }

    /// Sends `signal` and waits for the exit status.
    pub async fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(ok.success());
        within("tether to exit", self.child.wait()).await.unwrap()
    }
}

// ---------------------------------------------------------------- fixture

/// The opening of most tests: a real backend and tether in front of it.
pub async fn setup() -> (Backend, Tether) {
    setup_with(|_| {}).await
}

/// [`setup`] with a configuration tweak.
pub async fn setup_with(tweak: impl FnOnce(&mut Config)) -> (Backend, Tether) {
    let backend = Backend::start().await;
    let t = Tether::start_with(&backend, tweak).await;
    (backend, t)
}

/// A real backend and tether as a child process in front of it, with its
/// journal in the returned directory (kept for a restart).
pub async fn setup_process() -> (Backend, tempfile::TempDir, TetherProcess) {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    (backend, dir, p)
}

/// Opens a new session at `url` (tether in front of `backend`): the
/// client's socket after its welcome (outcome `new`), its token, and the
/// backend connection tether opened for it.
pub async fn attach(backend: &mut Backend, url: &str) -> (Ws, String, BackendConn) {
    let mut ws = open(url, &[]).await;
    let (w, token) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "new", "{w}");
    let conn = backend.next_conn().await;
    (ws, token, conn)
}

// ---------------------------------------------------------------- client

/// A refused upgrade: status and parsed JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

/// Connects with extra request headers; `Err` carries a refusal.
pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<(Ws, HeaderMap), Refused> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    match within("the upgrade", tokio_tungstenite::connect_async(req)).await {
        Ok((ws, resp)) => Ok((ws, resp.headers().clone())),
        Err(WsError::Http(resp)) => {
            let body =
                resp.body().as_deref().map(|b| serde_json::from_slice(b).expect("JSON body")).unwrap_or(Value::Null);
            Err(Refused { status: resp.status().as_u16(), body, headers: resp.headers().clone() })
        }
        Err(e) => panic!("upgrade failed without a status: {e}"),
    }
}

/// Connects and expects success.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> Ws {
    connect(url, headers).await.unwrap_or_else(|r| panic!("refused: {r:?}")).0
}

/// Resumes with headers.
pub async fn resume(url: &str, token: &str, offset: u64) -> Ws {
    open(url, &[("tether-session", token), ("tether-offset", &offset.to_string())]).await
}

/// Next message that is not a ping/pong. The deadline covers the whole
/// wait: tether pings more often than [`WAIT`], so a per-read deadline
/// would never fire.
pub async fn next(ws: &mut Ws) -> Message {
    within("a message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
}

/// Next text message.
pub async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Next control frame, parsed.
pub async fn control(ws: &mut Ws) -> Value {
    let t = next_text(ws).await;
    let body = t.strip_prefix('#').unwrap_or_else(|| panic!("expected a control frame, got {t:?}"));
    serde_json::from_str(body).unwrap()
}

/// The welcome frame; returns it and the token.
pub async fn welcome(ws: &mut Ws) -> (Value, String) {
    let w = control(ws).await;
    assert_eq!(w["type"], "welcome", "{w}");
    let token = w["session"].as_str().unwrap().to_owned();
    (w, token)
}

/// The session id and the generation a token names (docs/PROTOCOL.md §8):
/// v3/v4 tokens carry the generation after the session id.
pub fn token_parts(token: &str) -> ([u8; 16], u32) {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).expect("base64url token");
    assert!(matches!(raw[0], 3 | 4), "a v3 or v4 token: {}", raw[0]);
    (raw[9..25].try_into().unwrap(), u32::from_be_bytes(raw[25..29].try_into().unwrap()))
}

/// Asserts that `next` is the token after `token`: the same session, the
/// next generation.
pub fn assert_rotated(next: &str, token: &str) {
    let (session, generation) = token_parts(token);
    assert_eq!(token_parts(next), (session, generation + 1), "the next generation of the same session's token");
}

/// Next prefix-stamped text data frame as (seq, payload).
pub async fn data(ws: &mut Ws) -> (u64, String) {
    let t = next_text(ws).await;
    let (seq, payload) = t.split_once(':').unwrap_or_else(|| panic!("not a stamped frame: {t:?}"));
    (seq.parse().unwrap_or_else(|_| panic!("bad seq in {t:?}")), payload.to_owned())
}

/// Expects the next frames to be `m<from>..=m<to>` with seqs equal to `from..=to`.
pub async fn expect_stream(ws: &mut Ws, from: u64, to: u64) {
    for i in from..=to {
        assert_eq!(data(ws).await, (i, format!("m{i}")));
    }
}

/// Reads prefix-stamped frames up to seq `last` from a client that may fall
/// behind retention. Each data frame must be the next seq (its payload goes
/// to `check`); each gap frame must start exactly where delivery stopped.
/// Returns the reported gaps as `(from, to)`.
pub async fn read_through_gaps(ws: &mut Ws, last: u64, mut check: impl FnMut(u64, &str)) -> Vec<(u64, u64)> {
    let mut next_seq = 1u64;
    let mut gaps = Vec::new();
    while next_seq <= last {
        let text = next_text(ws).await;
        if let Some(control) = text.strip_prefix('#') {
            let g: Value = serde_json::from_str(control).unwrap();
            assert_eq!(g["type"], "gap", "{g}");
            assert_eq!(g["reason"], "trimmed");
            assert_eq!(g["requested_offset"], next_seq - 1);
            assert_eq!(g["lost"]["from"], next_seq, "the gap starts exactly where delivery stopped");
            let to = g["lost"]["to"].as_u64().unwrap();
            assert_eq!(g["first_available"], to + 1);
            gaps.push((next_seq, to));
            next_seq = to + 1;
            continue;
        }
        let (seq, payload) = text.split_once(':').unwrap_or_else(|| panic!("not a stamped frame: {text:?}"));
        assert_eq!(seq.parse::<u64>().unwrap(), next_seq, "in order, no duplicate, nothing silently skipped");
        check(next_seq, payload);
        next_seq += 1;
    }
    gaps
}

/// Waits for the close frame and returns its code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    within("a close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
}

/// A valid token for session `id` under [`SECRET`], built as
/// docs/PROTOCOL.md "Tokens" specifies, with no identity headers configured.
/// (A v1 token: tether minted these before tokens rotated, and still reads
/// them, as generation 0.)
pub fn mint_token(epoch: u64, id: [u8; 16]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    use sha2::Digest as _;
    let identity = sha2::Sha256::new().finalize();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(b"tether-token-v1");
    mac.update(&epoch.to_be_bytes());
    mac.update(&id);
    mac.update(&identity);
    let tag = mac.finalize().into_bytes();
    let mut token = vec![1u8];
    token.extend_from_slice(&epoch.to_be_bytes());
    token.extend_from_slice(&id);
    token.extend_from_slice(&tag[..16]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

/// Abrupt client drop: TCP reset, no close frame.
pub fn drop_abruptly(ws: Ws) {
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    }
    drop(ws);
}

// ---------------------------------------------------------------- http

pub use tether_testkit::metric;

/// A plain HTTP GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    within("an HTTP response", tether_testkit::http_get(addr, path)).await.expect("HTTP GET")
}

/// Sends raw bytes as an HTTP request and returns status and body.
pub async fn raw_request(addr: SocketAddr, request: &str) -> (u16, String) {
    within("an HTTP response", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        loop {
            let n = s.read(&mut buf[got..]).await.unwrap();
            got += n;
            let text = String::from_utf8_lossy(&buf[..got]).to_string();
            if n == 0 || complete(&text) {
                let status = text[9..12].parse().unwrap();
                let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
                return (status, body);
            }
        }
    })
    .await
}

fn complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
    });
    len.is_some_and(|n| body.len() >= n)
}

/// Scrapes `/metrics` until `sample` has `value` (state that tether updates
/// after the client-visible event, e.g. a detach after a dropped socket).
pub async fn wait_metric(admin: SocketAddr, sample: &str, value: f64) -> String {
    within(&format!("{sample} == {value}"), async {
        loop {
            let text = http_get(admin, "/metrics").await.1;
            if metric(&text, sample) == value {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}
