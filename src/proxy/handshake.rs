//! One upgrade request, in named phases:
//!
//! 1. [`admit`]: is it a WebSocket upgrade tether can serve, and what do
//!    its resume credentials resolve to ([`Plan`])? On the peer port, it
//!    must also prove it was forwarded by a replica (`Tether-Peer`).
//! 2. either [`forward`]: another replica owns the session, so the whole
//!    connection goes to it (its answer is relayed, then bytes are spliced);
//!    or [`bind`]: open the backend connection if the session needs one and
//!    attach the session ([`Bound`]);
//! 3. [`respond`]: the 101, with the token and the outcome;
//! 4. [`spawn_pump`]: once hyper hands over the upgraded socket, the pump
//!    serves it.
//!
//! Every refusal happens before the 101.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::pump::{Greeting, Pump};
use super::refusal::Refusal;
use super::tap::RawTap;
use super::{Context, Port};
use crate::cluster::peer_auth::now_secs;
use crate::cluster::{forward, Located, OwnerAnswer, Peer, PeerRefused, PEER_HEADER};
use crate::config::{BackendOnRestart, StampMode};
use crate::net::{has_token, LazyRead};
use crate::protocol::control::{GapReason, GapReport, Outcome, SeqRange};
use crate::protocol::credentials::{self, Credentials};
use crate::protocol::token::RawToken;
use crate::protocol::unix_ms;
use crate::session::{AttachError, Attached, Attachment, BackendConn, Session};
use crate::upstream::{has_dot_segment, is_hop_header, SavedRequest};

/// What the credentials resolve to.
enum Plan {
    /// A new session (no token, or a token whose session is gone).
    New { gap: Option<GapReport> },
    /// An existing session.
    Resume(Resume),
    /// A session another replica owns: forward the connection to it.
    Forward { owner: Peer, token: String },
}

/// A resume of a session this instance holds, starting at `start`.
struct Resume {
    session: Arc<Session>,
    start: u64,
    gap: Option<GapReport>,
}

/// An upgrade request tether will serve.
struct Admitted {
    /// The client's `Sec-WebSocket-Key`.
    key: String,
    /// The identity fingerprint tokens are bound to.
    identity: [u8; 32],
    /// The offset the client resumes from (0 without credentials).
    offset: u64,
    /// The connection opts in to the upstream guarantee.
    up: bool,
    plan: Plan,
}

/// A session attached to this request.
struct Bound {
    session: Arc<Session>,
    attachment: Attachment,
    outcome: Outcome,
    /// First seq to send.
    start: u64,
    gap: Option<GapReport>,
    /// The 101 of the backend connection this request opened, if it did.
    backend: Option<HeaderMap>,
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
        Err(_) => draining(&ctx).into_response(&ctx.rt.metrics),
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
    let token = ctx.tokens.mint(ctx.epoch, &bound.session.id, owner.as_deref(), &admitted.identity);
    let reason = bound.gap.as_ref().map_or("none", |g| g.reason.as_str());
    ctx.rt.metrics.resume(bound.outcome.as_str(), reason);
    tracing::info!(session = %bound.session.id, outcome = bound.outcome.as_str(), reason, "client attached");
    let resp = respond(req.headers(), &admitted.key, &bound, &token, admitted.up);
    spawn_pump(req, bound, token, admitted.up, ctx);
    Ok(resp)
}

/// Phase 1: checks the request and resolves its credentials. A forwarded
/// request's `peer` becomes the client's address as its forwarder saw it.
async fn admit(
    req: &mut Request<Incoming>,
    peer: &mut SocketAddr,
    port: Port,
    ctx: &Context,
) -> Result<Admitted, Refusal> {
    if ctx.sessions.journal_failure().is_some() {
        return Err(journal_failed(ctx));
    }
    if ctx.rt.shutdown.is_cancelled() {
        return Err(draining(ctx));
    }
    let key = check_upgrade(req, ctx)?;
    if has_dot_segment(req.uri().path()) {
        return Err(Refusal::bad_request("bad_path", "the request path must not contain . or .. segments"));
    }
    let creds = credentials::parse(req.headers(), req.uri().query())
        .map_err(|e| Refusal::bad_request(credential_error(&e), e.to_string()))?;
    let up = credentials::parse_up(req.headers(), req.uri().query())
        .map_err(|e| Refusal::bad_request("malformed_up", e.to_string()))?;
    if up && ctx.stamper.mode() == StampMode::None {
        let detail = "stamp.mode = \"none\" sends no control frames, so no upstream acks (docs/PROTOCOL.md §12)";
        return Err(Refusal::bad_request("upstream_unsupported", detail));
    }
    if port == Port::Peer || req.headers().contains_key(PEER_HEADER) {
        *peer = check_peer(req, port, creds.as_ref(), ctx)?;
    }
    let identity = ctx.tokens.identity(req.headers());
    let (offset, plan) = match &creds {
        None => (0, Plan::New { gap: None }),
        Some(c) => (c.offset, resolve(c, &identity, port, ctx).await?),
    };
    Ok(Admitted { key, identity, offset, up, plan })
}

/// Phase 2 of a resume: attaches the session, opening a backend connection
/// for an orphaned one. A session purged meanwhile becomes a new session
/// with an `expired` gap, served by the connection opened for it if any.
/// (A new session is `start_session` after `dial`.)
async fn bind(
    Resume { session, start, gap }: Resume,
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
    Ok(Bound { session, attachment, outcome, start, gap, backend })
}

/// Reserves a `limits.max_sessions` slot, then opens a backend connection
/// for the client's request.
async fn dial(req: &Request<Incoming>, peer: SocketAddr, ctx: &Context) -> Result<(BackendConn, HeaderMap), Refusal> {
    // A new backend connection could not journal a frame; resumes that
    // only replay what is journaled are still served.
    if ctx.sessions.journal_disk_full() {
        return Err(journal_full(ctx));
    }
    let permit = ctx.sessions.reserve().ok_or_else(|| over_capacity(ctx))?;
    let connected = ctx.upstream.connect(req.uri(), req.headers(), peer).await?;
    let session = &ctx.config.session;
    let saved = (session.backend_on_restart == BackendOnRestart::Eager)
        .then(|| SavedRequest::new(req.uri(), req.headers(), peer, session));
    Ok((BackendConn { socket: connected.socket, permit, saved }, connected.headers))
}

/// A new session around `conn`, attached to this request.
async fn start_session(
    (conn, headers): (BackendConn, HeaderMap),
    gap: Option<GapReport>,
    ctx: &Context,
) -> Result<Bound, Refusal> {
    let session = ctx.sessions.create(conn).await.map_err(|_| draining(ctx))?;
    let attachment = session.attach().map_err(|_| gone())?;
    let outcome = if gap.is_some() { Outcome::Gap } else { Outcome::New };
    Ok(Bound { session, attachment, outcome, start: 1, gap, backend: Some(headers) })
}

/// Phase 3: the 101. The backend's own 101 headers pass through when this
/// request opened the backend connection, except hop-by-hop ones and any
/// `tether-*` header; tether's are added.
fn respond(client: &HeaderMap, key: &str, bound: &Bound, token: &str, up: bool) -> Response<Full<Bytes>> {
    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(backend) = &bound.backend {
        for (name, value) in backend {
            if !is_hop_header(name, backend) && name != header::SEC_WEBSOCKET_PROTOCOL && !is_tether_header(name) {
                resp = resp.header(name, value);
            }
        }
    }
    if let Some(p) = subprotocol(client, bound.backend.as_ref()) {
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
/// offer (a resumed session keeps the backend connection that chose it).
fn subprotocol(client: &HeaderMap, backend: Option<&HeaderMap>) -> Option<HeaderValue> {
    match backend {
        Some(headers) => headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned(),
        None => client
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|p| HeaderValue::from_str(p.trim()).ok()),
    }
}

/// Phase 4: once hyper has sent the 101 and hands over the socket, the pump
/// serves it. If the upgrade fails, the session goes back to where it was.
fn spawn_pump(req: &mut Request<Incoming>, bound: Bound, token: String, up: bool, ctx: &Arc<Context>) {
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

/// Checks the request is a WebSocket upgrade tether can serve; returns the
/// client's `Sec-WebSocket-Key`.
fn check_upgrade(req: &Request<Incoming>, ctx: &Context) -> Result<String, Refusal> {
    let h = req.headers();
    let head_bytes: usize =
        h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() + req.uri().to_string().len();
    if head_bytes > ctx.config.limits.max_header_bytes {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request head is {head_bytes} bytes; the limit is {}", ctx.config.limits.max_header_bytes),
        ));
    }
    if req.method() != http::Method::GET
        || !has_token(h, header::UPGRADE, "websocket")
        || !has_token(h, header::CONNECTION, "upgrade")
    {
        return Err(Refusal::bad_request(
            "not_websocket",
            "tether only accepts WebSocket upgrades (GET with Upgrade: websocket)",
        ));
    }
    // RFC 6455 §4.1 asks for HTTP/1.1 or higher, and HTTP/1.0 has no
    // upgrade mechanism at all: refuse it here, before a backend is dialed.
    if req.version() != http::Version::HTTP_11 {
        return Err(Refusal::new(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "unsupported_http_version",
            format!("WebSocket upgrades need HTTP/1.1; the request is {:?}", req.version()),
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_version",
            "only Sec-WebSocket-Version 13 is supported",
        );
        r.extra = Some((header::SEC_WEBSOCKET_VERSION, "13"));
        return Err(r);
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| k.len() == 24)
        .ok_or_else(|| Refusal::bad_request("bad_websocket_key", "Sec-WebSocket-Key is missing or malformed"))?;
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || req.body().size_hint().lower() > 0
        || h.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(Refusal::bad_request("upgrade_with_body", "an upgrade request must not carry a body"));
    }
    let allowed = &ctx.config.server.allowed_origins;
    if !allowed.is_empty() {
        let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if let Some(o) = origin {
            if !allowed.iter().any(|a| a == o) {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    format!("origin {o:?} is not allowed"),
                ));
            }
        }
    }
    Ok(key.to_owned())
}

/// Authenticates the token and decides where the resume starts: here, or
/// at the replica that owns it.
async fn resolve(c: &Credentials, identity: &[u8; 32], port: Port, ctx: &Context) -> Result<Plan, Refusal> {
    let raw = RawToken::parse(&c.token).map_err(|e| Refusal::bad_request("malformed_token", e.to_string()))?;
    let forged = || {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the session token is forged or bound to another identity",
        )
    };
    let fresh = |reason| Plan::New { gap: Some(lost_session(reason, c.offset)) };
    if raw.owner.is_some() && ctx.cluster.enabled() {
        // The owner field is only believed once the MAC says tether wrote it.
        if !ctx.tokens.verify(&raw, identity) {
            return Err(forged());
        }
        match ctx.cluster.locate(raw.owner.as_deref(), &raw.session).await {
            Located::Local => {}
            Located::Peer(_) if port == Port::Peer => return Err(refuse_peer(PeerRefused::NotOwner, ctx)),
            Located::Peer(owner) => return Ok(Plan::Forward { owner, token: c.token.clone() }),
            Located::Gone(why) => {
                ctx.rt.metrics.forwarded("gone");
                tracing::info!(session = %raw.session, instance = ctx.cluster.id(), why, "the session's owner is gone");
                return Ok(fresh(GapReason::JournalLost));
            }
            Located::Unknown(why) => {
                ctx.rt.metrics.forwarded("unavailable");
                tracing::warn!(session = %raw.session, instance = ctx.cluster.id(), why, "cannot locate the session's owner");
                return Err(owner_unavailable(ctx));
            }
        }
    }
    if raw.epoch != ctx.epoch {
        // With a generated secret the old journal took its key with it, so a
        // token from another epoch cannot be verified: it can only mean the
        // journal was lost. Such a client gets a new session, as anyone can.
        if ctx.secret_generated || ctx.tokens.verify(&raw, identity) {
            return Ok(fresh(GapReason::JournalLost));
        }
        return Err(forged());
    }
    if !ctx.tokens.verify(&raw, identity) {
        return Err(forged());
    }
    let Some(session) = ctx.sessions.get(&raw.session) else {
        let age_ms = unix_ms().saturating_sub(raw.session.created_ms());
        let evicted = raw.session.created_ms() <= ctx.sessions.evicted_upto();
        let reason = if evicted || u128::from(age_ms) > ctx.config.journal.retention.as_millis() {
            GapReason::Expired
        } else {
            GapReason::UnknownSession
        };
        return Ok(fresh(reason));
    };
    let last = session.committed();
    if c.offset > last {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "offset_ahead",
            format!("offset {} is ahead of the session's last seq {last}", c.offset),
        ));
    }
    let first = session.first_available();
    let wanted = c.offset.saturating_add(1);
    let gap = (wanted < first).then(|| GapReport {
        reason: GapReason::Trimmed,
        requested_offset: c.offset,
        first_available: first,
        lost: SeqRange { from: wanted, to: Some(first - 1) },
    });
    Ok(Plan::Resume(Resume { session, start: wanted.max(first), gap }))
}

/// The report for a session that no longer exists: the client continues in
/// a new session whose seqs start at 1, and how much it lost is unknown.
fn lost_session(reason: GapReason, offset: u64) -> GapReport {
    GapReport {
        reason,
        requested_offset: offset,
        first_available: 1,
        lost: SeqRange { from: offset.saturating_add(1), to: None },
    }
}

fn over_capacity(ctx: &Context) -> Refusal {
    Refusal::unavailable(
        "over_capacity",
        "tether holds its maximum number of backend connections (limits.max_sessions)",
        ctx.config.server.retry_after_secs,
    )
}

fn draining(ctx: &Context) -> Refusal {
    Refusal::unavailable("draining", "tether is shutting down; retry", ctx.config.server.retry_after_secs)
}

/// Nothing could be journaled, so nothing could be delivered; the process
/// is about to exit and be restarted.
fn journal_failed(ctx: &Context) -> Refusal {
    Refusal::unavailable(
        "journal_failed",
        "tether cannot write its journal and is restarting; retry",
        ctx.config.server.retry_after_secs,
    )
}

/// The journal waits for disk space; it resumes by itself once there is.
fn journal_full(ctx: &Context) -> Refusal {
    Refusal::unavailable(
        "journal_full",
        "tether's journal disk is full; new sessions wait until space is freed; retry",
        ctx.config.server.retry_after_secs,
    )
}

fn owner_unavailable(ctx: &Context) -> Refusal {
    Refusal::owner_unavailable(
        "the replica that owns this session is unreachable, slow or restarting; retry",
        ctx.config.server.retry_after_secs,
    )
}

/// Counts and refuses a request that did not prove it comes from a peer.
fn refuse_peer(e: PeerRefused, ctx: &Context) -> Refusal {
    ctx.rt.metrics.peer_refused(e.reason());
    Refusal::from(e)
}

/// A request on the peer port must carry a `Tether-Peer` signature over its
/// token and `X-Forwarded-For` (and one on the data port is refused, so the
/// peer path stays where a NetworkPolicy can fence it). Returns the client's
/// address, the last `X-Forwarded-For` entry, and puts back the header as
/// the client sent it, so the backend sees what it would have seen had the
/// client come straight to this replica.
fn check_peer(
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
async fn forward(
    req: &mut Request<Incoming>,
    peer: SocketAddr,
    owner: &Peer,
    token: &str,
    ctx: &Arc<Context>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let c = &ctx.cluster;
    let headers = c.forwarder.headers(&c.auth, owner, req.headers(), peer, token);
    let answer = c.forwarder.open(owner, req.uri(), &headers).await.map_err(|_| owner_unavailable(ctx))?;
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

fn gone() -> Refusal {
    Refusal::bad_gateway("backend_closed", "the backend closed the new session immediately")
}

fn credential_error(e: &credentials::BadCredentials) -> &'static str {
    match e {
        credentials::BadCredentials::Offset(_) => "malformed_offset",
        _ => "malformed_credentials",
    }
}

/// `Tether-Gap` header: the report for clients that read 101 headers.
fn gap_header(g: &GapReport) -> String {
    let to = g.lost.to.map_or_else(|| "unknown".to_owned(), |t| t.to_string());
    format!("reason={}; from={}; to={}; first_available={}", g.reason.as_str(), g.lost.from, to, g.first_available)
}
