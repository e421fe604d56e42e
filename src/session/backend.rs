//! The backend task: owns one backend WebSocket for the life of a session's
//! backend connection, journals everything it sends (journal first, clients
//! read from the journal's committed seq), and forwards client frames to it.
//! It keeps running while the client is away, until linger expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::{BackendSocket, Session, Upstream};
use crate::journal::EndInfo;
use crate::protocol::Payload;

/// How long tether waits for the backend to answer a close it forwarded.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub(super) async fn run(
    session: Arc<Session>,
    mut ws: BackendSocket,
    mut upstream: mpsc::Receiver<Box<Upstream>>,
    mut linger: watch::Receiver<Option<Instant>>,
) {
    let shared = session.shared.clone();
    let _live = LiveGuard(&shared.live);
    let mut client_close: Option<(EndInfo, tokio::time::Instant)> = None;
    let end = loop {
        let deadline = *linger.borrow_and_update();
        let closing = client_close.as_ref().map(|(_, at)| *at);
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                // The session stays open in the journal: after the restart it
                // resumes as `restarted`.
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "tether is restarting".into(),
                }))).await;
                return;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if !session.journal_frame(Payload::Text(t)).await {
                        return;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if !session.journal_frame(Payload::Binary(b)).await {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => break match (frame, client_close.take()) {
                    (_, Some((info, _))) => info,
                    (Some(f), None) => EndInfo { code: f.code.into(), reason: f.reason.to_string() },
                    (None, None) => EndInfo { code: 1005, reason: String::new() },
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(session = %session.id, error = %e, "backend connection failed");
                    break client_close.take().map(|c| c.0).unwrap_or(EndInfo { code: 1006, reason: String::new() });
                }
                None => break client_close.take().map(|c| c.0).unwrap_or(EndInfo { code: 1006, reason: String::new() }),
            },
            cmd = upstream.recv(), if client_close.is_none() => match cmd.map(|c| *c) {
                Some(Upstream::Data(m)) => {
                    let len = m.len() as u64;
                    if ws.send(m).await.is_err() {
                        break EndInfo { code: 1006, reason: String::new() };
                    }
                    shared.metrics.frames.with_label_values(&["upstream"]).inc();
                    shared.metrics.bytes.with_label_values(&["upstream"]).inc_by(len);
                }
                Some(Upstream::Close(frame)) => {
                    let info = match &frame {
                        Some(f) => EndInfo { code: f.code.into(), reason: f.reason.to_string() },
                        None => EndInfo { code: 1000, reason: String::new() },
                    };
                    let _ = ws.close(frame).await;
                    client_close = Some((info, tokio::time::Instant::now() + CLOSE_WAIT));
                }
                None => break EndInfo { code: 1006, reason: String::new() },
            },
            _ = tokio::time::sleep_until(closing.unwrap_or_else(far_future)), if closing.is_some() => {
                break client_close.take().map(|c| c.0).expect("closing implies client_close");
            }
            _ = tokio::time::sleep_until(deadline.map(Into::into).unwrap_or_else(far_future)), if deadline.is_some() => {
                if let Some(meta) = session.try_orphan() {
                    tracing::info!(session = %session.id, "linger expired; backend connection closed, session resumable as restarted");
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: "client did not return".into(),
                    }))).await;
                    let _ = session.shared.journal.put_meta(session.id, meta).await;
                    return;
                }
            }
            changed = linger.changed() => {
                if changed.is_err() {
                    break EndInfo { code: 1006, reason: String::new() };
                }
            }
        }
    };
    tracing::info!(session = %session.id, code = end.code, "session ended");
    session.end(end).await;
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

/// Counts this backend connection in `Shared::live` until the task ends.
struct LiveGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
