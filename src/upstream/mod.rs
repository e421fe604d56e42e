//! The backend: where it is, and opening one WebSocket connection to it for
//! a client's upgrade request — the same path and query (minus tether's
//! parameters), the client's end-to-end headers, `X-Forwarded-*` added,
//! hop-by-hop headers dropped. [`dial`] does the RFC 6455 client handshake.

mod dial;
mod failures;
mod saved;

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
use crate::tls::{self, MaybeTls};
pub(crate) use dial::DialError;
pub(crate) use failures::FailureLog;
pub(crate) use saved::{SavedKey, SavedRequest};

/// A connected backend WebSocket, over TCP (`ws://`) or TLS (`wss://`).
pub(crate) type BackendSocket = WebSocketStream<LazyRead<MaybeTls>>;

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
    /// The TLS handshake failed (untrusted or mismatched certificate, the
    /// backend refused ours, ...); the text says which kind, never where.
    #[error("{0}")]
    Tls(&'static str),
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
            ConnectError::Tls(_) => "backend_tls_failed",
            ConnectError::Handshake(DialError::Refused(_)) => "backend_refused",
            ConnectError::Handshake(_) => "backend_handshake_failed",
            ConnectError::Timeout(_) => "timeout",
        }
    }
}

/// Opens backend connections: the target plus the limits every backend
/// socket gets.
#[derive(Clone)]
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
    /// For `wss://` targets: verifies the backend, and presents the client
    /// certificate if one is configured.
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    /// True if clients reach tether over TLS: `X-Forwarded-Proto: https`
    /// unless the client sent one.
    pub(crate) client_tls: bool,
    /// Failures at `warn`, rate-limited.
    pub(crate) failures: Arc<FailureLog>,
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
        if let Err(e) = &result {
            self.failures.failed(e);
        }
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
        forwarded(&mut out, headers, peer, self.client_tls);
        let tcp = TcpStream::connect(&self.target.authority).await.map_err(ConnectError::Unreachable)?;
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => MaybeTls::Plain(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.target.host.clone())
                    .map_err(|_| ConnectError::Tls("the backend's host is not a valid TLS server name"))?;
                match connector.connect(name, tcp).await {
                    Ok(s) => MaybeTls::Tls(Box::new(s)),
                    Err(e) => {
                        // The rate-limited warn says which kind; this, what exactly.
                        tracing::debug!(error = %e, upstream = %self.target.authority, "TLS handshake with the backend failed");
                        return Err(ConnectError::Tls(tls::describe_handshake_error(&e)));
                    }
                }
            }
        };
        let path = path_for(&self.target, uri);
        match dial::handshake(stream, &path, out, self.ws_config, self.max_head_bytes).await {
            Err(DialError::Io(e)) if tls::is_tls_error(&e) => {
                tracing::debug!(error = %e, upstream = %self.target.authority, "TLS with the backend failed");
                Err(ConnectError::Tls(tls::describe_handshake_error(&e)))
            }
            r => Ok(r?),
        }
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
    credentials::UP_HEADER,
];

/// True for headers that must not cross tether (including those the
/// `Connection` header names).
pub(crate) fn is_hop_header(name: &HeaderName, connection: &HeaderMap) -> bool {
    DROPPED.contains(&name.as_str()) || has_token(connection, header::CONNECTION, name.as_str())
}

/// `X-Forwarded-For` (appended), `-Proto` and `-Host` (kept if present;
/// `-Proto` is otherwise `https` or `http` as the client connected).
fn forwarded(out: &mut HeaderMap, inbound: &HeaderMap, peer: SocketAddr, client_tls: bool) {
    let ip = peer.ip().to_string();
    let xff = match inbound.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    out.insert("x-forwarded-for", hv(&xff));
    let scheme = HeaderValue::from_static(if client_tls { "https" } else { "http" });
    let proto = inbound.get("x-forwarded-proto").cloned().unwrap_or(scheme);
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
