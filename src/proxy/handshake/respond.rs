//! Phases 3 and 4: the 101, then the pump on the upgraded socket.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::Bound;
use crate::net::LazyRead;
use crate::protocol::control::GapReport;
use crate::protocol::credentials;
use crate::protocol::subprotocol;
use crate::proxy::pump::{Greeting, Pump};
use crate::proxy::tap::RawTap;
use crate::proxy::Context;
use crate::upstream::is_hop_header;

/// Phase 3: the 101. The backend's own 101 headers pass through when this
/// request opened the backend connection, except hop-by-hop ones and any
/// `tether-*` header; tether's are added. `marker`: the client offered
/// `tether.v1`.
pub(super) fn respond(
    client: &HeaderMap,
    key: &str,
    bound: &Bound,
    token: &str,
    up: bool,
    marker: bool,
) -> Response<Full<Bytes>> {
    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(backend) = &bound.backend {
        for (name, value) in backend {
            if !is_hop_header(name, backend) && name != header::SEC_WEBSOCKET_PROTOCOL && !is_tether_header(name) {
                resp = resp.header(name, value);
            }
        }
    }
    if let Some(p) = selected(client, bound.backend.as_ref(), marker) {
        resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    let resp = resp
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .header(credentials::SESSION_HEADER, HeaderValue::from_str(token).expect("base64url is a header value"))
        .header("tether-outcome", bound.outcome.as_str());
    let resp = match &bound.gap {
        Some(g) => resp.header("tether-gap", gap_header(g)),
        None => resp,
    };
    let resp = if up { resp.header(credentials::UP_HEADER, credentials::UP_SEQ) } else { resp };
    resp.body(Full::new(Bytes::new())).expect("valid 101")
}

/// True for the `tether-*` namespace, which only tether itself may answer
/// with: a backend's `Tether-Outcome` would otherwise reach the client ahead
/// of tether's own. (Header names are lowercase in an `http::HeaderMap`.)
fn is_tether_header(name: &header::HeaderName) -> bool {
    name.as_str().starts_with("tether-")
}

/// The subprotocol to confirm to the client: the backend's choice when
/// this request opened a backend connection, otherwise the client's first
/// offer (a resumed session keeps the backend connection that chose it);
/// failing both, `tether.v1` if the client offered it, as a browser fails a
/// 101 that selects none of the protocols it offered. `client` no longer
/// has tether's entries (`admit` removed them), so the token entry is
/// never echoed.
fn selected(client: &HeaderMap, backend: Option<&HeaderMap>, marker: bool) -> Option<HeaderValue> {
    let chosen = match backend {
        Some(headers) => headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned(),
        None => client
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|p| HeaderValue::from_str(p.trim()).ok()),
    };
    chosen.or_else(|| marker.then_some(HeaderValue::from_static(subprotocol::MARKER)))
}

/// `Tether-Gap` header: the report for clients that read 101 headers.
fn gap_header(g: &GapReport) -> String {
    let to = g.lost.to.map_or_else(|| "unknown".to_owned(), |t| t.to_string());
    format!("reason={}; from={}; to={}; first_available={}", g.reason.as_str(), g.lost.from, to, g.first_available)
}

/// Phase 4: once hyper has sent the 101 and hands over the socket, the pump
/// serves it. If the upgrade fails, the session goes back to where it was.
pub(super) fn spawn_pump(req: &mut Request<Incoming>, bound: Bound, token: String, up: bool, ctx: &Arc<Context>) {
    let on_upgrade = hyper::upgrade::on(req);
    let ctx = ctx.clone();
    let Bound { session, attachment, outcome, start, gap, .. } = bound;
    // Boxed, like the greeting: what the task captures stays in its future
    // for the session's whole life, after the pump took it over.
    let held = Box::new((session, attachment));
    let greeting = Box::new(Greeting { token, outcome, gap, start, up });
    ctx.rt.tasks.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = RawTap::new(LazyRead::new(TokioIo::new(upgraded)));
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ctx.ws_config)).await;
                let (session, attachment) = *held;
                Pump::new(ws, session, attachment, ctx).run(greeting).await;
            }
            Err(e) => {
                let (session, attachment) = *held;
                tracing::debug!(session = %session.id, error = %e, "client upgrade failed");
                session.abandon(attachment);
            }
        }
    });
}
