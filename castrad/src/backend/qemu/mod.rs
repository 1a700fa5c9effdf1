//! The QEMU backend: castrad boots the VM itself. The command line (`argv`), the accelerator
//! choice (`accel`), the QMP client (`qmp`), the VM's capped logs (`console`) and the
//! process's life on the host: overlays, launch, re-adoption, cooperative shutdown
//! (`process`). This file is the [`Backend`] face of those pieces.

pub mod accel;
pub mod argv;
pub mod base;
pub mod console;
pub mod mounts;
pub mod overlay;
pub mod process;
pub mod qmp;
pub mod seed;

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::{Backend, BackendError, DiskInputs, Machine, PreflightError};
use crate::config::{AccelSetting, BackendKind, Firmware, Protocol, Vm};
use crate::ssh::{Endpoint, keys};
use crate::state_root::StateRoot;
use crate::vm::state::MachineInfo;

/// QEMU VMs; `accel_override` is castrad's `--accel`, which beats castra.toml.
#[derive(Debug, Default, Clone, Copy)]
pub struct Qemu {
    pub accel_override: Option<AccelSetting>,
}

/// The host ports a QEMU VM needs on loopback, fixed by its config: `ssh.port` (when set) and
/// its `port_forwards`, each with the key that asks for it.
pub fn fixed_ports(vm: &Vm) -> impl Iterator<Item = (u16, &'static str, Protocol)> + '_ {
    vm.ssh
        .port
        .iter()
        .map(|p| (*p, "ssh.port", Protocol::Tcp))
        .chain(
            vm.port_forwards
                .iter()
                .map(|f| (f.host, "port_forwards", f.protocol)),
        )
}

/// Whether `port` can be bound on 127.0.0.1 now (the socket is closed again at once).
pub fn port_free(port: u16, protocol: Protocol) -> bool {
    match protocol {
        Protocol::Tcp => std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        Protocol::Udp => std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
    }
}

impl Backend for Qemu {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn owns_lifecycle(&self) -> bool {
        true
    }

    /// The loopback port QEMU forwards to the guest's port 22, once it runs.
    fn ssh_endpoint(&self, vm: &Vm, machine: Option<&MachineInfo>) -> Option<Endpoint> {
        super::forwarded_endpoint(vm, machine)
    }

    fn preflight(&self, root: &StateRoot, vms: &[&Vm]) -> Result<(), PreflightError> {
        if vms.is_empty() {
            return Ok(());
        }
        if which(argv::QEMU).is_none() {
            return Err(PreflightError::NotInstalled {
                program: argv::QEMU,
                packages: "qemu-system-x86 qemu-utils",
            });
        }
        // The base file of each disk still to be made, once: there, self-contained, raw or
        // qcow2 (see `crate::image`). A disk that exists is on its own base (checked at its
        // start): the user's file may be gone by now. A URL's image is checked when fetched.
        let mut seen = std::collections::BTreeSet::new();
        for vm in vms {
            let Some(base) = vm.base_image.as_ref().and_then(|b| b.file()) else {
                continue;
            };
            if root.vm(&vm.name).overlay.exists() || !seen.insert(base) {
                continue;
            }
            super::check_base_file(&vm.name, base)?;
        }
        for vm in vms {
            for (port, key, protocol) in fixed_ports(vm) {
                if !port_free(port, protocol) {
                    return Err(PreflightError::PortInUse {
                        vm: vm.name.clone(),
                        port,
                        key,
                    });
                }
            }
        }
        Ok(())
    }

    fn prepare_disk<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a Vm,
        mut inputs: DiskInputs<'a>,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, BackendError>> {
        Box::pin(async move {
            let paths = root.vm(&vm.name);
            process::ensure_not_running(&paths)?;
            let new = if paths.overlay.exists() {
                // Before QEMU opens it: the disk's base still holds what it was made on.
                base::check_existing_async(root, vm, &paths).await?;
                overlay::grow_overlay(&paths, vm.disk_mib).await?;
                None
            } else {
                let base = base::for_new_disk(root, vm, &mut inputs).await?;
                let backing = overlay::Backing {
                    path: &base.path,
                    format: &base.format,
                    virtual_size: base.virtual_size,
                };
                let (images, config) = (inputs.images, inputs.config);
                let overlay = overlay::create_overlay(&paths, backing, vm.disk_mib, || {
                    base::register(&paths, &base, images, config, vm)
                })
                .await?;
                drop(base.lease);
                Some(overlay)
            };
            if vm.cloud_init.enabled && !paths.seed.exists() {
                let t = std::time::Instant::now();
                make_seed(root, vm)?;
                let seed_ms = t.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(vm = vm.name, seed_ms, "cloud-init seed and host key made");
            }
            Ok(new)
        })
    }

    fn launch<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a Vm,
        config: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>, BackendError>> {
        Box::pin(async move {
            let paths = root.vm(&vm.name);
            let setting = self.accel_override.unwrap_or(vm.accel);
            let choice = accel::choose(setting, &accel::probe())?;
            // Nothing of a running QEMU's (its virtiofsd daemons) is touched.
            process::ensure_not_running(&paths)?;
            let (transport, why) = mounts::choose(&mounts::probe());
            let shares = mounts::shares(&vm.mounts, transport, &paths);
            let ssh_port = match vm.ssh.port {
                Some(port) => port,
                None => process::free_port().map_err(BackendError::NoFreePort)?,
            };
            let spec = argv::LaunchSpec {
                vm: vm.name.clone(),
                accel: choice.accel,
                cpus: vm.cpus,
                memory_mib: vm.memory_mib,
                overlay: paths.overlay.clone(),
                kernel: vm.kernel.clone(),
                initrd: vm.initrd.clone(),
                cmdline: vm.cmdline.clone(),
                ssh_port,
                port_forwards: vm.port_forwards.clone(),
                qmp_socket: paths.qmp.clone(),
                serial_socket: paths.serial_socket.clone(),
                pidfile: paths.pidfile.clone(),
                seed: vm.cloud_init.enabled.then(|| paths.seed.clone()),
                uefi: match vm.firmware {
                    Firmware::Bios => None,
                    Firmware::Uefi => Some(uefi(&paths)?),
                },
                network: vm.network.clone(),
                shares,
            };
            let log_cap = vm.serial_log_max_bytes;
            let settings = launch_settings(root, vm);
            // The daemons last: nothing between their start and QEMU's can fail but QEMU.
            if let Some(shares) = &spec.shares {
                tracing::info!(vm = vm.name, transport = transport.as_str(), why, "mounts");
                mounts::start(&paths, shares).await?;
            }
            let opened = || base::check_opened(&vm.name, &paths);
            let launched = process::launch(
                &spec,
                &paths,
                &choice.reason,
                config,
                log_cap,
                settings,
                opened,
            )
            .await;
            if launched.is_err() {
                mounts::stop(&paths).await;
            }
            Ok(Box::new(launched?) as Box<dyn Machine>)
        })
    }

    fn running_records(&self, root: &StateRoot) -> Vec<(String, PathBuf)> {
        root.vm_names()
            .into_iter()
            .filter_map(|vm| {
                let record = process::read_record(&root.vm(&vm))?;
                Some((vm, record.config))
            })
            .collect()
    }

    fn adopt<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a str,
    ) -> BoxFuture<'a, Option<Box<dyn Machine>>> {
        Box::pin(async move {
            let q = process::adopt(&root.vm(vm)).await?;
            Some(Box::new(q) as Box<dyn Machine>)
        })
    }

    fn forget(&self, root: &StateRoot, vm: &str) {
        process::forget(&root.vm(vm));
    }

    fn discard(&self, root: &StateRoot, vm: &str) -> Result<Option<(PathBuf, u64)>, BackendError> {
        let paths = root.vm(vm);
        if !paths.overlay.exists() {
            return Ok(None);
        }
        overlay::discard(&paths)
            .map(|bytes| Some((paths.overlay.clone(), bytes)))
            .map_err(BackendError::from)
    }
}

/// OVMF as Debian installs it (package ovmf): the code, and the template of the variables.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// UEFI for the VM: OVMF's code, and the VM's own variables (copied from OVMF's template on
/// first use; they live with the disk and are discarded with it).
fn uefi(paths: &crate::state_root::VmPaths) -> Result<argv::Uefi, BackendError> {
    if !Path::new(OVMF_CODE).exists() || !Path::new(OVMF_VARS).exists() {
        return Err(BackendError::NoFirmware {
            code: OVMF_CODE,
            vars: OVMF_VARS,
        });
    }
    if !paths.efi_vars.exists() {
        let template = std::fs::read(OVMF_VARS).map_err(|source| process::ProcessError::Io {
            what: format!("reading {OVMF_VARS}"),
            source,
        })?;
        crate::fsutil::write_atomic(&paths.efi_vars, &template).map_err(|source| {
            process::ProcessError::Io {
                what: format!("writing {}", paths.efi_vars.display()),
                source,
            }
        })?;
    }
    Ok(argv::Uefi {
        code: OVMF_CODE.into(),
        vars: paths.efi_vars.clone(),
    })
}

/// The account castrad logs in as: `[vms.ssh] user`, else (as ssh itself would) the local
/// user's name.
pub fn login_user(vm: &Vm) -> String {
    vm.ssh.user.clone().unwrap_or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".to_owned())
    })
}

/// The seed of the VM's current disk: the project's client key (made once), a new host key
/// for the guest, pinned as the only key this VM may present, and the seed volume itself.
pub(crate) fn make_seed(root: &StateRoot, vm: &Vm) -> Result<(), BackendError> {
    let paths = root.vm(&vm.name);
    let disk_id =
        std::fs::read_to_string(&paths.disk_id).map_err(|source| process::ProcessError::Io {
            what: format!("reading {}", paths.disk_id.display()),
            source,
        })?;
    let mut authorized_keys = vec![keys::ensure_project_key(&root.project_key())?];
    for file in &vm.cloud_init.authorized_keys {
        let text = read(file)?;
        authorized_keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let user_data = vm.cloud_init.user_data.as_deref().map(read).transpose()?;
    let alias = crate::ssh::host_key_alias(&vm.name);
    let host_key = keys::generate(&paths.host_key_tmp, &alias)?;
    let user = login_user(vm);
    let seed = seed::Seed {
        vm: &vm.name,
        instance_id: format!("castra-{}", disk_id.trim()),
        user: &user,
        authorized_keys,
        host_key: &host_key,
        user_data: user_data.as_deref(),
        network: vm.network.as_ref(),
        bootcmd: mounts::guest_command(&vm.mounts).into_iter().collect(),
    };
    let inputs = crate::hashing::seed_inputs(vm)
        .map_err(|e| process::ProcessError::Failed(e.to_string()))?;
    keys::pin_seeded(&paths.known_hosts, &alias, &host_key.public)?;
    seed::write(&paths.seed, &seed).map_err(|source| process::ProcessError::Io {
        what: format!("writing {}", paths.seed.display()),
        source,
    })?;
    let seeded = serde_json::to_vec(&crate::drift::Seeded::of(vm))
        .map_err(|e| process::ProcessError::Failed(e.to_string()))?;
    crate::fsutil::write_atomic(&paths.seed_settings, &seeded).map_err(|source| {
        process::ProcessError::Io {
            what: format!("writing {}", paths.seed_settings.display()),
            source,
        }
    })?;
    crate::fsutil::write_atomic(&paths.seed_inputs, format!("{inputs}\n").as_bytes()).map_err(
        |source| process::ProcessError::Io {
            what: format!("writing {}", paths.seed_inputs.display()),
            source,
        },
    )?;
    Ok(())
}

/// What `vm` is launched with (`drift::LaunchSettings`): castra.toml's settings, and for a
/// cloud-init guest what its disk's seed gave it (recorded by [`make_seed`]; for a seed made
/// before that record existed, today's settings when the seed's inputs are today's, else
/// unknown).
pub(crate) fn launch_settings(root: &StateRoot, vm: &Vm) -> crate::drift::LaunchSettings {
    let mut settings = crate::drift::LaunchSettings::of(vm);
    if vm.cloud_init.enabled {
        let paths = root.vm(&vm.name);
        settings.seed = std::fs::read(&paths.seed_settings)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .or_else(|| {
                let recorded = std::fs::read_to_string(&paths.seed_inputs).ok()?;
                let now = crate::hashing::seed_inputs(vm).ok()?;
                (recorded.trim() == now).then(|| crate::drift::Seeded::of(vm))
            });
    }
    settings
}

fn read(path: &Path) -> Result<String, BackendError> {
    std::fs::read_to_string(path).map_err(|source| {
        BackendError::from(process::ProcessError::Io {
            what: format!("reading {}", path.display()),
            source,
        })
    })
}

/// The path of `program` in $PATH, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_init_guests_launch_records_its_seeds_settings_not_castra_tomls() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(dir.path(), "p", &dir.path().join("castra.toml"));
        let mut vm = crate::testutil::sample_vm(dir.path());
        let paths = root.vm(&vm.name);
        std::fs::create_dir_all(&paths.dir).unwrap();
        assert_eq!(
            launch_settings(&root, &vm).seed,
            None,
            "no cloud-init, no seed"
        );
        vm.cloud_init.enabled = true;
        // A seed made before its settings were recorded: known when its inputs are today's.
        assert_eq!(launch_settings(&root, &vm).seed, None);
        let inputs = crate::hashing::seed_inputs(&vm).unwrap();
        std::fs::write(&paths.seed_inputs, format!("{inputs}\n")).unwrap();
        let today = crate::drift::Seeded::of(&vm);
        assert_eq!(launch_settings(&root, &vm).seed, Some(today.clone()));
        // The record wins over castra.toml's settings.
        let made = crate::drift::Seeded {
            network: Some("10.142.7.10".into()),
            mounts: vec!["/src (ro)".into()],
        };
        std::fs::write(&paths.seed_settings, serde_json::to_vec(&made).unwrap()).unwrap();
        let s = launch_settings(&root, &vm);
        assert_eq!(s.seed, Some(made));
        assert_eq!(s.network, today.network, "QEMU gets castra.toml's");
    }
}
