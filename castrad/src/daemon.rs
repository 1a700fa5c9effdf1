//! Daemon wiring: the shared state every RPC method sees, and the run/shutdown sequence.
//!
//! [`Daemon`] is the registry of projects castrad knows (loaded by `plan` or `status`). It is
//! behind a plain mutex that is only held to copy or insert entries, never across IO or an
//! await, so `status` can never wait on a long operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use crate::backend::{Backend, Backends, Machine, PreflightError};
use crate::config::BackendKind;
use crate::config::{self, ConfigError, Project};
use crate::events::EventBus;
use crate::operations::{Operation, Operations};
use crate::overrides::OverrideError;
use crate::pipeline;
use crate::planner::{self, PlanError, VmPlan};
use crate::state_root::StateRoot;
use crate::vm::state::VmSnapshot;
use crate::vm::{ActorCtx, DownRequest, StopReport, VmHandle};

mod images;
mod restart;

/// Everything castrad needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub state_base: PathBuf,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// `--accel`: beats every VM's `accel` in castra.toml.
    pub accel_override: Option<crate::config::AccelSetting>,
    /// `--max-parallel`: how many VMs may start or bootstrap at once (`pipeline::slots`).
    pub max_parallel: u32,
    /// `--image-store`: the user's image store (`crate::images`).
    pub image_store: PathBuf,
    /// `--image-mirror`: where catalog images are fetched from instead of their
    /// distribution's servers.
    pub image_mirror: Option<String>,
    /// `--user-config`: the user's own settings (`config::UserConfig`), read at every load.
    pub user_config: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The params did not have the documented shape (jsonrpsee's message).
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("invalid params: config must be an absolute path, got {}", .0.display())]
    RelativeConfig(PathBuf),
    #[error("invalid params: run id prefix {0} is ambiguous")]
    AmbiguousRun(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Overrides(#[from] OverrideError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("unknown VM {vm:?}; known VMs: {}", known.join(", "))]
    UnknownVm { vm: String, known: Vec<String> },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no operation {0} (it may have been forgotten)")]
    NoOperation(String),
    #[error("no run {run} for VM {vm}")]
    NoSuchRun { vm: String, run: String },
    #[error(
        "vm {vm}: disk = {want_mib} MiB is smaller than its disk ({have_mib} MiB) and a disk \
         never shrinks: set disk to at least {have_mib} MiB, or discard the disk \
         (`castractl down --discard {vm}`); nothing was stopped"
    )]
    DiskShrinks {
        vm: String,
        want_mib: u64,
        have_mib: u64,
    },
    #[error("vm {0} is not running, so it has no SSH endpoint; start it with `castractl up`")]
    NotRunning(String),
    #[error("cannot read the logs of {vm}: {source}")]
    Logs { vm: String, source: std::io::Error },
    #[error("vm {vm} is an {backend} VM: castrad has no console for it (only QEMU VMs have one)")]
    NoConsole { vm: String, backend: BackendKind },
    #[error("cannot read the serial log of {vm}, {}: {source}", path.display())]
    Console {
        vm: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The image store refused or failed (`castra.image*`).
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    /// A VM's base image could not be put in the store.
    #[error("vm {vm}: {source}")]
    VmImage {
        vm: String,
        source: crate::images::ImageError,
    },
    #[error(
        "vm {vm} has no image in the image store to pull: {why}; pull another VM's, or name \
         none to pull every image of the project"
    )]
    NoStoreImage { vm: String, why: &'static str },
    #[error("vm {vm}: cannot move its disk onto the image store: {why}")]
    CannotAdopt { vm: String, why: String },
    /// A task castrad ran on the blocking pool panicked (a bug).
    #[error("{what} panicked: {detail}")]
    Panicked { what: &'static str, detail: String },
}

/// A project the daemon has loaded.
#[derive(Debug, Clone)]
pub struct ProjectEntry {
    pub project: Arc<Project>,
    pub root: StateRoot,
}

#[derive(Debug)]
pub struct Daemon {
    pub settings: Settings,
    pub started: Instant,
    pub bus: EventBus,
    pub operations: Operations,
    /// Tasks that must finish (or be cancelled) before the process exits: VM actors.
    pub tasks: TaskTracker,
    /// One backend of each kind.
    backends: Backends,
    projects: Mutex<BTreeMap<PathBuf, ProjectEntry>>,
    /// VM actors by (state root, VM name).
    vms: Mutex<BTreeMap<(PathBuf, String), VmHandle>>,
    /// How many VMs may start or bootstrap at once, shared by every VM's runs.
    pub slots: pipeline::Slots,
    /// The user's image store, shared by every project and VM.
    pub images: Arc<crate::images::Store>,
    base_bytes_hashed: AtomicU64,
}

impl Daemon {
    pub fn new(settings: Settings) -> Arc<Daemon> {
        let backends = Backends::new(
            settings.accel_override,
            &crate::state_root::control_dir(&settings.socket),
            &settings.state_base,
        );
        let slots = pipeline::Slots::new(settings.max_parallel);
        let images = Arc::new(crate::images::Store::new(
            settings.image_store.clone(),
            settings.image_mirror.clone(),
        ));
        Arc::new(Daemon {
            settings,
            started: Instant::now(),
            bus: EventBus::default(),
            operations: Operations::default(),
            tasks: TaskTracker::new(),
            backends,
            projects: Mutex::new(BTreeMap::new()),
            vms: Mutex::new(BTreeMap::new()),
            slots,
            images,
            base_bytes_hashed: AtomicU64::new(0),
        })
    }

    /// Where ControlMaster sockets live: beside castrad's socket (short, private paths).
    pub fn control_dir(&self) -> PathBuf {
        crate::state_root::control_dir(&self.settings.socket)
    }

    /// The backend of VMs of `kind`.
    pub fn backend(&self, kind: BackendKind) -> Arc<dyn Backend> {
        self.backends.get(kind)
    }

    /// The actor of `vm` in the project at `root`, spawned on first use.
    pub fn vm_handle(&self, root: &StateRoot, vm: &str, kind: BackendKind) -> VmHandle {
        self.spawn_handle(root, vm, kind, None)
    }

    fn spawn_handle(
        &self,
        root: &StateRoot,
        vm: &str,
        kind: BackendKind,
        adopted: Option<Box<dyn Machine>>,
    ) -> VmHandle {
        let key = (root.path().to_owned(), vm.to_owned());
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        vms.entry(key)
            .or_insert_with(|| {
                let backend = self.backend(kind);
                let snapshot = VmSnapshot {
                    state: backend.resting_state(),
                    ..VmSnapshot::default()
                };
                let ctx = ActorCtx {
                    pipeline: pipeline::Ctx {
                        bus: self.bus.clone(),
                        root: root.clone(),
                        control_dir: self.control_dir(),
                        snapshot: Arc::new(tokio::sync::watch::channel(snapshot).0),
                        remote: Arc::new(pipeline::OpenSsh),
                        slots: self.slots.clone(),
                        images: self.images.clone(),
                    },
                    backend,
                };
                crate::vm::spawn(vm, ctx, adopted, &self.tasks)
            })
            .clone()
    }

    /// The actor of `vm` if it exists; never spawns.
    pub fn existing_vm_handle(&self, root: &StateRoot, vm: &str) -> Option<VmHandle> {
        let vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        vms.get(&(root.path().to_owned(), vm.to_owned())).cloned()
    }

    /// Finds QEMU VMs left running by a previous castrad and gives each an actor again, also
    /// one whose QEMU does not answer (reported `unresponsive`). A VM whose QEMU died
    /// meanwhile has its launch record removed: it is reported stopped.
    pub async fn adopt_running_vms(&self) {
        for root in crate::state_root::all_projects(&self.settings.state_base) {
            for backend in self.backends.all() {
                for (vm, config) in backend.running_records(&root) {
                    let entry = match self.load_project(&config).await {
                        Ok(entry) => entry,
                        Err(e) => {
                            tracing::warn!(vm, error = %e, "a VM is running but its project does not load");
                            continue;
                        }
                    };
                    // Loading the project may have adopted it already (`configured`).
                    if self.existing_vm_handle(&entry.root, &vm).is_some() {
                        continue;
                    }
                    // Adopted whether it answers or not (the actor announces which); only a
                    // machine that is gone has its records forgotten.
                    match backend.adopt(&entry.root, &vm).await {
                        Some(machine) => {
                            self.spawn_handle(&entry.root, &vm, backend.kind(), Some(machine));
                        }
                        None => tracing::info!(vm, "VM stopped while castrad was away"),
                    }
                }
            }
        }
    }

    /// Starts bootstrapping the named VMs of the project (all by default; QEMU VMs are
    /// started first); returns as soon as each actor has accepted (or refused, when busy) its
    /// VM. Preflight errors (an unknown name among them) are returned before anything is
    /// started. A VM already running is left as it is: its drift is reported, not applied.
    pub async fn up(
        &self,
        config_path: &Path,
        overrides: &[String],
        names: &[String],
    ) -> Result<castra_api::UpResult, DaemonError> {
        let entry = self.load_project(config_path).await?;
        let overrides = planner::preflight(&entry.project, overrides)?;
        let vms = selected(&entry.project, names)?;
        self.preflight_starts(&entry, &vms)?;
        let drift = self.drift(&entry, &vms);
        let operation = crate::ids::operation_id();
        let vms = self
            .start_operation(&entry, &overrides, &vms, &operation)
            .await;
        Ok(castra_api::UpResult {
            operation,
            project: entry.project.name.clone(),
            vms,
            drift,
        })
    }

    /// What each of `vms` that runs was launched with and castra.toml now sets otherwise.
    fn drift(&self, entry: &ProjectEntry, vms: &[&crate::config::Vm]) -> Vec<castra_api::Drift> {
        vms.iter()
            .flat_map(|vm| {
                let running = self
                    .existing_vm_handle(&entry.root, &vm.name)
                    .and_then(|h| h.snapshot().machine)
                    .and_then(|m| m.settings);
                crate::drift::of_running(vm, running.as_ref())
            })
            .collect()
    }

    /// Hands each of `vms` its job of `operation` (its actor starts it if it must, then
    /// bootstraps it) and registers the operation for `castra.outcome`; its VMs' names.
    async fn start_operation(
        &self,
        entry: &ProjectEntry,
        overrides: &crate::overrides::Overrides,
        vms: &[&crate::config::Vm],
        operation: &str,
    ) -> Vec<String> {
        let operation = operation.to_owned();
        let mut cross = planner::cross_vm_warnings(&entry.project);
        let mut receivers = Vec::with_capacity(vms.len());
        for vm in vms {
            let (tx, rx) = tokio::sync::watch::channel(None);
            let job = pipeline::Job {
                vm: Arc::new((*vm).clone()),
                mode: overrides.resolve(&vm.name, vm.bootstrap.mode),
                extra_warnings: cross.remove(&vm.name).unwrap_or_default(),
                operation: operation.clone(),
                config: entry.project.config_path.clone(),
                endpoint: None,
                booting: false,
                cancel: pipeline::Cancel::none(),
            };
            let handle = self.vm_handle(&entry.root, &vm.name, vm.backend);
            if let Err(busy) = handle.up(job, tx.clone()).await {
                tracing::info!(vm = vm.name, %busy, "rejected");
                // Its terminal event first: whoever waits on the outcome may then rely on it.
                let rejected = crate::vm::rejected(&busy);
                self.bus
                    .publish(Some(&operation), crate::vm::rejected_event(&rejected));
                let _ = tx.send(Some(rejected));
            }
            receivers.push(rx);
        }
        let names: Vec<String> = vms.iter().map(|vm| vm.name.clone()).collect();
        self.operations.insert(Operation::new(
            operation,
            entry.project.name.clone(),
            names.clone(),
            receivers,
        ));
        names
    }

    /// Those of `vms` that would start (their backend starts them and none runs now) must be
    /// able to: each backend checks its own. Nothing is started when this fails.
    fn preflight_starts(
        &self,
        entry: &ProjectEntry,
        vms: &[&crate::config::Vm],
    ) -> Result<(), DaemonError> {
        for kind in [
            BackendKind::Qemu,
            BackendKind::External,
            BackendKind::Libvirt,
        ] {
            let backend = self.backend(kind);
            if !backend.owns_lifecycle() {
                continue;
            }
            let starting: Vec<&crate::config::Vm> = vms
                .iter()
                .copied()
                .filter(|vm| vm.backend == kind)
                .filter(|vm| {
                    self.existing_vm_handle(&entry.root, &vm.name)
                        .is_none_or(|h| h.snapshot().machine.is_none())
                })
                .collect();
            backend.preflight(&entry.root, &starting)?;
        }
        Ok(())
    }

    /// Stops the named VMs (all by default) of a project, concurrently; waits for all.
    pub async fn down(
        &self,
        config_path: &Path,
        names: &[String],
        discard: bool,
        graceful: Duration,
    ) -> Result<castra_api::DownResult, DaemonError> {
        let entry = self.load_project(config_path).await?;
        let operation = crate::ids::operation_id();
        let vms = selected(&entry.project, names)?;
        let discard = |vm: &crate::config::Vm| discard || vm.ephemeral;
        let reports = self
            .stop_vms(&entry, &vms, &operation, &discard, graceful)
            .await;
        Ok(castra_api::DownResult {
            operation,
            project: entry.project.name.clone(),
            vms: reports,
        })
    }

    /// Stops `vms` concurrently under `operation` and waits for all; the disk of each VM
    /// `discard` says yes to is deleted too.
    async fn stop_vms(
        &self,
        entry: &ProjectEntry,
        vms: &[&crate::config::Vm],
        operation: &str,
        discard: &(dyn Fn(&crate::config::Vm) -> bool + Sync),
        graceful: Duration,
    ) -> Vec<castra_api::VmDown> {
        let stops = vms.iter().map(|vm| {
            let handle = self.vm_handle(&entry.root, &vm.name, vm.backend);
            let request = DownRequest {
                operation: operation.to_owned(),
                discard: discard(vm),
                graceful,
                term: Duration::from_secs(10),
            };
            let name = vm.name.clone();
            async move {
                match handle.down(&name, request).await {
                    Ok(report) => report,
                    Err(busy) => StopReport {
                        vm: name,
                        outcome: castra_api::StopOutcome::Rejected,
                        total_ms: 0,
                        discarded: false,
                        error: Some(busy.to_string()),
                    },
                }
            }
        });
        let reports = futures::future::join_all(stops).await;
        reports
            .into_iter()
            .map(|r| castra_api::VmDown {
                vm: r.vm,
                outcome: r.outcome,
                total_ms: r.total_ms,
                discarded: r.discarded,
                error: r.error,
            })
            .collect()
    }

    /// Asks the runs in flight on the named VMs (all by default) to stop. Answers at once;
    /// each run then ends `Failed` ("cancelled"), as `castra.outcome` and the events say.
    pub async fn cancel(
        &self,
        config_path: &Path,
        names: &[String],
    ) -> Result<castra_api::CancelResult, DaemonError> {
        let entry = self.load_project(config_path).await?;
        let mut vms = Vec::new();
        for vm in selected(&entry.project, names)? {
            let operation = match self.existing_vm_handle(&entry.root, &vm.name) {
                Some(handle) => handle.cancel("cancelled".to_owned()).await,
                None => None,
            };
            vms.push(castra_api::VmCancel {
                vm: vm.name.clone(),
                operation,
            });
        }
        Ok(castra_api::CancelResult {
            project: entry.project.name.clone(),
            vms,
        })
    }

    /// Stops the VM actors: closing their mailboxes ends them; runs in progress are abandoned
    /// (recorded as failed, the guest left as it is, no stamp). Waits for them up to the
    /// shutdown grace. QEMU VMs keep running for the next castrad to re-adopt.
    pub async fn shutdown(&self) {
        self.vms.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.tasks.close();
        let grace = self.settings.shutdown_grace;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("bootstrap runs still in progress at shutdown were abandoned");
        }
    }

    /// How to reach the named VMs (all reachable ones by default) with OpenSSH as castrad
    /// does. A named VM that castrad cannot reach now (a QEMU VM that is not running) is an
    /// error; unnamed ones are left out.
    pub async fn ssh_config(
        &self,
        config_path: &Path,
        names: &[String],
    ) -> Result<castra_api::SshConfigResult, DaemonError> {
        let entry = self.project(config_path).await?;
        selected(&entry.project, names)?;
        let mut hosts = Vec::new();
        for vm in &entry.project.vms {
            let named = names.contains(&vm.name);
            if !names.is_empty() && !named {
                continue;
            }
            let machine = self
                .existing_vm_handle(&entry.root, &vm.name)
                .and_then(|h| h.snapshot().machine);
            let Some(endpoint) = self.backend(vm.backend).ssh_endpoint(vm, machine.as_ref()) else {
                if named {
                    return Err(DaemonError::NotRunning(vm.name.clone()));
                }
                continue;
            };
            // Only its directory is used: a libvirt VM's hop shares castrad's master there.
            let control_path = crate::ssh::control_path(&self.control_dir(), "ssh-config");
            let hop = crate::ssh::hop_of(vm, &control_path).map(|h| h.wire());
            let target = crate::ssh::Target::for_vm(
                vm,
                &endpoint,
                &entry.root,
                control_path,
                Duration::from_secs(10),
            );
            let alias = format!("castra-{}-{}", entry.project.name, vm.name);
            hosts.push(castra_api::SshHost {
                vm: vm.name.clone(),
                config: target.config_block(&alias),
                alias,
                host_name: target.host.clone(),
                port: target.port,
                user: target.user.clone(),
                identity_file: target.identity.clone(),
                known_hosts: target.known_hosts.clone(),
                host_key_alias: crate::ssh::host_key_alias(&vm.name),
                options: target.options.clone(),
                proxy_command: target.proxy.clone(),
                hop,
            });
        }
        Ok(castra_api::SshConfigResult {
            project: entry.project.name.clone(),
            hosts,
        })
    }

    pub fn base_bytes_hashed(&self) -> u64 {
        self.base_bytes_hashed.load(Ordering::Relaxed)
    }

    /// Loads (or reloads) the project at `config_path` and registers it.
    pub async fn load_project(&self, config_path: &Path) -> Result<ProjectEntry, DaemonError> {
        if !config_path.is_absolute() {
            return Err(DaemonError::RelativeConfig(config_path.to_owned()));
        }
        let path = config_path.to_owned();
        let boundary = self.boundary();
        let project = tokio::task::spawn_blocking(move || config::load_confined(&path, &boundary?))
            .await
            .map_err(|e| DaemonError::Panicked {
                what: "config loader",
                detail: e.to_string(),
            })??;
        let root = StateRoot::for_project(
            &self.settings.state_base,
            &project.name,
            &project.config_path,
        );
        let entry = ProjectEntry {
            project: Arc::new(project),
            root,
        };
        let look: Vec<_> = self
            .backends
            .all()
            .into_iter()
            .flat_map(|b| {
                let vms = b.configured(&entry.root, &entry.project);
                vms.into_iter().map(move |vm| (b.clone(), vm))
            })
            .collect();
        let first = self
            .lock()
            .insert(entry.project.config_path.clone(), entry.clone())
            .is_none();
        if first {
            self.adopt_configured(&entry, look).await;
        }
        Ok(entry)
    }

    /// Where projects end (`config::reach`): the user's home and config, and castrad's own
    /// directories. The user config is read now, so an edit counts at the next load.
    fn boundary(&self) -> Result<config::Boundary, config::ConfigError> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let user = config::UserConfig::load(&self.settings.user_config, home.as_deref())?;
        let run = self.settings.socket.parent().unwrap_or(Path::new("/"));
        let guarded = [
            self.settings.state_base.as_path(),
            self.settings.image_store.as_path(),
        ];
        Ok(config::Boundary::new(
            home.as_deref(),
            &guarded,
            &[run],
            user,
        ))
    }

    /// Machines of a project castrad loads for the first time that run although castrad has
    /// no record of them (a libvirt domain whose `libvirt.json` is gone): found where
    /// castra.toml says they live, and given an actor, as at castrad's start.
    async fn adopt_configured(&self, entry: &ProjectEntry, look: Vec<(Arc<dyn Backend>, String)>) {
        for (backend, vm) in look {
            if self.existing_vm_handle(&entry.root, &vm).is_some() {
                continue;
            }
            if let Some(machine) = backend.adopt(&entry.root, &vm).await {
                tracing::info!(vm, "VM found running from castra.toml's settings");
                self.spawn_handle(&entry.root, &vm, backend.kind(), Some(machine));
            }
        }
    }

    /// The registered project at `config_path`, loading it only if unknown: `status` answers
    /// from memory.
    pub async fn project(&self, config_path: &Path) -> Result<ProjectEntry, DaemonError> {
        let known = self
            .lock()
            .values()
            .find(|e| e.project.config_path == config_path)
            .cloned();
        match known {
            Some(entry) => Ok(entry),
            None => self.load_project(config_path).await,
        }
    }

    pub fn projects(&self) -> Vec<ProjectEntry> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, ProjectEntry>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts),
        // so a poisoned lock is still usable.
        self.projects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans every VM of the project at `config_path` under `overrides`.
    ///
    /// Preflight (config validity, override grammar, VM names) happens before any IO that
    /// could write: a rejected request leaves the disk untouched.
    pub async fn plan(
        &self,
        config_path: &Path,
        overrides: &[String],
    ) -> Result<(ProjectEntry, Vec<VmPlan>), DaemonError> {
        let entry = self.load_project(config_path).await?;
        let overrides = planner::preflight(&entry.project, overrides)?;
        let (project, root) = (entry.project.clone(), entry.root.clone());
        let seen: BTreeMap<String, planner::Seen> = project
            .vms
            .iter()
            .filter_map(|vm| {
                let snapshot = self.existing_vm_handle(&root, &vm.name)?.snapshot();
                let seen = planner::Seen {
                    vizier: snapshot.vizier,
                    running: snapshot.machine.and_then(|m| m.settings),
                };
                Some((vm.name.clone(), seen))
            })
            .collect();
        let store = self.images.clone();
        let (plans, bytes) = tokio::task::spawn_blocking(move || {
            planner::plan_project(&project, &root, &store, &overrides, &seen)
        })
        .await
        .map_err(|e| DaemonError::Panicked {
            what: "planner",
            detail: e.to_string(),
        })??;
        self.base_bytes_hashed.fetch_add(bytes, Ordering::Relaxed);
        Ok((entry, plans))
    }
}

/// The VMs of `project` that `names` selects, in file order: all of them when `names` is
/// empty. An unknown name is an error that lists the known ones.
pub(crate) fn selected<'a>(
    project: &'a crate::config::Project,
    names: &[String],
) -> Result<Vec<&'a crate::config::Vm>, DaemonError> {
    let known = project.vm_names();
    if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(DaemonError::UnknownVm {
            vm: unknown.clone(),
            known: known.iter().map(|s| (*s).to_owned()).collect(),
        });
    }
    let vms = project.vms.iter();
    Ok(vms
        .filter(|vm| names.is_empty() || names.contains(&vm.name))
        .collect())
}
