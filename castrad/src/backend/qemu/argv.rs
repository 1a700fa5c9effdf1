//! The QEMU command line of a VM. Pure: data in, argv out, unit-tested.
//!
//! Choices: `q35` machine, `-nodefaults`/`-no-user-config` so nothing outside castra.toml
//! changes the VM, virtio disk and network, user-mode networking with host forwards bound to
//! 127.0.0.1 only, a QMP socket for control, the serial console on a socket castrad reads
//! (`console`: QEMU waits for castrad before it starts the guest), a pidfile. On a project
//! network (`config::network`), a second NIC after the user-mode one, on the project's
//! loopback multicast group, with its fixed MAC.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::network::Attachment;
use crate::config::{PortForward, Protocol};

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Everything the command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub vm: String,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub overlay: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// Host port forwarded (on 127.0.0.1) to the guest's port 22.
    pub ssh_port: u16,
    pub port_forwards: Vec<PortForward>,
    pub qmp_socket: PathBuf,
    /// Where QEMU listens for castrad's connection to the serial console.
    pub serial_socket: PathBuf,
    pub pidfile: PathBuf,
    /// The NoCloud seed, attached read-only as a second disk.
    pub seed: Option<PathBuf>,
    /// UEFI firmware (read-only code, the VM's own variables); None: QEMU's BIOS.
    pub uefi: Option<Uefi>,
    /// The VM's place on the project network: a second NIC.
    pub network: Option<Attachment>,
    /// `[[vms.mounts]]` and their transport (`mounts`); None: no mounts.
    pub shares: Option<super::mounts::Shares>,
}

/// OVMF's code and the VM's copy of its variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uefi {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// The QEMU binary for the host architecture.
pub const QEMU: &str = "qemu-system-x86_64";

/// QEMU's `-drive`/`-netdev` option values separate fields with commas; a comma inside a
/// value is written twice.
fn escape_commas(path: &std::path::Path) -> OsString {
    let s = path.as_os_str().to_string_lossy();
    OsString::from(s.replace(',', ",,"))
}

pub fn argv(spec: &LaunchSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    let machine = match spec.accel {
        Accel::Kvm => "q35,accel=kvm",
        Accel::Tcg => "q35,accel=tcg",
    };
    let cpu = match spec.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    push(&[
        "-name",
        &format!("castra-{},process=castra-{}", spec.vm, spec.vm),
    ]);
    push(&["-machine", machine, "-cpu", cpu]);
    push(&[
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
    ]);
    // -S: the guest's CPUs wait for castrad's `cont` (QMP), which castrad sends once it has
    // checked again, after QEMU opened the disk, that the disk's base is what it was made on.
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-S"]);

    let mut serial = OsString::from("socket,id=serial0,path=");
    serial.push(escape_commas(&spec.serial_socket));
    serial.push(",server=on,wait=on");
    a.extend([
        "-chardev".into(),
        serial,
        "-serial".into(),
        "chardev:serial0".into(),
    ]);

    if let Some(kernel) = &spec.kernel {
        a.push("-kernel".into());
        a.push(kernel.into());
        if let Some(initrd) = &spec.initrd {
            a.push("-initrd".into());
            a.push(initrd.into());
        }
        a.push("-append".into());
        a.push(
            spec.cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0".into())
                .into(),
        );
    }

    if let Some(uefi) = &spec.uefi {
        let mut code = OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
        code.push(escape_commas(&uefi.code));
        let mut vars = OsString::from("if=pflash,format=raw,unit=1,file=");
        vars.push(escape_commas(&uefi.vars));
        a.extend(["-drive".into(), code, "-drive".into(), vars]);
    }

    let mut drive = OsString::from("file=");
    drive.push(escape_commas(&spec.overlay));
    drive.push(",if=virtio,format=qcow2,cache=writeback,discard=unmap");
    a.push("-drive".into());
    a.push(drive);
    if let Some(seed) = &spec.seed {
        let mut drive = OsString::from("file=");
        drive.push(escape_commas(seed));
        drive.push(",if=virtio,format=raw,readonly=on");
        a.push("-drive".into());
        a.push(drive);
    }

    let mut netdev = format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22", spec.ssh_port);
    for f in &spec.port_forwards {
        let proto = match f.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        netdev.push_str(&format!(
            ",hostfwd={proto}:127.0.0.1:{}-:{}",
            f.host, f.guest
        ));
    }
    a.push("-netdev".into());
    a.push(netdev.into());
    a.push("-device".into());
    a.push("virtio-net-pci,netdev=net0".into());
    if let Some(net) = &spec.network {
        a.extend(project_nic(net).into_iter().map(OsString::from));
    }
    if let Some(shares) = &spec.shares {
        a.extend(
            super::mounts::argv(shares, spec.memory_mib)
                .into_iter()
                .map(OsString::from),
        );
    }

    let mut qmp = OsString::from("unix:");
    qmp.push(escape_commas(&spec.qmp_socket));
    qmp.push(",server=on,wait=off");
    a.push("-qmp".into());
    a.push(qmp);
    a.push("-pidfile".into());
    a.push(spec.pidfile.clone().into());
    a
}

/// The project network's NIC: QEMU's socket backend on the project's multicast group, sent
/// and received on the loopback interface only (`localaddr`), so no frame leaves the host.
/// Every QEMU of the project joins the group; each sees the others' frames, as on a hub.
pub fn project_nic(net: &Attachment) -> [String; 4] {
    [
        "-netdev".into(),
        format!(
            "socket,id=net1,mcast={}:{},localaddr=127.0.0.1",
            net.group, net.port
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=net1,mac={}", net.mac),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            vm: "web-0".into(),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 512,
            overlay: "/s/vms/web-0/overlay.qcow2".into(),
            kernel: Some("/g/vmlinuz".into()),
            initrd: Some("/g/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            ssh_port: 40022,
            port_forwards: vec![
                PortForward {
                    host: 8080,
                    guest: 80,
                    protocol: Protocol::Tcp,
                },
                PortForward {
                    host: 5353,
                    guest: 53,
                    protocol: Protocol::Udp,
                },
            ],
            qmp_socket: "/s/vms/web-0/qmp.sock".into(),
            serial_socket: "/s/vms/web-0/serial.sock".into(),
            pidfile: "/s/vms/web-0/qemu.pid".into(),
            seed: None,
            uefi: None,
            network: None,
            shares: None,
        }
    }

    fn joined(spec: &LaunchSpec) -> String {
        argv(spec)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_vm_with_direct_kernel_boot_and_forwards() {
        assert_eq!(
            joined(&spec()),
            "-name castra-web-0,process=castra-web-0 -machine q35,accel=tcg -cpu max -smp 2 -m 512M \
             -nodefaults -no-user-config -display none -S \
             -chardev socket,id=serial0,path=/s/vms/web-0/serial.sock,server=on,wait=on -serial chardev:serial0 \
             -kernel /g/vmlinuz -initrd /g/initrd.img -append console=ttyS0 quiet \
             -drive file=/s/vms/web-0/overlay.qcow2,if=virtio,format=qcow2,cache=writeback,discard=unmap \
             -netdev user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53 \
             -device virtio-net-pci,netdev=net0 -qmp unix:/s/vms/web-0/qmp.sock,server=on,wait=off \
             -pidfile /s/vms/web-0/qemu.pid"
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_disk_boot_has_no_kernel_flags() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.kernel = None;
        let j = joined(&s);
        assert!(j.contains("-machine q35,accel=kvm -cpu host"), "{j}");
        assert!(
            !j.contains("-kernel") && !j.contains("-initrd") && !j.contains("-append"),
            "{j}"
        );
    }

    #[test]
    fn a_cloud_image_boots_from_its_disk_with_the_seed_and_uefi() {
        let mut s = spec();
        s.kernel = None;
        s.seed = Some("/s/vms/web-0/seed.img".into());
        s.uefi = Some(Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/s/vms/web-0/efi-vars.fd".into(),
        });
        let j = joined(&s);
        assert!(
            j.contains(
                "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
                 -drive if=pflash,format=raw,unit=1,file=/s/vms/web-0/efi-vars.fd \
                 -drive file=/s/vms/web-0/overlay.qcow2,if=virtio,format=qcow2,cache=writeback,discard=unmap \
                 -drive file=/s/vms/web-0/seed.img,if=virtio,format=raw,readonly=on"
            ),
            "{j}"
        );
    }

    /// QEMU never guesses a format: every drive says its own (the overlay's backing format is
    /// recorded in the overlay by `qemu-img create -F`).
    #[test]
    fn every_drive_names_its_format() {
        let mut s = spec();
        s.seed = Some("/s/vms/web-0/seed.img".into());
        s.uefi = Some(Uefi {
            code: "/c.fd".into(),
            vars: "/v.fd".into(),
        });
        let a = argv(&s);
        let drives: Vec<String> = a
            .windows(2)
            .filter(|w| w[0] == "-drive" || w[0] == "-blockdev")
            .map(|w| w[1].to_string_lossy().into_owned())
            .collect();
        assert_eq!(drives.len(), 4);
        for d in drives {
            assert!(d.split(',').any(|f| f.starts_with("format=")), "{d}");
        }
        assert!(!a.iter().any(|w| w == "-hda" || w == "-cdrom"), "{a:?}");
    }

    /// The project network is a second NIC after the user-mode one (which keeps SSH and the
    /// forwards), with the fixed MAC; without it there is one NIC.
    #[test]
    fn a_project_network_adds_a_second_nic_after_the_user_mode_one() {
        let mut s = spec();
        assert_eq!(argv(&s).iter().filter(|a| *a == "-netdev").count(), 1);
        s.network = Some(Attachment {
            address: "10.120.7.11".parse().unwrap(),
            prefix: 24,
            mac: "52:54:00:78:07:0b".into(),
            group: "239.255.3.4".parse().unwrap(),
            port: 23456,
            hosts: vec![],
        });
        let j = joined(&s);
        assert!(
            j.contains(
                "-device virtio-net-pci,netdev=net0 \
                 -netdev socket,id=net1,mcast=239.255.3.4:23456,localaddr=127.0.0.1 \
                 -device virtio-net-pci,netdev=net1,mac=52:54:00:78:07:0b -qmp"
            ),
            "{j}"
        );
        assert!(
            j.contains("-netdev user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,"),
            "{j}"
        );
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut s = spec();
        s.overlay = "/a,b/overlay.qcow2".into();
        assert!(joined(&s).contains("file=/a,,b/overlay.qcow2,if=virtio"));
    }
}
