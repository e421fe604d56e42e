//! Requests between replicas: a resume forwarded by a peer must prove it
//! (`Tether-Peer`), and a resume of a session a peer owns is forwarded to
//! it whole.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::cluster::peer_auth::now_secs;
use crate::cluster::{forward, OwnerAnswer, Peer, PeerRefused, PEER_HEADER};
use crate::protocol::credentials::Credentials;
use crate::proxy::refusal::Refusal;
use crate::proxy::{Context, Port};

/// A request on the peer port must carry a `Tether-Peer` signature over its
/// token and `X-Forwarded-For` (and one on the data port is refused, so the
/// peer path stays where a NetworkPolicy can fence it). Returns the client's
/// address, the last `X-Forwarded-For` entry, and puts back the header as
/// the client sent it, so the backend sees what it would have seen had the
/// client come straight to this replica.
pub(super) fn check_peer(
    req: &mut Request<Incoming>,
    port: Port,
    creds: Option<&Credentials>,
    ctx: &Context,
) -> Result<SocketAddr, Refusal> {
    if port == Port::Data {
        return Err(refuse_peer(PeerRefused::WrongPort, ctx));
    }
    let h = req.headers();
    let xff = h.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let token = creds.map_or("", |c| c.token.as_str());
    let from = ctx
        .cluster
        .auth
        .verify(h.get(PEER_HEADER), ctx.cluster.id(), now_secs(), token, &xff)
        .map_err(|e| refuse_peer(e, ctx))?;
    let (rest, last) = match xff.rsplit_once(',') {
        Some((rest, last)) => (Some(rest.trim()), last.trim()),
        None => (None, xff.trim()),
    };
    let client: IpAddr = match (creds, last.parse()) {
        (Some(_), Ok(ip)) => ip,
        _ => return Err(refuse_peer(PeerRefused::Malformed, ctx)),
    };
    let h = req.headers_mut();
    h.remove(PEER_HEADER);
    match rest.and_then(|r| HeaderValue::from_str(r).ok()) {
        Some(v) => h.insert("x-forwarded-for", v),
        None => h.remove("x-forwarded-for"),
    };
    tracing::debug!(from, to = ctx.cluster.id(), "forwarded resume from a peer");
    Ok(SocketAddr::new(client, 0))
}

/// Phase 2 when another replica owns the session: the whole connection
/// goes to it. Its refusal is relayed as it is; its 101 too, and then the
/// two sockets are spliced byte for byte (the owner stamps, journals and
/// replays; this replica parses nothing more).
pub(super) async fn forward(
    req: &mut Request<Incoming>,
    peer: SocketAddr,
    owner: &Peer,
    token: &str,
    ctx: &Arc<Context>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let c = &ctx.cluster;
    let headers = c.forwarder.headers(&c.auth, owner, req.headers(), peer, token);
    let answer = c
        .forwarder
        .open(owner, req.uri(), &headers)
        .await
        .map_err(|_| Refusal::owner_unreachable(ctx.retry_after()))?;
    match answer {
        OwnerAnswer::Refused { status, headers, body } => Ok(relay(status, &headers, body)),
        OwnerAnswer::Switched { headers, owner, early } => {
            let on_upgrade = hyper::upgrade::on(req);
            let stop = ctx.rt.shutdown.clone();
            ctx.rt.tasks.spawn(async move {
                match on_upgrade.await {
                    Ok(upgraded) => forward::splice(TokioIo::new(upgraded), owner, early, stop).await,
                    Err(e) => tracing::debug!(error = %e, "client upgrade failed on a forwarded resume"),
                }
            });
            Ok(relay(StatusCode::SWITCHING_PROTOCOLS, &headers, Bytes::new()))
        }
    }
}

/// The owner's response, status, headers and body, as this replica's.
fn relay(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::builder().status(status);
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            resp = resp.header(name, value);
        }
    }
    resp.body(Full::new(body)).expect("the owner's head parsed as a valid response")
}

/// Counts and refuses a request that did not prove it comes from a peer.
pub(super) fn refuse_peer(e: PeerRefused, ctx: &Context) -> Refusal {
    ctx.rt.metrics.peer_refused(e.reason());
    Refusal::from(e)
}
