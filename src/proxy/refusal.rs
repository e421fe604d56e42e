//! Refusals before the upgrade: a status, a JSON body
//! `{"error": "...", "detail": "..."}` and a count in
//! `tether_refusals_total{status,error}`. docs/PROTOCOL.md lists them all.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use crate::cluster::PeerRefused;
use crate::metrics::Metrics;
use crate::upstream::{ConnectError, DialError};

/// A request tether will not upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {error}: {detail}")]
pub(crate) struct Refusal {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// Stable machine-readable error name.
    pub(crate) error: &'static str,
    /// Human-readable explanation (never contains a token).
    pub(crate) detail: String,
    /// `Retry-After` seconds, for 503.
    pub(crate) retry_after: Option<u32>,
    /// Extra header (e.g. `Sec-WebSocket-Version` on 426).
    pub(crate) extra: Option<(header::HeaderName, &'static str)>,
}

impl Refusal {
    /// A refusal with `status`, `error` and `detail`.
    pub(crate) fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal { status, error, detail: detail.into(), retry_after: None, extra: None }
    }

    /// 400 for a request that is not a usable WebSocket upgrade.
    pub(crate) fn bad_request(error: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, error, detail)
    }

    /// 502 for a backend that could not be reached or refused.
    pub(crate) fn bad_gateway(error: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_GATEWAY, error, detail)
    }

    /// 503 with `Retry-After`.
    pub(crate) fn unavailable(error: &'static str, detail: impl Into<String>, retry_after: u32) -> Refusal {
        Refusal { retry_after: Some(retry_after), ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, error, detail) }
    }

    /// The HTTP response, counted in `metrics`.
    pub(crate) fn into_response(self, metrics: &Metrics) -> Response<Full<Bytes>> {
        metrics.refusal(self.status.as_str(), self.error);
        tracing::debug!(status = %self.status, error = self.error, detail = %self.detail, "refused upgrade");
        let body = serde_json::json!({ "error": self.error, "detail": self.detail }).to_string();
        let mut resp = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store");
        if let Some(secs) = self.retry_after {
            resp = resp.header(header::RETRY_AFTER, secs.to_string());
        }
        if let Some((name, value)) = self.extra {
            resp = resp.header(name, value);
        }
        resp.body(Full::new(Bytes::from(body))).expect("valid response")
    }
}

/// The refusals of a tether that cannot serve now: 503, `Retry-After`.
impl Refusal {
    /// 503 `owner_unavailable`: the replica that owns the session cannot
    /// serve it now (unreachable, slow, draining); it comes back.
    pub(crate) fn owner_unavailable(detail: impl Into<String>, retry_after: u32) -> Refusal {
        Refusal::unavailable("owner_unavailable", detail, retry_after)
    }

    /// 503 `owner_unavailable` when this replica cannot reach the owner.
    pub(crate) fn owner_unreachable(retry_after: u32) -> Refusal {
        Refusal::owner_unavailable(
            "the replica that owns this session is unreachable, slow or restarting; retry",
            retry_after,
        )
    }

    /// 503 `over_capacity`: every `limits.max_sessions` slot is taken.
    pub(crate) fn over_capacity(retry_after: u32) -> Refusal {
        Refusal::unavailable(
            "over_capacity",
            "tether holds its maximum number of backend connections (limits.max_sessions)",
            retry_after,
        )
    }

    /// 503 `draining`: tether is shutting down.
    pub(crate) fn draining(retry_after: u32) -> Refusal {
        Refusal::unavailable("draining", "tether is shutting down; retry", retry_after)
    }

    /// 503 `journal_failed`: nothing could be journaled, so nothing could be
    /// delivered; the process is about to exit and be restarted.
    pub(crate) fn journal_failed(retry_after: u32) -> Refusal {
        Refusal::unavailable("journal_failed", "tether cannot write its journal and is restarting; retry", retry_after)
    }

    /// 503 `journal_full`: the journal waits for disk space, and resumes by
    /// itself once there is.
    pub(crate) fn journal_full(retry_after: u32) -> Refusal {
        Refusal::unavailable(
            "journal_full",
            "tether's journal disk is full; new sessions wait until space is freed; retry",
            retry_after,
        )
    }

    /// 401 `token_superseded`: the session was resumed with a newer token
    /// than this one (tokens rotate on every resume, docs/PROTOCOL.md §8).
    pub(crate) fn token_superseded() -> Refusal {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "token_superseded",
            "this session token was replaced: the session was resumed with a newer token since",
        )
    }

    /// 502 `backend_closed`: the backend closed a new session at once.
    pub(crate) fn backend_closed() -> Refusal {
        Refusal::bad_gateway("backend_closed", "the backend closed the new session immediately")
    }
}

impl From<PeerRefused> for Refusal {
    /// 421 `not_owner` for a second hop (the request reached the wrong
    /// instance), 403 `peer_refused` for anything that is not a proven peer.
    fn from(e: PeerRefused) -> Refusal {
        match e {
            PeerRefused::NotOwner => Refusal::new(StatusCode::MISDIRECTED_REQUEST, "not_owner", e.to_string()),
            _ => Refusal::new(StatusCode::FORBIDDEN, "peer_refused", e.to_string()),
        }
    }
}

impl From<ConnectError> for Refusal {
    fn from(e: ConnectError) -> Refusal {
        let error = match &e {
            ConnectError::Unreachable(_) => "backend_unreachable",
            ConnectError::Tls(_) => "backend_tls_failed",
            ConnectError::Handshake(DialError::Refused(_)) => "backend_refused",
            ConnectError::Handshake(_) => "backend_handshake_failed",
            ConnectError::Timeout(_) => "backend_timeout",
        };
        Refusal::bad_gateway(error, e.to_string())
    }
}
