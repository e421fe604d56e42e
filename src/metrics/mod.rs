//! The Prometheus metric families tether exports (docs/METRICS.md).
//!
//! This module sits at the bottom of the crate: the journal, sessions and the
//! proxy record into it, and the admin port only renders it. Children that
//! are touched for every frame are bound to their labels once, here, so the
//! data path does no label lookup.

mod upstream;

use prometheus::core::Collector;
use prometheus::{histogram_opts, opts, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
pub(crate) use upstream::UpMetrics;

/// Frames and payload bytes in one direction.
pub(crate) struct Flow {
    /// Data frames.
    pub(crate) frames: IntCounter,
    /// Payload bytes.
    pub(crate) bytes: IntCounter,
}

impl Flow {
    /// Counts `frames` frames of `bytes` bytes in all.
    pub(crate) fn count_many(&self, frames: u64, bytes: u64) {
        self.frames.inc_by(frames);
        self.bytes.inc_by(bytes);
    }
}

/// Session counts by state, set at scrape time.
pub(crate) struct SessionGauges {
    pub(crate) attached: IntGauge,
    pub(crate) detached: IntGauge,
    pub(crate) orphaned: IntGauge,
    pub(crate) ended: IntGauge,
}

/// What triggered a WAL fsync.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fsync {
    /// A write batch with `sync = "always"`.
    Batch,
    /// The periodic sync of `sync = "interval"`.
    Interval,
    /// A drain or close.
    Drain,
}

/// The `reason` values of `tether_peer_refused_total`.
pub(crate) const PEER_REFUSED_REASONS: [&str; 6] =
    ["missing", "malformed", "bad_signature", "stale", "not_owner", "wrong_port"];

/// Every metric, registered in one registry. Labels never carry session ids.
pub(crate) struct Metrics {
    registry: Registry,
    /// `tether_sessions{state}`.
    pub(crate) sessions: SessionGauges,
    /// Orphaned or ended sessions evicted for `limits.max_retained_sessions`.
    pub(crate) sessions_evicted: IntCounter,
    /// Backend connections open or being dialed: the `limits.max_sessions`
    /// slots in use.
    pub(crate) backend_connections: IntGauge,
    /// Backend→client frames as journaled (`direction="downstream"`).
    pub(crate) downstream: Flow,
    /// Client→backend frames as forwarded (`direction="upstream"`).
    pub(crate) upstream: Flow,
    /// Frames committed to the journal.
    pub(crate) journal_appends: IntCounter,
    /// Seconds from handing a frame to the writer until it is committed.
    pub(crate) journal_append_seconds: Histogram,
    /// Operations per RocksDB write batch.
    pub(crate) journal_batch_ops: Histogram,
    /// Failed journal writes: retried if transient, else the journal fails.
    pub(crate) journal_write_errors: IntCounter,
    /// Trims written to the journal: one RocksDB range delete each.
    pub(crate) journal_trims: IntCounter,
    /// 1 while journal writes wait for disk space, else 0.
    pub(crate) journal_disk_full: IntGauge,
    /// Journal files deleted whole to free space while the disk was full.
    pub(crate) journal_reclaimed_files: IntCounter,
    /// Live frame bytes the cleaner moved out of mostly dead frame log files.
    pub(crate) journal_cleaned_bytes: IntCounter,
    fsyncs: [IntCounter; 3],
    /// Live bytes of the journal on disk (SST files plus WAL).
    pub(crate) journal_disk_bytes: IntGauge,
    /// Payload bytes retained across sessions (what the disk budget counts).
    pub(crate) journal_retained_bytes: IntGauge,
    /// Frames sent to clients as part of a replay after a resume.
    pub(crate) replayed_frames: IntCounter,
    resumes: IntCounterVec,
    trimmed_frames: IntCounterVec,
    backend_connects: IntCounterVec,
    client_disconnects: IntCounterVec,
    refusals: IntCounterVec,
    tls_reloads: IntCounterVec,
    /// Frames journaled but not yet written to the attached client, summed.
    pub(crate) delivery_lag_frames: IntGauge,
    /// Seconds from a resumed client's attach until its replay was written.
    pub(crate) replay_seconds: Histogram,
    /// Admin connections closed at once because the cap was reached.
    pub(crate) admin_rejected: IntCounter,
    /// Failed accepts on the data port (EMFILE and friends).
    pub(crate) accept_errors_data: IntCounter,
    /// Failed accepts on the admin port.
    pub(crate) accept_errors_admin: IntCounter,
    /// Failed accepts on the peer port (cluster mode).
    pub(crate) accept_errors_peer: IntCounter,
    forwarded_resumes: IntCounterVec,
    /// Seconds from sending a resume to its owner until the owner's
    /// response head arrived.
    pub(crate) forward_seconds: Histogram,
    peer_refused: IntCounterVec,
    /// The upstream guarantee's.
    pub(crate) up: UpMetrics,
    /// Clients closed with 4005 (`slow_consumer = "disconnect"`).
    pub(crate) slow_consumer_disconnect: IntCounter,
    /// Times a link task stopped reading its backend
    /// (`slow_consumer = "backpressure"`).
    pub(crate) slow_consumer_backpressure: IntCounter,
    backend_reopens: IntCounterVec,
    /// Frames journaled from backend connections reopened at start-up
    /// before their client returned.
    pub(crate) backend_orphan_frames: IntCounter,
}

/// Builds families and registers each in one registry as it is made.
struct Families(Registry);

impl Families {
    fn add<C: Collector + Clone + 'static>(&self, c: Result<C, prometheus::Error>) -> C {
        let c = c.expect("valid metric definition");
        self.0.register(Box::new(c.clone())).expect("metric names are unique");
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(opts!(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(opts!(name, help), labels))
    }

    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.add(Histogram::with_opts(histogram_opts!(name, help, buckets)))
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub(crate) fn new() -> Metrics {
        let f = Families(Registry::new());
        let sessions = f.gauges("tether_sessions", "Sessions held, by state.", &["state"]);
        let state = |s: &str| sessions.with_label_values(&[s]);
        let frames = f.counters("tether_frames_total", "Data frames proxied, by direction.", &["direction"]);
        let bytes = f.counters("tether_bytes_total", "Data payload bytes proxied, by direction.", &["direction"]);
        let flow = |d: &str| Flow { frames: frames.with_label_values(&[d]), bytes: bytes.with_label_values(&[d]) };
        let fsyncs = f.counters(
            "tether_journal_fsyncs_total",
            "Journal WAL fsyncs, by trigger (batch, interval, drain).",
            &["trigger"],
        );
        let accept_errors = f.counters(
            "tether_accept_errors_total",
            "Failed accepts (e.g. no file descriptor left), by listener; each is followed by a 50 ms pause.",
            &["listener"],
        );
        let slow_consumer = f.counters(
            "tether_slow_consumer_actions_total",
            "What session.slow_consumer did to a client that fell behind, by action (disconnect, backpressure).",
            &["action"],
        );
        let build_info = f.gauges(
            "tether_build_info",
            "Build information; the value is always 1.",
            &["version", "commit", "rocksdb"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("TETHER_COMMIT"), env!("TETHER_ROCKSDB_VERSION")])
            .set(1);
        let m = Metrics {
            sessions: SessionGauges {
                attached: state("attached"),
                detached: state("detached"),
                orphaned: state("orphaned"),
                ended: state("ended"),
            },
            sessions_evicted: f.counter(
                "tether_sessions_evicted_total",
                "Orphaned or ended sessions evicted, oldest first, for limits.max_retained_sessions.",
            ),
            backend_connections: f.gauge(
                "tether_backend_connections",
                "Backend connections open or being dialed (the slots limits.max_sessions caps).",
            ),
            downstream: flow("downstream"),
            upstream: flow("upstream"),
            journal_appends: f.counter("tether_journal_appends_total", "Frames committed to the journal."),
            journal_append_seconds: f.histogram(
                "tether_journal_append_seconds",
                "Time from handing a frame to the journal writer to its commit.",
                vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
            ),
            journal_batch_ops: f.histogram(
                "tether_journal_batch_ops",
                "Operations per journal write batch.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
            ),
            journal_write_errors: f.counter(
                "tether_journal_write_errors_total",
                "Failed journal writes and fsyncs; transient ones and a full disk are retried, others fail the journal.",
            ),
            journal_trims: f.counter(
                "tether_journal_trims_total",
                "Retention trims written to the journal, one range delete each.",
            ),
            journal_disk_full: f.gauge(
                "tether_journal_disk_full",
                "1 while journal writes wait for free disk space (nothing new is delivered), else 0.",
            ),
            journal_reclaimed_files: f.counter(
                "tether_journal_reclaimed_files_total",
                "Frame log files deleted whole by retention while the disk was full.",
            ),
            journal_cleaned_bytes: f.counter(
                "tether_journal_cleaned_bytes_total",
                "Bytes of live frames moved out of mostly dead frame log files so that the files could be deleted.",
            ),
            fsyncs: ["batch", "interval", "drain"].map(|t| fsyncs.with_label_values(&[t])),
            journal_disk_bytes: f
                .gauge("tether_journal_disk_bytes", "Bytes of the journal on disk (frame log, SST files and WAL)."),
            journal_retained_bytes: f
                .gauge("tether_journal_retained_bytes", "Payload bytes retained in the journal across sessions."),
            replayed_frames: f.counter("tether_replayed_frames_total", "Frames replayed to resuming clients."),
            resumes: f.counters(
                "tether_resumes_total",
                "Session starts and resumes, by outcome and gap reason.",
                &["outcome", "reason"],
            ),
            trimmed_frames: f.counters(
                "tether_trimmed_frames_total",
                "Frames removed from the journal, by reason.",
                &["reason"],
            ),
            backend_connects: f.counters(
                "tether_backend_connects_total",
                "Backend connection attempts, by result.",
                &["result"],
            ),
            client_disconnects: f.counters(
                "tether_client_disconnects_total",
                "Client disconnects, by kind.",
                &["kind"],
            ),
            refusals: f.counters(
                "tether_refusals_total",
                "Upgrade requests refused, by status and error.",
                &["status", "error"],
            ),
            tls_reloads: {
                let c = f.counters(
                    "tether_tls_reloads_total",
                    "Reloads of the data port's certificate after its files changed, by result (ok, error).",
                    &["result"],
                );
                for result in ["ok", "error"] {
                    c.with_label_values(&[result]);
                }
                c
            },
            delivery_lag_frames: f.gauge(
                "tether_delivery_lag_frames",
                "Frames journaled but not yet written to attached clients, summed over sessions.",
            ),
            replay_seconds: f.histogram(
                "tether_replay_seconds",
                "Time from a resuming client's attach until every replayed frame was written to it.",
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            admin_rejected: f.counter(
                "tether_admin_connections_rejected_total",
                "Admin-port connections closed at once because 64 were already open.",
            ),
            accept_errors_data: accept_errors.with_label_values(&["data"]),
            accept_errors_admin: accept_errors.with_label_values(&["admin"]),
            accept_errors_peer: accept_errors.with_label_values(&["peer"]),
            forwarded_resumes: f.counters(
                "tether_forwarded_resumes_total",
                "Resumes for a session another replica owns, by result (ok, refused, unavailable, gone).",
                &["result"],
            ),
            forward_seconds: f.histogram(
                "tether_forward_seconds",
                "Time from sending a resume to its owner until the owner's response head arrived.",
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            ),
            peer_refused: f.counters(
                "tether_peer_refused_total",
                "Requests refused because they did not prove they come from a replica of this cluster, by reason.",
                &["reason"],
            ),
            up: UpMetrics::new(&f),
            slow_consumer_disconnect: slow_consumer.with_label_values(&["disconnect"]),
            slow_consumer_backpressure: slow_consumer.with_label_values(&["backpressure"]),
            backend_reopens: {
                let c = f.counters(
                    "tether_backend_reopens_total",
                    "Backend connections reopened at start-up (session.backend_on_restart = eager), by result.",
                    &["result"],
                );
                for result in ["ok", "refused", "error", "over_capacity", "skipped"] {
                    c.with_label_values(&[result]);
                }
                c
            },
            backend_orphan_frames: f.counter(
                "tether_backend_orphan_frames_total",
                "Frames journaled from backend connections reopened at start-up, before their client returned.",
            ),
            registry: f.0,
        };
        m.precreate();
        m
    }

    /// Creates the series every known label value can take, at 0: a series
    /// that first appears at 1 is invisible to `rate()` and `increase()`, so
    /// an alert on the first `journal_lost` resume after a start would never
    /// fire. (Refusals are too many to list; they appear on first use.)
    fn precreate(&self) {
        for (outcome, reason) in [
            ("new", "none"),
            ("resumed", "none"),
            ("restarted", "none"),
            ("gap", "trimmed"),
            ("gap", "expired"),
            ("gap", "journal_lost"),
            ("gap", "unknown_session"),
        ] {
            self.resumes.with_label_values(&[outcome, reason]);
        }
        for reason in ["max_frames", "max_bytes", "max_age", "disk_budget", "session_purged"] {
            self.trimmed_frames.with_label_values(&[reason]);
        }
        for result in [
            "ok",
            "timeout",
            "backend_unreachable",
            "backend_refused",
            "backend_handshake_failed",
            "backend_tls_failed",
        ] {
            self.backend_connects.with_label_values(&[result]);
        }
        for kind in [
            "clean",
            "away",
            "abnormal",
            "protocol_error",
            "invalid_payload",
            "timeout",
            "too_big",
            "takeover",
            "draining",
            "backend_ended",
            "gap",
            "journal_error",
        ] {
            self.client_disconnects.with_label_values(&[kind]);
        }
        for result in ["ok", "refused", "unavailable", "gone"] {
            self.forwarded_resumes.with_label_values(&[result]);
        }
        // The reasons of `cluster::PeerRefused` (a unit test there checks
        // the two lists agree).
        for reason in PEER_REFUSED_REASONS {
            self.peer_refused.with_label_values(&[reason]);
        }
    }

    /// Counts a resume for a session another replica owns.
    pub(crate) fn forwarded(&self, result: &str) {
        self.forwarded_resumes.with_label_values(&[result]).inc();
    }

    /// Counts a request refused for not proving it comes from a peer.
    pub(crate) fn peer_refused(&self, reason: &str) {
        self.peer_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a WAL fsync.
    pub(crate) fn fsync(&self, trigger: Fsync) {
        self.fsyncs[trigger as usize].inc();
    }

    /// Counts a session start or resume.
    pub(crate) fn resume(&self, outcome: &str, reason: &str) {
        self.resumes.with_label_values(&[outcome, reason]).inc();
    }

    /// Counts `frames` removed from the journal for `reason`.
    pub(crate) fn trimmed(&self, reason: &str, frames: u64) {
        self.trimmed_frames.with_label_values(&[reason]).inc_by(frames);
    }

    /// Counts a backend connection attempt.
    pub(crate) fn backend_connect(&self, result: &str) {
        self.backend_connects.with_label_values(&[result]).inc();
    }

    /// Counts an eager reopen at start-up by result.
    pub(crate) fn backend_reopen(&self, result: &str) {
        self.backend_reopens.with_label_values(&[result]).inc();
    }

    /// Counts a client disconnect.
    pub(crate) fn client_disconnect(&self, kind: &str) {
        self.client_disconnects.with_label_values(&[kind]).inc();
    }

    /// Counts a reload of the data port's certificate (`ok` or `error`).
    pub(crate) fn tls_reload(&self, result: &str) {
        self.tls_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a refused upgrade.
    pub(crate) fn refusal(&self, status: &str, error: &str) {
        self.refusals.with_label_values(&[status, error]).inc();
    }

    /// The text exposition of every family.
    pub(crate) fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encode error: {e}\n"))
    }
}
