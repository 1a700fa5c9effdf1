//! Supervision of a VM's actor: the actor loop runs in a task of its own, watched here. If it
//! panics, the run it had in flight is recorded as failed (one log, one `BootstrapFailed`),
//! the snapshot forgets the work, the VM's machine is found again through its backend (a
//! machine owned by a crashed loop keeps running), and the loop restarts after a backoff.
//! The mailbox survives the restart (shared through a mutex), so handles stay valid.

use std::sync::Arc;
use std::time::Duration;

use castra_api::Event;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::ActorCtx;
use super::actor::{Actor, InFlight};
use super::handle::{Command, VmHandle};
use super::state::{MachineInfo, State, move_to};
use crate::backend::Machine;
use crate::pipeline;

/// The first backoff before a restart, doubled after each crash up to [`MAX_BACKOFF`]; back
/// to the first after a loop that ran [`STABLE`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const STABLE: Duration = Duration::from_secs(60);

/// Spawns the actor of VM `name` under `tracker` and returns its handle. `adopted` is a
/// machine left running by a previous castrad; without one, the actor first asks its backend
/// whether one runs (castrad could not adopt it at start, e.g. its project did not load then),
/// so it never starts a second machine on the same disk.
pub fn spawn(
    name: &str,
    ctx: ActorCtx,
    adopted: Option<Box<dyn Machine>>,
    tracker: &TaskTracker,
) -> VmHandle {
    let (tx, rx) = mpsc::channel(16);
    let snapshot = ctx.pipeline.snapshot.subscribe();
    let mailbox = Arc::new(Mutex::new(rx));
    // Shown at once, so a `status` right after castrad's start sees it.
    if let Some(machine) = &adopted {
        announce(&ctx, name, machine.info());
    }
    tracker.spawn(supervise(name.to_owned(), ctx, mailbox, adopted));
    VmHandle::new(tx, snapshot)
}

async fn supervise(
    name: String,
    ctx: ActorCtx,
    mailbox: Arc<Mutex<mpsc::Receiver<Command>>>,
    mut adopted: Option<Box<dyn Machine>>,
) {
    if adopted.is_none() && ctx.backend.owns_lifecycle() {
        adopted = ctx.backend.adopt(&ctx.pipeline.root, &name).await;
        if let Some(machine) = &adopted {
            announce(&ctx, &name, machine.info());
        }
    }
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let in_flight: Arc<std::sync::Mutex<Option<InFlight>>> = Arc::default();
        let actor = Actor::new(name.clone(), ctx.clone(), adopted.take(), in_flight.clone());
        match tokio::spawn(actor.run(mailbox.clone())).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(vm = name, "VM actor panicked; restarting it in {backoff:?}");
                let lost = in_flight.lock().unwrap_or_else(|p| p.into_inner()).take();
                let snapshot = &ctx.pipeline.snapshot;
                match lost {
                    Some(InFlight::Run {
                        job,
                        outcome,
                        started,
                        ..
                    }) => {
                        let error = "the VM actor crashed".to_owned();
                        let o = pipeline::record_failure(&ctx.pipeline, &job, started, error);
                        snapshot.send_modify(|s| s.last = Some(o.clone()));
                        let _ = outcome.send(Some(o));
                        settle(snapshot, &name, State::Failed);
                    }
                    // The caller of `down` hears that castrad gave up on it.
                    Some(InFlight::Stop { .. }) => settle(snapshot, &name, State::Failed),
                    None => {}
                }
                snapshot.send_modify(|s| {
                    s.operation = None;
                    s.current_step = None;
                    s.waiting_on = None;
                });
                // Whatever machine the crashed loop owned is still running: find it again.
                adopted = ctx.backend.adopt(&ctx.pipeline.root, &name).await;
                if adopted.is_none() && ctx.backend.owns_lifecycle() {
                    snapshot.send_modify(|s| s.machine = None);
                    settle(snapshot, &name, State::Stopped);
                }
                if started.elapsed() > STABLE {
                    backoff = FIRST_BACKOFF;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(_) => return,
        }
    }
}

/// Shows the VM's machine found running in its snapshot, and says so: `VmAdopted`, or
/// `VmUnresponsive` when it does not answer.
fn announce(ctx: &ActorCtx, vm: &str, info: MachineInfo) {
    super::state::found(&ctx.pipeline.snapshot, vm, info.clone());
    let event = match info.unresponsive {
        None => {
            tracing::info!(vm, pid = info.pid, "re-adopted a running VM");
            Event::VmAdopted {
                vm: vm.to_owned(),
                pid: info.pid,
                ssh_port: info.ssh_port,
            }
        }
        Some(reason) => {
            tracing::warn!(
                vm,
                pid = info.pid,
                reason,
                "re-adopted a VM that does not answer"
            );
            Event::VmUnresponsive {
                vm: vm.to_owned(),
                pid: info.pid,
                reason,
            }
        }
    };
    ctx.pipeline.bus.publish(None, event);
}

/// Moves the VM to `to` unless it is there already.
fn settle(snapshot: &tokio::sync::watch::Sender<super::state::VmSnapshot>, vm: &str, to: State) {
    if snapshot.borrow().state != to {
        move_to(snapshot, vm, to);
    }
}
