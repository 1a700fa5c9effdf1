//! The libvirt backend: a VM is a **persistent** libvirt domain `castra-<project>-<vm>-<id>`
//! (`id`: its state root's, `owner`; only a domain tagged as ours is ever touched) on this
//! machine (`qemu:///session`) or on a hypervisor reached over SSH (`qemu+ssh://`),
//! driven with `virsh` as a subprocess (`virsh`; docs/design/remote-backends.md says why not
//! the `virt` crate). The domain XML and castrad's metadata in it (`xml`), the running domain
//! (`domain`). This file is the [`Backend`] face of those pieces.
//!
//! The VM's disk is a qcow2 volume `castra-<project>-<vm>-<id>.qcow2` in the VM's storage pool,
//! backed by `base_image` (a path on the hypervisor) with its format given explicitly; its
//! cloud-init seed, made here as for a QEMU VM, is uploaded as a second volume. Those two
//! are the VM's own volumes on the hypervisor, and exactly what `discard` deletes (with the
//! domain's definition). With `upload = true`, `base_image` is a file here, copied once into
//! the pool as a volume shared by every VM with that image (`upload`), which `discard` leaves.
//!
//! What castrad knows about a running domain (the forwarded port, the disk id, the
//! accelerator, the volumes, the launch settings drift is reported against) lives in the
//! domain's `<metadata>`, so a restarted castrad adopts it from libvirt. A restart defines
//! the domain again with castra.toml's settings and grows its disk (`drift`). castrad keeps
//! one small file per VM (`libvirt.json`: the URI, the pool, the castra.toml), only a cache
//! of which hypervisor to ask: a starting castrad adopts the VMs it lists; without it, the
//! same comes from castra.toml's `[vms.libvirt]` and the domain's name when castrad loads
//! the project (`configured`), and adoption and `discard` go by the domain's metadata.

mod domain;
mod drift;
mod owner;
mod pool;
mod space;
pub mod upload;
pub mod virsh;
pub mod xml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::qemu::accel;
use super::{Backend, BackendError, DiskInputs, Machine, PreflightError};
use crate::config::libvirt::Libvirt as LibvirtConfig;
use crate::config::{BackendKind, Vm};
use crate::ssh::Endpoint;
use crate::state_root::StateRoot;
use crate::vm::state::MachineInfo;
use domain::{Domain, is_down, state_blocking};
use virsh::{CallError, Hypervisor, blocking};

/// libvirt VMs; `accel_override` is castrad's `--accel`; `control_dir` castrad's private
/// directory of ssh control sockets (the hypervisors' masters and wrappers go there).
#[derive(Debug, Clone)]
pub struct Libvirt {
    pub accel_override: Option<accel::AccelSetting>,
    pub control_dir: PathBuf,
    /// Where castrad makes its own pool on this machine's session daemon (`pool`).
    pub own_pool_dir: PathBuf,
    /// Where castra.toml says each libvirt VM lives (by state root and VM), as castrad last
    /// loaded it: where to look when a VM's `libvirt.json` is gone.
    pub configured: Arc<Mutex<HashMap<(PathBuf, String), Configured>>>,
}

/// A VM's `[vms.libvirt]` and the castra.toml it is in.
type Configured = (LibvirtConfig, PathBuf);

/// Where a VM's domain lives: `libvirt.json` in the VM's directory, written when its first
/// volume is made, removed when it is discarded. Only a cache: without it, the same is known
/// from castra.toml (`[vms.libvirt]`, the domain's name) and the domain's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub uri: String,
    pub known_hosts: Option<PathBuf>,
    pub pool: String,
    pub domain: String,
    pub overlay: String,
    pub seed: String,
    pub config: PathBuf,
}

impl Record {
    fn libvirt(&self) -> Result<LibvirtConfig, BackendError> {
        Ok(LibvirtConfig {
            uri: self.uri.clone(),
            remote: crate::config::libvirt::parse_uri(&self.uri)
                .map_err(|e| failed(format!("libvirt.json: {e}")))?,
            pool: self.pool.clone(),
            known_hosts: self.known_hosts.clone(),
            // Only making a new disk asks where its base comes from; a record never does.
            upload: false,
        })
    }
}

fn failed(message: impl Into<String>) -> BackendError {
    BackendError::Libvirt(message.into())
}

impl From<CallError> for BackendError {
    fn from(e: CallError) -> BackendError {
        BackendError::Libvirt(e.to_string())
    }
}

/// `castra-<project>-<vm>-<id>` (`id`: the state root's, `owner`): the domain's name, and
/// the stem of its volumes' names.
pub fn domain_name(root: &StateRoot, vm: &str) -> String {
    format!(
        "castra-{}-{vm}-{}",
        root.project_name(),
        xml::owner_id(root.path())
    )
}

/// The VM's `libvirt.json`, if it names the VM's domain as castrad names it now.
fn read_record(root: &StateRoot, vm: &str) -> Option<Record> {
    let record: Record = serde_json::from_slice(&std::fs::read(root.vm(vm).libvirt).ok()?).ok()?;
    owner::current(root, vm, &record.domain).then_some(record)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> BackendError {
    move |e| failed(format!("{what}: {e}"))
}

impl Libvirt {
    fn hypervisor(&self, config: &LibvirtConfig) -> Arc<Hypervisor> {
        Arc::new(Hypervisor::new(config, &self.control_dir))
    }

    /// Where the VM's domain lives: its `libvirt.json`, else castra.toml's `[vms.libvirt]`
    /// with the names castrad gives the domain and its volumes (the domain's metadata then
    /// says which volumes are its own).
    fn record(&self, root: &StateRoot, vm: &str) -> Option<Record> {
        if let Some(record) = read_record(root, vm) {
            return Some(record);
        }
        let configured = self.configured.lock().unwrap_or_else(|e| e.into_inner());
        let (config, path) = configured.get(&(root.path().to_owned(), vm.to_owned()))?;
        let name = domain_name(root, vm);
        Some(Record {
            uri: config.uri.clone(),
            known_hosts: config.known_hosts.clone(),
            pool: config.pool.clone(),
            overlay: format!("{name}.qcow2"),
            seed: format!("{name}-seed.img"),
            domain: name,
            config: path.clone(),
        })
    }

    fn config(vm: &Vm) -> Result<&LibvirtConfig, BackendError> {
        vm.libvirt
            .as_ref()
            .ok_or_else(|| failed(format!("vm {} has no [vms.libvirt]", vm.name)))
    }

    /// The overlay volume (made when missing, with a new disk id and the seed), blocking. A
    /// new disk of a VM that uploads its base needs `stored`, the image from the store: without
    /// it, `NeedsImage` (the caller fetches it and calls again).
    fn prepare(
        &self,
        root: &StateRoot,
        vm: &Vm,
        config_path: &Path,
        stored: Option<&crate::images::Stored>,
    ) -> Result<Prepared, BackendError> {
        let config = Self::config(vm)?;
        let hv = self.hypervisor(config);
        let paths = root.vm(&vm.name);
        let name = domain_name(root, &vm.name);
        let record = Record {
            uri: config.uri.clone(),
            known_hosts: config.known_hosts.clone(),
            pool: config.pool.clone(),
            domain: name.clone(),
            overlay: format!("{name}.qcow2"),
            seed: format!("{name}-seed.img"),
            config: config_path.to_owned(),
        };
        // Another's domain under this name: an error naming its owner, and nothing touched.
        let existing = owner::owned(&hv, root, &vm.name, &name)?;
        if is_running(&hv, &name)? {
            return Err(failed(format!(
                "vm {}: its domain {name} already runs on {}; `castractl down {}` stops it first",
                vm.name,
                hv.name(),
                vm.name
            )));
        }
        let info = hv
            .virsh(&[
                "vol-info",
                "--bytes",
                "--pool",
                &config.pool,
                &record.overlay,
            ])
            .ok();
        let exists = info.is_some();
        // The disk kept for this start, brought to `disk` (grown, or a shrink refused).
        let keep = || {
            let info = info.as_deref().unwrap_or_default();
            drift::fit_overlay(&hv, vm, &config.pool, &record.overlay, info)
        };
        crate::state_root::ensure_dir(&paths.dir)
            .map_err(io(format!("creating {}", paths.dir.display())))?;
        let json = serde_json::to_vec_pretty(&record).map_err(|e| failed(e.to_string()))?;
        crate::fsutil::write_atomic(&paths.libvirt, &json)
            .map_err(io(format!("writing {}", paths.libvirt.display())))?;
        if exists && paths.disk_id.exists() {
            keep()?;
            return Ok(Prepared::Done(None));
        }
        if exists {
            // castrad lost its copy of the disk id (its state was removed, say): the domain's
            // metadata still has it, and what it says about that disk is still true.
            if let Some(facts) = existing.filter(|f| f.overlay == record.overlay) {
                crate::fsutil::write_atomic(
                    &paths.disk_id,
                    format!("{}\n", facts.disk_id).as_bytes(),
                )
                .map_err(io(format!("writing {}", paths.disk_id.display())))?;
                keep()?;
                return Ok(Prepared::Done(None));
            }
            // Ours by name, but nothing says which disk it is: a new disk.
            hv.virsh(&["vol-delete", "--pool", &config.pool, &record.overlay])?;
        }
        let label = vm
            .base_image
            .as_ref()
            .map(|b| b.label())
            .ok_or(BackendError::NoBaseImage)?;
        // The base on the hypervisor: base_image there, or the volume the store's image was
        // uploaded to.
        let (base, format, virtual_size) = match (config.upload, stored) {
            (true, None) => return Ok(Prepared::NeedsImage),
            (true, Some(stored)) => {
                let b = upload::ensure(&hv, &config.pool, stored)?;
                // What the new disk is made on, for plans and stamps (the store's digest:
                // the volume's name says it too).
                let record = crate::images::disk::DiskBase {
                    sha256: stored.record.sha256.clone(),
                    backing: b.path.clone(),
                    format: b.format.clone(),
                    stored: true,
                    identity: stored.record.identity,
                    source: label.clone(),
                };
                crate::images::disk::write(&paths.base_record, &record)
                    .map_err(io(format!("writing {}", paths.base_record.display())))?;
                (b.path, b.format, b.virtual_size)
            }
            (false, _) => {
                let image = vm
                    .base_image
                    .as_ref()
                    .and_then(|b| b.hypervisor())
                    .ok_or(BackendError::NoBaseImage)?;
                let info = base_info(&hv, image)?;
                (image.to_owned(), info.format, info.virtual_size)
            }
        };
        let capacity = match vm.disk_mib {
            Some(mib) if mib << 20 < virtual_size => {
                return Err(failed(format!(
                    "disk = {mib} MiB is smaller than the base image {} on {} ({} MiB); set \
                     disk to at least that",
                    label,
                    hv.name(),
                    virtual_size >> 20
                )));
            }
            Some(mib) => mib << 20,
            None => virtual_size,
        };
        let spec = xml::volume(&record.overlay, capacity, "qcow2", Some((&base, &format)));
        let disk = format!("the disk of vm {}", vm.name);
        hv.virsh_with_file(&["vol-create", &config.pool], &spec)
            .map_err(space::explain(&hv, &config.pool, &disk))?;
        // A new disk: nothing proven about or given to the previous one holds.
        for stale in [
            &paths.stamp,
            &paths.known_hosts,
            &paths.seed,
            &paths.seed_inputs,
        ] {
            match std::fs::remove_file(stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("removing {}", stale.display()))(e));
                }
                _ => {}
            }
        }
        let disk_id = crate::ids::random_hex(8);
        crate::fsutil::write_atomic(&paths.disk_id, format!("{disk_id}\n").as_bytes())
            .map_err(io(format!("writing {}", paths.disk_id.display())))?;
        if vm.cloud_init.enabled {
            super::qemu::make_seed(root, vm)?;
            let size = std::fs::metadata(&paths.seed)
                .map_err(io(format!("reading {}", paths.seed.display())))?
                .len();
            let _ = hv.virsh(&["vol-delete", "--pool", &config.pool, &record.seed]);
            let what = format!("the cloud-init seed of vm {}", vm.name);
            hv.virsh_with_file(
                &["vol-create", &config.pool],
                &xml::volume(&record.seed, size, "raw", None),
            )
            .map_err(space::explain(&hv, &config.pool, &what))?;
            let seed = paths.seed.to_string_lossy().into_owned();
            hv.virsh(&["vol-upload", "--pool", &config.pool, &record.seed, &seed])
                .map_err(space::explain(&hv, &config.pool, &what))?;
        }
        Ok(Prepared::Done(Some(PathBuf::from(format!(
            "{}/{}",
            config.pool, record.overlay
        )))))
    }

    /// Defines the domain (again: a new port, the accelerator of now) and starts it, blocking.
    fn start(&self, root: &StateRoot, vm: &Vm, config_path: &Path) -> Result<Domain, BackendError> {
        let config = Self::config(vm)?;
        let hv = self.hypervisor(config);
        let name = domain_name(root, &vm.name);
        let record = read_record(root, &vm.name)
            .ok_or_else(|| failed(format!("vm {}: no volume was made for it", vm.name)))?;
        let disk_id = std::fs::read_to_string(root.vm(&vm.name).disk_id)
            .map_err(io(format!("vm {}: reading its disk id", vm.name)))?;
        let setting = self.accel_override.unwrap_or(vm.accel);
        // TCG asked for: nothing to ask the hypervisor.
        let offered = match setting {
            accel::AccelSetting::Tcg => accel::KvmProbe {
                device: Err("not probed".into()),
                pvm: false,
            },
            _ => probe(&hv),
        };
        // Say which host KVM is missing on (the remote probe's answer already does).
        let choice = accel::choose(setting, &offered).map_err(|e| accel::KvmUnusable {
            why: match e.why.contains(&hv.name()) {
                true => e.why,
                false => format!("on {}: {}", hv.name(), e.why),
            },
        })?;
        let has_seed = vm.cloud_init.enabled;
        // `define` replaces whatever domain has the name: only ever one of ours.
        owner::owned(&hv, root, &vm.name, &name)?;
        let uuid = hv
            .virsh(&["domuuid", &name])
            .ok()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty());
        let mut last = None;
        // The port is chosen here; on another host it may be taken there: try another.
        for _ in 0..3 {
            let ssh_port = super::qemu::process::free_port().map_err(BackendError::NoFreePort)?;
            let now = std::time::SystemTime::now();
            let facts = xml::Facts {
                vm: vm.name.clone(),
                ssh_port,
                disk_id: disk_id.trim().to_owned(),
                accel: choice.accel.as_str().to_owned(),
                accel_reason: choice.reason.clone(),
                launched_unix_ms: now
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64,
                config: config_path.to_owned(),
                pool: record.pool.clone(),
                overlay: record.overlay.clone(),
                seed: has_seed.then(|| record.seed.clone()),
                settings: Some(super::qemu::launch_settings(root, vm)),
                owner: Some(owner::ours(root)),
            };
            let spec = xml::DomainSpec {
                name: name.clone(),
                uuid: uuid.clone(),
                accel: choice.accel,
                cpus: vm.cpus,
                memory_mib: vm.memory_mib,
                kernel: vm.kernel.clone(),
                initrd: vm.initrd.clone(),
                cmdline: vm.cmdline.clone(),
                facts: facts.clone(),
            };
            hv.virsh_with_file(&["define"], &xml::domain(&spec))?;
            match hv.virsh(&["start", &name]) {
                Ok(_) => return Ok(Domain::new(hv, name, facts, None)),
                Err(e) if e.message.contains("host forwarding") => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map_or_else(|| failed("no port"), BackendError::from))
    }
}

/// Whether the domain runs now (any state but shut off / crashed / undefined).
fn is_running(hv: &Hypervisor, name: &str) -> Result<bool, CallError> {
    Ok(!is_down(&state_blocking(hv, name)?))
}

/// `qemu-img info` of `base` on the hypervisor, checked as a base image (self-contained,
/// raw or qcow2).
fn base_info(hv: &Hypervisor, base: &Path) -> Result<crate::image::ImageInfo, BackendError> {
    let path = base.to_string_lossy();
    let out = hv
        .sh(&["qemu-img", "info", "-U", "--output=json", &path])
        .map_err(|e| {
            failed(format!(
                "base image {} cannot be read on {}: {}; place it there (a path on the \
                 hypervisor) or fix base_image",
                base.display(),
                hv.name(),
                e.message
            ))
        })?;
    let info = crate::image::parse_info(base, out.as_bytes()).map_err(|e| failed(e.to_string()))?;
    crate::image::check_base(base, &info).map_err(|e| failed(e.to_string()))?;
    Ok(info)
}

/// What the hypervisor offers for KVM: /dev/kvm usable (by whoever runs QEMU there) and
/// kvm_pvm not loaded.
fn probe(hv: &Hypervisor) -> accel::KvmProbe {
    if hv.hop.is_none() {
        return accel::probe();
    }
    let answer = hv
        .sh(&[
            "sh",
            "-c",
            "test -w /dev/kvm && echo kvm; test -e /sys/module/kvm_pvm && echo pvm; true",
        ])
        .unwrap_or_default();
    accel::KvmProbe {
        device: if answer.lines().any(|l| l == "kvm") {
            Ok(())
        } else {
            Err(format!("/dev/kvm is not usable on {}", hv.name()))
        },
        pvm: answer.lines().any(|l| l == "pvm"),
    }
}

impl Backend for Libvirt {
    fn kind(&self) -> BackendKind {
        BackendKind::Libvirt
    }

    fn owns_lifecycle(&self) -> bool {
        true
    }

    /// The forwarded port on the hypervisor's 127.0.0.1 (reached through it when remote).
    fn ssh_endpoint(&self, vm: &Vm, machine: Option<&MachineInfo>) -> Option<Endpoint> {
        super::forwarded_endpoint(vm, machine)
    }

    fn preflight(&self, root: &StateRoot, vms: &[&Vm]) -> Result<(), PreflightError> {
        if vms.is_empty() {
            return Ok(());
        }
        blocking(|| preflight(self, root, vms))
    }

    fn prepare_disk<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a Vm,
        inputs: DiskInputs<'a>,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, BackendError>> {
        Box::pin(async move {
            // The castra.toml is only known at launch; keep what an earlier record said.
            let config = read_record(root, &vm.name)
                .map(|r| r.config)
                .unwrap_or_default();
            if let Prepared::Done(made) = blocking(|| self.prepare(root, vm, &config, None))? {
                return Ok(made);
            }
            // A new disk on an uploaded base: the image from the store (fetched or imported
            // there first), then the upload.
            let source = vm
                .base_image
                .as_ref()
                .and_then(|b| b.local())
                .ok_or(BackendError::NoBaseImage)?;
            let (stored, _lease) = inputs
                .images
                .ensure(source, vm.image_mirror.as_deref(), false, inputs.progress)
                .await?;
            match blocking(|| self.prepare(root, vm, &config, Some(&stored)))? {
                Prepared::Done(made) => Ok(made),
                Prepared::NeedsImage => Err(failed("the base image was not used")),
            }
        })
    }

    fn launch<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a Vm,
        config: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>, BackendError>> {
        Box::pin(async move {
            if let Some(mut record) = read_record(root, &vm.name)
                && record.config != config
            {
                record.config = config.to_owned();
                let json = serde_json::to_vec_pretty(&record).map_err(|e| failed(e.to_string()))?;
                let file = root.vm(&vm.name).libvirt;
                crate::fsutil::write_atomic(&file, &json)
                    .map_err(io(format!("writing {}", file.display())))?;
            }
            let d = blocking(|| self.start(root, vm, config))?;
            Ok(Box::new(d) as Box<dyn Machine>)
        })
    }

    fn running_records(&self, root: &StateRoot) -> Vec<(String, PathBuf)> {
        root.vm_names()
            .into_iter()
            .filter_map(|vm| {
                let record = read_record(root, &vm)?;
                Some((vm, record.config))
            })
            .collect()
    }

    /// The domain, if it runs, from libvirt's state and its metadata.
    fn adopt<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a str,
    ) -> BoxFuture<'a, Option<Box<dyn Machine>>> {
        Box::pin(async move {
            let record = self.record(root, vm)?;
            let hv = self.hypervisor(&record.libvirt().ok()?);
            let state = match domain::state(&hv, &record.domain).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(vm, error = %e, "cannot ask libvirt about the VM");
                    return None;
                }
            };
            if is_down(&state) {
                return None;
            }
            let (h, d, r, v) = (
                hv.clone(),
                record.domain.clone(),
                root.clone(),
                vm.to_owned(),
            );
            // Only a domain tagged as this castrad's (`owner`): another's is left running.
            let facts = match tokio::task::spawn_blocking(move || owner::owned(&h, &r, &v, &d))
                .await
                .ok()?
            {
                Ok(facts) => facts?,
                Err(e) => {
                    tracing::warn!(vm, error = %e, "not adopted");
                    return None;
                }
            };
            // The disk id is libvirt's word, the local file only its copy.
            let paths = root.vm(vm);
            if !paths.libvirt.exists() {
                // The cache again, from the domain's word.
                let cached = Record {
                    pool: facts.pool.clone(),
                    overlay: facts.overlay.clone(),
                    seed: facts.seed.clone().unwrap_or(record.seed.clone()),
                    config: facts.config.clone(),
                    ..record.clone()
                };
                if let Ok(json) = serde_json::to_vec_pretty(&cached) {
                    let _ = crate::state_root::ensure_dir(&paths.dir)
                        .and_then(|()| crate::fsutil::write_atomic(&paths.libvirt, &json));
                }
            }
            if crate::stamps::disk_id(root, vm).as_deref() != Some(facts.disk_id.as_str()) {
                let _ = crate::fsutil::write_atomic(
                    &paths.disk_id,
                    format!("{}\n", facts.disk_id).as_bytes(),
                );
            }
            let unresponsive = (state == "paused")
                .then(|| format!("the domain {} is paused on {}", record.domain, hv.name()));
            Some(Box::new(Domain::new(hv, record.domain, facts, unresponsive)) as Box<dyn Machine>)
        })
    }

    /// Nothing: the domain stays defined until it is discarded.
    fn forget(&self, _: &StateRoot, _: &str) {}

    fn configured(&self, root: &StateRoot, project: &crate::config::Project) -> Vec<String> {
        let mut configured = self.configured.lock().unwrap_or_else(|e| e.into_inner());
        configured.retain(|(r, _), _| r != root.path());
        let mut look = Vec::new();
        for vm in &project.vms {
            let Some(config) = vm.libvirt.as_ref() else {
                continue;
            };
            let key = (root.path().to_owned(), vm.name.clone());
            configured.insert(key, (config.clone(), project.config_path.clone()));
            // A VM castrad has state for but no cache: looked for now. One it has nothing for
            // (never made here, or castrad's state gone) is looked for by its actor, at its
            // first `up` or `down`: a project's first `plan` or `status` does not wait on
            // hypervisors that may never have heard of it.
            let paths = root.vm(&vm.name);
            if paths.dir.exists() && !paths.libvirt.exists() {
                look.push(vm.name.clone());
            }
        }
        look
    }

    fn discard(&self, root: &StateRoot, vm: &str) -> Result<Option<(PathBuf, u64)>, BackendError> {
        let Some(record) = self.record(root, vm) else {
            return Ok(None);
        };
        let hv = self.hypervisor(&record.libvirt()?);
        blocking(|| discard(&hv, root, vm, &record))
    }
}

/// Undefines the domain and deletes exactly its own volumes, then castrad's files about it.
fn discard(
    hv: &Hypervisor,
    root: &StateRoot,
    vm: &str,
    record: &Record,
) -> Result<Option<(PathBuf, u64)>, BackendError> {
    // Another's domain under this name: an error naming its owner, and nothing deleted.
    let facts = owner::owned(hv, root, vm, &record.domain)?;
    if is_running(hv, &record.domain)? {
        return Err(failed(format!(
            "vm {vm}: its domain {} still runs on {}; castrad does not delete its disk",
            record.domain,
            hv.name()
        )));
    }
    // Its own volumes: those its metadata names, and those of castrad's names for it.
    let mut volumes = Vec::new();
    if let Some(f) = &facts {
        volumes.push((f.pool.clone(), f.overlay.clone()));
        volumes.extend(f.seed.iter().map(|s| (f.pool.clone(), s.clone())));
    }
    for name in [&record.overlay, &record.seed] {
        let volume = (record.pool.clone(), name.clone());
        if !volumes.contains(&volume) {
            volumes.push(volume);
        }
    }
    let (pool, overlay) = volumes[0].clone();
    let bytes = hv
        .virsh(&["vol-info", "--bytes", "--pool", &pool, &overlay])
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("Allocation:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let mut found = false;
    match hv.virsh(&["undefine", "--nvram", &record.domain]) {
        Err(e) if !e.message.contains("failed to get domain") => return Err(e.into()),
        Err(_) => {}
        Ok(_) => found = true,
    }
    for (pool, volume) in &volumes {
        match hv.virsh(&["vol-delete", "--pool", pool, volume]) {
            Err(e) if !e.message.contains("Storage volume not found") => return Err(e.into()),
            Err(_) => {}
            Ok(_) => found = true,
        }
    }
    let paths = root.vm(vm);
    for f in [
        &paths.disk_id,
        &paths.stamp,
        &paths.known_hosts,
        &paths.seed,
        &paths.seed_inputs,
        &paths.libvirt,
        &paths.base_record,
    ] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("cannot discard {}", f.display()))(e));
            }
            _ => {}
        }
    }
    // Nothing was there: no disk was discarded.
    Ok(found.then(|| (PathBuf::from(format!("{pool}/{overlay}")), bytes)))
}

/// What [`Libvirt::prepare`] did.
enum Prepared {
    /// The disk is there: its path when it was just made.
    Done(Option<PathBuf>),
    /// A new disk needs the base image from the store first.
    NeedsImage,
}

/// Each hypervisor once: libvirt answers, the pool exists (castrad's own made, or started, on
/// this machine's session daemon: `pool`); each base image once: it is there (with upload: it
/// is a base image here, and the pool can take uploads).
fn preflight(backend: &Libvirt, root: &StateRoot, vms: &[&Vm]) -> Result<(), PreflightError> {
    if which("virsh").is_none() {
        return Err(PreflightError::NotInstalled {
            program: "virsh",
            packages: "libvirt-clients",
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    // How many of the VMs start in each pool: what its free space must hold.
    let mut starting = std::collections::BTreeMap::<(&str, &str), u64>::new();
    for config in vms.iter().filter_map(|vm| vm.libvirt.as_ref()) {
        *starting.entry((&config.uri, &config.pool)).or_default() += 1;
    }
    for vm in vms {
        let Some(config) = vm.libvirt.as_ref() else {
            continue;
        };
        let hv = backend.hypervisor(config);
        let problem = |message: String| PreflightError::Hypervisor {
            vm: vm.name.clone(),
            hypervisor: hv.name(),
            uri: hv.uri.clone(),
            message,
        };
        if seen.insert((config.uri.clone(), config.pool.clone())) {
            // One round trip when all is well: the pool's answer says libvirt answers too,
            // that the pool is there, and how much room it has.
            let info = pool::ready(&hv, config, &backend.own_pool_dir).map_err(problem)?;
            let count = starting.get(&(&*config.uri, &*config.pool)).copied();
            space::check(&hv, &config.pool, &info, count.unwrap_or(1)).map_err(problem)?;
        }
        if config.upload {
            // A file here, for a disk still to be made, is imported into the store then:
            // checked now (a disk that exists no longer needs it; a URL's image is checked
            // when it is fetched). The pool must be one castrad can rename an upload in.
            if let Some(base) = vm.base_image.as_ref().and_then(|b| b.file())
                && !root.vm(&vm.name).disk_id.exists()
            {
                crate::backend::check_base_file(&vm.name, base)?;
            }
            if seen.insert((config.uri.clone(), format!("upload\n{}", config.pool))) {
                upload::check_pool(&hv, &config.pool).map_err(problem)?;
            }
        } else if let Some(base) = vm.base_image.as_ref().and_then(|b| b.hypervisor())
            && seen.insert((config.uri.clone(), base.to_string_lossy().into_owned()))
        {
            let path = base.to_string_lossy();
            if hv.sh(&["test", "-r", &path]).is_err() {
                return Err(problem(format!(
                    "base_image {} is not there (or not readable); a libvirt VM's base_image \
                     is a path on the hypervisor: copy the image there or fix the path",
                    base.display()
                )));
            }
        }
    }
    Ok(())
}

/// What to do about a connection libvirt refused, from its message.
fn explain_connect(message: &str) -> String {
    let fix = if message.contains("Host key verification failed") {
        "its SSH host key is not the one pinned (or none is): add the hypervisor's key to \
         [vms.libvirt] known_hosts (or ~/.ssh/known_hosts), checked out of band"
    } else if message.contains("Permission denied (publickey")
        || message.contains("Permission denied, please")
    {
        "SSH did not let castrad in: check the user and keyfile= of the URI"
    } else if message.contains("Permission denied") {
        "castrad may not use libvirt's socket there: use qemu:///session, or add the user to \
         the libvirt group for qemu:///system"
    } else if message.contains("No such file or directory")
        || message.contains("Connection refused")
    {
        "libvirtd is not running there: start it (`systemctl start libvirtd`, or `libvirtd \
         -d` as the user for qemu:///session) and run again"
    } else {
        "check that libvirtd runs there and that the URI is right"
    };
    format!("libvirt does not answer ({message}): {fix}")
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
