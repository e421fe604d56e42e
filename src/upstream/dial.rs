//! The client side of the WebSocket handshake with the backend (RFC 6455
//! §4.1), done by tether rather than by tungstenite.
//!
//! tungstenite's client handshake reads the 101 into a fixed 4 KiB buffer
//! that then stays with the connection as its read buffer, whatever
//! `limits.read_buffer_bytes` says: 4 KiB of every idle session. Here the
//! response head is read into a scratch buffer that is dropped afterwards,
//! and the socket is handed to tungstenite with the configured buffer and
//! whatever bytes followed the head.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::Connected;
use crate::net::{has_token, request_head, LazyRead};
use crate::tls::MaybeTls;

/// The backend's answer to the upgrade, without a body.
type Head = Response<()>;

/// Most headers tether accepts in the backend's 101 response.
const MAX_RESPONSE_HEADERS: usize = 64;

/// Why the backend handshake failed; each maps to a 502 for the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The backend answered, but not with 101 Switching Protocols.
    #[error("backend answered {0} instead of 101")]
    Refused(u16),
    /// The backend's response broke RFC 6455 §4.1.
    #[error("backend handshake failed: {0}")]
    Protocol(String),
    /// The connection failed or closed during the handshake.
    #[error("backend handshake failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends the upgrade request for `path` with `headers` (which must not carry
/// the handshake headers; this adds them) and waits for the 101.
pub(super) async fn handshake(
    mut tcp: MaybeTls,
    path: &str,
    mut headers: HeaderMap,
    config: WebSocketConfig,
    max_head_bytes: usize,
) -> Result<Connected, DialError> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_str(&key).expect("base64 is a valid header value"));
    tcp.write_all(&request_head(path, &headers)).await?;

    let (response, rest) = read_response(&mut tcp, max_head_bytes).await?;
    verify(&response, &key, &headers)?;
    // tungstenite keeps this Vec's allocation as the socket's read buffer,
    // and bytes::BytesMut remembers its capacity as the size to allocate
    // each time it needs a new one. An empty Vec::new() there made every
    // later buffer just big enough for one frame header: one read system
    // call per frame, and a third less throughput.
    let mut part = Vec::with_capacity(config.read_buffer_size.max(rest.len()));
    part.extend_from_slice(&rest);
    let socket = WebSocketStream::from_partially_read(LazyRead::new(tcp), part, Role::Client, Some(config)).await;
    Ok(Connected { socket, headers: response.into_parts().0.headers })
}

/// Reads until the end of the response head; returns the head and the bytes
/// after it (frames the backend sent right after its 101).
async fn read_response(tcp: &mut MaybeTls, max_head_bytes: usize) -> Result<(Head, Vec<u8>), DialError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(DialError::Protocol("the backend closed the connection before answering".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let response = to_response(&parsed)?;
                return Ok((response, buf.split_off(len)));
            }
            Ok(httparse::Status::Partial) if buf.len() < max_head_bytes => continue,
            Ok(httparse::Status::Partial) => {
                return Err(DialError::Protocol(format!("response head is over {max_head_bytes} bytes")));
            }
            Err(e) => return Err(DialError::Protocol(format!("malformed response: {e}"))),
        }
    }
}

fn to_response(parsed: &httparse::Response) -> Result<Head, DialError> {
    let code = parsed.code.unwrap_or_default();
    let mut response = Response::builder().status(code).version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        response = response.header(h.name, h.value);
    }
    response.body(()).map_err(|e| DialError::Protocol(format!("malformed response: {e}")))
}

/// The checks of RFC 6455 §4.1 that apply to a client offering no extensions.
fn verify(response: &Head, key: &str, request: &HeaderMap) -> Result<(), DialError> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(DialError::Refused(response.status().as_u16()));
    }
    let headers = response.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(DialError::Protocol("no `Upgrade: websocket` in the 101".into()));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(DialError::Protocol("no `Connection: upgrade` in the 101".into()));
    }
    let accept = derive_accept_key(key.as_bytes());
    if headers.get(header::SEC_WEBSOCKET_ACCEPT).map(|v| v.as_bytes()) != Some(accept.as_bytes()) {
        return Err(DialError::Protocol("wrong Sec-WebSocket-Accept".into()));
    }
    if headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        return Err(DialError::Protocol("the backend chose an extension that was not offered".into()));
    }
    if let Some(chosen) = headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let chosen = chosen.to_str().unwrap_or("").trim();
        let offered = request
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .any(|p| p.trim() == chosen);
        if !offered {
            return Err(DialError::Protocol(format!(
                "the backend chose subprotocol {chosen:?}, which was not offered"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(lines: &[(&str, &str)]) -> Head {
        let mut r = Response::builder().status(101);
        for (k, v) in lines {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn verifies_the_101() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let mut offered = HeaderMap::new();
        offered.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat, v2.chat"));
        let good = [("upgrade", "WebSocket"), ("connection", "keep-alive, Upgrade"), ("sec-websocket-accept", accept)];
        assert!(verify(&response(&good), key, &HeaderMap::new()).is_ok());

        let mut with_proto = good.to_vec();
        with_proto.push(("sec-websocket-protocol", "v2.chat"));
        assert!(verify(&response(&with_proto), key, &offered).is_ok());
        assert!(verify(&response(&with_proto), key, &HeaderMap::new()).is_err());

        let wrong = [("upgrade", "websocket"), ("connection", "upgrade"), ("sec-websocket-accept", "x")];
        assert!(matches!(verify(&response(&wrong), key, &offered), Err(DialError::Protocol(_))));
        let no_upgrade = [("connection", "upgrade"), ("sec-websocket-accept", accept)];
        assert!(verify(&response(&no_upgrade), key, &offered).is_err());
        let refused = Response::builder().status(403).body(()).unwrap();
        assert!(matches!(verify(&refused, key, &offered), Err(DialError::Refused(403))));
    }
}
