//! What castrad knows about a VM right now: its lifecycle [`State`], the one function that
//! moves between states, and the [`VmSnapshot`] that `status` reads.
//!
//! External VMs start (and idle) in `Running`: castrad does not own their lifecycle and only
//! moves them through `Bootstrapping`. QEMU VMs start in `Stopped`.
//!
//! Pure data, no IO: the actor, its pipeline runs and the Vizier health check all write the
//! snapshot (through a `watch`), `status` only reads it, so a busy VM never delays a reply.

use castra_api::{BootstrapStepKind, VmOutcome};
use tokio::sync::watch;

use crate::vizier::VizierSeen;

/// Where a VM is in its life, as castrad sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Stopped,
    Starting,
    Running,
    Bootstrapping,
    /// Failed to start, or the last bootstrap failed (the VM is left running for inspection).
    Failed,
    Stopping,
    /// The machine runs but does not answer (found so at re-adoption, or still running after
    /// a stop's last signal): kept, never started again or bootstrapped; only stopped.
    Unresponsive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid VM state transition {from:?} -> {to:?}")]
pub struct InvalidTransition {
    pub from: State,
    pub to: State,
}

/// The only way a VM's state changes. Rejects moves that would hide a bug: starting a VM that
/// runs, bootstrapping one that is stopped, stopping one that is starting.
pub fn transition(from: State, to: State) -> Result<State, InvalidTransition> {
    use State::*;
    let ok = matches!(
        (from, to),
        // Stopped → Running: a machine found running (re-adopted after a castrad restart);
        // → Unresponsive: found running but not answering.
        (Stopped, Starting | Running | Unresponsive)
            | (Starting, Running | Failed | Stopped)
            // Running → Failed: a run failed before its steps began (planning, a crash);
            // → Unresponsive: re-adopted so after the actor crashed.
            | (Running, Bootstrapping | Stopping | Stopped | Failed | Unresponsive)
            | (Bootstrapping, Running | Failed | Stopped)
            // Failed → Unresponsive: re-adopted so after the actor crashed.
            | (Failed, Starting | Bootstrapping | Stopping | Stopped | Unresponsive)
            // Stopping → Unresponsive: still running after the last signal.
            | (Stopping, Stopped | Failed | Unresponsive)
            | (Unresponsive, Stopping | Stopped)
    );
    if ok {
        Ok(to)
    } else {
        Err(InvalidTransition { from, to })
    }
}

/// What `status` shows about a VM, published by its actor (and its tasks) through a `watch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSnapshot {
    pub state: State,
    /// The operation whose run is in progress.
    pub operation: Option<String>,
    pub current_step: Option<BootstrapStepKind>,
    pub waiting_on: Option<String>,
    pub last: Option<VmOutcome>,
    /// The running machine, while there is one (never for an external VM).
    pub machine: Option<MachineInfo>,
    /// The Vizier agent as last seen (by a run's handshake or the health check).
    pub vizier: Option<VizierSeen>,
}

/// What castrad knows of a running machine (from its backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub pid: u32,
    /// `kvm` or `tcg`, and why that one.
    pub accel: String,
    pub accel_reason: String,
    /// The host port forwarded to the guest's SSH port.
    pub ssh_port: u16,
    pub launched_unix_ms: u64,
    /// Set when the machine runs but does not answer its control channel (QEMU's QMP), with
    /// the reason: adopted as it is, it can only be stopped.
    pub unresponsive: Option<String>,
    /// What it was launched with (None: launched by a castrad that did not record it).
    pub settings: Option<crate::drift::LaunchSettings>,
    /// How the VM's mounts reach the guest (`virtiofs` or `9p`); None: no mounts.
    pub mount_transport: Option<String>,
}

/// Moves the VM to `to` through [`transition`]; an invalid move is logged and refused.
pub fn move_to(snapshot: &watch::Sender<VmSnapshot>, vm: &str, to: State) -> bool {
    let mut moved = true;
    snapshot.send_modify(|s| match transition(s.state, to) {
        Ok(next) => s.state = next,
        Err(e) => {
            tracing::error!(vm, error = %e, "refused a VM state change");
            moved = false;
        }
    });
    moved
}

/// Shows a machine found running (re-adopted): the VM is up, or there but not answering.
pub fn found(snapshot: &watch::Sender<VmSnapshot>, vm: &str, info: MachineInfo) {
    let state = snapshot.borrow().state;
    let to = match info.unresponsive {
        Some(_) => State::Unresponsive,
        None => State::Running,
    };
    snapshot.send_modify(|s| s.machine = Some(info));
    if state == State::Stopped || (to == State::Unresponsive && state != to) {
        move_to(snapshot, vm, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    const ALL: [State; 7] = [
        Stopped,
        Starting,
        Running,
        Bootstrapping,
        Failed,
        Stopping,
        Unresponsive,
    ];

    #[test]
    fn every_pair_is_decided_as_documented() {
        let allowed: &[(State, State)] = &[
            (Stopped, Starting),
            (Stopped, Running),
            (Stopped, Unresponsive),
            (Starting, Running),
            (Starting, Failed),
            (Starting, Stopped),
            (Running, Bootstrapping),
            (Running, Stopping),
            (Running, Stopped),
            (Running, Failed),
            (Running, Unresponsive),
            (Bootstrapping, Running),
            (Bootstrapping, Failed),
            (Bootstrapping, Stopped),
            (Failed, Starting),
            (Failed, Bootstrapping),
            (Failed, Stopping),
            (Failed, Stopped),
            (Failed, Unresponsive),
            (Stopping, Stopped),
            (Stopping, Failed),
            (Stopping, Unresponsive),
            (Unresponsive, Stopping),
            (Unresponsive, Stopped),
        ];
        for from in ALL {
            for to in ALL {
                let want = allowed.contains(&(from, to));
                assert_eq!(transition(from, to).is_ok(), want, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn the_error_names_both_states() {
        let e = transition(Stopped, Bootstrapping).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid VM state transition Stopped -> Bootstrapping"
        );
    }
}
