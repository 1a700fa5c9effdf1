//! castractl: the command-line client of castrad.
//!
//! It finds the project file, talks to castrad over the Unix socket (JSON-RPC over WebSocket)
//! and renders results for people (tables) or programs (`--json`: JSON on every path, errors
//! included). Exit codes are a contract, listed in `--help` and in [`Exit`].
//!
//! - `cli`: flags and subcommands (clap), the entry point; `help` their long help texts.
//! - `client`: connecting to the daemon and mapping its errors to exit codes.
//! - `trust`: what castractl checks before believing castrad: the socket's owner and mode, the
//!   listener's uid, and every field of the SSH settings it runs ssh and sftp with.
//! - `console`: a VM's serial console (`castractl console`), escaped for the terminal.
//! - `copy`: `castractl cp` over sftp with castrad's SSH settings for the VM.
//! - `render`: human-readable output (tables, durations, one-line events).
//! - `progress`: following an operation live (`up`, `events`): JSON lines, plain lines or a
//!   board of spinners.
//! - `restart`: `castractl restart`: the restart, then `up`'s way of following it.
//! - `images`: `castractl image`: the image store (list, pull, remove, prune, adopt, catalog).
//! - `term`: the only writer of stdout and stderr: text escaped for the terminal, JSON as is.
//! - `doctor`: `castractl doctor`, castrad's checks behind its own (is castrad there?); when
//!   castrad does not answer, the machine's checks from `castrad --check`.
//! - `init`: `castractl init`, a commented castra.toml and bootstrap script for a cloud image.
//! - `completion`: shell completion scripts made from the command line's definition.

mod cli;
mod client;
pub mod completion;
mod console;
mod copy;
mod doctor;
mod help;
mod images;
mod init;
mod progress;
mod render;
mod restart;
mod term;
mod trust;

pub use cli::{command, main};

/// castractl's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The operation ran and failed.
    Failed = 1,
    /// Bad usage, bad castra.toml, or a preflight rejection (conflicting overrides, unknown VM,
    /// an image in use); a base image whose content does not match its checksum.
    Usage = 2,
    /// castrad is not reachable, or what listens on its socket is not the user's own.
    Unreachable = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}
