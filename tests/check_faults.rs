//! `tether check` must catch real faults: tether built with the test-only
//! `fault-injection` feature (scripts/build-faulty) plants one, chosen by
//! TETHER_FAULT, in its delivery path (src/fault.rs). Each must be reported
//! by the check that names it, and the run must exit 1.

mod check_common;
mod common;

use std::time::Duration;

use check_common::*;
use common::*;

/// Runs the checker against a faulty tether and returns the failed checks.
async fn caught(fault: &str) -> Vec<String> {
    let upstream = backend(Kind::Ticker, Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = tokio::process::Command::new(faulty_bin());
    let t =
        TetherProcess::launch(cmd, &upstream, dir.path(), ("127.0.0.1:0", "127.0.0.1:0"), &[("TETHER_FAULT", fault)])
            .await;
    let mut args = vec!["--duration", "2s", "--sessions", "2"];
    args.extend_from_slice(QUICK);
    let c = check(&t.url("/"), &args).await;
    t.kill9().await;
    assert_eq!(c.status, 1, "TETHER_FAULT={fault} was not caught: {:#}\n{}", c.report, c.stderr);
    assert_eq!(c.report["passed"], false);
    c.failed()
}

#[tokio::test]
async fn a_skipped_frame_fails_contiguous() {
    assert_eq!(caught("skip").await, ["contiguous"]);
}

#[tokio::test]
async fn a_duplicated_frame_fails_duplicates() {
    assert_eq!(caught("duplicate").await, ["duplicates"]);
}

#[tokio::test]
async fn a_reordered_replay_fails_order() {
    assert_eq!(caught("reorder-replay").await, ["order"]);
}

#[tokio::test]
async fn a_replay_with_other_bytes_fails_replay() {
    assert_eq!(caught("corrupt-replay").await, ["replay"]);
}

#[tokio::test]
async fn a_welcome_with_the_wrong_outcome_fails_outcomes() {
    assert_eq!(caught("wrong-outcome").await, ["outcomes"]);
}

/// The healthy binary, built after the faulty one, has no fault to plant:
/// it ignores TETHER_FAULT (and so is really the healthy build).
#[tokio::test]
async fn the_healthy_binary_ignores_tether_fault() {
    let upstream = backend(Kind::Ticker, Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let t = TetherProcess::start(&upstream, dir.path(), &[("TETHER_FAULT", "skip")]).await;
    let mut args = vec!["--duration", "2s", "--sessions", "2"];
    args.extend_from_slice(QUICK);
    check(&t.url("/"), &args).await.assert_passed();
    // And the faulty build is not the same file.
    assert_ne!(std::fs::read(tether_bin()).unwrap(), std::fs::read(faulty_bin()).unwrap());
    t.kill9().await;
}
