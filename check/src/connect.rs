//! Opening a session's connection: a new session, a resume (by header, by
//! query parameter or in `Sec-WebSocket-Protocol`), or a deliberately bad
//! resume (a refusal probe); with
//! retries while tether answers a retryable status.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::checks::{Check, Counts};
use crate::frames::{classify, Frame};
use crate::judge::{Judge, Start, Welcomed};
use crate::wire::{self, Answer, Refusal, Ws};
use crate::Ctx;

/// Where the resume credentials go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `Tether-Session` / `Tether-Offset` headers.
    Header,
    /// `tether_session` / `tether_offset` query parameters.
    Query,
    /// The token in `Sec-WebSocket-Protocol` (`tether.v1,
    /// tether.session.<token>`, as browsers send it), the offset in
    /// `Tether-Offset`.
    Protocol,
}

/// An open connection and its welcome.
pub struct Opened {
    /// The socket.
    pub ws: Box<Ws>,
    /// Its welcome.
    pub welcome: Welcomed,
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum Failed {
    /// A refusal that is not worth retrying.
    Refused(Refusal),
    /// Retryable failures until the time ran out; the last one.
    Exhausted(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Refused(r) => write!(f, "refused: {r}"),
            Failed::Exhausted(e) => write!(f, "{e}"),
        }
    }
}

/// Request headers or query parameters: name, value.
type Pairs = Vec<(&'static str, String)>;

/// Bound on waiting for the welcome after the 101.
const WELCOME: Duration = Duration::from_secs(10);

/// Opens a connection (`start`), retrying 502 and 503 refusals and failed
/// connects for up to --resume-timeout. The welcome is judged.
pub async fn open(ctx: &Ctx, port: u16, judge: &mut Judge, start: Start, via: Via) -> Result<Opened, Failed> {
    let began = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let last = match attempt(ctx, port, judge, start, via).await {
            Ok(Ok(opened)) => return Ok(opened),
            Ok(Err(r)) if matches!(r.status, 502 | 503) => {
                let key = format!("{} {}", r.status, r.error.as_deref().unwrap_or("?"));
                Counts::bump(&mut judge.counts.retries, key.clone());
                // Retry-After is honoured up to 2 s: the resume latency
                // figure then shows what a polite client would see.
                if let Some(s) = r.retry_after {
                    backoff = backoff.max(Duration::from_secs(s).min(Duration::from_secs(2)));
                }
                key
            }
            Ok(Err(r)) => return Err(Failed::Refused(r)),
            Err(e) => {
                Counts::bump(&mut judge.counts.retries, "connection failed".to_owned());
                e
            }
        };
        if began.elapsed() + backoff > ctx.opts.resume_timeout {
            return Err(Failed::Exhausted(format!("no connection within {:?}: last {last}", ctx.opts.resume_timeout)));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The credentials of `start` for the judge's session, sent `via`.
fn credentials(judge: &Judge, start: Start, via: Via) -> (Pairs, Pairs) {
    let Start::Resume(offset) = start else { return (Vec::new(), Vec::new()) };
    let (token, offset) = (judge.token().unwrap_or_default().to_owned(), offset.to_string());
    match via {
        Via::Header => (vec![("Tether-Session", token), ("Tether-Offset", offset)], Vec::new()),
        Via::Query => (Vec::new(), vec![("tether_session", token), ("tether_offset", offset)]),
        Via::Protocol => {
            let offered = format!("tether.v1, tether.session.{token}");
            (vec![("Sec-WebSocket-Protocol", offered), ("Tether-Offset", offset)], Vec::new())
        }
    }
}

/// One try: `Err` for a connection that failed, `Ok(Err)` for a refusal.
async fn attempt(
    ctx: &Ctx,
    port: u16,
    judge: &mut Judge,
    start: Start,
    via: Via,
) -> Result<Result<Opened, Refusal>, String> {
    let (mut headers, params) = credentials(judge, start, via);
    if ctx.opts.send {
        headers.push(("Tether-Up", "seq".to_owned()));
    }
    let path = ctx.target.path_with(&params);
    let (mut ws, resp) = match wire::open(&ctx.target, port, &path, &headers).await {
        Ok(Answer::Upgraded(ws, resp)) => (ws, resp),
        Ok(Answer::Refused(r)) => return Ok(Err(r)),
        Err(e) => return Err(e.to_string()),
    };
    let first = tokio::time::timeout(WELCOME, ws.next()).await;
    let msg = match first {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => return Err(format!("connection failed before the welcome: {e}")),
        Ok(None) => return Err("connection ended before the welcome".into()),
        Err(_) => return Err(format!("no welcome within {WELCOME:?}")),
    };
    let w = match classify(&msg, &ctx.opts.seq_field) {
        Frame::Control(v) => v,
        Frame::Close(code) => return Err(format!("closed ({code:?}) before the welcome")),
        _ => {
            judge.checks.fail(
                Check::Frames,
                format!(
                    "session {}: the first message is not a welcome: {} (stamp mode none is not supported)",
                    judge.slot,
                    crate::frames::cut(msg.to_text().unwrap_or("<binary>"))
                ),
            );
            return Err("no welcome frame".into());
        }
    };
    if ctx.opts.send {
        judge.checks.expect(Check::Upstream, wire::header(&resp, "tether-up") == Some("seq"), || {
            "a Tether-Up: seq request was answered without Tether-Up: seq".into()
        });
    }
    if via == Via::Protocol {
        // A browser fails a 101 that selects none of the protocols offered.
        let selected = wire::header(&resp, "sec-websocket-protocol").unwrap_or_default().to_owned();
        let ok = !selected.is_empty() && !selected.starts_with("tether.session.");
        judge.checks.expect(Check::Outcomes, ok, || {
            format!("a resume with the token in Sec-WebSocket-Protocol was answered selecting {selected:?}")
        });
    }
    match judge.welcome(start, &resp, &w) {
        Some(welcome) => Ok(Ok(Opened { ws, welcome })),
        None => Err("an unusable welcome".into()),
    }
}

/// The deliberately bad resumes of docs/PROTOCOL.md §13, each with the
/// status and `error` it must get. Run once per session while it is attached.
pub async fn probes(ctx: &Ctx, port: u16, judge: &mut Judge) {
    let token = judge.token().unwrap_or_default().to_owned();
    let ahead = (judge.max_seen() + 1_000_000_000).to_string();
    // A character inside the MAC (the token's last 16 bytes) changed: the
    // token still decodes, and does not verify.
    let forged = {
        let mut b = token.clone().into_bytes();
        let i = b.len().saturating_sub(6);
        if let Some(c) = b.get_mut(i) {
            *c = if *c == b'A' { b'B' } else { b'A' };
        }
        String::from_utf8(b).unwrap_or_default()
    };
    let cases: [(&str, Pairs, Pairs, u16, &str); 4] = [
        (
            "offset ahead",
            vec![("Tether-Session", token.clone()), ("Tether-Offset", ahead)],
            vec![],
            409,
            "offset_ahead",
        ),
        ("token without offset", vec![], vec![("tether_session", token.clone())], 400, "malformed_credentials"),
        (
            "malformed token",
            vec![("Tether-Session", "not-a-token".into()), ("Tether-Offset", "0".into())],
            vec![],
            400,
            "malformed_token",
        ),
        ("forged token", vec![], vec![("tether_session", forged), ("tether_offset", "0".into())], 401, "invalid_token"),
    ];
    for (what, headers, params, status, error) in cases {
        probe(ctx, port, judge, what, (&headers, &params), (status, error)).await;
    }
}

/// A resume with a token of the session that a later resume superseded, if
/// the judge knows one: it must get 401 `token_superseded`. Run at the end,
/// when the session was resumed a few times.
pub async fn superseded(ctx: &Ctx, port: u16, judge: &mut Judge) {
    let Some(token) = judge.superseded_token().map(str::to_owned) else { return };
    let headers = vec![("Tether-Session", token), ("Tether-Offset", "0".to_owned())];
    probe(ctx, port, judge, "superseded token", (&headers, &Vec::new()), (401, "token_superseded")).await;
}

/// One deliberately bad resume, which must get `status` and `error`.
async fn probe(
    ctx: &Ctx,
    port: u16,
    judge: &mut Judge,
    what: &str,
    (headers, params): (&Pairs, &Pairs),
    (status, error): (u16, &str),
) {
    let path = ctx.target.path_with(params);
    // A deployment that is draining or restarting answers 502/503 to
    // anything: ask again, as for a resume.
    let began = Instant::now();
    let got = loop {
        let got = wire::open(&ctx.target, port, &path, headers).await;
        let retry = matches!(&got, Ok(Answer::Refused(r)) if matches!(r.status, 502 | 503) && status != r.status);
        if !retry || began.elapsed() > ctx.opts.resume_timeout {
            break got;
        }
        if let Ok(Answer::Refused(r)) = &got {
            Counts::bump(&mut judge.counts.retries, format!("{} {}", r.status, r.error.as_deref().unwrap_or("?")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = match got {
        Ok(Answer::Refused(r)) if r.status == status && r.error.as_deref() == Some(error) => {
            let json = r.content_type.as_deref().is_some_and(|c| c.starts_with("application/json"));
            Counts::bump(&mut judge.counts.refusals, format!("{status} {error}"));
            if json {
                judge.checks.pass(Check::Refusals);
                return;
            }
            format!("{status} {error} without Content-Type: application/json")
        }
        Ok(Answer::Refused(r)) => format!("got {r}"),
        Ok(Answer::Upgraded(..)) => "got 101".to_owned(),
        Err(e) => format!("got no answer: {e}"),
    };
    judge.checks.fail(Check::Refusals, format!("session {}: {what}: expected {status} {error}, {why}", judge.slot));
}

/// The `up.acked` of an `end` frame.
pub fn end_acked(v: &Value) -> Option<u64> {
    v["up"]["acked"].as_u64()
}
