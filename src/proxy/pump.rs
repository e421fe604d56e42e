//! The pump: serves one attached client connection until it goes away.
//!
//! Downstream it is a cursor over the session's committed seqs: every frame
//! it sends comes from the in-memory ring or, when the client is behind, from
//! the journal, so replay and live traffic are the same loop and the
//! hand-over from one to the other has no gap, duplicate or reorder by
//! construction. Upstream, a reader task forwards the client's frames to the
//! backend task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::Context;
use crate::config::StampMode;
use crate::journal::{EndInfo, JournalError};
use crate::lazy_read::LazyRead;
use crate::protocol::control::{Control, GapReason, GapReport, Outcome, SeqRange};
use crate::protocol::unix_ms;
use crate::session::{Attachment, Session, Upstream};

type ClientSocket = WebSocketStream<LazyRead<TokioIo<Upgraded>>>;
type Sink = SplitSink<ClientSocket, Message>;

/// Close code sent to a connection whose session was taken over.
pub const CLOSE_TAKEN_OVER: u16 = 4001;
/// Close code when frames were trimmed under a `stamp = "none"` client,
/// which cannot receive an in-band gap report: resume to see it.
pub const CLOSE_GAP: u16 = 4002;
/// How long tether waits to deliver a close frame to a client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the handshake decided, for the welcome frame.
pub struct Greeting {
    /// The token to give the client.
    pub token: String,
    /// The outcome.
    pub outcome: Outcome,
    /// The gap report, for outcome `gap`.
    pub gap: Option<GapReport>,
    /// First seq to send.
    pub start: u64,
}

/// How a client connection ended, for `tether_client_disconnects_total`.
#[derive(Debug, Clone, Copy)]
enum Gone {
    /// TCP reset, EOF or a protocol error.
    Abnormal,
    /// A close frame other than 1000 (e.g. 1001 going away): detaches.
    Away,
    /// No frame or pong within `session.ping_timeout`.
    Timeout,
    /// The client sent a message over the size limits.
    TooBig,
}

enum Exit {
    TakenOver,
    Draining,
    ClientClosed(Option<CloseFrame>),
    Gone(Gone),
    BackendEnded(EndInfo),
    GapUnreportable,
    Journal(JournalError),
}

enum Step {
    Progress,
    Ended(EndInfo),
}

#[derive(Debug, thiserror::Error)]
enum PumpError {
    #[error("client write failed: {0}")]
    Ws(#[from] WsError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("frames were trimmed under a client that cannot be told in-band")]
    GapUnreportable,
}

/// Serves `ws` for `session` until the client leaves, is taken over, the
/// session ends, or tether drains.
pub async fn run(
    ws: ClientSocket,
    session: Arc<Session>,
    mut attachment: Attachment,
    greeting: Greeting,
    ctx: Arc<Context>,
) {
    if attachment.take_over().await {
        tracing::info!(session = %session.id, "took the session over from an older connection");
    }
    let (mut sink, stream) = ws.split();
    let mut committed = session.watch_committed();
    let mut ended = session.watch_ended();
    let replay_to = attachment.replay_to;
    let mut cursor = greeting.start;
    let inband = ctx.stamper.mode() != StampMode::None;

    let welcome = Control::Welcome {
        v: 1,
        session: greeting.token,
        outcome: greeting.outcome,
        replay: (cursor <= replay_to).then_some(SeqRange { from: cursor, to: Some(replay_to) }),
        gap: greeting.gap,
    };
    let last_seen = Arc::new(AtomicU64::new(unix_ms()));
    // The reader's own join handle reports how it left: a channel for that
    // one message would cost every idle session about 1.8 KB.
    let mut reader = tokio::spawn(read_client(stream, session.clone(), last_seen.clone()));

    let attached_at = std::time::Instant::now();
    let mut replaying = cursor <= replay_to;
    let mut ping = tokio::time::interval(ctx.ping_interval);
    ping.reset();
    let exit = if inband && sink.send(welcome.to_message()).await.is_err() {
        Exit::Gone(Gone::Abnormal)
    } else {
        loop {
            tokio::select! {
                biased;
                _ = &mut attachment.kicked => break Exit::TakenOver,
                _ = ctx.shutdown.cancelled() => break Exit::Draining,
                exit = &mut reader => break exit.unwrap_or(Exit::Gone(Gone::Abnormal)),
                _ = ping.tick() => {
                    let silent = unix_ms().saturating_sub(last_seen.load(Ordering::Relaxed));
                    if u128::from(silent) > ctx.ping_timeout.as_millis() {
                        break Exit::Gone(Gone::Timeout);
                    }
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        break Exit::Gone(Gone::Abnormal);
                    }
                }
                step = deliver(&mut sink, &session, &mut cursor, &mut committed, &mut ended, replay_to, &ctx) => match step {
                    Ok(Step::Progress) => {
                        if replaying && cursor > replay_to {
                            replaying = false;
                            ctx.metrics.replay_seconds.observe(attached_at.elapsed().as_secs_f64());
                        }
                        // Last, so a lag of 0 on /metrics implies the counts above.
                        session.set_delivered(cursor - 1);
                    }
                    Ok(Step::Ended(info)) => break Exit::BackendEnded(info),
                    Err(PumpError::Ws(_)) => break Exit::Gone(Gone::Abnormal),
                    Err(PumpError::Journal(e)) => break Exit::Journal(e),
                    Err(PumpError::GapUnreportable) => break Exit::GapUnreportable,
                },
            }
        }
    };
    reader.abort();
    finish(exit, sink, &session, &mut attachment, inband, &ctx).await;
}

async fn finish(
    exit: Exit,
    mut sink: Sink,
    session: &Session,
    attachment: &mut Attachment,
    inband: bool,
    ctx: &Context,
) {
    let id = session.id;
    let kind = match exit {
        Exit::TakenOver => {
            close(&mut sink, CLOSE_TAKEN_OVER, "session taken over by a newer connection").await;
            attachment.finish();
            ctx.metrics.client_disconnects.with_label_values(&["takeover"]).inc();
            return;
        }
        Exit::Draining => {
            if inband {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Control::Draining.to_message())).await;
            }
            close(&mut sink, 1012, "tether is restarting; resume with your token").await;
            "draining"
        }
        Exit::ClientClosed(frame) => {
            let normal = frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            if normal {
                tracing::info!(session = %id, "client closed normally; ending the session");
                session.send_upstream(Upstream::Close(frame)).await;
                "clean"
            } else {
                "away"
            }
        }
        Exit::Gone(Gone::TooBig) => {
            close(&mut sink, 1009, "message too big").await;
            "too_big"
        }
        Exit::Gone(Gone::Timeout) => "timeout",
        Exit::Gone(Gone::Away) => {
            // Flushes the close reply tungstenite queued when it read the close.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            "away"
        }
        Exit::Gone(Gone::Abnormal) => "abnormal",
        Exit::BackendEnded(info) => {
            if inband {
                let end = Control::End { code: info.code, reason: info.reason.clone() };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(end.to_message())).await;
            }
            let code = match info.code {
                1005 => 1000,
                c if sendable(c) => c,
                _ => 1011,
            };
            close(&mut sink, code, &info.reason).await;
            "backend_ended"
        }
        Exit::GapUnreportable => {
            close(&mut sink, CLOSE_GAP, "frames were trimmed; resume to get the gap report").await;
            "gap"
        }
        Exit::Journal(e) => {
            tracing::error!(session = %id, error = %e, "journal read failed");
            close(&mut sink, 1011, "journal read failed").await;
            "journal_error"
        }
    };
    tracing::info!(session = %id, kind, "client detached");
    ctx.metrics.client_disconnects.with_label_values(&[kind]).inc();
    session.detach(attachment.gen);
    attachment.finish();
}

/// Waits for frames past the cursor, then writes one batch of them.
async fn deliver(
    sink: &mut Sink,
    session: &Session,
    cursor: &mut u64,
    committed: &mut watch::Receiver<u64>,
    ended: &mut watch::Receiver<Option<(u64, EndInfo)>>,
    replay_to: u64,
    ctx: &Context,
) -> Result<Step, PumpError> {
    let top = loop {
        let top = *committed.borrow_and_update();
        if *cursor <= top {
            break top;
        }
        if let Some((last, info)) = ended.borrow_and_update().clone() {
            if *cursor > last {
                return Ok(Step::Ended(info));
            }
        }
        tokio::select! {
            r = committed.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = ended.changed() => if r.is_err() { std::future::pending::<()>().await },
        }
    };
    let batch = ctx.replay_batch_bytes;
    let frames = match session.from_ring(*cursor, top, batch) {
        Some(f) => f,
        None => session.journal().read(session.id, *cursor, top, batch).await?,
    };
    let first = frames.first().map(|f| f.0);
    if first != Some(*cursor) {
        // Retention removed frames this client had not been sent yet.
        let available = first.unwrap_or_else(|| session.first_available());
        if available <= *cursor {
            return Err(JournalError::Corrupt(format!("frame {} is missing from the journal", *cursor)).into());
        }
        if ctx.stamper.mode() == StampMode::None {
            return Err(PumpError::GapUnreportable);
        }
        let report = GapReport {
            reason: GapReason::Trimmed,
            requested_offset: *cursor - 1,
            first_available: available,
            lost: SeqRange { from: *cursor, to: Some(available - 1) },
        };
        tracing::warn!(session = %session.id, from = *cursor, to = available - 1, "client fell behind retention");
        sink.send(Control::Gap(report).to_message()).await?;
        *cursor = available;
        if frames.is_empty() {
            return Ok(Step::Progress);
        }
    }
    let mut replayed = 0;
    for (seq, payload) in &frames {
        sink.feed(ctx.stamper.stamp(*seq, payload)).await?;
        *cursor = seq + 1;
        if *seq <= replay_to {
            replayed += 1;
        }
    }
    sink.flush().await?;
    ctx.metrics.replayed_frames.inc_by(replayed);
    Ok(Step::Progress)
}

/// Forwards the client's frames to the backend and reports how it left.
async fn read_client(mut stream: SplitStream<ClientSocket>, session: Arc<Session>, last_seen: Arc<AtomicU64>) -> Exit {
    loop {
        let Some(msg) = stream.next().await else { break Exit::Gone(Gone::Abnormal) };
        last_seen.store(unix_ms(), Ordering::Relaxed);
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if !session.send_upstream(Upstream::Data(m)).await {
                    tracing::debug!(session = %session.id, "client frame dropped: the session has no backend connection");
                }
            }
            Ok(Message::Close(frame)) => {
                let normal = frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal);
                break if normal { Exit::ClientClosed(frame) } else { Exit::Gone(Gone::Away) };
            }
            Ok(_) => {}
            Err(WsError::Capacity(_)) => break Exit::Gone(Gone::TooBig),
            Err(_) => break Exit::Gone(Gone::Abnormal),
        }
    }
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: truncate(reason).into() };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
}

/// Close reasons are limited to 123 bytes.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Codes that may appear in a close frame on the wire (RFC 6455 §7.4).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
