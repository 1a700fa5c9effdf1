//! Per-VM actors. Each VM castrad works on has one actor that owns its QEMU process (if any)
//! and its pipeline runs: at most one run or stop at a time, and a snapshot that `status`
//! reads without ever messaging the actor.

mod actor;
pub mod state;

pub use actor::{ActorCtx, Busy, DownRequest, StopReport, VmHandle, rejected};
pub use state::State;

use castra_api::{BootstrapStepKind, VmOutcome};
use tokio::sync::watch;

/// What `status` shows about a VM, published by its actor (and its tasks) through a `watch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSnapshot {
    pub state: State,
    /// The operation whose run is in progress.
    pub operation: Option<String>,
    pub current_step: Option<BootstrapStepKind>,
    pub waiting_on: Option<String>,
    pub last: Option<VmOutcome>,
    /// The QEMU process, while there is one.
    pub qemu: Option<QemuInfo>,
    /// The Vizier agent as last seen (by a run's handshake or the health check).
    pub vizier: Option<VizierSeen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VizierSeen {
    pub version: String,
    pub pid: u32,
    /// False once a health check failed (until one succeeds again).
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuInfo {
    pub pid: u32,
    pub accel: String,
    pub ssh_port: u16,
    pub launched_unix_ms: u64,
}

/// Moves the VM to `to` through [`state::transition`]; an invalid move is logged and refused.
pub fn move_to(snapshot: &watch::Sender<VmSnapshot>, vm: &str, to: State) -> bool {
    let mut moved = true;
    snapshot.send_modify(|s| match state::transition(s.state, to) {
        Ok(next) => s.state = next,
        Err(e) => {
            tracing::error!(vm, error = %e, "refused a VM state change");
            moved = false;
        }
    });
    moved
}
