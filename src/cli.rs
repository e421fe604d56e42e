//! Command line: `tether [run]` serves; `tether demo` runs tether in front of
//! a built-in demo backend and shows a stream surviving a disconnect. Also
//! what every binary that runs tether shares: log set-up, the runtime, and
//! the shutdown signals.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use std::future::Future;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError, LogConfig, LogFormat};
use crate::server::{self, RunError};

/// `tether --version`: the crate version, the git commit it was built from
/// and the RocksDB version linked in.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TETHER_COMMIT"),
    ", RocksDB ",
    env!("TETHER_ROCKSDB_VERSION"),
    ")"
);

/// tether: delivery guarantees for an unmodified WebSocket backend.
///
/// Configuration comes from (lowest to highest precedence) built-in defaults,
/// the TOML file given with --config, TETHER_<SECTION>_<KEY> environment
/// variables (e.g. TETHER_JOURNAL_SYNC=always) and the flags below.
/// config/tether.toml documents every key and its default.
#[derive(Debug, Parser)]
#[command(name = "tether", version = VERSION, about, long_about)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file (TOML).
    #[arg(long, short, env = "TETHER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data port address, e.g. 0.0.0.0:8080 [server.listen].
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// Admin port address for /metrics, /livez, /readyz [server.admin_listen].
    #[arg(long, global = true)]
    pub admin_listen: Option<SocketAddr>,
    /// Backend base URL, e.g. ws://127.0.0.1:9000 [server.upstream].
    #[arg(long, global = true)]
    pub upstream: Option<String>,
    /// Journal directory [journal.data_dir].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Log format: human or json [log.format].
    #[arg(long, global = true)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or tether=debug [log.level].
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: proxy clients to the upstream backend (the default).
    Run,
    /// Start a demo backend and tether in front of it, then show a client
    /// dropping and resuming without losing a frame. Keeps running for you to
    /// try by hand. The journal is kept across runs in
    /// $XDG_STATE_HOME/tether-demo (~/.local/state/tether-demo; --data-dir to
    /// change it); logs at warn unless RUST_LOG or --log-level say otherwise.
    Demo,
    /// Print the effective configuration (file + environment + flags) and exit.
    Config,
    /// Check a running deployment from outside: cut and resume sessions and
    /// verify every frame (docs/CHECK.md). Runs the `tether-check` binary
    /// installed next to this one; `tether check --help` lists its options.
    #[command(disable_help_flag = true)]
    Check {
        /// URL and options, passed to tether-check as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
}

impl Cli {
    /// The effective configuration: file, then environment, then flags.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let (mut c, mut origins) = Config::parse(self.config.as_deref(), std::env::vars())?;
        if let Some(a) = self.listen {
            c.server.listen = a;
            origins.flag("server.listen", "--listen");
        }
        if let Some(a) = self.admin_listen {
            c.server.admin_listen = a;
            origins.flag("server.admin_listen", "--admin-listen");
        }
        if let Some(u) = &self.upstream {
            c.server.upstream = u.clone();
            origins.flag("server.upstream", "--upstream");
        }
        if let Some(d) = &self.data_dir {
            c.journal.data_dir = d.clone();
            origins.flag("journal.data_dir", "--data-dir");
        }
        if let Some(f) = self.log_format {
            c.log.format = f;
            origins.flag("log.format", "--log-format");
        }
        if let Some(l) = &self.log_level {
            c.log.level = l.clone();
            origins.flag("log.level", "--log-level");
        }
        // The one check `tether config` and `tether run` share.
        c.validate().map_err(|e| origins.locate(e))?;
        Ok(c)
    }
}

/// Why `tether run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `log.level` is not a valid filter.
    #[error("log.level {level:?}: {source}")]
    LogFilter {
        /// The filter as configured.
        level: String,
        /// What is wrong with it.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The tokio runtime or the signal handlers could not be set up.
    #[error("cannot start: {0}")]
    Setup(#[from] std::io::Error),
    /// tether failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl ServeError {
    /// The process exit status: 2 when tether could not start (the
    /// configuration, a listener, the journal), 1 when it failed later.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::LogFilter { .. } | ServeError::Setup(_) | ServeError::Run(RunError::Start(_)) => 2,
            ServeError::Run(RunError::Drain(_)) => 1,
        }
    }
}

/// What `tether run` does: logs, a runtime, tether until SIGTERM or SIGINT,
/// then a drain.
pub fn serve(config: Config) -> Result<(), ServeError> {
    init_logs(&config.log)?;
    runtime()?.block_on(async move {
        // Handlers first: a SIGTERM that arrives as soon as tether is serving
        // must drain, not kill the process or go unnoticed.
        let stop = shutdown_signal()?;
        Ok(server::run(config, stop).await?)
    })
}

/// Installs the global log subscriber for `log`.
pub fn init_logs(log: &LogConfig) -> Result<(), ServeError> {
    let filter =
        EnvFilter::try_new(&log.level).map_err(|source| ServeError::LogFilter { level: log.level.clone(), source })?;
    // Colour codes only for a person at a terminal, not in a file or a
    // log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    Ok(())
}

/// The multi-threaded tokio runtime tether runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
}

/// Installs SIGTERM and SIGINT handlers now; the future completes at the
/// first of them.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received");
    })
}
