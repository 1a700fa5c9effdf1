//! The machine's checks: the programs castrad runs, the accelerator, the state directory.

use std::path::{Path, PathBuf};

use castra_api::DoctorCheck;

use crate::backend::qemu::accel::{self, AccelSetting, KvmProbe};
use crate::backend::qemu::argv::{Accel, QEMU};
use crate::backend::qemu::mounts;
use crate::pipeline::slots::{FDS_PER_VM, MOST_FDS_PER_SLOT};

/// What the checks need of castrad's settings.
pub struct Settings {
    pub state_base: PathBuf,
    pub accel_override: Option<AccelSetting>,
    pub max_parallel: u32,
}

/// Below this much free space in the state directory, a check fails; below [`LOW_SPACE`], it
/// warns (each VM's overlay grows as its guest writes).
pub const NO_SPACE: u64 = 1 << 30;
pub const LOW_SPACE: u64 = 4 << 30;

pub fn checks(s: &Settings) -> Vec<DoctorCheck> {
    vec![
        program("qemu", QEMU, "qemu-system-x86"),
        program("qemu-img", "qemu-img", "qemu-utils"),
        kvm(s.accel_override, &accel::probe()),
        virtiofsd(),
        state_dir(&s.state_base),
        disk_space(&s.state_base),
        fd_limit(s.max_parallel),
        ssh(),
    ]
}

/// `program --version`, which castrad cannot work without.
fn program(check: &str, program: &str, package: &str) -> DoctorCheck {
    match super::version_of(program, &["--version"]) {
        Ok(version) => DoctorCheck::ok(check, None, version),
        Err(why) => DoctorCheck::fail(
            check,
            None,
            format!("{program}: {why}"),
            format!("install it: apt-get install {package} (Debian; scripts/setup does)"),
        ),
    }
}

/// Pure: the accelerator castrad would choose for a VM with `accel = "auto"` (or castrad's
/// `--accel`), and when that is TCG, why and what to do.
pub fn kvm(accel_override: Option<AccelSetting>, probe: &KvmProbe) -> DoctorCheck {
    let setting = accel_override.unwrap_or(AccelSetting::Auto);
    match accel::choose(setting, probe) {
        Err(unusable) => DoctorCheck::fail(
            "kvm",
            None,
            format!("castrad runs with --accel kvm, but {}", unusable.why),
            "start castrad with --accel auto (or CASTRA_ACCEL=auto), or make /dev/kvm usable",
        ),
        Ok(choice) if choice.accel == Accel::Kvm => {
            DoctorCheck::ok("kvm", None, format!("KVM ({})", choice.reason))
        }
        Ok(choice) if setting == AccelSetting::Tcg => DoctorCheck::ok(
            "kvm",
            None,
            format!("TCG (castrad --accel tcg: {})", choice.reason),
        ),
        Ok(choice) => {
            let fix = match &probe.device {
                Ok(()) if probe.pvm => {
                    "nothing to do here: this host's KVM is kvm_pvm (no hardware virtualization), \
                     so VMs run under TCG; for KVM, use a host with VT-x/AMD-V or nested \
                     virtualization"
                }
                Err(e) if e.contains("ermission denied") => {
                    "add yourself to the kvm group (sudo adduser $USER kvm), log in again, and \
                     restart castrad (systemctl --user restart castrad)"
                }
                Err(e) if e.contains("No such file") => {
                    "enable virtualization (VT-x/AMD-V) in the firmware, or nested \
                     virtualization on the VM host, and load kvm_intel or kvm_amd"
                }
                _ => "VMs run under TCG until castrad can open /dev/kvm read-write",
            };
            DoctorCheck::warn("kvm", None, format!("TCG, slower ({})", choice.reason), fix)
        }
    }
}

/// How shared folders would reach a guest now: the transport castrad's QEMU backend would
/// choose (`mounts::choose`: virtiofs as root, or in a user namespace when virtiofsd can run
/// in one; else 9p) and why. 9p is a warning (Debian's cloud kernels have no 9p at all) whose
/// fix is what the missing piece is: a virtiofsd, or what its user namespace lacks.
fn virtiofsd() -> DoctorCheck {
    shares_verdict(&mounts::probe())
}

fn shares_verdict(probe: &mounts::Probe) -> DoctorCheck {
    let (transport, why) = mounts::choose(probe);
    let unmountable = "a guest kernel without 9p (Debian's cloud kernels) cannot mount them";
    match (transport, &probe.virtiofsd, &probe.userns) {
        (mounts::Transport::Virtiofs, Some(path), _) => {
            let version =
                super::version_of(&path.to_string_lossy(), &["--version"]).unwrap_or_else(|e| e);
            DoctorCheck::ok(
                "virtiofsd",
                None,
                format!("shared folders over {why} ({version})"),
            )
        }
        // The verdict says what is missing, the fix what to do (choose's reason has both).
        (_, Some(path), Err(no)) => DoctorCheck::warn(
            "virtiofsd",
            None,
            format!(
                "shared folders over 9p: castrad is not root and cannot run {} in a user \
                 namespace ({no}); {unmountable}",
                path.display()
            ),
            format!("{} (docs/CONFIGURATION.md, shared folders)", no.fix()),
        ),
        (_, found, _) => DoctorCheck::warn(
            "virtiofsd",
            None,
            format!("shared folders over {why}; {unmountable}"),
            if found.is_none() {
                "install virtiofsd (Debian 13: apt-get install virtiofsd; Debian 12: \
                 qemu-system-common brings /usr/lib/qemu/virtiofsd)"
            } else {
                "run castrad as root"
            },
        ),
    }
}

fn state_dir(base: &Path) -> DoctorCheck {
    use nix::unistd::{AccessFlags, access};
    match access(base, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) => DoctorCheck::ok("state-dir", None, format!("{} is writable", base.display())),
        Err(e) => DoctorCheck::fail(
            "state-dir",
            None,
            format!("{} is not writable: {}", base.display(), e.desc()),
            "make it writable by castrad's user, or start castrad with --state-dir (or \
             CASTRA_STATE_DIR) on a writable file system",
        ),
    }
}

fn disk_space(base: &Path) -> DoctorCheck {
    match nix::sys::statvfs::statvfs(base) {
        Ok(st) => space(
            base,
            st.blocks_available().saturating_mul(st.fragment_size()),
        ),
        Err(e) => DoctorCheck::fail(
            "disk-space",
            None,
            format!(
                "cannot read the free space of {}: {}",
                base.display(),
                e.desc()
            ),
            "check that the state directory exists and is on a mounted file system",
        ),
    }
}

/// Pure: the verdict on `free` bytes in the state directory `base`.
pub fn space(base: &Path, free: u64) -> DoctorCheck {
    let verdict = format!("{} free in {}", gib(free), base.display());
    let fix = "free some space there: VM disks (overlays) grow as guests write; `castractl down \
               --discard` deletes a VM's disk";
    if free < NO_SPACE {
        DoctorCheck::fail("disk-space", None, verdict, fix)
    } else if free < LOW_SPACE {
        DoctorCheck::warn("disk-space", None, verdict, fix)
    } else {
        DoctorCheck::ok("disk-space", None, verdict)
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn fd_limit(max_parallel: u32) -> DoctorCheck {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => files(soft, max_parallel),
        Err(e) => DoctorCheck::warn(
            "fd-limit",
            None,
            format!("cannot read castrad's open file limit: {}", e.desc()),
            "check castrad's log",
        ),
    }
}

/// Pure: the verdict on castrad's open file limit `limit` (which it raised to the hard limit
/// at start), as castrad's start-up warning counts it.
pub fn files(limit: u64, max_parallel: u32) -> DoctorCheck {
    let slots = u64::from(max_parallel) * MOST_FDS_PER_SLOT;
    let vms = limit.saturating_sub(slots + 64) / FDS_PER_VM;
    let verdict =
        format!("open file limit {limit}: room for about {vms} VMs with {max_parallel} busy slots");
    if vms < 256 {
        DoctorCheck::warn(
            "fd-limit",
            None,
            verdict,
            "raise the hard limit (LimitNOFILE= in castrad's unit, or ulimit -Hn before \
             starting castrad), or lower castrad --max-parallel",
        )
    } else {
        DoctorCheck::ok("fd-limit", None, verdict)
    }
}

/// The OpenSSH client castrad runs (ssh, and ssh-keygen for keys).
fn ssh() -> DoctorCheck {
    let fix = "install it: apt-get install openssh-client";
    match (
        super::version_of("ssh", &["-V"]),
        super::version_of("ssh-keygen", &["-l", "-f", "/dev/null"]),
    ) {
        (Err(why), _) => DoctorCheck::fail("ssh", None, format!("ssh: {why}"), fix),
        // ssh-keygen -l on an empty file fails, but it ran: only a missing program counts.
        (Ok(_), Err(why)) if why == "not found in PATH" => {
            DoctorCheck::fail("ssh", None, format!("ssh-keygen: {why}"), fix)
        }
        (Ok(version), _) => DoctorCheck::ok("ssh", None, version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_check_says_which_transport_and_what_would_give_virtiofs() {
        let path = PathBuf::from("/nonexistent/virtiofsd");
        let groups = mounts::NoUserNs {
            plain: "setgroups() failed with error=1:Operation not permitted".into(),
            newgidmap: mounts::userns::NoNewgidmap::Missing(vec![
                mounts::userns::Missing::Subgid {
                    user: "alice".into(),
                    uid: 1000,
                    free: (100000, 165535),
                },
            ]),
        };
        let root = shares_verdict(&mounts::Probe {
            virtiofsd: Some(path.clone()),
            root: true,
            userns: Err(groups.clone()),
        });
        assert_eq!(root.status, castra_api::CheckStatus::Ok, "{root:?}");
        assert!(
            root.verdict.starts_with("shared folders over virtiofs"),
            "{root:?}"
        );
        let mapped = shares_verdict(&mounts::Probe {
            virtiofsd: Some(path.clone()),
            root: false,
            userns: Ok(mounts::UserNs::Newgidmap {
                subgid: 100000,
                inner: 0,
            }),
        });
        assert_eq!(mapped.status, castra_api::CheckStatus::Ok, "{mapped:?}");
        assert!(mapped.verdict.contains("newgidmap"), "{mapped:?}");
        let user = shares_verdict(&mounts::Probe {
            virtiofsd: Some(path),
            root: false,
            userns: Err(groups),
        });
        assert_eq!(user.status, castra_api::CheckStatus::Warn, "{user:?}");
        for part in [
            "setgroups",
            "supplementary groups",
            "/etc/subgid has no range for alice (uid 1000)",
            "cannot mount them",
        ] {
            assert!(user.verdict.contains(part), "{part:?} in {user:?}");
        }
        assert_eq!(
            user.fix.as_deref().unwrap(),
            "give alice subordinate group ids: sudo usermod --add-subgids 100000-165535 alice (a \
             range no other user has), then restart castrad (docs/CONFIGURATION.md, shared \
             folders)"
        );
        let none = shares_verdict(&mounts::Probe {
            virtiofsd: None,
            root: true,
            userns: Ok(mounts::UserNs::Plain),
        });
        assert_eq!(none.status, castra_api::CheckStatus::Warn, "{none:?}");
        assert!(
            none.fix.as_deref().unwrap().contains("install virtiofsd"),
            "{none:?}"
        );
    }
}
