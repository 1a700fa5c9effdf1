//! Starting and stopping a VM's machine through its backend, with the events a user sees:
//! `ImageFetch` (a base image downloaded or imported into the store for a new disk),
//! `OverlayPrepared`, `VmLaunched`; `ShutdownRequested`, the cooperative attempt and each
//! escalation, `ShutdownComplete`, `EphemeralLayerDiscarded`. Runs in the actor's tasks.

use castra_api::{Event, StopOutcome};
use tokio::time::Instant;

use super::ActorCtx;
use super::handle::{DownRequest, StopReport};
use super::state::{State, move_to};
use crate::backend::{BackendError, DiskInputs, Machine, StopPlan, StopStep, Stopped};
use crate::pipeline::Job;

/// Prepares the disk and launches the machine; publishes `OverlayPrepared` and `VmLaunched`.
pub async fn start(ctx: &ActorCtx, job: &Job) -> Result<Box<dyn Machine>, BackendError> {
    let vm = &job.vm;
    let root = &ctx.pipeline.root;
    let publish = |e: Event| {
        ctx.pipeline.bus.publish(Some(&job.operation), e);
    };
    move_to(&ctx.pipeline.snapshot, &vm.name, State::Starting);
    let snapshot = ctx.pipeline.snapshot.clone();
    let mut progress = |p: &crate::images::Progress| {
        publish(image_fetch(&vm.name, p));
        snapshot.send_modify(|s| {
            s.waiting_on = (p.phase != crate::images::Phase::Done).then(|| waiting_on(p));
        });
    };
    let inputs = DiskInputs {
        images: &ctx.pipeline.images,
        config: &job.config,
        progress: &mut progress,
    };
    // A download can take minutes: `down` or `castra.cancel` stops it (its part is kept for
    // the next attempt to resume).
    let prepared = tokio::select! {
        prepared = ctx.backend.prepare_disk(root, vm, inputs) => prepared,
        reason = job.cancel.cancelled() => Err(BackendError::Cancelled(reason)),
    };
    ctx.pipeline.snapshot.send_modify(|s| s.waiting_on = None);
    if let Some(overlay_path) = prepared? {
        publish(Event::OverlayPrepared {
            vm: vm.name.clone(),
            overlay_path,
        });
    }
    let machine = ctx.backend.launch(root, vm, &job.config).await?;
    let info = machine.info();
    publish(Event::VmLaunched {
        vm: vm.name.clone(),
        pid: info.pid,
        accel: info.accel,
        accel_reason: info.accel_reason,
        ssh_port: info.ssh_port,
    });
    move_to(&ctx.pipeline.snapshot, &vm.name, State::Running);
    Ok(machine)
}

/// The `ImageFetch` event of `vm` for `p`.
pub fn image_fetch(vm: &str, p: &crate::images::Progress) -> Event {
    Event::ImageFetch {
        vm: vm.to_owned(),
        source: p.source.clone(),
        phase: p.phase.as_str().to_owned(),
        bytes_done: p.done,
        bytes_total: p.total,
        rate_bps: p.rate,
    }
}

/// What `status` says a VM starting on a base image still being fetched waits on.
fn waiting_on(p: &crate::images::Progress) -> String {
    let what = match p.phase {
        crate::images::Phase::Checksums => "the checksums file of",
        crate::images::Phase::Resume => "resuming the download of",
        crate::images::Phase::Download => "the download of",
        crate::images::Phase::Import => "the import into the image store of",
        crate::images::Phase::Done => "the image store for",
    };
    let done = match p.total {
        Some(total) if total > 0 => format!(
            "{} of {} MiB, {}%",
            p.done >> 20,
            total >> 20,
            p.done.saturating_mul(100) / total
        ),
        _ => format!("{} MiB", p.done >> 20),
    };
    format!("{what} {} ({done})", p.source)
}

/// The stop sequence of one VM, with its events; discards the disk when asked. An external
/// VM (whose backend does not own its lifecycle) is left alone. A machine still running after
/// the last signal is found again through the backend and returned: the actor keeps it, its
/// records and its disk (nothing is forgotten or discarded under a running machine).
pub async fn stop(
    ctx: &ActorCtx,
    vm: &str,
    machine: Option<Box<dyn Machine>>,
    request: &DownRequest,
) -> (StopReport, Option<Box<dyn Machine>>) {
    let started = Instant::now();
    let bus = &ctx.pipeline.bus;
    let op = Some(request.operation.as_str());
    let ms = crate::backend::millis;
    let mut report = StopReport {
        vm: vm.to_owned(),
        outcome: StopOutcome::External,
        total_ms: 0,
        discarded: false,
        error: None,
    };
    if !ctx.backend.owns_lifecycle() {
        return (report, None);
    }
    let root = &ctx.pipeline.root;
    let changed = machine.is_some();
    let mut kept = None;
    report.outcome = match machine {
        None => StopOutcome::NotRunning,
        Some(machine) => {
            bus.publish(op, Event::ShutdownRequested { vm: vm.to_owned() });
            let plan = StopPlan {
                graceful: request.graceful,
                term: request.term,
            };
            let mut events = |step: StopStep| {
                let event = match step {
                    StopStep::CooperativeAttempted { timeout } => Event::CooperativeAttempted {
                        vm: vm.to_owned(),
                        method: "acpi-powerdown".into(),
                        timeout_ms: ms(timeout),
                    },
                    StopStep::CooperativeSucceeded { elapsed } => Event::CooperativeSucceeded {
                        vm: vm.to_owned(),
                        elapsed_ms: ms(elapsed),
                    },
                    StopStep::CooperativeTimedOut { waited, reason } => {
                        Event::CooperativeTimedOut {
                            vm: vm.to_owned(),
                            waited_ms: ms(waited),
                            reason,
                        }
                    }
                    StopStep::Escalated { signal, timeout } => Event::ShutdownEscalated {
                        vm: vm.to_owned(),
                        signal: signal.to_owned(),
                        timeout_ms: ms(timeout),
                    },
                };
                bus.publish(op, event);
            };
            match machine.stop(plan, &mut events).await {
                Stopped::Graceful => StopOutcome::Graceful,
                Stopped::Terminated => StopOutcome::Terminated,
                Stopped::Killed => StopOutcome::Killed,
                // Found again only if it still runs (adopting forgets a machine that is gone).
                Stopped::Survived => match ctx.backend.adopt(root, vm).await {
                    None => StopOutcome::Killed,
                    Some(machine) => {
                        // pid 0: a libvirt domain, whose process is libvirt's, not ours.
                        let what = match machine.info().pid {
                            0 => "its libvirt domain is still running after `virsh destroy`"
                                .to_owned(),
                            pid => format!(
                                "pid {pid} is still running after SIGKILL (stuck in the kernel?)"
                            ),
                        };
                        report.error = Some(format!(
                            "vm {vm}: {what}; castrad keeps it, with its records and its disk; \
                             try `castractl down {vm}` again later"
                        ));
                        kept = Some(machine);
                        StopOutcome::StillRunning
                    }
                },
            }
        }
    };
    if changed && kept.is_none() {
        ctx.backend.forget(root, vm);
    }
    report.total_ms = ms(started.elapsed());
    bus.publish(
        op,
        Event::ShutdownComplete {
            vm: vm.to_owned(),
            outcome: report.outcome,
            total_ms: report.total_ms,
            changed,
        },
    );
    if request.discard && kept.is_none() {
        match ctx.backend.discard(root, vm) {
            Ok(Some((overlay_path, reclaimed_bytes))) => {
                report.discarded = true;
                bus.publish(
                    op,
                    Event::EphemeralLayerDiscarded {
                        vm: vm.to_owned(),
                        overlay_path,
                        reclaimed_bytes,
                    },
                );
            }
            Ok(None) => {}
            Err(e) => report.error = Some(e.to_string()),
        }
    }
    (report, kept)
}
