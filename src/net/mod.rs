//! Socket- and HTTP-level helpers both listeners and both sides of a session
//! use: the accept loop, header token lists, and the lazy read buffer.

mod lazy_read;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::AsHeaderName;
use http::HeaderMap;
use prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};

pub(crate) use lazy_read::LazyRead;

/// How long the accept loop waits after a failed accept (EMFILE and
/// friends) instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `stop` completes, handing each
/// to `handle`. A failed accept counts in `errors`; the loop then pauses, so
/// descriptor exhaustion costs neither a spinning core nor a log flood, and
/// accepting resumes by itself once descriptors are free again.
pub(crate) async fn accept_until(
    listener: TcpListener,
    stop: impl Future<Output = ()>,
    errors: IntCounter,
    mut handle: impl FnMut(TcpStream, SocketAddr),
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => handle(tcp, peer),
                Err(e) => {
                    errors.inc();
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// True if one of `name`'s values lists `token` (comma-separated,
/// case-insensitive), as `Connection: keep-alive, Upgrade` lists `upgrade`.
pub(crate) fn has_token(headers: &HeaderMap, name: impl AsHeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderValue, CONNECTION};

    #[test]
    fn token_lists() {
        let mut h = http::HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.append(CONNECTION, HeaderValue::from_static("x-hop"));
        assert!(super::has_token(&h, CONNECTION, "upgrade"));
        assert!(super::has_token(&h, CONNECTION, "X-Hop"));
        assert!(!super::has_token(&h, CONNECTION, "up"));
    }
}
