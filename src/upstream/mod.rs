//! The backend: where it is, and opening one WebSocket connection to it for
//! a client's upgrade request — the same path and query (minus tether's
//! parameters), the client's end-to-end headers, `X-Forwarded-*` added,
//! hop-by-hop headers dropped. [`dial`] does the RFC 6455 client handshake.

mod dial;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::config::UpstreamUrl;
use crate::metrics::Metrics;
use crate::net::{has_token, LazyRead};
use crate::protocol::credentials;
pub(crate) use dial::DialError;

/// A connected backend WebSocket.
pub(crate) type BackendSocket = WebSocketStream<LazyRead<TcpStream>>;

/// A backend connection that answered 101.
pub(crate) struct Connected {
    /// The socket, ready for frames.
    pub(crate) socket: BackendSocket,
    /// The headers of the backend's 101 (some are passed on to the client).
    pub(crate) headers: HeaderMap,
}

/// True if `path` has a `.` or `..` segment, literally or percent-encoded:
/// appended to the upstream's prefix, it could climb out of it.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// The request target for a client's `uri`: the upstream's prefix, the
/// client's path, and its query without tether's own parameters.
fn path_for(target: &UpstreamUrl, uri: &Uri) -> String {
    let mut path = format!("{}{}", target.prefix, uri.path());
    if let Some(q) = credentials::strip_params(uri.query()) {
        path.push('?');
        path.push_str(&q);
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// Why no backend connection could be opened; the proxy answers each with
/// a 502 (docs/PROTOCOL.md).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect to the backend: {0}")]
    Unreachable(std::io::Error),
    /// The WebSocket handshake failed or was refused.
    #[error(transparent)]
    Handshake(#[from] DialError),
    /// Connect plus handshake took longer than `server.backend_connect_timeout`.
    #[error("backend did not complete its handshake within {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    /// The `result` label of `tether_backend_connects_total`.
    fn label(&self) -> &'static str {
        match self {
            ConnectError::Unreachable(_) => "backend_unreachable",
            ConnectError::Handshake(DialError::Refused(_)) => "backend_refused",
            ConnectError::Handshake(_) => "backend_handshake_failed",
            ConnectError::Timeout(_) => "timeout",
        }
    }
}

/// Opens backend connections: the target plus the limits every backend
/// socket gets.
pub(crate) struct Upstream {
    /// Where the backend is.
    pub(crate) target: UpstreamUrl,
    /// Limits for the backend socket (the same as for client sockets).
    pub(crate) ws_config: WebSocketConfig,
    /// Connect plus handshake deadline.
    pub(crate) timeout: Duration,
    /// Largest 101 response head accepted.
    pub(crate) max_head_bytes: usize,
    /// Counts attempts by result.
    pub(crate) metrics: Arc<Metrics>,
}

impl Upstream {
    /// Connects to the backend for a client request with `uri` and `headers`
    /// from `peer`, within the connect timeout.
    pub(crate) async fn connect(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<Connected, ConnectError> {
        let result = match tokio::time::timeout(self.timeout, self.open(uri, headers, peer)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        };
        self.metrics.backend_connect(result.as_ref().map_or_else(ConnectError::label, |_| "ok"));
        result
    }

    async fn open(&self, uri: &Uri, headers: &HeaderMap, peer: SocketAddr) -> Result<Connected, ConnectError> {
        let mut out = HeaderMap::with_capacity(headers.len() + 4);
        out.insert(header::HOST, hv(&self.target.authority));
        for (name, value) in headers {
            if !is_hop_header(name, headers) && !name.as_str().starts_with("x-forwarded-") {
                out.append(name.clone(), value.clone());
            }
        }
        forwarded(&mut out, headers, peer);
        let tcp = TcpStream::connect(&self.target.authority).await.map_err(ConnectError::Unreachable)?;
        let _ = tcp.set_nodelay(true);
        let path = path_for(&self.target, uri);
        Ok(dial::handshake(tcp, &path, out, self.ws_config, self.max_head_bytes).await?)
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the
/// WebSocket handshake headers tether negotiates itself on each side and
/// tether's own credentials.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    credentials::SESSION_HEADER,
    credentials::OFFSET_HEADER,
];

/// True for headers that must not cross tether (including those the
/// `Connection` header names).
pub(crate) fn is_hop_header(name: &HeaderName, connection: &HeaderMap) -> bool {
    DROPPED.contains(&name.as_str()) || has_token(connection, header::CONNECTION, name.as_str())
}

/// `X-Forwarded-For` (appended), `-Proto` and `-Host` (kept if present).
fn forwarded(out: &mut HeaderMap, inbound: &HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let xff = match inbound.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    out.insert("x-forwarded-for", hv(&xff));
    let proto = inbound.get("x-forwarded-proto").cloned().unwrap_or(HeaderValue::from_static("http"));
    out.insert("x-forwarded-proto", proto);
    if let Some(host) = inbound.get("x-forwarded-host").or_else(|| inbound.get(header::HOST)) {
        out.insert("x-forwarded-host", host.clone());
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments() {
        for p in ["/..", "/a/../b", "/a/./b", "/%2e%2E/x", "/.%2e", "/a/.."] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in ["/", "/a/b", "/a..b/c", "/.well-known/x", "/a/...", ""] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn connection_named_headers_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade, X-Secret-Hop".parse().unwrap());
        assert!(is_hop_header(&HeaderName::from_static("x-secret-hop"), &h));
        assert!(is_hop_header(&HeaderName::from_static("tether-session"), &h));
        assert!(!is_hop_header(&HeaderName::from_static("authorization"), &h));
    }
}
