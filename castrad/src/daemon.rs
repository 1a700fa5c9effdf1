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

use crate::config::{self, ConfigError, Project};
use crate::config::{Backend, Protocol};
use crate::events::EventBus;
use crate::operations::{Operation, Operations};
use crate::overrides::OverrideError;
use crate::pipeline;
use crate::planner::{self, PlanError, VmPlan};
use crate::qemu::process::QemuProcess;
use crate::state_root::StateRoot;
use crate::vm::{ActorCtx, DownRequest, State, StopReport, VmHandle, VmSnapshot};

/// Everything castrad needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub state_base: PathBuf,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// `--accel`: beats every VM's `accel` in castra.toml.
    pub accel_override: Option<crate::config::AccelSetting>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Overrides(#[from] OverrideError),
    #[error("{0}")]
    Preflight(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
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
    projects: Mutex<BTreeMap<PathBuf, ProjectEntry>>,
    /// VM actors by (state root, VM name).
    vms: Mutex<BTreeMap<(PathBuf, String), VmHandle>>,
    base_bytes_hashed: AtomicU64,
}

impl Daemon {
    pub fn new(settings: Settings) -> Arc<Daemon> {
        Arc::new(Daemon {
            settings,
            started: Instant::now(),
            bus: EventBus::default(),
            operations: Operations::default(),
            tasks: TaskTracker::new(),
            projects: Mutex::new(BTreeMap::new()),
            vms: Mutex::new(BTreeMap::new()),
            base_bytes_hashed: AtomicU64::new(0),
        })
    }

    /// Where ControlMaster sockets live: beside castrad's socket (short, private paths).
    pub fn control_dir(&self) -> PathBuf {
        self.settings
            .socket
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join("ssh")
    }

    /// The actor of `vm` in the project at `root`, spawned on first use.
    pub fn vm_handle(&self, root: &StateRoot, vm: &str, backend: Backend) -> VmHandle {
        self.spawn_handle(root, vm, backend, None)
    }

    fn spawn_handle(
        &self,
        root: &StateRoot,
        vm: &str,
        backend: Backend,
        adopted: Option<QemuProcess>,
    ) -> VmHandle {
        let key = (root.path().to_owned(), vm.to_owned());
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        vms.entry(key)
            .or_insert_with(|| {
                // External hosts are taken to be up: castrad only ever bootstraps them.
                let state = match backend {
                    Backend::External => State::Running,
                    Backend::Qemu => State::Stopped,
                };
                let snapshot = VmSnapshot {
                    state,
                    ..VmSnapshot::default()
                };
                let ctx = ActorCtx {
                    pipeline: pipeline::Ctx {
                        bus: self.bus.clone(),
                        root: root.clone(),
                        control_dir: self.control_dir(),
                        snapshot: Arc::new(tokio::sync::watch::channel(snapshot).0),
                        remote: Arc::new(pipeline::OpenSsh),
                    },
                    accel_override: self.settings.accel_override,
                };
                VmHandle::spawn(vm, ctx, adopted, &self.tasks)
            })
            .clone()
    }

    /// The actor of `vm` if it exists; never spawns.
    pub fn existing_vm_handle(&self, root: &StateRoot, vm: &str) -> Option<VmHandle> {
        let vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        vms.get(&(root.path().to_owned(), vm.to_owned())).cloned()
    }

    /// Finds QEMU VMs left running by a previous castrad and gives each an actor again.
    /// A VM whose QEMU died meanwhile has its launch record removed: it is reported stopped.
    pub async fn adopt_running_vms(&self) {
        for root in crate::state_root::all_projects(&self.settings.state_base) {
            for vm in root.vm_names() {
                let paths = root.vm(&vm);
                let Some(record) = crate::qemu::process::read_record(&paths) else {
                    continue;
                };
                let entry = match self.load_project(&record.config).await {
                    Ok(entry) => entry,
                    Err(e) => {
                        tracing::warn!(vm, error = %e, "a VM is running but its project does not load");
                        continue;
                    }
                };
                match crate::qemu::process::adopt(&entry.root.vm(&vm)).await {
                    Some(q) => {
                        tracing::info!(vm, pid = q.pid(), "re-adopted a running VM");
                        self.bus.publish(
                            None,
                            castra_api::Event::VmAdopted {
                                vm: vm.clone(),
                                pid: q.pid(),
                                ssh_port: q.record.ssh_port,
                            },
                        );
                        self.spawn_handle(&entry.root, &vm, Backend::Qemu, Some(q));
                    }
                    None => tracing::info!(vm, "VM stopped while castrad was away"),
                }
            }
        }
    }

    /// Starts bootstrapping every VM of the project (starting QEMU VMs first); returns as soon
    /// as each actor has accepted (or refused, when busy) its VM. Preflight errors are
    /// returned before anything is started.
    pub async fn up(
        &self,
        config_path: &Path,
        overrides: &[String],
    ) -> Result<castra_api::UpResult, DaemonError> {
        let entry = self.load_project(config_path).await?;
        let overrides = planner::preflight(&entry.project, overrides)?;
        self.preflight_qemu(&entry)?;
        let mut cross = planner::cross_vm_warnings(&entry.project);
        let operation = crate::ids::operation_id();
        let mut receivers = Vec::with_capacity(entry.project.vms.len());
        for vm in &entry.project.vms {
            let (tx, rx) = tokio::sync::watch::channel(None);
            let job = pipeline::Job {
                vm: Arc::new(vm.clone()),
                mode: overrides.resolve(&vm.name, vm.bootstrap.mode),
                extra_warnings: cross.remove(&vm.name).unwrap_or_default(),
                operation: operation.clone(),
                config: entry.project.config_path.clone(),
                ssh_port: None,
                booting: false,
            };
            let handle = self.vm_handle(&entry.root, &vm.name, vm.backend);
            if let Err(busy) = handle.up(job, tx.clone()).await {
                tracing::info!(vm = vm.name, %busy, "rejected");
                let _ = tx.send(Some(crate::vm::rejected(&busy)));
            }
            receivers.push(rx);
        }
        let vms: Vec<String> = entry.project.vms.iter().map(|vm| vm.name.clone()).collect();
        self.operations.insert(Operation::new(
            operation.clone(),
            entry.project.name.clone(),
            vms.clone(),
            receivers,
        ));
        Ok(castra_api::UpResult {
            operation,
            project: entry.project.name.clone(),
            vms,
        })
    }

    /// QEMU VMs that would start: QEMU must be installed and every host port they forward
    /// must be free now. Nothing is started when this fails.
    fn preflight_qemu(&self, entry: &ProjectEntry) -> Result<(), DaemonError> {
        let starting: Vec<&crate::config::Vm> = entry
            .project
            .vms
            .iter()
            .filter(|vm| vm.backend == Backend::Qemu)
            .filter(|vm| {
                self.existing_vm_handle(&entry.root, &vm.name)
                    .is_none_or(|h| h.snapshot().qemu.is_none())
            })
            .collect();
        if starting.is_empty() {
            return Ok(());
        }
        if which(crate::qemu::argv::QEMU).is_none() {
            return Err(DaemonError::Preflight(format!(
                "{} is not installed (Debian: apt-get install qemu-system-x86 qemu-utils)",
                crate::qemu::argv::QEMU
            )));
        }
        for vm in starting {
            let ports = vm
                .ssh
                .port
                .iter()
                .map(|p| (*p, "ssh.port", Protocol::Tcp))
                .chain(
                    vm.port_forwards
                        .iter()
                        .map(|f| (f.host, "port_forwards", f.protocol)),
                );
            for (port, key, protocol) in ports {
                let free = match protocol {
                    Protocol::Tcp => std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                    Protocol::Udp => std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
                };
                if !free {
                    return Err(DaemonError::Preflight(format!(
                        "vm {}: host port {port} ({key}) is already in use on 127.0.0.1; \
                         free it or change the port in castra.toml",
                        vm.name
                    )));
                }
            }
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
        let known = entry.project.vm_names();
        if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(DaemonError::Preflight(format!(
                "unknown VM {unknown:?}; known VMs: {}",
                known.join(", ")
            )));
        }
        let operation = crate::ids::operation_id();
        let selected = entry
            .project
            .vms
            .iter()
            .filter(|vm| names.is_empty() || names.contains(&vm.name));
        let stops = selected.map(|vm| {
            let handle = self.vm_handle(&entry.root, &vm.name, vm.backend);
            let request = DownRequest {
                operation: operation.clone(),
                discard: discard || vm.ephemeral,
                graceful,
                term: Duration::from_secs(10),
            };
            let (name, backend) = (vm.name.clone(), vm.backend);
            async move {
                match handle.down(&name, backend, request).await {
                    Ok(report) => report,
                    Err(busy) => StopReport {
                        vm: name,
                        outcome: "rejected".into(),
                        total_ms: 0,
                        discarded: false,
                        error: Some(busy.to_string()),
                    },
                }
            }
        });
        let reports = futures_join_all(stops).await;
        Ok(castra_api::DownResult {
            operation,
            project: entry.project.name.clone(),
            vms: reports
                .into_iter()
                .map(|r| castra_api::VmDown {
                    vm: r.vm,
                    outcome: r.outcome,
                    total_ms: r.total_ms,
                    discarded: r.discarded,
                    error: r.error,
                })
                .collect(),
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

    pub fn base_bytes_hashed(&self) -> u64 {
        self.base_bytes_hashed.load(Ordering::Relaxed)
    }

    /// Loads (or reloads) the project at `config_path` and registers it.
    pub async fn load_project(&self, config_path: &Path) -> Result<ProjectEntry, DaemonError> {
        if !config_path.is_absolute() {
            return Err(DaemonError::InvalidParams(format!(
                "config must be an absolute path, got {}",
                config_path.display()
            )));
        }
        let path = config_path.to_owned();
        let project = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| DaemonError::Internal(format!("config loader panicked: {e}")))??;
        let root = StateRoot::for_project(
            &self.settings.state_base,
            &project.name,
            &project.config_path,
        );
        let entry = ProjectEntry {
            project: Arc::new(project),
            root,
        };
        self.lock()
            .insert(entry.project.config_path.clone(), entry.clone());
        Ok(entry)
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
        let vizier: BTreeMap<String, crate::vizier::VizierSeen> = project
            .vms
            .iter()
            .filter_map(|vm| {
                let seen = self
                    .existing_vm_handle(&root, &vm.name)?
                    .snapshot()
                    .vizier?;
                Some((vm.name.clone(), seen))
            })
            .collect();
        let (plans, bytes) = tokio::task::spawn_blocking(move || {
            planner::plan_project(&project, &root, &overrides, &vizier)
        })
        .await
        .map_err(|e| DaemonError::Internal(format!("planner panicked: {e}")))??;
        self.base_bytes_hashed.fetch_add(bytes, Ordering::Relaxed);
        Ok((entry, plans))
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// The path of `program` in $PATH, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
