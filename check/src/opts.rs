//! The checker's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Checks a running tether deployment from outside.
///
/// Opens sessions against URL through a cutting proxy of its own on
/// 127.0.0.1, breaks their connections the way real networks do (resets,
/// blackouts that lose bytes in flight, close 1001, idle connections,
/// takeovers), resumes them by header and by query parameter, and checks
/// tether's promise on every frame: seqs contiguous, no duplicate, no
/// reorder, every hole reported by an exact gap report, replays byte-identical,
/// outcomes and refusals as docs/PROTOCOL.md says, and (with --send) every
/// sent message acked or reported in doubt. It connects to URL's host and
/// nowhere else.
///
/// Exit status: 0 every check passed, 1 a check failed, 2 the check could
/// not run (bad arguments, URL unreachable, not tether). docs/CHECK.md.
#[derive(Debug, Clone, Parser)]
#[command(name = "tether check", bin_name = "tether check", version, about, long_about)]
pub struct Opts {
    /// The tether URL: ws://host[:port]/path or wss://... (the path and query
    /// reach your backend as any client's would).
    pub url: String,
    /// Sessions checked side by side.
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// How long faults are injected; the run then verifies each session and
    /// ends (see docs/CHECK.md for the bound).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// An extra request header, `Name: value` (repeatable), e.g.
    /// 'Authorization: Bearer ...'.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// wss://: accept any server certificate. Only for test deployments.
    #[arg(long)]
    pub insecure: bool,
    /// wss://: trust the CA certificates in this PEM file instead of the
    /// system's.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Send messages on every session with the upstream guarantee
    /// (`Tether-Up: seq`), and check each is acked or reported in doubt.
    /// The backend receives them (text `check <session> <n>`).
    #[arg(long)]
    pub send: bool,
    /// With --send: time between two messages of a session.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub send_interval: Duration,
    /// The faults to inject, in turn.
    #[arg(long, value_delimiter = ',', default_values_t = Fault::ALL)]
    pub faults: Vec<Fault>,
    /// Mean time between two faults of a session (each wait is drawn
    /// between half and one and a half times it).
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub fault_interval: Duration,
    /// How long a blackout loses bytes before the connection is reset.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub blackout: Duration,
    /// How long the idle fault keeps a connection silent before resuming
    /// elsewhere. Past the server's session.ping_interval +
    /// session.ping_timeout, tether has detached it by then.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// How long a resume may keep being refused with a retryable status
    /// (502, 503) or failing to connect before it counts as failed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub resume_timeout: Duration,
    /// Stamp mode `json`: the seq field (tether's stamp.json_field).
    #[arg(long, default_value = "seq")]
    pub seq_field: String,
    /// Seed of the fault schedule (default: from the clock); the report
    /// prints the one used.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the report as JSON on stdout (schema in docs/CHECK.md).
    #[arg(long)]
    pub json: bool,
}

/// A fault the checker injects into a session's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The proxy resets both sides at once.
    Reset,
    /// The proxy loses every byte in flight for --blackout, then resets.
    Blackout,
    /// The checker closes with 1001 (going away), as a browser leaving a page.
    #[value(name = "close-1001")]
    #[serde(rename = "close-1001")]
    Close1001,
    /// The connection goes silent (no bytes either way) for --idle; the
    /// checker resumes on a new one.
    Idle,
    /// The checker resumes on a new connection while the old one is
    /// attached: the old one must be closed with 4001.
    Takeover,
}

impl Fault {
    /// Every fault, in the default order.
    pub const ALL: [Fault; 5] = [Fault::Reset, Fault::Blackout, Fault::Close1001, Fault::Idle, Fault::Takeover];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::Blackout => "blackout",
            Fault::Close1001 => "close-1001",
            Fault::Idle => "idle",
            Fault::Takeover => "takeover",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or_else(|| format!("{s:?} is not `Name: value`"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
        return Err(format!("{name:?} is not a header name"));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("tether-")
        || lower.starts_with("sec-websocket-")
        || ["host", "upgrade", "connection"].contains(&lower.as_str())
    {
        return Err(format!("{name} is set by the checker itself"));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err("a header value cannot contain a line break".into());
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse() {
        assert_eq!(parse_header("Authorization: Bearer x:y").unwrap(), ("Authorization".into(), "Bearer x:y".into()));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("Tether-Session: x").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }

    #[test]
    fn defaults() {
        let o = Opts::parse_from(["tether check", "ws://127.0.0.1:8080/demo"]);
        assert_eq!((o.sessions, o.duration, o.faults.len()), (4, Duration::from_secs(20), 5));
        let o = Opts::parse_from(["tether check", "--faults", "reset,close-1001", "ws://x/"]);
        assert_eq!(o.faults, vec![Fault::Reset, Fault::Close1001]);
    }
}
