//! `castra.restart`: the named VMs (all by default) stopped as `castra.down` stops them, then
//! started and bootstrapped as `castra.up` does, in one operation, so a running VM picks up
//! what castra.toml changed since it was launched (its drift: cpus, memory, forwards, disk),
//! a QEMU VM's and a libvirt VM's alike; not what a cloud-init guest takes from its seed (its
//! project network address, its mount points: `drift::of_running`), which stays drift.
//!
//! Everything that can be checked before a VM is stopped is: the names, the overrides, every
//! base image, a disk asked to shrink (refused: a disk only grows, at the start), and what a
//! VM that is not running needs to start. A running VM's own forwarded ports are free again
//! once it has stopped, so they are checked at its launch. A restart never discards a disk,
//! an ephemeral VM's included. The bootstrap after the start is the ordinary pipeline: a
//! stamp that still matches the disk makes it a NoOp.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use castra_api as api;

use super::{Daemon, DaemonError, ProjectEntry, selected};
use crate::backend::PreflightError;
use crate::backend::libvirt::Libvirt;
use crate::config::{BackendKind, Vm};
use crate::planner;
use crate::state_root::StateRoot;

impl Daemon {
    /// Stops the named VMs and waits for them, then hands each its start and bootstrap
    /// (answering as soon as the actors have accepted); one operation id for both halves.
    pub async fn restart(
        &self,
        config_path: &Path,
        names: &[String],
        overrides: &[String],
        graceful: Duration,
    ) -> Result<api::RestartResult, DaemonError> {
        let entry = self.load_project(config_path).await?;
        let overrides = planner::preflight(&entry.project, overrides)?;
        let vms = selected(&entry.project, names)?;
        check_before_stopping(&entry, &vms, &self.backends.libvirt).await?;
        self.preflight_starts(&entry, &vms)?;
        let drift = self.drift(&entry, &vms);
        let operation = crate::ids::operation_id();
        let keep = |_: &Vm| false;
        let stopped = self
            .stop_vms(&entry, &vms, &operation, &keep, graceful)
            .await;
        let vms = self
            .start_operation(&entry, &overrides, &vms, &operation)
            .await;
        Ok(api::RestartResult {
            operation,
            project: entry.project.name.clone(),
            vms,
            stopped,
            drift,
        })
    }
}

/// Where a VM's disk is, for its size.
enum Disk {
    /// A QEMU VM's files (its overlay, and the record of what it is backed by).
    Overlay(Box<crate::state_root::VmPaths>),
    /// A libvirt VM's overlay volume, on its hypervisor.
    Volume(StateRoot),
}

/// What would keep a VM from starting again once stopped, checked while it still runs: a
/// QEMU VM's base image changed under its disk (as every start checks it: the file hashed
/// again when its identity changed), and a configured disk smaller than the
/// disk it has (a QEMU VM's overlay, a libvirt VM's volume: one `virsh vol-info`). Blocking
/// qemu-img and virsh calls, on the blocking pool.
async fn check_before_stopping(
    entry: &ProjectEntry,
    vms: &[&Vm],
    libvirt: &Arc<Libvirt>,
) -> Result<(), DaemonError> {
    let checks: Vec<(String, Option<u64>, Disk)> = vms
        .iter()
        .filter_map(|vm| {
            let disk = match vm.backend {
                BackendKind::Qemu => Disk::Overlay(Box::new(entry.root.vm(&vm.name))),
                BackendKind::Libvirt if vm.disk_mib.is_some() => Disk::Volume(entry.root.clone()),
                _ => return None,
            };
            Some((vm.name.clone(), vm.disk_mib, disk))
        })
        .collect();
    let libvirt = libvirt.clone();
    tokio::task::spawn_blocking(move || {
        for (vm, want_mib, disk) in checks {
            let have_mib = match disk {
                Disk::Overlay(paths) => {
                    if let Some(record) = crate::images::disk::read(&paths.base_record) {
                        let hash = |p: &Path| {
                            crate::hashing::file_sha256(p)
                                .map(|(sha256, _)| sha256)
                                .map_err(std::io::Error::other)
                        };
                        crate::images::disk::verify(&vm, &record, hash)
                            .map_err(PreflightError::from)?;
                    }
                    let (Some(_), true) = (want_mib, paths.overlay.exists()) else {
                        continue;
                    };
                    // An overlay qemu-img cannot read is left for the start to report.
                    running_disk(&paths.overlay).map(|info| info.virtual_size >> 20)
                }
                Disk::Volume(root) => libvirt.disk_mib(&root, &vm),
            };
            let (Some(want_mib), Some(have_mib)) = (want_mib, have_mib) else {
                continue;
            };
            if want_mib < have_mib {
                return Err(DaemonError::DiskShrinks {
                    vm,
                    want_mib,
                    have_mib,
                });
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| DaemonError::Panicked {
        what: "restart's disk check",
        detail: e.to_string(),
    })?
}

/// `qemu-img info` of a disk QEMU may have open: with `-U` (QEMU holds its write lock, and
/// only the header's virtual size is read).
fn running_disk(overlay: &Path) -> Option<crate::image::ImageInfo> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(overlay)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    crate::image::parse_info(overlay, &out.stdout).ok()
}
