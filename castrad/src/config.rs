// STUB: replaced by the real module
//! The public interface castrad needs from `config.rs`. Field names and types are a contract;
//! private helpers are free. Every path below is absolute (resolved against the file that named it).

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A loaded, validated project: `castra.toml` plus every `bootstrap.toml` it pulls in.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// Absolute, canonicalized path of castra.toml.
    pub config_path: PathBuf,
    /// `version` key, if present.
    pub version: Option<String>,
    /// `[project] name` (required; same naming rules as VM names).
    pub name: String,
    /// Global `[bootstrap]` defaults after defaulting (kept for display).
    pub bootstrap_defaults: BootstrapDefaults,
    /// VMs after replica expansion, in file order (`web` with replicas = 2 → `web-0`, `web-1`).
    pub vms: Vec<Vm>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapDefaults {
    pub handshake_timeout_secs: u64, // default 120
    pub remote_dir: String,          // default "/var/tmp/castra/{vm}"
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Qemu,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootstrapMode {
    Auto,
    Skip,
    Always,
}

impl BootstrapMode {
    /// Parses `auto`, `skip`, `always` and the alias `disabled` (= Skip). Exact lowercase.
    pub fn parse(s: &str) -> Option<BootstrapMode> { match s { "auto" => Some(Self::Auto), "skip" | "disabled" => Some(Self::Skip), "always" => Some(Self::Always), _ => None } }
    pub fn as_str(self) -> &'static str { match self { Self::Auto => "auto", Self::Skip => "skip", Self::Always => "always" } }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
    pub protocol: Protocol, // default tcp
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ssh {
    /// qemu: default "127.0.0.1"; external: required.
    pub host: Option<String>,
    /// qemu: optional (None = castrad picks a free loopback port for guest port 22); external: default 22.
    pub port: Option<u16>,
    /// None = let ssh decide (~/.ssh/config, then the local user name).
    pub user: Option<String>,
    pub identity: Option<PathBuf>,
    /// Extra `-o` options, each "Key=Value" (validated: has '=', key is alphanumeric, no newline/NUL).
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    pub mode: BootstrapMode, // default Auto
    pub script: Option<PathBuf>,
    pub payload: Option<PathBuf>,
    pub verify_command: Option<String>,
    /// Relative to remote_dir (validated: relative, no `..` component, not empty).
    pub verify_path: Option<String>,
    /// per-VM, else global, else 120. Must be >= 1.
    pub handshake_timeout_secs: u64,
    /// per-VM, else global, else "/var/tmp/castra/{vm}"; `{vm}` is replaced by the expanded VM
    /// name. Must be absolute after substitution, no NUL/newline.
    pub remote_dir: String,
    /// global [bootstrap.env], overlaid by [vms.bootstrap.env], overlaid by bootstrap.toml [env].
    /// Keys must be valid env names ([A-Za-z_][A-Za-z0-9_]*); values any string without NUL.
    pub env: BTreeMap<String, String>,
    /// The bootstrap.toml beside the script, when it exists.
    pub metadata_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    /// Expanded name (`web-0`), or the declared name when replicas = 1.
    pub name: String,
    /// The `name` as written in [[vms]].
    pub declared_name: String,
    /// Some(i) when expanded from replicas > 1.
    pub replica: Option<u32>,
    pub description: Option<String>,
    pub backend: Backend,
    /// Required for qemu; rejected for external.
    pub base_image: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: u32,        // default 2, >= 1
    pub memory_mib: u64,
    pub ephemeral: bool,  // default false
    pub port_forwards: Vec<PortForward>,
    /// [vms.ssh] with bootstrap.toml [ssh] merged on top (field by field; options appended).
    pub ssh: Ssh,
    pub bootstrap: Bootstrap,
}

/// Errors. Display must be a complete, human sentence naming file, line and column (1-based),
/// the key path (e.g. `vms[1].bootstrap.mode`), and what was expected; e.g.
///   /p/castra.toml:7:8: vms[0].bootstrap.mode: unknown mode "sometimes"; expected one of auto, skip, always (or disabled)
///   /p/castra.toml:3:1: vms[0]: unknown key `scirpt`; did you mean `script`?
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File could not be read (missing, permission).
    #[error("{path}: {source}", path = path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Anything wrong with the contents, with a precise location.
    #[error("{path}:{line}:{column}: {key}: {message}", path = path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
    // (add variants if you need them, each with path + location where one exists)
}

impl ConfigError {
    /// (path, line, column) when known — castrad puts it in JSON-RPC error.data.
    pub fn location(&self) -> Option<(&std::path::Path, usize, usize)> { None }
}

/// Reads and validates castra.toml at `path` (and each bootstrap.toml beside a script).
/// Does not touch anything but reading those files and stat-ing referenced paths.
pub fn load(path: &std::path::Path) -> Result<Project, ConfigError> { Err(ConfigError::Read { path: path.into(), source: std::io::Error::other("stub") }) }

/// Pure: parse + validate from text, resolving relative paths against `path.parent()`.
/// Does not read bootstrap.toml files or check that referenced files exist (load does that).
pub fn parse(path: &std::path::Path, _text: &str) -> Result<Project, ConfigError> { Err(ConfigError::Read { path: path.into(), source: std::io::Error::other("stub") }) }

/// Walks up from `start` looking for castra.toml; returns the first found.
pub fn discover(_start: &std::path::Path) -> Option<PathBuf> { None }
