//! `castra.restart`: the named VMs (all by default) stopped as `castra.down` stops them, then
//! started and bootstrapped as `castra.up` does, in one operation, so a running VM picks up
//! what castra.toml changed since it was launched (its drift: cpus, memory, forwards, disk).
//!
//! Everything that can be checked before a VM is stopped is: the names, the overrides, every
//! base image, a disk asked to shrink (refused: a disk only grows, at the start), and what a
//! VM that is not running needs to start. A running VM's own forwarded ports are free again
//! once it has stopped, so they are checked at its launch. A restart never discards a disk,
//! an ephemeral VM's included. The bootstrap after the start is the ordinary pipeline: a
//! stamp that still matches the disk makes it a NoOp.

use std::path::Path;
use std::time::Duration;

use castra_api as api;

use super::{Daemon, DaemonError, ProjectEntry, selected};
use crate::backend::PreflightError;
use crate::config::{BackendKind, Vm};
use crate::planner;

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
        check_before_stopping(&entry, &vms).await?;
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

/// What would keep a QEMU VM from starting again once stopped, checked while it still runs:
/// its base image (as every start checks it), and a configured disk smaller than the disk it
/// has. Blocking qemu-img calls, on the blocking pool.
async fn check_before_stopping(entry: &ProjectEntry, vms: &[&Vm]) -> Result<(), DaemonError> {
    let checks: Vec<(
        String,
        Option<std::path::PathBuf>,
        Option<u64>,
        std::path::PathBuf,
    )> = vms
        .iter()
        .filter(|vm| vm.backend == BackendKind::Qemu)
        .map(|vm| {
            let overlay = entry.root.vm(&vm.name).overlay;
            (vm.name.clone(), vm.base_image.clone(), vm.disk_mib, overlay)
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for (vm, base, want_mib, overlay) in checks {
            if let Some(base) = base {
                crate::image::base(&base).map_err(PreflightError::from)?;
            }
            let (Some(want_mib), true) = (want_mib, overlay.exists()) else {
                continue;
            };
            // An overlay qemu-img cannot read is left for the start to report.
            let Some(info) = running_disk(&overlay) else {
                continue;
            };
            let have_mib = info.virtual_size >> 20;
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
