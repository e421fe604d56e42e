//! `tether-bench cluster`: what scale-out (issue 9) costs. Three tether
//! processes in cluster mode (`static` peer list on loopback), one backend,
//! and a real HAProxy (`balance roundrobin`, no stickiness) in front:
//!
//! - **latency**: resume latency at the session's owner against a resume
//!   that reaches another replica and is forwarded to the owner. Each client
//!   alternates between the two, so both see the same load.
//! - **throughput**: sessions owned by one replica, resumed either at the
//!   owner or at another replica (forwarded: a byte splice to the owner),
//!   then streamed at saturation; forwarded ÷ direct, interleaved rounds.
//! - **storm**: N sessions opened through HAProxy (so spread over the three
//!   owners), streaming; all clients drop their TCP connections at once and
//!   resume through HAProxy (two in three land on a non-owner). Time until
//!   the last session is back, peak RSS per replica, and every message
//!   checked: lost = duplicated = 0 is the pass condition.
//!
//! Prints Markdown on stdout and progress on stderr; exits non-zero if a
//! message was lost or duplicated, or a session did not come back.

mod haproxy;
mod latency;
mod opts;
mod report;
mod rig;
mod session;
mod storm;
mod throughput;

use std::time::Duration;

use crate::procs::Launcher;
use crate::stats::{fixed, thousands};
use crate::sys;

use latency::latency_round;
pub use opts::{ClusterOpts, REPLICAS};
use report::{with_unit, ClusterResults};
use rig::Rig;
use storm::storm;
use throughput::tput_trial;

// ---------------------------------------------------------------- main

/// Runs `tether-bench cluster`; Ok(false) if anything was lost.
pub fn main(o: ClusterOpts) -> anyhow::Result<bool> {
    let nofile = sys::raise_nofile();
    let launcher = o.tether.launcher()?;
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let res = rt.block_on(run(&o, &launcher, nofile));
    let _ = std::fs::remove_dir_all(launcher.data_root());
    let elapsed = started.elapsed().as_secs_f64();
    let command = std::iter::once("tether-bench".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("## tether-bench cluster results\n");
    println!("- Command: `{}` ({elapsed:.0} s)", command.join(" "));
    println!(
        "- Machine: {nproc} CPUs shared by the backend, {REPLICAS} tether processes, HAProxy and the clients; load average at the end {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "- tether under test: {}; cluster mode `static`, journal sync=none, prefix stamps",
        launcher.tether_description()
    );
    println!(
        "- Balancer: {} (`balance roundrobin`, HTTP mode, no stickiness), open-files limit {nofile}",
        o.haproxy.display()
    );
    print!("{}", res.markdown());
    if let Some(path) = &o.tether.json {
        std::fs::write(path, serde_json::to_vec_pretty(&res)?)?;
    }
    let ok = res.clean();
    eprintln!("tether-bench cluster: {} in {elapsed:.0} s", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

async fn run(o: &ClusterOpts, l: &Launcher, nofile: u64) -> ClusterResults {
    let mut res = ClusterResults::default();
    let quiet = || async {
        if o.wait_quiet > 0 {
            let waited = sys::wait_for_quiet(10.0, Duration::from_secs(o.wait_quiet)).await;
            eprintln!("(waited {waited} s for a quiet machine)");
        }
    };
    if o.has("latency") {
        for run in 0..o.runs {
            quiet().await;
            let r = async {
                let rig = Rig::start(l, o, nofile, &format!("lat{run}"))?;
                latency_round(&rig, o.resume_secs, o.workers, run).await
            }
            .await;
            match r {
                Ok(r) => {
                    eprintln!(
                        "[latency round {}/{}] owner p50 {} p99 {} ({}), forwarded p50 {} p99 {} ({}){}",
                        run + 1,
                        o.runs,
                        with_unit(r.owner_p50_us),
                        with_unit(r.owner_p99_us),
                        r.owner_samples,
                        with_unit(r.fwd_p50_us),
                        with_unit(r.fwd_p99_us),
                        r.fwd_samples,
                        r.error.as_deref().map(|e| format!(" ERROR {e}")).unwrap_or_default()
                    );
                    res.latency.push(r);
                }
                Err(e) => res.failures.push(format!("latency round {}: {e:#}", run + 1)),
            }
        }
    }
    if o.has("throughput") {
        for run in 0..o.runs {
            for forwarded in [false, true] {
                quiet().await;
                let r = async {
                    let rig = Rig::start(l, o, nofile, &format!("tput{run}{forwarded}"))?;
                    tput_trial(&rig, o, forwarded, run).await
                }
                .await;
                match r {
                    Ok(r) => {
                        eprintln!(
                            "[throughput {} B × {}, round {}/{}] {}: {} msg/s, tether {} µs/msg, {} missing, {} dup, others {} % CPU{}",
                            o.size,
                            o.conns,
                            run + 1,
                            o.runs,
                            if forwarded { "forwarded" } else { "direct" },
                            thousands(r.rate),
                            fixed(r.tether_cpu_us, 2),
                            r.gaps,
                            r.dups,
                            fixed(r.foreign_pct, 0),
                            r.error.as_deref().map(|e| format!(" ERROR {e}")).unwrap_or_default()
                        );
                        res.throughput.push(r);
                    }
                    Err(e) => res.failures.push(format!("throughput round {} forwarded={forwarded}: {e:#}", run + 1)),
                }
            }
        }
    }
    if o.has("storm") {
        quiet().await;
        let r = async {
            let rig = Rig::start(l, o, nofile, "storm")?;
            storm(&rig, o).await
        }
        .await;
        match r {
            Ok(s) => {
                eprintln!(
                    "[storm] {} sessions: last back after {} ms (p50 {} p99 {} ms), {} retries, lost {}, dup {}, peak RSS {:?} MiB",
                    s.sessions,
                    fixed(s.last_back_ms, 0),
                    fixed(s.back_p50_ms, 0),
                    fixed(s.back_p99_ms, 0),
                    s.retries,
                    s.lost,
                    s.dups,
                    s.peak_rss_mib
                );
                res.storm = Some(s);
            }
            Err(e) => res.failures.push(format!("storm: {e:#}")),
        }
    }
    res
}
