//! The upstream guarantee (docs/PROTOCOL.md §12) against a real tether, a
//! real backend that records what it reads, and a TCP proxy that the tests
//! cut. Run with the workspace's release `tether` built (or `TETHER_BIN`
//! set).

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{bounded, Backend, Cmd, Proxy, Tether};
use tether_client::{
    Backoff, Client, Event, InDoubt, Outcome, Payload, State, UpMessage, Upstream, UpstreamError, UpstreamReason,
};
use tokio_tungstenite::tungstenite::Message;

fn fast() -> Backoff {
    Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(100), factor: 2.0 }
}

async fn next(c: &mut Client) -> Event {
    bounded("the next event", c.next()).await.expect("the stream ended").expect("a client error")
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

/// Message `i` of a stream: text `u<i>`, or every 7th binary (its 8-byte
/// index and `0xff`).
fn payload(i: u64) -> Payload {
    if i % 7 == 0 {
        let mut b = i.to_be_bytes().to_vec();
        b.push(0xff);
        Payload::Binary(b.into())
    } else {
        Payload::Text(format!("u{i}"))
    }
}

/// What the backend reads for a payload: the same opcode and bytes.
fn as_received(p: Payload) -> Message {
    match p {
        Payload::Text(t) => Message::text(t),
        Payload::Binary(b) => Message::binary(b),
    }
}

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_sends_reach_the_backend_once_in_order_across_cuts() {
    const N: u64 = 3000;
    const CUTS: usize = 12;
    let started = Instant::now();
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let proxy = Arc::new(Proxy::start(tether.data_port).await);
    let immediate = Backoff { initial: Duration::ZERO, max: Duration::ZERO, factor: 2.0 };
    let mut client = Client::builder(format!("ws://127.0.0.1:{}/feed", proxy.port))
        .backoff(immediate)
        .upstream(Upstream::default())
        .build()
        .unwrap();
    assert_eq!(welcome(&mut client).await.outcome, Outcome::New);
    let mut conn = backend.next_conn().await;

    // The sender cuts when asked, right after queueing a batch: the cut
    // races the batch's bytes on their way to tether.
    let cut_asked = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicUsize::new(0));
    let sender = client.sender();
    let sending = tokio::spawn({
        let (proxy, cut_asked, cuts) = (proxy.clone(), cut_asked.clone(), cuts.clone());
        async move {
            let mut receipts = Vec::new();
            for i in 1..=N {
                receipts.push(sender.send_reliable(payload(i)).await.expect("queued"));
                if i % 10 == 0 {
                    if cut_asked.load(Ordering::SeqCst) && proxy.cut() > 0 {
                        cut_asked.store(false, Ordering::SeqCst);
                        cuts.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await; // pacing, not synchronisation
                }
            }
            let mut results = Vec::new();
            for r in receipts {
                results.push(r.await);
            }
            results
        }
    });

    enum Step {
        Read(Option<Message>),
        Event(Event),
    }
    let mut got = Vec::new();
    // A cut every 150 messages the backend reads on a welcomed, live
    // connection: all 12 land in the first two thirds of the stream.
    const EVERY: usize = N as usize * 6 / 10 / CUTS;
    let (mut asked, mut open, mut next_cut, mut welcomes) = (0, true, EVERY, 1);
    while got.len() < N as usize {
        let step = bounded("the backend or the client", async {
            tokio::select! {
                m = conn.received.recv() => Step::Read(m),
                e = client.next() => Step::Event(e.expect("the stream ended").expect("a client error")),
            }
        })
        .await;
        match step {
            Step::Read(m) => {
                got.push(m.expect("the backend connection lasts"));
            }
            Step::Event(Event::Welcome(w)) => {
                assert_eq!(w.outcome, Outcome::Resumed, "{w:?}");
                welcomes += 1;
                open = true;
            }
            Step::Event(Event::Disconnected { .. }) => open = false,
            Step::Event(other) => panic!("unexpected {other:?}"),
        }
        if asked < CUTS && open && got.len() >= next_cut {
            asked += 1;
            cut_asked.store(true, Ordering::SeqCst);
            next_cut = got.len() + EVERY;
            open = false; // until the welcome after the cut
        }
    }
    let results = bounded("every receipt", sending).await.unwrap();
    assert_eq!(results.len(), N as usize);
    assert!(results.iter().all(Result::is_ok), "every send acked: {:?}", results.iter().find(|r| r.is_err()));
    let expected: Vec<Message> = (1..=N).map(|i| as_received(payload(i))).collect();
    assert!(got == expected, "each message once, in order: {got:?}");
    // Nothing is written after the last one's ack but what is sent next.
    bounded("the last ack", client.send_reliable("last").await.unwrap()).await.unwrap();
    assert_eq!(text(bounded("the last message", conn.received.recv()).await.unwrap()), "last");
    let cuts = cuts.load(Ordering::SeqCst);
    assert_eq!(cuts, CUTS);
    assert_eq!(*backend.accepted.lock().unwrap(), 1, "the backend connection survived every cut");

    let s = client.upstream_stats();
    assert_eq!((s.unacked, s.unacked_bytes, s.acked, s.acked_seq, s.next_seq), (0, 0, N + 1, N + 1, N + 2));
    assert_eq!((s.in_doubt, s.dropped, s.ended, s.rejected), (0, 0, 0, 0));
    assert_eq!(s.sent, N + 1 + s.resends, "every write but the resends is a first send");
    assert!(s.resends > 0, "the cuts lost messages on their way, and they were sent again");
    println!(
        "cuts: {cuts}, connections: {welcomes}, messages: {N}, sent: {}, resends: {}, {:?}",
        s.sent,
        s.resends,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_ending_the_session_fails_what_was_not_written() {
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let proxy = Proxy::start(tether.data_port).await;
    let mut client = Client::builder(format!("ws://127.0.0.1:{}/feed", proxy.port))
        .backoff(fast())
        .max_failed_resumes(1_000_000) // offline on purpose
        .upstream(Upstream::default())
        .build()
        .unwrap();
    welcome(&mut client).await;
    let mut conn = backend.next_conn().await;
    for i in 1..=3 {
        let receipt = client.send_reliable(format!("a{i}")).await.unwrap();
        bounded("an ack", receipt).await.unwrap();
        assert_eq!(text(bounded("a message", conn.received.recv()).await.unwrap()), format!("a{i}"));
    }

    // Offline, the client queues two more; meanwhile the backend ends the session.
    proxy.block(true);
    assert_eq!(proxy.cut(), 1);
    let r4 = client.send_reliable("a4").await.unwrap();
    let r5 = client.send_reliable(vec![4u8, 5]).await.unwrap();
    conn.cmd.send(Cmd::Close(1000, "bye".into())).unwrap();
    assert_eq!(bounded("backend close", conn.closed.recv()).await, Some(None));
    proxy.block(false);

    let w = welcome(&mut client).await;
    assert_eq!(w.outcome, Outcome::Resumed);
    assert_eq!(next(&mut client).await, Event::End { code: 1000, reason: "bye".into() });
    let e4 = bounded("a4's receipt", r4).await.unwrap_err();
    let e5 = bounded("a5's receipt", r5).await.unwrap_err();
    assert_eq!((e4.reason, e4.payload), (UpstreamReason::Ended, Payload::Text("a4".into())));
    assert_eq!((e5.reason, e5.payload), (UpstreamReason::Ended, Payload::Binary(vec![4u8, 5].into())));
    let late = client.send_reliable("late").await.unwrap_err();
    assert_eq!(late, UpstreamError { reason: UpstreamReason::Ended, seq: None, payload: "late".into() });
    assert!(bounded("the stream's end", client.next()).await.is_none());
    assert_eq!(client.state(), State::Ended);
    assert_eq!(bounded("the backend's end", conn.received.recv()).await, None, "a4 and a5 never written");
    let s = client.upstream_stats();
    assert_eq!((s.acked, s.acked_seq, s.ended, s.unacked, s.in_doubt), (3, 3, 2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_every_message_is_acked_or_reported_in_doubt() {
    const N: u64 = 2000;
    let mut backend = Backend::start().await;
    let mut tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let mut client = Client::builder(format!("{}/feed", tether.url))
        .backoff(fast())
        .max_failed_resumes(1_000_000) // tether is down for a moment on purpose
        .upstream(Upstream::default())
        .build()
        .unwrap();
    welcome(&mut client).await;
    let mut old = backend.next_conn().await;
    let sender = client.sender();
    let sending = tokio::spawn(async move {
        let mut receipts = Vec::new();
        for i in 1..=N {
            receipts.push(sender.send_reliable(format!("k{i}")).await.expect("queued"));
        }
        let mut results = Vec::new();
        for r in receipts {
            results.push(r.await);
        }
        results
    });

    // Kill tether mid-stream, with messages in flight.
    let mut written = Vec::new();
    while written.len() < 500 {
        written.push(text(bounded("a message", old.received.recv()).await.unwrap()));
    }
    tether.kill_and_restart().await;
    while let Some(m) = bounded("the old connection's end", old.received.recv()).await {
        written.push(text(m));
    }
    let written_old = written.len();
    let mut new = backend.next_conn().await;

    // The resume: a new backend connection, and a report of what is in doubt.
    let w = welcome(&mut client).await;
    assert_eq!(w.outcome, Outcome::Restarted);
    let stats = client.upstream_stats();
    let reported: Vec<UpMessage> = if stats.in_doubt > 0 {
        match next(&mut client).await {
            Event::InDoubt(m) => m,
            other => panic!("expected the in-doubt report, got {other:?}"),
        }
    } else {
        Vec::new()
    };
    assert_eq!(reported.len() as u64, stats.in_doubt);
    let results = bounded("every receipt", sending).await.unwrap();
    let acked = results.iter().filter(|r| r.is_ok()).count();
    let index = |m: &String| m[1..].parse::<usize>().unwrap();
    // The new connection gets the acked messages the old one did not.
    let on_old: HashSet<usize> = written.iter().map(index).collect();
    let for_new = results.iter().enumerate().filter(|(i, r)| r.is_ok() && !on_old.contains(&(i + 1))).count();
    for _ in 0..for_new {
        written.push(text(bounded("a message", new.received.recv()).await.unwrap()));
    }
    bounded("the last ack", client.send_reliable("k0").await.unwrap()).await.unwrap();
    assert_eq!(text(bounded("the last message", new.received.recv()).await.unwrap()), "k0", "nothing more");

    // Each receipt: acked, or in doubt and listed in the report. Nothing
    // else, and nothing lost without a word.
    let mut in_doubt = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.reason, UpstreamReason::InDoubt, "message {}: {e:?}", i + 1);
                assert_eq!(e.payload, Payload::Text(format!("k{}", i + 1)));
                in_doubt.push(UpMessage { seq: e.seq.unwrap(), payload: e.payload.clone() });
            }
        }
    }
    assert_eq!(in_doubt, reported);
    // What the backends read: in order, none twice, every acked message.
    let seen: Vec<usize> = written.iter().map(index).collect();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {seen:?}");
    for (i, r) in results.iter().enumerate() {
        if r.is_ok() {
            assert!(seen.binary_search(&(i + 1)).is_ok(), "k{} acked but never written", i + 1);
        }
    }
    // The in-doubt ones (if any) are exactly those the old connection may
    // or may not have had; the new one got none of them.
    let doubtful: Vec<usize> = in_doubt.iter().map(|m| index(&text_of(&m.payload))).collect();
    assert!(written[written_old..].iter().all(|m| !doubtful.contains(&index(m))));
    assert_eq!(acked + in_doubt.len(), N as usize);
    let s = client.upstream_stats();
    assert_eq!((s.unacked, s.acked, s.in_doubt), (0, acked as u64 + 1, in_doubt.len() as u64));
    println!("written to the old connection: {written_old}, acked: {acked}, in doubt: {}", in_doubt.len());
}

fn text_of(p: &Payload) -> String {
    match p {
        Payload::Text(t) => t.clone(),
        Payload::Binary(_) => panic!("binary"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_policy_resend_sends_the_doubtful_again() {
    // 16 KiB each, 32 MiB in all: more than the sockets toward a backend
    // that does not read hold, so that the kill always leaves messages in
    // doubt. (With small messages tether sometimes wrote all of them before
    // the kill, and the test waited for a resend that had no reason to be.)
    const N: u64 = 2000;
    let fill = "x".repeat(16 << 10);
    let mut backend = Backend::start().await;
    let mut tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let mut client = Client::builder(format!("{}/feed", tether.url))
        .backoff(fast())
        .max_failed_resumes(1_000_000)
        .upstream(Upstream { max_unacked: 5000, max_unacked_bytes: 64 << 20, in_doubt: InDoubt::Resend })
        .build()
        .unwrap();
    welcome(&mut client).await;
    let mut old = backend.next_conn().await;
    bounded("the first ack", client.send_reliable(format!("k1|{fill}")).await.unwrap()).await.unwrap();
    old.cmd.send(Cmd::Read(false)).unwrap();
    let sender = client.sender();
    let payload = fill.clone();
    let sending = tokio::spawn(async move {
        let mut receipts = Vec::new();
        for i in 2..=N {
            receipts.push(sender.send_reliable(format!("k{i}|{payload}")).await.expect("queued"));
        }
        let mut results = Vec::new();
        for r in receipts {
            results.push(r.await);
        }
        results
    });
    let forwarded = r#"tether_upstream_frames_total{result="forwarded"}"#;
    bounded("writes to the backend", async {
        while tether.metric(forwarded).await < 4.0 {
            tokio::time::sleep(Duration::from_millis(10)).await; // polling another process
        }
    })
    .await;
    tether.kill_and_restart().await;
    // What tether wrote before the kill reaches the old connection.
    old.cmd.send(Cmd::Read(true)).unwrap();
    let mut on_old = Vec::new();
    while let Some(m) = bounded("the old connection's end", old.received.recv()).await {
        on_old.push(text(m));
    }
    let mut new = backend.next_conn().await;
    let w = welcome(&mut client).await;
    assert_eq!(w.outcome, Outcome::Restarted);
    let results = bounded("every receipt", sending).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));

    // The new connection reads from `next` to the end, in order.
    let mut on_new = Vec::new();
    while on_new.last().map(String::as_str) != Some(&format!("k{N}|{fill}")) {
        on_new.push(text(bounded("a message", new.received.recv()).await.unwrap()));
    }
    let index = |m: &String| m[1..m.find('|').unwrap()].parse::<u64>().unwrap();
    let (old_seen, new_seen): (Vec<u64>, Vec<u64>) =
        (on_old.iter().map(index).collect(), on_new.iter().map(index).collect());
    assert!(old_seen.windows(2).all(|w| w[1] == w[0] + 1) && old_seen[0] == 1, "old: in order, none twice");
    assert!(new_seen.windows(2).all(|w| w[1] == w[0] + 1), "new: in order, none twice");
    // Every message reached a backend connection; only doubtful ones may
    // have reached both (at-least-once across the crash).
    let first_new = new_seen[0];
    assert!(
        first_new <= old_seen.len() as u64 + 1,
        "nothing skipped: old 1..={}, new from {first_new}",
        old_seen.len()
    );
    let twice = (old_seen.len() as u64 + 1).saturating_sub(first_new);
    let s = client.upstream_stats();
    assert!(s.in_doubt > 0, "the kill left messages in doubt: {s:?}");
    assert!(twice <= s.in_doubt, "{twice} written twice, {} in doubt", s.in_doubt);
    assert_eq!((s.unacked, s.acked, s.dropped), (0, N, 0));
    assert!(s.resends >= s.in_doubt);
    bounded("the last ack", client.send_reliable("k0|").await.unwrap()).await.unwrap();
    assert_eq!(text(bounded("the last message", new.received.recv()).await.unwrap()), "k0|", "nothing more");
    println!("old connection: 1..={}, new: {first_new}..={N}, in doubt and resent: {}", old_seen.len(), s.in_doubt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_what_tether_did_not_ack_and_without_opting_in_nothing_changes() {
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let proxy = Proxy::start(tether.data_port).await;
    let mut client = Client::builder(format!("ws://127.0.0.1:{}/feed", proxy.port))
        .backoff(fast())
        .max_failed_resumes(1_000_000)
        .upstream(Upstream::default())
        .build()
        .unwrap();
    welcome(&mut client).await;
    let mut conn = backend.next_conn().await;
    bounded("an ack", client.send_reliable("c1").await.unwrap()).await.unwrap();
    assert_eq!(text(bounded("c1", conn.received.recv()).await.unwrap()), "c1");
    proxy.block(true);
    assert_eq!(proxy.cut(), 1);
    let r2 = client.send_reliable("c2").await.unwrap();
    client.close("done").await;
    let e = bounded("c2's receipt", r2).await.unwrap_err();
    assert_eq!(e, UpstreamError { reason: UpstreamReason::Closed, seq: None, payload: "c2".into() });
    let e = client.send_reliable("c3").await.unwrap_err();
    assert_eq!((e.reason, e.payload), (UpstreamReason::Closed, "c3".into()));
    assert!(matches!(client.send("c4"), Err(tether_client::Error::Stopped(_))));
    let s = client.upstream_stats();
    assert_eq!((s.acked, s.unacked, s.sent), (1, 0, 1));

    // Without opting in: plain messages, no stamps, no receipts.
    proxy.block(false);
    let mut plain = Client::builder(&tether.url).backoff(fast()).build().unwrap();
    welcome(&mut plain).await;
    let mut conn = backend.next_conn().await;
    plain.send("as is").unwrap();
    assert_eq!(text(bounded("a plain message", conn.received.recv()).await.unwrap()), "as is");
    let e = plain.send_reliable("x").await.unwrap_err();
    assert_eq!((e.reason, e.payload), (UpstreamReason::Disabled, "x".into()));
    assert_eq!(plain.upstream_stats(), tether_client::UpstreamStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_drain_nothing_is_in_doubt_and_each_message_is_written_once() {
    const N: u64 = 2000;
    let mut backend = Backend::start().await;
    let mut tether = Tether::start(&backend.url, "prefix", 100_000).await;
    let mut client = Client::builder(format!("{}/feed", tether.url))
        .backoff(fast())
        .max_failed_resumes(1_000_000)
        .upstream(Upstream::default())
        .build()
        .unwrap();
    welcome(&mut client).await;
    let mut old = backend.next_conn().await;
    let sender = client.sender();
    let sending = tokio::spawn(async move {
        let mut receipts = Vec::new();
        for i in 1..=N {
            receipts.push(sender.send_reliable(format!("d{i}")).await.expect("queued"));
        }
        let mut results = Vec::new();
        for r in receipts {
            results.push(r.await);
        }
        results
    });
    let mut written = Vec::new();
    while written.len() < 500 {
        written.push(text(bounded("a message", old.received.recv()).await.unwrap()));
    }
    // SIGTERM: tether drains (its mark is exact), and comes back.
    tether.restart().await;
    while let Some(m) = bounded("the old connection's end", old.received.recv()).await {
        written.push(text(m));
    }
    let mut new = backend.next_conn().await;
    let results = bounded("every receipt", sending).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    while written.len() < N as usize {
        written.push(text(bounded("a message", new.received.recv()).await.unwrap()));
    }
    let expected: Vec<String> = (1..=N).map(|i| format!("d{i}")).collect();
    assert_eq!(written, expected, "each message once, in order, across the two backend connections");
    bounded("the last ack", client.send_reliable("d0").await.unwrap()).await.unwrap();
    assert_eq!(text(bounded("the last message", new.received.recv()).await.unwrap()), "d0", "nothing more");
    let s = client.upstream_stats();
    assert_eq!((s.unacked, s.acked, s.in_doubt, s.dropped), (0, N + 1, 0, 0));
    // The events: draining, the 1012 close, then a welcome on a new backend connection.
    assert_eq!(next(&mut client).await, Event::Draining);
    assert_eq!(welcome(&mut client).await.outcome, Outcome::Restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_stamp_mode_upstream_uses_the_prefix_form() {
    let mut backend = Backend::start().await;
    let tether = Tether::start(&backend.url, "json", 100_000).await;
    let mut client = Client::builder(format!("{}/feed", tether.url))
        .stamp_mode(tether_client::StampMode::Json)
        .upstream(Upstream::default())
        .build()
        .unwrap();
    welcome(&mut client).await;
    let mut conn = backend.next_conn().await;
    for p in [r#"{"a":1}"#, "12:x", "#{\"type\":\"ack\"}"] {
        bounded("an ack", client.send_reliable(p).await.unwrap()).await.unwrap();
        assert_eq!(text(bounded("a message", conn.received.recv()).await.unwrap()), p, "byte for byte");
    }
    client.flush().await;
    assert_eq!((client.upstream_stats().acked_seq, client.upstream_stats().next_seq), (3, 4));
}
