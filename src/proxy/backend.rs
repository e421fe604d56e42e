//! Opening the backend connection for a client's upgrade request: the same
//! path and query (minus tether's parameters), the client's end-to-end
//! headers, `X-Forwarded-*` added, hop-by-hop headers dropped.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use tokio::net::TcpStream;

use super::dial::{self, DialError};
use super::refusal::Refusal;
use super::Context;
use crate::protocol::credentials;
use crate::session::{BackendResponse, BackendSocket};

/// Where the backend is.
#[derive(Debug, Clone)]
pub struct Upstream {
    authority: String,
    prefix: String,
}

impl Upstream {
    /// Parses `ws://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: Uri = url.parse().map_err(|e| format!("upstream {url:?}: {e}"))?;
        if uri.scheme_str() != Some("ws") {
            return Err(format!("upstream {url:?}: only ws:// is supported"));
        }
        let auth = uri.authority().ok_or_else(|| format!("upstream {url:?}: no host"))?;
        let authority = match auth.port_u16() {
            Some(_) => auth.as_str().to_owned(),
            None => format!("{}:80", auth.host()),
        };
        Ok(Upstream { authority, prefix: uri.path().trim_end_matches('/').to_owned() })
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
pub fn is_hop_header(name: &HeaderName, connection: &HeaderMap) -> bool {
    if DROPPED.contains(&name.as_str()) {
        return true;
    }
    connection
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case(name.as_str())))
}

/// Connects to the backend for a client request with `uri` and `headers`,
/// within `ctx.backend_timeout`.
pub async fn connect(
    ctx: &Context,
    uri: &Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(BackendSocket, BackendResponse), Refusal> {
    let timeout = ctx.backend_timeout;
    let result = tokio::time::timeout(timeout, open(ctx, uri, headers, peer)).await;
    let (label, out) = match result {
        Ok(Ok(ok)) => ("ok", Ok(ok)),
        Ok(Err(r)) => (r.error, Err(r)),
        Err(_) => (
            "timeout",
            Err(Refusal::bad_gateway(
                "backend_timeout",
                format!("backend did not complete its handshake within {timeout:?}"),
            )),
        ),
    };
    ctx.metrics.backend_connects.with_label_values(&[label]).inc();
    out
}

async fn open(
    ctx: &Context,
    uri: &Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(BackendSocket, BackendResponse), Refusal> {
    let upstream = &ctx.upstream;
    let mut path = format!("{}{}", upstream.prefix, uri.path());
    if let Some(q) = credentials::strip_params(uri.query()) {
        path.push('?');
        path.push_str(&q);
    }
    if path.is_empty() {
        path.push('/');
    }
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    out.insert(header::HOST, hv(&upstream.authority));
    for (name, value) in headers {
        if !is_hop_header(name, headers) && !name.as_str().starts_with("x-forwarded-") {
            out.append(name.clone(), value.clone());
        }
    }
    forwarded(&mut out, headers, peer);

    let tcp = TcpStream::connect(&upstream.authority).await.map_err(|e| {
        Refusal::bad_gateway("backend_unreachable", format!("cannot connect to {}: {e}", upstream.authority))
    })?;
    let _ = tcp.set_nodelay(true);
    dial::handshake(tcp, &path, out, ctx.ws_config, ctx.max_header_bytes).await.map_err(|e| match e {
        DialError::Refused(_) => Refusal::bad_gateway("backend_refused", e.to_string()),
        DialError::Protocol(_) | DialError::Io(_) => Refusal::bad_gateway("backend_handshake_failed", e.to_string()),
    })
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
    fn upstream_urls() {
        let u = Upstream::parse("ws://backend:9000/api/").unwrap();
        assert_eq!((u.authority.as_str(), u.prefix.as_str()), ("backend:9000", "/api"));
        let u = Upstream::parse("ws://backend").unwrap();
        assert_eq!((u.authority.as_str(), u.prefix.as_str()), ("backend:80", ""));
        assert!(Upstream::parse("wss://backend").is_err());
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
