//! The token in `Sec-WebSocket-Protocol`, for browsers: their `WebSocket`
//! can set no header but this one, and a URL lands in access logs. The
//! client offers the marker [`MARKER`] and `tether.session.<token>` next to
//! any subprotocols of its own (Kubernetes' API server takes bearer tokens
//! from browsers the same way). tether removes both entries before the
//! request goes on to the backend, and the 101 selects a protocol the
//! client offered: the backend's choice, or else the marker — never the
//! token entry (docs/PROTOCOL.md §3).
//!
//! Base64url characters (`A–Z a–z 0–9 - _`) and `.` are all HTTP token
//! characters (RFC 9110 §5.6.2), which is what a subprotocol must be.

use http::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_PROTOCOL};

/// The marker a client offers along with its token entry; the 101 selects
/// it when nothing else is selected.
pub(crate) const MARKER: &str = "tether.v1";
/// The prefix of the entry that carries the token.
pub(crate) const TOKEN_PREFIX: &str = "tether.session.";

/// tether's entries among the offered subprotocols.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Offered {
    /// The client offered [`MARKER`].
    pub(crate) marker: bool,
    /// The token of a `tether.session.<token>` entry.
    pub(crate) token: Option<String>,
}

impl std::fmt::Debug for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Offered(marker={}, token={})", self.marker, if self.token.is_some() { "<redacted>" } else { "none" })
    }
}

/// Why tether's subprotocol entries are unusable (400
/// `malformed_credentials`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BadSubprotocol {
    /// `Sec-WebSocket-Protocol` is not ASCII.
    #[error("Sec-WebSocket-Protocol is not ASCII")]
    Unreadable,
    /// Two `tether.session.` entries, or an empty one.
    #[error("Sec-WebSocket-Protocol has more than one tether.session. entry, or an empty one")]
    Token,
    /// A token entry without the marker: the 101 would have nothing of
    /// tether's to select, and a browser fails a 101 that selects nothing.
    #[error("a tether.session. entry in Sec-WebSocket-Protocol needs tether.v1 offered with it")]
    NoMarker,
}

/// Every entry of the request's `Sec-WebSocket-Protocol` lines, in order.
fn entries(headers: &HeaderMap) -> Result<Vec<&str>, BadSubprotocol> {
    let mut out = Vec::new();
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let value = value.to_str().map_err(|_| BadSubprotocol::Unreadable)?;
        out.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    Ok(out)
}

/// Reads tether's entries, leaving the headers as they are (a resume
/// forwarded to its owner keeps them: the owner reads them again).
pub(crate) fn read(headers: &HeaderMap) -> Result<Offered, BadSubprotocol> {
    let mut offered = Offered::default();
    for entry in entries(headers)? {
        if entry == MARKER {
            offered.marker = true;
        } else if let Some(token) = entry.strip_prefix(TOKEN_PREFIX) {
            if token.is_empty() || offered.token.is_some() {
                return Err(BadSubprotocol::Token);
            }
            offered.token = Some(token.to_owned());
        }
    }
    if offered.token.is_some() && !offered.marker {
        return Err(BadSubprotocol::NoMarker);
    }
    Ok(offered)
}

/// Removes tether's entries, keeping the client's own in their order, so
/// the backend never sees the token.
pub(crate) fn strip(headers: &mut HeaderMap) {
    let Ok(all) = entries(headers) else { return };
    let is_tethers = |e: &&str| *e == MARKER || e.starts_with(TOKEN_PREFIX);
    if !all.iter().any(is_tethers) {
        return;
    }
    let kept = all.into_iter().filter(|e| !is_tethers(e)).collect::<Vec<_>>().join(", ");
    headers.remove(SEC_WEBSOCKET_PROTOCOL);
    if let Ok(v) = HeaderValue::from_str(&kept) {
        if !kept.is_empty() {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(lines: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for l in lines {
            m.append(SEC_WEBSOCKET_PROTOCOL, l.parse().unwrap());
        }
        m
    }

    #[test]
    fn reads_and_strips_only_tethers_entries() {
        let mut m = h(&["chat.v2, tether.v1", "tether.session.AbC-_9, tether.other"]);
        let o = read(&m).unwrap();
        assert_eq!((o.marker, o.token.as_deref()), (true, Some("AbC-_9")));
        assert!(!format!("{o:?}").contains("AbC"));
        strip(&mut m);
        assert_eq!(m.get_all(SEC_WEBSOCKET_PROTOCOL).iter().collect::<Vec<_>>(), ["chat.v2, tether.other"]);
        let mut m = h(&["tether.v1,tether.session.x"]);
        strip(&mut m);
        assert!(m.get(SEC_WEBSOCKET_PROTOCOL).is_none());
        let mut m = h(&["chat"]);
        assert_eq!(read(&m).unwrap(), Offered::default());
        strip(&mut m);
        assert_eq!(m.get(SEC_WEBSOCKET_PROTOCOL).unwrap(), "chat");
        assert_eq!(read(&h(&["tether.v1"])).unwrap(), Offered { marker: true, token: None });
    }

    #[test]
    fn refuses_repeats_empties_and_a_token_without_the_marker() {
        assert_eq!(read(&h(&["tether.v1, tether.session.a, tether.session.a"])), Err(BadSubprotocol::Token));
        assert_eq!(read(&h(&["tether.v1, tether.session."])), Err(BadSubprotocol::Token));
        assert_eq!(read(&h(&["tether.session.a"])), Err(BadSubprotocol::NoMarker));
    }
}
