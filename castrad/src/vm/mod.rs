//! Per-VM actors. Each VM castrad works on has one actor that owns its machine (if castrad
//! runs one) and its pipeline runs: at most one run or stop at a time, and a snapshot that
//! `status` reads without ever messaging the actor.
//!
//! `handle.rs` is what the rest of castrad holds ([`VmHandle`]) and the requests it sends;
//! `supervisor.rs` spawns the actor and restarts it if it panics; `actor.rs` is the actor's
//! loop; `lifecycle.rs` starts and stops the machine through the VM's backend; `state.rs` the
//! state machine and the snapshot.

mod actor;
mod handle;
mod lifecycle;
pub use lifecycle::image_fetch;
pub mod state;
mod supervisor;

use std::sync::Arc;

pub use handle::{Busy, DownRequest, StopReport, VmHandle, rejected, rejected_event};
pub use supervisor::spawn;

/// What a VM's actor needs beyond its mailbox.
#[derive(Debug, Clone)]
pub struct ActorCtx {
    pub pipeline: crate::pipeline::Ctx,
    /// How this VM is provided.
    pub backend: Arc<dyn crate::backend::Backend>,
}

#[cfg(test)]
mod tests;
