//! `session.slow_consumer`: what tether does with a client that falls
//! behind the backend. `gap` (the default) is covered by tests/retention.rs;
//! here `disconnect` and `backpressure`, each against a client that stops
//! reading while the backend streams far more than the socket buffers hold.

mod common;

use common::*;
use tether::config::SlowConsumer;

/// 1 KiB frames: 20,000 of them are ~20 MB, far more than the socket
/// buffers of a client that reads nothing hold (its receive buffer only
/// grows as it reads), and less than `journal.max_session_bytes`.
const PAD: usize = 1024;
const FRAMES: u64 = 20_000;

/// Waits until tether has held a link task back at least once.
async fn held_back(t: &Tether) {
    within("a backpressure hold", async {
        let sample = "tether_slow_consumer_actions_total{action=\"backpressure\"}";
        while metric(&t.metrics().await, sample) < 1.0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn padded_ok(seq: u64, payload: &str) {
    assert!(payload.starts_with(&format!("m{seq} ")), "seq {seq}: {:.20}", payload);
}

#[tokio::test]
async fn disconnect_cuts_a_client_that_fell_too_far_behind_and_it_resumes_without_a_gap() {
    let (mut backend, t) = setup_with(|c| {
        c.session.slow_consumer = SlowConsumer::Disconnect;
        c.session.slow_consumer_lag = 500;
    })
    .await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    b.stream_padded(1, FRAMES, PAD);
    // The client reads nothing until tether has given up on it.
    wait_metric(t.admin_addr, "tether_slow_consumer_actions_total{action=\"disconnect\"}", 1.0).await;
    // What reached its socket before the cut, then the end of the connection
    // (with close 4005 if the close frame got through the full buffers).
    let mut last = 0;
    loop {
        use futures_util::StreamExt;
        match within("the rest of the cut connection", ws.next()).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let (seq, payload) = t.split_once(':').expect("a data frame");
                let seq: u64 = seq.parse().unwrap();
                assert_eq!(seq, last + 1, "in order");
                padded_ok(seq, payload);
                last = seq;
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 4005);
                break;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(last < FRAMES, "cut before the end");
    let m = t.metrics().await;
    assert_eq!(metric(&m, "tether_client_disconnects_total{kind=\"too_slow\"}"), 1.0);
    // The session is intact: a resume from where the client got to, once
    // the backend is done (all of it is then replay, which never counts as
    // falling behind).
    wait_metric(t.admin_addr, "tether_journal_appends_total", FRAMES as f64).await;
    let mut ws = resume(&t.url("/"), &token, last).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "{w}");
    let mut next = last + 1;
    while next <= FRAMES {
        let (seq, payload) = data(&mut ws).await;
        assert_eq!(seq, next);
        padded_ok(seq, &payload);
        next += 1;
    }
    assert_eq!(backend.count(), 1);
    t.stop().await;
}

#[tokio::test]
async fn backpressure_trims_nothing_an_attached_client_was_not_sent() {
    let (mut backend, t) = setup_with(|c| {
        c.session.slow_consumer = SlowConsumer::Backpressure;
        c.journal.max_session_frames = 1024;
    })
    .await;
    let (mut ws, _, b) = attach(&mut backend, &t.url("/")).await;
    b.stream_padded(1, FRAMES, PAD);
    // tether stops reading the backend once the client is 1024 - 128 behind.
    held_back(&t).await;
    let gaps = read_through_gaps(&mut ws, FRAMES, padded_ok).await;
    assert_eq!(gaps, vec![], "nothing trimmed before the client was sent it");
    let m = t.metrics().await;
    assert!(metric(&m, "tether_trimmed_frames_total{reason=\"max_frames\"}") > 0.0, "frames sent were trimmed");
    t.stop().await;
}

#[tokio::test]
async fn backpressure_holds_a_lingering_session_until_its_client_returns() {
    let (mut backend, t) = setup_with(|c| {
        c.session.slow_consumer = SlowConsumer::Backpressure;
        c.journal.max_session_frames = 1024;
    })
    .await;
    let (mut ws, token, b) = attach(&mut backend, &t.url("/")).await;
    b.stream(1, 100);
    expect_stream(&mut ws, 1, 100).await;
    wait_metric(t.admin_addr, "tether_delivery_lag_frames", 0.0).await;
    drop_abruptly(ws);
    wait_metric(t.admin_addr, "tether_sessions{state=\"detached\"}", 1.0).await;
    b.stream_padded(101, FRAMES, PAD);
    held_back(&t).await;
    let mut ws = resume(&t.url("/"), &token, 100).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "resumed", "no gap: {w}");
    let mut next = 101;
    while next <= FRAMES {
        let text = next_text(&mut ws).await;
        assert!(!text.starts_with('#'), "no control frame mid-stream: {text:.80}");
        let (seq, payload) = text.split_once(':').unwrap();
        assert_eq!(seq.parse::<u64>().unwrap(), next);
        padded_ok(next, payload);
        next += 1;
    }
    t.stop().await;
}
