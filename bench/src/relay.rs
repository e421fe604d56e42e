//! The reference relay (`tether-bench relay`): a naive tokio-tungstenite
//! frame relay with no journal and no stamping, run as its own process.
//!
//! It is what tether is measured against: the cost of forwarding WebSocket
//! frames through one more process, without any of tether's guarantees.
//! Each client connection gets one backend connection (same path); each
//! direction is `stream.forward(sink)`, which writes every message into the
//! socket's write buffer and flushes when the reading side has nothing more
//! ready, the natural batching of any relay. Its sockets use the same
//! buffer sizes as tether's defaults (`limits.*`): a 16 KiB write buffer,
//! 16 KiB reads per system call (tether reads 16 KiB per call through its
//! `LazyRead`), TCP_NODELAY on both sides, and a 2-worker tokio runtime.

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Socket limits matching tether's defaults (`config/tether.toml`).
fn ws_config() -> WebSocketConfig {
    let l = tether::config::LimitsConfig::default();
    WebSocketConfig::default()
        .max_message_size(Some(l.max_message_bytes))
        .max_frame_size(Some(l.max_frame_bytes))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(l.write_buffer_bytes)
        .max_write_buffer_size(l.max_write_buffer_bytes)
}

/// Runs the relay until killed: binds `listen`, prints `listening <addr>`,
/// and relays every connection to `upstream` (a `ws://host:port` URL).
pub fn run(listen: &str, upstream: &str) -> anyhow::Result<()> {
    let upstream = upstream.trim_end_matches('/').to_owned();
    crate::backend::serve_forever(listen, move |tcp| relay(tcp, upstream.clone()))
}

// tungstenite's handshake callback signature fixes the error type.
#[allow(clippy::result_large_err)]
async fn relay(tcp: TcpStream, upstream: String) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(resp)
    };
    let Ok(client) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(ws_config())).await else {
        return;
    };
    let url = format!("{upstream}{path}");
    let Ok((backend, _)) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await else {
        return;
    };
    let (client_tx, client_rx) = client.split();
    let (backend_tx, backend_rx) = backend.split();
    let down = backend_rx.forward(client_tx);
    let up = client_rx.forward(backend_tx);
    // Either side closing ends the relay, as a naive relay does.
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}
