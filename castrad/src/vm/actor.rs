//! The VM actor (Alice Ryhl's pattern): a private task owning the mailbox, the VM's machine
//! and its in-flight work; [`super::VmHandle`] holds the sender and the snapshot receiver.
//!
//! Long work (starting the machine, a bootstrap run, a stop sequence) runs in a task the
//! actor owns (a `JoinSet`), so the mailbox is always served: a second request is answered
//! `Busy` at once, and the work's end reaches the actor through `join_next`, an edge that
//! cannot block the mailbox. A task that launches a machine hands it to the actor as soon as
//! it runs (an unbounded internal channel), so the actor notices if it dies mid-bootstrap.
//! The work in flight is also kept where the supervisor can see it, should the loop panic.

use std::sync::Arc;
use std::time::Duration;

use castra_api::{Event, VmOutcome};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ActorCtx;
use super::handle::{Busy, Command, DownRequest, StopReport};
use super::lifecycle;
use super::state::{State, VmSnapshot, move_to};
use crate::backend::Machine;
use crate::pipeline::{self, Job};

/// The work an actor has in progress, kept where the supervisor can see it.
pub enum InFlight {
    Run {
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
        started: Instant,
        /// Stops the run (see `pipeline::Cancel`).
        cancel: watch::Sender<Option<String>>,
    },
    Stop {
        operation: String,
    },
}

impl InFlight {
    fn operation(&self) -> &str {
        match self {
            InFlight::Run { job, .. } => &job.operation,
            InFlight::Stop { operation } => operation,
        }
    }
}

/// What a task reports when it ends.
enum Done {
    Run(Box<pipeline::Finished>),
    /// The report, the machine if it survived the stop, and who asked.
    Stop(
        StopReport,
        Option<Box<dyn Machine>>,
        oneshot::Sender<Result<StopReport, Busy>>,
    ),
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    Launched(Box<dyn Machine>),
    Done(Result<Done, tokio::task::JoinError>),
    Exited,
}

pub struct Actor {
    name: String,
    ctx: ActorCtx,
    machine: Option<Box<dyn Machine>>,
    in_flight: Arc<std::sync::Mutex<Option<InFlight>>>,
    /// The Vizier health check, once a run has seen the agent.
    health: Option<tokio::task::JoinHandle<()>>,
    /// A `down` that came while a run was in flight: the run was cancelled, the stop starts
    /// once it has ended.
    pending_down: Option<(DownRequest, oneshot::Sender<Result<StopReport, Busy>>)>,
}

impl Drop for Actor {
    fn drop(&mut self) {
        self.stop_health();
    }
}

impl Actor {
    pub fn new(
        name: String,
        ctx: ActorCtx,
        machine: Option<Box<dyn Machine>>,
        in_flight: Arc<std::sync::Mutex<Option<InFlight>>>,
    ) -> Actor {
        Actor {
            name,
            ctx,
            machine,
            in_flight,
            health: None,
            pending_down: None,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> &watch::Sender<VmSnapshot> {
        &self.ctx.pipeline.snapshot
    }

    pub async fn run(mut self, mailbox: Arc<Mutex<mpsc::Receiver<Command>>>) {
        let mut rx = mailbox.lock().await;
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let (launched_tx, mut launched_rx) = mpsc::unbounded_channel::<Box<dyn Machine>>();
        if let Some(machine) = &self.machine {
            // A machine found running (re-adopted, maybe after a crash of this loop).
            super::state::found(self.snapshot(), &self.name, machine.info());
        }
        loop {
            let wake = tokio::select! {
                command = rx.recv() => Wake::Command(command),
                Some(machine) = launched_rx.recv() => Wake::Launched(machine),
                Some(done) = tasks.join_next() => Wake::Done(done),
                _ = exited(&mut self.machine) => Wake::Exited,
            };
            match wake {
                Wake::Command(None) => {
                    self.abandon(&mut tasks).await;
                    return;
                }
                Wake::Command(Some(Command::Up {
                    job,
                    outcome,
                    reply,
                })) => {
                    if let Some(busy) = self.busy() {
                        let _ = reply.send(Err(busy));
                        continue;
                    }
                    if let Some(refused) = self.unresponsive(&job) {
                        self.ctx.pipeline.bus.publish(
                            Some(&job.operation),
                            super::handle::rejected_event(&refused),
                        );
                        let _ = outcome.send(Some(refused));
                        let _ = reply.send(Ok(()));
                        continue;
                    }
                    self.start_run(&mut tasks, job, outcome, launched_tx.clone());
                    let _ = reply.send(Ok(()));
                }
                Wake::Command(Some(Command::Down { request, reply })) => {
                    if self.pending_down.is_none()
                        && self
                            .cancel_run("cancelled: castractl down stops the VM")
                            .is_some()
                    {
                        self.pending_down = Some((request, reply));
                        continue;
                    }
                    if let Some(busy) = self.busy() {
                        let _ = reply.send(Err(busy));
                        continue;
                    }
                    self.start_stop(&mut tasks, request, reply);
                }
                Wake::Command(Some(Command::Cancel { reason, reply })) => {
                    let _ = reply.send(self.cancel_run(&reason));
                }
                Wake::Launched(machine) => {
                    let info = machine.info();
                    self.snapshot().send_modify(|s| s.machine = Some(info));
                    self.machine = Some(machine);
                }
                Wake::Done(done) => {
                    self.finish(done);
                    if let Some((request, reply)) = self.pending_down.take() {
                        self.start_stop(&mut tasks, request, reply);
                    }
                }
                Wake::Exited => self.machine_exited(),
            }
        }
    }

    /// The machine exited on its own (the guest powered off, QEMU crashed).
    fn machine_exited(&mut self) {
        self.machine = None;
        self.stop_health();
        self.ctx.backend.forget(&self.ctx.pipeline.root, &self.name);
        self.snapshot().send_modify(|s| s.machine = None);
        move_to(self.snapshot(), &self.name, State::Stopped);
        let reason =
            "QEMU exited (the guest powered off or QEMU crashed); see serial.log and qemu.log"
                .to_owned();
        let op = self.slot().as_ref().map(|f| f.operation().to_owned());
        self.ctx.pipeline.bus.publish(
            op.as_deref(),
            Event::VmExited {
                vm: self.name.clone(),
                reason,
            },
        );
    }

    /// castrad is stopping: a run still going is cut short, and recorded as failed (one log,
    /// one `BootstrapFailed`, no stamp) so nothing it did goes unaccounted for. A run that
    /// finished meanwhile keeps its own outcome.
    async fn abandon(&mut self, tasks: &mut JoinSet<Done>) {
        tasks.abort_all();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(done) => self.finish(Ok(done)),
                Err(_) => {
                    if let Some(InFlight::Run {
                        job,
                        outcome,
                        started,
                        ..
                    }) = self.slot().take()
                    {
                        let error = "castrad stopped during the run; the guest was left as it was"
                            .to_owned();
                        let o = pipeline::record_failure(&self.ctx.pipeline, &job, started, error);
                        let _ = outcome.send(Some(o));
                    }
                }
            }
        }
    }

    /// Asks the run in flight to stop; its operation, or None when no run is in flight.
    fn cancel_run(&self, reason: &str) -> Option<String> {
        match self.slot().as_ref()? {
            InFlight::Run { job, cancel, .. } => {
                cancel.send_replace(Some(reason.to_owned()));
                Some(job.operation.clone())
            }
            InFlight::Stop { .. } => None,
        }
    }

    /// The outcome of an `up` of a VM whose machine runs but does not answer: nothing is
    /// started (that would be a second machine on its disk) and nothing is run.
    fn unresponsive(&self, job: &Job) -> Option<VmOutcome> {
        self.machine.as_ref()?;
        // What status shows is what decides.
        let reason = self
            .snapshot()
            .borrow()
            .machine
            .as_ref()?
            .unresponsive
            .clone()?;
        let vm = &self.name;
        Some(VmOutcome {
            vm: vm.clone(),
            status: castra_api::OutcomeStatus::Rejected,
            duration_ms: 0,
            run_id: None,
            log_path: None,
            stamp: None,
            error: Some(format!(
                "vm {vm} is unresponsive: {reason}; castrad will not start or bootstrap it \
                 (operation {}). Stop it with `castractl down {vm}` (by signal if QMP still \
                 does not answer), then `castractl up` again",
                job.operation
            )),
            error_kind: None,
        })
    }

    fn busy(&self) -> Option<Busy> {
        self.slot().as_ref().map(|f| Busy {
            vm: self.name.clone(),
            operation: f.operation().to_owned(),
        })
    }

    fn start_run(
        &mut self,
        tasks: &mut JoinSet<Done>,
        mut job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
        launched: mpsc::UnboundedSender<Box<dyn Machine>>,
    ) {
        let operation = job.operation.clone();
        self.snapshot()
            .send_modify(|s| s.operation = Some(operation));
        let (cancel, token) = pipeline::Cancel::new();
        job.cancel = token;
        *self.slot() = Some(InFlight::Run {
            job: job.clone(),
            outcome,
            started: Instant::now(),
            cancel,
        });
        let ctx = self.ctx.clone();
        let running = self.machine.as_mut().is_some_and(|m| m.alive());
        let info = self.machine.as_ref().map(|m| m.info());
        job.endpoint = ctx.backend.ssh_endpoint(&job.vm, info.as_ref());
        let needs_start = ctx.backend.owns_lifecycle() && !running;
        tasks.spawn(async move {
            let started = Instant::now();
            let mut slot = None;
            if needs_start {
                // A boot holds a slot from before the launch to the run's end (the task's
                // end, however it ends: the slot is dropped with it).
                match pipeline::slots::take(&ctx.pipeline, &job).await {
                    Ok(taken) => slot = Some(taken),
                    Err(reason) => {
                        let failed = pipeline::record_failure(&ctx.pipeline, &job, started, reason);
                        return Done::Run(Box::new(failed.into()));
                    }
                }
                match lifecycle::start(&ctx, &job).await {
                    Ok(machine) => {
                        job.endpoint = ctx.backend.ssh_endpoint(&job.vm, Some(&machine.info()));
                        job.booting = true;
                        let _ = launched.send(machine);
                    }
                    Err(e) => {
                        move_to(&ctx.pipeline.snapshot, &job.vm.name, State::Failed);
                        let error =
                            format!("starting the VM failed: {}", crate::error::one_line(&e));
                        let mut failed =
                            pipeline::record_failure(&ctx.pipeline, &job, started, error);
                        failed.error_kind = e.kind().map(str::to_owned);
                        return Done::Run(Box::new(failed.into()));
                    }
                }
            }
            Done::Run(Box::new(
                pipeline::run(ctx.pipeline.clone(), job, slot).await,
            ))
        });
    }

    fn start_stop(
        &mut self,
        tasks: &mut JoinSet<Done>,
        request: DownRequest,
        reply: oneshot::Sender<Result<StopReport, Busy>>,
    ) {
        let vm = self.name.clone();
        let ctx = self.ctx.clone();
        let machine = self.machine.take();
        // The guest is going away (or, for an external VM, out of our hands): stop watching
        // its agent now, or the check would outlive the VM and, after the next start, probe
        // a port that is no longer its own.
        self.stop_health();
        *self.slot() = Some(InFlight::Stop {
            operation: request.operation.clone(),
        });
        self.snapshot()
            .send_modify(|s| s.operation = Some(request.operation.clone()));
        if machine.is_some() {
            move_to(self.snapshot(), &vm, State::Stopping);
        }
        tasks.spawn(async move {
            let (report, kept) = lifecycle::stop(&ctx, &vm, machine, &request).await;
            Done::Stop(report, kept, reply)
        });
    }

    fn finish(&mut self, done: Result<Done, tokio::task::JoinError>) {
        let in_flight = self.slot().take();
        self.snapshot().send_modify(|s| {
            s.operation = None;
            s.current_step = None;
            s.waiting_on = None;
        });
        match (done, in_flight) {
            (Ok(Done::Run(finished)), Some(InFlight::Run { outcome, job, .. })) => {
                let result = finished.outcome;
                self.snapshot()
                    .send_modify(|s| s.last = Some(result.clone()));
                let _ = outcome.send(Some(result));
                self.start_health(&job, finished.handover);
            }
            (Ok(Done::Stop(report, Some(kept), reply)), _) => {
                // Still running after the last signal: kept, and only `down` acts on it.
                let mut info = kept.info();
                info.unresponsive.get_or_insert_with(|| {
                    "it was still running after SIGKILL (stuck in the kernel?)".to_owned()
                });
                self.snapshot().send_modify(|s| s.machine = Some(info));
                self.machine = Some(kept);
                move_to(self.snapshot(), &self.name, State::Unresponsive);
                let _ = reply.send(Ok(report));
            }
            (Ok(Done::Stop(report, None, reply)), _) => {
                if report.error.is_none() && self.ctx.backend.owns_lifecycle() {
                    self.snapshot().send_modify(|s| s.machine = None);
                    let state = self.snapshot().borrow().state;
                    if state != State::Stopped {
                        move_to(self.snapshot(), &self.name, State::Stopped);
                    }
                }
                let _ = reply.send(Ok(report));
            }
            (
                Err(e),
                Some(InFlight::Run {
                    job,
                    outcome,
                    started,
                    ..
                }),
            ) => {
                tracing::error!(vm = self.name, error = %e, "bootstrap task panicked");
                let error = format!("internal error: the pipeline panicked ({e})");
                let o = pipeline::record_failure(&self.ctx.pipeline, &job, started, error);
                self.snapshot().send_modify(|s| s.last = Some(o.clone()));
                let _ = outcome.send(Some(o));
            }
            (Err(e), _) => tracing::error!(vm = self.name, error = %e, "VM task panicked"),
            (Ok(Done::Run(_)), _) => {
                tracing::error!(vm = self.name, "a run ended that was not in flight")
            }
        }
    }

    /// Starts the Vizier health check after a run that has seen the agent. What the run hands
    /// over (its connection, its session gone on as the agent's watch) replaces a check already
    /// running; without it, a running check is kept.
    fn start_health(&mut self, job: &Job, handover: Option<crate::ssh::Tail>) {
        let seen = self
            .snapshot()
            .borrow()
            .vizier
            .as_ref()
            .is_some_and(|v| v.healthy);
        let running = self.health.as_ref().is_some_and(|h| !h.is_finished());
        if !seen || (running && handover.is_none()) {
            return; // a handover, if any, is dropped: its session and connection end
        }
        if let Some(old) = self.health.take() {
            old.abort();
        }
        let vm = &job.vm;
        let info = self.machine.as_ref().map(|m| m.info());
        let Some(endpoint) = self.ctx.backend.ssh_endpoint(vm, info.as_ref()) else {
            return;
        };
        let target = self
            .ctx
            .pipeline
            .session(vm, &endpoint, "health", Duration::from_secs(10));
        self.health = Some(tokio::spawn(crate::vizier::health::watch(
            target,
            handover,
            vm.bootstrap.vizier_dir.clone(),
            vm.bootstrap.remote_dir.clone(),
            self.ctx.pipeline.bus.clone(),
            self.ctx.pipeline.snapshot.clone(),
            self.ctx.pipeline.remote.clone(),
        )));
    }

    /// Stops the health check; the agent's last state is forgotten with the VM.
    fn stop_health(&mut self) {
        if let Some(h) = self.health.take() {
            h.abort();
        }
        self.ctx.pipeline.snapshot.send_modify(|s| s.vizier = None);
    }
}

/// Resolves when the VM's machine exits; never when there is none.
async fn exited(machine: &mut Option<Box<dyn Machine>>) {
    match machine {
        Some(m) => m.exited().await,
        None => std::future::pending().await,
    }
}
