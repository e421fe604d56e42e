//! Prints a tether stream and survives drops:
//!
//! ```text
//! cargo run -p tether-client --example follow -- ws://127.0.0.1:8080/demo
//! ```
//!
//! Cut the network (or restart tether) while it runs: it resumes, and the
//! seqs continue with nothing lost and nothing twice.

use futures_util::StreamExt;
use tether_client::{Client, Event, Payload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/demo".into());
    let mut client = Client::builder(url).build()?;
    loop {
        let event = tokio::select! {
            e = client.next() => e,
            _ = tokio::signal::ctrl_c() => {
                client.close("bye").await; // ends the session (close 1000)
                return Ok(());
            }
        };
        let Some(event) = event else { return Ok(()) };
        match event? {
            Event::Message(m) => match m.payload {
                Payload::Text(t) => println!("{:>6} {} {t}", m.seq, if m.replay { "replay" } else { "live  " }),
                Payload::Binary(b) => {
                    println!("{:>6} {} <{} bytes>", m.seq, if m.replay { "replay" } else { "live  " }, b.len())
                }
            },
            Event::Welcome(w) => eprintln!("-- connected: {:?}, replay {:?}", w.outcome, w.replay),
            Event::Disconnected { error, retry_in } => eprintln!("-- dropped ({error}); retrying in {retry_in:?}"),
            Event::Gap(g) => eprintln!("-- gap ({}): lost {}..={:?}", g.reason, g.lost.from, g.lost.to),
            Event::Reset(r) => eprintln!("-- session given up ({:?}); a new one starts", r.reason),
            Event::Draining => eprintln!("-- tether is draining"),
            Event::End { code, reason } => eprintln!("-- session ended: {code} {reason}"),
            Event::TakenOver => eprintln!("-- another client took the session over"),
            other => eprintln!("-- {other:?}"),
        }
    }
}
