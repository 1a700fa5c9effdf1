//! Bootstrap planning: what will happen to each VM of a project, and why.
//!
//! Split in two: [`gather`] does the IO (artifact and base hashes, stamp and disk identity
//! reads, the base image's standing in the image store: `base`, and the check of a base file
//! a new disk would be made on: `crate::image::base`) and [`decide`] is a pure function from
//! those facts to a [`VmPlan`]. Planning never writes anything except hash cache entries, and
//! preflight checks (override grammar, unknown VM names) run before any IO at all.

use std::collections::BTreeMap;
use std::path::PathBuf;

use castra_api as api;

mod base;

use crate::config::{BackendKind, BootstrapMode, Project, Vm};
use crate::hashing::{self, HashError};
use crate::images::{Source, Store};
use crate::overrides::{ModeSource, OverrideError, Overrides};
use crate::stamps::{self, Stamp, StampRead};
use crate::state_root::StateRoot;
use crate::vizier::VizierSeen;

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
    /// Base-image bytes read to plan this VM (0 when the hash cache had them).
    pub base_bytes_read: u64,
    /// The settings the VM runs with that castra.toml now sets otherwise (`crate::drift`).
    pub drift: Vec<api::Drift>,
    /// Where the VM's base image stands (None: it has none).
    pub base_image: Option<api::BaseImagePlan>,
}

/// Facts about one VM gathered from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub artifact: Option<hashing::Artifact>,
    pub base: hashing::BaseHash,
    /// The base image's standing (`base::facts`).
    pub image: Option<base::BaseFacts>,
    pub stamp: StampRead,
    pub disk_id: Option<String>,
    /// The agent as the VM's actor last saw it (not read from disk: filled by the caller).
    pub vizier: Option<VizierSeen>,
    /// The configured ssh identity file, when it does not exist.
    pub missing_identity: Option<PathBuf>,
    /// The VM's disk got a seed from other `[vms.cloud_init]` inputs than today's.
    pub seed_changed: bool,
    /// What the VM's running machine was launched with (not read from disk: filled by the
    /// caller from the actor's snapshot); None when it is not running.
    pub running: Option<crate::drift::LaunchSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Preflight(#[from] OverrideError),
    #[error("vm {vm}: cannot hash its bootstrap inputs")]
    Hash { vm: String, source: HashError },
    #[error("vm {vm}: its base image cannot be used")]
    BaseImage {
        vm: String,
        source: crate::image::ImageError,
    },
    #[error("vm {vm}: base_image {} does not exist{hint}", path.display())]
    BaseMissing {
        vm: String,
        path: PathBuf,
        hint: String,
    },
}

/// Parses and checks overrides against the project. Pure: run it before anything else.
pub fn preflight(project: &Project, overrides: &[String]) -> Result<Overrides, OverrideError> {
    let overrides = Overrides::parse(overrides)?;
    overrides.check_names(&project.vm_names())?;
    Ok(overrides)
}

/// What the VM's actor knows that planning uses: the agent as last seen, and the settings
/// its running machine was launched with.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub vizier: Option<VizierSeen>,
    pub running: Option<crate::drift::LaunchSettings>,
}

/// Plans one VM: [`gather`] then [`decide`], with what the VM's actor knows ([`Seen`]) and
/// the project-wide warnings the caller computed. Blocking IO (hashing).
pub fn plan_vm(
    root: &StateRoot,
    store: &Store,
    vm: &Vm,
    mode: (BootstrapMode, ModeSource),
    seen: Seen,
    extra_warnings: &[String],
) -> Result<VmPlan, PlanError> {
    let mut facts = gather(root, store, vm)?;
    facts.vizier = seen.vizier;
    facts.running = seen.running;
    let mut plan = decide(root, vm, mode, facts);
    plan.warnings.extend(extra_warnings.iter().cloned());
    Ok(plan)
}

/// Plans every VM of `project` under `overrides` (what `castra.plan` answers); returns the
/// plans in file order and how many base-image bytes were read (0 when the cache had them).
pub fn plan_project(
    project: &Project,
    root: &StateRoot,
    store: &Store,
    overrides: &Overrides,
    seen: &BTreeMap<String, Seen>,
) -> Result<(Vec<VmPlan>, u64), PlanError> {
    // Bases are checked before any is hashed: a refused one leaves no cache entry behind.
    for vm in &project.vms {
        check_base(root, vm)?;
    }
    let mut bytes = warm_hash_cache(project, root);
    let mut cross = cross_vm_warnings(project);
    let mut plans = Vec::with_capacity(project.vms.len());
    for vm in &project.vms {
        let mode = overrides.resolve(&vm.name, vm.bootstrap.mode);
        let warnings = cross.remove(&vm.name).unwrap_or_default();
        let seen = seen.get(&vm.name).cloned().unwrap_or_default();
        let plan = plan_vm(root, store, vm, mode, seen, &warnings)?;
        bytes += plan.base_bytes_read;
        plans.push(plan);
    }
    Ok((plans, bytes))
}

/// Hashes each distinct base file of the project once, in parallel, so replicas sharing an
/// image do not read it several times and several images are read concurrently. Errors are
/// left for the per-VM pass to report with the VM's name. Returns the bytes read.
fn warm_hash_cache(project: &Project, root: &StateRoot) -> u64 {
    let files: std::collections::BTreeSet<&std::path::Path> = project
        .vms
        .iter()
        .filter(|vm| vm.backend == BackendKind::Qemu)
        .flat_map(|vm| [&vm.kernel, &vm.initrd])
        .filter_map(|p| p.as_deref())
        .chain(project.vms.iter().filter_map(|vm| hashed_file(root, vm)))
        .collect();
    if files.len() < 2 {
        return 0;
    }
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .into_iter()
            .map(|file| s.spawn(move || hashing::cached_file_hash(root, file)))
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().ok()?.ok())
            .map(|(_, n)| n)
            .sum()
    })
}

/// Reads what planning needs for `vm` (blocking IO: hashing may read a whole base image once).
pub fn gather(root: &StateRoot, store: &Store, vm: &Vm) -> Result<Facts, PlanError> {
    let hash_err = |source| PlanError::Hash {
        vm: vm.name.clone(),
        source,
    };
    let artifact = match &vm.bootstrap.script {
        Some(_) => Some(hashing::artifact_hash(vm, crate::vizier::VERSION).map_err(hash_err)?),
        None => None,
    };
    check_base(root, vm)?;
    let image = base::facts(root, store, vm).map_err(hash_err)?;
    let sha256 = image.as_ref().and_then(|i| i.sha256.as_deref());
    let mut base = hashing::base_hash(root, vm, sha256).map_err(hash_err)?;
    base.bytes_read += image.as_ref().map_or(0, |i| i.bytes_read);
    Ok(Facts {
        artifact,
        base,
        image,
        stamp: stamps::read(root, &vm.name),
        disk_id: stamps::disk_id(root, &vm.name),
        vizier: None,
        missing_identity: vm.ssh.identity.clone().filter(|i| !i.exists()),
        seed_changed: seed_changed(root, vm).map_err(hash_err)?,
        running: None,
    })
}

/// The base file a new disk would be made on (a QEMU VM without a disk, or a libvirt VM that
/// uploads) must be there and self-contained (`crate::image::base`) before its hash can
/// stand for what the guest reads. A disk that exists is on its own base: the user's file may
/// have gone since (a URL's image is checked when it is fetched).
fn check_base(root: &StateRoot, vm: &Vm) -> Result<(), PlanError> {
    let Some(image) = new_disk_file(root, vm) else {
        return Ok(());
    };
    if !image.exists() {
        return Err(PlanError::BaseMissing {
            vm: vm.name.clone(),
            path: image.to_owned(),
            hint: crate::config::catalog_hint_for(image).unwrap_or_default(),
        });
    }
    crate::image::base(image)
        .map(|_| ())
        .map_err(|source| PlanError::BaseImage {
            vm: vm.name.clone(),
            source,
        })
}

/// The VM's base image file when a new disk would be made on it now.
fn new_disk_file<'a>(root: &StateRoot, vm: &'a Vm) -> Option<&'a std::path::Path> {
    let new_disk = match vm.backend {
        BackendKind::Qemu => !root.vm(&vm.name).overlay.exists(),
        BackendKind::Libvirt => vm.libvirt.as_ref().is_some_and(|l| l.upload),
        BackendKind::External => false,
    };
    vm.base_image
        .as_ref()
        .and_then(|b| b.file())
        .filter(|_| new_disk)
}

/// A base file planning hashes itself (`base_image_import = false`, no disk yet): the others
/// are known by the image store or the disk's record.
fn hashed_file<'a>(root: &StateRoot, vm: &'a Vm) -> Option<&'a std::path::Path> {
    match vm.base_image.as_ref()?.local()? {
        Source::File {
            path,
            import: false,
            ..
        } if vm.backend == BackendKind::Qemu && !root.vm(&vm.name).overlay.exists() => Some(path),
        _ => None,
    }
}

/// Whether the seed on the VM's disk was made from other `[vms.cloud_init]` inputs than the
/// configured ones (false when it has no seed yet).
fn seed_changed(root: &StateRoot, vm: &Vm) -> Result<bool, HashError> {
    if !vm.cloud_init.enabled {
        return Ok(false);
    }
    let Ok(recorded) = std::fs::read_to_string(root.vm(&vm.name).seed_inputs) else {
        return Ok(false);
    };
    Ok(recorded.trim() != hashing::seed_inputs(vm)?)
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
    if facts.seed_changed {
        warnings.push(
            "[vms.cloud_init] (user_data, authorized_keys or the user), [[vms.mounts]] or \
             the VM's place on the project network changed since this disk's first boot: \
             cloud-init applies it to a fresh disk only (castractl down --discard, then up)"
                .into(),
        );
    }
    if let Some(image) = &facts.image {
        warnings.extend(image.warnings.iter().cloned());
    }
    if let Some(identity) = &facts.missing_identity {
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
        base_bytes_read: facts.base.bytes_read,
        drift: crate::drift::of_running(vm, facts.running.as_ref()),
        base_image: facts.image.map(|i| i.plan),
    }
}

/// What the run will find of the agent, and why it needs a restart if it does.
fn vizier_expect(action: Action, seen: Option<&VizierSeen>) -> (VizierExpect, Option<String>) {
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
        BackendKind::External => Some((vm.ssh.host.clone(), vm.ssh.port)),
        BackendKind::Qemu | BackendKind::Libvirt => None,
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

fn mode(m: BootstrapMode) -> api::BootstrapMode {
    match m {
        BootstrapMode::Auto => api::BootstrapMode::Auto,
        BootstrapMode::Skip => api::BootstrapMode::Skip,
        BootstrapMode::Always => api::BootstrapMode::Always,
    }
}

/// `vm`'s shared folders as the wire shows them, each with `transport` (None: not known here).
pub fn wire_mounts(vm: &Vm, transport: Option<api::MountTransport>) -> Vec<api::VmMount> {
    vm.mounts
        .iter()
        .map(|m| api::VmMount {
            host: m.host.clone(),
            guest: m.guest.clone(),
            readonly: m.readonly,
            transport,
        })
        .collect()
}

/// The wire form of a plan: the payload of `BootstrapPlanned` and of `castra.plan`.
pub fn planned(vm: &Vm, plan: VmPlan) -> api::BootstrapPlanned {
    let b = &vm.bootstrap;
    let runs = plan.action != Action::Skip;
    // config filled in each backend's defaults (QEMU: 127.0.0.1; external: port 22).
    let ssh = vm.ssh.host.clone();
    api::BootstrapPlanned {
        base_image: plan.base_image,
        vm: plan.vm,
        mode: mode(plan.mode),
        action: match plan.action {
            Action::Run => api::BootstrapPlanAction::Run,
            Action::Noop => api::BootstrapPlanAction::Noop,
            Action::Skip => api::BootstrapPlanAction::Skip,
        },
        reason: plan.reason,
        trigger: plan.trigger.map(|t| match t {
            Trigger::Auto => api::BootstrapTrigger::Auto,
            Trigger::Always => api::BootstrapTrigger::Always,
        }),
        script_path: b.script.clone(),
        payload_path: b.payload.clone(),
        payload_bytes: plan.payload_bytes,
        handshake_timeout_secs: runs.then_some(b.handshake_timeout_secs),
        remote_dir: b.script.as_ref().map(|_| b.remote_dir.clone()),
        ssh: ssh.map(|host| api::BootstrapPlanSsh {
            user: vm.ssh.user.clone(),
            host,
            port: vm.ssh.port,
            identity: vm.ssh.identity.clone(),
            options: vm.ssh.options.clone(),
        }),
        env_keys: b.env.keys().cloned().collect(),
        verify: (b.verify_command.is_some() || b.verify_path.is_some()).then(|| {
            api::BootstrapPlanVerify {
                command: b.verify_command.clone(),
                path: b.verify_path.clone(),
            }
        }),
        artifact_hash: plan.artifact_hash,
        metadata_path: b.metadata_path.clone(),
        warnings: plan.warnings,
        vizier_status: Some(match plan.vizier {
            VizierExpect::Start => api::VizierPlanStatus::Start,
            VizierExpect::Restart => api::VizierPlanStatus::Restart,
            VizierExpect::Healthy => api::VizierPlanStatus::Healthy,
            VizierExpect::Unavailable => api::VizierPlanStatus::Unavailable,
        }),
        vizier_log_path: Some(plan.vizier_log_path),
        vizier_remediation: plan.vizier_remediation,
        disk_mib: vm.disk_mib,
        network_address: vm.network.as_ref().map(|n| n.address.to_string()),
        drift: plan.drift,
        mounts: wire_mounts(vm, None),
    }
}

#[cfg(test)]
mod tests;
