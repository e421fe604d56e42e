//! The upstream example of clients/rust/README.md, "The upstream guarantee":
//! the code below this comment is that block, character for character
//! (`scripts/client-readmes` fails if they differ, then runs this example
//! against `tether demo`).
//!
//! ```text
//! cargo run --release -p tether-client --example orders -- ws://127.0.0.1:8080/demo
//! ```

use futures_util::StreamExt;
use tether_client::{Client, Event, InDoubt, Upstream, UpstreamReason};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/demo".into());
    let mut client = Client::builder(url)
        .upstream(Upstream { max_unacked: 1000, max_unacked_bytes: 1 << 20, in_doubt: InDoubt::Report })
        .build()?;
    let sender = client.sender(); // Clone + Send: send from any task
    let mut orders = tokio::spawn(async move {
        let mut receipts = Vec::new();
        for i in 1..=3 {
            // Waits while the buffer is full; never drops.
            receipts.push(sender.send_reliable(format!("order {i}")).await?);
        }
        for receipt in receipts {
            match receipt.await {
                Ok(()) => println!("acked"), // written to the backend
                Err(e) if e.reason == UpstreamReason::InDoubt => println!("in doubt: {:?}", e.payload), // check with the backend
                Err(e) => println!("{:?} not written: {}", e.payload, e.reason), // ended, closed, dropped
            }
        }
        Ok::<_, tether_client::UpstreamError>(())
    });
    // Keep reading the events meanwhile: acks come in on the same connection.
    loop {
        tokio::select! {
            done = &mut orders => break done??,
            event = client.next() => match event {
                Some(Ok(Event::InDoubt(messages))) => eprintln!("{} messages may not have reached the backend", messages.len()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
        }
    }
    client.close("done").await;
    Ok(())
}
