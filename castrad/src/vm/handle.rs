//! The VM actor's public face: [`VmHandle`] (the mailbox sender and the snapshot receiver),
//! the requests it carries and their replies.

use std::time::Duration;

use castra_api::{OutcomeStatus, StopOutcome, VmOutcome};
use tokio::sync::{mpsc, oneshot, watch};

use super::state::VmSnapshot;
use crate::pipeline::Job;

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
    pub outcome: StopOutcome,
    pub total_ms: u64,
    pub discarded: bool,
    pub error: Option<String>,
}

/// A request to the actor; the reply goes back on its oneshot.
pub(super) enum Command {
    Up {
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
        reply: oneshot::Sender<Result<(), Busy>>,
    },
    Down {
        request: DownRequest,
        reply: oneshot::Sender<Result<StopReport, Busy>>,
    },
    /// Stop the run in flight, if any; the reply names its operation.
    Cancel {
        reason: String,
        reply: oneshot::Sender<Option<String>>,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Up { job, .. } => write!(f, "Up({}, {})", job.vm.name, job.operation),
            Command::Down { request, .. } => write!(f, "Down({})", request.operation),
            Command::Cancel { .. } => write!(f, "Cancel"),
        }
    }
}

/// A VM's actor, as the rest of castrad holds it. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct VmHandle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<VmSnapshot>,
}

impl VmHandle {
    pub(super) fn new(tx: mpsc::Sender<Command>, snapshot: watch::Receiver<VmSnapshot>) -> Self {
        VmHandle { tx, snapshot }
    }

    /// Asks the actor to bring the VM up (start its machine if it has to) and bootstrap it;
    /// `outcome` gets the result. Answered at once: accepted, or `Busy`.
    pub async fn up(
        &self,
        job: Job,
        outcome: watch::Sender<Option<VmOutcome>>,
    ) -> Result<(), Busy> {
        let (reply, answer) = oneshot::channel();
        let vm = job.vm.name.clone();
        let command = Command::Up {
            job,
            outcome,
            reply,
        };
        if self.tx.send(command).await.is_err() {
            return Err(shutting_down(&vm));
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down(&vm)))
    }

    /// Asks the actor to stop the VM; resolves when it has stopped (or at once with `Busy`). A
    /// run in flight is cancelled first.
    pub async fn down(&self, vm: &str, request: DownRequest) -> Result<StopReport, Busy> {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Command::Down { request, reply })
            .await
            .is_err()
        {
            return Err(shutting_down(vm));
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down(vm)))
    }

    /// Asks the actor to stop the VM's run in flight with `reason`. Some(operation): that
    /// operation's run was asked to stop (its outcome says when it has); None: no run was
    /// in flight. Answered at once.
    pub async fn cancel(&self, reason: String) -> Option<String> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Command::Cancel { reason, reply }).await.ok()?;
        answer.await.ok().flatten()
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

/// The terminal event of a VM that an `up` did not attempt (`Rejected`: busy, or its QEMU
/// unresponsive): `BootstrapFailed` with the outcome's reason, so that every VM of an
/// operation ends its events with exactly one terminal event. No run log goes with it.
pub fn rejected_event(outcome: &VmOutcome) -> castra_api::Event {
    castra_api::Event::BootstrapFailed {
        vm: outcome.vm.clone(),
        duration_ms: outcome.duration_ms,
        error: outcome
            .error
            .clone()
            .unwrap_or_else(|| "rejected".to_owned()),
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
        error_kind: None,
    }
}
