//! Per-VM actors. Each VM castrad works on has one actor that owns its QEMU process (if any)
//! and its pipeline runs: at most one run or stop at a time, and a snapshot that `status`
//! reads without ever messaging the actor.

mod actor;
pub mod state;

pub use actor::{ActorCtx, Busy, DownRequest, StopReport, VmHandle, rejected};
pub use state::{QemuInfo, State, VmSnapshot, move_to};
