//! The bootstrap pipeline of one VM, run by its actor as a task.
//!
//! Order: plan → `BootstrapPlanned`; then Skip → `BootstrapCompleted{Skipped}`, NoOp →
//! `BootstrapCompleted{NoOp}` (no SSH, nothing written), or a run: `BootstrapStarted`, one
//! `BootstrapStep` per step (wait-handshake, the three Vizier steps, connect, transfer, apply,
//! verify), then `BootstrapCompleted{Success|NoOp}` or `BootstrapFailed`.
//!
//! Files: `mod.rs` (this: `run`, `Job`, `Ctx`), `steps.rs` (the step machine, matching on the
//! driver's markers), `record.rs` (the run's log, events, redaction, stamp), `driver.rs` +
//! `driver.sh` (the guest side's shell and its markers), `remote.rs` (the [`Remote`] seam and
//! OpenSSH), `handshake.rs` (banner probes), `archive.rs` (the tar stream), `slots.rs` (how
//! many VMs may start or bootstrap at once).
//!
//! Invariants:
//! - An executed run writes exactly one durable log, success or failure.
//! - A stamp is written only after `Success`, after its log; a failure never touches it.
//! - Env values never reach an event or a log; output lines are redacted of them.
//! - On failure the VM is left as it is, for inspection.

mod archive;
pub mod driver;
pub mod guest_setup;
pub mod handshake;
mod ready;
mod record;
pub mod remote;
pub mod slots;
mod steps;

use std::path::PathBuf;
use std::sync::Arc;

use castra_api::{BootstrapStatus, Event, OutcomeStatus, VmOutcome};
use tokio::time::Instant;

use crate::config::{BootstrapMode, Vm};
use crate::events::EventBus;
use crate::overrides::ModeSource;
use crate::planner::{self, Action};
use crate::ssh;
use crate::state_root::StateRoot;
use crate::vm::state::VmSnapshot;

pub use driver::{ERROR_MARKER, NOOP_MARKER};
pub use remote::{OpenSsh, Remote};
pub use slots::{Slot, Slots};

/// One VM's part of an operation.
#[derive(Debug, Clone)]
pub struct Job {
    pub vm: Arc<Vm>,
    pub mode: (BootstrapMode, ModeSource),
    /// Warnings that need the whole project (computed by the caller).
    pub extra_warnings: Vec<String>,
    pub operation: String,
    /// The castra.toml the VM comes from (recorded with a launched QEMU).
    pub config: PathBuf,
    /// Where the guest's SSH server answers, once known (for a QEMU VM, once it runs).
    pub endpoint: Option<ssh::Endpoint>,
    /// The VM was started by this job: its SSH server is not up yet, so `wait-handshake`
    /// probes for its banner before running ssh (otherwise it tries ssh at once).
    pub booting: bool,
    /// Says when the run is to stop (`castra.cancel`, or `down` of the VM mid-run).
    pub cancel: Cancel,
}

/// The receiving end of a run's cancellation: the reason, once someone has asked. Cheap to
/// clone; [`Cancel::none`] is never cancelled.
#[derive(Debug, Clone)]
pub struct Cancel(tokio::sync::watch::Receiver<Option<String>>);

impl Cancel {
    /// A token and the sender that cancels it (with a reason).
    pub fn new() -> (tokio::sync::watch::Sender<Option<String>>, Cancel) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (tx, Cancel(rx))
    }

    /// A token nobody can cancel.
    pub fn none() -> Cancel {
        Cancel::new().1
    }

    /// The reason, if the run has been asked to stop.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the reason once the run is asked to stop; never if it cannot be.
    pub async fn cancelled(&self) -> String {
        let mut rx = self.0.clone();
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }
}

/// What the pipeline needs from the daemon.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub bus: EventBus,
    pub root: StateRoot,
    /// Where ssh's control sockets go.
    pub control_dir: PathBuf,
    pub snapshot: Arc<tokio::sync::watch::Sender<VmSnapshot>>,
    /// How the run reaches the guest: [`OpenSsh`], or a scripted fake in unit tests.
    pub remote: Arc<dyn Remote>,
    /// The daemon's slots: how many VMs may start or bootstrap at once.
    pub slots: Slots,
    /// The user's image store: the base images disks are made on (planning reads it).
    pub images: Arc<crate::images::Store>,
}

impl Ctx {
    /// A connection of its own to `vm` (waiting for readiness, the guest setup, the health
    /// watch): the VM's pinned settings, a fresh control socket named after `what`.
    pub fn session(
        &self,
        vm: &Vm,
        endpoint: &ssh::Endpoint,
        what: &str,
        connect_timeout: std::time::Duration,
    ) -> ssh::Target {
        let name = format!("{what}-{}", crate::ids::random_hex(6));
        ssh::Target::for_vm(
            vm,
            endpoint,
            &self.root,
            ssh::control_path(&self.control_dir, &name),
            connect_timeout,
        )
    }
}

/// What a run leaves behind: its outcome and, after a successful run that reached the guest,
/// its connection and session, still open, for the Vizier health check to take over (a run
/// and the watching after it cost one key exchange and one session start, not two of each).
pub struct Finished {
    pub outcome: VmOutcome,
    pub handover: Option<ssh::Tail>,
}

impl From<VmOutcome> for Finished {
    fn from(outcome: VmOutcome) -> Finished {
        Finished {
            outcome,
            handover: None,
        }
    }
}

/// Runs the whole pipeline for `job`; never panics on guest or IO errors (they become a
/// `Failed` outcome with a log). `slot`: the one the caller took to boot the VM; without it, a
/// run that goes to the guest takes one after planning (see [`slots`]). Held to the end.
pub async fn run(ctx: Ctx, job: Job, slot: Option<Slot>) -> Finished {
    let started = Instant::now();
    let vm = job.vm.clone();
    let name = vm.name.clone();
    let op = job.operation.clone();
    let publish = |e: Event| {
        ctx.bus.publish(Some(&op), e);
    };

    let plan = {
        let (root, vm, mode) = (ctx.root.clone(), vm.clone(), job.mode.clone());
        let store = ctx.images.clone();
        let seen = {
            let snapshot = ctx.snapshot.borrow();
            planner::Seen {
                vizier: snapshot.vizier.clone(),
                running: snapshot.machine.as_ref().and_then(|m| m.settings.clone()),
            }
        };
        let warnings = job.extra_warnings.clone();
        tokio::task::spawn_blocking(move || {
            planner::plan_vm(&root, &store, &vm, mode, seen, &warnings)
        })
        .await
    };
    let plan = match plan {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            let error = crate::error::one_line(&e);
            return record_failure(&ctx, &job, started, error).into();
        }
        Err(e) => {
            let error = format!("planner panicked: {e}");
            return record_failure(&ctx, &job, started, error).into();
        }
    };
    let mut planned = planner::planned(&vm, plan.clone());
    // `castra.plan` cannot know an auto-chosen port; this run does (its QEMU runs by now).
    if let (Some(ssh), Some(at)) = (planned.ssh.as_mut(), &job.endpoint) {
        ssh.host.clone_from(&at.host);
        ssh.port = Some(at.port);
    }
    publish(Event::BootstrapPlanned(planned));
    if let Some(reason) = job.cancel.reason() {
        return record_failure(&ctx, &job, started, reason).into();
    }
    let _slot = match slot {
        Some(slot) => Some(slot),
        None if plan.action == Action::Run || job.booting => match slots::take(&ctx, &job).await {
            Ok(slot) => Some(slot),
            Err(reason) => return record_failure(&ctx, &job, started, reason).into(),
        },
        None => None,
    };
    // A VM this job booted is usable when `up` returns, whatever its bootstrap does.
    if job.booting
        && plan.action != Action::Run
        && let Err(error) = ready::wait_ready(&ctx, &job).await
    {
        return record_failure(&ctx, &job, started, error).into();
    }
    // A guest without cloud-init is set up once per boot: in the run's session, or here.
    let setup = match guest_setup::needed(&vm) && job.endpoint.is_some() {
        false => None,
        true => {
            let (root, vm) = (ctx.root.clone(), vm.clone());
            tokio::task::spawn_blocking(move || guest_setup::pending(&root, &vm))
                .await
                .ok()
                .flatten()
        }
    };
    if plan.action != Action::Run
        && let Some(pending) = &setup
        && let Err(error) = guest_setup::run(&ctx, &job, pending).await
    {
        return record_failure(&ctx, &job, started, error).into();
    }

    let ms = |since: Instant| since.elapsed().as_millis() as u64;
    match plan.action {
        Action::Skip => {
            publish(Event::BootstrapCompleted {
                vm: name.clone(),
                status: BootstrapStatus::Skipped,
                duration_ms: ms(started),
                stamp: None,
            });
            outcome(&name, OutcomeStatus::Skipped, ms(started)).into()
        }
        Action::Noop => {
            let stamp = plan.stamp.as_ref().map(|s| s.log_path.clone());
            publish(Event::BootstrapCompleted {
                vm: name.clone(),
                status: BootstrapStatus::NoOp,
                duration_ms: ms(started),
                stamp: Some(plan.stamp_path.display().to_string()),
            });
            VmOutcome {
                run_id: plan.stamp.as_ref().map(|s| s.run_id.clone()),
                log_path: stamp,
                stamp: Some(plan.stamp_path.clone()),
                ..outcome(&name, OutcomeStatus::NoOp, ms(started))
            }
            .into()
        }
        Action::Run => {
            steps::Run::new(ctx.clone(), job, plan, started)
                .with_setup(setup)
                .execute()
                .await
        }
    }
}

/// A run that failed outside the step sequence (planning failed: a script vanished, a payload
/// holds a FIFO...; the VM could not start; the pipeline panicked): still one failure log and
/// one `BootstrapFailed`.
pub fn record_failure(ctx: &Ctx, job: &Job, started: Instant, error: String) -> VmOutcome {
    let who = record::Subject {
        bus: &ctx.bus,
        root: &ctx.root,
        snapshot: &ctx.snapshot,
        vm: &job.vm.name,
        operation: &job.operation,
        limits: crate::runlog::Limits::of(&job.vm.bootstrap),
    };
    record::failure_outside_steps(who, started, error)
}

/// Marks `vm`'s pinned host key as confirmed by a connection (`ssh::keys::confirm_pin`); a
/// failure to write that only leaves the mark, so it is logged, not fatal.
fn confirm_pin(root: &crate::state_root::StateRoot, vm: &str) {
    let known_hosts = root.vm(vm).known_hosts;
    if let Err(e) = crate::ssh::keys::confirm_pin(&known_hosts) {
        tracing::warn!(vm, "cannot mark the pinned host key as confirmed: {e}");
    }
}

/// An outcome with only its VM, status and duration set.
fn outcome(vm: &str, status: OutcomeStatus, duration_ms: u64) -> VmOutcome {
    VmOutcome {
        vm: vm.to_owned(),
        status,
        duration_ms,
        run_id: None,
        log_path: None,
        stamp: None,
        error: None,
        error_kind: None,
    }
}

#[cfg(test)]
mod tests;
