//! HAProxy in front of the replicas: its configuration and its process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context as _};

/// A child process killed (SIGKILL) and reaped on drop.
pub(super) struct Owned(pub(super) Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy in front of the replicas, with its config directory.
pub(super) struct Haproxy {
    pub(super) proc: Owned,
    pub(super) addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.proc.0.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` distinct loopback ports that were free a moment ago, below the
/// ephemeral range: one from `:0` could meanwhile become the source port of
/// an outgoing connection, and a replica then failed to listen on it.
pub(super) fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| tether_testkit::free_port()).collect()
}

impl Haproxy {
    /// Starts HAProxy (HTTP mode: it parses each upgrade and then tunnels the
    /// WebSocket) with round robin over `servers` and no stickiness.
    pub(super) fn start(bin: &PathBuf, servers: &[SocketAddr], dir: PathBuf, nofile: u64) -> anyhow::Result<Haproxy> {
        std::fs::create_dir_all(&dir)?;
        let port = free_ports(1)[0];
        // HAProxy needs about two descriptors per connection.
        let maxconn = (nofile.saturating_sub(200) / 2).clamp(256, 100_000);
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, haproxy_config(port, maxconn, servers))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(&path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting {} (apt-get install haproxy)", bin.display()))?;
        let mut proc = Owned(child);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            if let Some(status) = proc.0.try_wait()? {
                return Err(anyhow!("haproxy exited with {status}"));
            }
            if std::time::Instant::now() > deadline {
                return Err(anyhow!("haproxy did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Haproxy { proc, addr, dir })
    }
}

/// HAProxy's configuration: one frontend on loopback `port`, round robin
/// over `servers` with no stickiness, one thread (the machine has 2 CPUs),
/// WebSocket tunnels kept for an hour.
fn haproxy_config(port: u16, maxconn: u64, servers: &[SocketAddr]) -> String {
    let mut cfg = format!(
        "global\n    maxconn {maxconn}\n    nbthread 1\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n    \
         timeout tunnel 1h\n    timeout http-request 10s\n\n\
         frontend ws\n    bind 127.0.0.1:{port}\n    maxconn {maxconn}\n    default_backend tether\n\n\
         backend tether\n    balance roundrobin\n"
    );
    for (i, s) in servers.iter().enumerate() {
        cfg.push_str(&format!("    server t{i} {s} maxconn {maxconn}\n"));
    }
    cfg
}

fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_balances_round_robin_without_stickiness() {
        let servers: Vec<SocketAddr> =
            ["127.0.0.1:7001", "127.0.0.1:7002"].iter().map(|s| s.parse().unwrap()).collect();
        let cfg = haproxy_config(9000, 500, &servers);
        let backend = cfg.split("\nbackend tether\n").nth(1).unwrap();
        assert_eq!(
            backend,
            "    balance roundrobin\n    server t0 127.0.0.1:7001 maxconn 500\n    server t1 127.0.0.1:7002 maxconn 500\n"
        );
        assert!(cfg.contains("    bind 127.0.0.1:9000\n"));
        assert!(cfg.contains("    timeout tunnel 1h\n"));
        for sticky in ["stick", "cookie", "balance source", "hash-type"] {
            assert!(!cfg.contains(sticky), "{sticky} in {cfg}");
        }
    }
}
