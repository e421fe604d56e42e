//! Test-only faults, planted in the delivery path so that tests can prove
//! that `tether check` catches them (check/tests, docs/CHECK.md). Compiled
//! only with the `fault-injection` cargo feature, which no release artefact
//! enables; `TETHER_FAULT` chooses one at start-up:
//!
//! - `skip`: every seq ending in 5 is never sent, and no gap is reported;
//! - `duplicate`: every seq ending in 5 is sent twice;
//! - `reorder-replay`: the first two frames of a batch are swapped when the
//!   second is a replay (journaled before the connection started);
//! - `corrupt-replay`: replayed frames get a byte appended;
//! - `wrong-outcome`: a `resumed` welcome says `restarted` (the
//!   `Tether-Outcome` header still says `resumed`).
//!
//! Any fault turns off the pre-stamped wire path, so every frame goes
//! through [`plant`].

use std::sync::OnceLock;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::control::Outcome;
use crate::protocol::Payload;

/// A planted fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Skip,
    Duplicate,
    ReorderReplay,
    CorruptReplay,
    WrongOutcome,
}

/// The fault `TETHER_FAULT` names, read once. An unknown name panics: a
/// test that asks for a fault must get it.
pub(crate) fn active() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let name = std::env::var("TETHER_FAULT").ok()?;
        let fault = match name.as_str() {
            "skip" => Fault::Skip,
            "duplicate" => Fault::Duplicate,
            "reorder-replay" => Fault::ReorderReplay,
            "corrupt-replay" => Fault::CorruptReplay,
            "wrong-outcome" => Fault::WrongOutcome,
            other => panic!("TETHER_FAULT={other:?} is not a fault this build knows"),
        };
        tracing::warn!(fault = %name, "fault injection: this tether breaks its own promise on purpose");
        Some(fault)
    })
}

/// Plants the active fault into one batch of frames; also returns the last
/// seq of the batch as it was, where the cursor must end up.
pub(crate) fn plant(mut frames: Vec<(u64, Payload)>, replay_to: u64) -> (Vec<(u64, Payload)>, Option<u64>) {
    let last = frames.last().map(|f| f.0);
    match active() {
        Some(Fault::Skip) => frames.retain(|(seq, _)| seq % 10 != 5),
        Some(Fault::Duplicate) => {
            if let Some(i) = frames.iter().position(|(seq, _)| seq % 10 == 5) {
                let again = frames[i].clone();
                frames.insert(i + 1, again);
            }
        }
        Some(Fault::ReorderReplay) => {
            if frames.len() >= 2 && frames[1].0 <= replay_to {
                frames.swap(0, 1);
            }
        }
        Some(Fault::CorruptReplay) => {
            for (seq, payload) in frames.iter_mut() {
                if *seq <= replay_to {
                    *payload = match payload {
                        Payload::Text(t) => Payload::Text(Utf8Bytes::from(format!("{}!", t.as_str()))),
                        Payload::Binary(b) => Payload::Binary([&b[..], b"!"].concat().into()),
                    };
                }
            }
        }
        Some(Fault::WrongOutcome) | None => {}
    }
    (frames, last)
}

/// The outcome the welcome reports.
pub(crate) fn outcome(o: Outcome) -> Outcome {
    match (active(), o) {
        (Some(Fault::WrongOutcome), Outcome::Resumed) => Outcome::Restarted,
        _ => o,
    }
}
