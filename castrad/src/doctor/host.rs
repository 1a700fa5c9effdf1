//! The machine's checks: the programs castrad runs, the accelerator, the state directory.

use std::path::{Path, PathBuf};

use castra_api::DoctorCheck;

use crate::backend::qemu::accel::{self, AccelSetting, KvmProbe};
use crate::backend::qemu::argv::{Accel, QEMU};
use crate::backend::qemu::mounts;
use crate::distro::{self, Package};
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
        program("qemu", QEMU, Package::Qemu),
        program("qemu-img", "qemu-img", Package::QemuImg),
        kvm(s.accel_override, &accel::probe()),
        virtiofsd(),
        state_dir(&s.state_base),
        disk_space(&s.state_base),
        fd_limit(s.max_parallel),
        ssh(),
    ]
}

/// `program --version`, which castrad cannot work without.
fn program(check: &str, program: &str, package: Package) -> DoctorCheck {
    match super::version_of(program, &["--version"]) {
        Ok(version) => DoctorCheck::ok(check, None, version),
        Err(why) => DoctorCheck::fail(
            check,
            None,
            format!("{program}: {why}"),
            format!("install it: {}", distro::install(&[package])),
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
                Ok(()) if probe.pvm => "nothing to do here: this host's KVM is kvm_pvm (no \
                                        hardware virtualization), so VMs run under TCG; for \
                                        KVM, use a host with VT-x/AMD-V or nested virtualization"
                    .to_owned(),
                Err(e) if e.contains("ermission denied") => format!(
                    "add yourself to the kvm group (sudo usermod -aG kvm \"$USER\"), log in \
                     again, then {}",
                    castra_api::RESTART_CASTRAD
                ),
                Err(e) if e.contains("No such file") => "enable virtualization (VT-x/AMD-V) in \
                                                         the firmware, or nested virtualization \
                                                         on the VM host, and load kvm_intel or \
                                                         kvm_amd"
                    .to_owned(),
                _ => "VMs run under TCG until castrad can open /dev/kvm read-write".to_owned(),
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
    let probe = mounts::probe();
    let version = match (mounts::choose(&probe).0, &probe.virtiofsd) {
        (mounts::Transport::Virtiofs, Some(path)) => Some(virtiofsd_version(&probe, path)),
        _ => None,
    };
    shares_verdict(&probe, version, &distro::install(&[Package::Virtiofsd]))
}

/// `virtiofsd --version` where castrad would run it: as it is when castrad is root, else in
/// the user namespace the probe chose (QEMU 7.2's virtiofsd drops its supplementary groups
/// before anything else, which fails outside such a namespace).
fn virtiofsd_version(probe: &mounts::Probe, path: &Path) -> Result<String, String> {
    let path = path.to_string_lossy();
    match (&probe.userns, probe.root) {
        (Ok(ns), false) => {
            let mut argv = ns.prelude();
            argv.extend(["--".to_owned(), path.into_owned(), "--version".to_owned()]);
            let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
            super::version_of(&argv[0], &args)
        }
        _ => super::version_of(&path, &["--version"]),
    }
}

/// Pure: the verdict on shared folders, given what was probed, `virtiofsd --version` where
/// virtiofs is the transport, and the command that installs virtiofsd here. A virtiofsd that
/// cannot say its version is a warning: it may not start for a VM either.
fn shares_verdict(
    probe: &mounts::Probe,
    version: Option<Result<String, String>>,
    install: &str,
) -> DoctorCheck {
    let (transport, why) = mounts::choose(probe);
    let unmountable = "a guest kernel without 9p (Debian's cloud kernels) cannot mount them";
    match (transport, &probe.virtiofsd, &probe.userns) {
        (mounts::Transport::Virtiofs, Some(path), _) => match version {
            Some(Err(failed)) => DoctorCheck::warn(
                "virtiofsd",
                None,
                format!(
                    "shared folders over {why}, but `{} --version` failed: {failed}",
                    path.display()
                ),
                format!(
                    "see why {} does not run as castrad's user; VMs with [[vms.mounts]] may fail \
                     to start until it does (reinstall: {install})",
                    path.display()
                ),
            ),
            Some(Ok(version)) => DoctorCheck::ok(
                "virtiofsd",
                None,
                format!("shared folders over {why} ({version})"),
            ),
            None => DoctorCheck::ok("virtiofsd", None, format!("shared folders over {why}")),
        },
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
                format!("install virtiofsd: {install}")
            } else {
                "run castrad as root".to_owned()
            },
        ),
    }
}

/// The state directory, or (before castrad's first start, which creates it) the nearest
/// directory above it that exists.
fn existing(base: &Path) -> &Path {
    base.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn state_dir(base: &Path) -> DoctorCheck {
    use nix::unistd::{AccessFlags, access};
    let there = existing(base);
    match access(there, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) if there == base => {
            DoctorCheck::ok("state-dir", None, format!("{} is writable", base.display()))
        }
        Ok(()) => DoctorCheck::ok(
            "state-dir",
            None,
            format!(
                "{} does not exist yet; castrad creates it ({} is writable)",
                base.display(),
                there.display()
            ),
        ),
        Err(e) if there != base => DoctorCheck::fail(
            "state-dir",
            None,
            format!(
                "{} does not exist, and castrad cannot create it: {} is not writable: {}",
                base.display(),
                there.display(),
                e.desc()
            ),
            "make it writable by castrad's user, or start castrad with --state-dir (or \
             CASTRA_STATE_DIR) on a writable file system",
        ),
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
    match nix::sys::statvfs::statvfs(existing(base)) {
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
    let fix = format!("install it: {}", distro::install(&[Package::OpenSsh]));
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
    use castra_api::CheckStatus;

    const INSTALL: &str = "on Debian GNU/Linux 13 (trixie): sudo apt-get install virtiofsd";

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
        let version = || Some(Ok("virtiofsd version 7.2.22".to_owned()));
        let root = shares_verdict(
            &mounts::Probe {
                virtiofsd: Some(path.clone()),
                root: true,
                userns: Err(groups.clone()),
            },
            version(),
            INSTALL,
        );
        assert_eq!(root.status, CheckStatus::Ok, "{root:?}");
        assert!(
            root.verdict.starts_with("shared folders over virtiofs")
                && root.verdict.ends_with("(virtiofsd version 7.2.22)"),
            "{root:?}"
        );
        let newgidmap = mounts::Probe {
            virtiofsd: Some(path.clone()),
            root: false,
            userns: Ok(mounts::UserNs::Newgidmap {
                subgid: 100000,
                inner: 0,
            }),
        };
        let mapped = shares_verdict(&newgidmap, version(), INSTALL);
        assert_eq!(mapped.status, CheckStatus::Ok, "{mapped:?}");
        assert!(mapped.verdict.contains("newgidmap"), "{mapped:?}");
        let user = shares_verdict(
            &mounts::Probe {
                virtiofsd: Some(path.clone()),
                root: false,
                userns: Err(groups),
            },
            None,
            INSTALL,
        );
        assert_eq!(user.status, CheckStatus::Warn, "{user:?}");
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
        let none = shares_verdict(
            &mounts::Probe {
                virtiofsd: None,
                root: true,
                userns: Ok(mounts::UserNs::Plain),
            },
            None,
            INSTALL,
        );
        assert_eq!(none.status, CheckStatus::Warn, "{none:?}");
        assert_eq!(
            none.fix.as_deref().unwrap(),
            format!("install virtiofsd: {INSTALL}")
        );
    }

    /// Issue 24: virtiofs is the transport, but virtiofsd fails when asked its version (as
    /// QEMU 7.2's did, run outside its user namespace): a warning quoting the failure, never
    /// an `ok` line with the failure in it.
    #[test]
    fn a_virtiofsd_that_fails_is_never_ok() {
        let probe = mounts::Probe {
            virtiofsd: Some(PathBuf::from("/usr/lib/qemu/virtiofsd")),
            root: false,
            userns: Ok(mounts::UserNs::Newgidmap {
                subgid: 100000,
                inner: 0,
            }),
        };
        let failed = "`/usr/lib/qemu/virtiofsd --version` failed (exit status: 1): \
                      setgroups() failed with error=1:Operation not permitted";
        let check = shares_verdict(&probe, Some(Err(failed.to_owned())), INSTALL);
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        assert!(check.verdict.contains("setgroups() failed"), "{check:?}");
        assert!(check.fix.as_deref().unwrap().contains(INSTALL), "{check:?}");
    }
}
