//! `[session]`: how long a backend connection outlives its client, and what
//! happens to a client that cannot keep up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[session]`: how long a backend connection outlives its client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// How long the backend connection is kept open after the client vanished.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How often tether pings an attached client.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for this long (no frame, no pong) is detached.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// How long a client's message may wait for room on the way to a backend
    /// that does not read; then the client is closed with 1013.
    #[serde(with = "humantime_serde")]
    pub upstream_stall_timeout: Duration,
    /// What happens to a client that falls behind the backend.
    pub slow_consumer: SlowConsumer,
    /// With `slow_consumer = "disconnect"`: frames committed but not yet
    /// written to the client beyond which it is closed with 4005.
    pub slow_consumer_lag: u64,
    /// When tether reopens the backend connections of sessions that had one
    /// when it stopped.
    pub backend_on_restart: BackendOnRestart,
    /// `eager`: backend connections opened per second at most after a start.
    pub restart_dials_per_second: u32,
    /// `eager`: backend handshakes in flight at most after a start.
    pub restart_dial_concurrency: u32,
    /// Request headers that carry credentials: never stored for `eager`
    /// unless `restart_keep_credentials`.
    pub restart_credential_headers: Vec<String>,
    /// `eager`: store those headers too, encrypted with a key derived from
    /// `token.secret`, so a reopened connection is authenticated.
    pub restart_keep_credentials: bool,
}

/// `session.backend_on_restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendOnRestart {
    /// At start-up, every session that had a backend connection gets one
    /// again, paced, so what the backend sends meanwhile is journaled.
    #[default]
    Eager,
    /// A session's backend connection is reopened when its client returns.
    Lazy,
}

/// `session.slow_consumer`: what happens to a client that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Retention trims what the client has not read; it gets a `gap` report.
    #[default]
    Gap,
    /// A client more than `slow_consumer_lag` frames behind is closed with
    /// 4005 (resumable).
    Disconnect,
    /// tether stops reading the backend while a trim would remove frames no
    /// client has been sent, so the backend's TCP flow control takes over.
    Backpressure,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_secs(120),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(45),
            upstream_stall_timeout: Duration::from_secs(30),
            slow_consumer: SlowConsumer::Gap,
            slow_consumer_lag: 50_000,
            backend_on_restart: BackendOnRestart::Eager,
            restart_dials_per_second: 200,
            restart_dial_concurrency: 32,
            restart_credential_headers: vec!["authorization".into(), "cookie".into()],
            restart_keep_credentials: false,
        }
    }
}
