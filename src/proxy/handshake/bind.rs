//! Phase 2 here: the session this request attaches to, with a backend
//! connection opened for it if it needs one.

use std::net::SocketAddr;

use http::header::HeaderMap;
use http::Request;
use hyper::body::Incoming;

use super::admit::lost_session;
use super::{Bound, Resume};
use crate::config::BackendOnRestart;
use crate::protocol::control::{GapReason, GapReport, Outcome};
use crate::proxy::refusal::Refusal;
use crate::proxy::Context;
use crate::session::{AttachError, Attached, BackendConn};
use crate::upstream::SavedRequest;

/// Phase 2 of a resume: attaches the session, opening a backend connection
/// for an orphaned one. A session purged meanwhile becomes a new session
/// with an `expired` gap, served by the connection opened for it if any.
/// (A new session is `start_session` after `dial`.)
pub(super) async fn bind(
    Resume { session, start, gap, next_token }: Resume,
    offset: u64,
    req: &Request<Incoming>,
    peer: SocketAddr,
    ctx: &Context,
) -> Result<Bound, Refusal> {
    let expired = || Some(lost_session(GapReason::Expired, offset));
    // One dial per orphaned session: join one under way (an eager reopen,
    // or another client's resume), or claim it for this request.
    let mut attached = session.attach();
    let mut claim = None;
    while matches!(attached, Err(AttachError::NeedsBackend)) && claim.is_none() {
        claim = session.claim_dial();
        if claim.is_none() {
            session.dial_done().await;
            attached = session.attach();
        }
    }
    let (attachment, backend) = match attached {
        Ok(a) => (a, None),
        Err(AttachError::Purged) => return start_session(dial(req, peer, ctx).await?, expired(), ctx).await,
        Err(AttachError::NeedsBackend) => {
            let (conn, headers) = dial(req, peer, ctx).await?;
            match session.restart(conn).await {
                Ok(a) if a.kind == Attached::Restarted => (a, Some(headers)),
                Ok(a) => (a, None),
                Err(conn) => return start_session((conn, headers), expired(), ctx).await,
            }
        }
    };
    drop(claim);
    let outcome = match (gap.is_some(), attachment.kind) {
        (true, _) => Outcome::Gap,
        (false, Attached::Restarted) => Outcome::Restarted,
        // Reopened at start-up, before this client came back.
        (false, Attached::Live) if attachment.restart.is_some() => Outcome::Restarted,
        (false, Attached::Live | Attached::Ended) => Outcome::Resumed,
    };
    Ok(Bound { session, attachment, outcome, start, gap, backend, token_generation: next_token })
}

/// Reserves a `limits.max_sessions` slot, then opens a backend connection
/// for the client's request.
pub(super) async fn dial(
    req: &Request<Incoming>,
    peer: SocketAddr,
    ctx: &Context,
) -> Result<(BackendConn, HeaderMap), Refusal> {
    // A new backend connection could not journal a frame; resumes that
    // only replay what is journaled are still served.
    if ctx.sessions.journal_disk_full() {
        return Err(Refusal::journal_full(ctx.retry_after()));
    }
    let permit = ctx.sessions.reserve().ok_or_else(|| Refusal::over_capacity(ctx.retry_after()))?;
    let connected = ctx.upstream.connect(req.uri(), req.headers(), peer).await?;
    let session = &ctx.config.session;
    let saved = (session.backend_on_restart == BackendOnRestart::Eager)
        .then(|| SavedRequest::new(req.uri(), req.headers(), peer, session));
    Ok((BackendConn { socket: connected.socket, permit, saved }, connected.headers))
}

/// A new session around `conn`, attached to this request.
pub(super) async fn start_session(
    (conn, headers): (BackendConn, HeaderMap),
    gap: Option<GapReport>,
    ctx: &Context,
) -> Result<Bound, Refusal> {
    let session = ctx.sessions.create(conn).await.map_err(|_| Refusal::draining(ctx.retry_after()))?;
    let attachment = session.attach().map_err(|_| Refusal::backend_closed())?;
    let outcome = if gap.is_some() { Outcome::Gap } else { Outcome::New };
    Ok(Bound { session, attachment, outcome, start: 1, gap, backend: Some(headers), token_generation: 0 })
}
