//! The data path: accept → authenticate resume → attach session → pump
//! frames (journal, then forward) → detach.
//!
//! - [`serve`]: the accept loop, one hyper HTTP/1 connection task per client;
//! - [`handshake`]: one upgrade request, up to the 101;
//! - [`pump`]: one attached client connection;
//! - [`backend`]: opening the backend connection;
//! - [`refusal`]: every error a client can cause before the upgrade.

pub mod backend;
pub mod dial;
pub mod handshake;
pub mod pump;
pub mod refusal;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::metrics::Metrics;
use crate::config::Config;
use crate::protocol::stamp::Stamper;
use crate::protocol::token::TokenKey;
use crate::session::{BackendResponse, Sessions};

/// Everything a client connection needs, shared by all of them.
pub struct Context {
    /// Sessions of this instance.
    pub sessions: Arc<Sessions>,
    /// Token signing key.
    pub tokens: TokenKey,
    /// True if the secret was generated and lives in the journal.
    pub secret_generated: bool,
    /// The journal's epoch.
    pub epoch: u64,
    /// Stamps frames.
    pub stamper: Stamper,
    /// The backend.
    pub upstream: backend::Upstream,
    /// Limits for both sockets of every session.
    pub ws_config: WebSocketConfig,
    /// Backend connect + handshake timeout.
    pub backend_timeout: Duration,
    /// Upgrade request head limit.
    pub max_header_bytes: usize,
    /// Allowed `Origin`s (empty: any).
    pub allowed_origins: Vec<String>,
    /// `Retry-After` seconds.
    pub retry_after: u32,
    /// Keepalive ping period.
    pub ping_interval: Duration,
    /// Silence after which a client is detached.
    pub ping_timeout: Duration,
    /// Largest batch written to a client per step.
    pub replay_batch_bytes: usize,
    /// How long sessions stay resumable after they end.
    pub retention: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Tracks client connection tasks so a drain can wait for them.
    pub tasks: TaskTracker,
}

impl Context {
    /// Builds the context from the configuration and the opened parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        sessions: Arc<Sessions>,
        tokens: TokenKey,
        secret_generated: bool,
        epoch: u64,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Context, String> {
        let l = &config.limits;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(l.max_message_bytes))
            .max_frame_size(Some(l.max_frame_bytes))
            .read_buffer_size(l.read_buffer_bytes)
            .write_buffer_size(l.write_buffer_bytes)
            .max_write_buffer_size(l.max_write_buffer_bytes);
        Ok(Context {
            sessions,
            tokens,
            secret_generated,
            epoch,
            stamper: Stamper::new(config.stamp.mode, &config.stamp.json_field),
            upstream: backend::Upstream::parse(&config.server.upstream)?,
            ws_config,
            backend_timeout: config.server.backend_connect_timeout,
            max_header_bytes: l.max_header_bytes,
            allowed_origins: config.server.allowed_origins.clone(),
            retry_after: config.server.retry_after_secs,
            ping_interval: config.session.ping_interval,
            ping_timeout: config.session.ping_timeout,
            replay_batch_bytes: l.replay_batch_bytes,
            retention: config.journal.retention,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// The subprotocol to confirm to the client: the backend's choice when
    /// this request opened a backend connection, otherwise the client's first
    /// offer (a resumed session keeps the backend connection that chose it).
    pub fn subprotocol(&self, client: &HeaderMap, backend: Option<&BackendResponse>) -> Option<HeaderValue> {
        match backend {
            Some(resp) => resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).cloned(),
            None => client
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|p| HeaderValue::from_str(p.trim()).ok()),
        }
    }
}

/// Accepts clients on `listener` until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, handshake_timeout: Duration) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let max_buf = (ctx.max_header_bytes * 4).max(8192);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(handshake::handle(req, peer, ctx).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .max_buf_size(max_buf)
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "client HTTP connection error");
            }
        });
    }
}
