//! The VM actor (Alice Ryhl's pattern): a private task owning the mailbox and the running
//! pipeline, and a cloneable [`VmHandle`] holding the sender and the snapshot receiver.
//!
//! The pipeline runs in a task the actor owns (a `JoinSet`), so the mailbox is always served:
//! a second bootstrap request is answered `Busy` at once while a run goes on, and the run's
//! end reaches the actor through `join_next`, an edge that cannot block the mailbox.
//!
//! Supervision: the actor loop runs inside a supervisor task. If the loop panics, the
//! supervisor logs it, reports the in-flight run as failed, and restarts the loop after a
//! backoff; the mailbox survives (it is shared through a mutex), so handles stay valid.

use std::sync::Arc;
use std::time::{Duration, Instant};

use castra_api::{OutcomeStatus, VmOutcome};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use super::VmSnapshot;
use crate::pipeline::{self, Ctx, Job};

/// The VM already has a run in progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "vm {vm} is busy: operation {operation} is bootstrapping it; wait for it \
     (`castractl events --operation {operation}`) and try again"
)]
pub struct Busy {
    pub vm: String,
    pub operation: String,
}

enum Command {
    Bootstrap {
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
        reply: oneshot::Sender<Result<(), Busy>>,
    },
}

#[derive(Debug, Clone)]
pub struct VmHandle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<VmSnapshot>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Bootstrap { job, .. } => {
                write!(f, "Bootstrap({}, {})", job.vm.name, job.operation)
            }
        }
    }
}

impl VmHandle {
    /// Spawns the actor of VM `name` (under `tracker`) and returns its handle.
    pub fn spawn(name: &str, ctx: Ctx, tracker: &TaskTracker) -> VmHandle {
        let (tx, rx) = mpsc::channel(16);
        let snapshot = ctx.snapshot.subscribe();
        let mailbox = Arc::new(Mutex::new(rx));
        let name = name.to_owned();
        tracker.spawn(supervise(name, ctx, mailbox));
        VmHandle { tx, snapshot }
    }

    /// Asks the actor to run `job`; `outcome` receives the result when the run ends.
    pub async fn bootstrap(
        &self,
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
    ) -> Result<(), Busy> {
        let (reply, answer) = oneshot::channel();
        let vm = job.vm.name.clone();
        let gone = || Busy {
            vm: vm.clone(),
            operation: "(castrad is shutting down)".into(),
        };
        if self
            .tx
            .send(Command::Bootstrap {
                job,
                outcome,
                reply,
            })
            .await
            .is_err()
        {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// The latest snapshot; never waits.
    pub fn snapshot(&self) -> VmSnapshot {
        self.snapshot.borrow().clone()
    }
}

async fn supervise(name: String, ctx: Ctx, mailbox: Arc<Mutex<mpsc::Receiver<Command>>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let in_flight: Arc<std::sync::Mutex<Option<InFlight>>> = Arc::default();
        let actor = run_actor(
            name.clone(),
            ctx.clone(),
            mailbox.clone(),
            in_flight.clone(),
        );
        match tokio::spawn(actor).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(vm = name, "VM actor panicked; restarting it in {backoff:?}");
                let lost = in_flight.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(run) = lost {
                    finish_crashed(&ctx, run, "the VM actor crashed");
                }
                ctx.snapshot.send_modify(|s| {
                    s.bootstrapping = false;
                    s.operation = None;
                    s.current_step = None;
                    s.waiting_on = None;
                });
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

/// The run an actor is executing, kept where the supervisor can see it.
struct InFlight {
    job: Job,
    outcome: watch::Sender<Option<VmOutcome>>,
    started: Instant,
}

async fn run_actor(
    name: String,
    ctx: Ctx,
    mailbox: Arc<Mutex<mpsc::Receiver<Command>>>,
    in_flight: Arc<std::sync::Mutex<Option<InFlight>>>,
) {
    let mut rx = mailbox.lock().await;
    let mut tasks: JoinSet<VmOutcome> = JoinSet::new();
    let slot = || in_flight.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                None => return,
                Some(Command::Bootstrap { job, outcome, reply }) => {
                    if let Some(running) = slot().as_ref() {
                        let _ = reply.send(Err(Busy { vm: name.clone(), operation: running.job.operation.clone() }));
                        continue;
                    }
                    let operation = job.operation.clone();
                    ctx.snapshot.send_modify(|s| s.operation = Some(operation));
                    tasks.spawn(pipeline::run(ctx.clone(), job.clone()));
                    *slot() = Some(InFlight { job, outcome, started: Instant::now() });
                    // The caller may have gone; the run proceeds regardless.
                    let _ = reply.send(Ok(()));
                }
            },
            Some(done) = tasks.join_next() => {
                let Some(run) = slot().take() else { continue };
                let result = match done {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::error!(vm = name, error = %e, "bootstrap pipeline panicked");
                        finish_crashed(&ctx, run, &format!("internal error: the pipeline panicked ({e})"));
                        continue;
                    }
                };
                ctx.snapshot.send_modify(|s| {
                    s.bootstrapping = false;
                    s.operation = None;
                    s.current_step = None;
                    s.waiting_on = None;
                    s.last = Some(result.clone());
                });
                let _ = run.outcome.send(Some(result));
            }
        }
    }
}

/// A run that ended without an outcome (panic): one failure log, one `BootstrapFailed`.
fn finish_crashed(ctx: &Ctx, run: InFlight, error: &str) {
    let outcome = pipeline::record_failure(ctx, &run.job, run.started, error.to_owned());
    ctx.snapshot.send_modify(|s| s.last = Some(outcome.clone()));
    let _ = run.outcome.send(Some(outcome));
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
