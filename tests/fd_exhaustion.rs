//! Descriptor exhaustion (issue 12, item 2): a tether process limited to
//! 128 file descriptors, flooded with idle connections. While it has none
//! left, the session it already holds keeps streaming and journaling; the
//! failed accepts are counted, not spun on; and once the flood is gone it
//! accepts again by itself, with nothing lost.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

use tokio::net::TcpStream;

/// Far more connections than the 128 descriptors tether may hold.
const FLOOD: usize = 300;

#[tokio::test]
async fn running_out_of_descriptors_wedges_nothing() {
    let mut backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("TETHER_SERVER_HANDSHAKE_TIMEOUT", "2s")];
    let p = TetherProcess::start_with_nofile(&backend.url(), dir.path(), &env, 128).await;
    let (mut a, token, b) = attach(&mut backend, &p.url("/a")).await;
    b.stream(1, 100);
    expect_stream(&mut a, 1, 100).await;

    // Idle connections that never send a request: tether accepts them
    // until it has no descriptor left.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(p.data_addr).await.unwrap());
    }
    p.wait_log("accept failed").await;

    // No descriptor needed: the held session streams on, journaled.
    b.stream(101, 200);
    expect_stream(&mut a, 101, 200).await;

    drop(flood);
    // Accepting resumes by itself: a new session, and the old one resumes
    // with exactly what it had not read.
    let (mut c, _, bc) = attach(&mut backend, &p.url("/c")).await;
    bc.stream(1, 3);
    expect_stream(&mut c, 1, 3).await;
    drop_abruptly(a);
    let mut a = resume(&p.url("/a"), &token, 150).await;
    let (w, _) = welcome(&mut a).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_eq!(w["replay"], json!({"from": 151, "to": 200}));
    expect_stream(&mut a, 151, 200).await;
    assert_eq!(backend.count(), 2, "one backend connection per session");

    let (status, _) = http_get(p.admin_addr, "/livez").await;
    assert_eq!(status, 200);
    let m = http_get(p.admin_addr, "/metrics").await.1;
    assert!(metric(&m, r#"tether_accept_errors_total{listener="data"}"#) >= 1.0);
    assert_eq!(metric(&m, "tether_journal_write_errors_total"), 0.0);
    assert_eq!(metric(&m, "tether_journal_appends_total"), 203.0);
}

/// Frames written while no descriptor is left: 400 × 512 KiB is far more than
/// RocksDB's 64 MiB memtable, so RocksDB must open a new WAL file, and
/// cannot. This is the failure the hostile-client harness found wedging
/// tether at a9e205c (it retried forever, `/livez` said 200).
const BIG: u64 = 400;
const BIG_PAD: usize = 512 * 1024;

/// The journal cannot open a file: tether stops pretending (the client is
/// told `draining` and closed 1012, the process exits 1), and its restart
/// replays every frame it journaled as `restarted`.
#[tokio::test]
async fn a_journal_without_descriptors_exits_and_the_restart_replays() {
    let mut backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Idle connections keep their descriptors for the whole test.
    let env = [("TETHER_SERVER_HANDSHAKE_TIMEOUT", "300s"), ("TETHER_JOURNAL_MAX_SESSION_BYTES", "1073741824")];
    let mut p = TetherProcess::start_with_nofile(&backend.url(), dir.path(), &env, 128).await;
    let (mut a, token, b) = attach(&mut backend, &p.url("/a")).await;
    // Connect until the listen backlog is full too: the kernel then drops
    // further SYNs, so a connect that does not complete at once ends it.
    let mut flood = Vec::with_capacity(FLOOD);
    while let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(p.data_addr)).await {
        flood.push(tcp);
        assert!(flood.len() < 10_000, "tether never ran out of descriptors");
    }
    p.wait_log("accept failed").await;

    b.stream_padded(1, BIG, BIG_PAD);
    let mut last = 0;
    let control = loop {
        let text = next_text(&mut a).await;
        if let Some(c) = text.strip_prefix('#') {
            break serde_json::from_str::<serde_json::Value>(c).unwrap();
        }
        let (seq, payload) = text.split_once(':').unwrap();
        assert_eq!(seq.parse::<u64>().unwrap(), last + 1, "in order, nothing skipped");
        assert!(payload.starts_with(&format!("m{} ", last + 1)) && payload.len() == BIG_PAD);
        last += 1;
    };
    assert_eq!(control, json!({"type": "draining"}));
    assert!(last < BIG, "the memtable switch failed before every frame was journaled");
    assert_eq!(close_code(&mut a).await, 1012);
    let status = within("tether to exit", p.child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(1), "exits non-zero so the supervisor restarts it");
    p.wait_log("journal failed; tether drains and exits so that it is restarted").await;
    drop(flood);

    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    let mut a = resume(&p.url("/a"), &token, 0).await;
    let (w, _) = welcome(&mut a).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(w["replay"]["from"], 1);
    let to = w["replay"]["to"].as_u64().unwrap();
    assert!(to >= last, "replay to {to}, delivered {last}: every delivered frame was journaled");
    eprintln!("delivered {last} of {BIG} before the failure; the restart replays {to}");
    for want in 1..=to {
        let (seq, payload) = data(&mut a).await;
        assert_eq!(seq, want);
        assert!(payload.starts_with(&format!("m{want} ")) && payload.len() == BIG_PAD);
    }
    assert_eq!(p.signal("-TERM").await.code(), Some(0));
}
