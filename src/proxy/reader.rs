//! The read half of a client connection, as its own task: forwards the
//! client's messages to the session's link task and reports how the
//! connection ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::pump::{Exit, Gone};
use super::sink::ClientSocket;
use super::upward::UpReader;
use crate::protocol::unix_ms;
use crate::session::{Session, ToBackend};

/// Forwards the client's frames to the backend and reports how it left.
/// While the session's queue toward the backend is full, the client is not
/// read (TCP backpressure); a message that finds no room within `stall` is
/// not forwarded, and the client is closed (docs/PROTOCOL.md §10). On a
/// connection with the upstream guarantee (`up`), each message's stamp is
/// checked and removed first (§12).
pub(super) async fn read_client(
    mut stream: SplitStream<ClientSocket>,
    session: Arc<Session>,
    last_seen: Arc<AtomicU64>,
    stall: Duration,
    mut up: Option<UpReader>,
) -> Exit {
    let metrics = &session.metrics().up;
    loop {
        let Some(msg) = stream.next().await else { break Exit::Gone(Gone::Abnormal) };
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
                match tokio::time::timeout(stall, session.send_upstream(cmd)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        if up.is_some() {
                            metrics.after_end.inc();
                        }
                        tracing::debug!(session = %session.id, "client frame dropped: the session has no backend connection");
                    }
                    Err(_) => {
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
