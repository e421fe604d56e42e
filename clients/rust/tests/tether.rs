//! tether-client against a real tether, a real backend and a TCP proxy that
//! the tests cut. Run with the workspace's release `tether` built (or
//! `TETHER_BIN` set).

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{bounded, Backend, Cmd, Proxy, Tether};
use tether_client::{Backoff, Client, Event, Outcome, Payload, StampMode, State, TokenIn};

fn fast() -> Backoff {
    Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(100), factor: 2.0 }
}

async fn next(c: &mut Client) -> Event {
    bounded("the next event", c.next()).await.expect("the stream ended").expect("a client error")
}

/// The next data message, skipping connection events.
async fn next_message(c: &mut Client) -> tether_client::Message {
    loop {
        if let Event::Message(m) = next(c).await {
            return m;
        }
    }
}

async fn welcome(c: &mut Client) -> tether_client::Welcome {
    loop {
        match next(c).await {
            Event::Welcome(w) => return w,
            Event::Disconnected { .. } => {}
            other => panic!("expected a welcome, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seq_exactly_once_in_order_across_cuts() {
    const FRAMES: u64 = 3000;
    const CUTS: usize = 12;
    let started = Instant::now();
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let proxy = Proxy::start(tether.data_port).await;
    // Reconnecting at once (no backoff) is allowed too.
    let immediate = Backoff { initial: Duration::ZERO, max: Duration::ZERO, factor: 2.0 };
    let mut client = Client::builder(format!("ws://127.0.0.1:{}/feed", proxy.port)).backoff(immediate).build().unwrap();
    welcome(&mut client).await;
    let conn = backend.next_conn().await;
    conn.cmd.send(Cmd::Send { from: 1, count: FRAMES, batch: 10 }).unwrap();

    let mut seqs = Vec::new();
    let (mut cuts, mut welcomes, mut replayed) = (0, 1, 0);
    let mut open = true; // welcomed since the last cut
    let mut cut_due = false;
    while seqs.len() < FRAMES as usize {
        match next(&mut client).await {
            Event::Message(m) => {
                assert_eq!(m.payload, Payload::Text(format!("m{}", m.seq)));
                replayed += u64::from(m.replay);
                seqs.push(m.seq);
                // Cut points are spread over the first 90% of the stream.
                if cuts < CUTS && seqs.len() % (FRAMES as usize * 9 / 10 / CUTS) == 0 {
                    cut_due = true;
                }
            }
            Event::Welcome(w) => {
                assert_eq!(w.outcome, Outcome::Resumed, "{w:?}");
                welcomes += 1;
                open = true;
            }
            Event::Disconnected { .. } => open = false,
            other => panic!("unexpected {other:?}"),
        }
        // Only a cut of a welcomed, live connection counts.
        if cut_due && open && proxy.cut() > 0 {
            cuts += 1;
            cut_due = false;
            open = false;
        }
    }
    let expected: Vec<u64> = (1..=FRAMES).collect();
    assert_eq!(seqs, expected, "every seq once, in order");
    assert!(cuts >= 10, "only {cuts} cuts");
    assert_eq!(*backend.accepted.lock().unwrap(), 1, "the backend connection survived every cut");
    assert_eq!(client.offset(), FRAMES - 1, "the last message is acknowledged at the next poll");
    // The last cut can come after the client received the whole stream but
    // before the test read it all: the resume then replays frames that sit
    // queued behind seq FRAMES, counted as received but not yet as
    // duplicates. One more frame, read to the end, flushes them through.
    conn.cmd.send(Cmd::Send { from: FRAMES + 1, count: 1, batch: 10 }).unwrap();
    loop {
        let m = next_message(&mut client).await;
        assert!(m.seq <= FRAMES + 1, "{m:?}");
        if m.seq == FRAMES + 1 {
            break;
        }
    }
    let stats = client.stats();
    assert_eq!(stats.delivered, FRAMES + 1);
    assert_eq!(stats.received, FRAMES + 1 + stats.duplicates);
    println!(
        "cuts: {cuts}, connections: {welcomes}, frames: {FRAMES}, received: {}, duplicates dropped: {}, \
         delivered: {}, replayed: {replayed}, {:?}",
        stats.received,
        stats.duplicates,
        stats.delivered,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_report_names_the_lost_range_then_end() {
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "prefix", 10).await;
    let proxy = Proxy::start(tether.data_port).await;
    let mut client = Client::builder(format!("ws://127.0.0.1:{}/feed", proxy.port))
        .backoff(fast())
        .max_failed_resumes(1_000_000)
        .build()
        .unwrap();
    welcome(&mut client).await;
    let mut conn = backend.next_conn().await;
    conn.cmd.send(Cmd::Send { from: 1, count: 5, batch: 5 }).unwrap();
    for seq in 1..=5 {
        assert_eq!(next_message(&mut client).await.seq, seq);
    }
    client.ack();
    assert_eq!(client.offset(), 5);

    // The tunnel: the connection drops and stays down while 200 more frames
    // arrive; retention keeps at least the last 10 (trimmed in chunks of 64
    // frames, so at most 74).
    proxy.block(true);
    assert_eq!(proxy.cut(), 1);
    conn.cmd.send(Cmd::Send { from: 6, count: 200, batch: 10 }).unwrap();
    tether.journaled(205).await;
    proxy.block(false);

    let w = welcome(&mut client).await;
    assert_eq!(w.outcome, Outcome::Gap);
    let gap = match next(&mut client).await {
        Event::Gap(g) => g,
        other => panic!("expected the gap report, got {other:?}"),
    };
    assert_eq!(gap.reason, "trimmed");
    assert!(!gap.new_session && !gap.mid_stream);
    let first = gap.first_available;
    assert!((205 - 74 + 1..=205 - 10 + 1).contains(&first), "first available {first}");
    assert_eq!((gap.requested_offset, gap.lost.from, gap.lost.to), (5, 6, Some(first - 1)));
    for seq in first..=205 {
        let m = next_message(&mut client).await;
        assert_eq!((m.seq, m.replay), (seq, true));
    }
    assert_eq!(client.offset(), 204);

    conn.cmd.send(Cmd::Close(1000, "bye".into())).unwrap();
    assert_eq!(next(&mut client).await, Event::End { code: 1000, reason: "bye".into() });
    assert!(bounded("the stream's end", client.next()).await.is_none());
    assert_eq!(client.state(), State::Ended);
    assert_eq!(bounded("backend close", conn.closed.recv()).await, Some(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_stops_the_first_client_and_close_ends_the_session() {
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let url = format!("{}/feed", tether.url);
    let mut a = Client::builder(&url).backoff(fast()).build().unwrap();
    let w = welcome(&mut a).await;
    assert_eq!(w.outcome, Outcome::New);
    let mut conn = backend.next_conn().await;
    conn.cmd.send(Cmd::Send { from: 1, count: 3, batch: 3 }).unwrap();
    for seq in 1..=3 {
        assert_eq!(next_message(&mut a).await.seq, seq);
    }
    a.ack();

    let mut b = Client::builder(&url).backoff(fast()).resume(a.token().unwrap(), a.offset()).build().unwrap();
    let wb = welcome(&mut b).await;
    assert_eq!(wb.outcome, Outcome::Resumed);
    assert_ne!(wb.session, w.session, "every resume brings the session's next token");
    assert_eq!(next(&mut a).await, Event::TakenOver);
    assert!(bounded("a's end", a.next()).await.is_none());
    assert_eq!(a.state(), State::TakenOver);

    // b carries on where a stopped, and sends upstream.
    conn.cmd.send(Cmd::Send { from: 4, count: 1, batch: 1 }).unwrap();
    assert_eq!(next_message(&mut b).await.seq, 4);
    b.send("hello").unwrap();
    b.close("done").await;
    assert_eq!(bounded("backend close", conn.closed.recv()).await, Some(Some((1000, "done".into()))));
    assert_eq!(b.state(), State::Closed);
    assert!(b.send("late").is_err());
}

/// Every welcome brings a new token and the client resumes with the latest
/// one (in `Sec-WebSocket-Protocol`, or `Tether-Session` with
/// `TokenIn::Header`): once it did, the first token is refused (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_and_a_superseded_one_is_refused() {
    for token_in in [TokenIn::Protocol, TokenIn::Header] {
        let mut backend = Backend::start().await;
        let tether = Tether::start(&backend.url, "prefix", 100_000).await;
        let proxy = Proxy::start(tether.data_port).await;
        let url = format!("ws://127.0.0.1:{}/feed", proxy.port);
        let mut a = Client::builder(&url).backoff(fast()).token_in(token_in).build().unwrap();
        let mut tokens = vec![welcome(&mut a).await.session];
        let _conn = backend.next_conn().await;
        for _ in 0..2 {
            assert_eq!(proxy.cut(), 1);
            let w = welcome(&mut a).await;
            assert_eq!(w.outcome, Outcome::Resumed, "{token_in:?}");
            assert_eq!(a.token().as_ref(), Some(&w.session));
            tokens.push(w.session);
        }
        assert_eq!(tokens.iter().collect::<std::collections::HashSet<_>>().len(), 3, "{token_in:?}");
        // a resumed with tokens[1]: tokens[0] is superseded.
        let mut thief = Client::builder(&url).backoff(fast()).resume(tokens[0].clone(), 0).build().unwrap();
        let reset = loop {
            match next(&mut thief).await {
                Event::Reset(r) => break r,
                Event::Disconnected { .. } => {}
                other => panic!("expected a reset, got {other:?}"),
            }
        };
        assert_eq!(reset.reason, tether_client::ResetReason::Refused(401), "{token_in:?}");
        // Given up, it starts a session of its own: a's is not taken over.
        assert_eq!(welcome(&mut thief).await.outcome, Outcome::New);
        assert_eq!(*backend.accepted.lock().unwrap(), 2);
        assert_eq!(a.state(), State::Open, "{token_in:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_stamps_and_a_refused_resume_resets() {
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "json", 100_000).await;
    let url = format!("{}/feed", tether.url);
    // An offset ahead of the session: tether answers 409, which no retry fixes.
    let mut first = Client::builder(&url).build().unwrap();
    let w = welcome(&mut first).await;
    let _conn = backend.next_conn().await;
    drop(first);
    let mut c =
        Client::builder(&url).stamp_mode(StampMode::Json).backoff(fast()).resume(w.session, 99).build().unwrap();
    let reset = loop {
        match next(&mut c).await {
            Event::Reset(r) => break r,
            Event::Disconnected { .. } => {}
            other => panic!("expected a reset, got {other:?}"),
        }
    };
    assert_eq!(reset.reason, tether_client::ResetReason::Refused(409));
    assert_eq!(reset.last_offset, 99);
    let w = welcome(&mut c).await;
    assert_eq!(w.outcome, Outcome::New);
    let conn = backend.next_conn().await;
    conn.cmd.send(Cmd::Send { from: 1, count: 1, batch: 1 }).unwrap();
    // `m1` is not JSON: the prefix form, in json mode too.
    let m = next_message(&mut c).await;
    assert_eq!((m.seq, m.payload), (1, Payload::Text("m1".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_brings_back_what_was_received_but_not_acknowledged_and_it_is_dropped() {
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let proxy = Proxy::start(tether.data_port).await;
    let mut client = Client::builder(format!("ws://127.0.0.1:{}/feed", proxy.port)).backoff(fast()).build().unwrap();
    welcome(&mut client).await;
    let conn = backend.next_conn().await;
    conn.cmd.send(Cmd::Send { from: 1, count: 20, batch: 20 }).unwrap();
    assert_eq!(next_message(&mut client).await.seq, 1);
    client.ack();
    // 2..=20 are received and queued, not yet acknowledged.
    bounded("20 frames received", async {
        while client.stats().received < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await; // polling a counter
        }
    })
    .await;
    assert_eq!(proxy.cut(), 1);
    // The client resumes with offset 1 before the application reads on.
    bounded("the resume", async {
        while client.stats().connections < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await; // polling a counter
        }
    })
    .await;
    for seq in 2..=20 {
        assert_eq!(next_message(&mut client).await.seq, seq);
    }
    let w = welcome(&mut client).await;
    assert_eq!((w.outcome, w.replay.map(|r| (r.from, r.to))), (Outcome::Resumed, Some((2, 20))));
    assert_eq!(client.offset(), 20, "acknowledged by the poll that read the welcome");
    conn.cmd.send(Cmd::Send { from: 21, count: 1, batch: 1 }).unwrap();
    let m = next_message(&mut client).await;
    assert_eq!((m.seq, m.replay), (21, false));
    let stats = client.stats();
    assert_eq!((stats.received, stats.duplicates, stats.delivered), (40, 19, 21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_then_1012_reconnects_and_the_session_restarts() {
    let mut backend = Backend::start().await;
    let mut tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let mut client = Client::builder(format!("{}/feed", tether.url))
        .backoff(fast())
        .max_failed_resumes(1_000_000) // tether is down for a moment on purpose
        .build()
        .unwrap();
    welcome(&mut client).await;
    let conn = backend.next_conn().await;
    conn.cmd.send(Cmd::Send { from: 1, count: 3, batch: 3 }).unwrap();
    for seq in 1..=3 {
        assert_eq!(next_message(&mut client).await.seq, seq);
    }
    // The test reads the draining events only after the restart, by when the
    // client may have resumed: acknowledge 3 first, or it comes again (and
    // is dropped as a duplicate).
    client.ack();
    tether.restart().await;
    assert_eq!(next(&mut client).await, Event::Draining);
    match next(&mut client).await {
        Event::Disconnected { error, .. } => assert!(error.contains("1012"), "{error}"),
        other => panic!("expected the 1012 close, got {other:?}"),
    }
    let w = welcome(&mut client).await;
    assert_eq!(w.outcome, Outcome::Restarted, "a new backend connection for the same session");
    let conn = backend.next_conn().await;
    conn.cmd.send(Cmd::Send { from: 4, count: 1, batch: 1 }).unwrap();
    let m = next_message(&mut client).await;
    assert_eq!((m.seq, m.payload), (4, Payload::Text("m4".into())), "the numbering continues");
    assert_eq!(client.stats().duplicates, 0);
}
