//! `server.upstream`, parsed and checked.

/// `server.upstream`, parsed: where the backend is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `host:port`, with port 80 if the URL names none.
    pub(crate) authority: String,
    /// The path prefix every client path is appended to, without a trailing `/`.
    pub(crate) prefix: String,
    /// `wss://`: TLS to the backend, verified for [`UpstreamUrl::host`].
    pub(crate) tls: bool,
    /// The host name (or IP address, without brackets) the backend's
    /// certificate must be valid for; also the TLS SNI.
    pub(crate) host: String,
}

/// A malformed `server.upstream`.
#[derive(Debug, thiserror::Error)]
#[error("server.upstream {url:?}: {problem}")]
pub struct BadUpstream {
    url: String,
    problem: String,
}

impl UpstreamUrl {
    /// Parses `ws[s]://host[:port][/prefix]`. No credentials (`user@`): they
    /// would travel in the `Host` header and in error messages; no query; a
    /// prefix without `.` or `..` segments.
    pub fn parse(url: &str) -> Result<UpstreamUrl, BadUpstream> {
        let bad = |problem: &str| BadUpstream { url: redact(url), problem: problem.to_owned() };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad("only ws:// and wss:// are supported")),
        };
        let auth = uri.authority().ok_or_else(|| bad("no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("credentials (user@host) are not supported in the upstream URL"));
        }
        // `http` reads a port it cannot parse as no port at all (port 80).
        let port = match auth.as_str().rsplit_once(':').filter(|(_, p)| !p.contains(']')) {
            None if tls => 443,
            None => 80,
            Some((_, p)) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(bad(&format!("port {p:?} is not in 1..=65535"))),
            },
        };
        if uri.query().is_some() {
            return Err(bad("a query is not supported; clients' queries are forwarded"));
        }
        if uri.path().split('/').any(|seg| seg == "." || seg == "..") {
            return Err(bad("the path must not contain . or .. segments"));
        }
        let authority = format!("{}:{port}", auth.host());
        let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(UpstreamUrl { authority, prefix: uri.path().trim_end_matches('/').to_owned(), tls, host })
    }
}

/// `url` without anything between `//` and `@`, for error messages.
fn redact(url: &str) -> String {
    match (url.find("//"), url.find('@')) {
        (Some(start), Some(at)) if at > start => format!("{}//<redacted>@{}", &url[..start], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
