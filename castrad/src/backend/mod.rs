//! The backend seam: how a VM is provided. The VM actor owns a VM's life and asks its
//! [`Backend`] for each piece of it: preparing the disk, launching, re-adopting what a previous
//! castrad left running, where its SSH server answers, stopping, discarding, and the identity
//! of the disk that stamps are bound to. [`qemu::Qemu`] boots VMs itself; [`External`] stands
//! for a host castrad only reaches over SSH and never starts or stops; [`libvirt::Libvirt`]
//! has libvirt run them, here or on a hypervisor reached over SSH.
//!
//! A trait, not an enum: the set of backends is open, each is a file (or folder) of its own with no `match` on the others,
//! and the actor's unit tests plug a fake one in. A running machine is a [`Machine`] the actor
//! holds; its end is noticed through [`Machine::exited`]. Calls are few per VM lifecycle, so
//! the boxed futures that keep the trait object-safe cost nothing measurable. Stopping is the
//! machine's own method ([`Machine::stop`]): only the backend that made it knows how.

mod external;
pub mod libvirt;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use external::External;

use crate::config::{BackendKind, Vm};
use futures::future::BoxFuture;

use crate::ssh::Endpoint;
use crate::state_root::StateRoot;
use crate::vm::state::{MachineInfo, State};

/// Where the SSH server of a VM castrad launched answers: the config's host (this machine's
/// loopback, or a libvirt hypervisor's) at the port forwarded when the machine started. None
/// while it does not run.
pub fn forwarded_endpoint(vm: &Vm, machine: Option<&MachineInfo>) -> Option<Endpoint> {
    Some(Endpoint {
        host: vm.ssh.host.clone()?,
        port: machine?.ssh_port,
    })
}

/// What a backend may use to make a VM's disk.
pub struct DiskInputs<'a> {
    /// The user's image store.
    pub images: &'a std::sync::Arc<crate::images::Store>,
    /// The castra.toml the VM comes from (named in the store's ref to the disk).
    pub config: &'a Path,
    /// Told how a download or import of the base image goes.
    pub progress: &'a mut (dyn FnMut(&crate::images::Progress) + Send),
}

impl std::fmt::Debug for DiskInputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskInputs")
            .field("images", &self.images.dir())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How one VM is provided.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Whether castrad starts and stops VMs of this backend. Those it does not are taken to
    /// be running ([`Backend::resting_state`]) and are only ever bootstrapped.
    fn owns_lifecycle(&self) -> bool;

    /// The state of a VM castrad has no running machine for.
    fn resting_state(&self) -> State {
        if self.owns_lifecycle() {
            State::Stopped
        } else {
            State::Running
        }
    }

    /// Where the guest's SSH server answers: on the running machine, or where the config says.
    /// None: nowhere yet (a VM castrad has not started).
    fn ssh_endpoint(&self, vm: &Vm, machine: Option<&MachineInfo>) -> Option<Endpoint>;

    /// The identity of the disk the VM has now, if castrad has seen one: a stamp proves
    /// something only about this disk.
    fn disk_id(&self, root: &StateRoot, vm: &str) -> Option<String> {
        crate::stamps::disk_id(root, vm)
    }

    /// Checks, before anything starts, that `vms` (which would be started, each with its
    /// project's state root) can be: what they need is installed, the host ports they forward
    /// are free, the base image of a disk still to be made is usable.
    fn preflight(&self, root: &StateRoot, vms: &[&Vm]) -> Result<(), PreflightError>;

    /// Makes sure the VM has a disk; returns its path when it was just made (a new disk: what
    /// was proven about the old one is gone with it). A base image still to be fetched or
    /// imported comes from `inputs.images`, its progress told to `inputs.progress`.
    fn prepare_disk<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a Vm,
        inputs: DiskInputs<'a>,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, BackendError>>;

    /// Starts the VM on its disk; `config` is the castra.toml it comes from (recorded, so a
    /// restarted castrad can find its project again).
    fn launch<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a Vm,
        config: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>, BackendError>>;

    /// The VMs under `root` this backend may have left running, with the castra.toml each
    /// came from: what a starting castrad tries to adopt.
    fn running_records(&self, root: &StateRoot) -> Vec<(String, PathBuf)>;

    /// The project's VMs as its castra.toml has them, each time castrad loads it: a backend
    /// whose machines live elsewhere learns where to look for them without a file of its
    /// own. The VMs it cannot rule out running although no record here says so: what castrad
    /// tries to adopt when it first loads the project.
    fn configured(&self, _root: &StateRoot, _project: &crate::config::Project) -> Vec<String> {
        Vec::new()
    }

    /// Finds the VM's machine a previous castrad (or a crashed actor) left running, also one
    /// that does not answer (its [`MachineInfo::unresponsive`] says why). Only a record of a
    /// machine that is gone is forgotten.
    fn adopt<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a str,
    ) -> BoxFuture<'a, Option<Box<dyn Machine>>>;

    /// Forgets a machine that is no longer running (its runtime files).
    fn forget(&self, root: &StateRoot, vm: &str);

    /// Deletes the VM's disk and what was proven about it; the disk's path and the bytes
    /// reclaimed, or None when there was no disk. Refused while a machine still runs on it.
    fn discard(&self, root: &StateRoot, vm: &str) -> Result<Option<(PathBuf, u64)>, BackendError>;
}

/// A running VM as its backend knows it.
pub trait Machine: Send + Sync + std::fmt::Debug {
    fn info(&self) -> MachineInfo;

    /// True while it is the machine that was launched (or adopted) and has not exited.
    fn alive(&mut self) -> bool;

    /// Resolves when the machine has exited.
    fn exited(&mut self) -> BoxFuture<'_, ()>;

    /// Stops it: cooperatively first, then by force; `report` sees each step.
    fn stop<'a>(
        self: Box<Self>,
        plan: StopPlan,
        report: &'a mut (dyn FnMut(StopStep) + Send),
    ) -> BoxFuture<'a, Stopped>;
}

/// How long each stage of a stop may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// For the guest to power off after the cooperative request (ACPI power button).
    pub graceful: Duration,
    /// For the machine to exit after the first forceful step (SIGTERM).
    pub term: Duration,
}

/// When a wait of `limit` that starts at `now` is over; None: never. A limit comes from the
/// wire (`castra.down`'s `graceful_timeout_secs` is any u64) and `now + limit` past what an
/// `Instant` holds would panic: every deadline castrad computes from one goes through here.
pub fn deadline(now: std::time::Instant, limit: Duration) -> Option<std::time::Instant> {
    now.checked_add(limit)
}

/// `d` in whole milliseconds for an event, u64::MAX for what does not fit.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Graceful,
    Terminated,
    Killed,
    /// Still running after the last signal (e.g. stuck in the kernel): nothing about it may
    /// be forgotten or deleted yet.
    Survived,
}

/// A step of the stop sequence, for events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    CooperativeAttempted {
        timeout: Duration,
    },
    CooperativeSucceeded {
        elapsed: Duration,
    },
    CooperativeTimedOut {
        waited: Duration,
        reason: String,
    },
    Escalated {
        signal: &'static str,
        timeout: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Qemu(#[from] qemu::process::ProcessError),
    #[error(transparent)]
    Mounts(#[from] qemu::mounts::MountError),
    #[error("a QEMU VM needs base_image")]
    NoBaseImage,
    #[error("stopped: {0}")]
    Cancelled(String),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    #[error("vm {vm}: {source}")]
    BaseImage {
        vm: String,
        source: crate::image::ImageError,
    },
    #[error(transparent)]
    BaseChanged(#[from] crate::images::disk::BaseChanged),
    #[error(transparent)]
    Accelerator(#[from] qemu::accel::KvmUnusable),
    #[error("no free loopback port for SSH")]
    NoFreePort(#[source] std::io::Error),
    #[error("castrad does not start or stop {0} VMs")]
    NotOwned(BackendKind),
    #[error(transparent)]
    Key(#[from] crate::ssh::keys::KeyError),
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("firmware = \"uefi\" needs OVMF ({code}, {vars}): apt-get install ovmf")]
    NoFirmware {
        code: &'static str,
        vars: &'static str,
    },
}

/// A base image file a new disk is to be made from (imported into the image store then):
/// there, and a self-contained raw or qcow2 image (`crate::image::base`).
pub fn check_base_file(vm: &str, base: &Path) -> Result<(), PreflightError> {
    if let Err(e) = std::fs::metadata(base) {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "it does not exist".to_owned(),
            _ => e.to_string(),
        };
        return Err(PreflightError::BaseUnreadable {
            vm: vm.to_owned(),
            path: base.to_owned(),
            reason: format!(
                "{reason}{}",
                crate::config::catalog_hint_for(base).unwrap_or_default()
            ),
        });
    }
    crate::image::base(base)?;
    Ok(())
}

impl BackendError {
    /// The `VmOutcome::error_kind` of a start that failed so: `image-mismatch` when the base
    /// image's content was not what its checksum says.
    pub fn kind(&self) -> Option<&'static str> {
        matches!(
            self,
            BackendError::Image(crate::images::ImageError::Mismatch { .. })
        )
        .then_some("image-mismatch")
    }
}

/// Why VMs cannot start; nothing was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    BaseImage(#[from] crate::image::ImageError),
    #[error(transparent)]
    BaseChanged(#[from] crate::images::disk::BaseChanged),
    #[error(
        "vm {vm}: base_image {} cannot be used: {reason} (castrad copies it into the image \
         store when it makes the VM's disk)",
        path.display()
    )]
    BaseUnreadable {
        vm: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{program} is not installed (Debian: apt-get install {packages})")]
    NotInstalled {
        program: &'static str,
        packages: &'static str,
    },
    #[error(
        "vm {vm}: host port {port} ({key}) is already in use on 127.0.0.1; free it or change \
         the port in castra.toml"
    )]
    PortInUse {
        vm: String,
        port: u16,
        key: &'static str,
    },
    #[error("vm {vm}: hypervisor {hypervisor} ({uri}): {message}")]
    Hypervisor {
        vm: String,
        hypervisor: String,
        uri: String,
        message: String,
    },
}

/// The backends of one castrad, one of each kind.
#[derive(Debug, Clone)]
pub struct Backends {
    pub qemu: std::sync::Arc<qemu::Qemu>,
    pub external: std::sync::Arc<External>,
    pub libvirt: std::sync::Arc<libvirt::Libvirt>,
}

impl Backends {
    /// `control_dir`: castrad's private directory of ssh control sockets; `state_base` its
    /// state directory.
    pub fn new(
        accel_override: Option<crate::config::AccelSetting>,
        control_dir: &Path,
        state_base: &Path,
    ) -> Backends {
        Backends {
            qemu: std::sync::Arc::new(qemu::Qemu { accel_override }),
            external: std::sync::Arc::new(External),
            libvirt: std::sync::Arc::new(libvirt::Libvirt {
                accel_override,
                control_dir: control_dir.to_owned(),
                own_pool_dir: crate::state_root::libvirt_pool_dir(state_base),
                configured: Default::default(),
            }),
        }
    }

    pub fn get(&self, kind: BackendKind) -> std::sync::Arc<dyn Backend> {
        match kind {
            BackendKind::Qemu => self.qemu.clone(),
            BackendKind::External => self.external.clone(),
            BackendKind::Libvirt => self.libvirt.clone(),
        }
    }

    /// Every backend, for what concerns them all (re-adoption at start).
    pub fn all(&self) -> [std::sync::Arc<dyn Backend>; 3] {
        [
            self.qemu.clone(),
            self.external.clone(),
            self.libvirt.clone(),
        ]
    }
}
