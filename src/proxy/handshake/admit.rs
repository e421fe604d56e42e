//! Phase 1: is the request a WebSocket upgrade tether can serve, and what
//! do its resume credentials resolve to?

use std::net::SocketAddr;

use http::header;
use http::{Request, StatusCode};
use hyper::body::{Body, Incoming};

use super::peer::{check_peer, refuse_peer};
use super::{Admitted, Plan, Resume};
use crate::cluster::{Located, PeerRefused, PEER_HEADER};
use crate::config::StampMode;
use crate::net::has_token;
use crate::protocol::control::{GapReason, GapReport, SeqRange};
use crate::protocol::credentials::{self, Credentials};
use crate::protocol::subprotocol;
use crate::protocol::token::RawToken;
use crate::protocol::unix_ms;
use crate::proxy::refusal::Refusal;
use crate::proxy::{Context, Port};
use crate::session::RotationError;
use crate::upstream::has_dot_segment;

/// Phase 1: checks the request and resolves its credentials. A forwarded
/// request's `peer` becomes the client's address as its forwarder saw it.
pub(super) async fn admit(
    req: &mut Request<Incoming>,
    peer: &mut SocketAddr,
    port: Port,
    ctx: &Context,
) -> Result<Admitted, Refusal> {
    if ctx.sessions.journal_failure().is_some() {
        return Err(Refusal::journal_failed(ctx.retry_after()));
    }
    if ctx.rt.shutdown.is_cancelled() {
        return Err(Refusal::draining(ctx.retry_after()));
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
    // Parsed by `credentials::parse` above, so it reads. The owner of a
    // forwarded resume reads the entries itself; everyone else loses them
    // here, before a backend connection is opened or a request saved.
    let marker = subprotocol::read(req.headers()).is_ok_and(|o| o.marker);
    if !matches!(plan, Plan::Forward { .. }) {
        subprotocol::strip(req.headers_mut());
    }
    Ok(Admitted { key, identity, offset, up, marker, plan })
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
                return Err(Refusal::owner_unreachable(ctx.retry_after()));
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
    // Last: a refused resume must not advance the session's generation.
    session.use_token(raw.generation).await.map_err(|e| match e {
        RotationError::Superseded => Refusal::token_superseded(),
        RotationError::Journal(_) => Refusal::journal_failed(ctx.retry_after()),
    })?;
    let next_token = raw.generation.saturating_add(1);
    Ok(Plan::Resume(Resume { session, start: wanted.max(first), gap, next_token }))
}

/// The report for a session that no longer exists: the client continues in
/// a new session whose seqs start at 1, and how much it lost is unknown.
pub(super) fn lost_session(reason: GapReason, offset: u64) -> GapReport {
    GapReport {
        reason,
        requested_offset: offset,
        first_available: 1,
        lost: SeqRange { from: offset.saturating_add(1), to: None },
    }
}

fn credential_error(e: &credentials::BadCredentials) -> &'static str {
    match e {
        credentials::BadCredentials::Offset(_) => "malformed_offset",
        _ => "malformed_credentials",
    }
}
