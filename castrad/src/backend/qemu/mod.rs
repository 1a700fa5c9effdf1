//! The QEMU backend: castrad boots the VM itself. The command line (`argv`), the accelerator
//! choice (`accel`), the QMP client (`qmp`) and the process's life on the host: overlays,
//! launch, re-adoption, cooperative shutdown (`process`). This file is the [`Backend`] face of
//! those pieces.

pub mod accel;
pub mod argv;
pub mod process;
pub mod qmp;

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::{Backend, BackendError, Machine, PreflightError};
use crate::config::{AccelSetting, BackendKind, Protocol, Vm};
use crate::ssh::Endpoint;
use crate::state_root::StateRoot;
use crate::vm::state::MachineInfo;

/// QEMU VMs; `accel_override` is castrad's `--accel`, which beats castra.toml.
#[derive(Debug, Default, Clone, Copy)]
pub struct Qemu {
    pub accel_override: Option<AccelSetting>,
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
        Some(Endpoint {
            host: vm.ssh.host.clone()?,
            port: machine?.ssh_port,
        })
    }

    fn preflight(&self, vms: &[&Vm]) -> Result<(), PreflightError> {
        if vms.is_empty() {
            return Ok(());
        }
        if which(argv::QEMU).is_none() {
            return Err(PreflightError::NotInstalled {
                program: argv::QEMU,
                packages: "qemu-system-x86 qemu-utils",
            });
        }
        for vm in vms {
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
    ) -> BoxFuture<'a, Result<Option<PathBuf>, BackendError>> {
        Box::pin(async move {
            let base = vm.base_image.as_deref().ok_or(BackendError::NoBaseImage)?;
            Ok(process::prepare_overlay(&root.vm(&vm.name), base).await?)
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
                serial_log: paths.serial_log.clone(),
                pidfile: paths.pidfile.clone(),
            };
            let q = process::launch(&spec, &paths, &choice.reason, config).await?;
            Ok(Box::new(q) as Box<dyn Machine>)
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
        process::discard(&paths)
            .map(|bytes| Some((paths.overlay.clone(), bytes)))
            .map_err(|source| process::ProcessError::Io {
                what: format!("cannot discard {}", paths.overlay.display()),
                source,
            })
            .map_err(BackendError::from)
    }
}

/// The path of `program` in $PATH, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
