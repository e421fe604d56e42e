//! Control frames tether→client: text frames of `#` followed by one JSON
//! object. Data frames never start with `#` in `prefix` mode (they start with
//! a digit) nor in `json` mode (`{` or a digit).

use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

/// How a connection's session came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// No token: a new session and backend connection.
    New,
    /// Same session, same backend connection; missed frames replayed.
    Resumed,
    /// Same session, nothing lost, but a new backend connection.
    Restarted,
    /// Frames after the offset are gone; see the report.
    Gap,
}

impl Outcome {
    /// Label value for metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::New => "new",
            Outcome::Resumed => "resumed",
            Outcome::Restarted => "restarted",
            Outcome::Gap => "gap",
        }
    }
}

/// Why frames could not be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GapReason {
    /// The session ended or was orphaned longer than `journal.retention` ago
    /// and was purged.
    Expired,
    /// Retention (frames, bytes, age or disk budget) trimmed frames the client
    /// had not processed.
    Trimmed,
    /// The token is from another journal epoch: the journal was lost.
    JournalLost,
    /// The token is valid but the session is not in the journal and is too
    /// young to have been purged (e.g. lost with un-synced writes).
    UnknownSession,
}

impl GapReason {
    /// Label value for metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GapReason::Expired => "expired",
            GapReason::Trimmed => "trimmed",
            GapReason::JournalLost => "journal_lost",
            GapReason::UnknownSession => "unknown_session",
        }
    }
}

/// An inclusive range of seqs; `to` is `None` when the end is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct SeqRange {
    /// First seq in the range.
    pub(crate) from: u64,
    /// Last seq in the range, if known.
    pub(crate) to: Option<u64>,
}

/// The structured report of frames that cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct GapReport {
    /// Why.
    pub(crate) reason: GapReason,
    /// The offset the client asked to resume from (last seq it processed).
    pub(crate) requested_offset: u64,
    /// First seq tether can still deliver in this session.
    pub(crate) first_available: u64,
    /// The seqs that will never be delivered.
    pub(crate) lost: SeqRange,
}

/// Where a connection that opted in to the upstream guarantee stands
/// (docs/PROTOCOL.md §12), in its welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct UpWelcome {
    /// The seq tether expects next.
    pub(crate) next: u64,
    /// Every client message up to this seq was written to the backend
    /// connection, and the journal records it.
    pub(crate) acked: u64,
    /// Names the session's current backend connection.
    pub(crate) conn: u64,
    /// True if `acked` is exactly where the previous backend connection
    /// stopped writing; false if later messages are in doubt (kill -9).
    pub(crate) exact: bool,
}

/// How a session's current backend connection came to be, after tether
/// restarted or linger expired: in the welcome of outcome `restarted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RestartNote {
    /// The first seq the new backend connection produced (frames before it
    /// came from the old one).
    pub(crate) since: u64,
    /// tether opened it at start-up, before the client returned
    /// (`session.backend_on_restart = "eager"`).
    pub(crate) early: bool,
    /// Why tether could not open it early, if it tried.
    pub(crate) error: Option<String>,
}

/// What was written toward the backend when the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct UpEnd {
    /// Client messages up to this seq were written; later ones never will be.
    pub(crate) acked: u64,
}

/// Every control frame tether sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Control {
    /// First frame of every connection.
    Welcome {
        /// Protocol version.
        v: u32,
        /// The session token to resume with.
        session: String,
        /// How the session came to be.
        outcome: Outcome,
        /// Frames being replayed (seqs up to `to` are replays), or null.
        replay: Option<SeqRange>,
        /// Present when `outcome` is `gap`.
        gap: Option<GapReport>,
        /// Upstream accounting, on connections that opted in only.
        #[serde(skip_serializing_if = "Option::is_none")]
        up: Option<UpWelcome>,
        /// For outcome `restarted`: where the new backend connection began.
        #[serde(skip_serializing_if = "Option::is_none")]
        backend: Option<RestartNote>,
    },
    /// Client messages up to `seq` were written to the backend connection.
    UpAck {
        /// The highest seq written (cumulative).
        seq: u64,
    },
    /// A slow client fell behind retention while attached: frames were trimmed.
    Gap(GapReport),
    /// tether is shutting down; reconnect with your token.
    Draining,
    /// The backend closed the session; after this the socket closes.
    End {
        /// The backend's close code (1006 when it vanished without one).
        code: u16,
        /// The backend's close reason.
        reason: String,
        /// What was written toward the backend, on connections that opted
        /// in to the upstream guarantee only.
        #[serde(skip_serializing_if = "Option::is_none")]
        up: Option<UpEnd>,
    },
}

impl Control {
    /// The control frame as a WebSocket text message.
    pub(crate) fn to_message(&self) -> Message {
        let mut s = String::from("#");
        s.push_str(&serde_json::to_string(self).expect("control frames serialize"));
        Message::text(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let w = Control::Welcome {
            v: 1,
            session: "tok".into(),
            outcome: Outcome::Gap,
            replay: Some(SeqRange { from: 5, to: Some(9) }),
            gap: Some(GapReport {
                reason: GapReason::Trimmed,
                requested_offset: 1,
                first_available: 5,
                lost: SeqRange { from: 2, to: Some(4) },
            }),
            up: None,
            backend: None,
        };
        assert_eq!(
            w.to_message(),
            Message::text(
                r##"#{"type":"welcome","v":1,"session":"tok","outcome":"gap","replay":{"from":5,"to":9},"gap":{"reason":"trimmed","requested_offset":1,"first_available":5,"lost":{"from":2,"to":4}}}"##
            )
        );
        assert_eq!(Control::Draining.to_message(), Message::text(r##"#{"type":"draining"}"##));
        let end = Control::End { code: 1000, reason: "bye".into(), up: None };
        assert_eq!(end.to_message(), Message::text(r##"#{"type":"end","code":1000,"reason":"bye"}"##));
        let end = Control::End { code: 1000, reason: String::new(), up: Some(UpEnd { acked: 41 }) };
        assert_eq!(end.to_message(), Message::text(r##"#{"type":"end","code":1000,"reason":"","up":{"acked":41}}"##));
        assert_eq!(Control::UpAck { seq: 7 }.to_message(), Message::text(r##"#{"type":"up_ack","seq":7}"##));
        let w = Control::Welcome {
            v: 1,
            session: "tok".into(),
            outcome: Outcome::Resumed,
            replay: None,
            gap: None,
            up: Some(UpWelcome { next: 42, acked: 40, conn: 7, exact: true }),
            backend: Some(RestartNote { since: 11, early: true, error: None }),
        };
        assert_eq!(
            w.to_message(),
            Message::text(
                r##"#{"type":"welcome","v":1,"session":"tok","outcome":"resumed","replay":null,"gap":null,"up":{"next":42,"acked":40,"conn":7,"exact":true},"backend":{"since":11,"early":true,"error":null}}"##
            )
        );
    }
}
