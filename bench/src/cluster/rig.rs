//! The rig every part runs on: the backend, the tether replicas in
//! cluster mode and HAProxy in front of them; what they use and hold.

use std::net::SocketAddr;

use super::haproxy::{free_ports, Haproxy};
use super::opts::{ClusterOpts, REPLICAS};
use crate::procs::{BackendProc, Launcher, Setup, TetherProc};
use crate::sys;

/// Three replicas, their backend and HAProxy.
pub(super) struct Rig {
    lb: Haproxy,
    pub(super) nodes: Vec<TetherProc>,
    _backend: BackendProc,
}

impl Rig {
    /// Starts the backend, `REPLICAS` tether processes in `static` cluster
    /// mode (instances t0, t1, t2; peer ports on loopback) and HAProxy.
    pub(super) fn start(l: &Launcher, o: &ClusterOpts, nofile: u64, tag: &str) -> anyhow::Result<Rig> {
        let backend = l.backend()?;
        let peer_ports = free_ports(REPLICAS);
        let peers =
            (0..REPLICAS).map(|i| format!("t{i} = \"127.0.0.1:{}\"", peer_ports[i])).collect::<Vec<_>>().join(", ");
        let mut nodes = Vec::new();
        for (i, port) in peer_ports.iter().enumerate() {
            let env = [
                ("TETHER_CLUSTER_MODE", "static".to_owned()),
                ("TETHER_CLUSTER_NAME", "tether-bench".to_owned()),
                ("TETHER_CLUSTER_INSTANCE", format!("t{i}")),
                ("TETHER_CLUSTER_PEER_LISTEN", format!("127.0.0.1:{port}")),
                ("TETHER_CLUSTER_PEERS", format!("{{ {peers} }}")),
            ];
            nodes.push(l.tether(Setup::JournalNone, &backend.url(), &env)?);
        }
        let servers: Vec<SocketAddr> = nodes.iter().map(|n| n.data).collect();
        let dir = l.data_root().join(format!("haproxy-{tag}"));
        let lb = Haproxy::start(&o.haproxy, &servers, dir, nofile)?;
        Ok(Rig { lb, nodes, _backend: backend })
    }

    pub(super) fn lb_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.lb.addr, path)
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.pid).collect()
    }

    /// Every tether process's CPU time, summed.
    pub(super) fn tether_cpu_ns(&self) -> u64 {
        self.pids().into_iter().map(|p| sys::usage(p).cpu_ns).sum()
    }

    /// (CPU time of the rig's processes and this one, CPU time of the whole machine).
    pub(super) fn busy(&self) -> (u64, u64) {
        let ours = self.tether_cpu_ns()
            + sys::usage(self._backend.proc.pid).cpu_ns
            + sys::usage(self.lb.proc.0.id()).cpu_ns
            + sys::usage(std::process::id()).cpu_ns;
        (ours, sys::machine_busy_ns())
    }

    /// Share of the CPUs other processes used since `before` (from [`Rig::busy`]), over `wall_ns`, in %.
    pub(super) fn foreign_pct(&self, before: (u64, u64), wall_ns: u64) -> f64 {
        let (ours, all) = self.busy();
        let foreign = all.saturating_sub(before.1).saturating_sub(ours.saturating_sub(before.0));
        let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
        foreign as f64 / wall_ns.max(1) as f64 / cpus * 100.0
    }

    /// Sessions held by each replica (`tether_sessions`, every state).
    pub(super) async fn sessions_per_replica(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let text = tether_testkit::http_get(n.admin, "/metrics").await.map(|r| r.1).unwrap_or_default();
            out.push(
                text.lines()
                    .filter(|l| l.starts_with("tether_sessions{"))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum(),
            );
        }
        out
    }

    /// The sum over the replicas of every sample of `/metrics` whose name
    /// starts with `prefix`, by full sample name (labels included).
    pub(super) async fn metrics(&self, prefix: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for n in &self.nodes {
            let Ok((_, text)) = tether_testkit::http_get(n.admin, "/metrics").await else { continue };
            for line in text.lines().filter(|l| l.starts_with(prefix)) {
                let Some((name, value)) = line.rsplit_once(' ') else { continue };
                let Ok(v) = value.parse::<f64>() else { continue };
                match out.iter_mut().find(|(k, _)| k == name) {
                    Some(e) => e.1 += v,
                    None => out.push((name.to_owned(), v)),
                }
            }
        }
        out
    }
}
