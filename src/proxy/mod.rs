//! The data path: accept → authenticate resume → attach session → pump
//! frames (journal, then forward) → detach.
//!
//! - [`serve`]: the accept loop, one hyper HTTP/1 connection task per client;
//! - [`handshake`]: one upgrade request, up to the 101, in named phases;
//! - [`pump`]: one attached client connection, writing through a [`sink`],
//!   its read half a [`reader`] task; [`upward`] is the connection's side of
//!   the upstream guarantee (stamps checked, acks sent);
//! - [`refusal`]: every error a client can cause before the upgrade.

mod handshake;
mod pump;
mod reader;
mod refusal;
mod sink;
mod tap;
mod upward;

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::net;
use crate::protocol::stamp::Stamper;
use crate::protocol::token::TokenKey;
use crate::runtime::Runtime;
use crate::session::Sessions;
use crate::upstream::Upstream;

/// Everything a client connection needs, shared by all of them.
pub(crate) struct Context {
    config: Arc<Config>,
    rt: Runtime,
    sessions: Arc<Sessions>,
    upstream: Upstream,
    tokens: TokenKey,
    /// True if the secret was generated and lives in the journal.
    secret_generated: bool,
    /// The journal's epoch; tokens carry it.
    epoch: u64,
    stamper: Stamper,
    /// Limits for every client socket (backend sockets get the same).
    ws_config: WebSocketConfig,
    /// TLS on the data port, if configured.
    tls: Option<TlsAcceptor>,
    /// Who owns which session, and the hop to the owner.
    cluster: Arc<Cluster>,
}

/// The listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// `server.listen`: clients.
    Data,
    /// `cluster.peer_listen`: resumes forwarded by other replicas only.
    Peer,
}

/// What [`Context::new`] needs besides the configuration.
pub(crate) struct Parts {
    /// The shared runtime handle.
    pub(crate) rt: Runtime,
    /// The sessions.
    pub(crate) sessions: Arc<Sessions>,
    /// Opens backend connections.
    pub(crate) upstream: Upstream,
    /// Signs and checks tokens.
    pub(crate) tokens: TokenKey,
    /// True if the secret was generated and lives in the journal.
    pub(crate) secret_generated: bool,
    /// The journal's epoch.
    pub(crate) epoch: u64,
    /// TLS on the data port, if configured.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The cluster this instance is part of (mode `off`: only itself).
    pub(crate) cluster: Arc<Cluster>,
}

impl Context {
    /// The context for `config` and the opened parts.
    pub(crate) fn new(config: Arc<Config>, parts: Parts) -> Context {
        let Parts { rt, sessions, upstream, tokens, secret_generated, epoch, tls, cluster } = parts;
        Context {
            stamper: Stamper::new(config.stamp.mode, &config.stamp.json_field),
            ws_config: upstream.ws_config,
            config,
            rt,
            sessions,
            upstream,
            tokens,
            secret_generated,
            epoch,
            tls,
            cluster,
        }
    }

    /// `Retry-After` seconds for a 503 (`server.retry_after_secs`).
    pub(crate) fn retry_after(&self) -> u32 {
        self.config.server.retry_after_secs
    }
}

/// The socket limits of `limits.*`, for client and backend sockets alike.
pub(crate) fn ws_config(config: &Config) -> WebSocketConfig {
    let l = &config.limits;
    WebSocketConfig::default()
        .max_message_size(Some(l.max_message_bytes))
        .max_frame_size(Some(l.max_frame_bytes))
        .read_buffer_size(l.read_buffer_bytes)
        .write_buffer_size(l.write_buffer_bytes)
        .max_write_buffer_size(l.max_write_buffer_bytes)
}

/// Accepts clients on `listener` until shutdown. With TLS, the TLS
/// handshake must finish within `server.handshake_timeout` too.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let shutdown = ctx.rt.shutdown.clone();
    let errors = ctx.rt.metrics.accept_errors_data.clone();
    net::accept_until(listener, shutdown.cancelled_owned(), errors, |tcp, peer| {
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match ctx.tls.clone() {
                None => serve_http(TokioIo::new(tcp), peer, Port::Data, ctx).await,
                Some(acceptor) => {
                    let timeout = ctx.config.server.handshake_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_http(TokioIo::new(tls), peer, Port::Data, ctx).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "client TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "client TLS handshake timed out"),
                    }
                }
            }
        });
    })
    .await;
}

/// Accepts forwarded resumes from other replicas on `listener` (the peer
/// port, plain TCP) until shutdown: the owner's side of a hop.
pub(crate) async fn serve_peers(listener: TcpListener, ctx: Arc<Context>) {
    let shutdown = ctx.rt.shutdown.clone();
    let errors = ctx.rt.metrics.accept_errors_peer.clone();
    net::accept_until(listener, shutdown.cancelled_owned(), errors, |tcp, peer| {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_http(TokioIo::new(tcp), peer, Port::Peer, ctx.clone()));
    })
    .await;
}

/// One client's HTTP/1 connection, plain or over TLS.
async fn serve_http<I>(io: TokioIo<I>, peer: std::net::SocketAddr, port: Port, ctx: Arc<Context>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_buf = (ctx.config.limits.max_header_bytes * 4).max(8192);
    let header_timeout = ctx.config.server.handshake_timeout;
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(handshake::handle(req, peer, port, ctx).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_buf)
        .serve_connection(io, svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "client HTTP connection error");
    }
}
