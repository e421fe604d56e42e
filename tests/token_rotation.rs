//! Tokens rotate on every resume (docs/PROTOCOL.md §8): the welcome carries
//! the next generation, the one before stays good until that is used (a
//! lost welcome), and an older one — say, copied from an access log — is
//! refused with `401 token_superseded`, also after a restart.

mod common;

use common::*;
use serde_json::Value;

const SUPERSEDED: &str = r#"tether_refusals_total{error="token_superseded",status="401"}"#;

/// Asserts the exact refusal of a superseded token.
fn assert_superseded(r: Result<(Ws, http::HeaderMap), Refused>) {
    let r = r.expect_err("a superseded token is refused");
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        r.body,
        serde_json::json!({
            "error": "token_superseded",
            "detail": "this session token was replaced: the session was resumed with a newer token since",
        })
    );
    assert_eq!(r.headers["content-type"], "application/json");
}

fn creds<'a>(token: &'a str, offset: &'a str) -> [(&'static str, &'a str); 2] {
    [("tether-session", token), ("tether-offset", offset)]
}

/// The legitimate client resumes with each new token; a thief holding an
/// older one is refused once its successor was used, and takes nothing
/// over: the client's connection keeps receiving.
#[tokio::test]
async fn a_stolen_token_is_refused_once_its_successor_was_used() {
    let (mut backend, t) = setup().await;
    let (mut ws, t0, conn) = attach(&mut backend, &t.url("/")).await;
    conn.stream(1, 2);
    expect_stream(&mut ws, 1, 2).await;
    drop_abruptly(ws);

    // Resume with t0: answered with t1, in the welcome and the 101.
    let (mut ws, h) = connect(&t.url("/"), &creds(&t0, "2")).await.unwrap();
    let (w, t1) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_rotated(&t1, &t0);
    assert_eq!(h["tether-session"], t1.as_str());
    drop_abruptly(ws);

    // The welcome with t1 was lost: t0 still works, and gets t1 again.
    let mut ws = resume(&t.url("/"), &t0, 2).await;
    let (w, again) = welcome(&mut ws).await;
    assert_eq!((w["outcome"].as_str(), again.as_str()), (Some("resumed"), t1.as_str()));
    drop_abruptly(ws);

    // t1 is used: from now on t0 is refused, as a header or in the URL.
    let mut ws = resume(&t.url("/"), &t1, 2).await;
    let (w, t2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_rotated(&t2, &t1);
    assert_superseded(connect(&t.url("/"), &creds(&t0, "2")).await);
    assert_superseded(connect(&t.url(&format!("/?tether_session={t0}&tether_offset=0")), &[]).await);
    // t1 was the newest used, so it still resumes (its welcome may have
    // been lost); t2 then supersedes it.
    drop_abruptly(ws);
    let mut ws = resume(&t.url("/"), &t2, 2).await;
    let (_, t3) = welcome(&mut ws).await;
    assert_rotated(&t3, &t2);
    assert_superseded(connect(&t.url("/"), &creds(&t1, "2")).await);
    // The refused attempts took nothing over.
    conn.stream(3, 3);
    expect_stream(&mut ws, 3, 3).await;
    let m = t.metrics().await;
    assert_eq!(metric(&m, SUPERSEDED), 3.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="resumed",reason="none"}"#), 4.0);
    t.stop().await;
}

/// A token minted before tokens rotated (v1, no generation) still resumes
/// its session, as generation 0; once the next generation is used it is
/// refused like any other superseded token.
#[tokio::test]
async fn a_token_from_before_rotation_is_generation_0() {
    use base64::Engine as _;
    let (mut backend, t) = setup().await;
    let (ws, t0, _conn) = attach(&mut backend, &t.url("/")).await;
    drop_abruptly(ws);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&t0).unwrap();
    let (id, generation) = token_parts(&t0);
    assert_eq!(generation, 0, "a new session starts at generation 0");
    let v1 = mint_token(u64::from_be_bytes(raw[1..9].try_into().unwrap()), id);

    let mut ws = resume(&t.url("/"), &v1, 0).await;
    let (w, t1) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_rotated(&t1, &t0);
    drop_abruptly(ws);
    let mut ws = resume(&t.url("/"), &t1, 0).await;
    welcome(&mut ws).await;
    assert_superseded(connect(&t.url("/"), &creds(&v1, "0")).await);
    assert_superseded(connect(&t.url("/"), &creds(&t0, "0")).await);
    assert_eq!(metric(&t.metrics().await, SUPERSEDED), 2.0);
    t.stop().await;
}

/// The highest generation used is journaled before the 101: tether killed
/// right after a resume still refuses the older token when it is back, and
/// still accepts the newest used one (whose welcome may have been lost).
#[tokio::test]
async fn the_rule_survives_a_restart() {
    let (mut backend, dir, p) = setup_process().await;
    let (ws, t0, _conn) = attach(&mut backend, &p.url("/")).await;
    drop_abruptly(ws);
    let mut ws = resume(&p.url("/"), &t0, 0).await;
    let (_, t1) = welcome(&mut ws).await;
    drop_abruptly(ws);
    let mut ws = resume(&p.url("/"), &t1, 0).await;
    let (_, t2) = welcome(&mut ws).await;
    p.kill9().await;

    let p = TetherProcess::start(&backend.url(), dir.path(), &[]).await;
    assert_superseded(connect(&p.url("/"), &creds(&t0, "0")).await);
    let mut ws = resume(&p.url("/"), &t1, 0).await;
    let (w, again) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_eq!(again, t2, "the same generation as before the restart");
    drop_abruptly(ws);
    let mut ws = resume(&p.url("/"), &t2, 0).await;
    let (_, t3) = welcome(&mut ws).await;
    assert_rotated(&t3, &t2);
    assert_superseded(connect(&p.url("/"), &creds(&t1, "0")).await);
    let m = http_get(p.admin_addr, "/metrics").await.1;
    assert_eq!(metric(&m, SUPERSEDED), 2.0);
    assert_eq!(w["gap"], Value::Null);
    assert_eq!(p.signal("-TERM").await.code(), Some(0));
}
