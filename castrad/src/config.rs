//! Loading and validation of the project file `castra.toml`.
//!
//! This module owns everything between the bytes of `castra.toml` (plus any `bootstrap.toml`
//! beside a bootstrap script) and a fully validated [`Project`]: TOML parsing, typed
//! deserialization into private `Raw*` mirror structs (which keep byte spans via
//! [`toml::Spanned`]), semantic validation, defaulting, replica expansion, `{vm}` substitution,
//! path resolution and, in [`load`] only, stat-ing referenced files and merging `bootstrap.toml`.
//!
//! Invariants of a returned [`Project`]: every path is absolute (resolved against the directory
//! of the file that named it); VM names are unique, file-name safe (`[a-z0-9-]`, 1..=63 chars,
//! not starting with `-`) and listed in file order after replica expansion; every `remote_dir`
//! is absolute with `{vm}` substituted; no two port forwards share a (host port, protocol).
//! Every failure is a [`ConfigError`] naming the file, a 1-based line and column, the key path
//! and what was expected. [`parse`] performs no file IO; [`load`] reads files and stats paths.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// The file name [`discover`] looks for.
pub const CONFIG_FILE_NAME: &str = "castra.toml";
/// The optional per-script metadata file merged by [`load`].
pub const METADATA_FILE_NAME: &str = "bootstrap.toml";
/// Default for `handshake_timeout_secs`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 120;
/// Default for `remote_dir`; `{vm}` is replaced by the expanded VM name.
pub const DEFAULT_REMOTE_DIR: &str = "/var/tmp/castra/{vm}";
/// Default VM memory in MiB (2 GiB).
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
/// Default number of virtual CPUs.
pub const DEFAULT_CPUS: u32 = 2;
/// Default ssh host for qemu VMs (castrad forwards a loopback port to guest port 22).
pub const DEFAULT_QEMU_SSH_HOST: &str = "127.0.0.1";
/// Default ssh port for external hosts.
pub const DEFAULT_EXTERNAL_SSH_PORT: u16 = 22;
/// Longest allowed VM or project name (after replica expansion).
pub const MAX_NAME_LEN: usize = 63;
/// Upper bound on `replicas`, so a typo cannot make castrad plan millions of VMs.
pub const MAX_REPLICAS: u32 = 1000;

const NAME_RULES: &str = "names may contain only lowercase ASCII letters (a-z), digits (0-9) \
                          and '-', must not start with '-', and must be 1 to 63 characters long";
const MODE_EXPECTED: &str = "expected one of auto, skip, always (or disabled)";
const MEMORY_EXPECTED: &str = "expected an integer number of MiB (e.g. 2048) or a size \
                               like \"512 MiB\", \"2 GiB\", \"2GiB\" or \"2G\"";
const SPANNED_PRIVATE_PREFIX: &str = "$__serde_spanned_private_";

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

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

/// The global `[bootstrap]` table after defaulting.
impl Project {
    /// The expanded VM names, in file order.
    pub fn vm_names(&self) -> Vec<&str> {
        self.vms.iter().map(|vm| vm.name.as_str()).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapDefaults {
    /// Default 120.
    pub handshake_timeout_secs: u64,
    /// Default `"/var/tmp/castra/{vm}"` (unsubstituted template).
    pub remote_dir: String,
    /// `[bootstrap.env]`.
    pub env: BTreeMap<String, String>,
}

impl Default for BootstrapDefaults {
    fn default() -> Self {
        BootstrapDefaults {
            handshake_timeout_secs: DEFAULT_HANDSHAKE_TIMEOUT_SECS,
            remote_dir: DEFAULT_REMOTE_DIR.to_owned(),
            env: BTreeMap::new(),
        }
    }
}

/// How a VM is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// castrad boots and owns the VM.
    Qemu,
    /// An already-running host reached only by SSH; no lifecycle.
    External,
}

impl BackendKind {
    /// Parses `qemu` or `external` (exact lowercase).
    pub fn parse(s: &str) -> Option<BackendKind> {
        match s {
            "qemu" => Some(BackendKind::Qemu),
            "external" => Some(BackendKind::External),
            _ => None,
        }
    }

    /// `"qemu"` or `"external"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::External => "external",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When the bootstrap script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootstrapMode {
    Auto,
    Skip,
    Always,
}

impl BootstrapMode {
    /// Parses `auto`, `skip`, `always` and the alias `disabled` (= Skip). Exact lowercase.
    pub fn parse(s: &str) -> Option<BootstrapMode> {
        match s {
            "auto" => Some(BootstrapMode::Auto),
            "skip" | "disabled" => Some(BootstrapMode::Skip),
            "always" => Some(BootstrapMode::Always),
            _ => None,
        }
    }

    /// `"auto"`, `"skip"` or `"always"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BootstrapMode::Auto => "auto",
            BootstrapMode::Skip => "skip",
            BootstrapMode::Always => "always",
        }
    }
}

/// Transport protocol of a port forward.
/// `accel` of a QEMU VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccelSetting {
    /// KVM when it can run a stock guest, else TCG (see `qemu::accel`).
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelSetting {
    pub fn parse(s: &str) -> Option<AccelSetting> {
        match s {
            "auto" => Some(AccelSetting::Auto),
            "kvm" => Some(AccelSetting::Kvm),
            "tcg" => Some(AccelSetting::Tcg),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Parses `tcp` or `udp` (exact lowercase).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host → guest port forward of a qemu VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
    /// Default tcp.
    pub protocol: Protocol,
}

/// How castrad reaches a VM over SSH.
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

/// The effective bootstrap settings of one (expanded) VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// Default Auto.
    pub mode: BootstrapMode,
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
    /// Where Vizier lives in the guest (`{vm}` substituted); None: `/opt/castra/vizier` for
    /// root, `<remote_dir>/.vizier` for other users.
    pub vizier_dir: Option<String>,
}

/// One VM after replica expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    /// Expanded name (`web-0`), or the declared name when replicas = 1.
    pub name: String,
    /// The `name` as written in [[vms]].
    pub declared_name: String,
    /// Some(i) when expanded from replicas > 1.
    pub replica: Option<u32>,
    pub description: Option<String>,
    pub backend: BackendKind,
    /// Required for qemu; rejected for external.
    pub base_image: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// Default 2, >= 1.
    pub cpus: u32,
    /// Default 2048.
    pub memory_mib: u64,
    /// Default false.
    pub ephemeral: bool,
    /// Which accelerator QEMU should use (default auto: KVM when it can run a stock guest).
    pub accel: AccelSetting,
    pub port_forwards: Vec<PortForward>,
    /// [vms.ssh] with bootstrap.toml [ssh] merged on top (field by field; options appended).
    pub ssh: Ssh,
    pub bootstrap: Bootstrap,
}

/// Errors. Display is a complete sentence naming file, line and column (1-based), the key path
/// (e.g. `vms[1].bootstrap.mode`) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File could not be read (missing, permission).
    #[error("{}: cannot read file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Anything wrong with the contents, with a precise location. `key` is empty for errors
    /// that concern the document as a whole (syntax errors, unknown top-level keys).
    #[error("{}:{line}:{column}: {}{message}", path.display(), key_prefix(key))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// (path, line, column) when known — castrad puts it in JSON-RPC error.data.
    pub fn location(&self) -> Option<(&Path, usize, usize)> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid {
                path, line, column, ..
            } => Some((path.as_path(), *line, *column)),
        }
    }

    /// The key path (`vms[0].bootstrap.mode`) of an `Invalid` error.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Reads and validates castra.toml at `path` (and each bootstrap.toml beside a script).
/// Does not touch anything but reading those files and stat-ing referenced paths.
pub fn load(path: &Path) -> Result<Project, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(read_error)?;
    let text = std::fs::read_to_string(&canonical).map_err(|source| ConfigError::Read {
        path: canonical.clone(),
        source,
    })?;
    let src = Source {
        path: &canonical,
        text: &text,
    };
    let mut parsed = parse_source(&src)?;
    check_files(&src, &parsed.decls)?;
    apply_metadata(&mut parsed)?;
    Ok(parsed.project)
}

/// Pure: parse + validate from text, resolving relative paths against `path.parent()`.
/// Does not read bootstrap.toml files or check that referenced files exist (load does that).
pub fn parse(path: &Path, text: &str) -> Result<Project, ConfigError> {
    let config_path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let src = Source {
        path: &config_path,
        text,
    };
    parse_source(&src).map(|parsed| parsed.project)
}

/// Walks up from `start` looking for castra.toml; returns the first found.
pub fn discover(start: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
    start
        .ancestors()
        .map(|dir| dir.join(CONFIG_FILE_NAME))
        .find(|candidate| candidate.is_file())
}

// ---------------------------------------------------------------------------------------------
// Source text, locations, error construction
// ---------------------------------------------------------------------------------------------

/// A file being validated: errors point into its text.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span.map_or((1, 1), |s| line_col(self.text, s.start));
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn at<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(Some(value.span()), key, message)
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("/"))
    }
}

/// 1-based (line, column) of a byte offset; the column counts characters.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// `prefix.name`, or just `name` at the top level.
fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A table key as it would appear in a dotted key path (quoted when not a bare TOML key).
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization and translation of toml/serde errors
// ---------------------------------------------------------------------------------------------

/// Parses the TOML text of `src` into `T`, turning every failure into a located error.
fn deserialize<T: DeserializeOwned>(src: &Source<'_>) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(src.text)
        .map_err(|e| src.error(e.span(), "", format!("TOML syntax error: {}", e.message())))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| translate_serde_error(src, &e))
}

enum Segment {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|segment| match segment {
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Map { key } if key.starts_with(SPANNED_PRIVATE_PREFIX) => None,
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect()
}

fn render_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) if out.is_empty() => out.push_str(&key_segment(k)),
            Segment::Key(k) => {
                out.push('.');
                out.push_str(&key_segment(k));
            }
        }
    }
    out
}

fn translate_serde_error(
    src: &Source<'_>,
    err: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let inner = err.inner();
    let mut segments = path_segments(err.path());
    let message = inner.message();
    if message.starts_with("unknown field `") {
        let unknown = match segments.pop() {
            Some(Segment::Key(k)) => k,
            _ => first_backticked(message).unwrap_or_default().to_owned(),
        };
        let rest = message
            .strip_prefix(&format!("unknown field `{unknown}`"))
            .unwrap_or(message);
        let expected = backticked(rest);
        let text = unknown_key_message(&unknown, &expected, segments.is_empty());
        return src.error(inner.span(), &render_path(&segments), text);
    }
    src.error(
        inner.span(),
        &render_path(&segments),
        humanize_serde_message(message),
    )
}

/// Rewrites serde's phrasing ("invalid type: string \"x\", expected i64") into ours.
fn humanize_serde_message(message: &str) -> String {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("missing required key `{field}`");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|r| r.rsplit_once(", expected "))
        {
            return format!(
                "expected {}, found {}",
                describe_expected(expected),
                describe_found(found)
            );
        }
    }
    message.to_owned()
}

fn describe_expected(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer".to_owned(),
        "a boolean" => "a boolean (true or false)".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        s if s.starts_with("struct ") => "a table".to_owned(),
        s => s.to_owned(),
    }
}

fn describe_found(found: &str) -> String {
    match found {
        "map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        s => s.to_owned(),
    }
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn first_backticked(s: &str) -> Option<&str> {
    backticked(s).into_iter().next()
}

fn unknown_key_message(unknown: &str, expected: &[&str], top_level: bool) -> String {
    let what = if top_level {
        "unknown top-level key"
    } else {
        "unknown key"
    };
    if let Some(suggestion) = suggest(unknown, expected) {
        return format!("{what} `{unknown}`; did you mean `{suggestion}`?");
    }
    if expected.is_empty() {
        return format!("{what} `{unknown}`; this table takes no keys");
    }
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    format!("{what} `{unknown}`; expected one of {}", list.join(", "))
}

/// The known key closest to `unknown`, if it is close enough to be a plausible typo: within
/// a third of its length in edits (at least one), or sharing most of its characters in order.
fn suggest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    const JARO_WINKLER_THRESHOLD: f64 = 0.85;
    let unknown = unknown.to_ascii_lowercase();
    let max_edits = (unknown.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| {
            let edits = strsim::damerau_levenshtein(&unknown, c);
            let similarity = strsim::jaro_winkler(&unknown, c);
            (edits, similarity, *c)
        })
        .filter(|(edits, similarity, _)| {
            *edits <= max_edits || *similarity >= JARO_WINKLER_THRESHOLD
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) structures
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<String>,
    project: RawProject,
    bootstrap: Option<RawGlobalBootstrap>,
    vms: Option<Vec<RawVm>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobalBootstrap {
    handshake_timeout_secs: Option<Spanned<i64>>,
    remote_dir: Option<Spanned<String>>,
    env: Option<RawEnv>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: Spanned<String>,
    description: Option<String>,
    replicas: Option<Spanned<i64>>,
    backend: Option<Spanned<String>>,
    base_image: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    initrd: Option<Spanned<String>>,
    cmdline: Option<Spanned<String>>,
    cpus: Option<Spanned<i64>>,
    memory: Option<Spanned<RawMemory>>,
    ephemeral: Option<Spanned<bool>>,
    accel: Option<Spanned<String>>,
    port_forwards: Option<Spanned<Vec<RawPortForward>>>,
    ssh: Option<RawSsh>,
    bootstrap: Option<RawVmBootstrap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortForward {
    host: Spanned<i64>,
    guest: Spanned<i64>,
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    host: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    user: Option<Spanned<String>>,
    identity: Option<Spanned<String>>,
    options: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVmBootstrap {
    mode: Option<Spanned<String>>,
    script: Option<Spanned<String>>,
    payload: Option<Spanned<String>>,
    verify_command: Option<String>,
    verify_path: Option<Spanned<String>>,
    handshake_timeout_secs: Option<Spanned<i64>>,
    remote_dir: Option<Spanned<String>>,
    vizier_dir: Option<Spanned<String>>,
    env: Option<RawEnv>,
}

/// Contents of a `bootstrap.toml` beside a script.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    ssh: Option<RawSsh>,
    env: Option<RawEnv>,
}

type RawEnv = BTreeMap<Spanned<String>, Spanned<EnvValue>>;

/// `memory` as written: an integer (MiB) or a size string.
enum RawMemory {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawMemory {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MemoryVisitor;
        impl Visitor<'_> for MemoryVisitor {
            type Value = RawMemory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"2 GiB\" or an integer number of MiB")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawMemory, E> {
                Ok(RawMemory::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawMemory, E> {
                Ok(RawMemory::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawMemory, E> {
                Ok(RawMemory::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(MemoryVisitor)
    }
}

/// An env value as written. Non-strings are accepted here and rejected during validation, so
/// the error can name the variable (serde's key path cannot see through spanned map keys).
enum EnvValue {
    Text(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("an integer"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("an integer"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("a float"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Other("a boolean"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvValue, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(EnvValue::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
                let mut kind = "a table";
                while let Some(key) = map.next_key::<String>()? {
                    if key == "$__toml_private_datetime" {
                        kind = "a date/time";
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(EnvValue::Other(kind))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of castra.toml
// ---------------------------------------------------------------------------------------------

/// A key path and the span of its value.
type KeySpan = (String, Range<usize>);

/// A path `load` must stat: `key` and `span` locate it in castra.toml.
struct FileCheck {
    key: String,
    span: Range<usize>,
    path: PathBuf,
    directory_ok: bool,
}

/// What `load` needs to know about one `[[vms]]` entry beyond the `Vm`s it produced.
struct DeclInfo {
    /// Indices into `Project::vms` of the VMs expanded from this declaration.
    vms: Range<usize>,
    files: Vec<FileCheck>,
}

struct Parsed {
    project: Project,
    decls: Vec<DeclInfo>,
}

/// Global `[bootstrap]` after validation, with the span of `remote_dir` for later errors.
struct Defaults {
    public: BootstrapDefaults,
    remote_dir_span: Option<Range<usize>>,
}

/// A validated `[[vms]]` entry before replica expansion.
struct Decl {
    index: usize,
    name_span: Range<usize>,
    replicas: u32,
    template: Vm,
    /// Where the effective remote_dir template came from (None = built-in default).
    remote_dir_origin: Option<KeySpan>,
    /// Span of each port forward's `host` value, parallel to `template.port_forwards`.
    forward_spans: Vec<Range<usize>>,
    files: Vec<FileCheck>,
}

/// Where an expanded VM came from, for duplicate and clash messages.
struct Origin {
    decl: usize,
    declared_name: String,
    replicas: u32,
    name_span: Range<usize>,
    forward_spans: Vec<Range<usize>>,
}

fn parse_source(src: &Source<'_>) -> Result<Parsed, ConfigError> {
    let raw: RawFile = deserialize(src)?;
    let name = validate_name(src, &raw.project.name, "project.name", "project")?;
    let defaults = validate_defaults(src, raw.bootstrap.as_ref())?;
    let mut vms = Vec::new();
    let mut origins = Vec::new();
    let mut decls = Vec::new();
    for (index, raw_vm) in raw.vms.iter().flatten().enumerate() {
        let decl = validate_vm(src, &defaults, index, raw_vm)?;
        let start = vms.len();
        for vm in expand(src, &decl)? {
            origins.push(Origin {
                decl: decl.index,
                declared_name: decl.template.declared_name.clone(),
                replicas: decl.replicas,
                name_span: decl.name_span.clone(),
                forward_spans: decl.forward_spans.clone(),
            });
            vms.push(vm);
        }
        decls.push(DeclInfo {
            vms: start..vms.len(),
            files: decl.files,
        });
    }
    check_unique_names(src, &vms, &origins)?;
    check_port_clashes(src, &vms, &origins)?;
    let project = Project {
        config_path: src.path.to_path_buf(),
        version: raw.version,
        name,
        bootstrap_defaults: defaults.public,
        vms,
    };
    Ok(Parsed { project, decls })
}

fn validate_defaults(
    src: &Source<'_>,
    raw: Option<&RawGlobalBootstrap>,
) -> Result<Defaults, ConfigError> {
    let mut defaults = Defaults {
        public: BootstrapDefaults::default(),
        remote_dir_span: None,
    };
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    if let Some(timeout) = &raw.handshake_timeout_secs {
        defaults.public.handshake_timeout_secs =
            positive_u64(src, timeout, "bootstrap.handshake_timeout_secs")?;
    }
    if let Some(dir) = &raw.remote_dir {
        check_remote_dir(src, dir.get_ref(), dir.span(), "bootstrap.remote_dir", None)?;
        defaults.public.remote_dir = dir.get_ref().clone();
        defaults.remote_dir_span = Some(dir.span());
    }
    defaults.public.env = validate_env(src, raw.env.as_ref(), "bootstrap.env")?;
    Ok(defaults)
}

fn validate_vm(
    src: &Source<'_>,
    defaults: &Defaults,
    index: usize,
    raw: &RawVm,
) -> Result<Decl, ConfigError> {
    let key = format!("vms[{index}]");
    let k = |name: &str| join_key(&key, name);
    let declared_name = validate_name(src, &raw.name, &k("name"), "VM")?;
    let replicas = match &raw.replicas {
        Some(r) => bounded(
            src,
            r,
            &k("replicas"),
            1,
            i64::from(MAX_REPLICAS),
            "replicas",
        )? as u32,
        None => 1,
    };
    check_expanded_name_length(src, &raw.name, &k("name"), replicas)?;
    let backend = match &raw.backend {
        Some(b) => BackendKind::parse(b.get_ref()).ok_or_else(|| {
            let message = format!(
                "unknown backend {:?}; expected \"qemu\" or \"external\"",
                b.get_ref()
            );
            src.at(b, &k("backend"), message)
        })?,
        None => BackendKind::Qemu,
    };
    match backend {
        BackendKind::External => check_external(src, raw, &key)?,
        BackendKind::Qemu => check_qemu(src, raw, &key)?,
    }
    let mut files = Vec::new();
    let base_image = file_path(
        src,
        raw.base_image.as_ref(),
        &k("base_image"),
        false,
        &mut files,
    )?;
    let kernel = file_path(src, raw.kernel.as_ref(), &k("kernel"), false, &mut files)?;
    let initrd = file_path(src, raw.initrd.as_ref(), &k("initrd"), false, &mut files)?;
    let cmdline = raw
        .cmdline
        .as_ref()
        .map(|c| no_nul(src, c, &k("cmdline")))
        .transpose()?;
    let cpus = match &raw.cpus {
        Some(c) => bounded(src, c, &k("cpus"), 1, i64::from(u32::MAX), "cpus")? as u32,
        None => DEFAULT_CPUS,
    };
    let memory_mib = match &raw.memory {
        Some(m) => memory_mib(src, m, &k("memory"))?,
        None => DEFAULT_MEMORY_MIB,
    };
    let accel = match &raw.accel {
        None => AccelSetting::Auto,
        Some(a) => AccelSetting::parse(a.get_ref()).ok_or_else(|| {
            let message = format!(
                "unknown accelerator {:?}; expected one of auto, kvm, tcg",
                a.get_ref()
            );
            src.at(a, &k("accel"), message)
        })?,
    };
    let (port_forwards, forward_spans) = validate_forwards(src, raw.port_forwards.as_ref(), &key)?;
    let mut ssh = match &raw.ssh {
        Some(s) => validate_ssh(src, s, &k("ssh"))?,
        None => Ssh::default(),
    };
    apply_ssh_defaults(&mut ssh, backend);
    let (bootstrap, remote_dir_origin) =
        validate_vm_bootstrap(src, defaults, raw.bootstrap.as_ref(), &key, &mut files)?;
    let template = Vm {
        name: declared_name.clone(),
        declared_name,
        replica: None,
        description: raw.description.clone(),
        backend,
        base_image,
        kernel,
        initrd,
        cmdline,
        cpus,
        memory_mib,
        ephemeral: raw.ephemeral.as_ref().is_some_and(|e| *e.get_ref()),
        accel,
        port_forwards,
        ssh,
        bootstrap,
    };
    Ok(Decl {
        index,
        name_span: raw.name.span(),
        replicas,
        template,
        remote_dir_origin,
        forward_spans,
        files,
    })
}

/// External hosts have no lifecycle: reject every key that only makes sense for qemu.
fn check_external(src: &Source<'_>, raw: &RawVm, key: &str) -> Result<(), ConfigError> {
    let ephemeral = raw
        .ephemeral
        .as_ref()
        .filter(|e| *e.get_ref())
        .map(Spanned::span);
    let forbidden = [
        ("base_image", raw.base_image.as_ref().map(Spanned::span)),
        ("kernel", raw.kernel.as_ref().map(Spanned::span)),
        ("initrd", raw.initrd.as_ref().map(Spanned::span)),
        ("cmdline", raw.cmdline.as_ref().map(Spanned::span)),
        (
            "port_forwards",
            raw.port_forwards.as_ref().map(Spanned::span),
        ),
        ("ephemeral", ephemeral),
        ("accel", raw.accel.as_ref().map(Spanned::span)),
        ("cpus", raw.cpus.as_ref().map(Spanned::span)),
        ("memory", raw.memory.as_ref().map(Spanned::span)),
    ];
    for (name, span) in forbidden {
        if let Some(span) = span {
            let message = format!(
                "external VMs have no lifecycle (castrad only connects to them over SSH), so \
                 `{name}` does not apply; remove it or use backend = \"qemu\""
            );
            return Err(src.error(Some(span), &join_key(key, name), message));
        }
    }
    let has_host = raw.ssh.as_ref().is_some_and(|s| s.host.is_some());
    if !has_host {
        let message = "missing required key `ssh.host`: external VMs are reached only by SSH, \
                       so [vms.ssh] must name the host";
        return Err(src.at(&raw.name, &join_key(key, "ssh.host"), message));
    }
    Ok(())
}

fn check_qemu(src: &Source<'_>, raw: &RawVm, key: &str) -> Result<(), ConfigError> {
    if raw.base_image.is_none() {
        let message = "missing required key `base_image`: qemu VMs boot from a disk image \
                       (set backend = \"external\" for an existing host)";
        return Err(src.at(&raw.name, &join_key(key, "base_image"), message));
    }
    if raw.kernel.is_none() {
        for (name, value) in [("initrd", &raw.initrd), ("cmdline", &raw.cmdline)] {
            if let Some(value) = value {
                let message = format!("`{name}` requires `kernel` (direct kernel boot)");
                return Err(src.at(value, &join_key(key, name), message));
            }
        }
    }
    Ok(())
}

fn apply_ssh_defaults(ssh: &mut Ssh, backend: BackendKind) {
    match backend {
        BackendKind::Qemu => {
            ssh.host
                .get_or_insert_with(|| DEFAULT_QEMU_SSH_HOST.to_owned());
        }
        BackendKind::External => {
            ssh.port.get_or_insert(DEFAULT_EXTERNAL_SSH_PORT);
        }
    }
}

fn validate_forwards(
    src: &Source<'_>,
    raw: Option<&Spanned<Vec<RawPortForward>>>,
    key: &str,
) -> Result<(Vec<PortForward>, Vec<Range<usize>>), ConfigError> {
    let mut forwards = Vec::new();
    let mut spans = Vec::new();
    for (i, raw) in raw.map(Spanned::get_ref).into_iter().flatten().enumerate() {
        let key = format!("{key}.port_forwards[{i}]");
        let protocol = match &raw.protocol {
            Some(p) => Protocol::parse(p.get_ref()).ok_or_else(|| {
                let message = format!(
                    "unknown protocol {:?}; expected \"tcp\" or \"udp\"",
                    p.get_ref()
                );
                src.at(p, &join_key(&key, "protocol"), message)
            })?,
            None => Protocol::Tcp,
        };
        forwards.push(PortForward {
            host: port(src, &raw.host, &join_key(&key, "host"))?,
            guest: port(src, &raw.guest, &join_key(&key, "guest"))?,
            protocol,
        });
        spans.push(raw.host.span());
    }
    Ok((forwards, spans))
}

fn validate_vm_bootstrap(
    src: &Source<'_>,
    defaults: &Defaults,
    raw: Option<&RawVmBootstrap>,
    vm_key: &str,
    files: &mut Vec<FileCheck>,
) -> Result<(Bootstrap, Option<KeySpan>), ConfigError> {
    let key = join_key(vm_key, "bootstrap");
    let k = |name: &str| join_key(&key, name);
    let global_origin = defaults
        .remote_dir_span
        .clone()
        .map(|span| ("bootstrap.remote_dir".to_owned(), span));
    let mut bootstrap = Bootstrap {
        mode: BootstrapMode::Auto,
        script: None,
        payload: None,
        verify_command: None,
        verify_path: None,
        handshake_timeout_secs: defaults.public.handshake_timeout_secs,
        remote_dir: defaults.public.remote_dir.clone(),
        env: defaults.public.env.clone(),
        metadata_path: None,
        vizier_dir: None,
    };
    let Some(raw) = raw else {
        return Ok((bootstrap, global_origin));
    };
    if let Some(mode) = &raw.mode {
        bootstrap.mode = BootstrapMode::parse(mode.get_ref()).ok_or_else(|| {
            let message = format!("unknown mode {:?}; {MODE_EXPECTED}", mode.get_ref());
            src.at(mode, &k("mode"), message)
        })?;
    }
    bootstrap.script = file_path(src, raw.script.as_ref(), &k("script"), false, files)?;
    bootstrap.payload = file_path(src, raw.payload.as_ref(), &k("payload"), true, files)?;
    bootstrap.verify_command = raw.verify_command.clone();
    if let Some(path) = &raw.verify_path {
        bootstrap.verify_path = Some(verify_path(src, path, &k("verify_path"))?);
    }
    if let Some(timeout) = &raw.handshake_timeout_secs {
        bootstrap.handshake_timeout_secs =
            positive_u64(src, timeout, &k("handshake_timeout_secs"))?;
    }
    if let Some(dir) = &raw.vizier_dir {
        check_remote_dir(src, dir.get_ref(), dir.span(), &k("vizier_dir"), None)?;
        bootstrap.vizier_dir = Some(dir.get_ref().clone());
    }
    let mut origin = global_origin;
    if let Some(dir) = &raw.remote_dir {
        check_remote_dir(src, dir.get_ref(), dir.span(), &k("remote_dir"), None)?;
        bootstrap.remote_dir = dir.get_ref().clone();
        origin = Some((k("remote_dir"), dir.span()));
    }
    bootstrap
        .env
        .extend(validate_env(src, raw.env.as_ref(), &k("env"))?);
    Ok((bootstrap, origin))
}

/// Produces the VMs of one declaration: itself, or `name-0 … name-(N-1)`.
fn expand(src: &Source<'_>, decl: &Decl) -> Result<Vec<Vm>, ConfigError> {
    let replicas: Vec<Option<u32>> = if decl.replicas > 1 {
        (0..decl.replicas).map(Some).collect()
    } else {
        vec![None]
    };
    replicas
        .into_iter()
        .map(|replica| {
            let mut vm = decl.template.clone();
            if let Some(i) = replica {
                vm.name = format!("{}-{i}", vm.declared_name);
            }
            vm.replica = replica;
            vm.bootstrap.remote_dir = vm.bootstrap.remote_dir.replace("{vm}", &vm.name);
            if let Some(dir) = &mut vm.bootstrap.vizier_dir {
                *dir = dir.replace("{vm}", &vm.name);
            }
            if let Some((key, span)) = &decl.remote_dir_origin {
                check_remote_dir(
                    src,
                    &vm.bootstrap.remote_dir,
                    span.clone(),
                    key,
                    Some(&vm.name),
                )?;
            }
            Ok(vm)
        })
        .collect()
}

fn check_unique_names(src: &Source<'_>, vms: &[Vm], origins: &[Origin]) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, vm) in vms.iter().enumerate() {
        if let Some(&first) = seen.get(vm.name.as_str()) {
            let (a, b) = (&origins[first], &origins[i]);
            let message = format!(
                "duplicate VM name {:?}: declared by {} and again by {}",
                vm.name,
                describe_origin(src, a),
                describe_origin(src, b)
            );
            let key = format!("vms[{}].name", b.decl);
            return Err(src.error(Some(b.name_span.clone()), &key, message));
        }
        seen.insert(&vm.name, i);
    }
    Ok(())
}

fn describe_origin(src: &Source<'_>, origin: &Origin) -> String {
    let line = src.line_of(&origin.name_span);
    if origin.replicas > 1 {
        format!(
            "vms[{}] (name {:?} with replicas = {}, line {line})",
            origin.decl, origin.declared_name, origin.replicas
        )
    } else {
        format!("vms[{}] (line {line})", origin.decl)
    }
}

fn check_port_clashes(src: &Source<'_>, vms: &[Vm], origins: &[Origin]) -> Result<(), ConfigError> {
    let mut seen: HashMap<(u16, Protocol), (usize, usize)> = HashMap::new();
    for (v, vm) in vms.iter().enumerate() {
        for (f, forward) in vm.port_forwards.iter().enumerate() {
            let slot = (forward.host, forward.protocol);
            let Some(&(first_vm, first_forward)) = seen.get(&slot) else {
                seen.insert(slot, (v, f));
                continue;
            };
            let origin = &origins[v];
            let first_origin = &origins[first_vm];
            let span = origin.forward_spans[f].clone();
            let mut message = format!(
                "host port {}/{} is forwarded twice: by VM {:?} (vms[{}].port_forwards[{first_forward}], \
                 line {}) and by VM {:?}",
                forward.host,
                forward.protocol.as_str(),
                vms[first_vm].name,
                first_origin.decl,
                src.line_of(&first_origin.forward_spans[first_forward]),
                vm.name
            );
            if first_origin.decl == origin.decl {
                message.push_str(
                    "; replicas of a VM cannot share a host port forward (use replicas = 1 or \
                     declare each VM with its own host port)",
                );
            }
            let key = format!("vms[{}].port_forwards[{f}].host", origin.decl);
            return Err(src.error(Some(span), &key, message));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Value validators (shared by castra.toml and bootstrap.toml)
// ---------------------------------------------------------------------------------------------

fn validate_name(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
) -> Result<String, ConfigError> {
    let name = value.get_ref();
    if is_valid_name(name) {
        Ok(name.clone())
    } else {
        Err(src.at(
            value,
            key,
            format!("invalid {what} name {name:?}: {NAME_RULES}"),
        ))
    }
}

/// `[a-z0-9-]{1,63}`, not starting with `-`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_expanded_name_length(
    src: &Source<'_>,
    name: &Spanned<String>,
    key: &str,
    replicas: u32,
) -> Result<(), ConfigError> {
    if replicas <= 1 {
        return Ok(());
    }
    let longest = format!("{}-{}", name.get_ref(), replicas - 1);
    if longest.len() <= MAX_NAME_LEN {
        return Ok(());
    }
    let message = format!(
        "VM name {:?} with replicas = {replicas} expands to {longest:?} ({} characters); \
         expanded names must be at most {MAX_NAME_LEN} characters",
        name.get_ref(),
        longest.len()
    );
    Err(src.at(name, key, message))
}

/// An integer in `min..=max`.
fn bounded(
    src: &Source<'_>,
    value: &Spanned<i64>,
    key: &str,
    min: i64,
    max: i64,
    what: &str,
) -> Result<i64, ConfigError> {
    let v = *value.get_ref();
    if (min..=max).contains(&v) {
        return Ok(v);
    }
    let message = if max == i64::MAX {
        format!("{what} must be at least {min}, got {v}")
    } else {
        format!("{what} must be between {min} and {max}, got {v}")
    };
    Err(src.at(value, key, message))
}

fn positive_u64(src: &Source<'_>, value: &Spanned<i64>, key: &str) -> Result<u64, ConfigError> {
    Ok(bounded(src, value, key, 1, i64::MAX, "handshake_timeout_secs")? as u64)
}

fn port(src: &Source<'_>, value: &Spanned<i64>, key: &str) -> Result<u16, ConfigError> {
    Ok(bounded(src, value, key, 1, i64::from(u16::MAX), "port")? as u16)
}

fn memory_mib(src: &Source<'_>, value: &Spanned<RawMemory>, key: &str) -> Result<u64, ConfigError> {
    let parsed = match value.get_ref() {
        RawMemory::Int(n) if *n >= 1 => Ok(*n as u64),
        RawMemory::Int(n) => Err(format!(
            "memory must be at least 1 MiB, got {n}; {MEMORY_EXPECTED}"
        )),
        RawMemory::Text(text) => parse_memory_mib(text),
    };
    parsed.map_err(|message| src.at(value, key, message))
}

/// Parses `"2 GiB"`, `"512 MiB"`, `"2GiB"`, `"2G"`, `"1024"` (MiB) into MiB.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid memory size {text:?}; {MEMORY_EXPECTED}");
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "m" | "mib" => 1,
        "g" | "gib" => 1024,
        "t" | "tib" => 1024 * 1024,
        _ => return Err(invalid()),
    };
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let mib = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("memory size {text:?} is too large"))?;
    if mib == 0 {
        return Err(format!(
            "memory must be at least 1 MiB, got {text:?}; {MEMORY_EXPECTED}"
        ));
    }
    Ok(mib)
}

fn no_nul(src: &Source<'_>, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    if value.get_ref().contains('\0') {
        return Err(src.at(value, key, "must not contain a NUL character"));
    }
    Ok(value.get_ref().clone())
}

/// Resolves a path value against `base`, dropping `.` components.
fn resolve_path(
    src: &Source<'_>,
    base: &Path,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    let raw = value.get_ref();
    if raw.is_empty() {
        return Err(src.at(value, key, "expected a path, found an empty string"));
    }
    if raw.contains('\0') {
        return Err(src.at(value, key, "paths must not contain a NUL character"));
    }
    Ok(base.join(raw).components().collect())
}

/// Resolves an optional file path and records that `load` must stat it.
fn file_path(
    src: &Source<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    directory_ok: bool,
    files: &mut Vec<FileCheck>,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let path = resolve_path(src, src.dir(), value, key)?;
    files.push(FileCheck {
        key: key.to_owned(),
        span: value.span(),
        path: path.clone(),
        directory_ok,
    });
    Ok(Some(path))
}

fn verify_path(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let raw = value.get_ref();
    let path = Path::new(raw);
    let problem = if raw.contains('\0') || raw.contains('\n') {
        Some("must not contain NUL or newline characters")
    } else if path.has_root() {
        Some("must be relative to remote_dir, not absolute")
    } else if path.components().any(|c| c == Component::ParentDir) {
        Some("must not contain `..` components")
    } else if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        Some("must name a path relative to remote_dir, not be empty")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(src.at(value, key, format!("verify_path {raw:?} {problem}"))),
        None => Ok(raw.clone()),
    }
}

/// Checks a remote_dir (template, or substituted when `vm` is given).
fn check_remote_dir(
    src: &Source<'_>,
    dir: &str,
    span: Range<usize>,
    key: &str,
    vm: Option<&str>,
) -> Result<(), ConfigError> {
    let problem = if dir.contains('\0') || dir.contains('\n') {
        Some("must not contain NUL or newline characters")
    } else if !dir.starts_with('/') {
        Some("must be an absolute path (starting with '/')")
    } else {
        None
    };
    let Some(problem) = problem else {
        return Ok(());
    };
    let subject = match vm {
        Some(vm) => format!("remote_dir {dir:?} (for VM {vm:?})"),
        None => format!("remote_dir {dir:?}"),
    };
    Err(src.error(Some(span), key, format!("{subject} {problem}")))
}

fn validate_env(
    src: &Source<'_>,
    raw: Option<&RawEnv>,
    key: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut entries: Vec<_> = raw.into_iter().flatten().collect();
    entries.sort_by_key(|(name, _)| name.span().start);
    let mut env = BTreeMap::new();
    for (name, value) in entries {
        let entry_key = join_key(key, &key_segment(name.get_ref()));
        check_env_name(src, name, &entry_key)?;
        let text = match value.get_ref() {
            EnvValue::Text(text) => text,
            EnvValue::Other(kind) => {
                let message = format!("expected a string, found {kind} (quote the value)");
                return Err(src.at(value, &entry_key, message));
            }
        };
        if text.contains('\0') {
            return Err(src.at(value, &entry_key, "environment values must not contain NUL"));
        }
        env.insert(name.get_ref().clone(), text.clone());
    }
    Ok(env)
}

fn check_env_name(src: &Source<'_>, name: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
    let n = name.get_ref();
    let mut chars = n.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        let message = format!(
            "invalid environment variable name {n:?}; expected letters, digits and '_', not \
             starting with a digit ([A-Za-z_][A-Za-z0-9_]*)"
        );
        return Err(src.at(name, key, message));
    }
    if n.starts_with("CASTRA_") {
        let message = format!(
            "environment variable {n:?} uses the reserved prefix CASTRA_ (castrad sets those \
             itself); choose another name"
        );
        return Err(src.at(name, key, message));
    }
    Ok(())
}

/// Validates `[ssh]` keys (no defaults applied). Paths resolve against `src`'s directory.
fn validate_ssh(src: &Source<'_>, raw: &RawSsh, key: &str) -> Result<Ssh, ConfigError> {
    let k = |name: &str| join_key(key, name);
    let mut ssh = Ssh::default();
    if let Some(host) = &raw.host {
        ssh.host = Some(ssh_word(src, host, &k("host"), "host")?);
    }
    if let Some(p) = &raw.port {
        ssh.port = Some(port(src, p, &k("port"))?);
    }
    if let Some(user) = &raw.user {
        ssh.user = Some(ssh_word(src, user, &k("user"), "user")?);
    }
    if let Some(identity) = &raw.identity {
        ssh.identity = Some(identity_path(src, identity, &k("identity"))?);
    }
    for (i, option) in raw.options.iter().flatten().enumerate() {
        ssh.options
            .push(ssh_option(src, option, &format!("{}[{i}]", k("options")))?);
    }
    Ok(ssh)
}

/// A host or user name that is safe to pass to ssh as an argument.
fn ssh_word(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
) -> Result<String, ConfigError> {
    let v = value.get_ref();
    let valid = !v.is_empty()
        && !v.starts_with('-')
        && !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        let message = format!(
            "invalid ssh {what} {v:?}; expected a non-empty value without whitespace or control \
             characters, not starting with '-'"
        );
        return Err(src.at(value, key, message));
    }
    Ok(v.clone())
}

fn identity_path(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    let Some(rest) = value.get_ref().strip_prefix("~/") else {
        return resolve_path(src, src.dir(), value, key);
    };
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            src.at(
                value,
                key,
                "cannot expand `~/`: the HOME environment variable is not set",
            )
        })?;
    let expanded = Spanned::new(value.span(), rest.to_owned());
    if rest.is_empty() {
        return Ok(PathBuf::from(home));
    }
    resolve_path(src, Path::new(&home), &expanded, key)
}

fn ssh_option(src: &Source<'_>, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let v = value.get_ref();
    let valid = match v.split_once('=') {
        Some((name, val)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric())
                && !val.is_empty()
                && !v.contains(['\n', '\r', '\0'])
        }
        None => false,
    };
    if !valid {
        let message = format!(
            "invalid ssh option {v:?}; expected \"Key=Value\" with an alphanumeric key and a \
             non-empty value, e.g. \"StrictHostKeyChecking=no\""
        );
        return Err(src.at(value, key, message));
    }
    Ok(v.clone())
}

// ---------------------------------------------------------------------------------------------
// load-only steps: stat referenced files, merge bootstrap.toml
// ---------------------------------------------------------------------------------------------

fn check_files(src: &Source<'_>, decls: &[DeclInfo]) -> Result<(), ConfigError> {
    for check in decls.iter().flat_map(|d| &d.files) {
        let problem = match std::fs::metadata(&check.path) {
            Ok(meta) if meta.is_file() => None,
            Ok(meta) if meta.is_dir() && check.directory_ok => None,
            Ok(meta) if meta.is_dir() => Some("is a directory; expected a regular file".to_owned()),
            Ok(_) => Some("is not a regular file".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".to_owned()),
            Err(e) => Some(format!("cannot be accessed: {e}")),
        };
        if let Some(problem) = problem {
            let message = format!("path {} {problem}", check.path.display());
            return Err(src.error(Some(check.span.clone()), &check.key, message));
        }
    }
    Ok(())
}

/// A validated bootstrap.toml.
struct Metadata {
    path: PathBuf,
    ssh: Ssh,
    env: BTreeMap<String, String>,
}

fn apply_metadata(parsed: &mut Parsed) -> Result<(), ConfigError> {
    let mut cache: HashMap<PathBuf, Option<Metadata>> = HashMap::new();
    for decl in &parsed.decls {
        let first = &parsed.project.vms[decl.vms.start..decl.vms.end];
        let Some(script) = first.first().and_then(|vm| vm.bootstrap.script.clone()) else {
            continue;
        };
        let dir = script.parent().unwrap_or_else(|| Path::new("/"));
        let path = dir.join(METADATA_FILE_NAME);
        if !cache.contains_key(&path) {
            let loaded = load_metadata(&path)?;
            cache.insert(path.clone(), loaded);
        }
        let Some(Some(metadata)) = cache.get(&path) else {
            continue;
        };
        for vm in &mut parsed.project.vms[decl.vms.clone()] {
            merge_metadata(vm, metadata);
        }
    }
    Ok(())
}

fn load_metadata(path: &Path) -> Result<Option<Metadata>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let src = Source { path, text: &text };
    let raw: RawMetadata = deserialize(&src)?;
    let ssh = match &raw.ssh {
        Some(s) => validate_ssh(&src, s, "ssh")?,
        None => Ssh::default(),
    };
    let env = validate_env(&src, raw.env.as_ref(), "env")?;
    Ok(Some(Metadata {
        path: path.to_path_buf(),
        ssh,
        env,
    }))
}

fn merge_metadata(vm: &mut Vm, metadata: &Metadata) {
    let over = &metadata.ssh;
    let ssh = &mut vm.ssh;
    if over.host.is_some() {
        ssh.host.clone_from(&over.host);
    }
    if over.port.is_some() {
        ssh.port = over.port;
    }
    if over.user.is_some() {
        ssh.user.clone_from(&over.user);
    }
    if over.identity.is_some() {
        ssh.identity.clone_from(&over.identity);
    }
    ssh.options.extend(over.options.iter().cloned());
    vm.bootstrap
        .env
        .extend(metadata.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    vm.bootstrap.metadata_path = Some(metadata.path.clone());
}

#[cfg(test)]
mod tests;
