//! Failed backend connections at `warn`, rate-limited: a mistyped
//! `server.upstream` is the classic first-deploy bug, and every client's
//! 502 must not become a log line of its own when the backend is down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ConnectError;

/// The failures of one upstream since its last line.
pub(crate) struct FailureLog {
    upstream: String,
    /// At most one line per this period (`log.warn_interval`); the failures
    /// in between are counted in the next line.
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the last line was written.
    last: Option<Instant>,
    /// Failures since then that wrote none.
    suppressed: u64,
}

impl FailureLog {
    /// The log for the upstream `url` (as configured).
    pub(crate) fn new(url: &str, interval: Duration) -> FailureLog {
        FailureLog { upstream: url.to_owned(), interval, state: Mutex::default() }
    }

    /// Logs `e` at `warn`, unless a line was written less than `interval`
    /// ago: then it is only counted.
    pub(crate) fn failed(&self, e: &ConnectError) {
        let suppressed = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if s.last.is_some_and(|t| now.duration_since(t) < self.interval) {
                s.suppressed += 1;
                return;
            }
            s.last = Some(now);
            std::mem::take(&mut s.suppressed)
        };
        let upstream = &self.upstream;
        match suppressed {
            0 => tracing::warn!(upstream, error = %e, "cannot connect to the backend"),
            n => tracing::warn!(
                upstream,
                error = %e,
                suppressed = n,
                "cannot connect to the backend ({n} more suppressed)"
            ),
        }
    }

    /// Writes the count of failures not yet logged, if any (at a drain,
    /// so that no failure goes uncounted).
    pub(crate) fn flush(&self) {
        let n = std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).suppressed);
        if n > 0 {
            let upstream = &self.upstream;
            tracing::warn!(upstream, suppressed = n, "cannot connect to the backend ({n} more suppressed)");
        }
    }
}
