//! The processes a trial starts: the backend producer and tether, each a
//! child process so `/proc` can tell their CPU time, memory and disk writes
//! apart from the load generator's.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context as _};

/// The token secret every tether instance of the harness uses.
pub const SECRET: &str = "tether-bench-secret-tether-bench-secret-0";

/// A tether configuration under test, as `TETHER_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Setup {
    /// Clients connect straight to the backend; no tether.
    Direct,
    /// The reference relay (`tether-bench relay`): frames forwarded by a naive
    /// tokio-tungstenite relay, no journal, no stamps. tether's headline
    /// ratio is against it.
    Relay,
    /// tether with `stamp.mode = none` (journal still on: tether has no
    /// journal-off mode).
    Pass,
    /// tether, prefix stamps, `journal.sync = none`.
    JournalNone,
    /// tether, prefix stamps, `journal.sync = none`, with
    /// `journal.max_session_frames` low enough that every session exceeds it
    /// and trims as it goes (twice the harness's flow-control window, so a
    /// client is never behind retention): the steady state past retention.
    JournalTrim,
    /// tether, prefix stamps, `journal.sync = interval` (50 ms).
    JournalInterval,
    /// tether, prefix stamps, `journal.sync = always` (group commit).
    JournalAlways,
}

/// Every setup, in the order each round runs them.
pub const SETUPS: [Setup; 7] = [
    Setup::Direct,
    Setup::Relay,
    Setup::Pass,
    Setup::JournalNone,
    Setup::JournalTrim,
    Setup::JournalInterval,
    Setup::JournalAlways,
];

impl Setup {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Relay => "reference relay",
            Setup::Pass => "pass-through",
            Setup::JournalNone => "journal sync=none",
            Setup::JournalTrim => "journal sync=none, trimming",
            Setup::JournalInterval => "journal sync=interval",
            Setup::JournalAlways => "journal sync=always",
        }
    }

    /// Parses a name or short alias.
    pub fn parse(s: &str) -> Option<Setup> {
        Some(match s {
            "direct" => Setup::Direct,
            "relay" | "reference-relay" => Setup::Relay,
            "pass" | "pass-through" | "none-stamp" => Setup::Pass,
            "journal-none" | "none" => Setup::JournalNone,
            "journal-trim" | "trim" => Setup::JournalTrim,
            "journal-interval" | "interval" => Setup::JournalInterval,
            "journal-always" | "always" => Setup::JournalAlways,
            _ => return None,
        })
    }

    /// True if data frames carry `<seq>:` prefixes and control frames.
    pub fn stamped(self) -> bool {
        !matches!(self, Setup::Direct | Setup::Relay | Setup::Pass)
    }

    /// `(stamp.mode, journal.sync)`, or `None` for direct and the relay.
    pub fn tether_modes(self) -> Option<(&'static str, &'static str)> {
        match self {
            Setup::Direct | Setup::Relay => None,
            Setup::Pass => Some(("none", "none")),
            Setup::JournalNone | Setup::JournalTrim => Some(("prefix", "none")),
            Setup::JournalInterval => Some(("prefix", "interval")),
            Setup::JournalAlways => Some(("prefix", "always")),
        }
    }
}

/// Starts the children: the backend is always this executable; tether is
/// this executable too (`tether-bench tether ...`, the library's
/// `server::start` behind the same start-up as `src/main.rs`) unless
/// `--tether-bin` names a `tether` binary.
pub struct Launcher {
    exe: PathBuf,
    tether_bin: Option<PathBuf>,
    data_root: PathBuf,
    next_dir: AtomicU64,
    verbose: bool,
    env: Vec<(String, String)>,
}

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Child,
    /// Its pid.
    pub pid: u32,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The backend producer.
pub struct BackendProc {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl BackendProc {
    /// Its ws:// URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// A tether instance with its own journal directory (removed on drop; kept
/// when started with [`Launcher::tether_on`]), or the reference relay.
pub struct TetherProc {
    proc: Option<Proc>,
    /// Its pid.
    pub pid: u32,
    /// Data port.
    pub data: SocketAddr,
    /// Admin port.
    pub admin: SocketAddr,
    /// Its journal directory (none for the relay).
    dir: Option<PathBuf>,
}

impl Drop for TetherProc {
    fn drop(&mut self) {
        drop(self.proc.take());
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl Launcher {
    /// A launcher keeping journals under `data_root`.
    pub fn new(tether_bin: Option<PathBuf>, data_root: PathBuf) -> anyhow::Result<Launcher> {
        std::fs::create_dir_all(&data_root).with_context(|| format!("creating {}", data_root.display()))?;
        Ok(Launcher {
            exe: std::env::current_exe().context("locating tether-bench")?,
            tether_bin,
            data_root,
            next_dir: AtomicU64::new(0),
            verbose: false,
            env: Vec::new(),
        })
    }

    /// Extra `TETHER_*` settings for every tether started (after the
    /// harness's own, so they win).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Launcher {
        self.env = env;
        self
    }

    /// The extra settings, for the report.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Prints each tether's pid on stderr when it starts (for `perf -p`).
    pub fn verbose(mut self) -> Launcher {
        self.verbose = true;
        self
    }

    /// What runs as tether, for the report.
    pub fn tether_description(&self) -> String {
        match &self.tether_bin {
            Some(p) => p.display().to_string(),
            None => "the tether library inside tether-bench (`tether-bench tether ...`)".into(),
        }
    }

    /// Starts a backend and waits for its address.
    pub fn backend(&self) -> anyhow::Result<BackendProc> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["backend", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting the backend")?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let proc = Proc { child, pid };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("backend did not start: {line:?}"))?;
        Ok(BackendProc { proc, addr })
    }

    /// Starts the reference relay in front of `upstream` and waits for its
    /// address. It has no admin port and no journal directory.
    pub fn relay(&self, upstream: &str) -> anyhow::Result<TetherProc> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["relay", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting the relay")?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let proc = Proc { child, pid };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let data: SocketAddr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("relay did not start: {line:?}"))?;
        Ok(TetherProc { proc: Some(proc), pid, data, admin: data, dir: None })
    }

    /// Starts tether in front of `upstream` in `setup` (plus `extra` variables)
    /// with a fresh journal directory, and waits for it to serve.
    pub fn tether(&self, setup: Setup, upstream: &str, extra: &[(&str, String)]) -> anyhow::Result<TetherProc> {
        let dir = self.data_root.join(format!("journal-{}", self.next_dir.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        let mut t = self.tether_on(&dir, setup, upstream, extra, None)?;
        t.dir = Some(dir);
        Ok(t)
    }

    /// Starts tether on the journal directory `dir`, which outlives it (to
    /// restart another on it), and waits for it to serve. With `tap`, every
    /// log line goes there too, with the `CLOCK_MONOTONIC` ns it was read at.
    pub fn tether_on(
        &self,
        dir: &Path,
        setup: Setup,
        upstream: &str,
        extra: &[(&str, String)],
        tap: Option<std::sync::mpsc::Sender<(u64, String)>>,
    ) -> anyhow::Result<TetherProc> {
        let (stamp, sync) = setup.tether_modes().ok_or_else(|| anyhow!("direct has no tether"))?;
        let mut cmd = match &self.tether_bin {
            Some(bin) => Command::new(bin),
            None => {
                let mut c = Command::new(&self.exe);
                c.arg("tether");
                c
            }
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("TETHER_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--upstream", upstream])
            .arg("--data-dir")
            .arg(dir)
            .args(["--log-format", "json", "--log-level", "info"])
            .env("RUST_BACKTRACE", "0")
            .env("TETHER_TOKEN_SECRET", SECRET)
            .env("TETHER_STAMP_MODE", stamp)
            .env("TETHER_JOURNAL_SYNC", sync)
            // Retention must never trim under the benchmark's backlog (a
            // trim is a reported gap, which the harness counts as a failure).
            .env("TETHER_JOURNAL_MAX_SESSION_FRAMES", "1000000000")
            .env("TETHER_JOURNAL_MAX_SESSION_BYTES", "1099511627776")
            .env("TETHER_JOURNAL_DISK_BUDGET_BYTES", "1099511627776")
            .env("TETHER_LIMITS_MAX_SESSIONS", "100000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting tether")?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped");
        let proc = Proc { child, pid };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut last = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(tap) = &tap {
                    let _ = tap.send((crate::sys::now_ns(), line.clone()));
                }
                if let Some(sender) = &tx {
                    if let Some(addrs) = serving(&line) {
                        let _ = sender.send(Ok(addrs));
                        tx = None;
                        continue;
                    }
                    last.clone_from(&line);
                }
                if notable(&line) {
                    eprintln!("tether[{pid}]: {line}");
                }
            }
            if let Some(sender) = tx {
                let _ = sender.send(Err(anyhow!("tether exited before serving; last log line: {last}")));
            }
        });
        let (data, admin) = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| anyhow!("tether did not start"))??;
        if self.verbose {
            eprintln!("tether pid {pid} serving on {data}, admin {admin}, journal {}", dir.display());
        }
        Ok(TetherProc { proc: Some(proc), pid, data, admin, dir: None })
    }

    /// The root directory for journals.
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }
}

/// Log lines worth showing: warnings, errors and anything not JSON (a panic).
fn notable(line: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => matches!(v["level"].as_str(), Some("WARN" | "ERROR")),
        Err(_) => !line.trim().is_empty(),
    }
}

/// The addresses from the "tether is serving" JSON log line.
fn serving(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"] != "tether is serving" {
        return None;
    }
    Some((v["fields"]["data_addr"].as_str()?.parse().ok()?, v["fields"]["admin_addr"].as_str()?.parse().ok()?))
}

impl TetherProc {
    /// Its journal directory, if the launcher made one for it.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// ws:// URL for `path` on the data port.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.data, path)
    }

    /// One sample from `/metrics`, or 0.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        Ok(tether_testkit::scrape(self.admin, sample).await?)
    }
}

/// `tether-bench tether <flags>`: exactly what `tether run` does, with the
/// tether library linked into this binary.
pub fn run_tether(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;
    let cli = tether::cli::Cli::parse_from(std::iter::once("tether".to_owned()).chain(args));
    Ok(tether::cli::serve(cli.config()?)?)
}
