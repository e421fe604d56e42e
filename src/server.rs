//! Wiring an instance: build (journal, sessions, context) → bind (the data
//! and admin listeners) → spawn (accept loops, janitor); then run until a
//! shutdown signal and drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::cluster::Cluster;
use crate::config::{file, BackendOnRestart, BadUpstream, ClusterMode, Config, UpstreamUrl};
use crate::journal::{Journal, Opened, RecoveredSession};
use crate::metrics::Metrics;
use crate::protocol::token::TokenKey;
use crate::proxy::{self, Context, Parts};
use crate::runtime::Runtime;
use crate::session::{Sessions, Shared};
use crate::tls::{self, ServerTls};
use crate::upstream::{FailureLog, SavedKey, Upstream};

pub use crate::journal::{DirError, JournalError};
pub use crate::protocol::token::BadIdentityHeader;

/// Why tether could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal could not be opened.
    #[error("cannot open the journal: {0}")]
    Journal(#[from] JournalError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {}", bind_problem(source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The key that set it.
        key: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A TLS certificate, key or CA file could not be used.
    #[error("{0}")]
    Tls(String),
    /// `server.upstream` is not a usable backend URL.
    #[error(transparent)]
    Upstream(#[from] BadUpstream),
    /// `token.identity_headers` names an invalid header.
    #[error(transparent)]
    Token(#[from] BadIdentityHeader),
    /// A bug: a start-up step panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A bind error in words an operator acts on.
fn bind_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "the address is in use: another process (another tether?) listens there".into()
        }
        std::io::ErrorKind::AddrNotAvailable => "no network interface of this host has that address".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied: ports below 1024 need privileges".into(),
        _ => e.to_string(),
    }
}

/// Why [`run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// tether did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The journal could not be flushed and closed during the drain.
    #[error("drain: {0}")]
    Drain(#[from] JournalError),
}

/// A running instance.
pub struct Running {
    /// Where clients connect.
    pub data_addr: SocketAddr,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    /// Cancel to start a drain.
    pub shutdown: CancellationToken,
    journal: Journal,
    admin: Arc<Admin>,
    backend_failures: Arc<FailureLog>,
    tasks: TaskTracker,
    grace: Duration,
    writer: std::thread::JoinHandle<()>,
}

/// Starts tether, serves until `stop` completes, then drains. This is what
/// `tether run`, `tether demo` and `tether-bench` all run.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> Result<(), RunError> {
    let running = start(config).await?;
    Ok(running.serve_until(stop).await?)
}

/// Binds the listeners and loads the TLS files, then opens the journal,
/// restores its sessions and starts serving. If a step after the journal
/// opened fails, the journal is closed and its writer joined before the
/// error is returned, so RocksDB is idle when the process exits.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let rt =
        Runtime { metrics: Arc::new(Metrics::new()), shutdown: CancellationToken::new(), tasks: TaskTracker::new() };
    // First what fails most often at a first deploy (a port in use, a bad
    // certificate): such a failure must not create or lock a journal.
    let early = prepare(&config).await?;
    let Opened { journal, stored_secret, recovered, writer } = open_journal(&config, &rt).await?;
    match serve(&config, &rt, &journal, stored_secret, recovered, early).await {
        Ok((data_addr, admin_addr, admin, backend_failures)) => Ok(Running {
            data_addr,
            backend_failures,
            admin_addr,
            shutdown: rt.shutdown,
            journal,
            admin,
            tasks: rt.tasks,
            grace: config.server.shutdown_grace,
            writer,
        }),
        Err(e) => {
            if let Err(close) = close_journal(&journal, writer, false).await {
                tracing::error!(error = %close, "closing the journal after a failed start");
            }
            Err(e)
        }
    }
}

/// What start-up prepares before the journal is opened.
struct Early {
    data: (TcpListener, SocketAddr),
    admin: (TcpListener, SocketAddr),
    peers: Option<(TcpListener, SocketAddr)>,
    target: UpstreamUrl,
    upstream_tls: Option<tokio_rustls::TlsConnector>,
    server_tls: Option<Arc<ServerTls>>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// The listeners (not accepting yet: connections wait in the kernel's
/// queue until the journal is open) and the TLS configurations.
async fn prepare(config: &Config) -> Result<Early, StartError> {
    let target = UpstreamUrl::parse(&config.server.upstream)?;
    let data = bind(config.server.listen, "server.listen").await?;
    let admin = bind(config.server.admin_listen, "server.admin_listen").await?;
    let peers = match config.cluster.mode {
        ClusterMode::Off => None,
        _ => Some(bind(config.cluster.peer_listen, "cluster.peer_listen").await?),
    };
    let upstream_tls = match target.tls {
        true => Some(tokio_rustls::TlsConnector::from(
            tls::client_config(&config.tls).await.map_err(|e| StartError::Tls(e.to_string()))?,
        )),
        false => None,
    };
    let server_tls = match (file(&config.tls.cert_file), file(&config.tls.key_file)) {
        (Some(cert), Some(key)) => Some(ServerTls::load(cert, key).await.map_err(|e| StartError::Tls(e.to_string()))?),
        _ => None,
    };
    let acceptor = match &server_tls {
        Some(s) => Some(s.acceptor().map_err(|e| StartError::Tls(e.to_string()))?),
        None => None,
    };
    Ok(Early { data, admin, peers, target, upstream_tls, server_tls, acceptor })
}

/// Everything after the journal is open: the token key, the sessions, then
/// the tasks. Returns the bound addresses and the admin state.
async fn serve(
    config: &Arc<Config>,
    rt: &Runtime,
    journal: &Journal,
    stored_secret: Option<Vec<u8>>,
    recovered: Vec<RecoveredSession>,
    early: Early,
) -> Result<(SocketAddr, SocketAddr, Arc<Admin>, Arc<FailureLog>), StartError> {
    let Early { data: (data, data_addr), admin: (admin_listener, admin_addr), peers, target, .. } = early;
    let (upstream_tls, server_tls, acceptor) = (early.upstream_tls, early.server_tls, early.acceptor);
    let secret_generated = stored_secret.is_some();
    if secret_generated {
        tracing::warn!(
            "token.secret is not set: tokens are signed with a secret generated and kept in the journal, so losing \
             the journal invalidates every token, and no other replica can verify them; set TETHER_TOKEN_SECRET \
             (at least 32 characters)"
        );
    }
    let secret = stored_secret.unwrap_or_else(|| config.token.secret.clone().into_bytes());
    let cluster = Arc::new(Cluster::new(&config.cluster, &secret, config.limits.max_header_bytes, rt.metrics.clone()));
    let eager = config.session.backend_on_restart == BackendOnRestart::Eager;
    let restart_key = eager.then(|| Arc::new(SavedKey::new(&secret)));
    let tokens = TokenKey::new(secret, &config.token.identity_headers)?.for_cluster(&config.cluster.name);
    let shared = Arc::new(Shared {
        journal: journal.clone(),
        rt: rt.clone(),
        config: config.clone(),
        restart_key: restart_key.clone(),
    });
    let restored = recovered.len();
    let (sessions, reopen) = Sessions::restore(shared, recovered).await?;
    tracing::info!(sessions = restored, epoch = journal.epoch(), "journal open");

    let failures = Arc::new(FailureLog::new(&config.server.upstream, config.log.warn_interval));
    let upstream = Upstream {
        tls: upstream_tls,
        client_tls: server_tls.is_some(),
        target,
        ws_config: proxy::ws_config(config),
        timeout: config.server.backend_connect_timeout,
        max_head_bytes: config.limits.max_header_bytes,
        metrics: rt.metrics.clone(),
        failures: failures.clone(),
    };
    let reopener = upstream.clone();
    let parts = Parts {
        rt: rt.clone(),
        sessions: sessions.clone(),
        upstream,
        tokens,
        secret_generated,
        epoch: journal.epoch(),
        tls: acceptor,
        cluster: cluster.clone(),
    };
    let ctx = Arc::new(Context::new(config.clone(), parts));
    let admin = Arc::new(Admin {
        metrics: rt.metrics.clone(),
        sessions: sessions.clone(),
        journal: journal.clone(),
        ready: AtomicBool::new(false),
        shutdown: rt.shutdown.clone(),
    });

    let peer_addr = peers.as_ref().map(|(_, a)| a.to_string()).unwrap_or_default();
    if let Some((listener, _)) = peers {
        tokio::spawn(proxy::serve_peers(listener, ctx.clone()));
    }
    tokio::spawn(proxy::serve(data, ctx));
    tokio::spawn(admin::serve(admin_listener, admin.clone()));
    tokio::spawn(sessions.clone().janitor());
    if let (Some(key), false) = (restart_key, reopen.is_empty()) {
        rt.tasks.spawn(sessions.reopen_all(reopener, key, reopen));
    }
    if let Some(server_tls) = server_tls {
        let (every, stop) = (config.tls.reload_interval, rt.shutdown.clone());
        tokio::spawn(server_tls.watch(every, rt.metrics.clone(), stop));
    }
    admin.set_ready(true);
    let data_tls = config.tls.enabled();
    tracing::info!(
        %data_addr,
        %admin_addr,
        peer_addr,
        instance = cluster.id(),
        upstream = %config.server.upstream,
        tls = data_tls,
        "tether is serving"
    );
    Ok((data_addr, admin_addr, admin, failures))
}

/// Writes and fsyncs everything queued, stops the writer thread and joins
/// it, so RocksDB is idle before the process exits. `clean`: every task
/// stopped within the grace period (see `Journal::close`).
async fn close_journal(
    journal: &Journal,
    writer: std::thread::JoinHandle<()>,
    clean: bool,
) -> Result<(), JournalError> {
    // A failed journal refuses the close: its writer has already stopped,
    // and is joined all the same.
    let closed = journal.close(clean).await;
    // It cannot panic (AbortOnPanic); a join error means it was not joined.
    if tokio::task::spawn_blocking(move || writer.join()).await.is_err() {
        tracing::error!("the journal writer thread could not be joined");
    }
    closed
}

/// Opens the journal on the blocking pool (RocksDB's open reads the disk).
async fn open_journal(config: &Arc<Config>, rt: &Runtime) -> Result<Opened, StartError> {
    let jconf = config.journal.clone();
    let want_secret = config.token.secret.is_empty();
    let metrics = rt.metrics.clone();
    tokio::task::spawn_blocking(move || Journal::open(&jconf, want_secret, metrics))
        .await
        .map_err(|e| StartError::Internal(format!("opening the journal panicked: {e}")))?
        .map_err(StartError::from)
}

/// Connections the kernel holds for `accept` on each listener. When every
/// client of a restarted replica reconnects at once, a full queue drops
/// their SYNs, and each dropped client waits a 1 s retransmit: the 128 of
/// `TcpListener::bind` (std's and mio's) overflowed at 1,000 connections
/// arriving together in the benchmarks. The kernel lowers it to
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr, key: &'static str) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind { addr, key, source };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    // As `TcpListener::bind`: a restart may rebind while old connections
    // are in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

impl Running {
    /// Serves until `stop` completes, then drains. If the journal fails for
    /// good first, it drains at once (clients are closed and resume after
    /// the restart) and returns the failure, so the process exits non-zero.
    pub async fn serve_until(self, stop: impl Future<Output = ()>) -> Result<(), JournalError> {
        let journal = self.journal.clone();
        tokio::select! {
            () = stop => tracing::info!("shutdown requested; draining"),
            reason = journal.failed() => tracing::error!(%reason, "journal failed; draining, then exiting"),
        }
        self.drain().await
    }

    /// Drains: not ready, stop accepting, tell attached clients (`draining`,
    /// then close 1012), close backend connections, sync the journal. Every
    /// session stays resumable (`restarted`) after the next start.
    pub async fn drain(self) -> Result<(), JournalError> {
        self.admin.set_ready(false);
        self.journal.give_up_when_disk_full();
        self.shutdown.cancel();
        self.tasks.close();
        let clean = tokio::time::timeout(self.grace, self.tasks.wait()).await.is_ok();
        if !clean {
            tracing::warn!(grace = ?self.grace, "drain grace period expired with connections still open");
        }
        self.backend_failures.flush();
        close_journal(&self.journal, self.writer, clean).await?;
        tracing::info!("drained; journal synced and closed");
        Ok(())
    }
}
