//! castrad: the Castra daemon library. The binary (`main.rs`) calls [`cli::main`], which parses
//! flags and runs [`rpc::server::run`]; everything else lives here so tests can drive it.
//!
//! Modules, from the edge inwards (ARCHITECTURE.md has the layers and what each may use):
//! - `cli`: flags, tracing, signals, exit codes.
//! - `rpc`: JSON-RPC 2.0 over the Unix socket: the serve loop, the method table, error codes.
//! - `daemon`: the registry of projects and VM actors; `castra.up`/`down`/`plan`.
//! - `operations`: one `castra.up` and its per-VM outcomes.
//! - `doctor`: `castra.doctor`, whether the machine and a project can run VMs, check by check.
//! - `vm`: one actor per VM, its supervisor, its state machine and snapshot.
//! - `backend`: how a VM is provided (QEMU, external): disk, launch, adopt, stop, discard.
//! - `pipeline`: one bootstrap run: the step machine, the guest-side driver, the run's record.
//! - `planner`: what a run will do and why (hashes, stamp, disk identity).
//! - `vizier`: the in-guest agent and its health check.
//! - `events`: the event bus with its replay ring.
//! - `drift`: the launch settings a running VM has against castra.toml's.
//! - `hashing`, `stamps`, `runlog`: artifact and base hashes, idempotence stamps, run logs.
//! - `ssh`: the OpenSSH client: argv, one connection per session, quoting.
//! - `config`, `overrides`: castra.toml and `--bootstrap`, parsed and validated.
//! - `state_root`: the only code that builds paths under the state directory.
//! - `instance`: the lock that keeps castrad one per state directory.
//! - `distro`: the distribution (os-release) and its package names, for fixes.
//! - `image`: disk images as qemu-img sees them; what a base image may be.
//! - `images`: the image store: base images fetched by URL or imported, content-addressed.
//! - `fsutil`, `ids`, `error`: atomic writes, random ids, error chains.

pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod distro;
pub mod doctor;
pub mod drift;
pub mod error;
pub mod events;
pub mod fsutil;
pub mod hashing;
pub mod ids;
pub mod image;
pub mod images;
pub mod instance;
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
