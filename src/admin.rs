//! The admin port: `/metrics` (Prometheus text), `/livez` (the process
//! answers) and `/readyz` (a latch: journal open, listeners bound, not
//! draining, journal writes succeeding). It only reads: the metrics
//! belong to [`crate::metrics`], the health to the journal and the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::net;
use crate::session::Sessions;

/// What the admin endpoints read.
pub(crate) struct Admin {
    /// Metrics to render.
    pub(crate) metrics: Arc<Metrics>,
    /// Sessions, for the gauges computed at scrape time.
    pub(crate) sessions: Arc<Sessions>,
    /// The journal, for its health.
    pub(crate) journal: Journal,
    /// Set once listeners are bound; cleared when draining starts.
    pub(crate) ready: AtomicBool,
    /// Cancelled on shutdown.
    pub(crate) shutdown: CancellationToken,
}

impl Admin {
    /// Sets or clears the readiness latch.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// Most admin connections served at once; further ones are closed at once.
/// Probes and scrapes need a handful, so idle or slow connections can never
/// hold more descriptors than this.
const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may live, including writing `/metrics` to a slow
/// reader. Keep-alive is off: one request per connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the admin endpoints for the life of the process: during a drain
/// `/readyz` must keep answering 503 and `/livez` 200.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let errors = admin.metrics.accept_errors_admin.clone();
    net::accept_until(listener, std::future::pending(), errors, |tcp, peer| {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            admin.metrics.admin_rejected.inc();
            return;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&req, &admin)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    })
    .await;
}

fn route(req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/livez" | "/readyz" if admin.journal.failure().is_some() => {
            let reason = admin.journal.failure().unwrap_or_default();
            text(StatusCode::SERVICE_UNAVAILABLE, &format!("journal failed: {reason}; tether exits to be restarted\n"))
        }
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let ready = admin.ready.load(Ordering::Relaxed) && !admin.shutdown.is_cancelled();
            match (ready, admin.journal.is_healthy()) {
                (true, true) => text(StatusCode::OK, "ready\n"),
                (false, _) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or draining\n"),
                (true, false) if admin.journal.is_disk_full() => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the journal's disk is full; waiting for space\n")
                }
                (true, false) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: journal writes are failing\n"),
            }
        }
        "/metrics" => {
            admin.sessions.refresh_gauges();
            let mut resp = text(StatusCode::OK, &admin.metrics.render());
            resp.headers_mut().insert(header::CONTENT_TYPE, "text/plain; version=0.0.4".parse().expect("static"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /livez or /readyz\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid response")
}
