//! tether: a resumable WebSocket proxy. It stamps every backend→client frame
//! with a sequence id, journals it in RocksDB before the client can see it,
//! and replays what a reconnecting client missed, while the unmodified
//! backend's connection stays open through the blip.
//!
//! Start at [`server::start`]; the data path is [`proxy`].

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod journal;
pub mod lazy_read;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod session;
