//! The token in `Sec-WebSocket-Protocol` (docs/PROTOCOL.md §3), the form
//! that keeps it out of URLs for browsers: the backend never sees tether's
//! entries and sees the application's unchanged, and the 101 always selects
//! a protocol the client offered — the backend's choice, else `tether.v1`,
//! never the token entry.

mod common;

use common::*;

const PROTOCOL: &str = "sec-websocket-protocol";

/// The offered protocols of the client, and `Tether-Offset`.
fn offer<'a>(protocols: &'a str, offset: &'a str) -> [(&'static str, &'a str); 2] {
    [(PROTOCOL, protocols), ("tether-offset", offset)]
}

#[tokio::test]
async fn the_token_travels_in_the_subprotocol_and_never_reaches_the_backend() {
    let opts = BackendOptions { subprotocol: Some("chat.v2".into()), ..Default::default() };
    let mut backend = Backend::start_with(opts).await;
    let t = Tether::start_with(&backend, |c| c.session.linger = std::time::Duration::from_millis(200)).await;

    // A new session, the marker next to the application's protocols: the
    // backend sees the application's, and its choice is the 101's.
    let (mut ws, h) = connect(&t.url("/"), &[(PROTOCOL, "chat.v1, tether.v1, chat.v2")]).await.unwrap();
    let conn = backend.next_conn().await;
    assert_eq!(conn.headers.get_all(PROTOCOL).iter().collect::<Vec<_>>(), ["chat.v1, chat.v2"]);
    assert_eq!(h[PROTOCOL], "chat.v2");
    let (_, t0) = welcome(&mut ws).await;
    conn.stream(1, 2);
    expect_stream(&mut ws, 1, 2).await;
    drop_abruptly(ws);

    // A resume of the live session with the token in the subprotocol and
    // no protocol of the application's: the 101 selects the marker.
    let (mut ws, h) = connect(&t.url("/"), &offer(&format!("tether.v1, tether.session.{t0}"), "2")).await.unwrap();
    assert_eq!(h[PROTOCOL], "tether.v1");
    let (w, t1) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    assert_rotated(&t1, &t0);
    assert_eq!(h["tether-session"], t1.as_str());
    drop_abruptly(ws);

    // Orphaned (linger expired), the session needs a new backend
    // connection: it gets the application's protocols and nothing of tether's.
    wait_metric(t.admin_addr, r#"tether_sessions{state="orphaned"}"#, 1.0).await;
    let offered = format!("tether.session.{t1}, chat.v2, tether.v1");
    let (mut ws, h) = connect(&t.url("/?tether_offset=2"), &[(PROTOCOL, &offered)]).await.unwrap();
    let conn = backend.next_conn().await;
    assert_eq!(conn.headers.get_all(PROTOCOL).iter().collect::<Vec<_>>(), ["chat.v2"]);
    assert!(!format!("{:?} {}", conn.headers, conn.path).contains(&t1), "the backend never sees the token");
    assert_eq!(h[PROTOCOL], "chat.v2");
    let (w, t2) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    assert_rotated(&t2, &t1);
    drop_abruptly(ws);

    // A new session offering only the marker, to a backend that selects
    // nothing it was not offered: the backend gets no protocol header at
    // all, and the 101 selects the marker.
    let (mut ws, h) = connect(&t.url("/"), &[(PROTOCOL, "tether.v1")]).await.unwrap();
    let conn = backend.next_conn().await;
    assert!(conn.headers.get(PROTOCOL).is_none(), "{:?}", conn.headers);
    assert_eq!(h[PROTOCOL], "tether.v1");
    welcome(&mut ws).await;
    t.stop().await;
}

/// A token given twice, in the subprotocol and as a header or in the query,
/// is refused like any other repeated credential, as is a token entry
/// without the marker or two token entries; nothing is counted as resumed.
#[tokio::test]
async fn a_token_given_twice_or_without_the_marker_is_refused() {
    let (mut backend, t) = setup().await;
    let (ws, token, _conn) = attach(&mut backend, &t.url("/")).await;
    drop_abruptly(ws);
    let entry = format!("tether.v1, tether.session.{token}");
    let cases: [(String, Vec<(&str, String)>); 4] = [
        (t.url("/"), vec![(PROTOCOL, entry.clone()), ("tether-session", token.clone()), ("tether-offset", "0".into())]),
        (t.url(&format!("/?tether_session={token}&tether_offset=0")), vec![(PROTOCOL, entry.clone())]),
        (t.url("/"), vec![(PROTOCOL, format!("tether.session.{token}")), ("tether-offset", "0".into())]),
        (t.url("/"), vec![(PROTOCOL, format!("{entry}, tether.session.{token}")), ("tether-offset", "0".into())]),
    ];
    for (url, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = connect(url, &headers).await.expect_err("refused");
        assert_eq!((r.status, r.body["error"].as_str()), (400, Some("malformed_credentials")), "{:?}", r.body);
        assert!(!r.body["detail"].as_str().unwrap().contains(&token), "{:?}", r.body);
    }
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="malformed_credentials",status="400"}"#), 4.0);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="resumed",reason="none"}"#), 0.0);
    // The same token once, in the subprotocol: fine.
    let (mut ws, _) = connect(&t.url("/"), &offer(&entry, "0")).await.unwrap();
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    t.stop().await;
}
