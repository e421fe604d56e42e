//! Several replicas behind one load balancer (docs/SCALING.md): which
//! instance owns a session, where that owner is, and handing a resume to it.
//!
//! - [`Cluster`]: this instance's identity and the configured peer set
//!   (`statefulset`, `static` or `sealed`); [`Cluster::locate`] turns a
//!   token's owner field into [`Located`]. Peers come from configuration
//!   (or, `sealed`, from a sealed field only tether can have written, checked
//!   against the headless Service's DNS), never from a token's plain text.
//! - [`peer_auth`]: the `Tether-Peer` header that proves a forwarded request
//!   comes from a replica;
//! - [`seal`]: the owner address sealed inside `sealed`-mode tokens;
//! - [`forward`]: the hop itself, then a byte splice.
//!
//! Kubernetes is the membership protocol: StatefulSet ordinals and
//! `replicas`, or the headless Service's addresses. Nothing here elects,
//! gossips or agrees.

pub(crate) mod forward;
pub(crate) mod peer_auth;
mod seal;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hkdf::Hkdf;
use sha2::Sha256;

use crate::config::{ordinal, ClusterConfig, ClusterMode};
use crate::metrics::Metrics;
use crate::protocol::SessionId;
pub(crate) use forward::{Forwarder, OwnerAnswer};
pub(crate) use peer_auth::{PeerAuth, PeerRefused, PEER_HEADER};
use seal::Seal;

/// Where the owner of a token's session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Located {
    /// This instance (or a v1 token, or `cluster.mode = "off"`).
    Local,
    /// A configured peer, to forward to.
    Peer(Peer),
    /// The owner is not in the configuration any more (scaled down, or its
    /// pod IP left the headless Service): its journal is gone for us.
    Gone(&'static str),
    /// Whether the owner exists cannot be told right now (DNS failed).
    Unknown(String),
}

/// A replica to forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Its instance id (name, or `ip:port` in `sealed` mode), for logs and
    /// the peer signature.
    pub(crate) id: String,
    /// `host:port` of its peer port, from configuration.
    pub(crate) addr: String,
}

/// How the peer set is known, per `cluster.mode`.
enum Peers {
    Off,
    StatefulSet { base: String, replicas: u32, template: String },
    Static(BTreeMap<String, String>),
    Sealed { members_dns: String },
}

/// This instance's place in the cluster.
pub(crate) struct Cluster {
    peers: Peers,
    /// This instance's id: `cluster.instance`, or `cluster.advertise`.
    me: String,
    /// `sealed`: this instance's address, sealed into its tokens.
    advertise: Option<SocketAddr>,
    seal: Seal,
    /// Signs and checks `Tether-Peer`.
    pub(crate) auth: PeerAuth,
    /// Opens the hop to an owner.
    pub(crate) forwarder: Forwarder,
}

/// A 32-byte key for `purpose`, derived from `token.secret` and the cluster
/// name, so the token MAC, the seal and peer signatures never share a key.
fn derive(secret: &[u8], cluster: &str, purpose: &str) -> [u8; 32] {
    let salt = format!("tether-cluster:{cluster}");
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt.as_bytes()), secret)
        .expand(purpose.as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

impl Cluster {
    /// The cluster of a validated `config`, keyed from `secret`.
    pub(crate) fn new(config: &ClusterConfig, secret: &[u8], max_head_bytes: usize, metrics: Arc<Metrics>) -> Cluster {
        let name = &config.name;
        let advertise = match config.mode {
            ClusterMode::Sealed => config.advertise.parse().ok(),
            _ => None,
        };
        let me = advertise.map_or_else(|| config.instance.clone(), |a: SocketAddr| a.to_string());
        let peers = match config.mode {
            ClusterMode::Off => Peers::Off,
            ClusterMode::Statefulset => Peers::StatefulSet {
                base: config.instance.rsplit_once('-').map_or("", |(b, _)| b).to_owned(),
                replicas: config.replicas,
                template: config.peer_address.clone(),
            },
            ClusterMode::Static => Peers::Static(config.peers.clone()),
            ClusterMode::Sealed => Peers::Sealed { members_dns: config.members_dns.clone() },
        };
        Cluster {
            peers,
            seal: Seal::new(&derive(secret, name, "owner-seal-v1"), &derive(secret, name, "owner-nonce-v1")),
            auth: PeerAuth::new(derive(secret, name, "peer-auth-v1"), name, config.peer_auth_max_age),
            forwarder: Forwarder::new(me.clone(), config.forward_timeout, max_head_bytes, metrics),
            me,
            advertise,
        }
    }

    /// True unless `cluster.mode = "off"`.
    pub(crate) fn enabled(&self) -> bool {
        !matches!(self.peers, Peers::Off)
    }

    /// This instance's id (its name, or its `ip:port` when `sealed`).
    pub(crate) fn id(&self) -> &str {
        &self.me
    }

    /// The owner field of the tokens this instance mints for `session`;
    /// `None` (a v1 token) when clustering is off.
    pub(crate) fn owner_field(&self, session: &SessionId) -> Option<Vec<u8>> {
        match (&self.peers, self.advertise) {
            (Peers::Off, _) => None,
            (Peers::Sealed { .. }, Some(addr)) => Some(self.seal.seal(session, addr)),
            _ => Some(self.me.as_bytes().to_vec()),
        }
    }

    /// Where the owner named by a verified token's `owner` field is. A v1
    /// token (`None`) is this instance's.
    pub(crate) async fn locate(&self, owner: Option<&[u8]>, session: &SessionId) -> Located {
        let Some(owner) = owner else { return Located::Local };
        match &self.peers {
            Peers::Off => Located::Local,
            Peers::StatefulSet { base, replicas, template } => {
                let Ok(name) = std::str::from_utf8(owner) else { return Located::Gone("not an instance name") };
                if name == self.me {
                    return Located::Local;
                }
                let same_set = name.rsplit_once('-').is_some_and(|(b, _)| b == base);
                match ordinal(name) {
                    Some(n) if same_set && n < *replicas => {
                        Located::Peer(Peer { id: name.to_owned(), addr: template.replace("{instance}", name) })
                    }
                    _ => Located::Gone("the owner's ordinal is beyond cluster.replicas"),
                }
            }
            Peers::Static(peers) => {
                let Ok(name) = std::str::from_utf8(owner) else { return Located::Gone("not an instance name") };
                if name == self.me {
                    return Located::Local;
                }
                match peers.get(name) {
                    Some(addr) => Located::Peer(Peer { id: name.to_owned(), addr: addr.clone() }),
                    None => Located::Gone("the owner is not in cluster.peers"),
                }
            }
            Peers::Sealed { members_dns } => {
                let Some(addr) = self.seal.open(session, owner) else {
                    return Located::Gone("the owner field is not sealed for this cluster");
                };
                if Some(addr) == self.advertise {
                    return Located::Local;
                }
                if !members_dns.is_empty() {
                    match members(members_dns).await {
                        Ok(ips) if !ips.contains(&addr.ip()) => {
                            return Located::Gone("the owner's address is not in cluster.members_dns")
                        }
                        Ok(_) => {}
                        Err(e) => return Located::Unknown(format!("cannot resolve cluster.members_dns: {e}")),
                    }
                }
                Located::Peer(Peer { id: addr.to_string(), addr: addr.to_string() })
            }
        }
    }
}

/// The addresses of `name` now: with a headless Service that publishes
/// not-ready addresses, every pod that exists, ready or not.
async fn members(name: &str) -> std::io::Result<HashSet<IpAddr>> {
    Ok(tokio::net::lookup_host((name, 0)).await?.map(|a| a.ip()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(f: impl FnOnce(&mut ClusterConfig)) -> Cluster {
        let mut c = ClusterConfig::default();
        f(&mut c);
        Cluster::new(&c, b"0123456789abcdef0123456789abcdef", 16384, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn statefulset_peers_come_from_the_ordinal_and_the_template() {
        let c = cluster(|c| {
            c.mode = ClusterMode::Statefulset;
            c.instance = "tether-1".into();
            c.replicas = 3;
            c.peer_address = "{instance}.h.ns.svc:8081".into();
        });
        let s = SessionId::generate();
        assert_eq!(c.owner_field(&s).as_deref(), Some(&b"tether-1"[..]));
        assert_eq!(c.locate(Some(b"tether-1"), &s).await, Located::Local);
        assert_eq!(c.locate(None, &s).await, Located::Local);
        let peer = Peer { id: "tether-2".into(), addr: "tether-2.h.ns.svc:8081".into() };
        assert_eq!(c.locate(Some(b"tether-2"), &s).await, Located::Peer(peer));
        assert!(matches!(c.locate(Some(b"tether-3"), &s).await, Located::Gone(_)), "scaled down");
        assert!(matches!(c.locate(Some(b"other-0"), &s).await, Located::Gone(_)));
    }

    #[tokio::test]
    async fn static_peers_come_from_the_table() {
        let c = cluster(|c| {
            c.mode = ClusterMode::Static;
            c.instance = "a".into();
            c.peers = [("a".into(), "h1:1".into()), ("b".into(), "h2:2".into())].into();
        });
        let s = SessionId::generate();
        assert_eq!(c.locate(Some(b"b"), &s).await, Located::Peer(Peer { id: "b".into(), addr: "h2:2".into() }));
        assert!(matches!(c.locate(Some(b"c"), &s).await, Located::Gone(_)));
    }

    #[tokio::test]
    async fn sealed_owners_are_checked_against_membership() {
        let at = |ip: &'static str| {
            cluster(move |c| {
                c.mode = ClusterMode::Sealed;
                c.advertise = format!("{ip}:8081");
                c.members_dns = "localhost".into();
            })
        };
        let (a, b, gone) = (at("127.0.0.1"), at("127.0.0.1"), at("10.255.255.1"));
        let s = SessionId::generate();
        let field = gone.owner_field(&s).unwrap();
        assert!(!String::from_utf8_lossy(&field).contains("10.255"), "the address is not readable");
        assert!(matches!(a.locate(Some(&field), &s).await, Located::Gone(_)), "not a member of localhost");
        let mine = b.owner_field(&s).unwrap();
        assert_eq!(a.locate(Some(&mine), &s).await, Located::Local, "same advertise address");
        // Another session's sealed field does not open for this session.
        assert!(matches!(a.locate(Some(&mine), &SessionId::generate()).await, Located::Gone(_)));
    }
}
