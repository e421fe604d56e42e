//! An async client for tether, the resumable WebSocket proxy.
//!
//! tether stamps every backend → client message with a sequence number (seq),
//! journals it, and replays what a reconnecting client missed. This crate is
//! the client half of that contract (`docs/PROTOCOL.md` in the tether
//! repository): it connects, reads the `welcome`, keeps the session token
//! (a new one in every welcome: tokens rotate on every resume) and the
//! offset, resumes with the token in `Sec-WebSocket-Protocol` (or the
//! `Tether-Session` header, [`TokenIn`]) and the `Tether-Offset` header
//! after any drop (exponential backoff with full jitter), drops the
//! duplicates a resume brings, and turns tether's control frames into
//! [`Event`]s. The application sees a [`Stream`] of
//! events, among them each data message once, in seq order.
//!
//! [`Stream`]: futures_util::Stream
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tether_client::{Client, Event};
//!
//! # async fn run() -> Result<(), tether_client::Error> {
//! let mut client = Client::builder("ws://127.0.0.1:8080/feed").build()?;
//! while let Some(event) = client.next().await {
//!     match event? {
//!         // Acknowledged (the offset advances) when the stream is polled again.
//!         Event::Message(m) => println!("{} {:?}", m.seq, m.payload),
//!         Event::Gap(g) => eprintln!("lost {}..={:?}: resync", g.lost.from, g.lost.to),
//!         Event::End { code, reason } => println!("ended: {code} {reason}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - A message is acknowledged (its seq becomes the offset sent on the next
//!   resume) when the application polls the stream again after receiving it,
//!   or calls [`Client::ack`]. Across reconnects delivery is at-least-once
//!   (tether resends everything after the offset); within one [`Client`] each
//!   seq reaches the application at most once, because seqs not above the
//!   last one delivered are dropped and counted in [`Stats::duplicates`].
//! - Nothing is skipped without an [`Event::Gap`] that names the lost range.
//! - Messages sent with [`Client::send`] have **no** delivery guarantee: one in
//!   flight when the connection drops is lost, unless the client opts in to
//!   the upstream guarantee (below).
//! - Stamp mode `none` is not supported: without seqs there is nothing to
//!   resume from safely.
//!
//! # The upstream guarantee
//!
//! With [`Builder::upstream`], every message to the backend carries a seq
//! (docs/PROTOCOL.md §12) and stays in the client until tether acks it
//! (written to the backend connection). [`Client::send_reliable`] (or a
//! cloneable [`Sender`]) returns a [`Receipt`] that completes with `Ok(())`
//! on the ack, or fails with an [`UpstreamError`] whose
//! [`reason`](UpstreamError::reason) says why the message will not be written:
//! the session [ended](UpstreamReason::Ended), it was
//! [in doubt](UpstreamReason::InDoubt) after tether crashed, or the client
//! [closed](UpstreamReason::Closed). After a drop the client resends what
//! tether did not accept, with the same seqs: the backend gets each message
//! once, in order.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tether_client::{Client, Event, Upstream};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = Client::builder("ws://127.0.0.1:8080/feed").upstream(Upstream::default()).build()?;
//! let sender = client.sender();
//! tokio::spawn(async move {
//!     for i in 0..100 {
//!         // Waits while 1000 messages (or 1 MiB) are unacked.
//!         let receipt = sender.send_reliable(format!("order {i}")).await?;
//!         receipt.await?; // or keep the receipt and go on sending
//!     }
//!     Ok::<_, tether_client::UpstreamError>(())
//! });
//! // Keep reading the events: acks arrive on the same connection.
//! while let Some(event) = client.next().await {
//!     if let Event::InDoubt(messages) = event? {
//!         eprintln!("{} messages may or may not have reached the backend", messages.len());
//!     }
//! }
//! # Ok(()) }
//! ```

mod builder;
mod client;
mod connection;
mod error;
mod event;
mod frame;
mod message;
mod shared;
mod upstream;

pub use builder::{Backoff, Builder, TokenIn};
pub use client::Client;
pub use error::Error;
pub use event::{Event, GapReport, Lost, Outcome, Replay, ResetInfo, ResetReason, Welcome};
pub use message::{Message, Payload, StampMode, UpMessage};
pub use shared::{State, Stats};
pub use upstream::{InDoubt, Receipt, Sender, Upstream, UpstreamError, UpstreamReason, UpstreamStats};
