//! A project's checks: castra.toml loads; per VM, its base image (and kernel, initrd) can be
//! read and used, its fixed host ports are free, its key files can be read.

use std::path::{Path, PathBuf};

use castra_api::DoctorCheck;

use crate::backend::qemu;
use crate::config::{BackendKind, Protocol, Vm};
use crate::daemon::Daemon;
use crate::state_root::StateRoot;

pub async fn checks(daemon: &Daemon, config: &Path) -> Vec<DoctorCheck> {
    let entry = match daemon.load_project(config).await {
        Ok(entry) => entry,
        Err(e) => {
            return vec![DoctorCheck::fail(
                "config",
                None,
                crate::error::chain(&e).join(": "),
                "fix castra.toml where the message says (castractl plan shows the same error)",
            )];
        }
    };
    let project = entry.project.clone();
    let mut checks = vec![DoctorCheck::ok(
        "config",
        None,
        format!(
            "{}: project {}, {} VMs ({})",
            project.config_path.display(),
            project.name,
            project.vms.len(),
            project.vm_names().join(", ")
        ),
    )];
    // A VM castrad runs holds its own ports: those are not checked.
    let running: Vec<bool> = project
        .vms
        .iter()
        .map(|vm| {
            daemon
                .existing_vm_handle(&entry.root, &vm.name)
                .is_some_and(|h| h.snapshot().machine.is_some())
        })
        .collect();
    let root = entry.root.clone();
    let store = daemon.images.clone();
    let per_vm = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (vm, running) in project.vms.iter().zip(running) {
            if vm.backend == BackendKind::Qemu {
                out.push(base_image(vm, &root, &store));
                out.push(ports(vm, running));
            }
            out.push(keys(vm, &root));
        }
        out
    })
    .await;
    match per_vm {
        Ok(more) => checks.extend(more),
        Err(e) => checks.push(super::panicked("project", &e)),
    }
    checks
}

/// The base image a VM's disk is on is unchanged (its identity against the disk's record;
/// nothing is hashed here), or, for a disk still to be made, the base image is in the image
/// store or can be fetched, or its file exists, can be read and is one castrad can use
/// (`image::base`: raw or qcow2, self-contained); the kernel and initrd can be read.
fn base_image(vm: &Vm, root: &StateRoot, store: &crate::images::Store) -> DoctorCheck {
    let vm_name = Some(vm.name.as_str());
    let paths = root.vm(&vm.name);
    if paths.overlay.exists()
        && let Some(record) = crate::images::disk::read(&paths.base_record)
    {
        let on = if record.stored {
            format!("the image store's copy of {}", record.source)
        } else {
            record.backing.display().to_string()
        };
        return match crate::images::FileIdentity::of(&record.backing) {
            Ok(now) if now == record.identity => DoctorCheck::ok(
                "base-image",
                vm_name,
                format!("the disk is on {on} (sha256:{}), unchanged", record.sha256),
            ),
            Ok(now) => DoctorCheck::warn(
                "base-image",
                vm_name,
                format!(
                    "the disk's base image {} changed since it was last checked ({})",
                    record.backing.display(),
                    now.changes_since(&record.identity).join(", ")
                ),
                "the next start hashes it again and refuses to boot unless its content is what \
                 the disk was made on: put the original file back, or `castractl down VM \
                 --discard` to start over",
            ),
            Err(e) => DoctorCheck::fail(
                "base-image",
                vm_name,
                format!(
                    "the disk's base image {} cannot be read: {e}",
                    record.backing.display()
                ),
                "put the file back, or `castractl down VM --discard` to start over",
            ),
        };
    }
    let Some(source) = vm.base_image.as_ref().and_then(|b| b.local()) else {
        return DoctorCheck::fail(
            "base-image",
            vm_name,
            "no base_image",
            "set base_image in castra.toml",
        );
    };
    let base = match source {
        crate::images::Source::File { path, .. } => path.as_path(),
        _ => {
            return match store.lookup(source, vm.image_mirror.as_deref()) {
                crate::images::Lookup::Stored(s) => DoctorCheck::ok(
                    "base-image",
                    vm_name,
                    format!(
                        "{}: in the image store (sha256:{}, {}, {:.1} GiB virtual)",
                        source.label(),
                        s.record.sha256,
                        s.record.format,
                        s.record.virtual_size as f64 / f64::from(1u32 << 30)
                    ),
                ),
                crate::images::Lookup::Missing { .. } => DoctorCheck::ok(
                    "base-image",
                    vm_name,
                    format!(
                        "{}: not in the image store yet; `up` (or `castractl image pull`) \
                         downloads it",
                        source.label()
                    ),
                ),
            };
        }
    };
    let files = [Some(base), vm.kernel.as_deref(), vm.initrd.as_deref()];
    for path in files.into_iter().flatten() {
        if let Err(e) = std::fs::File::open(path) {
            return DoctorCheck::fail(
                "base-image",
                vm_name,
                format!("{}: cannot be read: {e}", path.display()),
                "make it readable by castrad's user (chmod/chown), or point castra.toml at a \
                 readable file",
            );
        }
    }
    match crate::image::base(base) {
        Ok(info) => DoctorCheck::ok(
            "base-image",
            vm_name,
            format!(
                "{}: {}, {:.1} GiB virtual{}",
                base.display(),
                info.format,
                info.virtual_size as f64 / f64::from(1u32 << 30),
                if vm.kernel.is_some() {
                    ", kernel readable"
                } else {
                    ""
                }
            ),
        ),
        Err(e) => DoctorCheck::fail(
            "base-image",
            vm_name,
            crate::error::chain(&e).join(": "),
            "use a raw or qcow2 image without a backing file (the message says how)",
        ),
    }
}

/// The VM's fixed host ports (`ssh.port`, `port_forwards`) can be bound on loopback, as
/// QEMU will need them: the QEMU backend's own test (its preflight uses it too).
fn ports(vm: &Vm, running: bool) -> DoctorCheck {
    let vm_name = Some(vm.name.as_str());
    let wanted: Vec<(u16, &str, Protocol)> = qemu::fixed_ports(vm).collect();
    if wanted.is_empty() {
        return DoctorCheck::ok(
            "ports",
            vm_name,
            "no fixed host ports (ssh gets a free port at launch)",
        );
    }
    let list = wanted
        .iter()
        .map(|(port, _, protocol)| format!("{port}/{}", protocol.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    if running {
        return DoctorCheck::ok(
            "ports",
            vm_name,
            format!("{list}: held by this VM, which is running"),
        );
    }
    let taken: Vec<String> = wanted
        .iter()
        .filter(|(port, _, protocol)| !qemu::port_free(*port, *protocol))
        .map(|(port, key, protocol)| format!("{port}/{} ({key})", protocol.as_str()))
        .collect();
    if taken.is_empty() {
        DoctorCheck::ok("ports", vm_name, format!("{list}: free"))
    } else {
        DoctorCheck::fail(
            "ports",
            vm_name,
            format!("in use by another program: {}", taken.join(", ")),
            "stop what listens there (`ss -ltnup` shows it), or change the port in castra.toml",
        )
    }
}

/// The key files the VM's ssh and cloud-init seed read: `[vms.ssh] identity`, the
/// authorized keys of `[vms.cloud_init]`, and the project's own key once castrad made it.
fn keys(vm: &Vm, root: &StateRoot) -> DoctorCheck {
    let vm_name = Some(vm.name.as_str());
    let mut files: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(identity) = &vm.ssh.identity {
        files.push((identity.clone(), "ssh.identity"));
    }
    if vm.cloud_init.enabled {
        for key in &vm.cloud_init.authorized_keys {
            files.push((key.clone(), "cloud_init.authorized_keys"));
        }
        let project_key = root.project_key();
        if project_key.exists() {
            files.push((project_key, "castrad's key for the project"));
        }
    }
    if files.is_empty() {
        return DoctorCheck::ok(
            "keys",
            vm_name,
            "no key files (ssh uses its own defaults and agent)",
        );
    }
    let unreadable: Vec<String> = files
        .iter()
        .filter_map(|(path, what)| {
            std::fs::File::open(path)
                .err()
                .map(|e| format!("{} ({what}): {e}", path.display()))
        })
        .collect();
    if unreadable.is_empty() {
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        DoctorCheck::ok("keys", vm_name, format!("readable: {}", names.join(", ")))
    } else {
        DoctorCheck::fail(
            "keys",
            vm_name,
            format!("cannot be read: {}", unreadable.join("; ")),
            "make the key files readable by castrad's user, or fix their paths in castra.toml",
        )
    }
}
