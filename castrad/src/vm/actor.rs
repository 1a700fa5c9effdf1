//! The VM actor (Alice Ryhl's pattern): a private task owning the mailbox, the VM's QEMU
//! process and its in-flight work, and a cloneable [`VmHandle`] holding the sender and the
//! snapshot receiver.
//!
//! Long work (starting QEMU, a bootstrap run, a stop sequence) runs in a task the actor owns
//! (a `JoinSet`), so the mailbox is always served: a second request is answered `Busy` at
//! once, and the work's end reaches the actor through `join_next`, an edge that cannot block
//! the mailbox. A task that launches QEMU hands the process to the actor as soon as it runs
//! (an unbounded internal channel), so the actor notices if QEMU dies mid-bootstrap.
//!
//! Supervision: the actor loop runs inside a supervisor task. If the loop panics, the
//! supervisor logs it, reports the in-flight run as failed, and restarts the loop after a
//! backoff; the mailbox survives (shared through a mutex), so handles stay valid. A QEMU
//! process owned by a crashed loop keeps running; the restarted loop re-adopts it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use castra_api::{Event, OutcomeStatus, VmOutcome};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use super::state::{QemuInfo, State, VmSnapshot, move_to};
use crate::config::{AccelSetting, Backend};
use crate::pipeline::{self, Ctx, Job};
use crate::qemu::process::{self, QemuProcess, StopStep, Stopped};
use crate::qemu::{accel, argv};

/// The VM already has work in progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "vm {vm} is busy: operation {operation} is working on it; wait for it \
     (`castractl events --operation {operation}`) and try again"
)]
pub struct Busy {
    pub vm: String,
    pub operation: String,
}

/// A `castra.down` for one VM.
#[derive(Debug, Clone)]
pub struct DownRequest {
    pub operation: String,
    pub discard: bool,
    pub graceful: Duration,
    pub term: Duration,
}

/// How one VM's stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    pub vm: String,
    /// `graceful`, `terminated`, `killed`, `not-running` or `external`.
    pub outcome: String,
    pub total_ms: u64,
    pub discarded: bool,
    pub error: Option<String>,
}

enum Command {
    Up {
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
        reply: oneshot::Sender<Result<(), Busy>>,
    },
    Down {
        request: DownRequest,
        backend: Backend,
        reply: oneshot::Sender<Result<StopReport, Busy>>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Up { job, .. } => write!(f, "Up({}, {})", job.vm.name, job.operation),
            Command::Down { request, .. } => write!(f, "Down({})", request.operation),
        }
    }
}

/// Settings an actor needs beyond the pipeline's.
#[derive(Debug, Clone)]
pub struct ActorCtx {
    pub pipeline: Ctx,
    /// castrad's `--accel`, which beats castra.toml.
    pub accel_override: Option<AccelSetting>,
}

#[derive(Debug, Clone)]
pub struct VmHandle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<VmSnapshot>,
}

impl VmHandle {
    /// Spawns the actor of VM `name` (under `tracker`). `adopted` is a QEMU left running by a
    /// previous castrad.
    pub fn spawn(
        name: &str,
        ctx: ActorCtx,
        adopted: Option<QemuProcess>,
        tracker: &TaskTracker,
    ) -> VmHandle {
        let (tx, rx) = mpsc::channel(16);
        let snapshot = ctx.pipeline.snapshot.subscribe();
        let mailbox = Arc::new(Mutex::new(rx));
        tracker.spawn(supervise(name.to_owned(), ctx, mailbox, adopted));
        VmHandle { tx, snapshot }
    }

    /// Asks the actor to bring the VM up (QEMU) and bootstrap it; `outcome` gets the result.
    pub async fn up(
        &self,
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
    ) -> Result<(), Busy> {
        let (reply, answer) = oneshot::channel();
        let vm = job.vm.name.clone();
        if self
            .tx
            .send(Command::Up {
                job,
                outcome,
                reply,
            })
            .await
            .is_err()
        {
            return Err(shutting_down(&vm));
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down(&vm)))
    }

    /// Asks the actor to stop the VM; resolves when it has stopped.
    pub async fn down(
        &self,
        vm: &str,
        backend: Backend,
        request: DownRequest,
    ) -> Result<StopReport, Busy> {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Command::Down {
                request,
                backend,
                reply,
            })
            .await
            .is_err()
        {
            return Err(shutting_down(vm));
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down(vm)))
    }

    /// The latest snapshot; never waits.
    pub fn snapshot(&self) -> VmSnapshot {
        self.snapshot.borrow().clone()
    }
}

fn shutting_down(vm: &str) -> Busy {
    Busy {
        vm: vm.to_owned(),
        operation: "(castrad is shutting down)".into(),
    }
}

/// A `Rejected` outcome for a VM that was busy.
pub fn rejected(busy: &Busy) -> VmOutcome {
    VmOutcome {
        vm: busy.vm.clone(),
        status: OutcomeStatus::Rejected,
        duration_ms: 0,
        run_id: None,
        log_path: None,
        stamp: None,
        error: Some(busy.to_string()),
    }
}

async fn supervise(
    name: String,
    ctx: ActorCtx,
    mailbox: Arc<Mutex<mpsc::Receiver<Command>>>,
    mut adopted: Option<QemuProcess>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let in_flight: Arc<std::sync::Mutex<Option<InFlight>>> = Arc::default();
        let actor = Actor {
            name: name.clone(),
            ctx: ctx.clone(),
            qemu: adopted.take(),
            in_flight: in_flight.clone(),
            health: None,
        };
        match tokio::spawn(actor.run(mailbox.clone())).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(vm = name, "VM actor panicked; restarting it in {backoff:?}");
                let lost = in_flight.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(InFlight::Run {
                    job,
                    outcome,
                    started,
                }) = lost
                {
                    let o = pipeline::record_failure(
                        &ctx.pipeline,
                        &job,
                        started,
                        "the VM actor crashed".into(),
                    );
                    let _ = outcome.send(Some(o));
                }
                ctx.pipeline.snapshot.send_modify(|s| {
                    s.operation = None;
                    s.current_step = None;
                    s.waiting_on = None;
                });
                // Whatever QEMU the crashed loop owned is still running: find it again.
                adopted = process::adopt(&ctx.pipeline.root.vm(&name)).await;
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(100);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(_) => return,
        }
    }
}

/// The work an actor has in progress, kept where the supervisor can see it.
enum InFlight {
    Run {
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
        started: Instant,
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
    Stop(StopReport, oneshot::Sender<Result<StopReport, Busy>>),
}

struct Actor {
    name: String,
    ctx: ActorCtx,
    qemu: Option<QemuProcess>,
    in_flight: Arc<std::sync::Mutex<Option<InFlight>>>,
    /// The Vizier health check, once a run has seen the agent.
    health: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Actor {
    fn drop(&mut self) {
        self.stop_health();
    }
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    Launched(Box<QemuProcess>),
    Done(Result<Done, tokio::task::JoinError>),
    QemuExited,
}

impl Actor {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> &watch::Sender<VmSnapshot> {
        &self.ctx.pipeline.snapshot
    }

    async fn run(mut self, mailbox: Arc<Mutex<mpsc::Receiver<Command>>>) {
        let mut rx = mailbox.lock().await;
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let (launched_tx, mut launched_rx) = mpsc::unbounded_channel::<QemuProcess>();
        if let Some(q) = &self.qemu {
            let info = info(q);
            self.snapshot().send_modify(|s| {
                s.state = State::Running;
                s.qemu = Some(info);
            });
        }
        loop {
            let wake = tokio::select! {
                command = rx.recv() => Wake::Command(command),
                Some(q) = launched_rx.recv() => Wake::Launched(Box::new(q)),
                Some(done) = tasks.join_next() => Wake::Done(done),
                _ = exited(&mut self.qemu) => Wake::QemuExited,
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
                    self.start_run(&mut tasks, job, outcome, launched_tx.clone());
                    let _ = reply.send(Ok(()));
                }
                Wake::Command(Some(Command::Down {
                    request,
                    backend,
                    reply,
                })) => {
                    if let Some(busy) = self.busy() {
                        let _ = reply.send(Err(busy));
                        continue;
                    }
                    self.start_stop(&mut tasks, request, backend, reply);
                }
                Wake::Launched(q) => {
                    let info = info(&q);
                    self.snapshot().send_modify(|s| s.qemu = Some(info));
                    self.qemu = Some(*q);
                }
                Wake::Done(done) => self.finish(done),
                Wake::QemuExited => {
                    self.qemu = None;
                    self.stop_health();
                    process::forget(&self.ctx.pipeline.root.vm(&self.name));
                    self.snapshot().send_modify(|s| s.qemu = None);
                    move_to(self.snapshot(), &self.name, State::Stopped);
                    let reason = "QEMU exited (the guest powered off or QEMU crashed); see serial.log and qemu.log".to_owned();
                    let op = self.slot().as_ref().map(|f| f.operation().to_owned());
                    self.ctx.pipeline.bus.publish(
                        op.as_deref(),
                        Event::VmExited {
                            vm: self.name.clone(),
                            reason,
                        },
                    );
                }
            }
        }
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
        launched: mpsc::UnboundedSender<QemuProcess>,
    ) {
        let operation = job.operation.clone();
        self.snapshot()
            .send_modify(|s| s.operation = Some(operation));
        *self.slot() = Some(InFlight::Run {
            job: job.clone(),
            outcome,
            started: Instant::now(),
        });
        let ctx = self.ctx.clone();
        let running = self.qemu.as_mut().is_some_and(QemuProcess::alive);
        if job.vm.backend == Backend::Qemu && running {
            job.ssh_port = self.qemu.as_ref().map(|q| q.record.ssh_port);
        }
        let needs_start = job.vm.backend == Backend::Qemu && !running;
        tasks.spawn(async move {
            let started = Instant::now();
            if needs_start {
                match start(&ctx, &job).await {
                    Ok(q) => {
                        job.ssh_port = Some(q.record.ssh_port);
                        job.booting = true;
                        let _ = launched.send(q);
                    }
                    Err(e) => {
                        move_to(&ctx.pipeline.snapshot, &job.vm.name, State::Failed);
                        let error = format!("starting the VM failed: {e}");
                        let failed = pipeline::record_failure(&ctx.pipeline, &job, started, error);
                        return Done::Run(Box::new(failed.into()));
                    }
                }
            }
            Done::Run(Box::new(pipeline::run(ctx.pipeline.clone(), job).await))
        });
    }

    fn start_stop(
        &mut self,
        tasks: &mut JoinSet<Done>,
        request: DownRequest,
        backend: Backend,
        reply: oneshot::Sender<Result<StopReport, Busy>>,
    ) {
        let vm = self.name.clone();
        let ctx = self.ctx.clone();
        let qemu = self.qemu.take().filter(|_| backend == Backend::Qemu);
        // The guest is going away (or, for an external VM, out of our hands): stop watching
        // its agent now, or the check would outlive the VM and, after the next start, probe
        // a port that is no longer its own.
        self.stop_health();
        *self.slot() = Some(InFlight::Stop {
            operation: request.operation.clone(),
        });
        self.snapshot()
            .send_modify(|s| s.operation = Some(request.operation.clone()));
        if qemu.is_some() {
            move_to(self.snapshot(), &vm, State::Stopping);
        }
        tasks.spawn(async move {
            let report = stop(&ctx, &vm, backend, qemu, &request).await;
            Done::Stop(report, reply)
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
            (Ok(Done::Stop(report, reply)), _) => {
                if report.error.is_none() && report.outcome != "external" {
                    self.snapshot().send_modify(|s| s.qemu = None);
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
}

impl Actor {
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
        let port = self
            .qemu
            .as_ref()
            .map(|q| q.record.ssh_port)
            .or(vm.ssh.port)
            .unwrap_or(22);
        let target = crate::ssh::Target::for_vm(
            vm,
            port,
            self.ctx.pipeline.root.vm(&vm.name).known_hosts,
            crate::ssh::control_path(
                &self.ctx.pipeline.control_dir,
                &format!("health-{}", crate::ids::random_hex(6)),
            ),
            Duration::from_secs(10),
        );
        self.health = Some(tokio::spawn(crate::vizier::health::watch(
            target,
            handover,
            vm.bootstrap.vizier_dir.clone(),
            vm.bootstrap.remote_dir.clone(),
            self.ctx.pipeline.bus.clone(),
            self.ctx.pipeline.snapshot.clone(),
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

fn info(q: &QemuProcess) -> QemuInfo {
    QemuInfo {
        pid: q.pid(),
        accel: q.record.accel.clone(),
        ssh_port: q.record.ssh_port,
        launched_unix_ms: q.record.launched_unix_ms,
    }
}

/// Resolves when the VM's QEMU exits; never when there is none.
async fn exited(qemu: &mut Option<QemuProcess>) {
    match qemu {
        Some(q) => q.exited().await,
        None => std::future::pending().await,
    }
}

/// Prepares the overlay and launches QEMU; publishes `OverlayPrepared` and `VmLaunched`.
async fn start(ctx: &ActorCtx, job: &Job) -> Result<QemuProcess, String> {
    let vm = &job.vm;
    let publish = |e: Event| {
        ctx.pipeline.bus.publish(Some(&job.operation), e);
    };
    move_to(&ctx.pipeline.snapshot, &vm.name, State::Starting);
    let paths = ctx.pipeline.root.vm(&vm.name);
    let base = vm
        .base_image
        .as_deref()
        .ok_or("a QEMU VM needs base_image")?;
    if let Some(overlay_path) = process::prepare_overlay(&paths, base)
        .await
        .map_err(|e| e.to_string())?
    {
        publish(Event::OverlayPrepared {
            vm: vm.name.clone(),
            overlay_path,
        });
    }
    let setting = ctx.accel_override.unwrap_or(vm.accel);
    let choice = accel::choose(setting, &accel::probe())?;
    let ssh_port = match vm.ssh.port {
        Some(port) => port,
        None => process::free_port().map_err(|e| format!("no free loopback port for SSH: {e}"))?,
    };
    let spec = argv::LaunchSpec {
        vm: vm.name.clone(),
        accel: choice.accel,
        cpus: vm.cpus,
        memory_mib: vm.memory_mib,
        overlay: paths.overlay.clone(),
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        cmdline: vm.cmdline.clone(),
        ssh_port,
        port_forwards: vm.port_forwards.clone(),
        qmp_socket: paths.qmp.clone(),
        serial_log: paths.serial_log.clone(),
        pidfile: paths.pidfile.clone(),
    };
    let q = process::launch(&spec, &paths, &choice.reason, &job.config)
        .await
        .map_err(|e| e.to_string())?;
    publish(Event::VmLaunched {
        vm: vm.name.clone(),
        pid: q.pid(),
        accel: choice.accel.as_str().to_owned(),
        accel_reason: choice.reason,
        ssh_port,
    });
    move_to(&ctx.pipeline.snapshot, &vm.name, State::Running);
    Ok(q)
}

/// The stop sequence of one VM, with its events; discards the disk when asked.
async fn stop(
    ctx: &ActorCtx,
    vm: &str,
    backend: Backend,
    qemu: Option<QemuProcess>,
    request: &DownRequest,
) -> StopReport {
    let started = Instant::now();
    let bus = &ctx.pipeline.bus;
    let op = Some(request.operation.as_str());
    let ms = |d: Duration| d.as_millis() as u64;
    let mut report = StopReport {
        vm: vm.to_owned(),
        outcome: String::new(),
        total_ms: 0,
        discarded: false,
        error: None,
    };
    if backend == Backend::External {
        report.outcome = "external".into();
        return report;
    }
    let paths = ctx.pipeline.root.vm(vm);
    let changed = qemu.is_some();
    report.outcome = match qemu {
        None => "not-running".into(),
        Some(q) => {
            bus.publish(op, Event::ShutdownRequested { vm: vm.to_owned() });
            let stopped = process::stop(q, request.graceful, request.term, |step| {
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
            })
            .await;
            process::forget(&paths);
            match stopped {
                Stopped::Graceful | Stopped::Terminated | Stopped::Killed => {
                    stopped.as_str().to_owned()
                }
            }
        }
    };
    report.total_ms = ms(started.elapsed());
    bus.publish(
        op,
        Event::ShutdownComplete {
            vm: vm.to_owned(),
            outcome: report.outcome.clone(),
            total_ms: report.total_ms,
            changed,
        },
    );
    if request.discard && paths.overlay.exists() {
        match process::discard(&paths) {
            Ok(reclaimed_bytes) => {
                report.discarded = true;
                bus.publish(
                    op,
                    Event::EphemeralLayerDiscarded {
                        vm: vm.to_owned(),
                        overlay_path: paths.overlay.clone(),
                        reclaimed_bytes,
                    },
                );
            }
            Err(e) => {
                report.error = Some(format!("cannot discard {}: {e}", paths.overlay.display()))
            }
        }
    }
    report
}
