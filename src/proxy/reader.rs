//! The read half of a client connection, as its own task: forwards the
//! client's messages to the session's link task and reports how the
//! connection ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::pump::{Exit, Gone};
use super::sink::ClientSocket;
use super::upward::UpReader;
use crate::protocol::unix_ms;
use crate::session::{Session, ToBackend, Up};

/// The read half of a client connection. The reader task holds its lock
/// while it runs; once it is gone, the pump's goodbye reads what the client
/// still sends until its close reply (`Pump::linger`).
pub(super) type ClientStream = Arc<Mutex<SplitStream<ClientSocket>>>;

/// Forwards the client's frames to the backend and reports how it left.
/// While the session's queue toward the backend is full, the client is not
/// read (TCP backpressure); a message that finds no room within `stall` is
/// not forwarded, and the client is closed (docs/PROTOCOL.md §10). On a
/// connection with the upstream guarantee (`up`), each message's stamp is
/// checked and removed first (§12).
pub(super) async fn read_client(
    stream: ClientStream,
    session: Arc<Session>,
    last_seen: Arc<AtomicU64>,
    stall: Duration,
    mut up: Option<UpReader>,
) -> Exit {
    let metrics = &session.metrics().up;
    let queue = session.upstream_queue();
    let mut stream = stream.lock_owned().await;
    loop {
        let next = match up {
            Some(_) => next_or_quiet(&mut stream, session.up()).await,
            None => stream.next().await,
        };
        let Some(msg) = next else { break Exit::Gone(Gone::Abnormal) };
        last_seen.store(unix_ms(), Ordering::Relaxed);
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                let cmd = match &mut up {
                    None => ToBackend::Data(m),
                    Some(u) => match u.check(m, metrics) {
                        Ok(Some(cmd)) => cmd,
                        Ok(None) => continue,
                        Err(exit) => break exit,
                    },
                };
                match queue_toward_backend(queue.as_ref(), cmd, stall).await {
                    Queued::Yes => {}
                    Queued::NoBackend => {
                        if up.is_some() {
                            metrics.after_end.inc();
                        }
                        tracing::debug!(session = %session.id, "client frame dropped: the session has no backend connection");
                    }
                    Queued::Stalled => {
                        tracing::warn!(session = %session.id, ?stall, "backend is not reading; closing the client");
                        break Exit::Gone(Gone::Stalled);
                    }
                }
            }
            Ok(Message::Close(frame)) => {
                let normal = frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal);
                break if normal { Exit::ClientClosed(frame) } else { Exit::Gone(Gone::Away) };
            }
            Ok(_) => {}
            Err(WsError::Capacity(_)) => break Exit::Gone(Gone::TooBig),
            // An EOF without a close is a drop, not a framing error.
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => break Exit::Gone(Gone::Abnormal),
            Err(WsError::Protocol(_)) => break Exit::Gone(Gone::Protocol),
            Err(WsError::Utf8(_)) => break Exit::Gone(Gone::InvalidPayload),
            Err(_) => break Exit::Gone(Gone::Abnormal),
        }
    }
}

/// The client's next message, on a connection with the upstream guarantee:
/// when the socket holds nothing more, the session's accounting is told the
/// client went quiet, so the link marks what it wrote and a client that
/// waits for its ack is not kept waiting (`Up::set_quiet`).
async fn next_or_quiet(stream: &mut SplitStream<ClientSocket>, up: &Up) -> Option<Result<Message, WsError>> {
    // One poll with the task's own waker: a first poll without it (to see
    // whether the socket holds more) polled the whole stack twice per pause.
    let mut quiet = false;
    let next = std::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
        Poll::Ready(next) => Poll::Ready(next),
        Poll::Pending => {
            if !quiet {
                quiet = true;
                up.set_quiet(true);
            }
            Poll::Pending
        }
    })
    .await;
    if quiet {
        up.set_quiet(false);
    }
    next
}

/// What became of a client message on its way to the backend's queue.
enum Queued {
    Yes,
    /// The session has no backend connection (ended).
    NoBackend,
    /// No room within `session.upstream_stall_timeout`.
    Stalled,
}

/// Queues `cmd` for the link task: at once while there is room (no timer
/// per message: one was a tenth of tether's CPU upstream), else waiting up
/// to `stall`. The wait is boxed, so the reader task of an idle session
/// does not carry its timer.
async fn queue_toward_backend(queue: Option<&mpsc::Sender<Box<ToBackend>>>, cmd: ToBackend, stall: Duration) -> Queued {
    let Some(tx) = queue else { return Queued::NoBackend };
    match tx.try_send(Box::new(cmd)) {
        Ok(()) => Queued::Yes,
        Err(TrySendError::Closed(_)) => Queued::NoBackend,
        Err(TrySendError::Full(cmd)) => Box::pin(wait_for_room(tx, cmd, stall)).await,
    }
}

/// Queues `cmd` once the link task made room, or gives up after `stall`.
async fn wait_for_room(tx: &mpsc::Sender<Box<ToBackend>>, cmd: Box<ToBackend>, stall: Duration) -> Queued {
    match tokio::time::timeout(stall, tx.send(cmd)).await {
        Ok(Ok(())) => Queued::Yes,
        Ok(Err(_)) => Queued::NoBackend,
        Err(_) => Queued::Stalled,
    }
}
