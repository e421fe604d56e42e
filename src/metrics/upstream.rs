//! The upstream guarantee's metrics (docs/PROTOCOL.md §12), bound to their
//! labels once.

use prometheus::{Histogram, IntCounter};

use super::Families;

/// Client messages on connections that opted in, acks and resumes.
pub(crate) struct UpMetrics {
    /// Stamped messages written to the backend.
    pub(crate) forwarded: IntCounter,
    /// Stamped messages dropped because they were taken before.
    pub(crate) duplicate: IntCounter,
    /// Connections closed with 4004: a seq skipped ahead.
    pub(crate) seq_gap: IntCounter,
    /// Connections closed with 4003: a message without a valid stamp.
    pub(crate) unstamped: IntCounter,
    /// Stamped messages that arrived after the backend ended the session.
    pub(crate) after_end: IntCounter,
    /// `up_ack` frames sent.
    pub(crate) acks: IntCounter,
    /// Seconds from reading a message until the ack that covers it was sent
    /// (for the oldest message each ack covers).
    pub(crate) ack_seconds: Histogram,
    /// Welcomes of opted-in connections whose accounting is exact.
    pub(crate) welcomes_exact: IntCounter,
    /// Welcomes after a kill -9 that leave earlier messages in doubt.
    pub(crate) welcomes_in_doubt: IntCounter,
}

impl UpMetrics {
    pub(super) fn new(f: &Families) -> UpMetrics {
        let frames = f.counters(
            "tether_upstream_frames_total",
            "Client messages on connections with the upstream guarantee, by result.",
            &["result"],
        );
        let result = |r: &str| frames.with_label_values(&[r]);
        let welcomes = f.counters(
            "tether_upstream_welcomes_total",
            "Welcomes of connections with the upstream guarantee, by accounting (exact, in_doubt).",
            &["accounting"],
        );
        UpMetrics {
            forwarded: result("forwarded"),
            duplicate: result("duplicate"),
            seq_gap: result("seq_gap"),
            unstamped: result("unstamped"),
            after_end: result("after_end"),
            acks: f.counter("tether_upstream_acks_total", "up_ack frames sent to clients."),
            ack_seconds: f.histogram(
                "tether_upstream_ack_seconds",
                "Time from reading a client message until the up_ack that covers it was sent.",
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            ),
            welcomes_exact: welcomes.with_label_values(&["exact"]),
            welcomes_in_doubt: welcomes.with_label_values(&["in_doubt"]),
        }
    }
}
