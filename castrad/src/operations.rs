//! Operations: one `castra.up` request and the outcome of each of its VMs.
//!
//! Each VM's outcome arrives on a `watch` channel set by its actor (or set at once to
//! `Rejected`). `castra.outcome` waits on them in input order; a slow VM never delays the
//! recording of another's outcome, only the moment the full list is complete.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use castra_api::{OutcomeStatus, VmOutcome};
use tokio::sync::watch;

/// How many finished operations are remembered for `castra.outcome`.
const REMEMBERED: usize = 1024;

#[derive(Debug)]
pub struct Operation {
    pub id: String,
    pub project: String,
    pub vms: Vec<String>,
    outcomes: Vec<watch::Receiver<Option<VmOutcome>>>,
}

impl Operation {
    pub fn new(
        id: String,
        project: String,
        vms: Vec<String>,
        outcomes: Vec<watch::Receiver<Option<VmOutcome>>>,
    ) -> Operation {
        Operation {
            id,
            project,
            vms,
            outcomes,
        }
    }

    /// Waits for every VM's outcome; returns them in input order.
    pub async fn wait(&self) -> Vec<VmOutcome> {
        let mut out = Vec::with_capacity(self.outcomes.len());
        for (vm, rx) in self.vms.iter().zip(&self.outcomes) {
            let mut rx = rx.clone();
            let outcome = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().expect("predicate checked"),
                // The sender vanished without an outcome: castrad is shutting down.
                Err(_) => VmOutcome {
                    vm: vm.clone(),
                    status: OutcomeStatus::Failed,
                    duration_ms: 0,
                    run_id: None,
                    log_path: None,
                    stamp: None,
                    error: Some("castrad stopped before this VM finished".into()),
                    error_kind: None,
                },
            };
            out.push(outcome);
        }
        out
    }
}

#[derive(Debug, Default)]
pub struct Operations {
    recent: Mutex<VecDeque<Arc<Operation>>>,
}

impl Operations {
    pub fn insert(&self, op: Operation) -> Arc<Operation> {
        let op = Arc::new(op);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back(op.clone());
        op
    }

    pub fn get(&self, id: &str) -> Option<Arc<Operation>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().find(|op| op.id == id).cloned()
    }
}
