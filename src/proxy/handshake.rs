//! One upgrade request, top to bottom: check it is a WebSocket upgrade,
//! authenticate the resume, decide the outcome, open the backend connection
//! if the session needs one, attach the session, answer 101 and hand the
//! upgraded socket to the pump. Every refusal happens before the 101.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::backend::{self, is_hop_header};
use super::pump::{self, Greeting};
use super::refusal::Refusal;
use super::Context;
use crate::lazy_read::LazyRead;
use crate::protocol::control::{GapReason, GapReport, Outcome, SeqRange};
use crate::protocol::credentials::{self, Credentials};
use crate::protocol::token::RawToken;
use crate::protocol::unix_ms;
use crate::session::{AttachError, Attached, BackendResponse, BackendSocket, Session};

/// What the credentials resolve to.
enum Plan {
    /// A new session (no token, or a token whose session is gone).
    New { gap: Option<GapReport> },
    /// An existing session, starting at `start`.
    Resume { session: Arc<Session>, start: u64, gap: Option<GapReport> },
}

/// Answers one request on the data port.
pub async fn handle(mut req: Request<Incoming>, peer: SocketAddr, ctx: Arc<Context>) -> Response<Full<Bytes>> {
    match upgrade(&mut req, peer, &ctx).await {
        Ok(resp) => resp,
        Err(refusal) => refusal.into_response(&ctx.metrics),
    }
}

async fn upgrade(
    req: &mut Request<Incoming>,
    peer: SocketAddr,
    ctx: &Arc<Context>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    if ctx.shutdown.is_cancelled() {
        return Err(Refusal::unavailable("draining", "tether is shutting down; retry", ctx.retry_after));
    }
    let client_key = check_upgrade(req, ctx)?;
    let creds = credentials::parse(req.headers(), req.uri().query())
        .map_err(|e| Refusal::bad_request(credential_error(&e), e.to_string()))?;
    let identity = ctx.tokens.identity(req.headers());
    let plan = match &creds {
        None => Plan::New { gap: None },
        Some(c) => resolve(c, &identity, ctx)?,
    };

    let mut plan = plan;
    // A backend connection opened for a restart that turned out to be moot
    // (the session was purged meanwhile) serves the new session instead.
    let mut dialed: Option<(BackendSocket, BackendResponse)> = None;
    let (session, attachment, outcome, start, gap, backend_resp) = loop {
        match plan {
            Plan::New { gap } => {
                let (conn, resp) = match dialed.take() {
                    Some(d) => d,
                    None if ctx.sessions.is_full() => return Err(over_capacity(ctx)),
                    None => connect(req, peer, ctx).await?,
                };
                let session = ctx.sessions.create(conn).await.map_err(|_| over_capacity(ctx))?;
                let (attachment, _, _) = session.attach(None).map_err(|_| gone())?;
                let outcome = if gap.is_some() { Outcome::Gap } else { Outcome::New };
                break (session, attachment, outcome, 1, gap, Some(resp));
            }
            Plan::Resume { session, start, gap } => {
                let mut resp = None;
                let attached = loop {
                    match session.attach(dialed.take().map(|(c, r)| {
                        resp = Some(r);
                        c
                    })) {
                        Ok(attached) => break Some(attached),
                        Err(AttachError::Purged(conn)) => {
                            dialed = conn.zip(resp.take());
                            break None;
                        }
                        Err(AttachError::NeedsBackend) => {
                            if ctx.sessions.is_full() {
                                return Err(over_capacity(ctx));
                            }
                            dialed = Some(connect(req, peer, ctx).await?);
                        }
                    }
                };
                let Some((attachment, kind, spare)) = attached else {
                    let offset = creds.as_ref().map_or(0, |c| c.offset);
                    plan = Plan::New { gap: Some(lost_session(GapReason::Expired, offset)) };
                    continue;
                };
                if let Some(mut spare) = spare {
                    // A concurrent resume revived the session first.
                    resp = None;
                    tokio::spawn(async move {
                        let _ = spare.close(None).await;
                    });
                }
                if kind == Attached::Restarted {
                    session.persist_meta().await;
                }
                let outcome = match (gap.is_some(), kind) {
                    (true, _) => Outcome::Gap,
                    (false, Attached::Restarted) => Outcome::Restarted,
                    (false, Attached::Live | Attached::Ended) => Outcome::Resumed,
                };
                break (session, attachment, outcome, start, gap, resp);
            }
        }
    };

    let token = ctx.tokens.mint(ctx.epoch, &session.id, &identity);
    let reason = gap.as_ref().map_or("none", |g| g.reason.as_str());
    ctx.metrics.resumes.with_label_values(&[outcome.as_str(), reason]).inc();
    tracing::info!(session = %session.id, outcome = outcome.as_str(), reason, "client attached");

    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(backend) = &backend_resp {
        for (name, value) in backend.headers() {
            if !is_hop_header(name, backend.headers()) && name != header::SEC_WEBSOCKET_PROTOCOL {
                resp = resp.header(name, value);
            }
        }
    }
    if let Some(p) = ctx.subprotocol(req.headers(), backend_resp.as_ref()) {
        resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    let resp = resp
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(client_key.as_bytes()))
        .header(credentials::SESSION_HEADER, HeaderValue::from_str(&token).expect("base64url is a header value"))
        .header("tether-outcome", outcome.as_str());
    let resp = match &gap {
        Some(g) => resp.header("tether-gap", gap_header(g)),
        None => resp,
    };
    let resp = resp.body(Full::new(Bytes::new())).expect("valid 101");

    let on_upgrade = hyper::upgrade::on(req);
    let ctx = ctx.clone();
    let greeting = Greeting { token, outcome, gap, start };
    ctx.tasks.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    LazyRead::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(ctx.ws_config),
                )
                .await;
                pump::run(ws, session, attachment, greeting, ctx).await;
            }
            Err(e) => {
                tracing::debug!(session = %session.id, error = %e, "client upgrade failed");
                session.abandon(attachment);
            }
        }
    });
    Ok(resp)
}

/// Checks the request is a WebSocket upgrade tether can serve; returns the
/// client's `Sec-WebSocket-Key`.
fn check_upgrade(req: &Request<Incoming>, ctx: &Context) -> Result<String, Refusal> {
    let h = req.headers();
    let head_bytes: usize =
        h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() + req.uri().to_string().len();
    if head_bytes > ctx.max_header_bytes {
        return Err(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request head is {head_bytes} bytes; the limit is {}", ctx.max_header_bytes),
        ));
    }
    let token_in = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    };
    if req.method() != http::Method::GET
        || !token_in(header::UPGRADE, "websocket")
        || !token_in(header::CONNECTION, "upgrade")
    {
        return Err(Refusal::bad_request(
            "not_websocket",
            "tether only accepts WebSocket upgrades (GET with Upgrade: websocket)",
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
    if !ctx.allowed_origins.is_empty() {
        let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if let Some(o) = origin {
            if !ctx.allowed_origins.iter().any(|a| a == o) {
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

/// Authenticates the token and decides where the resume starts.
fn resolve(c: &Credentials, identity: &[u8; 32], ctx: &Context) -> Result<Plan, Refusal> {
    let raw = RawToken::parse(&c.token).map_err(|e| Refusal::bad_request("malformed_token", e.to_string()))?;
    let forged = || {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the session token is forged or bound to another identity",
        )
    };
    let fresh = |reason| Plan::New { gap: Some(lost_session(reason, c.offset)) };
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
        let reason =
            if u128::from(age_ms) > ctx.retention.as_millis() { GapReason::Expired } else { GapReason::UnknownSession };
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
    Ok(Plan::Resume { session, start: wanted.max(first), gap })
}

async fn connect(
    req: &Request<Incoming>,
    peer: SocketAddr,
    ctx: &Context,
) -> Result<(BackendSocket, BackendResponse), Refusal> {
    backend::connect(ctx, req.uri(), req.headers(), peer).await
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
        ctx.retry_after,
    )
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
