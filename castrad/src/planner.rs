//! Bootstrap planning: what will happen to each VM of a project, and why.
//!
//! Split in two: [`gather`] does the IO (artifact and base hashes, stamp and disk identity
//! reads) and [`decide`] is a pure function from those facts to a [`VmPlan`]. Planning never
//! writes anything except base-image hash cache entries, and preflight checks (override
//! grammar, unknown VM names) run before any IO at all.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{Backend, BootstrapMode, Project, Vm};
use crate::hashing::{self, HashError};
use crate::overrides::{ModeSource, OverrideError, Overrides};
use crate::stamps::{self, Stamp, StampRead};
use crate::state_root::StateRoot;

/// What the pipeline will do for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Run,
    Noop,
    Skip,
}

/// What a run expects of the in-guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VizierExpect {
    /// castrad has not seen it on this VM: the run installs (if needed) and starts it.
    Start,
    /// Seen, but another version or no longer answering: the run reinstalls and restarts it.
    Restart,
    /// Seen answering, this version.
    Healthy,
    /// Nothing will contact the guest.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Auto,
    Always,
}

/// The full plan of one VM: everything `BootstrapPlanned` reports plus what the pipeline needs.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPlan {
    pub vm: String,
    pub mode: BootstrapMode,
    pub mode_source: ModeSource,
    pub action: Action,
    pub reason: String,
    pub trigger: Option<Trigger>,
    pub artifact_hash: Option<String>,
    pub base_hash: String,
    pub payload_bytes: Option<u64>,
    /// The stamp that makes this a NoOp (or that a run would replace).
    pub stamp: Option<Stamp>,
    pub stamp_path: PathBuf,
    pub vizier_log_path: PathBuf,
    pub vizier: VizierExpect,
    pub vizier_remediation: Option<String>,
    pub warnings: Vec<String>,
}

/// Facts about one VM gathered from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub artifact: Option<hashing::Artifact>,
    pub base: hashing::BaseHash,
    pub stamp: StampRead,
    pub disk_id: Option<String>,
    /// The agent as the VM's actor last saw it (not read from disk: filled by the caller).
    pub vizier: Option<crate::vm::VizierSeen>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Preflight(#[from] OverrideError),
    #[error("vm {vm}: cannot hash its bootstrap inputs")]
    Hash { vm: String, source: HashError },
}

/// Parses and checks overrides against the project. Pure: run it before anything else.
pub fn preflight(project: &Project, overrides: &[String]) -> Result<Overrides, OverrideError> {
    let overrides = Overrides::parse(overrides)?;
    overrides.check_names(&project.vm_names())?;
    Ok(overrides)
}

/// Reads what planning needs for `vm` (blocking IO: hashing may read a whole base image once).
pub fn gather(root: &StateRoot, vm: &Vm) -> Result<Facts, PlanError> {
    let hash_err = |source| PlanError::Hash {
        vm: vm.name.clone(),
        source,
    };
    let artifact = match &vm.bootstrap.script {
        Some(_) => Some(hashing::artifact_hash(vm, crate::vizier::VERSION).map_err(hash_err)?),
        None => None,
    };
    let base = hashing::base_hash(root, vm).map_err(hash_err)?;
    Ok(Facts {
        artifact,
        base,
        stamp: stamps::read(root, &vm.name),
        disk_id: stamps::disk_id(root, &vm.name),
        vizier: None,
    })
}

/// Pure: the plan of `vm` from its effective mode and the gathered facts.
pub fn decide(
    root: &StateRoot,
    vm: &Vm,
    (mode, mode_source): (BootstrapMode, ModeSource),
    mut facts: Facts,
) -> VmPlan {
    let mut warnings = Vec::new();
    let stamp = match std::mem::replace(&mut facts.stamp, StampRead::Absent) {
        StampRead::Present(s) => Some(s),
        StampRead::Absent => None,
        StampRead::Corrupt(why) => {
            warnings.push(format!(
                "ignoring unreadable stamp ({why}); the next success rewrites it"
            ));
            None
        }
    };
    let artifact_hash = facts.artifact.as_ref().map(|a| a.hash.clone());
    let from = match &mode_source {
        ModeSource::File => "castra.toml".to_owned(),
        other => other.to_string(),
    };

    let (action, trigger, reason) = match (mode, &artifact_hash) {
        (BootstrapMode::Skip, _) => (Action::Skip, None, format!("mode skip (from {from})")),
        (_, None) => {
            if mode == BootstrapMode::Always {
                warnings.push("mode always, but no bootstrap script is configured".into());
            }
            (Action::Skip, None, "no bootstrap script configured".into())
        }
        (BootstrapMode::Always, Some(_)) => (
            Action::Run,
            Some(Trigger::Always),
            format!("mode always (from {from}): runs even if a stamp matches"),
        ),
        (BootstrapMode::Auto, Some(artifact)) => {
            let disk = facts.disk_id.as_deref();
            match &stamp {
                Some(s) if s.matches(&facts.base.hash, artifact, disk) => (
                    Action::Noop,
                    Some(Trigger::Auto),
                    format!(
                        "already bootstrapped: stamp of run {} ({}) matches base image, \
                         artifact and disk",
                        s.run_id, s.completed_at
                    ),
                ),
                Some(s) => (
                    Action::Run,
                    Some(Trigger::Auto),
                    stale_reason(s, &facts, artifact),
                ),
                None => (
                    Action::Run,
                    Some(Trigger::Auto),
                    "not bootstrapped yet (no stamp)".into(),
                ),
            }
        }
    };

    let (vizier, vizier_why) = vizier_expect(action, facts.vizier.as_ref());
    let (action, reason) = match (action, vizier, &vizier_why) {
        (Action::Noop, VizierExpect::Restart, Some(why)) => (
            Action::Run,
            format!("the stamp matches, but {why}: the run restarts it"),
        ),
        _ => (action, reason),
    };
    let vizier_remediation = match (vizier, facts.vizier.as_ref()) {
        (VizierExpect::Restart, Some(v)) if !v.healthy => Some(format!(
            "see the agent's log in the guest ({}), mirrored to {}",
            crate::vizier::guest_log_hint(vm.bootstrap.vizier_dir.as_deref()),
            root.vizier_log(&vm.name).display()
        )),
        _ => None,
    };
    if action == Action::Run
        && vm.bootstrap.verify_command.is_none()
        && vm.bootstrap.verify_path.is_none()
    {
        warnings.push(
            "no verify_command or verify_path: success rests on the script's exit status alone"
                .into(),
        );
    }
    if let Some(identity) = &vm.ssh.identity
        && !identity.exists()
    {
        warnings.push(format!(
            "ssh identity {} does not exist",
            identity.display()
        ));
    }

    VmPlan {
        vm: vm.name.clone(),
        mode,
        mode_source,
        action,
        reason,
        trigger,
        artifact_hash,
        base_hash: facts.base.hash,
        payload_bytes: facts.artifact.and_then(|a| a.payload_bytes),
        stamp,
        stamp_path: root.stamp(&vm.name),
        vizier_log_path: root.vizier_log(&vm.name),
        vizier,
        vizier_remediation,
        warnings,
    }
}

/// What the run will find of the agent, and why it needs a restart if it does.
fn vizier_expect(
    action: Action,
    seen: Option<&crate::vm::VizierSeen>,
) -> (VizierExpect, Option<String>) {
    if action == Action::Skip {
        return (VizierExpect::Unavailable, None);
    }
    match seen {
        None => (VizierExpect::Start, None),
        Some(v) if v.version != crate::vizier::VERSION => (
            VizierExpect::Restart,
            Some(format!(
                "Vizier {} runs in the guest and this castrad ships {}",
                v.version,
                crate::vizier::VERSION
            )),
        ),
        Some(v) if !v.healthy => (
            VizierExpect::Restart,
            Some("the Vizier agent stopped answering".into()),
        ),
        Some(_) => (VizierExpect::Healthy, None),
    }
}

fn stale_reason(stamp: &Stamp, facts: &Facts, artifact: &str) -> String {
    let mut changed = Vec::new();
    if stamp.base_hash != facts.base.hash {
        changed.push("base image");
    }
    if stamp.artifact_hash != artifact {
        changed.push("bootstrap artifact");
    }
    if facts.disk_id.as_deref() != Some(stamp.disk_id.as_str()) {
        changed.push("disk");
    }
    format!(
        "{} changed since run {} ({})",
        changed.join(" and "),
        stamp.run_id,
        stamp.completed_at
    )
}

/// Warnings that need the whole project: two VMs writing the same remote_dir on one host.
pub fn cross_vm_warnings(project: &Project) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let endpoint = |vm: &Vm| match vm.backend {
        Backend::External => Some((vm.ssh.host.clone(), vm.ssh.port.unwrap_or(22))),
        Backend::Qemu => None,
    };
    for (i, a) in project.vms.iter().enumerate() {
        for b in &project.vms[i + 1..] {
            if a.bootstrap.script.is_some()
                && b.bootstrap.script.is_some()
                && endpoint(a).is_some()
                && endpoint(a) == endpoint(b)
                && a.bootstrap.remote_dir == b.bootstrap.remote_dir
            {
                for (me, other) in [(a, b), (b, a)] {
                    out.entry(me.name.clone()).or_default().push(format!(
                        "remote_dir {} is also used by vm {} on the same host",
                        me.bootstrap.remote_dir, other.name
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
