//! The hop to the owner: the client's upgrade request, as received plus
//! `X-Forwarded-For` and `Tether-Peer`, goes to the owner's peer port; the
//! owner's answer comes back. After a 101 the two sockets are spliced byte
//! for byte ([`splice`]): no frame is parsed, stamped or journaled here, the
//! owner does all of that as if the client were its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::peer_auth::{now_secs, PeerAuth, PEER_HEADER};
use super::Peer;
use crate::metrics::Metrics;
use crate::net::request_head;

/// Most headers read in the owner's response.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest refusal body relayed (tether's are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// What the owner answered.
pub(crate) enum OwnerAnswer {
    /// 101: relay these headers to the client, then [`splice`] with
    /// `owner`, first sending `early` (bytes the owner sent right after its
    /// head, e.g. the welcome frame).
    Switched {
        /// The owner's 101 headers.
        headers: HeaderMap,
        /// The owner's socket.
        owner: TcpStream,
        /// Bytes read past the owner's response head.
        early: Bytes,
    },
    /// A refusal (4xx/5xx with tether's JSON body), relayed as it is.
    Refused {
        /// The owner's status.
        status: StatusCode,
        /// The owner's headers (`Retry-After`, `Content-Type`, ...).
        headers: HeaderMap,
        /// The owner's body.
        body: Bytes,
    },
}

/// Why the owner could not serve the resume; the client gets
/// `503 owner_unavailable` and retries.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// TCP connect or the request write failed.
    #[error("the owner {0} is unreachable: {1}")]
    Unreachable(String, std::io::Error),
    /// Connect plus response head took longer than `cluster.forward_timeout`.
    #[error("the owner {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The owner is draining or its journal failed: it comes back.
    #[error("the owner {0} is draining or restarting")]
    Draining(String),
    /// The owner's answer is not a usable HTTP response.
    #[error("the owner {0} answered with a broken response: {1}")]
    Protocol(String, String),
}

/// Opens hops to owners and records each in the metrics and one log line.
pub(crate) struct Forwarder {
    me: String,
    timeout: Duration,
    max_head_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder for the instance `me`.
    pub(crate) fn new(me: String, timeout: Duration, max_head_bytes: usize, metrics: Arc<Metrics>) -> Forwarder {
        Forwarder { me, timeout, max_head_bytes: max_head_bytes.max(8192) * 4, metrics }
    }

    /// The request headers for the owner: the client's, with
    /// `X-Forwarded-For` extended by the client's address (the owner takes
    /// it back off, so the backend sees what it would have seen had the
    /// client come straight) and `Tether-Peer` signed over both.
    pub(crate) fn headers(
        &self,
        auth: &PeerAuth,
        peer: &Peer,
        client: &HeaderMap,
        client_addr: SocketAddr,
        token: &str,
    ) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(client.len() + 2);
        for (name, value) in client {
            if name != "x-forwarded-for" && name != PEER_HEADER {
                out.append(name.clone(), value.clone());
            }
        }
        let ip = client_addr.ip().to_string();
        let xff = match client.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        let sig = auth.sign(&self.me, &peer.id, now_secs(), token, &xff);
        if let (Ok(xff), Ok(sig)) = (HeaderValue::from_str(&xff), HeaderValue::from_str(&sig)) {
            out.insert(HeaderName::from_static("x-forwarded-for"), xff);
            out.insert(HeaderName::from_static(PEER_HEADER), sig);
        }
        out
    }

    /// Sends the request to `peer` and reads its answer, within
    /// `cluster.forward_timeout`.
    pub(crate) async fn open(&self, peer: &Peer, uri: &Uri, headers: &HeaderMap) -> Result<OwnerAnswer, ForwardError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.exchange(peer, uri, headers)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout(peer.addr.clone(), self.timeout)),
        };
        let elapsed = started.elapsed();
        let label = match &result {
            Ok(OwnerAnswer::Switched { .. }) => "ok",
            Ok(OwnerAnswer::Refused { .. }) => "refused",
            Err(_) => "unavailable",
        };
        if matches!(result, Ok(_) | Err(ForwardError::Draining(_))) {
            self.metrics.forward_seconds.observe(elapsed.as_secs_f64());
        }
        self.metrics.forwarded(label);
        let ms = elapsed.as_secs_f64() * 1000.0;
        match &result {
            Err(e) => {
                tracing::warn!(from = %self.me, to = %peer.id, result = label, ms, error = %e, "forwarded resume")
            }
            Ok(_) => tracing::info!(from = %self.me, to = %peer.id, result = label, ms, "forwarded resume"),
        }
        result
    }

    async fn exchange(&self, peer: &Peer, uri: &Uri, headers: &HeaderMap) -> Result<OwnerAnswer, ForwardError> {
        let unreachable = |e| ForwardError::Unreachable(peer.addr.clone(), e);
        let mut tcp = TcpStream::connect(&peer.addr).await.map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        tcp.write_all(&request_head(uri.path_and_query().map_or("/", |p| p.as_str()), headers))
            .await
            .map_err(unreachable)?;
        let broken = |m: String| ForwardError::Protocol(peer.addr.clone(), m);
        let mut buf = Vec::with_capacity(4096);
        let (status, head_len, headers) = loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.map_err(unreachable)?;
            if n == 0 {
                // A peer port that closes at once is one going away.
                return Err(ForwardError::Draining(peer.addr.clone()));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|e| broken(e.to_string()))?;
                    let mut map = HeaderMap::with_capacity(resp.headers.len());
                    for h in resp.headers.iter() {
                        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| broken(e.to_string()))?;
                        map.append(name, HeaderValue::from_bytes(h.value).map_err(|e| broken(e.to_string()))?);
                    }
                    break (status, len, map);
                }
                Ok(httparse::Status::Partial) if buf.len() < self.max_head_bytes => continue,
                Ok(httparse::Status::Partial) => return Err(broken("response head too large".into())),
                Err(e) => return Err(broken(e.to_string())),
            }
        };
        let early = Bytes::copy_from_slice(&buf[head_len..]);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(OwnerAnswer::Switched { headers, owner: tcp, early });
        }
        let len = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_BODY);
        let mut body = early.to_vec();
        body.truncate(len);
        while body.len() < len {
            let mut chunk = vec![0u8; len - body.len()];
            let n = tcp.read(&mut chunk).await.map_err(unreachable)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && comes_back(&body) {
            return Err(ForwardError::Draining(peer.addr.clone()));
        }
        Ok(OwnerAnswer::Refused { status, headers, body: Bytes::from(body) })
    }
}

/// True for the owner's own 503s that end with its restart (`draining`,
/// `journal_failed`); `over_capacity` is relayed as it is.
fn comes_back(body: &[u8]) -> bool {
    let error =
        serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v["error"].as_str().map(str::to_owned));
    matches!(error.as_deref(), Some("draining" | "journal_failed"))
}

/// The whole rest of a forwarded connection: the owner's early bytes to the
/// client, then bytes both ways until either side closes, or this instance
/// drains (the client then resumes through another replica).
pub(crate) async fn splice<C>(mut client: C, mut owner: TcpStream, early: Bytes, stop: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut owner) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "forwarded connection ended");
            }
        }
        () = stop.cancelled() => {}
    }
}
