//! One connection: the upgrade request written by hand (so the checker sets
//! every header and sees every response header and refusal body), then
//! tungstenite over the same stream for frames.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket after the upgrade.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Most bytes of a response head and body the checker reads.
const MAX_HEAD: usize = 64 * 1024;
/// Bound on the connect, TLS and upgrade together.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Connect, TLS, read or write failed, or the peer closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No full answer within the handshake bound.
    #[error("no answer to the upgrade within {HANDSHAKE:?}")]
    Timeout,
    /// The answer is not HTTP, or a 101 that is not a valid upgrade.
    #[error("bad answer: {0}")]
    Bad(String),
}

/// The answer to an upgrade request.
pub enum Answer {
    /// 101: the socket, and the response headers (names lowercased).
    Upgraded(Box<Ws>, Vec<(String, String)>),
    /// Any other status.
    Refused(Refusal),
}

/// A refusal as received.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// The JSON body's `error` field, if the body is JSON with one.
    pub error: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.error.as_deref().unwrap_or("(no JSON error)"))
    }
}

/// The value of header `name` (lowercase) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Connects to the session's proxy on `port`, and sends an upgrade for
/// `path` with the target's headers plus `extra`.
pub async fn open(target: &Target, port: u16, path: &str, extra: &[(&str, String)]) -> Result<Answer, WireError> {
    tokio::time::timeout(HANDSHAKE, open_now(target, port, path, extra)).await.unwrap_or(Err(WireError::Timeout))
}

async fn open_now(target: &Target, port: u16, path: &str, extra: &[(&str, String)]) -> Result<Answer, WireError> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn Io> = match &target.tls {
        Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        None => Box::new(tcp),
    };
    let key = generate_key();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        target.authority
    );
    for (k, v) in target.headers.iter().map(|(k, v)| (k.as_str(), v)).chain(extra.iter().map(|(k, v)| (*k, v))) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes()).await?;
    io.flush().await?;

    let mut buf = Vec::with_capacity(4096);
    let (status, headers, head_len) = loop {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed during the upgrade").into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).trim().to_owned()))
                    .collect::<Vec<_>>();
                break (resp.code.unwrap_or(0), headers, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(WireError::Bad("response head too large".into())),
            Err(e) => return Err(WireError::Bad(format!("not HTTP: {e}"))),
        }
    };
    let rest = buf.split_off(head_len);
    if status == 101 {
        if header(&headers, "sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err(WireError::Bad("101 without the right Sec-WebSocket-Accept".into()));
        }
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20));
        let ws = WebSocketStream::from_partially_read(io, rest, Role::Client, Some(config)).await;
        return Ok(Answer::Upgraded(Box::new(ws), headers));
    }
    // A refusal: its JSON body, as far as Content-Length says.
    let want = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0).min(MAX_HEAD);
    let mut body = rest;
    while body.len() < want {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let error = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    Ok(Answer::Refused(Refusal {
        status,
        error,
        content_type: header(&headers, "content-type").map(str::to_owned),
        retry_after: header(&headers, "retry-after").and_then(|v| v.parse().ok()),
    }))
}
