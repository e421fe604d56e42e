//! The Rust example of the top-level README.md, "Client example", and the
//! first of clients/rust/README.md: the code below this comment is that
//! block, character for character (`scripts/newcomer` and
//! `scripts/client-readmes` fail if they differ, then run this example
//! against `tether demo`).
//!
//! ```text
//! cargo run --release -p tether-client --example minimal -- ws://127.0.0.1:8080/demo
//! ```

// Cargo.toml: tether-client = { path = "clients/rust" }, futures-util = "0.3", tokio = { version = "1", features = ["full"] }
use futures_util::StreamExt;
use tether_client::{Client, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/demo".into());
    let mut client = Client::builder(url).build()?;
    while let Some(event) = client.next().await {
        match event? {
            Event::Message(m) => println!("{} {:?}", m.seq, m.payload), // once per seq, in order; acked at the next poll
            Event::Gap(report) => eprintln!("lost {:?}", report.lost),  // these seqs will never arrive: resync
            other => eprintln!("{other:?}"),                            // Welcome, Disconnected, End, TakenOver …
        }
    }
    Ok(())
}
