//! Wiring: open the journal, restore sessions, bind the listeners, run until
//! shutdown, then drain.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, metrics::Metrics, Admin};
use crate::config::Config;
use crate::journal::{Journal, JournalError};
use crate::protocol::token::TokenKey;
use crate::proxy::{self, Context};
use crate::session::{Sessions, Shared};

/// Why tether could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal could not be opened.
    #[error("cannot open the journal: {0}")]
    Journal(#[from] JournalError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
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
    tasks: TaskTracker,
    grace: std::time::Duration,
    writer: std::thread::JoinHandle<()>,
}

/// Opens the journal, restores its sessions and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let jconf = config.journal.clone();
    let want_secret = config.token.secret.is_empty();
    let m = metrics.clone();
    let opened = tokio::task::spawn_blocking(move || Journal::open(&jconf, want_secret, m))
        .await
        .map_err(|e| StartError::Config(format!("journal open panicked: {e}")))??;
    let journal = opened.journal;
    let secret = opened.stored_secret.clone().unwrap_or_else(|| config.token.secret.clone().into_bytes());
    let tokens = TokenKey::new(secret, &config.token.identity_headers).map_err(StartError::Config)?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let j = &config.journal;
    let shared = Arc::new(Shared {
        journal: journal.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        linger: config.session.linger,
        ring_bytes: config.limits.ring_bytes,
        max_sessions: config.limits.max_sessions,
        live: Default::default(),
        retention: j.retention,
        max_session_frames: j.max_session_frames,
        max_session_bytes: j.max_session_bytes,
        max_frame_age: j.max_frame_age,
        disk_budget_bytes: j.disk_budget_bytes,
    });
    let recovered = opened.recovered.len();
    let (sessions, rewrite) = Sessions::restore(shared, opened.recovered);
    for (id, meta) in rewrite {
        journal.put_meta(id, meta).await?;
    }
    tracing::info!(sessions = recovered, epoch = journal.epoch(), "journal open");

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
    };
    let data = bind(config.server.listen).await?;
    let admin_listener = bind(config.server.admin_listen).await?;
    let data_addr = data.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen, source })?;
    let admin_addr =
        admin_listener.local_addr().map_err(|source| StartError::Bind { addr: config.server.admin_listen, source })?;

    let ctx = Context::new(
        &config,
        sessions.clone(),
        tokens,
        want_secret,
        journal.epoch(),
        metrics.clone(),
        shutdown.clone(),
        tasks.clone(),
    )
    .map_err(StartError::Config)?;
    let admin = Arc::new(Admin {
        metrics,
        sessions: sessions.clone(),
        journal: journal.clone(),
        ready: AtomicBool::new(false),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(proxy::serve(data, Arc::new(ctx), config.server.handshake_timeout));
    tokio::spawn(admin::serve(admin_listener, admin.clone()));
    tokio::spawn(sessions.janitor());
    admin::set_ready(&admin, true);
    tracing::info!(%data_addr, %admin_addr, upstream = %config.server.upstream, "tether is serving");
    Ok(Running {
        data_addr,
        admin_addr,
        shutdown,
        journal,
        admin,
        tasks,
        grace: config.server.shutdown_grace,
        writer: opened.writer,
    })
}

impl Running {
    /// Drains: not ready, stop accepting, tell attached clients (`draining`,
    /// then close 1012), close backend connections, sync the journal. Every
    /// session stays resumable (`restarted`) after the next start.
    pub async fn drain(self) -> Result<(), JournalError> {
        admin::set_ready(&self.admin, false);
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "drain grace period expired with connections still open");
        }
        self.journal.close().await?;
        let _ = tokio::task::spawn_blocking(move || self.writer.join()).await;
        tracing::info!("drained; journal synced and closed");
        Ok(())
    }
}
