//! What `tether-bench cluster` measured, and the Markdown tables it prints.

use serde::Serialize;

use super::latency::LatencyRun;
use super::opts::REPLICAS;
use super::storm::StormRun;
use super::throughput::TputRun;
use crate::stats::{fixed, median, micros, ratio, thousands};

/// Throughput goal: forwarded ÷ direct at 64 B × 100 connections.
const TPUT_GOAL: f64 = 0.8;

/// Everything `tether-bench cluster` measured.
#[derive(Debug, Default, Serialize)]
pub struct ClusterResults {
    /// Resume-latency rounds.
    pub latency: Vec<LatencyRun>,
    /// Throughput trials.
    pub throughput: Vec<TputRun>,
    /// The storm.
    pub storm: Option<StormRun>,
    /// Parts that could not run.
    pub failures: Vec<String>,
}

impl ClusterResults {
    pub(super) fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if !self.latency.is_empty() {
            let l = &self.latency;
            let m = |f: fn(&LatencyRun) -> f64| median(l.iter().map(f));
            let _ = writeln!(out, "\n### Forwarded resume latency\n");
            let _ = writeln!(out, "From the upgrade request to the first replayed frame; each client alternates between resuming at its session's owner and at one of the two other replicas. Medians over rounds of each round's percentile.\n");
            let _ = writeln!(out, "| resume | p50 µs | p99 µs | samples per round |");
            let _ = writeln!(out, "|---|---|---|---|");
            let _ = writeln!(
                out,
                "| at the owner | {} | {} | {} |",
                micros(m(|x| x.owner_p50_us)),
                micros(m(|x| x.owner_p99_us)),
                thousands(m(|x| x.owner_samples as f64))
            );
            let _ = writeln!(
                out,
                "| at another replica, forwarded | {} | {} | {} |",
                micros(m(|x| x.fwd_p50_us)),
                micros(m(|x| x.fwd_p99_us)),
                thousands(m(|x| x.fwd_samples as f64))
            );
            let _ = writeln!(
                out,
                "| added by forwarding | {} | {} | |",
                signed_us(m(|x| x.fwd_p50_us) - m(|x| x.owner_p50_us)),
                signed_us(m(|x| x.fwd_p99_us) - m(|x| x.owner_p99_us))
            );
            let _ = writeln!(
                out,
                "\nOther processes used {} % of the CPUs during the rounds (median).",
                fixed(m(|x| x.foreign_pct), 0)
            );
        }
        if !self.throughput.is_empty() {
            let t = &self.throughput;
            let m = |fwd: bool, f: fn(&TputRun) -> f64| median(t.iter().filter(|x| x.forwarded == fwd).map(f));
            let (direct, fwd) = (m(false, |x| x.rate), m(true, |x| x.rate));
            let r = fwd / direct;
            let _ = writeln!(out, "\n### Throughput of a forwarded connection\n");
            let _ = writeln!(out, "Sessions owned by one replica, resumed at the owner (direct) or at another replica (forwarded), then streamed at saturation; rounds interleaved, medians over rounds. CPU is the three tether processes together.\n");
            let _ = writeln!(out, "| payload | conns | direct msg/s | forwarded msg/s | forwarded ÷ direct | tether CPU µs/msg direct | forwarded | missing / dup | goal ≥ {TPUT_GOAL} |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
            let bad = t.iter().fold((0, 0), |a, x| (a.0 + x.gaps + x.incomplete, a.1 + x.dups));
            let _ = writeln!(
                out,
                "| {} B | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                t[0].size,
                t[0].conns,
                thousands(direct),
                thousands(fwd),
                ratio(r),
                fixed(m(false, |x| x.tether_cpu_us), 2),
                fixed(m(true, |x| x.tether_cpu_us), 2),
                bad.0,
                bad.1,
                if r >= TPUT_GOAL { "met" } else { "**missed**" }
            );
            let per_round: Vec<String> = (0..t.iter().map(|x| x.run + 1).max().unwrap_or(0))
                .filter_map(|run| {
                    let d = t.iter().find(|x| x.run == run && !x.forwarded)?;
                    let f = t.iter().find(|x| x.run == run && x.forwarded)?;
                    Some(format!(
                        "{} (others used {} % / {} % of the CPUs)",
                        ratio(f.rate / d.rate),
                        fixed(d.foreign_pct, 0),
                        fixed(f.foreign_pct, 0)
                    ))
                })
                .collect();
            let _ = writeln!(
                out,
                "\nForwarded ÷ direct per round: {}. Median share of the CPUs other processes used during a trial: {} %.",
                per_round.join(", "),
                fixed(median(t.iter().map(|x| x.foreign_pct)), 0)
            );
        }
        if let Some(s) = &self.storm {
            let mib = |v: &[f64]| v.iter().map(|x| fixed(*x, 0)).collect::<Vec<_>>().join(" / ");
            let _ = writeln!(out, "\n### Reconnect storm\n");
            let _ = writeln!(out, "{} sessions opened through HAProxy (round robin over {REPLICAS} replicas, no stickiness), each receiving {} × 64 B messages/s; then every client drops its TCP connection at the same moment and resumes through HAProxy at once (a failed upgrade is retried after 100–300 ms).\n", thousands(s.sessions as f64), s.rate);
            let _ = writeln!(out, "| sessions | per replica | last session back | per session p50 / p99 | resumed / restarted / not back | retried upgrades | messages checked | lost | dup | tether CPU in the storm | RSS before the drop MiB | peak RSS MiB |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
            let _ = writeln!(
                out,
                "| {} | {} | {} ms | {} / {} ms | {} / {} / {} | {} | {} | {} | {} | {} s | {} | {} |",
                thousands(s.sessions as f64),
                s.per_replica.iter().map(|x| thousands(*x)).collect::<Vec<_>>().join(" / "),
                fixed(s.last_back_ms, 0),
                fixed(s.back_p50_ms, 0),
                fixed(s.back_p99_ms, 0),
                s.resumed,
                s.restarted,
                s.not_back,
                s.retries,
                thousands(s.delivered as f64),
                s.lost,
                s.dups,
                fixed(s.tether_cpu_s, 2),
                mib(&s.rss_before_mib),
                mib(&s.peak_rss_mib)
            );
            let _ = writeln!(out, "\nOther processes used {} % of the CPUs from the drop until the last session was back; opening the sessions took {} s.", fixed(s.foreign_pct, 0), fixed(s.open_secs, 1));
            if !s.forward_metrics.is_empty() {
                let _ = writeln!(out, "\nForwarding counters after the run, summed over the replicas:\n");
                for (k, v) in &s.forward_metrics {
                    if !k.contains("_bucket") {
                        let _ = writeln!(out, "- `{k}` {}", fixed(*v, 3).trim_end_matches('0').trim_end_matches('.'));
                    }
                }
            }
            if let Some(e) = &s.retry_error {
                let _ = writeln!(out, "\nFirst retried failure: `{e}`.");
            }
            if let Some(e) = &s.error {
                let _ = writeln!(out, "\n**First error:** {e}");
            }
        }
        for f in &self.failures {
            let _ = writeln!(out, "\n**Failed:** {f}");
        }
        out
    }

    pub(super) fn clean(&self) -> bool {
        self.failures.is_empty()
            && self.latency.iter().all(|x| x.gaps == 0 && x.dups == 0 && x.error.is_none())
            && self.throughput.iter().all(|x| x.gaps == 0 && x.dups == 0 && x.incomplete == 0)
            && self.storm.as_ref().is_none_or(|s| s.lost == 0 && s.dups == 0 && s.not_back == 0 && s.error.is_none())
    }
}

/// A latency in µs as `micros` writes it, with its unit.
pub(super) fn with_unit(x: f64) -> String {
    let s = micros(x);
    if s.ends_with("ms") || s == "–" {
        s
    } else {
        format!("{s} µs")
    }
}

/// A difference in µs with its sign (`+254`, `−1,203`).
fn signed_us(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    format!("{}{}", if x < 0.0 { "−" } else { "+" }, thousands(x.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(signed_us(405.2), "+405");
        assert_eq!(signed_us(-2237.1), "−2,237");
        assert_eq!(signed_us(f64::NAN), "–");
        assert_eq!(with_unit(603.0), "603 µs");
        assert_eq!(with_unit(13_300.0), "13.3 ms");
    }
}
