//! A running libvirt domain as a [`Machine`]: whether it still runs is libvirt's answer
//! (`virsh domstate`, asked by a watcher task once a second, so `alive` never waits on the
//! hypervisor), and a stop is ACPI through libvirt (`virsh shutdown --mode acpi`, the power
//! button), then `virsh destroy` after the timeout, reported as the same [`StopStep`]s as a
//! QEMU VM's (the escalation is named `destroy`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::virsh::{Hypervisor, blocking};
use super::xml::Facts;
use crate::backend::{Machine, StopPlan, StopStep, Stopped};
use crate::vm::state::MachineInfo;

/// How often the watcher asks libvirt whether the domain still runs.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How often a stop asks.
const STOP_POLL: Duration = Duration::from_millis(200);

/// The states `virsh domstate` reports for a domain whose QEMU is gone.
pub fn is_down(state: &str) -> bool {
    matches!(state.trim(), "shut off" | "crashed" | "")
}

#[derive(Debug)]
pub struct Domain {
    pub name: String,
    pub facts: Facts,
    hv: Arc<Hypervisor>,
    /// Why it is taken to be unresponsive (a paused domain, found at adoption).
    unresponsive: Option<String>,
    /// False once the watcher saw the domain down.
    running: watch::Receiver<bool>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Domain {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// `virsh domstate NAME`: the state, or "" when the domain does not exist. Err: libvirt did
/// not answer.
pub async fn state(hv: &Arc<Hypervisor>, name: &str) -> Result<String, super::virsh::CallError> {
    let (hv, name) = (hv.clone(), name.to_owned());
    let answer = tokio::task::spawn_blocking(move || hv.virsh(&["domstate", &name]))
        .await
        .unwrap_or_else(|e| {
            Err(super::virsh::CallError {
                uri: String::new(),
                what: "virsh domstate".into(),
                message: e.to_string(),
            })
        });
    match answer {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.message.contains("failed to get domain") => Ok(String::new()),
        Err(e) => Err(e),
    }
}

impl Domain {
    pub fn new(
        hv: Arc<Hypervisor>,
        name: String,
        facts: Facts,
        unresponsive: Option<String>,
    ) -> Domain {
        let (tx, running) = watch::channel(true);
        let (whv, wname) = (hv.clone(), name.clone());
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                // A hypervisor that does not answer is not a stopped domain.
                if let Ok(s) = state(&whv, &wname).await
                    && is_down(&s)
                {
                    let _ = tx.send(false);
                    return;
                }
            }
        });
        Domain {
            name,
            facts,
            hv,
            unresponsive,
            running,
            watcher,
        }
    }

    async fn down_within(&self, limit: Duration) -> bool {
        // None: a limit too far to count (u64::MAX seconds from the wire) never runs out.
        let deadline = crate::backend::deadline(Instant::now(), limit);
        loop {
            if let Ok(s) = state(&self.hv, &self.name).await
                && is_down(&s)
            {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    async fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let hv = self.hv.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            hv.virsh(&args).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }

    async fn stop(self, plan: StopPlan, report: &mut (dyn FnMut(StopStep) + Send)) -> Stopped {
        let started = Instant::now();
        report(StopStep::CooperativeAttempted {
            timeout: plan.graceful,
        });
        let pressed = self
            .virsh(&["shutdown", "--mode", "acpi", &self.name])
            .await;
        let reason = match pressed {
            Ok(_) if self.down_within(plan.graceful).await => {
                report(StopStep::CooperativeSucceeded {
                    elapsed: started.elapsed(),
                });
                return Stopped::Graceful;
            }
            Ok(_) => format!(
                "the guest did not power off within {:?} of the ACPI power button",
                plan.graceful
            ),
            Err(e) => format!("could not press the power button: {e}"),
        };
        report(StopStep::CooperativeTimedOut {
            waited: started.elapsed(),
            reason,
        });
        report(StopStep::Escalated {
            signal: "destroy",
            timeout: plan.term,
        });
        if let Err(e) = self.virsh(&["destroy", &self.name]).await {
            tracing::warn!(domain = self.name, error = %e, "virsh destroy failed");
        }
        if self.down_within(plan.term).await {
            Stopped::Terminated
        } else {
            Stopped::Survived
        }
    }
}

impl Machine for Domain {
    fn info(&self) -> MachineInfo {
        MachineInfo {
            // libvirt owns the process (perhaps on another host): no pid of ours.
            pid: 0,
            accel: self.facts.accel.clone(),
            accel_reason: self.facts.accel_reason.clone(),
            ssh_port: self.facts.ssh_port,
            launched_unix_ms: self.facts.launched_unix_ms,
            unresponsive: self.unresponsive.clone(),
            // From the domain's metadata: no virsh call when plan or up asks.
            settings: self.facts.settings.clone(),
            mount_transport: None,
        }
    }

    fn alive(&mut self) -> bool {
        *self.running.borrow()
    }

    fn exited(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.running.wait_for(|r| !*r).await;
        })
    }

    fn stop<'a>(
        self: Box<Self>,
        plan: StopPlan,
        report: &'a mut (dyn FnMut(StopStep) + Send),
    ) -> BoxFuture<'a, Stopped> {
        Box::pin(Domain::stop(*self, plan, report))
    }
}

/// `virsh domstate` of a domain right now, from code that may not be async.
pub fn state_blocking(hv: &Hypervisor, name: &str) -> Result<String, super::virsh::CallError> {
    match blocking(|| hv.virsh(&["domstate", name])) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.message.contains("failed to get domain") => Ok(String::new()),
        Err(e) => Err(e),
    }
}
