//! How a pump's connection ends: why ([`Exit`], [`Gone`]), and the close
//! code, last control frame and disconnect count each reason calls for
//! (docs/PROTOCOL.md §10).

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::Pump;
use crate::journal::{EndInfo, JournalError};
use crate::protocol::control::{Control, UpEnd};
use crate::proxy::sink::{sendable, LAST_WORDS};
use crate::session::ToBackend;

/// Close code sent to a connection whose session was taken over.
const CLOSE_TAKEN_OVER: u16 = 4001;
/// Close code for a client whose message found no room toward a backend
/// that does not read, for `session.upstream_stall_timeout` (Try Again Later).
const CLOSE_STALLED: u16 = 1013;
/// Close code when frames were trimmed under a `stamp = "none"` client,
/// which cannot receive an in-band gap report: resume to see it.
const CLOSE_GAP: u16 = 4002;
/// Close code for an upstream message without a valid seq stamp.
const CLOSE_BAD_STAMP: u16 = 4003;
/// Close code for an upstream seq that skips ahead.
const CLOSE_SEQ_GAP: u16 = 4004;
/// Close code for a client more than `session.slow_consumer_lag` behind.
const CLOSE_TOO_SLOW: u16 = 4005;

/// How a client connection ended, for `tether_client_disconnects_total`.
#[derive(Debug, Clone, Copy)]
pub(in crate::proxy) enum Gone {
    /// TCP reset, EOF without a close, or an I/O error: no close frame.
    Abnormal,
    /// A close frame other than 1000 (e.g. 1001 going away): detaches.
    Away,
    /// No frame or pong within `session.ping_timeout`.
    Timeout,
    /// The client sent a message over the size limits.
    TooBig,
    /// The client broke the framing rules (RFC 6455 §5): answered 1002.
    Protocol,
    /// The client sent text (or a close reason) that is not UTF-8: 1007.
    InvalidPayload,
    /// The backend did not make room for the client's next message within
    /// `session.upstream_stall_timeout`.
    Stalled,
    /// Upstream guarantee: a message without a valid seq stamp (4003).
    BadStamp,
    /// Upstream guarantee: a seq that skips ahead (4004).
    SeqGap,
    /// `slow_consumer = "disconnect"`: too far behind (4005).
    TooSlow,
}

/// Why a pump stops serving its connection.
pub(in crate::proxy) enum Exit {
    TakenOver,
    Draining,
    ClientClosed(Option<CloseFrame>),
    Gone(Gone),
    BackendEnded(EndInfo),
    GapUnreportable,
    Journal(JournalError),
}

impl Pump {
    /// Says goodbye as `exit` calls for, counts the disconnect and detaches.
    pub(super) async fn finish(mut self, exit: Exit) {
        let id = self.session.id;
        // A close of tether's own to a client that keeps to the framing
        // rules: it may still be sending, and should read the close code.
        // (After 1002, 1007 or 1009 its stream is not worth reading.)
        let linger = !matches!(
            exit,
            Exit::ClientClosed(_)
                | Exit::Gone(
                    Gone::Away | Gone::Abnormal | Gone::Timeout | Gone::Protocol | Gone::InvalidPayload | Gone::TooBig
                )
        );
        let kind = match exit {
            Exit::TakenOver => {
                self.sink.close(CLOSE_TAKEN_OVER, "session taken over by a newer connection").await;
                // The newer connection holds the session now: no detach.
                self.attachment.finish();
                self.ctx.rt.metrics.client_disconnect("takeover");
                self.linger().await;
                return;
            }
            Exit::Draining => {
                self.sink.last_control(Control::Draining).await;
                self.sink.close(1012, "tether is restarting; resume with your token").await;
                "draining"
            }
            Exit::ClientClosed(frame) => self.client_closed(frame).await,
            Exit::Gone(Gone::TooBig) => {
                self.sink.close(1009, "message too big").await;
                "too_big"
            }
            // RFC 6455 §7.1.7: fail the connection with a close frame.
            Exit::Gone(Gone::Protocol) => {
                self.sink.close(1002, "protocol error").await;
                "protocol_error"
            }
            Exit::Gone(Gone::InvalidPayload) => {
                self.sink.close(1007, "invalid UTF-8").await;
                "invalid_payload"
            }
            Exit::Gone(Gone::Timeout) => "timeout",
            Exit::Gone(Gone::Stalled) => {
                self.sink.close(CLOSE_STALLED, "the backend is not reading; resume later").await;
                "upstream_stalled"
            }
            Exit::Gone(Gone::BadStamp) => {
                self.sink.close(CLOSE_BAD_STAMP, "upstream message without a valid seq stamp").await;
                "bad_stamp"
            }
            Exit::Gone(Gone::SeqGap) => {
                self.sink.close(CLOSE_SEQ_GAP, "upstream seq skipped ahead; resume and resend from next").await;
                "seq_gap"
            }
            Exit::Gone(Gone::TooSlow) => {
                self.ctx.rt.metrics.slow_consumer_disconnect.inc();
                self.sink.close(CLOSE_TOO_SLOW, "too far behind; resume with your offset").await;
                "too_slow"
            }
            Exit::Gone(Gone::Away) => {
                self.sink.close_reply().await;
                "away"
            }
            Exit::Gone(Gone::Abnormal) => "abnormal",
            Exit::BackendEnded(info) => {
                // The link task recorded its last mark before ending the
                // session: messages above it were not written.
                let up = self.up.then(|| UpEnd { acked: self.session.up().acked() });
                self.sink.last_control(Control::End { code: info.code, reason: info.reason.clone(), up }).await;
                let code = match info.code {
                    1005 => 1000,
                    c if sendable(c) => c,
                    _ => 1011,
                };
                self.sink.close(code, &info.reason).await;
                "backend_ended"
            }
            Exit::GapUnreportable => {
                self.sink.close(CLOSE_GAP, "frames were trimmed; resume to get the gap report").await;
                "gap"
            }
            Exit::Journal(e) => {
                tracing::error!(session = %id, error = %e, "journal read failed");
                self.sink.close(1011, "journal read failed").await;
                "journal_error"
            }
        };
        tracing::info!(session = %id, kind, "client detached");
        self.ctx.rt.metrics.client_disconnect(kind);
        self.session.detach(&self.attachment);
        self.attachment.finish();
        if linger {
            self.linger().await;
        }
    }

    /// After a close frame of tether's own: reads, and drops, what the
    /// client still sends until its close reply or its EOF, for
    /// [`LAST_WORDS`] at most, after the session is free for a resume.
    /// Closing a socket with unread bytes in it makes the kernel answer
    /// with a reset; a client busy sending (an upstream stream during a
    /// drain) then sees "broken pipe" or "connection reset", or 1006 in a
    /// browser, instead of the close code that says why and whether to
    /// resume. RFC 6455 §7.1.1: the server closes TCP after the closing
    /// handshake.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(LAST_WORDS, async {
            // Free once the reader task (aborted or returned) is dropped.
            let mut stream = self.stream.lock().await;
            while let Some(Ok(m)) = stream.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }

    /// The client sent a close: 1000 ends the session, anything else only
    /// detaches.
    async fn client_closed(&mut self, frame: Option<CloseFrame>) -> &'static str {
        let normal = frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal);
        self.sink.close_reply().await;
        if !normal {
            return "away";
        }
        tracing::info!(session = %self.session.id, "client closed normally; ending the session");
        // Bounded like every upstream message: a backend that does not read
        // must not keep this pump (and its claim on the session) alive.
        let stall = self.ctx.config.session.upstream_stall_timeout;
        match tokio::time::timeout(stall, self.session.send_upstream(ToBackend::Close(frame))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::debug!(session = %self.session.id, "no backend connection to forward the close to"),
            Err(_) => tracing::info!(session = %self.session.id, "close not forwarded: the backend is not reading"),
        }
        "clean"
    }
}
