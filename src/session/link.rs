//! The link task: owns one backend WebSocket for the life of a session's
//! backend connection, journals everything the backend sends (journal
//! first: clients read from the journal's committed seq), and forwards
//! client frames to it. It keeps running while the client is away, until
//! linger expires, and holds the session's `limits.max_sessions` slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{BackendConn, Session, ToBackend};
use crate::journal::EndInfo;
use crate::protocol::Payload;
use crate::upstream::BackendSocket;

/// How long tether waits for the backend to answer a close it forwarded.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long tether tries to deliver its own close to the backend.
const GOING_AWAY_WAIT: Duration = Duration::from_secs(1);

/// Why the loop stopped.
enum Stop {
    /// The session ended: the backend or the client closed, or the backend
    /// connection failed.
    Ended(EndInfo),
    /// tether drains, or linger expired: the session stays resumable as
    /// `restarted`, and the backend is told tether is going away.
    Away(&'static str),
    /// The journal stopped accepting frames (tether is shutting down).
    Journal,
}

/// What the loop does next.
type Next = Result<(), Stop>;

/// One backend connection of a session.
struct Link {
    session: Arc<Session>,
    ws: BackendSocket,
    /// Set once the client closed normally: the close was forwarded, and the
    /// backend has until the deadline to answer it.
    client_close: Option<(EndInfo, tokio::time::Instant)>,
}

pub(super) async fn run(
    session: Arc<Session>,
    conn: BackendConn,
    mut upstream: mpsc::Receiver<Box<ToBackend>>,
    mut linger: watch::Receiver<Option<Instant>>,
) {
    let BackendConn { socket, permit: _slot } = conn;
    let shutdown = session.shared.rt.shutdown.clone();
    let mut link = Link { session, ws: socket, client_close: None };
    let stop = loop {
        let deadline = *linger.borrow_and_update();
        let closing = link.client_close.as_ref().map(|(_, at)| *at);
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(Stop::Away("tether is restarting")),
            msg = link.ws.next() => link.on_backend(msg).await,
            cmd = upstream.recv(), if closing.is_none() => link.on_client(cmd.map(|c| *c)).await,
            _ = sleep_until(closing) => Err(Stop::Ended(link.client_ended())),
            _ = sleep_until(deadline.map(Into::into)) => link.linger_expired().await,
            changed = linger.changed() => changed.map_err(|_| Stop::Ended(EndInfo::abnormal())),
        };
        if let Err(stop) = next {
            break stop;
        }
    };
    match stop {
        Stop::Ended(end) => {
            tracing::info!(session = %link.session.id, code = end.code, "session ended");
            link.session.end(end).await;
        }
        Stop::Away(reason) => going_away(&mut link.ws, reason).await,
        Stop::Journal => {}
    }
}

impl Link {
    /// A message (or the end) from the backend: data is journaled.
    async fn on_backend(&mut self, msg: Option<Result<Message, WsError>>) -> Next {
        let payload = match msg {
            Some(Ok(Message::Text(t))) => Payload::Text(t),
            Some(Ok(Message::Binary(b))) => Payload::Binary(b),
            Some(Ok(Message::Close(frame))) => {
                let theirs = frame.map(|f| EndInfo { code: f.code.into(), reason: f.reason.to_string() });
                let client = self.client_close.take().map(|c| c.0);
                return Err(Stop::Ended(client.or(theirs).unwrap_or_else(EndInfo::no_status)));
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => {
                tracing::debug!(session = %self.session.id, error = %e, "backend connection failed");
                return Err(Stop::Ended(self.client_ended()));
            }
            None => return Err(Stop::Ended(self.client_ended())),
        };
        self.session.journal_frame(payload).await.map_err(|_| Stop::Journal)
    }

    /// A message from the client, forwarded as is; a normal close is
    /// forwarded and then awaited.
    async fn on_client(&mut self, cmd: Option<ToBackend>) -> Next {
        match cmd {
            Some(ToBackend::Data(m)) => {
                let len = m.len();
                self.ws.send(m).await.map_err(|_| Stop::Ended(EndInfo::abnormal()))?;
                self.session.shared.rt.metrics.upstream.count(len);
                Ok(())
            }
            Some(ToBackend::Close(frame)) => {
                let info = frame
                    .as_ref()
                    .map_or_else(EndInfo::normal, |f| EndInfo { code: f.code.into(), reason: f.reason.to_string() });
                let _ = self.ws.close(frame).await;
                self.client_close = Some((info, tokio::time::Instant::now() + CLOSE_WAIT));
                Ok(())
            }
            None => Err(Stop::Ended(EndInfo::abnormal())),
        }
    }

    /// How the session ends when the backend connection does: with the
    /// client's close if it sent one, else abnormally.
    fn client_ended(&mut self) -> EndInfo {
        self.client_close.take().map_or_else(EndInfo::abnormal, |c| c.0)
    }

    /// Linger expired: unless a client came back meanwhile, the session is
    /// orphaned and the backend connection goes.
    async fn linger_expired(&mut self) -> Next {
        if !self.session.orphan().await {
            return Ok(());
        }
        tracing::info!(session = %self.session.id, "linger expired; backend connection closed, session resumable as restarted");
        Err(Stop::Away("client did not return"))
    }
}

/// Tells the backend tether is going away (close 1001), briefly.
async fn going_away(ws: &mut BackendSocket, reason: &'static str) {
    let frame = CloseFrame { code: CloseCode::Away, reason: reason.into() };
    let _ = tokio::time::timeout(GOING_AWAY_WAIT, ws.close(Some(frame))).await;
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
