//! Owner forwarding between real tether processes (docs/SCALING.md): a
//! resume that reaches another replica is served by the owner exactly as if
//! the client had come straight to it; the peer path refuses anyone who is
//! not a replica of the same cluster; an owner that left the configuration
//! is an explicit `journal_lost` gap.

mod common;

use common::cluster::{free_port, Cluster};
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const FORWARDED_OK: &str = r#"tether_forwarded_resumes_total{result="ok"}"#;

/// A session made on t0 resumes through t1 and t2: same outcome and replay
/// as at the owner, same token, the backend never sees a second connection,
/// and client → backend messages flow through the splice.
#[tokio::test]
async fn a_resume_at_any_replica_is_served_by_the_owner() {
    let mut backend = Backend::start().await;
    let cluster = Cluster::start(&backend.url(), 3, &[]).await;
    let (mut ws, token, conn) = attach(&mut backend, &cluster.url(0, "/feed?room=1")).await;
    conn.stream(1, 10);
    // The client processes 1..=4; receiving 5..=10 proves they are journaled.
    expect_stream(&mut ws, 1, 4).await;
    expect_stream(&mut ws, 5, 10).await;
    drop_abruptly(ws);

    let mut ws = resume(&cluster.url(1, "/feed?room=1"), &token, 4).await;
    let (w, token1) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_eq!(w["replay"], json!({"from": 5, "to": 10}));
    assert_rotated(&token1, &token);
    expect_stream(&mut ws, 5, 10).await;
    conn.stream(11, 12);
    expect_stream(&mut ws, 11, 12).await;
    ws.send(Message::text("through the splice")).await.unwrap();
    let mut conn = conn;
    assert_eq!(conn.recv().await, Some(Message::text("through the splice")));
    drop_abruptly(ws);

    // The query-parameter form of the credentials is forwarded as well.
    let url = format!("{}&tether_session={token}&tether_offset=12", cluster.url(2, "/feed?room=1"));
    let mut ws = open(&url, &[]).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    conn.stream(13, 13);
    expect_stream(&mut ws, 13, 13).await;
    assert_eq!(backend.count(), 1, "no resume became a new backend connection");

    let m1 = cluster.metrics(1).await;
    assert_eq!(metric(&m1, FORWARDED_OK), 1.0);
    assert_eq!(metric(&m1, "tether_forward_seconds_count"), 1.0);
    assert_eq!(metric(&cluster.metrics(2).await, FORWARDED_OK), 1.0);
    let m0 = cluster.metrics(0).await;
    assert_eq!(metric(&m0, r#"tether_resumes_total{outcome="resumed",reason="none"}"#), 2.0);
    assert_eq!(metric(&m0, FORWARDED_OK), 0.0);
    // One log line per forward, with both instance ids and no token.
    let forwards_in = |logs: &[String]| -> Vec<Value> {
        logs.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "forwarded resume")
            .collect()
    };
    // Log lines reach the test through a pipe: await them.
    let logs = within("two forward log lines", async {
        loop {
            let logs = cluster.logs();
            if forwards_in(&logs).len() >= 2 {
                return logs;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let forwards = forwards_in(&logs);
    assert_eq!(forwards.len(), 2, "{forwards:?}");
    assert!(forwards.iter().all(|v| v["fields"]["to"] == "t0" && v["fields"]["result"] == "ok"));
    assert!(forwards.iter().any(|v| v["fields"]["from"] == "t1"));
    assert!(!logs.iter().any(|l| l.contains(&token)), "tokens are never logged");

    // Rotation is the owner's: the newer token, in Sec-WebSocket-Protocol
    // through t1, supersedes the first, which t2 then forwards to the
    // owner's refusal.
    let protocols = format!("tether.v1, tether.session.{token1}");
    let headers = [("sec-websocket-protocol", protocols.as_str()), ("tether-offset", "13")];
    let (mut ws, h) = connect(&cluster.url(1, "/feed?room=1"), &headers).await.unwrap();
    assert_eq!(h["sec-websocket-protocol"], "tether.v1");
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_rotated(&token2, &token1);
    let r = connect(&cluster.url(2, "/feed?room=1"), &[("tether-session", &token), ("tether-offset", "13")]).await;
    let r = r.expect_err("refused");
    assert_eq!((r.status, r.body["error"].as_str()), (401, Some("token_superseded")), "{:?}", r.body);
    let superseded = r#"tether_refusals_total{error="token_superseded",status="401"}"#;
    assert_eq!(metric(&cluster.metrics(0).await, superseded), 1.0);
    assert_eq!(backend.count(), 1);
    cluster.stop().await;
}

/// A forwarded resume that restarts an orphaned session opens the new
/// backend connection with the client's own address in `X-Forwarded-For`,
/// exactly as the owner would for a direct client; refusals of the owner
/// reach the client as they are.
#[tokio::test]
async fn the_owner_sees_the_client_as_if_it_came_straight() {
    let mut backend = Backend::start().await;
    let cluster = Cluster::start(&backend.url(), 2, &[("TETHER_SESSION_LINGER", "100ms")]).await;
    let (mut ws, token, conn) = attach(&mut backend, &cluster.url(0, "/x")).await;
    conn.stream(1, 3);
    expect_stream(&mut ws, 1, 3).await;
    drop_abruptly(ws);
    wait_metric(cluster.nodes[0].admin, r#"tether_sessions{state="orphaned"}"#, 1.0).await;

    // The owner's own refusal (409 offset_ahead) is relayed unchanged.
    let r = connect(&cluster.url(1, "/x"), &[("tether-session", &token), ("tether-offset", "99")]).await.unwrap_err();
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"], "offset_ahead", "{:?}", r.body);
    assert_eq!(metric(&cluster.metrics(1).await, r#"tether_forwarded_resumes_total{result="refused"}"#), 1.0);

    let headers = [("tether-session", token.as_str()), ("tether-offset", "1"), ("x-forwarded-for", "10.9.9.9")];
    let (mut ws, h) = connect(&cluster.url(1, "/x"), &headers).await.unwrap();
    assert_eq!(h["tether-outcome"], "restarted");
    assert_eq!(h["x-backend"], "yes", "the backend's 101 headers come through the hop");
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    expect_stream(&mut ws, 2, 3).await;
    let conn2 = backend.next_conn().await;
    assert_eq!(conn2.path, "/x");
    assert_eq!(conn2.headers["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert!(conn2.headers.get("tether-peer").is_none(), "the peer signature stops at the owner");
    conn2.stream(4, 4);
    expect_stream(&mut ws, 4, 4).await;
    cluster.stop().await;
}

/// Nobody but a replica gets through the peer path: no signature, a forged
/// one, or a signature sent to the public port are refused with a status, a
/// JSON body and a metric; and another cluster refuses this one's tokens even
/// with the same secret.
#[tokio::test]
async fn the_peer_path_refuses_clients_and_other_clusters() {
    let mut backend = Backend::start().await;
    let cluster = Cluster::start(&backend.url(), 2, &[]).await;
    let (_ws, token, _conn) = attach(&mut backend, &cluster.url(0, "/")).await;
    let creds = [("tether-session", token.as_str()), ("tether-offset", "0")];
    let refused = |sample: &str| format!(r#"tether_peer_refused_total{{reason="{sample}"}}"#);

    // The peer port without a signature.
    let peer1 = format!("ws://{}/", cluster.nodes[1].peer);
    let r = connect(&peer1, &creds).await.unwrap_err();
    assert_eq!((r.status, r.body["error"].as_str()), (403, Some("peer_refused")), "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("Tether-Peer"));
    // A forged signature, claiming the client is 6.6.6.6.
    let forged = "from=t0; to=t1; ts=1; sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let mut h = creds.to_vec();
    h.extend([("tether-peer", forged), ("x-forwarded-for", "6.6.6.6")]);
    let r = connect(&peer1, &h).await.unwrap_err();
    assert_eq!((r.status, r.body["error"].as_str()), (403, Some("peer_refused")));
    // A signature on the public port.
    let r = connect(&cluster.url(1, "/"), &h).await.unwrap_err();
    assert_eq!((r.status, r.body["error"].as_str()), (403, Some("peer_refused")));
    assert!(r.body["detail"].as_str().unwrap().contains("peer port"), "{:?}", r.body);
    let m1 = cluster.metrics(1).await;
    assert_eq!(metric(&m1, &refused("missing")), 1.0);
    assert_eq!(metric(&m1, &refused("bad_signature")), 1.0);
    assert_eq!(metric(&m1, &refused("wrong_port")), 1.0);
    assert_eq!(metric(&m1, r#"tether_refusals_total{error="peer_refused",status="403"}"#), 3.0);
    assert_eq!(backend.count(), 1, "no refused request reached the backend");

    // Another cluster, same secret, different cluster.name: 401.
    let other = Cluster::start(&backend.url(), 1, &[("TETHER_CLUSTER_NAME", "staging")]).await;
    let r = connect(&other.url(0, "/"), &creds).await.unwrap_err();
    assert_eq!((r.status, r.body["error"].as_str()), (401, Some("invalid_token")), "{:?}", r.body);
    other.stop().await;
    cluster.stop().await;
}

/// An owner that is no longer in the configuration (scaled down) cannot be
/// asked: the resume is an explicit `journal_lost` gap with a new session,
/// never a silent new session, and is counted as `gone`.
#[tokio::test]
async fn an_owner_scaled_away_is_a_journal_lost_gap() {
    let mut backend = Backend::start().await;
    let mut cluster = Cluster::start(&backend.url(), 3, &[]).await;
    let (mut ws, token, conn) = attach(&mut backend, &cluster.url(2, "/")).await;
    conn.stream(1, 2);
    expect_stream(&mut ws, 1, 2).await;
    drop_abruptly(ws);
    cluster.sigterm(2).await;
    // t0 restarts with a configuration that no longer lists t2.
    let peers = format!("{{ t0 = \"{}\", t1 = \"{}\" }}", cluster.nodes[0].peer, cluster.nodes[1].peer);
    cluster.set_env(0, "TETHER_CLUSTER_PEERS", &peers);
    cluster.sigterm(0).await;
    cluster.up(0).await;

    let (mut ws, h) =
        connect(&cluster.url(0, "/"), &[("tether-session", &token), ("tether-offset", "2")]).await.unwrap();
    assert_eq!(h["tether-gap"], "reason=journal_lost; from=3; to=unknown; first_available=1");
    let (w, token2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "gap");
    assert_ne!(token2, token);
    let m = cluster.metrics(0).await;
    assert_eq!(metric(&m, r#"tether_forwarded_resumes_total{result="gone"}"#), 1.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="gap",reason="journal_lost"}"#), 1.0);
    cluster.stop().await;
}

/// `sealed` mode (pods without names): the owner's address travels sealed
/// in the token, unreadable; a resume at another replica is forwarded to it,
/// and an owner whose address is not among `members_dns`'s is gone.
#[tokio::test]
async fn sealed_mode_forwards_to_the_sealed_owner() {
    let mut backend = Backend::start().await;
    let sealed = |ip: &str| {
        let peer = format!("{ip}:{}", free_port());
        vec![
            ("TETHER_CLUSTER_MODE".to_owned(), "sealed".to_owned()),
            ("TETHER_CLUSTER_PEER_LISTEN".to_owned(), peer.clone()),
            ("TETHER_CLUSTER_ADVERTISE".to_owned(), peer),
            ("TETHER_CLUSTER_MEMBERS_DNS".to_owned(), "localhost".to_owned()),
        ]
    };
    let start = |env: Vec<(String, String)>, dir: std::path::PathBuf, url: String| async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TetherProcess::start(&url, &dir, &env).await
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = start(sealed("127.0.0.1"), dirs[0].path().into(), backend.url()).await;
    let b = start(sealed("127.0.0.1"), dirs[1].path().into(), backend.url()).await;
    // 127.0.0.2 is not an address of `localhost`: a pod that left the Service.
    let gone = start(sealed("127.0.0.2"), dirs[2].path().into(), backend.url()).await;

    let (mut ws, token, conn) = attach(&mut backend, &a.url("/")).await;
    conn.stream(1, 3);
    expect_stream(&mut ws, 1, 3).await;
    drop_abruptly(ws);
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
    assert_eq!(raw[0], 4, "a v4 token");
    assert!(!String::from_utf8_lossy(&raw).contains("127.0.0.1"), "the owner address is sealed");

    let mut ws = resume(&b.url("/"), &token, 1).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    expect_stream(&mut ws, 2, 3).await;
    assert_eq!(metric(&http_get(b.admin_addr, "/metrics").await.1, FORWARDED_OK), 1.0);

    let (_ws, token_gone, _) = attach(&mut backend, &gone.url("/")).await;
    let (_, h) = connect(&b.url("/"), &[("tether-session", &token_gone), ("tether-offset", "0")]).await.unwrap();
    assert_eq!(h["tether-outcome"], "gap");
    assert!(h["tether-gap"].to_str().unwrap().starts_with("reason=journal_lost"));
    for p in [a, b, gone] {
        p.kill9().await;
    }
}

/// Cluster mode without a shared `token.secret` cannot work (each replica
/// would generate its own): tether refuses to start, with one line and
/// exit status 2.
#[tokio::test]
async fn cluster_mode_without_a_secret_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("TETHER_TOKEN_SECRET")
        .env("TETHER_CLUSTER_MODE", "static")
        .env("TETHER_CLUSTER_INSTANCE", "t0")
        .env("TETHER_CLUSTER_PEERS", r#"{ t0 = "127.0.0.1:1" }"#)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs token.secret"), "{stderr}");
}

/// `Tether-Peer` as docs/PROTOCOL.md §15 builds it, signed with [`SECRET`].
fn peer_signature(cluster: &str, from: &str, to: &str, ts: u64, token: &str, xff: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(format!("tether-cluster:{cluster}").as_bytes()), SECRET.as_bytes())
        .expand(b"peer-auth-v1", &mut key)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(b"tether-peer-v1");
    for part in [cluster, from, to] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac.update(&ts.to_be_bytes());
    for part in [token, xff] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("from={from}; to={to}; ts={ts}; sig={sig}")
}

/// A correctly signed request is still refused when it is old (`stale`), or
/// when it reaches a replica that does not own the session: a forwarded
/// resume is never forwarded again (`421 not_owner`). A fresh one for the
/// owner is served.
#[tokio::test]
async fn signed_requests_are_refused_when_stale_or_at_a_second_hop() {
    let mut backend = Backend::start().await;
    let cluster = Cluster::start(&backend.url(), 3, &[]).await;
    let (mut ws, token, conn) = attach(&mut backend, &cluster.url(0, "/")).await;
    conn.stream(1, 2);
    expect_stream(&mut ws, 1, 2).await;
    drop_abruptly(ws);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let creds = |sig: &str| {
        vec![
            ("tether-session".to_owned(), token.clone()),
            ("tether-offset".to_owned(), "1".to_owned()),
            ("x-forwarded-for".to_owned(), "10.1.1.1".to_owned()),
            ("tether-peer".to_owned(), sig.to_owned()),
        ]
    };
    let send = |url: String, h: Vec<(String, String)>| async move {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        connect(&url, &h).await
    };
    let peer = |i: usize| format!("ws://{}/", cluster.nodes[i].peer);

    // t2 pretends to forward to t1, which does not own the session.
    let hop = peer_signature("tether", "t2", "t1", now, &token, "10.1.1.1");
    let r = send(peer(1), creds(&hop)).await.unwrap_err();
    assert_eq!((r.status, r.body["error"].as_str()), (421, Some("not_owner")), "{:?}", r.body);
    let stale = peer_signature("tether", "t1", "t0", now - 3600, &token, "10.1.1.1");
    let r = send(peer(0), creds(&stale)).await.unwrap_err();
    assert_eq!((r.status, r.body["error"].as_str()), (403, Some("peer_refused")));
    assert!(r.body["detail"].as_str().unwrap().contains("too old"), "{:?}", r.body);
    assert_eq!(metric(&cluster.metrics(1).await, r#"tether_peer_refused_total{reason="not_owner"}"#), 1.0);
    assert_eq!(metric(&cluster.metrics(0).await, r#"tether_peer_refused_total{reason="stale"}"#), 1.0);

    let fresh = peer_signature("tether", "t1", "t0", now, &token, "10.1.1.1");
    let (mut ws, _) = send(peer(0), creds(&fresh)).await.expect("a peer's request is served");
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    expect_stream(&mut ws, 2, 2).await;
    cluster.stop().await;
}
