//! Prints a tether stream and survives drops:
//!
//! ```text
//! cargo run -p tether-client --example follow -- ws://127.0.0.1:8080/demo
//! ```
//!
//! Cut the network (or restart tether) while it runs: it resumes, and the
//! seqs continue with nothing lost and nothing twice.
//!
//! With `--up` it also sends each line of stdin to the backend under the
//! upstream guarantee, and says when tether acked it (or why not):
//!
//! ```text
//! cargo run -p tether-client --example follow -- ws://127.0.0.1:8080/demo --up
//! ```

use futures_util::StreamExt;
use tether_client::{Client, Event, Payload, Upstream};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let up = args.iter().any(|a| a == "--up");
    let url = args.iter().find(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "ws://127.0.0.1:8080/demo".into());
    // Ride out a restart of tether (or of the demo, a rebuild included).
    let mut builder = Client::builder(url).max_failed_resumes(100);
    if up {
        builder = builder.upstream(Upstream::default());
    }
    let mut client = builder.build()?;
    if up {
        let sender = client.sender();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(receipt) = sender.send_reliable(line.clone()).await else { return };
                tokio::spawn(async move {
                    match receipt.await {
                        Ok(()) => eprintln!("-- acked: {line}"),
                        Err(e) => eprintln!("-- not acked ({}): {line}", e.reason),
                    }
                });
            }
        });
    }
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
            Event::InDoubt(m) => eprintln!("-- {} sent messages may or may not have reached the backend", m.len()),
            other => eprintln!("-- {other:?}"),
        }
    }
}
