//! `Config::validate`: the checks a configuration must pass after it
//! parsed, so an operator gets one clear line instead of a panic later.

use std::time::Duration;

use super::{ClusterMode, Config, ConfigError, UpstreamUrl};

impl Config {
    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let l = &self.limits;
        UpstreamUrl::parse(&self.server.upstream).map_err(|e| ConfigError::Invalid(e.to_string()))?;
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
        if self.journal.max_session_frames == 0 {
            return bad("journal.max_session_frames must be positive");
        }
        if self.stamp.json_field.is_empty() {
            return bad("stamp.json_field must not be empty");
        }
        self.check_cluster()
    }

    /// `[cluster]`: each mode has what it needs, so a replica never starts
    /// with a peer set it cannot resolve.
    fn check_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if c.name.is_empty() || c.name.len() > 64 {
            return bad(format!("cluster.name must be 1 to 64 characters, not {:?}", c.name));
        }
        if c.mode == ClusterMode::Off {
            return Ok(());
        }
        let mode = format!("cluster.mode = {:?}", c.mode).to_lowercase();
        if self.token.secret.is_empty() {
            return bad(format!(
                "{mode} needs token.secret (TETHER_TOKEN_SECRET), shared by every replica: a generated secret \
                 lives in one replica's journal and no other replica could verify its tokens"
            ));
        }
        if c.peer_listen == self.server.listen && c.peer_listen.port() != 0 {
            return bad(format!("cluster.peer_listen must differ from server.listen ({})", c.peer_listen));
        }
        match c.mode {
            ClusterMode::Off => Ok(()),
            ClusterMode::Statefulset => {
                let Some(ordinal) = ordinal(&c.instance) else {
                    return bad(format!(
                        "{mode} needs cluster.instance = the pod name (<statefulset>-<ordinal>), not {:?}",
                        c.instance
                    ));
                };
                if c.replicas == 0 || c.replicas > 10_000 {
                    return bad(format!("{mode} needs cluster.replicas between 1 and 10000, not {}", c.replicas));
                }
                if ordinal >= c.replicas {
                    return bad(format!(
                        "cluster.instance {:?} has an ordinal beyond cluster.replicas = {}",
                        c.instance, c.replicas
                    ));
                }
                if !c.peer_address.contains("{instance}")
                    || host_port(&c.peer_address.replace("{instance}", "x")).is_none()
                {
                    return bad(format!(
                        "{mode} needs cluster.peer_address = \"{{instance}}.<headless service>:<port>\", not {:?}",
                        c.peer_address
                    ));
                }
                Ok(())
            }
            ClusterMode::Static => {
                if !c.peers.contains_key(&c.instance) {
                    return bad(format!(
                        "{mode} needs cluster.instance to be one of cluster.peers, not {:?}",
                        c.instance
                    ));
                }
                for (name, addr) in &c.peers {
                    if !valid_name(name) {
                        return bad(format!(
                            "cluster.peers: {name:?} is not a valid instance name (1 to 63 of a-z A-Z 0-9 . _ -)"
                        ));
                    }
                    if host_port(addr).is_none() {
                        return bad(format!("cluster.peers.{name} must be host:port, not {addr:?}"));
                    }
                }
                Ok(())
            }
            ClusterMode::Sealed => match c.advertise.parse::<std::net::SocketAddr>() {
                Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => Ok(()),
                _ => bad(format!(
                    "{mode} needs cluster.advertise = this pod's ip:port for peers (e.g. $(POD_IP):8081), not {:?}",
                    c.advertise
                )),
            },
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
        ];
        for (key, d) in all {
            if d.is_zero() || d > MAX_DURATION {
                return Err(ConfigError::Invalid(format!(
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
        let all: [(&str, usize, usize, usize); 10] = [
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
        ];
        for (key, v, min, max) in all {
            if v < min || v > max {
                return Err(ConfigError::Invalid(format!("{key} must be between {min} and {max}, not {v}")));
            }
        }
        if l.ring_bytes > 64 << 20 {
            return Err(ConfigError::Invalid(format!(
                "limits.ring_bytes must be at most {}, not {}",
                64 << 20,
                l.ring_bytes
            )));
        }
        Ok(())
    }
}

/// The ordinal of a StatefulSet pod name (`tether-2` → 2), if the name is
/// valid.
pub(crate) fn ordinal(instance: &str) -> Option<u32> {
    let (base, n) = instance.rsplit_once('-')?;
    let valid = valid_name(instance) && !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| n.parse().ok()).flatten()
}

/// Instance names travel in tokens and headers: short, and plain.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `host:port` with a non-empty host and a port in 1..=65535.
fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains('/')).then_some((host, port))
}

/// The longest duration any key accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
