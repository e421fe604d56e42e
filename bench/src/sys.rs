//! What the harness reads from the operating system: a clock every process
//! on the machine shares, per-process CPU time, memory and disk writes from
//! `/proc`, and the open-files limit.

use std::path::PathBuf;

/// `CLOCK_MONOTONIC` in nanoseconds. The backend stamps it into each payload
/// and the client subtracts it on receipt: one clock for every process on the
/// machine, so the difference is a true one-way latency.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft open-files limit to the hard limit (children inherit it)
/// and returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// CPU time and disk writes of one process, all threads included.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// utime + stime, in nanoseconds (clock-tick resolution).
    pub cpu_ns: u64,
    /// Bytes this process caused to be written to storage (`/proc/<pid>/io`).
    pub write_bytes: u64,
}

impl Usage {
    /// `self - earlier`, saturating.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/io`
/// (write_bytes). Zeros for what cannot be read.
pub fn usage(pid: u32) -> Usage {
    let mut u = Usage::default();
    if let Ok(stat) = std::fs::read_to_string(proc_path(pid, "stat")) {
        // The command name is in parentheses and may contain spaces.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After ")": state(0) ppid pgrp session tty tpgid flags minflt
            // cminflt majflt cmajflt utime(11) stime(12).
            let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            u.cpu_ns = ticks * 1_000_000_000 / clk_tck();
        }
    }
    if let Ok(io) = std::fs::read_to_string(proc_path(pid, "io")) {
        u.write_bytes =
            io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    }
    u
}

/// CPU time every process on the machine has used (busy jiffies of
/// `/proc/stat`, all CPUs), in nanoseconds.
pub fn machine_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return 0 };
    let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy * 1_000_000_000 / clk_tck()
}

/// Waits (up to `max`) until the machine has been quiet for 3 s in a row:
/// under `pct` % of all CPUs busy in each 1 s sample. Call it when no child
/// of the harness is running. Returns the seconds waited.
pub async fn wait_for_quiet(pct: f64, max: std::time::Duration) -> u64 {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let start = std::time::Instant::now();
    let mut quiet = 0;
    while quiet < 3 && start.elapsed() < max {
        let before = machine_busy_ns();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let busy = machine_busy_ns().saturating_sub(before) as f64 / 1e9 / cpus * 100.0;
        quiet = if busy < pct { quiet + 1 } else { 0 };
    }
    start.elapsed().as_secs()
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM`, `VmRSS`), 0 if unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(proc_path(pid, "status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.strip_prefix(':'))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Number of open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(proc_path(pid, "fd")).map(|d| d.count()).unwrap_or(0)
}

/// The soft open-files limit of `pid`.
pub fn nofile_limit(pid: u32) -> u64 {
    std::fs::read_to_string(proc_path(pid, "limits"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// nproc, CPU model, kernel, rustc, load average, memory.
pub fn machine(nofile: u64) -> String {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rustc unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{nproc} CPUs ({cpu}), Linux {}, {rustc}, open-files limit {nofile}, load average at start {}, {}",
        kernel.trim(),
        load.join(" "),
        memory()
    )
}

/// Free memory and page cache at start: tether's figures moved with the
/// page cache on the benchmark VM, the relay's did not (docs/BENCHMARKS.md,
/// "Limits of these figures").
fn memory() -> String {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let gib = |field: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix(" kB")?.trim().parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / (1 << 20) as f64))
            .unwrap_or_else(|| "?".into())
    };
    format!("memory free {}, page cache {}", gib("MemFree:"), gib("Cached:"))
}

/// A small xorshift generator: phases, pauses and padding need no more.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the OS.
    pub fn new() -> Rng {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        Rng(u64::from_le_bytes(b) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
