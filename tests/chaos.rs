//! Chaos: many clients stream at once, drop abruptly at pseudo-random points
//! and resume — by header or by query parameter, sometimes from an offset
//! behind what they received (frames received but not processed). Every
//! client must see every frame exactly once after its offset, in order, and
//! the backend must never see a reconnect.
//!
//! Reproducible: every random choice comes from a xorshift generator seeded
//! per client. The ring is kept small so that replays come from the journal
//! as well as from memory, and replay batches are small so that hand-overs
//! from replay to live happen mid-stream.

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;
use tokio::sync::{oneshot, watch};

const CLIENTS: usize = 16;
const FRAMES: u64 = 3000;

/// xorshift64: small, deterministic, good enough to pick drop points.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Any non-zero state works; spread the small seeds apart.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    lost: u64,
    dup: u64,
    reorder: u64,
    bad_payload: u64,
    /// Seqs after the final offset that never arrived.
    missing: u64,
    resumes: u64,
    via_query: u64,
    rewinds: u64,
    rewound_frames: u64,
    last: u64,
}

/// Streams `1..=FRAMES` in bursts of 100–500. Each burst after the first is
/// sent once the client has reached a random point inside the previous one,
/// so frames are in flight whenever the client drops. Once the client has
/// everything, sends the sentinel frame `fin` and hands the connection back
/// (dropping it would close the backend connection).
async fn stream(
    b: BackendConn,
    seed: u64,
    mut progress: watch::Receiver<u64>,
    all_read: oneshot::Receiver<()>,
) -> BackendConn {
    let mut rng = Rng::new(seed);
    let mut from = 1;
    while from <= FRAMES {
        let to = (from + rng.range(100, 500) - 1).min(FRAMES);
        b.stream(from, to);
        let target = rng.range(from, to);
        within("the client to reach a point inside the burst", progress.wait_for(|p| *p >= target))
            .await
            .expect("client task alive");
        from = to + 1;
    }
    within("the client to read everything", all_read).await.expect("client task alive");
    b.text("fin");
    b
}

/// Reads until it has processed `FRAMES`, dropping and resuming at random.
async fn client(
    i: usize,
    t_url: impl Fn(&str) -> String,
    mut ws: Ws,
    mut token: String,
    progress: watch::Sender<u64>,
    all_read: oneshot::Sender<()>,
) -> Tally {
    let path = format!("/c{i}");
    let mut rng = Rng::new(1000 + i as u64);
    let mut t = Tally::default();
    // got[s]: frame s was processed (<= offset) or received on this connection.
    let mut got = vec![false; FRAMES as usize + 1];
    // Highest seq processed or received on this connection.
    let mut last = 0u64;
    let mut until_drop = rng.range(1, 250);
    while last < FRAMES {
        let (seq, payload) = data(&mut ws).await;
        assert!((1..=FRAMES).contains(&seq), "client {i}: seq {seq} out of range ({payload:?})");
        t.received += 1;
        if payload != format!("m{seq}") {
            t.bad_payload += 1;
        }
        let s = seq as usize;
        if got[s] {
            t.dup += 1;
        } else {
            if seq > last + 1 {
                t.lost += seq - last - 1;
            } else if seq < last {
                t.reorder += 1;
            }
            got[s] = true;
        }
        last = last.max(seq);
        progress.send_if_modified(|p| {
            let newer = last > *p;
            if newer {
                *p = last;
            }
            newer
        });

        until_drop -= 1;
        if until_drop > 0 || last == FRAMES {
            continue;
        }
        until_drop = rng.range(1, 250);
        // One resume in three claims fewer frames processed than received.
        let offset = if rng.range(0, 2) == 0 { last - rng.range(1, last.min(300)) } else { last };
        drop_abruptly(ws);
        ws = if rng.range(0, 1) == 0 {
            resume(&t_url(&path), &token, offset).await
        } else {
            t.via_query += 1;
            open(&t_url(&format!("{path}?tether_session={token}&tether_offset={offset}")), &[]).await
        };
        let (w, token2) = welcome(&mut ws).await;
        assert_eq!(w["outcome"], "resumed", "client {i}: {w}");
        assert_eq!(w["gap"], Value::Null, "client {i}: {w}");
        assert_rotated(&token2, &token);
        // The client resumes with the newest token, as the clients do.
        token = token2;
        // Frames up to `last` were committed, so they are all replayed.
        if offset < last {
            assert_eq!(w["replay"]["from"], offset + 1, "client {i}: {w}");
            assert!(w["replay"]["to"].as_u64().unwrap() >= last, "client {i}: {w}");
        } else if !w["replay"].is_null() {
            assert_eq!(w["replay"]["from"], offset + 1, "client {i}: {w}");
        }
        t.resumes += 1;
        if offset < last {
            t.rewinds += 1;
            t.rewound_frames += last - offset;
        }
        for g in &mut got[offset as usize + 1..=last as usize] {
            *g = false;
        }
        last = offset;
    }
    t.missing = got[1..].iter().filter(|g| !**g).count() as u64;
    t.last = last;
    all_read.send(()).expect("streamer alive");
    // Nothing follows frame FRAMES except the sentinel sent after it.
    assert_eq!(data(&mut ws).await, (FRAMES + 1, "fin".to_owned()), "client {i}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_drop_and_resume_without_loss() {
    let started = Instant::now();
    let (mut backend, t) = setup_with(|c| {
        c.limits.ring_bytes = 2048;
        c.limits.replay_batch_bytes = 1024;
    })
    .await;

    let mut streamers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let path = format!("/c{i}");
        let mut ws = open(&t.url(&path), &[]).await;
        let (w, token) = welcome(&mut ws).await;
        assert_eq!(w["outcome"], "new");
        let b = backend.next_conn().await;
        assert_eq!(b.path, path);
        let (progress_tx, progress_rx) = watch::channel(0u64);
        let (done_tx, done_rx) = oneshot::channel();
        streamers.push(tokio::spawn(stream(b, 5000 + i as u64, progress_rx, done_rx)));
        let addr = t.data_addr;
        let url = move |p: &str| format!("ws://{addr}{p}");
        clients.push(tokio::spawn(client(i, url, ws, token, progress_tx, done_tx)));
    }

    let tallies: Vec<Tally> =
        futures_util::future::join_all(clients).await.into_iter().map(|r| r.expect("client task")).collect();
    // Keep the backend connections open until every client is done.
    let conns: Vec<BackendConn> =
        futures_util::future::join_all(streamers).await.into_iter().map(|r| r.expect("streamer task")).collect();

    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (received, lost, dup, reorder) = (sum(|t| t.received), sum(|t| t.lost), sum(|t| t.dup), sum(|t| t.reorder));
    let (resumes, via_query, rewinds, rewound) =
        (sum(|t| t.resumes), sum(|t| t.via_query), sum(|t| t.rewinds), sum(|t| t.rewound_frames));
    let m = t.metrics().await;
    let takeovers = metric(&m, r#"tether_client_disconnects_total{kind="takeover"}"#);
    let replayed = metric(&m, "tether_replayed_frames_total");
    println!(
        "chaos: clients={CLIENTS} frames={} received={received} resumes={resumes} (query={via_query} \
         rewinds={rewinds} rewound_frames={rewound}) lost={lost} dup={dup} reorder={reorder} \
         bad_payload={} missing={} takeovers={takeovers} replayed={replayed} elapsed={:.2?}",
        CLIENTS as u64 * FRAMES,
        sum(|t| t.bad_payload),
        sum(|t| t.missing),
        started.elapsed(),
    );

    for (i, tally) in tallies.iter().enumerate() {
        assert_eq!(tally.last, FRAMES, "client {i}: {tally:?}");
        assert!(tally.resumes > 0, "client {i} never resumed: {tally:?}");
    }
    assert_eq!((lost, dup, reorder, sum(|t| t.bad_payload), sum(|t| t.missing)), (0, 0, 0, 0, 0));
    assert!(via_query > 0 && via_query < resumes, "both credential styles are exercised");
    assert!(rewinds > 0, "some resumes rewind");
    assert_eq!(backend.count(), CLIENTS, "no backend reconnects");
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="resumed",reason="none"}"#), resumes as f64);
    assert_eq!(metric(&m, r#"tether_resumes_total{outcome="new",reason="none"}"#), CLIENTS as f64);
    t.stop().await;
    drop(conns);
}
