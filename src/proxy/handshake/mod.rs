//! One upgrade request, in named phases, each in its own file:
//!
//! 1. [`admit`](admit::admit): is it a WebSocket upgrade tether can serve,
//!    and what do its resume credentials resolve to ([`Plan`])? On the peer
//!    port, it must also prove it was forwarded by a replica (`Tether-Peer`).
//! 2. either [`forward`](peer::forward): another replica owns the session,
//!    so the whole connection goes to it (its answer is relayed, then bytes
//!    are spliced); or [`bind`](bind::bind): open the backend connection if
//!    the session needs one and attach the session ([`Bound`]);
//! 3. [`respond`](respond::respond): the 101, with the token and the outcome;
//! 4. [`spawn_pump`](respond::spawn_pump): once hyper hands over the
//!    upgraded socket, the pump serves it.
//!
//! Every refusal happens before the 101; each is a `Refusal` constructor
//! (`proxy::refusal`), with its status, JSON body and metric.

mod admit;
mod bind;
mod peer;
mod respond;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use super::refusal::Refusal;
use super::{Context, Port};
use crate::cluster::Peer;
use crate::protocol::control::{GapReport, Outcome};
use crate::session::{Attachment, Session};
use admit::admit;
use bind::{bind, dial, start_session};
use peer::forward;
use respond::{respond, spawn_pump};

/// What the credentials resolve to.
pub(super) enum Plan {
    /// A new session (no token, or a token whose session is gone).
    New { gap: Option<GapReport> },
    /// An existing session.
    Resume(Resume),
    /// A session another replica owns: forward the connection to it.
    Forward { owner: Peer, token: String },
}

/// A resume of a session this instance holds, starting at `start`.
pub(super) struct Resume {
    pub(super) session: Arc<Session>,
    pub(super) start: u64,
    pub(super) gap: Option<GapReport>,
    /// The token generation to answer with: one past the presented one.
    pub(super) next_token: u32,
}

/// An upgrade request tether will serve.
pub(super) struct Admitted {
    /// The client's `Sec-WebSocket-Key`.
    pub(super) key: String,
    /// The identity fingerprint tokens are bound to.
    pub(super) identity: [u8; 32],
    /// The offset the client resumes from (0 without credentials).
    pub(super) offset: u64,
    /// The connection opts in to the upstream guarantee.
    pub(super) up: bool,
    /// The client offered `tether.v1` (`protocol::subprotocol`): the 101
    /// must select a protocol.
    pub(super) marker: bool,
    pub(super) plan: Plan,
}

/// A session attached to this request.
pub(super) struct Bound {
    pub(super) session: Arc<Session>,
    pub(super) attachment: Attachment,
    pub(super) outcome: Outcome,
    /// First seq to send.
    pub(super) start: u64,
    pub(super) gap: Option<GapReport>,
    /// The 101 of the backend connection this request opened, if it did.
    pub(super) backend: Option<HeaderMap>,
    /// The token generation to answer with (a new session: 0).
    pub(super) token_generation: u32,
}

/// Answers one request on the data port.
pub(super) async fn handle(
    mut req: Request<Incoming>,
    mut peer: SocketAddr,
    port: Port,
    ctx: Arc<Context>,
) -> Response<Full<Bytes>> {
    let admitted = match admit(&mut req, &mut peer, port, &ctx).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(&ctx.rt.metrics),
    };
    if !matches!(admitted.plan, Plan::Resume(_)) {
        return answer(upgrade(&mut req, admitted, peer, &ctx).await, &ctx);
    }
    // A resume runs to its end even if hyper drops this future (the
    // client, or the replica that forwarded it, went away meanwhile). Cut
    // short, a resume that had dialed the backend for its session dropped
    // that connection, and the next resume dialed again: the backend saw
    // two connections for one restart. Run to the end, the connection
    // joins its session, and the pump, finding no client, detaches it.
    // (Only resumes: a task per handshake cost every session ~200 bytes of
    // resident memory, and a new session cut short loses nothing.)
    let task_ctx = ctx.clone();
    let handshake = ctx.rt.tasks.spawn(async move {
        let result = upgrade(&mut req, admitted, peer, &task_ctx).await;
        answer(result, &task_ctx)
    });
    match handshake.await {
        Ok(resp) => resp,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels it.
        Err(_) => Refusal::draining(ctx.retry_after()).into_response(&ctx.rt.metrics),
    }
}

/// The 101, or the refusal's response.
fn answer(result: Result<Response<Full<Bytes>>, Refusal>, ctx: &Context) -> Response<Full<Bytes>> {
    match result {
        Ok(resp) => resp,
        Err(refusal) => refusal.into_response(&ctx.rt.metrics),
    }
}

/// Phase 2 and 3: binds the request to a session (forwarding it to the
/// session's owner instead, if another replica holds it), then answers it
/// and starts the pump.
async fn upgrade(
    req: &mut Request<Incoming>,
    admitted: Admitted,
    peer: SocketAddr,
    ctx: &Arc<Context>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let bound = match admitted.plan {
        Plan::Forward { owner, token } => return forward(req, peer, &owner, &token, ctx).await,
        Plan::New { gap } => start_session(dial(req, peer, ctx).await?, gap, ctx).await?,
        Plan::Resume(resume) => bind(resume, admitted.offset, req, peer, ctx).await?,
    };
    let owner = ctx.cluster.owner_field(&bound.session.id);
    let generation = bound.token_generation;
    let token = ctx.tokens.mint(ctx.epoch, &bound.session.id, generation, owner.as_deref(), &admitted.identity);
    let reason = bound.gap.as_ref().map_or("none", |g| g.reason.as_str());
    ctx.rt.metrics.resume(bound.outcome.as_str(), reason);
    tracing::info!(session = %bound.session.id, outcome = bound.outcome.as_str(), reason, "client attached");
    let resp = respond(req.headers(), &admitted.key, &bound, &token, admitted.up, admitted.marker);
    spawn_pump(req, bound, token, admitted.up, ctx);
    Ok(resp)
}
