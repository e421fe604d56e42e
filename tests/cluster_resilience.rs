//! Three real tether processes, one real backend and (for the load tests) a
//! real HAProxy with `balance roundrobin` and no stickiness: clients drop
//! and resume anywhere, owners are killed or rolled, and no frame is lost,
//! duplicated or reordered, and nothing silently becomes a new session.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Follower, Haproxy, Rng, Seen};
use common::*;
use serde_json::json;

/// Backend connections by request path, and what was sent on each path.
#[derive(Default)]
struct Feeds {
    conns: Mutex<HashMap<String, BackendConn>>,
    sent: Mutex<HashMap<String, u64>>,
}

impl Feeds {
    /// Keeps the newest backend connection of every path (a restarted
    /// session gets a new one).
    fn collect(mut backend: Backend) -> Arc<Feeds> {
        let feeds = Arc::new(Feeds::default());
        let f = feeds.clone();
        tokio::spawn(async move {
            while let Some(conn) = backend.try_next_conn().await {
                f.conns.lock().unwrap().insert(conn.path.clone(), conn);
            }
        });
        feeds
    }

    /// Sends the next `m<n>` on every path's newest connection.
    fn tick(&self) {
        let conns = self.conns.lock().unwrap();
        let mut sent = self.sent.lock().unwrap();
        for (path, conn) in conns.iter() {
            let n = sent.entry(path.clone()).or_default();
            *n += 1;
            conn.text(&format!("m{n}"));
        }
    }

    fn sent(&self, path: &str) -> u64 {
        self.sent.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    async fn wait_paths(&self, n: usize) {
        within("every session's backend connection", async {
            while self.conns.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

/// Spawns one follower per path through `url`, each running until its
/// payload number reaches its goal (set later).
fn followers(
    url: impl Fn(&str) -> String,
    paths: &[String],
    mut drops: impl FnMut() -> Box<dyn FnMut() -> Option<usize> + Send>,
) -> (Vec<Arc<AtomicU64>>, Vec<tokio::task::JoinHandle<Follower>>) {
    let mut goals = Vec::new();
    let mut tasks = Vec::new();
    for path in paths {
        let goal = Arc::new(AtomicU64::new(u64::MAX));
        goals.push(goal.clone());
        let mut f = Follower::new(url(path));
        let d = drops();
        tasks.push(tokio::spawn(async move {
            f.follow(d, move |last| last >= goal.load(Ordering::SeqCst)).await;
            f
        }));
    }
    (goals, tasks)
}

fn summary(all: &[Follower]) -> (HashMap<String, usize>, Seen) {
    let mut outcomes = HashMap::new();
    let mut seen = Seen::default();
    for f in all {
        for o in &f.seen.outcomes {
            *outcomes.entry(o.clone()).or_default() += 1;
        }
        for (k, v) in &f.seen.refusals {
            *seen.refusals.entry(k.clone()).or_default() += v;
        }
        seen.failed_connects += f.seen.failed_connects;
    }
    (outcomes, seen)
}

/// Many clients drop (TCP reset) and resume through a round-robin balancer
/// while the backend streams: every frame arrives once, in order, and every
/// session keeps its one backend connection.
#[tokio::test]
async fn chaos_through_a_round_robin_balancer() {
    const SESSIONS: usize = 30;
    const FRAMES: u64 = 300;
    let started = Instant::now();
    let backend = Backend::start().await;
    let cluster = Cluster::start(&backend.url(), 3, &[]).await;
    let lb = Haproxy::start(&cluster).await;
    let accepted = backend.accepted.clone();
    let feeds = Feeds::collect(backend);
    let paths: Vec<String> = (0..SESSIONS).map(|i| format!("/s{i}")).collect();
    let mut rng = Rng::from_time();
    let (goals, tasks) = followers(
        |p| lb.url(p),
        &paths,
        || {
            let mut r = Rng(rng.range(1, u64::MAX));
            Box::new(move || Some(r.range(2, 40) as usize))
        },
    );
    for g in &goals {
        g.store(FRAMES, Ordering::SeqCst);
    }
    feeds.wait_paths(SESSIONS).await;
    for _ in 0..FRAMES {
        feeds.tick();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(within("every follower to finish", t).await.unwrap());
    }
    let (outcomes, seen) = summary(&all);
    eprintln!("chaos: outcomes {outcomes:?}, {seen:?}, {:?}", started.elapsed());
    assert!(all.iter().all(|f| f.offset == FRAMES && f.last == FRAMES), "lost = 0");
    assert_eq!(accepted.load(Ordering::SeqCst), SESSIONS, "no resume became a restart");
    assert_eq!(outcomes.get("new"), Some(&SESSIONS));
    assert_eq!(outcomes.get("restarted"), None);
    assert_eq!(outcomes.get("gap"), None);
    assert!(seen.refusals.is_empty(), "{seen:?}");
    let forwarded = cluster.sum(r#"tether_forwarded_resumes_total{result="ok"}"#).await;
    let resumes = outcomes["resumed"] as f64;
    assert!(forwarded > resumes / 3.0, "most resumes land on another replica: {forwarded} of {resumes}");
    let secs = cluster.sum("tether_forward_seconds_sum").await;
    let count = cluster.sum("tether_forward_seconds_count").await;
    eprintln!("forwards: {count}, mean forward latency {:.3} ms", secs / count * 1000.0);
    for reason in ["missing", "malformed", "bad_signature", "stale", "not_owner", "wrong_port"] {
        assert_eq!(cluster.sum(&format!(r#"tether_peer_refused_total{{reason="{reason}"}}"#)).await, 0.0);
    }
    lb.stop().await;
    cluster.stop().await;
}

/// The owner is killed (-9) while its clients resume at other replicas:
/// they get `503 owner_unavailable` with `Retry-After` until it is back on
/// its journal, then `restarted` with every journaled frame.
#[tokio::test]
async fn owner_killed_then_back_serves_its_sessions_as_restarted() {
    let mut backend = Backend::start().await;
    let mut cluster = Cluster::start(&backend.url(), 3, &[]).await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let (mut ws, token, conn) = attach(&mut backend, &cluster.url(0, &format!("/s{i}"))).await;
        conn.stream(1, 30);
        // Every frame reached the client, so every frame was journaled.
        expect_stream(&mut ws, 1, 30).await;
        sessions.push((ws, token, conn));
    }
    cluster.kill9(0).await;
    let mut tokens = Vec::new();
    for (i, (ws, token, mut conn)) in sessions.into_iter().enumerate() {
        drop(ws);
        assert!(conn.closed().await.is_none(), "the backend connection died with its owner");
        let r =
            connect(&cluster.url(1 + i % 2, &format!("/s{i}")), &[("tether-session", &token), ("tether-offset", "10")])
                .await
                .unwrap_err();
        assert_eq!(r.status, 503);
        assert_eq!(r.body["error"], "owner_unavailable", "{:?}", r.body);
        assert_eq!(r.headers["retry-after"], "5");
        tokens.push(token);
    }
    assert_eq!(cluster.sum(r#"tether_forwarded_resumes_total{result="unavailable"}"#).await, 3.0);
    assert_eq!(cluster.sum(r#"tether_refusals_total{error="owner_unavailable",status="503"}"#).await, 3.0);

    cluster.up(0).await;
    // The owner reopens its sessions' backend connections as it starts
    // (session.backend_on_restart = "eager"), in its own order.
    let mut reopened = HashMap::new();
    for _ in 0..3 {
        let conn = backend.next_conn().await;
        reopened.insert(conn.path.clone(), conn);
    }
    within("the owner's reopens", async {
        while metric(&cluster.metrics(0).await, r#"tether_backend_reopens_total{result="ok"}"#) < 3.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for (i, token) in tokens.iter().enumerate() {
        let mut ws = resume(&cluster.url(2 - i % 2, &format!("/s{i}")), token, 10).await;
        let (w, token2) = welcome(&mut ws).await;
        assert_eq!(w["outcome"], "restarted", "{w}");
        assert_eq!(w["replay"], json!({"from": 11, "to": 30}));
        assert_eq!(w["backend"], json!({"since": 31, "early": true, "error": null}), "{w}");
        assert_rotated(&token2, token);
        expect_stream(&mut ws, 11, 30).await;
        let conn = &reopened[&format!("/s{i}")];
        conn.stream(31, 32);
        expect_stream(&mut ws, 31, 32).await;
    }
    assert_eq!(backend.count(), 6);
    cluster.stop().await;
}

/// SIGTERM each replica in turn and start it again on its journal, as a
/// StatefulSet rolling update does, while the backend streams to clients
/// behind the balancer: every session resumes (`resumed` or `restarted`),
/// and no journaled frame is lost, duplicated or reordered.
#[tokio::test]
async fn rolling_restart_under_load_loses_nothing() {
    const SESSIONS: usize = 15;
    let started = Instant::now();
    let backend = Backend::start().await;
    let mut cluster = Cluster::start(&backend.url(), 3, &[]).await;
    let lb = Haproxy::start(&cluster).await;
    let accepted = backend.accepted.clone();
    let feeds = Feeds::collect(backend);
    let paths: Vec<String> = (0..SESSIONS).map(|i| format!("/s{i}")).collect();
    let (goals, tasks) = followers(|p| lb.url(p), &paths, || Box::new(|| None));
    feeds.wait_paths(SESSIONS).await;
    let producer = {
        let feeds = feeds.clone();
        tokio::spawn(async move {
            loop {
                feeds.tick();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for i in 0..3 {
        cluster.sigterm(i).await;
        cluster.up(i).await;
    }
    for (g, p) in goals.iter().zip(&paths) {
        g.store(feeds.sent(p) + 10, Ordering::SeqCst);
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(within("every follower to finish", t).await.unwrap());
    }
    producer.abort();
    let (outcomes, seen) = summary(&all);
    eprintln!("rolling: outcomes {outcomes:?}, {seen:?}, {:?}", started.elapsed());
    assert_eq!(outcomes.get("new"), Some(&SESSIONS));
    assert_eq!(outcomes.get("gap"), None);
    // Every owner restarted once (after which it was not restarted again,
    // so its counter saw all its restarts): every session was restarted
    // exactly once, with one new backend connection. A client may miss
    // seeing its `restarted` welcome if the replica it came through drains
    // between the owner's 101 and the welcome; its next resume is `resumed`.
    let restarted = cluster.sum(r#"tether_resumes_total{outcome="restarted",reason="none"}"#).await;
    assert_eq!(restarted, SESSIONS as f64, "each session restarted exactly once");
    assert_eq!(accepted.load(Ordering::SeqCst), 2 * SESSIONS, "a backend connection per start, no more");
    let seen_restarted = outcomes.get("restarted").copied().unwrap_or(0);
    assert!(seen_restarted + seen.failed_connects >= SESSIONS, "{outcomes:?} {seen:?}");
    for f in &all {
        assert!(f.seen.outcomes[1..].iter().all(|o| o == "resumed" || o == "restarted"), "{:?}", f.seen);
    }
    let bad: Vec<_> = seen.refusals.keys().filter(|k| !k.starts_with("503 ")).collect();
    assert!(bad.is_empty(), "{bad:?}");
    lb.stop().await;
    cluster.stop().await;
}
