//! The upstream guarantee, message by message (docs/PROTOCOL.md §12): the
//! opt-in, stamps removed before the backend, acks, duplicates, the two
//! close codes, refusals, and what `end` says. Real tether, real backend.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const UP: (&str, &str) = ("tether-up", "seq");

/// A stamped text message.
fn stamped(seq: u64, payload: &str) -> Message {
    Message::text(format!("{seq}:{payload}"))
}

/// Reads control frames until an `up_ack` of at least `seq`; acks never go
/// backwards and never pass `seq` (what was sent).
async fn acked_up_to(ws: &mut Ws, seq: u64) -> u64 {
    let mut last = 0;
    while last < seq {
        let c = control(ws).await;
        assert_eq!(c["type"], "up_ack", "{c}");
        let s = c["seq"].as_u64().unwrap();
        assert!(s >= last && s <= seq, "ack {s} after {last}, {seq} sent");
        last = s;
    }
    last
}

fn up_of(w: &Value) -> (u64, u64, u64, bool) {
    let u = &w["up"];
    (u["next"].as_u64().unwrap(), u["acked"].as_u64().unwrap(), u["conn"].as_u64().unwrap(), u["exact"] == true)
}

#[tokio::test]
async fn stamped_messages_reach_the_backend_unstamped_in_order_and_are_acked() {
    let (mut backend, t) = setup().await;
    let (mut ws, headers) = connect(&t.url("/up?room=1&tether_up=seq"), &[]).await.unwrap();
    assert_eq!(headers["tether-up"], "seq");
    let (w, _) = welcome(&mut ws).await;
    let (next, acked, conn, exact) = up_of(&w);
    assert_eq!((next, acked, exact), (1, 0, true), "{w}");
    assert!(conn > 0 && conn < 1 << 53, "{w}");
    let mut b = backend.next_conn().await;
    assert_eq!(b.path, "/up?room=1", "tether_up never reaches the backend");

    ws.send(stamped(1, "hello")).await.unwrap();
    let mut bin = 2u64.to_be_bytes().to_vec();
    bin.extend_from_slice(&[0, 0xff]);
    ws.send(Message::binary(bin)).await.unwrap();
    ws.send(stamped(3, "4:x")).await.unwrap();
    assert_eq!(b.recv().await, Some(Message::text("hello")));
    assert_eq!(b.recv().await, Some(Message::binary(vec![0u8, 0xff])));
    assert_eq!(b.recv().await, Some(Message::text("4:x")));
    assert_eq!(acked_up_to(&mut ws, 3).await, 3);

    let m = wait_metric(t.admin_addr, "tether_upstream_frames_total{result=\"forwarded\"}", 3.0).await;
    assert_eq!(metric(&m, "tether_frames_total{direction=\"upstream\"}"), 3.0);
    assert_eq!(metric(&m, "tether_upstream_welcomes_total{accounting=\"exact\"}"), 1.0);
    assert!(metric(&m, "tether_upstream_acks_total") >= 1.0);
    assert!(metric(&m, "tether_upstream_ack_seconds_count") >= 1.0);
    t.stop().await;
}

#[tokio::test]
async fn without_the_opt_in_nothing_changes() {
    let (mut backend, t) = setup().await;
    let (mut ws, headers) = connect(&t.url("/"), &[]).await.unwrap();
    assert!(headers.get("tether-up").is_none());
    let (w, token) = welcome(&mut ws).await;
    assert!(w.get("up").is_none(), "{w}");
    let mut b = backend.next_conn().await;
    ws.send(Message::text("5:as is")).await.unwrap();
    assert_eq!(b.recv().await, Some(Message::text("5:as is")));
    // The header, like the query parameter, stays between client and tether;
    // a session opts in per connection.
    drop_abruptly(ws);
    let (mut ws, _) = connect(&t.url("/"), &[("tether-session", &token), ("tether-offset", "0"), UP]).await.unwrap();
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(up_of(&w).0, 1, "unstamped messages do not count: {w}");
    ws.send(stamped(1, "now stamped")).await.unwrap();
    assert_eq!(b.recv().await, Some(Message::text("now stamped")));
    t.stop().await;
}

#[tokio::test]
async fn a_bad_opt_in_is_refused_before_any_backend_connection() {
    let (backend, t) = setup().await;
    for (headers, query) in
        [(vec![("tether-up", "acks")], ""), (vec![], "?tether_up=1"), (vec![], "?tether_up=seq&tether_up=seq")]
    {
        let r = connect(&t.url(&format!("/{query}")), &headers).await.unwrap_err();
        assert_eq!((r.status, r.body["error"].as_str()), (400, Some("malformed_up")), "{headers:?} {query}");
    }
    let m = t.metrics().await;
    assert_eq!(metric(&m, r#"tether_refusals_total{error="malformed_up",status="400"}"#), 3.0);
    assert_eq!(backend.count(), 0);
    t.stop().await;

    let (backend, t) = setup_with(|c| c.stamp.mode = tether::config::StampMode::None).await;
    let r = connect(&t.url("/"), &[UP]).await.unwrap_err();
    assert_eq!((r.status, r.body["error"].as_str()), (400, Some("upstream_unsupported")));
    assert_eq!(backend.count(), 0);
    t.stop().await;
}

#[tokio::test]
async fn an_unstamped_message_closes_4003_and_a_skipped_seq_4004_and_the_session_resumes() {
    let (mut backend, t) = setup().await;
    let (mut ws, _) = connect(&t.url("/"), &[UP]).await.unwrap();
    let (_, token) = welcome(&mut ws).await;
    let mut b = backend.next_conn().await;
    ws.send(stamped(1, "one")).await.unwrap();
    ws.send(Message::text("no stamp")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 4003);
    assert_eq!(b.recv().await, Some(Message::text("one")));

    let resume = [("tether-session", token.as_str()), ("tether-offset", "0"), UP];
    let (mut ws, _) = connect(&t.url("/"), &resume).await.unwrap();
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed");
    assert_eq!(up_of(&w).0, 2, "{w}");
    ws.send(stamped(3, "skips 2")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 4004);

    let (mut ws, _) = connect(&t.url("/"), &resume).await.unwrap();
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(up_of(&w).0, 2, "the skipping message was not taken: {w}");
    ws.send(stamped(2, "two")).await.unwrap();
    assert_eq!(b.recv().await, Some(Message::text("two")));
    assert_eq!(backend.count(), 1, "one backend connection throughout");
    let m = t.metrics().await;
    assert_eq!(metric(&m, "tether_upstream_frames_total{result=\"unstamped\"}"), 1.0);
    assert_eq!(metric(&m, "tether_upstream_frames_total{result=\"seq_gap\"}"), 1.0);
    assert_eq!(metric(&m, "tether_client_disconnects_total{kind=\"bad_stamp\"}"), 1.0);
    assert_eq!(metric(&m, "tether_client_disconnects_total{kind=\"seq_gap\"}"), 1.0);
    t.stop().await;
}

#[tokio::test]
async fn a_resend_of_what_was_taken_is_dropped_and_acked_again() {
    let (mut backend, t) = setup().await;
    let (mut ws, _) = connect(&t.url("/"), &[UP]).await.unwrap();
    let (w, token) = welcome(&mut ws).await;
    let conn = up_of(&w).2;
    let mut b = backend.next_conn().await;
    for i in 1..=3 {
        ws.send(stamped(i, &format!("m{i}"))).await.unwrap();
    }
    acked_up_to(&mut ws, 3).await;
    drop_abruptly(ws);

    let (mut ws, _) = connect(&t.url("/"), &[("tether-session", &token), ("tether-offset", "0"), UP]).await.unwrap();
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(up_of(&w), (4, 3, conn, true), "same backend connection: {w}");
    // Resends of what tether already took are dropped, and acked again.
    ws.send(stamped(2, "m2")).await.unwrap();
    ws.send(stamped(3, "m3")).await.unwrap();
    let re = control(&mut ws).await;
    assert_eq!((re["type"].as_str(), re["seq"].as_u64()), (Some("up_ack"), Some(3)), "{re}");
    ws.send(stamped(4, "m4")).await.unwrap();
    for i in 1..=4 {
        assert_eq!(b.recv().await, Some(Message::text(format!("m{i}"))), "each once, in order");
    }
    acked_up_to(&mut ws, 4).await;
    let m = t.metrics().await;
    assert_eq!(metric(&m, "tether_upstream_frames_total{result=\"duplicate\"}"), 2.0);
    assert_eq!(metric(&m, "tether_upstream_frames_total{result=\"forwarded\"}"), 4.0);
    t.stop().await;
}

#[tokio::test]
async fn end_says_what_was_written_and_later_messages_are_not() {
    let (mut backend, t) = setup().await;
    let (mut ws, _) = connect(&t.url("/"), &[UP]).await.unwrap();
    welcome(&mut ws).await;
    let mut b = backend.next_conn().await;
    for i in 1..=3 {
        ws.send(stamped(i, &format!("m{i}"))).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(b.recv().await, Some(Message::text(format!("m{i}"))));
    }
    b.close(1000, "bye");
    let end = loop {
        let c = control(&mut ws).await;
        if c["type"] == "end" {
            break c;
        }
        assert_eq!(c["type"], "up_ack", "{c}");
    };
    assert_eq!(end["up"]["acked"], 3, "{end}");
    assert_eq!(close_code(&mut ws).await, 1000);
    t.stop().await;
}
