//! `Config::validate`: the checks a configuration must pass after it
//! parsed, so an operator gets one clear line instead of a panic later.

use std::time::Duration;

use super::{Config, ConfigError, SlowConsumer, UpstreamUrl};

/// Frames per retention segment (`session::retention`): trims remove
/// whole segments, so backpressure keeps two of them in hand.
const SEGMENT: u64 = 64;

impl Config {
    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::keyed(m));
        let l = &self.limits;
        UpstreamUrl::parse(&self.server.upstream)
            .map_err(|e| ConfigError::invalid("server.upstream", e.to_string()))?;
        self.check_durations()?;
        self.check_sizes()?;
        self.tls.check()?;
        if l.max_frame_bytes > l.max_message_bytes {
            return bad("limits.max_message_bytes must be >= limits.max_frame_bytes");
        }
        if l.max_write_buffer_bytes <= l.write_buffer_bytes + l.max_message_bytes {
            return bad("limits.max_write_buffer_bytes must exceed write_buffer_bytes + max_message_bytes");
        }
        if !self.token.secret.is_empty() && self.token.secret.len() < 32 {
            return bad("token.secret must be at least 32 characters (or empty to generate one)");
        }
        // `tether run` builds these from the same strings: `tether config`
        // must refuse what it would refuse.
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::keyed(format!("log.level {:?} is not a log filter: {e}", self.log.level)));
        }
        if let Some(h) =
            self.token.identity_headers.iter().find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(ConfigError::keyed(format!("token.identity_headers: {h:?} is not a valid header name")));
        }
        if self.journal.max_session_frames == 0 {
            return bad("journal.max_session_frames must be positive");
        }
        if self.stamp.json_field.is_empty() {
            return bad("stamp.json_field must not be empty");
        }
        self.check_slow_consumer()?;
        let se = &self.session;
        if se.restart_dials_per_second == 0 || se.restart_dial_concurrency == 0 {
            return bad("session.restart_dials_per_second and restart_dial_concurrency must be positive");
        }
        self.check_cluster()
    }

    /// A disconnect bound retention cannot overtake, and room for a batch
    /// under backpressure.
    fn check_slow_consumer(&self) -> Result<(), ConfigError> {
        let (se, j) = (&self.session, &self.journal);
        match se.slow_consumer {
            SlowConsumer::Disconnect if se.slow_consumer_lag == 0 || se.slow_consumer_lag >= j.max_session_frames => {
                Err(ConfigError::keyed(format!(
                    "session.slow_consumer_lag must be between 1 and journal.max_session_frames - 1 ({}) with \
                     slow_consumer = \"disconnect\", not {}: retention would trim a slow client before it is cut",
                    j.max_session_frames - 1,
                    se.slow_consumer_lag
                )))
            }
            SlowConsumer::Backpressure if j.max_session_frames < 4 * SEGMENT => Err(ConfigError::keyed(format!(
                "journal.max_session_frames must be at least {} with slow_consumer = \"backpressure\", not {}",
                4 * SEGMENT,
                j.max_session_frames
            ))),
            _ => Ok(()),
        }
    }

    /// Every duration is positive (a zero timeout would fire at once, a zero
    /// period spin) and at most [`MAX_DURATION`] (longer ones overflow the
    /// clocks they are added to).
    fn check_durations(&self) -> Result<(), ConfigError> {
        let (s, se, j) = (&self.server, &self.session, &self.journal);
        let all = [
            ("server.backend_connect_timeout", s.backend_connect_timeout),
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.shutdown_grace", s.shutdown_grace),
            ("tls.reload_interval", self.tls.reload_interval),
            ("session.linger", se.linger),
            ("session.ping_interval", se.ping_interval),
            ("session.ping_timeout", se.ping_timeout),
            ("session.upstream_stall_timeout", se.upstream_stall_timeout),
            ("journal.sync_interval", j.sync_interval),
            ("journal.retention", j.retention),
            ("journal.max_frame_age", j.max_frame_age),
            ("cluster.forward_timeout", self.cluster.forward_timeout),
            ("cluster.peer_auth_max_age", self.cluster.peer_auth_max_age),
            ("log.warn_interval", self.log.warn_interval),
        ];
        for (key, d) in all {
            if d.is_zero() || d > MAX_DURATION {
                return Err(ConfigError::keyed(format!(
                    "{key} must be more than 0 and at most 365 days, not {}",
                    humantime::format_duration(d)
                )));
            }
        }
        Ok(())
    }

    /// Sizes that buffers or queues are allocated from stay within bounds a
    /// process can allocate (an absurd value must be an error, not an abort).
    fn check_sizes(&self) -> Result<(), ConfigError> {
        let (l, j) = (&self.limits, &self.journal);
        let all: [(&str, usize, usize, usize); 12] = [
            ("limits.max_message_bytes", l.max_message_bytes, 1, 1 << 30),
            ("limits.max_frame_bytes", l.max_frame_bytes, 1, 1 << 30),
            ("limits.max_header_bytes", l.max_header_bytes, 8192, 1 << 20),
            ("limits.write_buffer_bytes", l.write_buffer_bytes, 0, 64 << 20),
            ("limits.max_write_buffer_bytes", l.max_write_buffer_bytes, 1, 4 << 30),
            ("limits.read_buffer_bytes", l.read_buffer_bytes, 64, 16 << 20),
            ("limits.max_sessions", l.max_sessions, 1, 1_000_000),
            ("limits.max_retained_sessions", l.max_retained_sessions, 1, 10_000_000),
            ("limits.replay_batch_bytes", l.replay_batch_bytes, 1, 64 << 20),
            ("journal.max_batch", j.max_batch, 1, 65_536),
            ("journal.memtable_bytes", j.memtable_bytes, 1 << 20, 1 << 30),
            ("journal.page_cache_bytes", j.page_cache_bytes, 0, 1 << 40),
        ];
        for (key, v, min, max) in all {
            if v < min || v > max {
                return Err(ConfigError::keyed(format!("{key} must be between {min} and {max}, not {v}")));
            }
        }
        if j.commit_delay > MAX_COMMIT_DELAY {
            return Err(ConfigError::keyed(format!(
                "journal.commit_delay must be at most 10ms, not {}",
                humantime::format_duration(j.commit_delay)
            )));
        }
        if l.ring_bytes > 64 << 20 {
            return Err(ConfigError::keyed(format!(
                "limits.ring_bytes must be at most {}, not {}",
                64 << 20,
                l.ring_bytes
            )));
        }
        Ok(())
    }
}

/// The longest `journal.commit_delay`: every frame may wait this long.
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(10);

/// The longest duration any key accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
