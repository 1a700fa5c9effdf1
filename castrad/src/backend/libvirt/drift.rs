//! A libvirt VM's launch settings after castra.toml changed (`crate::drift`): what a restart
//! does about its disk. cpus, memory and the rest need nothing here: every start defines the
//! domain again from castra.toml, with the settings in its metadata (`xml::Facts`), which is
//! where plan and up read them (no virsh call). The disk is the overlay volume, kept across
//! starts: a larger `disk` grows it (`virsh vol-resize`, while the domain is shut off), a
//! smaller one is refused naming the VM and both sizes, as for a QEMU VM.

use super::virsh::{Hypervisor, blocking};
use super::{Libvirt, failed, read_record};
use crate::backend::BackendError;
use crate::config::Vm;
use crate::state_root::StateRoot;

/// The capacity in bytes `virsh vol-info --bytes` reports (`Capacity:  N bytes`).
pub fn capacity(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("Capacity:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What to do with an overlay of `have` bytes for a `disk` of `want_mib` (None: keep it).
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    Keep,
    Grow(u64),
    /// Refused: a disk never shrinks.
    Shrinks {
        want_mib: u64,
        have_mib: u64,
    },
}

pub fn fit(want_mib: Option<u64>, have: u64) -> Fit {
    match want_mib.map(|m| m.saturating_mul(1 << 20)) {
        Some(want) if want < have => Fit::Shrinks {
            want_mib: want >> 20,
            have_mib: have >> 20,
        },
        Some(want) if want > have => Fit::Grow(want),
        _ => Fit::Keep,
    }
}

/// Brings the VM's existing overlay (`info`: its `vol-info --bytes`) to `disk`: grown when
/// castra.toml asks for more, refused when it asks for less. Blocking; the domain is shut off.
pub fn fit_overlay(
    hv: &Hypervisor,
    vm: &Vm,
    pool: &str,
    overlay: &str,
    info: &str,
) -> Result<(), BackendError> {
    if vm.disk_mib.is_none() {
        return Ok(());
    }
    let have = capacity(info).ok_or_else(|| {
        failed(format!(
            "vm {}: cannot read the capacity of volume {overlay} on {} from `virsh vol-info`: \
             {info:?}",
            vm.name,
            hv.name()
        ))
    })?;
    match fit(vm.disk_mib, have) {
        Fit::Keep => Ok(()),
        Fit::Grow(bytes) => {
            hv.virsh(&["vol-resize", "--pool", pool, overlay, &bytes.to_string()])?;
            Ok(())
        }
        Fit::Shrinks { want_mib, have_mib } => Err(failed(format!(
            "vm {vm}: disk = {want_mib} MiB is smaller than its disk ({have_mib} MiB, volume \
             {overlay} on {hv}): a disk cannot shrink; set disk to at least that, or discard \
             the disk (`castractl down --discard {vm}`)",
            vm = vm.name,
            hv = hv.name()
        ))),
    }
}

impl Libvirt {
    /// The size in MiB of the VM's overlay volume, asked of its hypervisor (blocking): what
    /// `castra.restart` checks a configured `disk` against before it stops anything. None:
    /// no volume known, or the hypervisor did not say (left for the start to report).
    pub fn disk_mib(&self, root: &StateRoot, vm: &str) -> Option<u64> {
        let record = read_record(root, vm)?;
        let hv = self.hypervisor(&record.libvirt().ok()?);
        let info = blocking(|| {
            hv.virsh(&[
                "vol-info",
                "--bytes",
                "--pool",
                &record.pool,
                &record.overlay,
            ])
        })
        .ok()?;
        Some(capacity(&info)? >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_read_from_vol_info() {
        let info = "Name:           castra-lv-box.qcow2\nType:           file\n\
                    Capacity:       134217728 bytes\nAllocation:     2293760 bytes\n";
        assert_eq!(capacity(info), Some(128 << 20));
        assert_eq!(capacity("Name: x\n"), None);
        assert_eq!(capacity("Capacity: lots bytes\n"), None);
    }

    #[test]
    fn a_disk_grows_to_what_is_asked_and_never_shrinks() {
        let have = 128 << 20;
        assert_eq!(fit(None, have), Fit::Keep);
        assert_eq!(fit(Some(128), have), Fit::Keep);
        assert_eq!(fit(Some(192), have), Fit::Grow(192 << 20));
        assert_eq!(
            fit(Some(64), have),
            Fit::Shrinks {
                want_mib: 64,
                have_mib: 128
            }
        );
    }
}
