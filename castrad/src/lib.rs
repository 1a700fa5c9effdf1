//! castrad: the Castra daemon library. The binary (`main.rs`) only parses flags and calls
//! [`daemon::run`]; everything else lives here so tests can drive it directly.
//!
//! Modules, from the edge inwards:
//! - `rpc`: JSON-RPC 2.0 over the Unix socket; the only code that knows the wire types.
//! - `daemon`: wiring and shutdown order; the in-memory registry of projects.
//! - `planner`: turns a project + overrides into one plan per VM (does IO: hashes, stamps).
//! - `config`, `overrides`: pure parsing and validation of castra.toml and `--bootstrap`.
//! - `hashing`: artifact and base hashes, with the base-image hash cache.
//! - `state_root`: the only code that builds paths under the state directory.
//! - `fsutil`: atomic writes.
//! - `vizier`: the in-guest agent.

pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod hashing;
pub mod ids;
pub mod operations;
pub mod overrides;
pub mod pipeline;
pub mod planner;
pub mod rpc;
pub mod runlog;
pub mod ssh;
pub mod stamps;
pub mod state_root;
pub mod vizier;
pub mod vm;

#[cfg(test)]
mod testutil;
