//! `tether check` against healthy deployments: a real tether process in
//! front of real backends (the demo's, a ticker, one that sends odd
//! messages and ends sessions), and `tether demo` itself. A healthy tether
//! must pass every check, every time.

mod check_common;
mod common;

use std::process::Stdio;
use std::time::Duration;

use check_common::*;
use common::cluster::free_port;
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// tether with a short keepalive, so the checker's idle fault outlasts
/// session.ping_interval + session.ping_timeout and tether detaches the
/// silent connection itself.
const SHORT_PINGS: &[(&str, &str)] =
    &[("TETHER_SESSION_PING_INTERVAL", "50ms"), ("TETHER_SESSION_PING_TIMEOUT", "100ms")];

#[tokio::test]
async fn a_healthy_tether_passes_every_check_under_every_fault() {
    let upstream = backend(Kind::Ticker, Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let t = TetherProcess::start(&upstream, dir.path(), SHORT_PINGS).await;
    let mut args = vec!["--duration", "3s", "--sessions", "4", "--send", "--send-interval", "20ms"];
    args.extend_from_slice(QUICK);
    let c = check(&t.url("/feed?room=1"), &args).await;
    c.assert_passed();
    let counts = &c.report["counts"];
    for fault in ["reset", "blackout", "close-1001", "idle", "takeover"] {
        assert!(counts["faults"][fault].as_u64() > Some(0), "fault {fault} never injected: {counts:#}");
    }
    for how in ["header", "query", "protocol", "rewind"] {
        assert!(counts["resumes"][how].as_u64() > Some(0), "no resume by {how}: {counts:#}");
    }
    // Four refusal probes per session, each with its documented answer.
    for r in ["409 offset_ahead", "400 malformed_credentials", "400 malformed_token", "401 invalid_token"] {
        assert_eq!(counts["refusals"][r], 4, "{counts:#}");
    }
    // At the end, a session resumed twice or more has a superseded token.
    assert!(counts["refusals"]["401 token_superseded"].as_u64() > Some(0), "{counts:#}");
    assert!(counts["replayed"].as_u64() > Some(0));
    assert_eq!(counts["sent"], counts["acked"].as_u64().unwrap() + counts["in_doubt"].as_u64().unwrap());
    assert!(c.check("replay")["passed"].as_u64() > Some(0));
    assert!(c.check("upstream")["passed"].as_u64() > Some(0));
    assert!(c.report["resume_latency_ms"]["p99"].as_f64().is_some());
    t.kill9().await;
}

#[tokio::test]
async fn a_backend_that_sends_odd_messages_and_ends_sessions_passes() {
    let upstream = backend(Kind::Odd, Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let t = TetherProcess::start(&upstream, dir.path(), SHORT_PINGS).await;
    let mut args = vec!["--duration", "3s", "--sessions", "3"];
    args.extend_from_slice(QUICK);
    let c = check(&t.url("/"), &args).await;
    c.assert_passed();
    assert!(c.report["counts"]["ended"].as_u64() > Some(0), "{:#}", c.report["counts"]);
    t.kill9().await;
}

#[tokio::test]
async fn a_healthy_tether_passes_twenty_runs_in_a_row() {
    let upstream = backend(Kind::Ticker, Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let t = TetherProcess::start(&upstream, dir.path(), SHORT_PINGS).await;
    let mut args = vec!["--duration", "1s", "--sessions", "2", "--send", "--send-interval", "20ms"];
    args.extend_from_slice(QUICK);
    for run in 1..=20 {
        let c = check(&t.url("/"), &args).await;
        assert!(c.status == 0, "run {run} of 20 failed: {:#}\n{}", c.report, c.stderr);
    }
    t.kill9().await;
}

/// The acceptance test: `tether check ws://…/demo` against `tether demo`
/// passes and prints its summary.
#[tokio::test]
async fn tether_check_passes_against_tether_demo() {
    let (data, admin, page) = (free_port(), free_port(), free_port());
    // The demo's default journal is under $XDG_STATE_HOME: a test's own, so
    // that it neither touches the user's demo journal nor collides with
    // another run of this test.
    let state = tempfile::tempdir().unwrap();
    let mut demo = tokio::process::Command::new(tether_bin())
        .args(["demo", "--listen", &format!("127.0.0.1:{data}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--demo-page-listen", &format!("127.0.0.1:{page}")])
        .env("XDG_STATE_HOME", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    within("the demo's scripted client", async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("tether keeps running") {
                return;
            }
        }
        panic!("the demo ended before serving");
    })
    .await;
    // README.md's command as written, on the demo's port: default options.
    let url = format!("ws://127.0.0.1:{data}/demo");
    let out = tokio::process::Command::new(tether_bin()).args(["check", &url]).output().await.unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary.starts_with(&format!("tether check {url}: 4 sessions")), "{summary}");
    for name in ["contiguous", "duplicates", "order", "gaps", "replay", "outcomes", "refusals", "resume", "frames"] {
        assert!(summary.lines().any(|l| l.trim_start().starts_with(&format!("PASS {name} "))), "{name}: {summary}");
    }
    assert!(summary.contains("SKIP upstream    not run (--send not given)"), "{summary}");
    assert!(summary.contains("resume latency: p50 "), "{summary}");
    assert!(summary.trim_end().ends_with("result: PASS"), "{summary}");
    demo.start_kill().unwrap();
    let _ = demo.wait().await;
}

#[tokio::test]
async fn what_cannot_be_checked_exits_2() {
    // Nothing listens there.
    let c = check(&format!("ws://127.0.0.1:{}/", free_port()), &["--resume-timeout", "1s"]).await;
    assert_eq!(c.status, 2, "{}", c.stderr);
    assert!(c.stderr.contains("cannot check"), "{}", c.stderr);
    // A WebSocket server that is not tether: no welcome.
    let plain = backend(Kind::Ticker, Duration::from_millis(10)).await;
    let c = check(&plain, &["--resume-timeout", "1s"]).await;
    assert_eq!(c.status, 2, "{}", c.stderr);
    assert!(c.stderr.contains("no welcome"), "{}", c.stderr);
    // Bad arguments.
    for bad in
        [&["http://x/"][..], &["ws://x/?tether_offset=1"], &["ws://x/", "--sessions", "0"], &["ws://x/", "--insecure"]]
    {
        let out = tokio::process::Command::new(tether_bin()).arg("check").args(bad).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
