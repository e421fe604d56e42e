//! The upstream guarantee (docs/PROTOCOL.md §12, opt-in): every client →
//! backend message is stamped with a per-session seq and kept until tether
//! acks it (`up_ack`: written to the backend connection), resent after a
//! reconnect from the welcome's `up.next`, and failed with a reason when it
//! will not be written.

mod buffer;
mod sender;
mod types;

pub(crate) use buffer::{Push, UpShared};
pub use sender::{Receipt, Sender};
pub use types::{InDoubt, Upstream, UpstreamError, UpstreamReason, UpstreamStats};
