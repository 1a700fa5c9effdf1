//! Wire types of the castrad JSON-RPC 2.0 protocol.
//!
//! This crate is the only place that decides what crosses the socket: method names, parameter
//! and result shapes, event payloads and error codes. `castrad` converts its internal types into
//! these at the RPC boundary; `castractl` (and any editor integration written in Rust) depends on
//! this crate alone, so a client never links the daemon.
//!
//! The protocol is documented for humans in `proto-docs/PROTOCOL.md`; the examples there are
//! checked against real daemon output by the end-to-end tests.
//!
//! Compatibility rule: fields are only ever added. Every optional field serializes as `null`
//! rather than being omitted, so consumers see a stable shape.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod cli;
mod doctor;
pub mod openrpc;
mod socket;
pub mod ssh;
pub use doctor::{CheckStatus, DoctorCheck, DoctorParams, DoctorResult};
pub use socket::{
    CONFIG_FILE_NAME, RESTART_CASTRAD, SOCKET_ENV, START_CASTRAD, default_socket_path, runtime_dir,
};

/// Protocol revision, bumped on any incompatible change to a method or event.
pub const PROTOCOL_VERSION: u32 = 1;

/// JSON-RPC method names. These strings are a contract.
pub mod method {
    pub const VERSION: &str = "castra.version";
    pub const PLAN: &str = "castra.plan";
    pub const STATUS: &str = "castra.status";
    pub const UP: &str = "castra.up";
    pub const OUTCOME: &str = "castra.outcome";
    pub const LOGS: &str = "castra.logs";
    pub const DOWN: &str = "castra.down";
    pub const RESTART: &str = "castra.restart";
    pub const CANCEL: &str = "castra.cancel";
    pub const SSH_CONFIG: &str = "castra.sshConfig";
    pub const DOCTOR: &str = "castra.doctor";
    pub const CONSOLE: &str = "castra.console";
    pub const SUBSCRIBE_CONSOLE: &str = "castra.subscribeConsole";
    pub const UNSUBSCRIBE_CONSOLE: &str = "castra.unsubscribeConsole";
    /// Notification method of console subscriptions.
    pub const CONSOLE_OUTPUT: &str = "castra.consoleOutput";
    pub const SUBSCRIBE_EVENTS: &str = "castra.subscribeEvents";
    pub const UNSUBSCRIBE_EVENTS: &str = "castra.unsubscribeEvents";
    pub const IMAGE_LIST: &str = "castra.imageList";
    pub const IMAGE_PULL: &str = "castra.imagePull";
    pub const IMAGE_REMOVE: &str = "castra.imageRemove";
    pub const IMAGE_PRUNE: &str = "castra.imagePrune";
    pub const IMAGE_ADOPT: &str = "castra.imageAdopt";
    pub const IMAGE_CATALOG: &str = "castra.imageCatalog";
    /// Notification method of event subscriptions.
    pub const EVENT: &str = "castra.event";
    /// The OpenRPC document of this protocol ([`crate::openrpc::document`]).
    pub const DISCOVER: &str = "rpc.discover";
}

/// JSON-RPC error codes used by castrad (in the implementation-defined server range).
///
/// castractl maps them to exit codes: `CONFIG` and `PREFLIGHT` are the user's input (exit 2),
/// everything else is an operation failure (exit 1).
pub mod code {
    /// Standard JSON-RPC: the params did not have the documented shape.
    pub const INVALID_PARAMS: i32 = -32602;
    /// castra.toml (or a bootstrap.toml) could not be read or is invalid.
    pub const CONFIG: i32 = -32001;
    /// The request was understood but rejected before anything ran (override conflict, unknown VM).
    pub const PREFLIGHT: i32 = -32002;
    /// Work was attempted and failed (IO on the state root, hashing a base image...).
    pub const OPERATION: i32 = -32003;
    /// The named operation, VM or run does not exist (or was forgotten).
    pub const NOT_FOUND: i32 = -32004;
}

/// `error.data` of every error a castrad method returns: a machine-readable kind and the full
/// cause chain, outermost first, so a client can show the real reason. (Errors the JSON-RPC
/// library answers itself, before a method runs, carry no `data`: see PROTOCOL.md.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorData {
    /// `invalid-params`, `config`, `preflight`, `operation` or `not-found`: one per [`code`].
    #[schemars(extend("enum" = ["invalid-params", "config", "preflight", "operation", "not-found"]))]
    pub kind: String,
    /// The error and each of its sources, outermost first.
    pub causes: Vec<String>,
    /// Where in which file the problem is, when it is about a file.
    pub location: Option<ErrorLocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorLocation {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

// ---------------------------------------------------------------------------------------------
// castra.version

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VersionResult {
    /// castrad's crate version.
    pub version: String,
    pub protocol: u32,
}

// ---------------------------------------------------------------------------------------------
// castra.plan

/// Params of `castra.plan` (and, later, `castra.up`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanParams {
    /// Absolute path of castra.toml.
    pub config: PathBuf,
    /// Override strings exactly as given on the command line (`always`, `web=skip,db:always`, ...).
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanResult {
    pub project: String,
    pub config: PathBuf,
    pub state_root: PathBuf,
    /// One entry per VM, in file order (replicas expanded).
    pub vms: Vec<BootstrapPlanned>,
    /// Every host path the project reads or shares with its guests (symlinks followed), and
    /// why it may: each one is inside the project's directory unless your own config allows
    /// it. Absent from castrads before protocol 1's trust checks.
    #[serde(default)]
    pub host_paths: Vec<HostPathPlanned>,
}

/// A host path a project reads or shares (`PlanResult::host_paths`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostPathPlanned {
    /// The key that names it first (`vms[0].bootstrap.payload`).
    pub key: String,
    /// Where it leads, symlinks followed.
    pub path: PathBuf,
    pub access: HostPathAccess,
    /// Why the project may reach it: `project` (inside the project's directory),
    /// `allowed_path` (under `allowed_by`, one of your config's `allowed_paths`),
    /// `trusted_project` (your config's `trusted_projects` names the project), `public_key`
    /// (a `.pub` file in ~/.ssh named by `cloud_init.authorized_keys`).
    pub grant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_by: Option<PathBuf>,
}

/// What castrad does with a host path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostPathAccess {
    /// Read, and sent to or booted by the guest.
    Read,
    /// Shared with the guest, read-only.
    ShareReadOnly,
    /// Shared with the guest, which can write it.
    ShareReadWrite,
}

/// Effective bootstrap mode of a VM after overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapMode {
    Auto,
    Skip,
    Always,
}

/// What the pipeline will do for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapPlanAction {
    /// The pipeline will execute.
    Run,
    /// A stamp proves this exact (base image, artifact, disk) was already bootstrapped: NoOp.
    Noop,
    /// Nothing will run (mode skip, or no script configured).
    Skip,
}

/// Why the pipeline runs: resolved from the effective mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapTrigger {
    Auto,
    Always,
}

/// The `ssh` invocation the pipeline will use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BootstrapPlanSsh {
    pub user: Option<String>,
    pub host: String,
    /// In `castra.plan`: `null` for a QEMU VM whose forwarded port is chosen when it starts.
    /// In the `BootstrapPlanned` event of a run: the host and port that run uses.
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BootstrapPlanVerify {
    pub command: Option<String>,
    pub path: Option<String>,
}

/// Expected state of the in-guest Vizier agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VizierPlanStatus {
    Start,
    Restart,
    Healthy,
    Unavailable,
}

/// The dry-run summary of one VM's bootstrap, emitted before execution and returned by
/// `castra.plan`. Field names follow the bootstrap contract in docs/BOOTSTRAP.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BootstrapPlanned {
    pub vm: String,
    pub mode: BootstrapMode,
    pub action: BootstrapPlanAction,
    pub reason: String,
    pub trigger: Option<BootstrapTrigger>,
    pub script_path: Option<PathBuf>,
    pub payload_path: Option<PathBuf>,
    pub payload_bytes: Option<u64>,
    pub handshake_timeout_secs: Option<u64>,
    pub remote_dir: Option<String>,
    pub ssh: Option<BootstrapPlanSsh>,
    /// Names of the environment variables passed to the script. Values are never reported.
    pub env_keys: Vec<String>,
    pub verify: Option<BootstrapPlanVerify>,
    pub artifact_hash: Option<String>,
    /// The bootstrap.toml that contributed to this plan, if any.
    pub metadata_path: Option<PathBuf>,
    pub warnings: Vec<String>,
    pub vizier_status: Option<VizierPlanStatus>,
    pub vizier_log_path: Option<PathBuf>,
    pub vizier_remediation: Option<String>,
    /// The VM's disk size in MiB (`disk` in castra.toml); null: the base image's size, or a
    /// VM whose disk castrad does not make (external).
    pub disk_mib: Option<u64>,
    /// The VM's address on the project network (`[project] network`), `10.A.B.N`; null when
    /// it is not on one.
    pub network_address: Option<String>,
    /// The settings the VM runs with that castra.toml now sets otherwise (it was started
    /// before the change): `castra.restart` applies them. Empty when the VM is not running.
    pub drift: Vec<Drift>,
    /// The VM's shared folders (`[[vms.mounts]]`), each with the transport a launch now would
    /// use (null in the `BootstrapPlanned` event of a run: `castra.status` has the transport
    /// the running VM was launched with).
    #[serde(default)]
    pub mounts: Vec<VmMount>,
    /// The VM's base image: where it comes from and where it stands (null: a VM without one,
    /// an external host).
    #[serde(default)]
    pub base_image: Option<BaseImagePlan>,
}

/// A launch setting a running VM was started with that castra.toml no longer says: the VM
/// keeps it until it is restarted (`castra.restart`, or `castra.down` then `castra.up`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Drift {
    pub vm: String,
    /// Which setting: `cpus`, `memory`, `forwards`, `disk`, `network` or `mounts` (more may be added; a client
    /// shows one it does not know by its `message`).
    pub setting: String,
    /// What the VM was started with, as a person reads it (`2`, `2048 MiB`,
    /// `tcp:8080->80`, `none`, `the base image's size`).
    pub running: String,
    /// What castra.toml says now, in the same form.
    pub configured: String,
    /// The sentence to show, e.g. "web-0 is running with 2 cpus, castra.toml says 4:
    /// `castractl restart web-0` to apply".
    pub message: String,
    /// Whether `castra.restart` applies it. False for what a cloud-init guest takes from its
    /// seed (its `network` address, where it mounts its `mounts`: only a new disk changes
    /// them, and the entry stays after a restart) and for a `disk` asked to shrink (refused);
    /// `message` says what to do instead.
    pub restart_applies: bool,
}

/// A shared folder of a QEMU VM (`[[vms.mounts]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmMount {
    /// The host directory (absolute).
    pub host: PathBuf,
    /// Where the guest mounts it.
    pub guest: String,
    pub readonly: bool,
    /// How it reaches the guest; null when not known (a VM that is not running, in status).
    pub transport: Option<MountTransport>,
}

/// How shared folders reach a guest: virtiofs (a virtiofsd per mount) or 9p (QEMU's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MountTransport {
    #[serde(rename = "virtiofs")]
    Virtiofs,
    #[serde(rename = "9p")]
    NineP,
}

// ---------------------------------------------------------------------------------------------
// castra.status

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusParams {
    /// Restrict the answer to this project (loading it if the daemon does not know it yet).
    #[serde(default)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusResult {
    pub daemon: DaemonStatus,
    pub projects: Vec<ProjectStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Bytes of base images read for hashing since the daemon started (cache misses).
    pub base_bytes_hashed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProjectStatus {
    pub name: String,
    pub config: PathBuf,
    pub state_root: PathBuf,
    pub vms: Vec<VmStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Qemu,
    External,
    /// A libvirt domain, on this machine or a hypervisor reached over SSH.
    Libvirt,
}

/// Lifecycle state of a VM as castrad sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Not running (QEMU), or an external host castrad is not currently working on.
    Stopped,
    Starting,
    Running,
    Bootstrapping,
    Failed,
    Stopping,
    /// QEMU runs but did not answer QMP when found: only `castra.down` acts on it.
    Unresponsive,
    /// An external host: castrad does not own its lifecycle.
    External,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VmStatus {
    pub name: String,
    pub backend: Backend,
    pub state: VmState,
    /// Why the VM is `unresponsive`; null in other states.
    pub state_reason: Option<String>,
    /// The stamp of the last successful bootstrap, if any.
    pub stamp_path: Option<PathBuf>,
    /// The operation whose pipeline is running on this VM now.
    pub operation: Option<String>,
    /// The pipeline step running now.
    pub current_step: Option<BootstrapStepKind>,
    /// What the running step is waiting on, in words (`tcp 127.0.0.1:2222: connection refused`).
    pub waiting_on: Option<String>,
    /// The outcome of the last bootstrap this daemon ran for the VM.
    pub last_bootstrap: Option<VmOutcome>,
    /// QEMU's pid while it runs.
    pub pid: Option<u32>,
    /// Time since QEMU was launched.
    pub uptime_ms: Option<u64>,
    /// `kvm` or `tcg` while it runs.
    pub accel: Option<String>,
    /// Where castrad reaches the guest's SSH: `127.0.0.1:40022` (QEMU) or the external host.
    pub ssh_endpoint: Option<String>,
    /// As in the plan: the configured disk size in MiB, null for the base image's.
    pub disk_mib: Option<u64>,
    /// As in the plan: the VM's address on the project network, null when not on one.
    pub network_address: Option<String>,
    /// The in-guest agent as castrad last saw it.
    pub vizier: Option<VizierStatus>,
    /// The VM's shared folders; `transport` is the running VM's (null while it is not running).
    #[serde(default)]
    pub mounts: Vec<VmMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VizierStatus {
    pub version: String,
    pub pid: u32,
    /// False when the last health check got no answer.
    pub healthy: bool,
}

// ---------------------------------------------------------------------------------------------
// castra.cancel

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelParams {
    pub config: PathBuf,
    /// VMs whose run to stop (expanded names); empty or absent: all of the project.
    #[serde(default)]
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelResult {
    pub project: String,
    pub vms: Vec<VmCancel>,
}

/// One VM's answer to `castra.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmCancel {
    pub vm: String,
    /// The operation whose run was asked to stop; None: no run was in flight.
    pub operation: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// castra.down

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DownParams {
    pub config: PathBuf,
    /// VMs to stop (expanded names); empty or absent: all of the project.
    #[serde(default)]
    pub vms: Vec<String>,
    /// Delete the VMs' disks (overlays) and with them their stamps.
    #[serde(default)]
    pub discard: bool,
    /// How long the guest gets to power off after the ACPI power button (default 30).
    #[serde(default)]
    pub graceful_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DownResult {
    pub operation: String,
    pub project: String,
    pub vms: Vec<VmDown>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmDown {
    pub vm: String,
    pub outcome: StopOutcome,
    pub total_ms: u64,
    /// The disk was deleted.
    pub discarded: bool,
    pub error: Option<String>,
}

/// How a VM's stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StopOutcome {
    /// The guest powered off after the ACPI power button.
    Graceful,
    /// QEMU exited on SIGTERM.
    Terminated,
    /// QEMU had to be killed.
    Killed,
    /// Nothing was running.
    NotRunning,
    /// An external VM: castrad does not stop it.
    External,
    /// The VM was busy with another operation (`castra.down` only).
    Rejected,
    /// QEMU outlived SIGKILL: kept with its records and disk; the VM is `unresponsive`.
    StillRunning,
}

impl StopOutcome {
    /// The wire spelling: `graceful`, `terminated`, `killed`, `not-running`, `external`,
    /// `rejected`, `still-running`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopOutcome::Graceful => "graceful",
            StopOutcome::Terminated => "terminated",
            StopOutcome::Killed => "killed",
            StopOutcome::NotRunning => "not-running",
            StopOutcome::External => "external",
            StopOutcome::Rejected => "rejected",
            StopOutcome::StillRunning => "still-running",
        }
    }
}

impl std::fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// castra.up / castra.outcome

/// Params of `castra.up`: those of `castra.plan`, and which VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpParams {
    /// Absolute path of castra.toml.
    pub config: PathBuf,
    /// Override strings exactly as given on the command line (`always`, `web=skip,db:always`, ...).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// VMs to start and bootstrap (expanded names); empty or absent: all of the project. An
    /// unknown name is a preflight error: nothing starts.
    #[serde(default)]
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpResult {
    /// Identifies this request in events and in `castra.outcome`.
    pub operation: String,
    pub project: String,
    /// The VMs of the operation, in file order (the order of the outcomes).
    pub vms: Vec<String>,
    /// Settings of VMs of the operation that were already running and that castra.toml now
    /// sets otherwise: `up` leaves a running VM as it is (`castra.restart` applies them).
    pub drift: Vec<Drift>,
}

// ---------------------------------------------------------------------------------------------
// castra.restart

/// Params of `castra.restart`: stop the VMs (as `castra.down`, never discarding), then start
/// and bootstrap them (as `castra.up`) in one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RestartParams {
    pub config: PathBuf,
    /// VMs to restart (expanded names); empty or absent: all of the project.
    #[serde(default)]
    pub vms: Vec<String>,
    /// Override strings for the bootstrap after the start, as for `castra.up`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// How long each guest gets to power off after the ACPI power button (default 30).
    #[serde(default)]
    pub graceful_timeout_secs: Option<u64>,
}

/// Answered once the VMs have stopped and the start has been handed to them: follow the
/// operation as for `castra.up` (`castra.subscribeEvents`, `castra.outcome`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RestartResult {
    /// One operation for both halves: the stop's events and the start's carry this id.
    pub operation: String,
    pub project: String,
    /// The VMs restarted, in file order (the order of the outcomes).
    pub vms: Vec<String>,
    /// How each VM's stop went (as `castra.down` reports it).
    pub stopped: Vec<VmDown>,
    /// The drift this restart applies (what `castra.plan` reported before it).
    pub drift: Vec<Drift>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeParams {
    pub operation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeResult {
    pub operation: String,
    pub project: String,
    /// One per VM, in the order of `UpResult::vms`.
    pub outcomes: Vec<VmOutcome>,
}

/// How one VM's part of an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OutcomeStatus {
    Success,
    NoOp,
    Skipped,
    Failed,
    /// Not attempted: another operation's pipeline was running on this VM.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VmOutcome {
    pub vm: String,
    pub status: OutcomeStatus,
    pub duration_ms: u64,
    pub run_id: Option<String>,
    /// The durable log of the run (for NoOp: the log of the run that earned the stamp).
    pub log_path: Option<PathBuf>,
    pub stamp: Option<PathBuf>,
    pub error: Option<String>,
    /// What kind of failure `error` is, when a client acts on it: `image-mismatch` (the base
    /// image's content did not match its checksum; nothing was kept; castractl exits 2).
    #[serde(default)]
    pub error_kind: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The image store (castra.image*): see images.rs

mod images;
pub use images::*;

// ---------------------------------------------------------------------------------------------
// Events: see events.rs

mod events;
pub use events::*;

// ---------------------------------------------------------------------------------------------
// castra.console and castra.subscribeConsole: see console.rs

mod console;
pub use console::*;

// ---------------------------------------------------------------------------------------------
// Durable run logs and castra.logs

/// The durable log of one executed bootstrap run:
/// `logs/bootstrap/<vm>-<UTC timestamp>-<run id>.json` in the project's state root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunLog {
    pub vm: String,
    pub run_id: String,
    pub artifact_hash: String,
    pub base_hash: String,
    /// `success`, `noop` (the script printed CASTRA_NOOP) or `failed`.
    pub status: RunStatus,
    pub duration_ms: u64,
    pub steps: Vec<StepRecord>,
    pub trigger: BootstrapTrigger,
    pub operation: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// Everything the script and verify command printed, one line per record.
    pub output_path: Option<PathBuf>,
    /// Output bytes dropped past the output file's cap (`output_log_max`); 0 if none.
    #[serde(default)]
    pub output_dropped_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Success,
    Noop,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepRecord {
    pub step: BootstrapStepKind,
    pub status: BootstrapStepStatus,
    pub duration_ms: u64,
    /// What the step found or why it failed; `null` when it has nothing to say (never
    /// omitted; logs written before it was always present still read).
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogsParams {
    pub config: PathBuf,
    pub vm: String,
    /// A run id (or a unique prefix of one); without it, the latest run.
    #[serde(default)]
    pub run: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogsResult {
    pub vm: String,
    /// Every durable log of the VM, oldest first.
    pub runs: Vec<RunSummary>,
    /// The selected run's log (the latest without `run`); null when there is none.
    pub log: Option<RunLog>,
    pub log_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunSummary {
    pub run_id: String,
    pub path: PathBuf,
    pub status: RunStatus,
    pub duration_ms: u64,
    pub started_at: String,
}

// ---------------------------------------------------------------------------------------------
// castra.sshConfig

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SshConfigParams {
    pub config: PathBuf,
    /// The VMs to describe [default: every VM that can be reached now].
    #[serde(default)]
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SshConfigResult {
    pub project: String,
    pub hosts: Vec<SshHost>,
}

/// How to reach one VM with OpenSSH exactly as castrad does: its pinned host key, castrad's
/// identity for it, no trust on first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SshHost {
    pub vm: String,
    /// The `Host` name of its block: `castra-<project>-<vm>`.
    pub alias: String,
    pub host_name: String,
    pub port: u16,
    /// Null: ssh's own default (the local user name).
    pub user: Option<String>,
    pub identity_file: Option<PathBuf>,
    /// The file its host key is pinned in, under `host_key_alias`.
    pub known_hosts: PathBuf,
    pub host_key_alias: String,
    /// `[vms.ssh] options`, as `Key=Value`.
    pub options: Vec<String>,
    /// The route to `host_name:port` when it is not direct: the OpenSSH `ProxyCommand` through
    /// the hypervisor of a libvirt VM on another host (the guest's port listens on that
    /// host's loopback). A shell command line as ssh reads it (ssh expands `%h:%p`; a literal
    /// `%` is doubled), to pass as one `-o ProxyCommand=…` word. Null: connect directly.
    /// castractl never runs it: it builds its own from `hop` (castra_api::ssh::proxy_command).
    pub proxy_command: Option<String>,
    /// The hypervisor `proxy_command` goes through, as fields. Null: connect directly.
    pub hop: Option<SshHop>,
    /// The OpenSSH config block (for `ssh -F`, `scp -F`, VS Code Remote-SSH).
    pub config: String,
}

/// The SSH hop to a libvirt VM's hypervisor: the guest's port listens on that host's loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SshHop {
    /// The hypervisor's host name or address.
    pub host: String,
    /// Null: ssh's own default (22, or what ~/.ssh/config says).
    pub port: Option<u16>,
    /// Null: ssh's own default.
    pub user: Option<String>,
    pub identity_file: Option<PathBuf>,
    /// The file pinning the hypervisor's host key; null: ssh's own (~/.ssh/known_hosts).
    pub known_hosts: Option<PathBuf>,
    /// The socket of castrad's one ControlMaster to this hypervisor.
    pub control_path: PathBuf,
}
