//! A QEMU VM's serial console: `castra.console` (the end of its log) and
//! `castra.subscribeConsole` (what the guest writes next, as `castra.consoleOutput`
//! notifications).
//!
//! The guest's output is untrusted bytes; it crosses the wire as UTF-8 text, lossily: a byte
//! sequence that is not UTF-8 becomes U+FFFD (a character split across two reads is joined
//! first). Control characters, escape sequences included, are passed as they are: it is the
//! client's job not to hand them to a terminal (castractl escapes them unless `--raw`).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How much of the log's end `castra.console` returns by default (64 KiB).
pub const CONSOLE_DEFAULT_BYTES: u64 = 64 << 10;
/// The most of the log's end `castra.console` or a subscription's `tail_bytes` returns
/// (1 MiB); larger requests are cut to it.
pub const CONSOLE_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConsoleParams {
    /// Absolute path of castra.toml.
    pub config: PathBuf,
    /// The VM (a QEMU VM, by expanded name).
    pub vm: String,
    /// At most this many bytes of the log's end [default 65536; at most 1048576].
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConsoleResult {
    pub vm: String,
    /// The serial log (`serial.log` in the VM's state directory), written by castrad since the
    /// VM's last launch and capped at `serial_log_max`.
    pub log_path: PathBuf,
    /// The end of the log, as UTF-8 (bytes that are not UTF-8 replaced by U+FFFD).
    pub text: String,
    /// How many bytes of the log `text` holds.
    pub bytes: u64,
    /// The log's size in bytes when it was read (0: no log yet).
    pub size: u64,
    /// True when the log has more than `text` (earlier bytes were left out).
    pub truncated: bool,
    /// True while castrad reads the VM's console (its QEMU runs): a subscription would follow.
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubscribeConsoleParams {
    /// Absolute path of castra.toml.
    pub config: PathBuf,
    /// The VM (a QEMU VM, by expanded name).
    pub vm: String,
    /// First send this many bytes of the log's end [default 0; at most 1048576], then what
    /// the guest writes next, without a byte lost or repeated between the two.
    #[serde(default)]
    pub tail_bytes: Option<u64>,
}

/// What a `castra.consoleOutput` notification carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConsoleChunk {
    pub vm: String,
    /// Console output, as UTF-8 (bytes that are not UTF-8 replaced by U+FFFD); at most 32 KiB
    /// of it a notification. Empty in a last notification with nothing left to say.
    pub text: String,
    /// Bytes of console output left out just before `text`: the log's start before the tail
    /// (first notification), or output past the subscription's rate bound.
    pub skipped_bytes: u64,
    /// Set on the subscription's last notification: why it ends (castrad then ends it).
    pub end: Option<ConsoleEnd>,
}

/// Why a console subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConsoleEnd {
    /// The VM stopped (its console closed) while followed.
    Stopped,
    /// The VM was not running when the subscription began: only the tail was sent.
    NotRunning,
}
