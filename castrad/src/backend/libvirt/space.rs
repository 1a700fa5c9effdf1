//! Room in a storage pool. Preflight reads the pool's free space (`virsh pool-info --bytes`,
//! the call that also proves libvirt answers and the pool exists) and refuses an `up` the
//! pool cannot hold, before anything starts; a "No space left" that libvirt reports anyway
//! (the pool filled meanwhile, or libvirt's figure was stale) becomes the same message.
//!
//! What an `up` needs there is [`FLOOR`] per VM: the first writes of a new overlay (qcow2
//! metadata) and its cloud-init seed. An upload's size is checked where it is known, before
//! the upload (`upload`): knowing in preflight whether the base volume is already there would
//! mean hashing the image first.

use super::failed;
use super::virsh::{CallError, Hypervisor};
use crate::backend::BackendError;

/// What one VM needs free in its pool before it starts: a new overlay's and seed's first
/// writes (a seed is under 2 MiB, a fresh overlay's metadata well under 1 MiB), with room.
pub const FLOOR: u64 = 8 << 20;

/// `Available:` of `virsh pool-info --bytes`, in bytes.
pub fn available(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("Available:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The message for a pool that cannot hold what `what` needs (`needed` bytes, when known),
/// with its free space when known: the pool, the hypervisor, and what to do.
pub fn full_message(
    hv: &Hypervisor,
    pool: &str,
    what: &str,
    needed: Option<u64>,
    free: Option<u64>,
) -> String {
    let mib = |b: u64| b.div_ceil(1 << 20);
    format!(
        "pool {pool:?} on {} is out of space{}: {what} {}; free space in the pool's \
         directory, or set [vms.libvirt] pool to a bigger one (docs/REMOTE.md)",
        hv.name(),
        free.map(|f| format!(" ({} MiB free)", f >> 20))
            .unwrap_or_default(),
        needed.map_or_else(
            || "did not fit there".to_owned(),
            |n| format!("needs {} MiB there", mib(n))
        ),
    )
}

/// Whether libvirt's (or the hypervisor's) words say the pool's file system is full.
pub fn is_full(message: &str) -> bool {
    message.contains("No space left")
}

/// A failed call that made or filled a volume for `what`: the out-of-space message when that
/// is why, else the call's own error.
pub fn explain(hv: &Hypervisor, pool: &str, what: &str) -> impl FnOnce(CallError) -> BackendError {
    move |e| {
        if is_full(&e.message) {
            failed(full_message(hv, pool, what, None, None))
        } else {
            e.into()
        }
    }
}

/// Preflight's check of one pool: `info` is its `pool-info --bytes`, `vms` how many VMs will
/// start there. The refusal's message, if it cannot hold them.
pub fn check(hv: &Hypervisor, pool: &str, info: &str, vms: u64) -> Result<(), String> {
    let needed = FLOOR * vms.max(1);
    match available(info) {
        Some(free) if free < needed => Err(full_message(
            hv,
            pool,
            &if vms > 1 {
                format!("starting {vms} VMs (their new disks' and seeds' first writes)")
            } else {
                "starting a VM (its new disk's and seed's first writes)".to_owned()
            },
            Some(needed),
            Some(free),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::libvirt::Libvirt;
    use std::path::Path;

    fn local() -> Hypervisor {
        let config = Libvirt {
            uri: "qemu:///session".into(),
            remote: None,
            pool: "castra".into(),
            known_hosts: None,
            upload: false,
        };
        Hypervisor::new(&config, Path::new("/run/c/ssh"))
    }

    #[test]
    fn free_space_is_read_from_virsh_and_a_full_pool_is_explained() {
        let info = "Name:           castra\nState:          running\n\
                    Capacity:       1000 B\nAllocation:     600 B\nAvailable:      400 B\n";
        assert_eq!(available(info), Some(400));
        assert_eq!(available("Name: x\n"), None);
        let hv = local();
        let err = check(&hv, "castra", info, 2).unwrap_err();
        assert_eq!(
            err,
            "pool \"castra\" on this machine is out of space (0 MiB free): starting 2 VMs \
             (their new disks' and seeds' first writes) needs 16 MiB there; free space in the \
             pool's directory, or set [vms.libvirt] pool to a bigger one (docs/REMOTE.md)"
        );
        let roomy = format!("Available:      {} B\n", 64u64 << 20);
        assert_eq!(check(&hv, "castra", &roomy, 2), Ok(()));
        // libvirt's figure unknown: nothing refused here (a full pool is explained later).
        assert_eq!(check(&hv, "castra", "Name: x\n", 1), Ok(()));

        // A volume call that ran out of room says so; any other failure keeps its words.
        let call = |message: &str| CallError {
            uri: hv.uri.clone(),
            what: "virsh vol-upload".into(),
            message: message.into(),
        };
        let full = explain(&hv, "castra", "the seed of vm box")(call(
            "cannot receive data from volume castra-p-box-seed.img; No space left on device",
        ));
        assert_eq!(
            full.to_string(),
            BackendError::Libvirt(
                "pool \"castra\" on this machine is out of space: the seed of vm box did \
                 not fit there; free space in the pool's directory, or set [vms.libvirt] pool \
                 to a bigger one (docs/REMOTE.md)"
                    .into()
            )
            .to_string()
        );
        let other = explain(&hv, "castra", "x")(call("Permission denied"));
        assert!(other.to_string().contains("Permission denied"), "{other}");
    }
}
