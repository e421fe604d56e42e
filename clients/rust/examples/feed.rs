//! The first example of clients/rust/README.md, "tether-client": the code
//! below this comment is that block, character for character
//! (`scripts/client-readmes` fails if they differ, then runs this example
//! against `tether demo`).
//!
//! ```text
//! cargo run --release -p tether-client --example feed -- ws://127.0.0.1:8080/demo
//! ```

use futures_util::StreamExt;
use tether_client::{Client, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/demo".into());
    let mut client = Client::builder(url).build()?;
    while let Some(event) = client.next().await {
        match event? {
            Event::Message(m) => {
                println!("{} {:?}", m.seq, m.payload); // once per seq, in order; acked at the next poll
                if m.seq == 5 {
                    client.close("done").await; // ends the session (close 1000)
                }
            }
            Event::Gap(g) => eprintln!("lost {}..={:?}: resync", g.lost.from, g.lost.to),
            Event::End { code, reason } => println!("ended: {code} {reason}"),
            _ => {}
        }
    }
    Ok(())
}
