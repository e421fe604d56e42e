//! Configuration: `config/tether.toml`, overridden by `TETHER_<SECTION>_<KEY>`
//! environment variables, overridden by CLI flags.
//!
//! Every key has a default, so an empty file is a valid configuration. Unknown
//! keys (in the file or in a `TETHER_<SECTION>_*` variable) are an error: a typo
//! must not silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod cluster;
mod load;
mod session;
mod upstream;
mod validate;

pub(crate) use cluster::ordinal;
pub use cluster::{ClusterConfig, ClusterMode};
pub use load::{Origin, Origins};
pub use session::{BackendOnRestart, SessionConfig, SlowConsumer};
pub use upstream::{BadUpstream, UpstreamUrl};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML: its path, line and column, and why.
    #[error("{0}")]
    Syntax(String),
    /// A key has a value tether cannot use (or is not a key at all).
    #[error("{message}{}", origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Invalid {
        /// The dotted key the error is about (`session.linger`); empty if
        /// it is about no one key.
        key: String,
        /// What is wrong, starting with the key.
        message: String,
        /// Where the value came from, once known ([`Origins::locate`]).
        origin: Option<Origin>,
    },
}

impl ConfigError {
    /// An error about `key`; `message` starts with the key or is prefixed
    /// with it.
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let (key, message) = (key.into(), message.into());
        let message = match message.starts_with(&key) {
            true => message,
            false => format!("{key}: {message}"),
        };
        ConfigError::Invalid { key, message, origin: None }
    }

    /// An error whose message starts with the key it is about
    /// (`"session.linger must be ..."`).
    pub(crate) fn keyed(message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let key = message.split([' ', ':']).next().unwrap_or_default().to_owned();
        ConfigError::Invalid { key, message, origin: None }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and the backend.
    pub server: ServerConfig,
    /// TLS on the data port and to `wss://` upstreams.
    pub tls: TlsConfig,
    /// Explicit resource limits.
    pub limits: LimitsConfig,
    /// Session lifetime.
    pub session: SessionConfig,
    /// Resume tokens.
    pub token: TokenConfig,
    /// How frames are stamped with their sequence id.
    pub stamp: StampConfig,
    /// The RocksDB journal.
    pub journal: JournalConfig,
    /// Logging.
    pub log: LogConfig,
    /// Several replicas: who owns a session, and how to reach it.
    pub cluster: ClusterConfig,
}

/// `[server]`: where tether listens and where the backend is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Data port: clients connect here.
    pub listen: SocketAddr,
    /// Admin port: `/metrics`, `/livez`, `/readyz`.
    pub admin_listen: SocketAddr,
    /// The backend's base URL (`ws://host:port[/prefix]`); the client's path and
    /// query are appended.
    pub upstream: String,
    /// Time allowed to connect to the backend and finish its handshake.
    #[serde(with = "humantime_serde")]
    pub backend_connect_timeout: Duration,
    /// Time a client has to send its complete upgrade request.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Allowed `Origin` values; empty allows any (non-browser clients send none).
    pub allowed_origins: Vec<String>,
    /// How long `Retry-After` tells refused clients to wait, in seconds.
    pub retry_after_secs: u32,
    /// Grace period for a drain on SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("static address"),
            // Loopback unless asked: /metrics is not for the whole network.
            admin_listen: "127.0.0.1:9090".parse().expect("static address"),
            upstream: "ws://127.0.0.1:9000".into(),
            backend_connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            retry_after_secs: 5,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// `[tls]`: TLS on the data port (off unless both files are set) and for
/// `wss://` upstreams. An empty path is unset. The admin port is always
/// plain HTTP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain for the data port; with `key_file`, clients
    /// must connect with TLS (`wss://`).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `cert_file`.
    pub key_file: PathBuf,
    /// How often the two files are checked for a change (new connections
    /// then get the new certificate).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// PEM CA certificates that `wss://` upstreams are verified against;
    /// unset: the system's trust store.
    pub upstream_ca_file: PathBuf,
    /// PEM client certificate chain for backends that require mutual TLS.
    pub upstream_client_cert_file: PathBuf,
    /// PEM private key for `upstream_client_cert_file`.
    pub upstream_client_key_file: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            reload_interval: Duration::from_secs(5),
            upstream_ca_file: PathBuf::new(),
            upstream_client_cert_file: PathBuf::new(),
            upstream_client_key_file: PathBuf::new(),
        }
    }
}

impl TlsConfig {
    /// True if the data port serves TLS.
    pub fn enabled(&self) -> bool {
        is_set(&self.cert_file)
    }

    /// Files must come in pairs and exist (their contents are checked when
    /// tether starts).
    fn check(&self) -> Result<(), ConfigError> {
        let pairs = [
            ("tls.cert_file", &self.cert_file, "tls.key_file", &self.key_file),
            (
                "tls.upstream_client_cert_file",
                &self.upstream_client_cert_file,
                "tls.upstream_client_key_file",
                &self.upstream_client_key_file,
            ),
        ];
        for (a, va, b, vb) in pairs {
            if is_set(va) != is_set(vb) {
                let (set, unset) = if is_set(va) { (a, b) } else { (b, a) };
                return Err(ConfigError::invalid(set, format!("{set} is set but {unset} is not: set both or neither")));
            }
        }
        let files = [
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
            ("tls.upstream_ca_file", &self.upstream_ca_file),
            ("tls.upstream_client_cert_file", &self.upstream_client_cert_file),
            ("tls.upstream_client_key_file", &self.upstream_client_key_file),
        ];
        for (key, path) in files {
            if let (true, Err(e)) = (is_set(path), std::fs::metadata(path)) {
                return Err(ConfigError::invalid(key, format!("{key} {}: {e}", path.display())));
            }
        }
        Ok(())
    }
}

/// `Some(path)` unless `path` is empty (unset).
pub(crate) fn file(path: &Path) -> Option<&Path> {
    is_set(path).then_some(path)
}

fn is_set(path: &Path) -> bool {
    !path.as_os_str().is_empty()
}

/// `[limits]`: every buffer and size that untrusted peers can influence.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest WebSocket message (after reassembly), either direction.
    pub max_message_bytes: usize,
    /// Largest single WebSocket frame, either direction.
    pub max_frame_bytes: usize,
    /// Largest upgrade request head (request line + headers); at least 8192.
    pub max_header_bytes: usize,
    /// Write buffer per socket: tungstenite buffers this much before writing.
    pub write_buffer_bytes: usize,
    /// Hard cap on a socket's write buffer before writes fail.
    pub max_write_buffer_bytes: usize,
    /// Frame-parsing buffer each socket (client and backend) keeps for its
    /// life; kernel reads take up to `lazy_read::BURST` regardless.
    pub read_buffer_bytes: usize,
    /// Most sessions with an open backend connection (attached or lingering).
    pub max_sessions: usize,
    /// Most orphaned and ended sessions kept for late resumes; beyond it the
    /// oldest are evicted with their frames.
    pub max_retained_sessions: usize,
    /// Recent frames kept in memory per session, in bytes, so live clients
    /// are served without reading the journal.
    pub ring_bytes: usize,
    /// Largest batch of frames read from the journal in one step of a replay.
    pub replay_batch_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            max_header_bytes: 16 * 1024,
            write_buffer_bytes: 16 * 1024,
            max_write_buffer_bytes: 4 << 20,
            read_buffer_bytes: 1024,
            max_sessions: 10_000,
            max_retained_sessions: 100_000,
            ring_bytes: 64 * 1024,
            replay_batch_bytes: 256 * 1024,
        }
    }
}

/// `[token]`: resume token signing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// HMAC key (at least 32 characters). Empty: generated once and kept in the
    /// journal. Prefer setting it (`TETHER_TOKEN_SECRET`).
    pub secret: String,
    /// Request headers whose values bind a token to its owner (e.g.
    /// `["authorization"]`): a token presented with other values is refused.
    pub identity_headers: Vec<String>,
}

/// How downstream data frames carry their sequence id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StampMode {
    /// Text `"<seq>:<payload>"`, binary 8-byte big-endian seq then payload.
    #[default]
    Prefix,
    /// A field injected into JSON-object text frames; other frames as `prefix`.
    Json,
    /// Frames untouched; no control frames; token in the 101 header only.
    None,
}

/// `[stamp]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StampConfig {
    /// `prefix`, `json` or `none`.
    pub mode: StampMode,
    /// Field name injected in `json` mode.
    pub json_field: String,
}

impl Default for StampConfig {
    fn default() -> Self {
        Self { mode: StampMode::Prefix, json_field: "seq".into() }
    }
}

/// When the journal is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// WAL written to the OS before forwarding; survives kill -9, not power loss.
    #[default]
    None,
    /// As `none`, plus an fsync every `sync_interval` if anything was written.
    Interval,
    /// fsync before forwarding (group commit across sessions).
    Always,
}

/// `[journal]`: the RocksDB journal and its retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Directory of the RocksDB database.
    pub data_dir: PathBuf,
    /// `none`, `interval` or `always`.
    pub sync: SyncMode,
    /// fsync period for `sync = "interval"`.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// How long an ended or orphaned session stays resumable before it is purged.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Frames kept per session; older ones are trimmed in chunks: a session
    /// keeps between this many and this many plus an eighth (rounded up to
    /// 64-frame segments).
    pub max_session_frames: u64,
    /// Payload bytes kept per session; once exceeded by an eighth, the oldest
    /// whole segments are trimmed until at most this many remain.
    pub max_session_bytes: u64,
    /// Frames older than this are trimmed.
    #[serde(with = "humantime_serde")]
    pub max_frame_age: Duration,
    /// Payload bytes kept across all sessions; the oldest frames go first.
    pub disk_budget_bytes: u64,
    /// Most operations the writer commits in one RocksDB write.
    pub max_batch: usize,
    /// RocksDB memtable size per column family. After a full disk, writes
    /// resume once this much space is free again, so it should be well
    /// under the volume's size; smaller costs CPU (more flushes and
    /// compactions: docs/BENCHMARKS.md).
    pub memtable_bytes: usize,
    /// Frame log bytes behind the write point that stay in the page cache,
    /// so replays of recent frames read memory; older bytes are dropped
    /// from the cache once written back (docs/ARCHITECTURE.md, "Journal
    /// layout"). 0 leaves the page cache to the kernel.
    pub page_cache_bytes: usize,
    /// Under light load, how long the writer waits for more frames to
    /// join a small batch before committing it (0 never waits): fewer
    /// wake-ups and WAL writes per frame, at up to this much latency.
    #[serde(with = "humantime_serde")]
    pub commit_delay: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./tether-data"),
            sync: SyncMode::None,
            sync_interval: Duration::from_millis(50),
            retention: Duration::from_secs(3600),
            max_session_frames: 100_000,
            max_session_bytes: 64 << 20,
            max_frame_age: Duration::from_secs(3600),
            disk_budget_bytes: 1 << 30,
            max_batch: 1024,
            memtable_bytes: 64 << 20,
            page_cache_bytes: 256 << 20,
            commit_delay: Duration::from_micros(250),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `tether=debug`.
    pub level: String,
    /// A repeated warning (a backend that cannot be reached) is written at
    /// most once per this period; the next line counts the ones left out.
    #[serde(with = "humantime_serde")]
    pub warn_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into(), warn_interval: Duration::from_secs(10) }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be human or json, not {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("ws://backend:9000/api/").unwrap();
        assert_eq!((u.authority.as_str(), u.prefix.as_str()), ("backend:9000", "/api"));
        let u = UpstreamUrl::parse("ws://backend").unwrap();
        assert_eq!((u.authority.as_str(), u.prefix.as_str()), ("backend:80", ""));
        let u = UpstreamUrl::parse("wss://backend/x").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.prefix.as_str(), u.tls, u.host.as_str()),
            ("backend:443", "/x", true, "backend")
        );
        let u = UpstreamUrl::parse("wss://[::1]:8443").unwrap();
        assert_eq!((u.authority.as_str(), u.host.as_str()), ("[::1]:8443", "::1"));
        assert!(UpstreamUrl::parse("http://backend").is_err());
        let refused = |url: &str| UpstreamUrl::parse(url).unwrap_err().to_string();
        assert!(refused("ws://backend:99999").contains("not in 1..=65535"));
        assert!(refused("ws://backend:0").contains("not in 1..=65535"));
        let e = refused("ws://alice:s3cret@backend:9000/x");
        assert!(e.contains("credentials") && !e.contains("s3cret") && !e.contains("alice"), "{e}");
        assert!(refused("ws://backend/a/../b").contains(".."));
        assert!(refused("ws://backend/a?x=1").contains("query"));
    }

    #[test]
    fn shipped_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tether.toml");
        let loaded = Config::load(Some(&path), []).unwrap();
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&loaded).unwrap(),
            toml::to_string(&defaults).unwrap(),
            "config/tether.toml must document exactly the defaults"
        );
    }

    #[test]
    fn env_overrides_and_unknown_keys() {
        let env = [
            ("TETHER_JOURNAL_SYNC".to_owned(), "always".to_owned()),
            ("TETHER_SESSION_LINGER".to_owned(), "7s".to_owned()),
            ("TETHER_LIMITS_MAX_SESSIONS".to_owned(), "12".to_owned()),
            ("TETHER_CONFIG".to_owned(), "ignored".to_owned()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.journal.sync, SyncMode::Always);
        assert_eq!(c.session.linger, Duration::from_secs(7));
        assert_eq!(c.limits.max_sessions, 12);

        // Kubernetes service links for a Service named `tether-server-x`.
        let links = [
            ("TETHER_SERVER_X_SERVICE_HOST".to_owned(), "10.0.0.1".to_owned()),
            ("TETHER_SERVER_X_PORT".to_owned(), "tcp://10.0.0.1:80".to_owned()),
            ("TETHER_SERVER_X_PORT_80_TCP_PORT".to_owned(), "80".to_owned()),
            ("TETHER_SERVER_SERVICE_HOST".to_owned(), "10.0.0.2".to_owned()),
            ("TETHER_SERVER_PORT".to_owned(), "tcp://10.0.0.2:80".to_owned()),
        ];
        assert!(Config::load(None, links).is_ok());

        let err = Config::load(None, [("TETHER_JOURNAL_SYNK".into(), "always".into())]);
        assert!(err.unwrap_err().to_string().contains("synk"));
    }
}
