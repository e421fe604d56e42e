//! The Prometheus metric families tether exports (docs/ARCHITECTURE.md).

use prometheus::{histogram_opts, opts, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

/// Every metric, registered in one registry. Labels never carry session ids.
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Sessions held, by state (`attached`, `detached`, `orphaned`, `ended`).
    pub sessions: IntGaugeVec,
    /// Data frames, by direction (`downstream` backend→client as journaled,
    /// `upstream` client→backend).
    pub frames: IntCounterVec,
    /// Data payload bytes, by direction.
    pub bytes: IntCounterVec,
    /// Frames committed to the journal.
    pub journal_appends: IntCounter,
    /// Seconds from handing a frame to the writer until it is committed.
    pub journal_append_seconds: Histogram,
    /// Operations per RocksDB write batch.
    pub journal_batch_ops: Histogram,
    /// Failed journal writes (retried; nothing is forwarded meanwhile).
    pub journal_write_errors: IntCounter,
    /// WAL fsyncs, by what triggered them (`batch` with `sync = "always"`,
    /// `interval`, `drain`).
    pub journal_fsyncs: IntCounterVec,
    /// Live bytes of the journal on disk (SST files plus WAL).
    pub journal_disk_bytes: IntGauge,
    /// Payload bytes retained across sessions (what the disk budget counts).
    pub journal_retained_bytes: IntGauge,
    /// Frames sent to clients out of the journal or the in-memory ring as
    /// part of a replay after a resume.
    pub replayed_frames: IntCounter,
    /// Resumes and new sessions, by outcome and gap reason (`none` if no gap).
    pub resumes: IntCounterVec,
    /// Frames removed from the journal, by reason.
    pub trimmed_frames: IntCounterVec,
    /// Backend connection attempts, by result.
    pub backend_connects: IntCounterVec,
    /// Client disconnects, by kind.
    pub client_disconnects: IntCounterVec,
    /// Requests refused before the upgrade, by status and error.
    pub refusals: IntCounterVec,
    /// Frames journaled but not yet written to the attached client, summed.
    pub delivery_lag_frames: IntGauge,
    /// Seconds from a resumed client's attach until its replay was written.
    pub replay_seconds: Histogram,
    /// Always 1; labels carry the version.
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            sessions: IntGaugeVec::new(opts!("tether_sessions", "Sessions held, by state."), &["state"]).unwrap(),
            frames: IntCounterVec::new(
                opts!("tether_frames_total", "Data frames proxied, by direction."),
                &["direction"],
            )
            .unwrap(),
            bytes: IntCounterVec::new(
                opts!("tether_bytes_total", "Data payload bytes proxied, by direction."),
                &["direction"],
            )
            .unwrap(),
            journal_appends: IntCounter::new("tether_journal_appends_total", "Frames committed to the journal.")
                .unwrap(),
            journal_append_seconds: Histogram::with_opts(histogram_opts!(
                "tether_journal_append_seconds",
                "Time from handing a frame to the journal writer to its commit.",
                vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]
            ))
            .unwrap(),
            journal_batch_ops: Histogram::with_opts(histogram_opts!(
                "tether_journal_batch_ops",
                "Operations per journal write batch.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]
            ))
            .unwrap(),
            journal_write_errors: IntCounter::new(
                "tether_journal_write_errors_total",
                "Failed journal writes; the writer retries and forwards nothing meanwhile.",
            )
            .unwrap(),
            journal_fsyncs: IntCounterVec::new(
                opts!("tether_journal_fsyncs_total", "Journal WAL fsyncs, by trigger (batch, interval, drain)."),
                &["trigger"],
            )
            .unwrap(),
            journal_disk_bytes: IntGauge::new(
                "tether_journal_disk_bytes",
                "Bytes of the journal on disk (SST files and WAL).",
            )
            .unwrap(),
            journal_retained_bytes: IntGauge::new(
                "tether_journal_retained_bytes",
                "Payload bytes retained in the journal across sessions.",
            )
            .unwrap(),
            replayed_frames: IntCounter::new("tether_replayed_frames_total", "Frames replayed to resuming clients.")
                .unwrap(),
            resumes: IntCounterVec::new(
                opts!("tether_resumes_total", "Session starts and resumes, by outcome and gap reason."),
                &["outcome", "reason"],
            )
            .unwrap(),
            trimmed_frames: IntCounterVec::new(
                opts!("tether_trimmed_frames_total", "Frames removed from the journal, by reason."),
                &["reason"],
            )
            .unwrap(),
            backend_connects: IntCounterVec::new(
                opts!("tether_backend_connects_total", "Backend connection attempts, by result."),
                &["result"],
            )
            .unwrap(),
            client_disconnects: IntCounterVec::new(
                opts!("tether_client_disconnects_total", "Client disconnects, by kind."),
                &["kind"],
            )
            .unwrap(),
            refusals: IntCounterVec::new(
                opts!("tether_refusals_total", "Upgrade requests refused, by status and error."),
                &["status", "error"],
            )
            .unwrap(),
            delivery_lag_frames: IntGauge::new(
                "tether_delivery_lag_frames",
                "Frames journaled but not yet written to attached clients, summed over sessions.",
            )
            .unwrap(),
            replay_seconds: Histogram::with_opts(histogram_opts!(
                "tether_replay_seconds",
                "Time from a resuming client's attach until every replayed frame was written to it.",
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
            ))
            .unwrap(),
            build_info: IntGaugeVec::new(
                opts!("tether_build_info", "Build information; the value is always 1."),
                &["version"],
            )
            .unwrap(),
            registry,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.register_all();
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.sessions.clone()),
            Box::new(self.frames.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.journal_appends.clone()),
            Box::new(self.journal_append_seconds.clone()),
            Box::new(self.journal_batch_ops.clone()),
            Box::new(self.journal_write_errors.clone()),
            Box::new(self.journal_fsyncs.clone()),
            Box::new(self.journal_disk_bytes.clone()),
            Box::new(self.journal_retained_bytes.clone()),
            Box::new(self.replayed_frames.clone()),
            Box::new(self.resumes.clone()),
            Box::new(self.trimmed_frames.clone()),
            Box::new(self.backend_connects.clone()),
            Box::new(self.client_disconnects.clone()),
            Box::new(self.refusals.clone()),
            Box::new(self.delivery_lag_frames.clone()),
            Box::new(self.replay_seconds.clone()),
            Box::new(self.build_info.clone()),
        ];
        for c in all {
            r.register(c).expect("metric names are unique");
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encode error: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
