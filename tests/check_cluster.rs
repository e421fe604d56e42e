//! `tether check` through a real HAProxy in front of three tether replicas
//! (cluster mode, resumes forwarded to the owner), with a rolling restart in
//! the middle of the run: each replica in turn drains on SIGTERM (its
//! clients get `draining` and 1012) and starts again on its journal. Every
//! check must pass: sessions come back `restarted` on their owner, and
//! resumes that reach the owner while it is down are refused with a 503 and
//! retried.

mod check_common;
mod common;

use std::time::Duration;

use check_common::*;
use common::cluster::{Cluster, Haproxy};
use common::*;

#[tokio::test]
async fn three_replicas_behind_haproxy_pass_through_a_rolling_restart() {
    let upstream = backend(Kind::Ticker, Duration::from_millis(10)).await;
    let env = [
        ("TETHER_SERVER_RETRY_AFTER_SECS", "1"),
        ("TETHER_SESSION_PING_INTERVAL", "50ms"),
        ("TETHER_SESSION_PING_TIMEOUT", "100ms"),
    ];
    let mut cluster = Cluster::start(&upstream, 3, &env).await;
    let lb = Haproxy::start(&cluster).await;
    let url = lb.url("/cluster");
    let mut args = vec!["--duration", "8s", "--sessions", "6", "--send", "--send-interval", "20ms"];
    args.extend_from_slice(QUICK);
    let run = tokio::spawn(async move { check(&url, &args).await });
    // The roll starts once every slot holds a session somewhere.
    within("the checker's sessions", async {
        while cluster.sum(r#"tether_sessions{state="attached"}"#).await < 6.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for i in 0..3 {
        cluster.sigterm(i).await;
        cluster.up(i).await;
    }
    let c = run.await.unwrap();
    c.assert_passed();
    let counts = &c.report["counts"];
    // The roll really reached the checker's sessions.
    assert!(counts["interruptions"]["closed 1012"].as_u64() > Some(0), "{counts:#}");
    assert!(counts["outcomes"]["restarted"].as_u64() > Some(0), "{counts:#}");
    lb.stop().await;
    cluster.stop().await;
}
