//! Resume credentials on the upgrade request: `Tether-Session` /
//! `Tether-Offset` headers, or `tether_session` / `tether_offset` query
//! parameters; for browsers, the token also in `Sec-WebSocket-Protocol`
//! ([`subprotocol`]), which keeps it out of URLs. A header wins over the
//! query parameter (as it always did); a token in `Sec-WebSocket-Protocol`
//! and in a header or the query is refused, so a client never has to guess
//! which one counts.

use http::HeaderMap;

use super::subprotocol::{self, BadSubprotocol};

/// Header carrying the session token.
pub(crate) const SESSION_HEADER: &str = "tether-session";
/// Header carrying the last seq the client fully processed.
pub(crate) const OFFSET_HEADER: &str = "tether-offset";
/// Query parameter carrying the session token.
pub(crate) const SESSION_PARAM: &str = "tether_session";
/// Query parameter carrying the offset.
pub(crate) const OFFSET_PARAM: &str = "tether_offset";
/// Header opting a connection in to the upstream guarantee (`seq`).
pub(crate) const UP_HEADER: &str = "tether-up";
/// Query parameter opting a connection in to the upstream guarantee.
pub(crate) const UP_PARAM: &str = "tether_up";
/// The one value `Tether-Up` / `tether_up` takes.
pub(crate) const UP_SEQ: &str = "seq";

/// What a client presented to resume.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The token string, not yet decoded.
    pub(crate) token: String,
    /// Last seq the client fully processed (0: none).
    pub(crate) offset: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials(offset={}, token=<redacted>)", self.offset)
    }
}

/// A credential that is present but unusable (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BadCredentials {
    /// The offset is not a decimal u64.
    #[error("offset {0:?} is not a decimal number between 0 and 18446744073709551615")]
    Offset(String),
    /// An offset without a token.
    #[error("an offset was given without a session token")]
    OffsetWithoutToken,
    /// A token without an offset.
    #[error("a session token was given without an offset")]
    TokenWithoutOffset,
    /// The header or parameter is not valid text, or is repeated.
    #[error("{0} is not valid (not ASCII, empty or repeated)")]
    Unreadable(&'static str),
    /// tether's `Sec-WebSocket-Protocol` entries are unusable.
    #[error(transparent)]
    Subprotocol(#[from] BadSubprotocol),
    /// The token in `Sec-WebSocket-Protocol` and in a header or the query.
    #[error("the session token is given both in Sec-WebSocket-Protocol and as Tether-Session or tether_session; give it once")]
    TokenTwice,
}

/// `Tether-Up` / `tether_up` is present but not `seq` (400 `malformed_up`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}; the only value is \"seq\" (docs/PROTOCOL.md §12)")]
pub(crate) struct BadUp(String);

/// True if the connection opts in to the upstream guarantee (header wins).
pub(crate) fn parse_up(headers: &HeaderMap, query: Option<&str>) -> Result<bool, BadUp> {
    match lookup(headers, query, UP_HEADER, UP_PARAM) {
        Ok(None) => Ok(false),
        Ok(Some(v)) if v == UP_SEQ => Ok(true),
        Ok(Some(v)) => Err(BadUp(format!("Tether-Up {v:?} is not understood"))),
        Err(e) => Err(BadUp(e.to_string())),
    }
}

/// Reads the credentials; `Ok(None)` for a client that starts a new session.
pub(crate) fn parse(headers: &HeaderMap, query: Option<&str>) -> Result<Option<Credentials>, BadCredentials> {
    let token = match (lookup(headers, query, SESSION_HEADER, SESSION_PARAM)?, subprotocol::read(headers)?.token) {
        (Some(_), Some(_)) => return Err(BadCredentials::TokenTwice),
        (token, None) | (None, token) => token,
    };
    let offset = lookup(headers, query, OFFSET_HEADER, OFFSET_PARAM)?;
    match (token, offset) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(BadCredentials::OffsetWithoutToken),
        (Some(_), None) => Err(BadCredentials::TokenWithoutOffset),
        (Some(token), Some(offset)) => {
            let digits = offset.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadCredentials::Offset(offset));
            }
            let offset = digits.parse::<u64>().map_err(|_| BadCredentials::Offset(offset.clone()))?;
            Ok(Some(Credentials { token, offset }))
        }
    }
}

/// One credential: the header if present (trimmed), else the query
/// parameter (percent-decoded); repeated, empty or unreadable is an error.
fn lookup(
    headers: &HeaderMap,
    query: Option<&str>,
    header: &'static str,
    param: &'static str,
) -> Result<Option<String>, BadCredentials> {
    let mut values = headers.get_all(header).iter();
    if let Some(v) = values.next() {
        if values.next().is_some() {
            return Err(BadCredentials::Unreadable(header));
        }
        let v = v.to_str().map_err(|_| BadCredentials::Unreadable(header))?;
        if v.trim().is_empty() {
            return Err(BadCredentials::Unreadable(header));
        }
        return Ok(Some(v.trim().to_owned()));
    }
    let mut found = None;
    for (k, v) in query_pairs(query) {
        if k == param {
            if found.is_some() || v.is_empty() {
                return Err(BadCredentials::Unreadable(param));
            }
            found = Some(percent_decode(v).ok_or(BadCredentials::Unreadable(param))?);
        }
    }
    Ok(found)
}

/// The `name=value` pairs of a query, undecoded (`value` empty if absent).
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The query without tether's own parameters (`None` if nothing is left).
pub(crate) fn strip_params(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let k = p.split_once('=').map_or(*p, |(k, _)| k);
            k != SESSION_PARAM && k != OFFSET_PARAM && k != UP_PARAM
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Decodes `%XX` escapes and `+` (a space); `None` if an escape is not `%`
/// followed by exactly two hex digits, or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                // Two hex digits, checked byte by byte: `from_str_radix` alone
                // would also take a sign (`%+1`).
                let (hi, lo) = (hex_digit(*b.get(i + 1)?)?, hex_digit(*b.get(i + 2)?)?);
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of one hex digit (either case).
fn hex_digit(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    #[test]
    fn header_wins_over_query() {
        let c = parse(&h(&[("tether-session", "A"), ("tether-offset", "5")]), Some("tether_session=B&tether_offset=9"))
            .unwrap()
            .unwrap();
        assert_eq!((c.token.as_str(), c.offset), ("A", 5));
        let c = parse(&h(&[]), Some("x=1&tether_session=B%2D&tether_offset=9")).unwrap().unwrap();
        assert_eq!((c.token.as_str(), c.offset), ("B-", 9));
        assert_eq!(parse(&h(&[]), Some("x=1")), Ok(None));
    }

    #[test]
    fn token_in_the_subprotocol() {
        let p = ("sec-websocket-protocol", "chat, tether.v1, tether.session.T");
        let c = parse(&h(&[p]), Some("tether_offset=3")).unwrap().unwrap();
        assert_eq!((c.token.as_str(), c.offset), ("T", 3));
        let c = parse(&h(&[p, ("tether-offset", "4")]), None).unwrap().unwrap();
        assert_eq!((c.token.as_str(), c.offset), ("T", 4));
        let twice = parse(&h(&[p, ("tether-session", "T"), ("tether-offset", "4")]), None);
        assert_eq!(twice, Err(BadCredentials::TokenTwice));
        assert_eq!(parse(&h(&[p]), Some("tether_session=T&tether_offset=1")), Err(BadCredentials::TokenTwice));
        assert_eq!(parse(&h(&[p]), None), Err(BadCredentials::TokenWithoutOffset));
        let no_marker = parse(&h(&[("sec-websocket-protocol", "tether.session.T")]), Some("tether_offset=1"));
        assert_eq!(no_marker, Err(BadCredentials::Subprotocol(BadSubprotocol::NoMarker)));
        assert_eq!(parse(&h(&[("sec-websocket-protocol", "tether.v1")]), None), Ok(None));
    }

    #[test]
    fn bad_offsets() {
        for bad in ["-1", "abc", "18446744073709551616", "1.5", "+3"] {
            let r = parse(&h(&[("tether-session", "A"), ("tether-offset", bad)]), None);
            assert_eq!(r, Err(BadCredentials::Offset(bad.into())), "{bad}");
        }
        assert_eq!(parse(&h(&[("tether-offset", "1")]), None), Err(BadCredentials::OffsetWithoutToken));
        assert_eq!(parse(&h(&[("tether-session", "A")]), None), Err(BadCredentials::TokenWithoutOffset));
    }

    #[test]
    fn an_escape_is_percent_and_two_hex_digits() {
        assert_eq!(percent_decode("a%2Db%2dc+d").as_deref(), Some("a-b-c d"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("\u{e9}"));
        for bad in ["%+1", "%-1", "%+0", "% 1", "%1", "%", "x%", "%zz", "%1g", "%C3"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
        let r = parse(&h(&[]), Some("tether_session=A&tether_offset=%+1"));
        assert_eq!(r, Err(BadCredentials::Unreadable(OFFSET_PARAM)));
    }

    #[test]
    fn up_is_seq_or_absent() {
        assert_eq!(parse_up(&h(&[]), Some("a=1")), Ok(false));
        assert_eq!(parse_up(&h(&[("tether-up", " seq ")]), Some("tether_up=bogus")), Ok(true));
        assert_eq!(parse_up(&h(&[]), Some("tether_up=seq")), Ok(true));
        assert!(parse_up(&h(&[("tether-up", "acks")]), None).is_err());
        assert!(parse_up(&h(&[]), Some("tether_up=seq&tether_up=seq")).is_err());
        assert!(parse_up(&h(&[("tether-up", "seq"), ("tether-up", "seq")]), None).is_err());
    }

    #[test]
    fn strips_only_tether_params() {
        assert_eq!(strip_params(Some("a=1&tether_session=x&b&tether_offset=2")), Some("a=1&b".into()));
        assert_eq!(strip_params(Some("tether_offset=2")), None);
        assert_eq!(strip_params(Some("tether_up=seq&c=3")), Some("c=3".into()));
        assert_eq!(strip_params(None), None);
    }
}
