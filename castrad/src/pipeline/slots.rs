//! How many VMs may start or bootstrap at once, daemon-wide: [`Slots`], a fair semaphore of
//! `castrad --max-parallel` permits, and [`Slot`], one held permit.
//!
//! What holds a slot: a QEMU VM from before its launch until its run ends (the boot, the
//! banner probes and the run's ssh session); any other VM whose run goes to the guest (a
//! `Run` plan, or a login after a boot) from after its plan until the run ends. A NoOp or
//! Skip of a VM that is up holds none: it costs no ssh, and must not wait behind long runs.
//! After a run the session goes on as the Vizier watch without a slot (see
//! docs/BOOTSTRAP.md, "Scale", for what each costs in file descriptors).
//!
//! A VM waiting for a slot says so, as the first thing `wait-handshake` waits on: the
//! snapshot's `waiting_on` (so `status` shows it) and a `BootstrapProgress` event, repeated
//! every [`HEARTBEAT`] while it waits. Cancelling the run (`castra.cancel`, `down`) ends the
//! wait. The permit is released when the [`Slot`] is dropped, which the task holding it does
//! on every path out: success, failure, cancel, panic, or the task being aborted.

use std::sync::Arc;
use std::time::Duration;

use castra_api::{BootstrapStepKind as Step, Event};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{Ctx, Job};

/// How often a VM that waits for a slot says so again. Longer than the handshake's 2 s: a
/// whole fleet may be waiting, and each report is an event every subscriber receives.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The default of `castrad --max-parallel` (docs/BOOTSTRAP.md, "Scale", says why).
pub const DEFAULT_LIMIT: u32 = 32;

/// The most descriptors castrad holds for one slot: the run's ssh (stdin, stdout and stderr
/// pipes, a pidfd), its output log, a payload file being sent, up to 16 banner probes, a
/// second ssh that stops the guest side (a pipe, a pidfd), and QEMU's launch (`qemu-img`'s
/// pipes and pidfd, the QMP socket). A typical run on a host that answers holds about 6.
pub const MOST_FDS_PER_SLOT: u64 = 28;

/// What a VM keeps open once its run has ended: the Vizier watch's ssh (stdout and stderr
/// pipes, a pidfd), and a QEMU VM's pidfd.
pub const FDS_PER_VM: u64 = 4;

/// The daemon's slots. Cheap to clone; clones share the permits.
#[derive(Debug, Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    limit: u32,
}

/// One held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    /// `limit` slots (at least one).
    pub fn new(limit: u32) -> Slots {
        let limit = limit.max(1);
        Slots {
            semaphore: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// How many slots are held now.
    pub fn in_use(&self) -> u32 {
        self.limit - self.semaphore.available_permits() as u32
    }

    /// A free slot, if there is one now.
    pub fn try_take(&self) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(Slot { _permit: permit })
    }

    /// What a VM that waits for a slot is waiting on.
    pub fn waiting_on(&self) -> String {
        let n = self.limit;
        let vms = if n == 1 { "VM is" } else { "VMs are" };
        format!("a free slot: {n} {vms} starting or bootstrapping (castrad --max-parallel {n})")
    }
}

impl Default for Slots {
    fn default() -> Slots {
        Slots::new(DEFAULT_LIMIT)
    }
}

/// Takes a slot for `job`'s VM, waiting (and saying so) while all are held, first come first
/// served. Err: the run was cancelled while it waited (the reason).
pub async fn take(ctx: &Ctx, job: &Job) -> Result<Slot, String> {
    let slots = &ctx.slots;
    if let Some(slot) = slots.try_take() {
        return Ok(slot);
    }
    let waiting_on = slots.waiting_on();
    let t = Instant::now();
    tracing::debug!(vm = job.vm.name, "waiting for a free slot");
    ctx.snapshot.send_modify(|s| {
        s.current_step = Some(Step::WaitHandshake);
        s.waiting_on = Some(waiting_on.clone());
    });
    let report = || {
        ctx.bus.publish(
            Some(&job.operation),
            Event::BootstrapProgress {
                vm: job.vm.name.clone(),
                step: Step::WaitHandshake,
                waiting_on: waiting_on.clone(),
                elapsed_ms: t.elapsed().as_millis() as u64,
            },
        );
    };
    report();
    let acquire = slots.semaphore.clone().acquire_owned();
    tokio::pin!(acquire);
    let mut heartbeat = tokio::time::interval_at(t + HEARTBEAT, HEARTBEAT);
    let taken = loop {
        tokio::select! {
            biased;
            reason = job.cancel.cancelled() => break Err(reason),
            permit = &mut acquire => match permit {
                Ok(permit) => break Ok(Slot { _permit: permit }),
                // Never closed: the daemon owns the semaphore for its whole life.
                Err(_) => break Err("castrad is shutting down".to_owned()),
            },
            _ = heartbeat.tick() => report(),
        }
    };
    ctx.snapshot.send_modify(|s| {
        s.current_step = None;
        s.waiting_on = None;
    });
    taken
}

#[cfg(test)]
mod tests;
