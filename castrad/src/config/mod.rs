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

mod base_image;
mod diagnostics;
pub mod libvirt;
pub mod mounts;
pub mod network;
mod raw;
mod reach;
pub mod ssh_options;
pub mod user_data;
mod validate;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use diagnostics::{Source, deserialize};
use raw::RawMetadata;
use validate::{DeclInfo, Parsed, parse_source};
use values::{validate_env, validate_ssh};

pub use base_image::{BaseImage, catalog_hint_for};
pub use mounts::{MAX_MOUNTS, guest_path};
pub use reach::{Access, Boundary, Grant, HostPath, UserConfig};
pub use values::{is_valid_name, parse_memory_mib};

/// The file name [`discover`] looks for.
pub const CONFIG_FILE_NAME: &str = "castra.toml";
/// The optional per-script metadata file merged by [`load`].
pub const METADATA_FILE_NAME: &str = "bootstrap.toml";
/// Default for `handshake_timeout_secs`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 120;
/// Default for `apply_timeout_secs`: an hour.
pub const DEFAULT_APPLY_TIMEOUT_SECS: u64 = 3600;
/// Default for `verify_timeout_secs`.
pub const DEFAULT_VERIFY_TIMEOUT_SECS: u64 = 60;
/// The longest `apply_timeout_secs` or `verify_timeout_secs`: a week.
pub const MAX_STEP_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Upper bound on `handshake_timeout_secs` (one day): a longer wait is a typo, and deadlines
/// computed from it must stay representable.
pub const MAX_HANDSHAKE_TIMEOUT_SECS: u64 = 86_400;
/// Default for `output_log_max`: a run's output log stops growing at 64 MiB.
pub const DEFAULT_OUTPUT_LOG_MAX_BYTES: u64 = 64 << 20;
/// Default for `serial_log_max`: a QEMU VM's serial.log and qemu.log stop at 64 MiB each.
pub const DEFAULT_SERIAL_LOG_MAX_BYTES: u64 = 64 << 20;
/// The smallest `output_log_max` or `serial_log_max`: 1 KiB.
pub const MIN_LOG_BYTES: u64 = 1 << 10;
/// The largest `output_log_max` or `serial_log_max`: 1 TiB.
pub const MAX_LOG_BYTES: u64 = 1 << 40;
/// Default for `keep_run_logs`: the newest 50 run logs of each VM are kept.
pub const DEFAULT_KEEP_RUN_LOGS: u32 = 50;
/// The largest `keep_run_logs`.
pub const MAX_KEEP_RUN_LOGS: u32 = 1_000_000;
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
    /// `[project] network`: whether the QEMU VMs share a project network (default: when
    /// there is more than one); each one's place on it is its [`Vm::network`].
    pub network: bool,
    /// `[project] image_mirror`: where this project's catalog images are fetched from
    /// (beats castrad's `--image-mirror`).
    pub image_mirror: Option<String>,
    /// Global `[bootstrap]` defaults after defaulting (kept for display).
    pub bootstrap_defaults: BootstrapDefaults,
    /// VMs after replica expansion, in file order (`web` with replicas = 2 → `web-0`, `web-1`).
    pub vms: Vec<Vm>,
    /// Every host path the project reads or shares, and why it may (`load_confined` fills
    /// it; empty otherwise).
    pub host_paths: Vec<HostPath>,
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
    /// Default 3600.
    pub apply_timeout_secs: u64,
    /// Default 60.
    pub verify_timeout_secs: u64,
    /// Default 64 MiB.
    pub output_log_max_bytes: u64,
    /// Default 50.
    pub keep_run_logs: u32,
    /// Default `"/var/tmp/castra/{vm}"` (unsubstituted template).
    pub remote_dir: String,
    /// `[bootstrap.env]`.
    pub env: BTreeMap<String, String>,
}

impl Default for BootstrapDefaults {
    fn default() -> Self {
        BootstrapDefaults {
            handshake_timeout_secs: DEFAULT_HANDSHAKE_TIMEOUT_SECS,
            apply_timeout_secs: DEFAULT_APPLY_TIMEOUT_SECS,
            verify_timeout_secs: DEFAULT_VERIFY_TIMEOUT_SECS,
            output_log_max_bytes: DEFAULT_OUTPUT_LOG_MAX_BYTES,
            keep_run_logs: DEFAULT_KEEP_RUN_LOGS,
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
    /// A persistent libvirt domain on this machine or a hypervisor reached over SSH.
    Libvirt,
}

impl BackendKind {
    /// Parses `qemu`, `external` or `libvirt` (exact lowercase).
    pub fn parse(s: &str) -> Option<BackendKind> {
        match s {
            "qemu" => Some(BackendKind::Qemu),
            "external" => Some(BackendKind::External),
            "libvirt" => Some(BackendKind::Libvirt),
            _ => None,
        }
    }

    /// `"qemu"`, `"external"` or `"libvirt"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::External => "external",
            BackendKind::Libvirt => "libvirt",
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

/// The firmware a QEMU VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    #[default]
    Bios,
    /// OVMF (the distribution's), with per-VM NVRAM variables.
    Uefi,
}

impl Firmware {
    pub fn parse(s: &str) -> Option<Firmware> {
        match s {
            "bios" => Some(Firmware::Bios),
            "uefi" => Some(Firmware::Uefi),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// `[vms.cloud_init]`: what castrad's NoCloud seed gives a QEMU VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloudInit {
    /// Attach a seed (default true for QEMU VMs; the busybox test guest turns it off).
    pub enabled: bool,
    /// Public key files whose keys join castrad's own in the user's authorized_keys.
    pub authorized_keys: Vec<PathBuf>,
    /// The user's own cloud-config, merged with castrad's part.
    pub user_data: Option<PathBuf>,
}

/// `[[vms.mounts]]`: a host directory shared with a QEMU VM (virtiofs, else 9p).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute (relative paths are resolved against castra.toml's directory); `load` checks
    /// that it is a directory.
    pub host: PathBuf,
    /// Where the guest sees it: absolute, normalized, not `/`; unique within the VM.
    pub guest: String,
    /// Default false. Enforced on the host, not only by the guest's mount options.
    pub readonly: bool,
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
    /// Extra `-o` options, each "Key=Value": the key on [`ssh_options::ALLOWED`] (any case), the
    /// value non-empty without control characters.
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
    /// How long the script may run: per-VM, else global, else 3600; 1 to a week.
    pub apply_timeout_secs: u64,
    /// How long verify_command may run: per-VM, else global, else 60; 1 to a week.
    pub verify_timeout_secs: u64,
    /// Where a run's output log stops growing (`output_log_max`, in bytes): per-VM, else
    /// global, else 64 MiB; 1 KiB to 1 TiB.
    pub output_log_max_bytes: u64,
    /// How many run logs of the VM are kept (the newest; the latest success and the one its
    /// stamp names come on top): per-VM, else global, else 50; at least 1.
    pub keep_run_logs: u32,
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
    /// Required for qemu; rejected for external (`base_image` and its companion keys).
    pub base_image: Option<BaseImage>,
    /// The project's `image_mirror` (catalog images are fetched from it), copied to each VM.
    pub image_mirror: Option<String>,
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
    /// The disk's virtual size in MiB (None: the base image's).
    pub disk_mib: Option<u64>,
    pub firmware: Firmware,
    /// Where each of a QEMU VM's serial.log and qemu.log stops growing (`serial_log_max`, in
    /// bytes); default 64 MiB, 1 KiB to 1 TiB.
    pub serial_log_max_bytes: u64,
    pub cloud_init: CloudInit,
    /// The VM's place on the project network (`[project] network`); None when it is off or
    /// the VM is not a QEMU VM.
    pub network: Option<network::Attachment>,
    /// `[[vms.mounts]]`, in file order (QEMU VMs only).
    pub mounts: Vec<Mount>,
    /// [vms.ssh] with bootstrap.toml [ssh] merged on top (field by field; options appended).
    pub ssh: Ssh,
    pub bootstrap: Bootstrap,
    /// `[vms.libvirt]` of a libvirt VM (Some exactly when `backend = "libvirt"`).
    pub libvirt: Option<libvirt::Libvirt>,
}

/// Errors. Display is a complete sentence naming file, line and column (1-based), the key path
/// (e.g. `vms[1].bootstrap.mode`) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File could not be read (missing, permission). A castra.toml that does not exist says
    /// that `castractl init` writes one.
    #[error("{}: cannot read file: {source}{}", path.display(), init_hint(path, source))]
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
    /// A file that is not the user's to trust: a project file owned by someone else, a user
    /// config others can write.
    #[error("{}: {message}", path.display())]
    Untrusted { path: PathBuf, message: String },
}

impl ConfigError {
    /// (path, line, column) when known — castrad puts it in JSON-RPC error.data.
    pub fn location(&self) -> Option<(&Path, usize, usize)> {
        match self {
            ConfigError::Read { .. } | ConfigError::Untrusted { .. } => None,
            ConfigError::Invalid {
                path, line, column, ..
            } => Some((path.as_path(), *line, *column)),
        }
    }

    /// The key path (`vms[0].bootstrap.mode`) of an `Invalid` error.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } | ConfigError::Untrusted { .. } => None,
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Invalid { path, .. }
            | ConfigError::Untrusted { path, .. } => path,
        }
    }
}

/// For a castra.toml that is not there: how to make one.
fn init_hint(path: &Path, e: &std::io::Error) -> &'static str {
    let missing = e.kind() == std::io::ErrorKind::NotFound;
    if missing && path.file_name() == Some(std::ffi::OsStr::new(CONFIG_FILE_NAME)) {
        " (`castractl init` writes one for a cloud image)"
    } else {
        ""
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

/// Reads and validates castra.toml at `path` (and each bootstrap.toml beside a script, and
/// each `[vms.cloud_init] user_data` for the keys `user_data.rs` refuses). Does not touch
/// anything but reading those files and stat-ing referenced paths. Where the paths lead is
/// not checked: castrad loads with [`load_confined`].
pub fn load(path: &Path) -> Result<Project, ConfigError> {
    load_with(path, None)
}

/// [`load`], and the host paths the project names must stay within `boundary`
/// (`reach::confine`); the project lists them in `host_paths`.
pub fn load_confined(path: &Path, boundary: &Boundary) -> Result<Project, ConfigError> {
    load_with(path, Some(boundary))
}

fn load_with(path: &Path, boundary: Option<&Boundary>) -> Result<Project, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(read_error)?;
    let text = read_own(&canonical)?;
    let src = Source {
        path: &canonical,
        text: &text,
    };
    let mut parsed = parse_source(&src)?;
    check_files(&src, &parsed.decls)?;
    apply_metadata(&mut parsed)?;
    if let Some(boundary) = boundary {
        let files = parsed.decls.iter().flat_map(|d| &d.files);
        parsed.project.host_paths = reach::confine(&src, files, &parsed.project, boundary)?;
    }
    user_data::check(&parsed.project)?;
    Ok(parsed.project)
}

/// Reads a project file (castra.toml, bootstrap.toml), which must be the user's or root's.
fn read_own(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    reach::owned_by_user(path, &file.metadata().map_err(read_error)?)?;
    std::io::read_to_string(file).map_err(read_error)
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
// load-only steps: stat referenced files, merge bootstrap.toml
// ---------------------------------------------------------------------------------------------

fn check_files(src: &Source<'_>, decls: &[DeclInfo]) -> Result<(), ConfigError> {
    for check in decls.iter().flat_map(|d| &d.files) {
        if check.reach == values::Reach::BaseImage {
            continue;
        }
        let problem = match std::fs::metadata(&check.path) {
            Ok(meta) if meta.is_dir() && check.directory_required => None,
            Ok(_) if check.directory_required => Some("is not a directory".to_owned()),
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
    let text = read_own(path)?;
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
