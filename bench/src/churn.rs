//! The clients of a `sustained` trial: what they saw, summed over every
//! session, and the `expire` setup's clients, whose sessions end and start
//! again all through the run.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::backend::Spec;
use crate::client::{self, Check, Tally, Watch};
use crate::sys::now_ns;

/// What the clients of one trial saw.
#[derive(Default)]
pub struct Seen {
    /// Data messages, all sessions.
    pub delivered: u64,
    /// Sessions opened.
    pub sessions: u64,
    /// Messages missing (`Tally::gaps`).
    pub gaps: u64,
    /// Messages twice or out of order.
    pub dups: u64,
    /// Sessions that did not reach their end marker.
    pub incomplete: u64,
    /// The first error a session reported.
    pub error: Option<String>,
    /// `(end ns, messages)` of every session.
    pub ends: Vec<(u64, u64)>,
}

impl Seen {
    /// Adds one session's tally; `end_ns`: when it ended.
    pub fn add(&mut self, t: &Tally, end_ns: u64) {
        self.delivered += t.data;
        self.sessions += 1;
        self.gaps += t.gaps;
        self.dups += t.dups;
        self.incomplete += u64::from(!t.complete);
        if self.error.is_none() {
            self.error.clone_from(&t.error);
        }
        self.ends.push((end_ns, t.data));
    }

    /// Adds another client's sessions.
    pub fn merge(&mut self, o: Seen) {
        self.delivered += o.delivered;
        self.sessions += o.sessions;
        self.gaps += o.gaps;
        self.dups += o.dups;
        self.incomplete += o.incomplete;
        if self.error.is_none() {
            self.error = o.error;
        }
        self.ends.extend(o.ends);
    }
}

/// One `expire` client: sessions one after another until sending ends.
pub struct Cycle {
    /// Where to connect.
    pub url: String,
    /// The first session's length (staggered), ms.
    pub first_ms: u64,
    /// Every later session's length, ms.
    pub session_ms: u64,
    /// When the last session must have ended (`now_ns()`).
    pub send_end: u64,
    /// What the backend sends (`ms` is set per session).
    pub spec: Spec,
    /// How to check each session's stream.
    pub check: Check,
}

impl Cycle {
    /// Runs sessions until `send_end`, or until one fails.
    pub async fn run(self, deadline: tokio::time::Instant, watch: Watch) -> Seen {
        let mut seen = Seen::default();
        let mut len = self.first_ms;
        // A session shorter than 100 ms is not worth a handshake.
        while now_ns() + 100_000_000 < self.send_end && !watch.cancel.is_cancelled() {
            let ms = len.min((self.send_end - now_ns()) / 1_000_000);
            len = self.session_ms;
            let mut tally = Tally::new(&self.check);
            let (mut ws, _) = match client::connect(&self.url, &[]).await {
                Ok(c) => c,
                Err(e) => {
                    tally.error = Some(format!("{e:#}"));
                    seen.add(&tally, now_ns());
                    break;
                }
            };
            let go = Spec { ms, ..self.spec }.go();
            if let Err(e) = ws.send(Message::text(go)).await {
                tally.error = Some(format!("sending go: {e}"));
            } else {
                client::read_until_end(&mut ws, &mut tally, &self.check, deadline, &watch).await;
            }
            // Code 1000 ends the session (docs/PROTOCOL.md §9); tether's
            // close reply says it has.
            let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = ws.next().await {} })
                .await;
            seen.add(&tally, now_ns());
            if !tally.complete {
                break;
            }
        }
        seen
    }
}
