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

/// An HTTP/1.1 `GET <target>` request head with `headers`, as tether writes
/// it to a backend (the upgrade) and to an owning replica (a forward).
pub(crate) fn request_head(target: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + headers.len() * 48);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderValue, CONNECTION, HOST};
    use http::HeaderMap;

    #[test]
    fn token_lists() {
        let mut h = http::HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.append(CONNECTION, HeaderValue::from_static("x-hop"));
        assert!(super::has_token(&h, CONNECTION, "upgrade"));
        assert!(super::has_token(&h, CONNECTION, "X-Hop"));
        assert!(!super::has_token(&h, CONNECTION, "up"));
    }

    #[test]
    fn writes_the_request_head() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("backend:9000"));
        let head = super::request_head("/feed?x=1", &h);
        assert_eq!(head, b"GET /feed?x=1 HTTP/1.1\r\nhost: backend:9000\r\n\r\n");
    }
}
