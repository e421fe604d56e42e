//! Configuring a client: the [`Builder`], its [`Backoff`] and [`TokenIn`],
//! and the upgrade request it makes for every connection.

use std::time::Duration;

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::{Error, StampMode, Upstream};

/// Exponential backoff with full jitter: attempt `n` (from 0) waits a uniform
/// random time below `min(max, initial × factor^n)`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The cap of the first attempt (default 500 ms).
    pub initial: Duration,
    /// The largest cap (default 30 s).
    pub max: Duration,
    /// Growth per attempt (default 2).
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30), factor: 2.0 }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` for a uniform `random` in [0, 1).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let cap = (self.initial.as_secs_f64() * self.factor.powi(attempt.min(64) as i32)).min(self.max.as_secs_f64());
        Duration::from_secs_f64((cap * random.clamp(0.0, 1.0)).max(0.0))
    }
}

/// Where a resume sends the session token (docs/PROTOCOL.md §2). Neither
/// puts it in the URL, so it stays out of access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIn {
    /// `Sec-WebSocket-Protocol: tether.v1, tether.session.<token>`, after
    /// any subprotocols of the application's (default): the form browsers
    /// use, so one proxy configuration serves every client. tether removes
    /// both entries before the backend sees the request.
    #[default]
    Protocol,
    /// The `Tether-Session` header.
    Header,
}

/// Configures and starts a [`Client`].
///
/// [`Client`]: crate::Client
#[derive(Debug, Clone)]
pub struct Builder {
    url: String,
    pub(crate) stamp_mode: StampMode,
    pub(crate) json_field: String,
    pub(crate) backoff: Backoff,
    pub(crate) max_failed_resumes: u32,
    pub(crate) send_queue: usize,
    pub(crate) buffer: usize,
    pub(crate) connect_timeout: Duration,
    headers: Vec<(String, String)>,
    pub(crate) resume: Option<(String, u64)>,
    pub(crate) upstream: Option<Upstream>,
    token_in: TokenIn,
}

impl Builder {
    /// The defaults, see [`crate::Client::builder`].
    pub(crate) fn new(url: impl Into<String>) -> Builder {
        Builder {
            url: url.into(),
            stamp_mode: StampMode::Prefix,
            json_field: "seq".into(),
            backoff: Backoff::default(),
            max_failed_resumes: 8,
            send_queue: 100,
            buffer: 256,
            connect_timeout: Duration::from_secs(10),
            headers: Vec::new(),
            resume: None,
            upstream: None,
            token_in: TokenIn::default(),
        }
    }

    /// tether's `stamp.mode` (default [`StampMode::Prefix`]).
    pub fn stamp_mode(mut self, mode: StampMode) -> Self {
        self.stamp_mode = mode;
        self
    }
    /// tether's `stamp.json_field` (default `seq`).
    pub fn json_field(mut self, field: impl Into<String>) -> Self {
        self.json_field = field.into();
        self
    }
    /// The reconnect backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Failed resume attempts in a row (connections that never got a
    /// welcome) before the session is given up with [`Event::Reset`]
    /// (default 8). A refusal that can never succeed (400, 401, 409) resets
    /// at once.
    ///
    /// [`Event::Reset`]: crate::Event::Reset
    pub fn max_failed_resumes(mut self, n: u32) -> Self {
        self.max_failed_resumes = n.max(1);
        self
    }
    /// How many messages [`Client::send`] queues while disconnected
    /// (default 100).
    ///
    /// [`Client::send`]: crate::Client::send
    pub fn send_queue(mut self, n: usize) -> Self {
        self.send_queue = n.max(1);
        self
    }
    /// How many events are read ahead of the application (default 256).
    /// When full, the client stops reading and TCP pushes back on tether.
    pub fn buffer(mut self, n: usize) -> Self {
        self.buffer = n.max(1);
        self
    }
    /// Time allowed for TCP connect plus the upgrade (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// A header for every upgrade request (e.g. `Authorization`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Where resumes send the token (default [`TokenIn::Protocol`]).
    pub fn token_in(mut self, token_in: TokenIn) -> Self {
        self.token_in = token_in;
        self
    }
    /// Resume a session saved earlier (from [`Client::token`] and
    /// [`Client::offset`]) instead of starting a new one.
    ///
    /// [`Client::token`]: crate::Client::token
    /// [`Client::offset`]: crate::Client::offset
    pub fn resume(mut self, token: impl Into<String>, offset: u64) -> Self {
        self.resume = Some((token.into(), offset));
        self
    }

    /// Opts in to the upstream guarantee (docs/PROTOCOL.md §12): the upgrade
    /// carries `Tether-Up: seq`, messages to the backend are stamped, kept
    /// until tether acks them and resent after a drop. Off by default. See
    /// [`Client::send_reliable`]; [`Client::send`] then has the guarantee
    /// too (without a receipt).
    ///
    /// [`Client::send_reliable`]: crate::Client::send_reliable
    /// [`Client::send`]: crate::Client::send
    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = Some(upstream);
        self
    }
}

/// The upgrade request for a connection; `resume`: the session's token and
/// offset.
pub(crate) fn request(
    b: &Builder,
    resume: Option<(&str, u64)>,
) -> Result<tungstenite::handshake::client::Request, Error> {
    let mut req = b.url.as_str().into_client_request().map_err(|e| Error::InvalidRequest(e.to_string()))?;
    let bad = |what: &str| Error::InvalidRequest(format!("header {what}"));
    for (name, value) in &b.headers {
        let name = tungstenite::http::HeaderName::try_from(name.as_str()).map_err(|_| bad(name))?;
        req.headers_mut().append(name, HeaderValue::from_str(value).map_err(|_| bad(value))?);
    }
    if let Some((token, offset)) = resume {
        let h = req.headers_mut();
        match b.token_in {
            TokenIn::Header => {
                h.insert("tether-session", HeaderValue::from_str(token).map_err(|_| bad("tether-session"))?);
            }
            TokenIn::Protocol => {
                // After the application's own, which the backend picks from.
                let own = h.get_all("sec-websocket-protocol").iter().filter_map(|v| v.to_str().ok());
                let offered = own.chain(["tether.v1"]).collect::<Vec<_>>().join(", ");
                let offered = format!("{offered}, tether.session.{token}");
                let value = HeaderValue::from_str(&offered).map_err(|_| bad("sec-websocket-protocol"))?;
                h.insert("sec-websocket-protocol", value);
            }
        }
        h.insert("tether-offset", HeaderValue::from(offset));
    }
    if b.upstream.is_some() {
        req.headers_mut().insert("tether-up", HeaderValue::from_static("seq"));
    }
    Ok(req)
}
