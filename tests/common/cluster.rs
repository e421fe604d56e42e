//! Several real tether processes as one cluster (`cluster.mode = "static"`,
//! fixed ports so a restarted replica comes back where it was), a real
//! HAProxy in front of them, and a client that follows one session through
//! drops, resumes and restarts while checking every frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{drop_abruptly, http_get, metric, within, TetherProcess, Ws, SECRET, WAIT};

pub use tether_testkit::free_port;

impl TetherProcess {
    /// [`TetherProcess::start`] on fixed data and admin addresses (a
    /// restarted replica keeps its ports, as a pod keeps its name).
    pub async fn start_on(
        upstream: &str,
        dir: &Path,
        listen: &str,
        admin: &str,
        extra_env: &[(&str, &str)],
    ) -> TetherProcess {
        let cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        TetherProcess::launch(cmd, upstream, dir, (listen, admin), extra_env).await
    }

    /// Starts `cmd` (the `tether` binary, perhaps with limits set) as
    /// [`TetherProcess::start_on`] does.
    pub async fn launch(
        mut cmd: tokio::process::Command,
        upstream: &str,
        dir: &Path,
        (listen, admin): (&str, &str),
        extra_env: &[(&str, &str)],
    ) -> TetherProcess {
        cmd.args(["--listen", listen, "--admin-listen", admin, "--upstream", upstream])
            .arg("--data-dir")
            .arg(dir)
            .args(["--log-format", "json", "--log-level", "info"])
            .env("TETHER_TOKEN_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tether");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (data_addr, admin_addr) = within("tether to start", async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    seen.push(line);
                    continue;
                };
                if v["fields"]["message"] == "tether is serving" {
                    let data = v["fields"]["data_addr"].as_str().unwrap().parse().unwrap();
                    let admin = v["fields"]["admin_addr"].as_str().unwrap().parse().unwrap();
                    return (data, admin);
                }
                seen.push(line);
            }
            panic!("tether exited before serving: {seen:?}");
        })
        .await;
        // Keep draining stderr so the child never blocks on a full pipe.
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        TetherProcess { child, data_addr, admin_addr, logs }
    }
}

/// One replica: its fixed addresses, its journal, and its process while up.
pub struct Node {
    pub name: String,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub peer: SocketAddr,
    pub dir: tempfile::TempDir,
    pub proc: Option<TetherProcess>,
    env: Vec<(String, String)>,
}

/// Replicas `t0`, `t1`, ... of one static cluster in front of one backend.
pub struct Cluster {
    pub nodes: Vec<Node>,
    upstream: String,
}

impl Cluster {
    /// Starts `n` replicas that list each other as peers; `extra` env is
    /// added to every one (e.g. `TETHER_CLUSTER_NAME`).
    pub async fn start(upstream: &str, n: usize, extra: &[(&str, &str)]) -> Cluster {
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        let specs: Vec<(String, SocketAddr, SocketAddr, SocketAddr)> =
            (0..n).map(|i| (format!("t{i}"), addr(free_port()), addr(free_port()), addr(free_port()))).collect();
        let peers =
            specs.iter().map(|(name, _, _, peer)| format!("{name} = \"{peer}\"")).collect::<Vec<_>>().join(", ");
        let mut nodes = Vec::new();
        for (name, data, admin, peer) in specs {
            let mut env: Vec<(String, String)> = vec![
                ("TETHER_CLUSTER_MODE".into(), "static".into()),
                ("TETHER_CLUSTER_INSTANCE".into(), name.clone()),
                ("TETHER_CLUSTER_PEER_LISTEN".into(), peer.to_string()),
                ("TETHER_CLUSTER_PEERS".into(), format!("{{ {peers} }}")),
            ];
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            nodes.push(Node { name, data, admin, peer, dir: tempfile::tempdir().unwrap(), proc: None, env });
        }
        let mut c = Cluster { nodes, upstream: upstream.to_owned() };
        for i in 0..n {
            c.up(i).await;
        }
        c
    }

    /// Starts replica `i` (again), on its ports and journal.
    pub async fn up(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.proc.is_none(), "{} is already up", node.name);
        let env: Vec<(&str, &str)> = node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = TetherProcess::start_on(
            &self.upstream,
            node.dir.path(),
            &node.data.to_string(),
            &node.admin.to_string(),
            &env,
        )
        .await;
        node.proc = Some(p);
    }

    /// Replaces replica `i`'s environment variable `key` (applies at its next start).
    pub fn set_env(&mut self, i: usize, key: &str, value: &str) {
        let env = &mut self.nodes[i].env;
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

    /// SIGKILL replica `i`.
    pub async fn kill9(&mut self, i: usize) {
        self.nodes[i].proc.take().expect("up").kill9().await;
    }

    /// SIGTERM replica `i` and wait for its drain to finish with status 0.
    pub async fn sigterm(&mut self, i: usize) {
        let status = self.nodes[i].proc.take().expect("up").signal("-TERM").await;
        assert!(status.success(), "{} exited with {status}", self.nodes[i].name);
    }

    /// ws:// URL of replica `i`'s data port.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("ws://{}{path}", self.nodes[i].data)
    }

    /// Replica `i`'s `/metrics`.
    pub async fn metrics(&self, i: usize) -> String {
        http_get(self.nodes[i].admin, "/metrics").await.1
    }

    /// A sample summed over every replica that is up.
    pub async fn sum(&self, sample: &str) -> f64 {
        let mut total = 0.0;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.proc.is_some() {
                total += metric(&self.metrics(i).await, sample);
            }
        }
        total
    }

    /// Every replica's log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|n| n.proc.as_ref()).flat_map(|p| p.logs.lock().unwrap().clone()).collect()
    }

    /// Kills every replica still up.
    pub async fn stop(mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].proc.is_some() {
                self.kill9(i).await;
            }
        }
    }
}

/// A real HAProxy (`balance roundrobin`, TCP mode, no stickiness) in front
/// of a cluster's data ports, with `/readyz` health checks.
pub struct Haproxy {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Writes its configuration and starts `haproxy -f cfg -db`; returns once
    /// the frontend accepts connections.
    pub async fn start(cluster: &Cluster) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cfg = format!(
            "global\n  maxconn 4000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  \
             retries 3\n  option redispatch\n\
             frontend fe\n  bind {addr}\n  default_backend be\n\
             backend be\n  balance roundrobin\n  option httpchk GET /readyz\n  \
             default-server inter 100ms fall 1 rise 1\n"
        );
        for n in &cluster.nodes {
            cfg.push_str(&format!("  server {} {} check port {}\n", n.name, n.data, n.admin.port()));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        // /usr/sbin is not on every user's PATH.
        let bin = if std::path::Path::new("/usr/sbin/haproxy").exists() { "/usr/sbin/haproxy" } else { "haproxy" };
        let mut child = tokio::process::Command::new(bin)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy is installed (scripts/setup-test)");
        within("haproxy to listen", async {
            while TcpStream::connect(addr).await.is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("haproxy exited with {status}; run `haproxy -c -f {}`", path.display());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        Haproxy { addr, child, _dir: dir }
    }

    /// ws:// URL through the balancer.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What a follower saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The outcome of each connection's welcome, in order.
    pub outcomes: Vec<String>,
    /// Refusals by `status error`.
    pub refusals: HashMap<String, usize>,
    /// Connections that failed without an HTTP answer (balancer, restarts).
    pub failed_connects: usize,
}

/// A client that follows one session through any number of connections,
/// checking that data frames arrive with seq = offset + 1 every time (no
/// loss, no duplicate, no reordering) and that payloads `m<n>` only grow.
pub struct Follower {
    url: String,
    pub token: Option<String>,
    /// Last seq processed.
    pub offset: u64,
    /// Last `m<n>` payload number processed.
    pub last: u64,
    pub seen: Seen,
}

/// One connection's end, as a follower reads it.
pub enum Read {
    /// `until` was satisfied.
    Done,
    /// The connection ended (drain, drop): resume.
    Ended,
}

impl Follower {
    /// A follower of a new session at `url`.
    pub fn new(url: String) -> Follower {
        Follower { url, token: None, offset: 0, last: 0, seen: Seen::default() }
    }

    /// Connects (or resumes), retrying refusals and failed connections
    /// (`Retry-After` is honoured only as "soon": the test is in a hurry),
    /// and returns the socket after its welcome.
    pub async fn connect(&mut self) -> Ws {
        within("a connection that is accepted", async {
            loop {
                let mut req = self.url.as_str().into_client_request().unwrap();
                if let Some(t) = &self.token {
                    req.headers_mut().insert("tether-session", t.parse().unwrap());
                    req.headers_mut().insert("tether-offset", self.offset.to_string().parse().unwrap());
                }
                match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
                    Ok(Ok((mut ws, _))) => match self.welcome(&mut ws).await {
                        Some(()) => return ws,
                        None => self.seen.failed_connects += 1,
                    },
                    Ok(Err(WsError::Http(resp))) => {
                        let body: Value =
                            resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
                        let key = format!("{} {}", resp.status().as_u16(), body["error"].as_str().unwrap_or("?"));
                        assert_eq!(resp.status().as_u16(), 503, "only 503s are retried: {key} {body}");
                        *self.seen.refusals.entry(key).or_default() += 1;
                    }
                    _ => self.seen.failed_connects += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Reads the welcome; `None` if the connection ended first.
    async fn welcome(&mut self, ws: &mut Ws) -> Option<()> {
        let text = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        };
        let w: Value = serde_json::from_str(text.strip_prefix('#').expect("the welcome comes first")).unwrap();
        assert_eq!(w["type"], "welcome", "{w}");
        let outcome = w["outcome"].as_str().unwrap().to_owned();
        match (&self.token, outcome.as_str()) {
            (None, "new") => {}
            (Some(_), "resumed" | "restarted") => {}
            _ => panic!("a session never silently becomes another: {w}"),
        }
        self.token = Some(w["session"].as_str().unwrap().to_owned());
        self.seen.outcomes.push(outcome);
        Some(())
    }

    /// Reads data frames until `until(last)` holds, the connection ends, or
    /// `drop_after` frames were read (then the socket is reset, as a phone
    /// changing networks does).
    pub async fn read(&mut self, ws: &mut Ws, drop_after: Option<usize>, until: impl Fn(u64) -> bool) -> Read {
        let mut n = 0usize;
        loop {
            if until(self.last) {
                return Read::Done;
            }
            if drop_after.is_some_and(|d| n >= d) {
                return Read::Ended;
            }
            let m = match within("a frame", ws.next()).await {
                Some(Ok(m)) => m,
                _ => return Read::Ended,
            };
            let text = match m {
                Message::Text(t) => t.to_string(),
                Message::Close(_) => return Read::Ended,
                _ => continue,
            };
            if let Some(control) = text.strip_prefix('#') {
                let c: Value = serde_json::from_str(control).unwrap();
                assert_eq!(c["type"], "draining", "only a drain may interrupt: {c}");
                continue;
            }
            let (seq, payload) = text.split_once(':').unwrap_or_else(|| panic!("not a stamped frame: {text:?}"));
            let seq: u64 = seq.parse().unwrap();
            assert_eq!(seq, self.offset + 1, "lost = dup = reorder = 0 (last payload m{})", self.last);
            let p: u64 = payload.strip_prefix('m').and_then(|p| p.parse().ok()).expect("m<n> payload");
            assert!(p > self.last, "payload m{p} after m{}: duplicate or reordered", self.last);
            self.offset = seq;
            self.last = p;
            n += 1;
        }
    }

    /// Follows the session until `until(last)`, resuming after every end;
    /// `drops` says after how many frames each connection is reset (`None`:
    /// never).
    pub async fn follow(&mut self, mut drops: impl FnMut() -> Option<usize>, until: impl Fn(u64) -> bool) {
        loop {
            let mut ws = self.connect().await;
            match self.read(&mut ws, drops(), &until).await {
                Read::Done => {
                    drop_abruptly(ws);
                    return;
                }
                Read::Ended => drop_abruptly(ws),
            }
        }
    }
}

/// A tiny xorshift generator (no `rand` in the tree); seeded per test run
/// and printed, so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock.
    pub fn from_time() -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        eprintln!("rng seed {seed}");
        Rng(seed)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}
