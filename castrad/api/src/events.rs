//! Events: what castrad publishes on its bus and `castra.subscribeEvents` streams.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubscribeParams {
    /// Only events of this operation.
    #[serde(default)]
    pub operation: Option<String>,
    /// Only events about this VM.
    #[serde(default)]
    pub vm: Option<String>,
    /// Replay buffered events with `seq` greater than this first (0: everything buffered).
    /// Without it, only events published after subscribing.
    #[serde(default)]
    pub since: Option<u64>,
}

/// What a `castra.event` notification carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventEnvelope {
    /// Daemon-wide, strictly increasing sequence number.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub operation: Option<String>,
    pub event: Event,
}

/// Every event castrad publishes, externally tagged: `{"BootstrapStarted": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::large_enum_variant)] // BootstrapPlanned is big and rare; boxing would change the Rust API only.
pub enum Event {
    BootstrapPlanned(BootstrapPlanned),
    BootstrapStarted {
        vm: String,
        base_hash: String,
        artifact_hash: String,
        trigger: BootstrapTrigger,
    },
    BootstrapStep {
        vm: String,
        step: BootstrapStepKind,
        status: BootstrapStepStatus,
        duration_ms: u64,
        detail: Option<String>,
    },
    /// What a running step is waiting on (emitted when that changes, and every few seconds).
    BootstrapProgress {
        vm: String,
        step: BootstrapStepKind,
        waiting_on: String,
        elapsed_ms: u64,
    },
    /// A line the guest script (or verify command) printed.
    BootstrapOutput {
        vm: String,
        step: BootstrapStepKind,
        stream: OutputStream,
        line: String,
    },
    BootstrapCompleted {
        vm: String,
        status: BootstrapStatus,
        duration_ms: u64,
        /// The stamp proving the result (Success: the one just written; NoOp: the one that matched).
        stamp: Option<String>,
    },
    BootstrapFailed {
        vm: String,
        duration_ms: u64,
        error: String,
    },
    /// A new overlay (a new disk) was created for the VM.
    OverlayPrepared {
        vm: String,
        overlay_path: PathBuf,
    },
    VmLaunched {
        vm: String,
        pid: u32,
        /// `kvm` or `tcg`.
        accel: String,
        /// Why that accelerator (e.g. `auto: /dev/kvm is backed by kvm_pvm, ...`).
        accel_reason: String,
        /// Host port (on 127.0.0.1) forwarded to the guest's SSH port.
        ssh_port: u16,
    },
    /// A VM castrad found running when it started (it outlived the previous castrad).
    VmAdopted {
        vm: String,
        pid: u32,
        ssh_port: u16,
    },
    /// A VM found running whose QEMU does not answer QMP (state `unresponsive`).
    VmUnresponsive {
        vm: String,
        pid: u32,
        reason: String,
    },
    /// QEMU exited without castrad asking (the guest powered off, or QEMU crashed).
    VmExited {
        vm: String,
        reason: String,
    },
    ShutdownRequested {
        vm: String,
    },
    CooperativeAttempted {
        vm: String,
        /// `acpi-powerdown` (the ACPI power button, over QMP).
        method: String,
        timeout_ms: u64,
    },
    CooperativeSucceeded {
        vm: String,
        elapsed_ms: u64,
    },
    CooperativeTimedOut {
        vm: String,
        waited_ms: u64,
        reason: String,
    },
    ShutdownEscalated {
        vm: String,
        /// `SIGTERM` or `SIGKILL`.
        signal: String,
        timeout_ms: u64,
    },
    ShutdownComplete {
        vm: String,
        /// `graceful`, `terminated`, `killed` or `not-running`.
        outcome: StopOutcome,
        total_ms: u64,
        /// False when the VM was not running (nothing changed).
        changed: bool,
    },
    EphemeralLayerDiscarded {
        vm: String,
        overlay_path: PathBuf,
        reclaimed_bytes: u64,
    },
    /// How far the download (or import) of a base image into the image store is: at most four
    /// a second per VM while it runs, and one with `phase` `done` at its end. `vm` is empty
    /// for `castra.imagePull`, whose events carry its operation.
    ImageFetch {
        vm: String,
        /// The URL, or the path being imported.
        source: String,
        /// `checksums` (reading the checksums file), `resume` (hashing the part of an
        /// interrupted download already here), `download`, `import`, `done`.
        phase: String,
        bytes_done: u64,
        /// Null when the server did not say.
        bytes_total: Option<u64>,
        /// Bytes per second so far.
        rate_bps: u64,
    },
    /// The in-guest agent answers (first seen, or back after being lost).
    VizierConnected {
        vm: String,
        version: String,
    },
    /// The in-guest agent stopped answering, or was replaced by a new process.
    VizierLost {
        vm: String,
        reason: String,
    },
}

impl Event {
    /// The VM the event is about.
    pub fn vm(&self) -> &str {
        match self {
            Event::BootstrapPlanned(p) => &p.vm,
            Event::BootstrapStarted { vm, .. }
            | Event::BootstrapStep { vm, .. }
            | Event::BootstrapProgress { vm, .. }
            | Event::BootstrapOutput { vm, .. }
            | Event::BootstrapCompleted { vm, .. }
            | Event::BootstrapFailed { vm, .. }
            | Event::OverlayPrepared { vm, .. }
            | Event::VmLaunched { vm, .. }
            | Event::VmAdopted { vm, .. }
            | Event::VmUnresponsive { vm, .. }
            | Event::VmExited { vm, .. }
            | Event::ShutdownRequested { vm }
            | Event::CooperativeAttempted { vm, .. }
            | Event::CooperativeSucceeded { vm, .. }
            | Event::CooperativeTimedOut { vm, .. }
            | Event::ShutdownEscalated { vm, .. }
            | Event::ShutdownComplete { vm, .. }
            | Event::EphemeralLayerDiscarded { vm, .. }
            | Event::ImageFetch { vm, .. }
            | Event::VizierConnected { vm, .. }
            | Event::VizierLost { vm, .. } => vm,
        }
    }

    /// True for the last event of a VM's pipeline run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::BootstrapCompleted { .. } | Event::BootstrapFailed { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BootstrapStepKind {
    WaitHandshake,
    /// A QEMU guest without cloud-init, once per boot: its shared folders mounted, its project
    /// network address and /etc/hosts set (what the seed does for a cloud-init guest).
    GuestSetup,
    VizierInstall,
    VizierEnable,
    VizierHandshake,
    Connect,
    Transfer,
    Apply,
    Verify,
    /// Only in durable logs: the terminal record of a failed run.
    Error,
}

impl BootstrapStepKind {
    /// Pipeline order.
    pub const PIPELINE: [BootstrapStepKind; 9] = [
        BootstrapStepKind::WaitHandshake,
        BootstrapStepKind::GuestSetup,
        BootstrapStepKind::VizierInstall,
        BootstrapStepKind::VizierEnable,
        BootstrapStepKind::VizierHandshake,
        BootstrapStepKind::Connect,
        BootstrapStepKind::Transfer,
        BootstrapStepKind::Apply,
        BootstrapStepKind::Verify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BootstrapStepKind::WaitHandshake => "wait-handshake",
            BootstrapStepKind::GuestSetup => "guest-setup",
            BootstrapStepKind::VizierInstall => "vizier-install",
            BootstrapStepKind::VizierEnable => "vizier-enable",
            BootstrapStepKind::VizierHandshake => "vizier-handshake",
            BootstrapStepKind::Connect => "connect",
            BootstrapStepKind::Transfer => "transfer",
            BootstrapStepKind::Apply => "apply",
            BootstrapStepKind::Verify => "verify",
            BootstrapStepKind::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapStepStatus {
    Success,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BootstrapStatus {
    Success,
    NoOp,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}
