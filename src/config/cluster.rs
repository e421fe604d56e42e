//! `[cluster]`: several replicas, and the checks each mode needs
//! (docs/SCALING.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// How replicas find the owner of a session (docs/SCALING.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// One instance: every token is this instance's (no forwarding).
    #[default]
    Off,
    /// A StatefulSet: peers are `<sts>-0 .. <sts>-(replicas-1)`, dialed at
    /// `peer_address`.
    Statefulset,
    /// A fixed `peers` table of names and addresses.
    Static,
    /// Pods without stable names: the owner's address is sealed inside the
    /// token; membership comes from `members_dns`.
    Sealed,
}

/// `[cluster]`: forwarding resumes to the replica that owns the session.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `off`, `statefulset`, `static` or `sealed`.
    pub mode: ClusterMode,
    /// Covered by every token and peer signature, so one cluster refuses
    /// another's tokens even if they share a secret.
    pub name: String,
    /// This replica's name (`statefulset`: the pod name; `static`: a key of
    /// `peers`).
    pub instance: String,
    /// The peer port: forwarded resumes are accepted only here.
    pub peer_listen: SocketAddr,
    /// `statefulset`: a peer's address, `{instance}` replaced by its name.
    pub peer_address: String,
    /// `statefulset`: the replica count; higher ordinals are gone.
    pub replicas: u32,
    /// `static`: every instance's peer address, by name.
    pub peers: BTreeMap<String, String>,
    /// `sealed`: this replica's own peer address (`ip:port`), sealed into
    /// its tokens.
    pub advertise: String,
    /// `sealed`: the DNS name whose addresses are the live replicas; empty:
    /// no membership check.
    pub members_dns: String,
    /// Connecting to the owner plus its response head.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Oldest (or most future-dated) peer signature accepted.
    #[serde(with = "humantime_serde")]
    pub peer_auth_max_age: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: ClusterMode::Off,
            name: "tether".into(),
            instance: String::new(),
            peer_listen: "0.0.0.0:8081".parse().expect("static address"),
            peer_address: String::new(),
            replicas: 0,
            peers: BTreeMap::new(),
            advertise: String::new(),
            members_dns: String::new(),
            forward_timeout: Duration::from_secs(2),
            peer_auth_max_age: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// `[cluster]`: each mode has what it needs, so a replica never starts
    /// with a peer set it cannot resolve.
    pub(super) fn check_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let bad = |m: String| Err(ConfigError::keyed(m));
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
            ClusterMode::Sealed => match c.advertise.parse::<SocketAddr>() {
                Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => Ok(()),
                _ => bad(format!(
                    "{mode} needs cluster.advertise = this pod's ip:port for peers (e.g. $(POD_IP):8081), not {:?}",
                    c.advertise
                )),
            },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_modes_are_checked() {
        let secret = ("TETHER_TOKEN_SECRET".to_owned(), "s".repeat(32));
        let load = |pairs: &[(&str, &str)], with_secret: bool| {
            let mut env: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            if with_secret {
                env.push(secret.clone());
            }
            Config::load(None, env).map_err(|e| e.to_string())
        };
        let sts = [
            ("TETHER_CLUSTER_MODE", "statefulset"),
            ("TETHER_CLUSTER_INSTANCE", "tether-2"),
            ("TETHER_CLUSTER_REPLICAS", "3"),
            ("TETHER_CLUSTER_PEER_ADDRESS", "{instance}.tether-headless.ns.svc.cluster.local:8081"),
        ];
        let c = load(&sts, true).unwrap();
        assert_eq!((c.cluster.mode, c.cluster.replicas), (ClusterMode::Statefulset, 3));
        assert!(load(&sts, false).unwrap_err().contains("needs token.secret"));
        let mut bad = sts;
        bad[1].1 = "tether-3";
        assert!(load(&bad, true).unwrap_err().contains("beyond cluster.replicas"));
        bad[1].1 = "tether";
        assert!(load(&bad, true).unwrap_err().contains("pod name"));
        let mut bad = sts;
        bad[3].1 = "tether-headless:8081";
        assert!(load(&bad, true).unwrap_err().contains("{instance}"));

        let peers = r#"{ t0 = "10.0.0.1:8081", t1 = "10.0.0.2:8081" }"#;
        let st =
            [("TETHER_CLUSTER_MODE", "static"), ("TETHER_CLUSTER_INSTANCE", "t1"), ("TETHER_CLUSTER_PEERS", peers)];
        let c = load(&st, true).unwrap();
        assert_eq!(c.cluster.peers["t0"], "10.0.0.1:8081");
        let mut bad = st;
        bad[1].1 = "t9";
        assert!(load(&bad, true).unwrap_err().contains("one of cluster.peers"));
        bad = st;
        bad[2].1 = r#"{ t1 = "nohost" }"#;
        assert!(load(&bad, true).unwrap_err().contains("host:port"));

        let sealed = [("TETHER_CLUSTER_MODE", "sealed"), ("TETHER_CLUSTER_ADVERTISE", "10.1.2.3:8081")];
        assert!(load(&sealed, true).is_ok());
        let mut bad = sealed;
        bad[1].1 = "0.0.0.0:8081";
        assert!(load(&bad, true).unwrap_err().contains("advertise"));
        assert!(load(&[("TETHER_CLUSTER_NAME", "")], false).unwrap_err().contains("cluster.name"));
        assert!(load(&[("TETHER_CLUSTER_MODE", "mesh")], true).is_err());
    }
}
