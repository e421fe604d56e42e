//! kill -9 at random points of a 30 s stream, 20 times over one journal
//! (issue 23): every frame a client received before a kill is replayed
//! after it, byte for byte, and none twice; the seqs go on after each
//! restart; and at the end one replay from the start returns the whole
//! history.
//!
//! The frame log's files are 1 MiB here, so the stream crosses many of
//! them, and every restart starts a new one after a torn tail.

mod common;

use common::*;
use serde_json::Value;

/// Kills and restarts.
const ROUNDS: u64 = 20;
/// Messages the backend sends per round, at most, and their size.
const PER_ROUND: u64 = 6_000;
const SIZE: usize = 200;
/// Messages a second, sent every 10 ms: a round is a 3 s stream cut at a
/// random point, so the 20 rounds stream for about 30 s in all.
const RATE: u64 = 2_000;

/// xorshift64*: enough to pick kill points, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Reads frames `from..=to` and checks each against `history` (the payload
/// of every seq the client has seen, index seq - 1), appending the ones
/// beyond it.
async fn read_checked(ws: &mut Ws, from: u64, to: u64, history: &mut Vec<String>) {
    for want in from..=to {
        let (seq, payload) = data(ws).await;
        assert_eq!(seq, want, "seqs follow one another: none twice, none skipped");
        match history.get(seq as usize - 1) {
            Some(seen) => assert_eq!(&payload, seen, "seq {seq} replayed byte for byte"),
            None => {
                assert_eq!(history.len() as u64, seq - 1);
                history.push(payload);
            }
        }
    }
}

#[tokio::test]
async fn kill9_at_random_points_replays_every_delivered_frame_once() {
    let seed = std::env::var("TETHER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {seed} (TETHER_TEST_SEED={seed} repeats these kill points)");
    let mut rng = Rng(seed | 1);
    let mut backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("TETHER_JOURNAL_MEMTABLE_BYTES", "1048576"), ("TETHER_JOURNAL_MAX_SESSION_FRAMES", "10000000")];
    let mut history: Vec<String> = Vec::new();
    let mut token: Option<String> = None;
    for round in 0..ROUNDS {
        let p = TetherProcess::start(&backend.url(), dir.path(), &env).await;
        // Resume from a random point at or before the last frame seen: what
        // the client had seen after it must come back as it was.
        let seen = history.len() as u64;
        let offset = seen - rng.below(seen.min(3_000) + 1);
        let mut ws = match &token {
            None => open(&p.url("/"), &[]).await,
            Some(t) => resume(&p.url("/"), t, offset).await,
        };
        let (w, t) = welcome(&mut ws).await;
        token = Some(t);
        let journaled = match &w["replay"] {
            Value::Null => offset,
            r => {
                assert_eq!(r["from"], offset + 1, "{w}");
                r["to"].as_u64().unwrap()
            }
        };
        assert_eq!(w["outcome"], if round == 0 { "new" } else { "restarted" }, "{w}");
        assert_eq!(w["gap"], Value::Null, "nothing is lost: {w}");
        assert!(journaled >= seen, "every frame seen before the kill is journaled: {journaled} < {seen}");
        read_checked(&mut ws, offset + 1, journaled, &mut history).await;
        // A new backend connection goes on; kill tether somewhere in its stream.
        let b = backend.next_conn().await;
        let base = (round + 1) * 1_000_000;
        // The pacer keeps the backend connection until it is dropped, after
        // the kill: a dropped one would end the session.
        let pacer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(10)); // pacing, not synchronisation
            let (step, end) = (RATE / 100, base + PER_ROUND);
            let mut next = base + 1;
            while next <= end {
                tick.tick().await;
                let last = (next + step - 1).min(end);
                b.stream_padded(next, last, SIZE);
                next = last + 1;
            }
            b
        });
        let live = 1 + rng.below(PER_ROUND - 1);
        read_checked(&mut ws, journaled + 1, journaled + live, &mut history).await;
        p.kill9().await;
        pacer.abort();
        drop(ws);
    }
    // One replay of everything, after 20 kills.
    let p = TetherProcess::start(&backend.url(), dir.path(), &env).await;
    let mut ws = resume(&p.url("/"), token.as_deref().unwrap(), 0).await;
    let (w, _) = welcome(&mut ws).await;
    assert_eq!(w["outcome"], "restarted", "{w}");
    let last = w["replay"]["to"].as_u64().unwrap();
    assert!(last >= history.len() as u64);
    let seen = history.len();
    read_checked(&mut ws, 1, last, &mut history).await;
    eprintln!("{ROUNDS} kills: {seen} frames seen, {last} journaled, all replayed from 1");
    p.kill9().await;
}
