//! Per-VM actors. Each VM castrad works on has one actor that owns its pipeline runs: at most
//! one run at a time, and a snapshot that `status` reads without ever messaging the actor.

mod actor;

pub use actor::{Busy, VmHandle, rejected};

use castra_api::{BootstrapStepKind, VmOutcome};

/// What `status` shows about a VM, published by its actor through a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSnapshot {
    pub bootstrapping: bool,
    /// The operation whose run is in progress.
    pub operation: Option<String>,
    pub current_step: Option<BootstrapStepKind>,
    pub waiting_on: Option<String>,
    pub last: Option<VmOutcome>,
}
