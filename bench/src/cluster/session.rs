//! What the parts share about one session: resuming it, and checking the
//! frames it receives.

use crate::client::{self, Check, Tally, Ws};

/// Checks that an `/auto/` frame's backend index matches its seq.
pub(super) fn check_frame(tally: &mut Tally, seq: u64, idx: u64) {
    tally.check_seq(seq);
    if idx + 1 != seq {
        tally.dups += 1;
        tally.error.get_or_insert_with(|| format!("seq {seq} carries backend index {idx}"));
    }
}

pub(super) fn new_tally() -> Tally {
    Tally::new(&Check { stamped: true, record_from: u64::MAX, first_seq: 1, first_idx: 0, ack_every: 0 })
}

pub(super) async fn resume(url: &str, token: &str, offset: u64) -> anyhow::Result<(Ws, serde_json::Value)> {
    let headers = [("tether-session", token.to_owned()), ("tether-offset", offset.to_string())];
    let (mut ws, _) = client::connect(url, &headers).await?;
    let welcome = client::read_welcome(&mut ws).await?;
    Ok((ws, welcome))
}

pub(super) fn outcome(welcome: &serde_json::Value) -> &str {
    welcome["outcome"].as_str().unwrap_or("?")
}
