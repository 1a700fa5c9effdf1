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
    let per_vm = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (vm, running) in project.vms.iter().zip(running) {
            if vm.backend == BackendKind::Qemu {
                out.push(base_image(vm));
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

/// The base image, kernel and initrd exist, can be read, and the base is one castrad can use
/// (`image::base`: raw or qcow2, self-contained).
fn base_image(vm: &Vm) -> DoctorCheck {
    let vm_name = Some(vm.name.as_str());
    let Some(base) = vm.base_image.as_ref().and_then(|b| b.file()) else {
        return DoctorCheck::fail(
            "base-image",
            vm_name,
            "no base_image",
            "set base_image in castra.toml",
        );
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
