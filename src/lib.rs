//! tether: a resumable WebSocket proxy. It stamps every backend→client frame
//! with a sequence id, journals it in RocksDB before the client can see it,
//! and replays what a reconnecting client missed, while the unmodified
//! backend's connection stays open through the blip.
//!
//! [`run`] is the whole service; [`cli`] is what the `tether` binary adds
//! (flags, logs, signals). The data path reads top to bottom in [`proxy`]:
//! accept → authenticate resume → attach session → pump frames (journal,
//! then forward) → detach. docs/ARCHITECTURE.md has the module map.

pub mod cli;
pub mod config;
pub mod server;

mod admin;
mod cluster;
#[cfg(feature = "fault-injection")]
mod fault;
mod journal;
mod metrics;
mod net;
mod protocol;
mod proxy;
mod runtime;
mod select_arm;
mod session;
mod tls;
mod upstream;

pub use server::{run, start, RunError, Running, StartError};
