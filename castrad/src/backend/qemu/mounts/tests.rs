use super::*;
use crate::state_root::StateRoot;

fn paths() -> VmPaths {
    StateRoot::for_project(Path::new("/s"), "p", Path::new("/p/castra.toml")).vm("web")
}

/// `paths().dir`, as text.
fn d() -> String {
    paths().dir.display().to_string()
}

fn mounts() -> Vec<Mount> {
    vec![
        Mount {
            host: "/p/src".into(),
            guest: "/src".into(),
            readonly: false,
        },
        Mount {
            host: "/p/a,b".into(),
            guest: "/data set".into(),
            readonly: true,
        },
    ]
}

#[test]
fn virtiofs_when_a_virtiofsd_can_run_else_9p_saying_why() {
    let found = Some(PathBuf::from("/usr/lib/qemu/virtiofsd"));
    let probe = |virtiofsd: &Option<PathBuf>, root: bool, userns: Result<UserNs, NoUserNs>| Probe {
        virtiofsd: virtiofsd.clone(),
        root,
        userns,
    };
    let groups = NoUserNs {
        plain: "setgroups() failed with error=1:Operation not permitted".into(),
        newgidmap: userns::NoNewgidmap::Missing(vec![
            userns::Missing::Newgidmap,
            userns::Missing::Subgid {
                user: "alice".into(),
                uid: 1000,
                free: (100000, 165535),
            },
        ]),
    };
    let mapped = UserNs::Newgidmap {
        subgid: 100000,
        inner: 0,
    };
    // Root: virtiofs, whatever user namespaces do.
    let (t, why) = choose(&probe(&found, true, Err(groups.clone())));
    assert_eq!(
        (t, why.as_str()),
        (Transport::Virtiofs, "virtiofsd: /usr/lib/qemu/virtiofsd")
    );
    // Not root: virtiofs in a user namespace whose group map newgidmap wrote...
    let (t, why) = choose(&probe(&found, false, Ok(mapped)));
    assert_eq!(
        (t, why.as_str()),
        (
            Transport::Virtiofs,
            "virtiofsd: /usr/lib/qemu/virtiofsd in a user namespace whose group map newgidmap \
             wrote (castrad is not root)"
        )
    );
    // ... or in a plain one.
    let (t, why) = choose(&probe(&found, false, Ok(UserNs::Plain)));
    assert_eq!(
        (t, why.as_str()),
        (
            Transport::Virtiofs,
            "virtiofsd: /usr/lib/qemu/virtiofsd in a user namespace (castrad is not root)"
        )
    );
    // Not root and no user namespace: 9p, saying why and what to do. Supplementary groups:
    // what newgidmap's group map lacks, and the commands that give it.
    let (t, why) = choose(&probe(&found, false, Err(groups.clone())));
    assert_eq!(t, Transport::NineP);
    let install = crate::distro::install(&[crate::distro::Package::Uidmap]);
    let fix = format!(
        "to fix: install it: {install}; give alice subordinate group ids: sudo usermod \
         --add-subgids 100000-165535 alice"
    );
    for part in [
        "needs root or a user namespace",
        "(setgroups() failed with error=1:Operation not permitted: castrad has supplementary \
         groups",
        "newgidmap is not installed, and /etc/subgid has no range for alice (uid 1000)",
        fix.as_str(),
    ] {
        assert!(why.contains(part), "{part:?} in {why}");
    }
    // No user namespaces at all: not a matter of groups.
    let off = NoUserNs {
        plain: "unshare: unshare failed: Operation not permitted".into(),
        newgidmap: userns::NoNewgidmap::Failed {
            subgid: 100000,
            inner: 0,
            why: "unshare: unshare failed: Operation not permitted".into(),
        },
    };
    let (t, why) = choose(&probe(&found, false, Err(off)));
    assert_eq!(t, Transport::NineP);
    assert!(
        why.contains("(unshare: unshare failed: Operation not permitted; with newgidmap")
            && why.contains("allow unprivileged user namespaces"),
        "{why}"
    );
    for (root, userns) in [
        (true, Ok(UserNs::Plain)),
        (false, Ok(mapped)),
        (false, Err(groups)),
    ] {
        let (t, why) = choose(&probe(&None, root, userns));
        assert_eq!(t, Transport::NineP);
        assert!(why.contains("no virtiofsd installed"), "{why}");
    }
}

#[test]
fn virtiofs_shares_memory_and_adds_a_vhost_user_device_per_mount() {
    let shares = shares(&mounts(), Transport::Virtiofs, &paths()).unwrap();
    let d = d();
    assert_eq!(
        argv(&shares, 1024).join(" "),
        format!(
            "-object memory-backend-memfd,id=castra-mem,size=1024M,share=on \
             -numa node,memdev=castra-mem \
             -chardev socket,id=castra-fs0,path={d}/fs0.sock \
             -device vhost-user-fs-pci,chardev=castra-fs0,tag=castra0 \
             -chardev socket,id=castra-fs1,path={d}/fs1.sock \
             -device vhost-user-fs-pci,chardev=castra-fs1,tag=castra1"
        )
    );
}

#[test]
fn nine_p_is_qemus_own_read_only_where_asked_with_commas_escaped() {
    let shares = shares(&mounts(), Transport::NineP, &paths()).unwrap();
    assert_eq!(
        argv(&shares, 1024),
        [
            "-virtfs",
            "local,path=/p/src,mount_tag=castra0,security_model=none,id=castra-fs0",
            "-virtfs",
            "local,path=/p/a,,b,mount_tag=castra1,security_model=none,id=castra-fs1,readonly=on",
        ]
    );
    assert!(super::shares(&[], Transport::NineP, &paths()).is_none());
}

#[test]
fn the_launch_spec_carries_the_shares_onto_qemus_command_line() {
    use super::super::argv as qemu;
    let paths = paths();
    let spec = qemu::LaunchSpec {
        vm: "web".into(),
        accel: qemu::Accel::Tcg,
        cpus: 1,
        memory_mib: 512,
        overlay: paths.overlay.clone(),
        kernel: None,
        initrd: None,
        cmdline: None,
        ssh_port: 2222,
        port_forwards: vec![],
        qmp_socket: paths.qmp.clone(),
        serial_socket: paths.serial_socket.clone(),
        pidfile: paths.pidfile.clone(),
        seed: None,
        uefi: None,
        network: None,
        shares: shares(&mounts()[..1], Transport::Virtiofs, &paths),
    };
    let a: Vec<String> = qemu::argv(&spec)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let j = a.join(" ");
    assert!(j.contains("-m 512M"), "{j}");
    assert!(
        j.contains(
            "memory-backend-memfd,id=castra-mem,size=512M,share=on -numa node,memdev=castra-mem"
        ),
        "{j}"
    );
    assert!(
        j.contains("-device vhost-user-fs-pci,chardev=castra-fs0,tag=castra0"),
        "{j}"
    );
    let mut none = spec.clone();
    none.shares = None;
    let j = qemu::argv(&none)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        !j.contains("memfd") && !j.contains("-numa") && !j.contains("vhost-user"),
        "{j}"
    );
}

#[test]
fn a_read_only_share_runs_its_virtiofsd_behind_a_read_only_bind_mount() {
    let shares = shares(&mounts(), Transport::Virtiofs, &paths()).unwrap();
    let bin = Path::new("/usr/lib/qemu/virtiofsd");
    let words = |c: Vec<std::ffi::OsString>| {
        c.iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(virtiofsd_command(bin, &shares.dirs[0], Privilege::Root)),
        [
            "setsid",
            "/usr/lib/qemu/virtiofsd",
            &format!("--socket-path={}/fs0.sock", d()),
            "-o",
            "source=/p/src",
            "-o",
            "cache=auto",
            "-o",
            "log_level=warn",
        ]
    );
    let ro = words(virtiofsd_command(bin, &shares.dirs[1], Privilege::Root));
    assert_eq!(ro[..4], ["setsid", "unshare", "--mount", "--propagation"]);
    // The directory is an argument of the shell, never part of its program.
    let program = ro.iter().position(|w| w == "-c").unwrap() + 1;
    assert!(!ro[program].contains("/p/a"), "{ro:?}");
    assert_eq!(ro[program + 2], "/p/a,b");
    assert_eq!(ro[program + 3], "/usr/lib/qemu/virtiofsd");
}

/// The guest's script, run by a real sh against stand-ins of mountpoint and mount: each
/// directory made, virtiofs tried first, 9p after it, read-only passed on, paths with spaces
/// kept whole, a failure reported after trying the rest.
#[test]
fn the_guest_script_mounts_each_share_falling_back_to_9p() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("calls");
    let stub = |name: &str, body: &str| crate::testutil::stub_command(&bin, name, body);
    stub("mountpoint", "exit 1");
    // virtiofs fails for castra1, so it falls back to 9p; 9p works.
    stub(
        "mount",
        &format!(
            "printf '%s|' \"$@\" >>{log}; echo >>{log}; \
             [ \"$2\" = virtiofs ] && [ \"$6\" = castra1 ] && exit 32; exit 0",
            log = log.display()
        ),
    );
    let root = dir.path().join("guest");
    let mut ms = mounts();
    for m in &mut ms {
        m.guest = format!("{}{}", root.display(), m.guest);
    }
    let command = guest_command(&ms).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("PATH", path)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(root.join("src").is_dir() && root.join("data set").is_dir());
    let calls = std::fs::read_to_string(&log).unwrap();
    let r = root.display();
    assert_eq!(
        calls,
        format!(
            "-t|virtiofs|-o|rw|--|castra0|{r}/src|\n\
             -t|virtiofs|-o|ro|--|castra1|{r}/data set|\n\
             -t|9p|-o|trans=virtio,version=9p2000.L,msize=262144,ro|--|castra1|{r}/data set|\n"
        )
    );
    stub("mount", "exit 32");
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(guest_command(&[]).is_none());
}

#[test]
fn without_root_virtiofsd_runs_in_a_user_namespace_mapping_castrads_own_ids() {
    let shares = shares(&mounts(), Transport::Virtiofs, &paths()).unwrap();
    let bin = Path::new("/usr/lib/qemu/virtiofsd");
    let words = |share: &Share, userns: UserNs| {
        virtiofsd_command(
            bin,
            share,
            Privilege::UserNs {
                userns,
                nofile: 4096,
            },
        )
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
    };
    let mapped = UserNs::Newgidmap {
        subgid: 165536,
        inner: 0,
    };
    for (userns, map) in [
        (UserNs::Plain, None),
        (mapped, Some("--map-groups=165536,0,1")),
    ] {
        for (share, mode) in shares.dirs.iter().zip(["rw", "ro"]) {
            let c = words(share, userns);
            let mut prelude = vec!["setsid", "unshare", "--user", "--map-current-user"];
            prelude.extend(map);
            prelude.extend(["--keep-caps", "--mount", "--propagation", "private", "--"]);
            assert_eq!(c[..prelude.len()], prelude);
            let program = c.iter().position(|w| w == "-c").unwrap() + 1;
            // The directory is an argument of the shell, never part of its program.
            assert!(!c[program].contains("/p/"), "{c:?}");
            assert!(c[program].contains("mount -t tmpfs"), "{c:?}");
            assert_eq!(c[program + 2], mode);
            assert_eq!(c[program + 3], share.host.to_string_lossy());
            assert_eq!(c[program + 4], "/usr/lib/qemu/virtiofsd");
            assert_eq!(c.last().unwrap(), "--rlimit-nofile=4096");
        }
    }
}

/// The namespace script, run by a real sh with a stand-in `mount`: /run gets its tmpfs, a
/// read-only share its bind mount, and virtiofsd its arguments untouched.
#[test]
fn the_user_namespace_script_mounts_then_execs_virtiofsd() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let mount = dir.path().join("mount");
    std::fs::write(
        &mount,
        format!(
            "#!/bin/sh\nprintf '%s|' \"$@\" >>{}; echo >>{0}\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    for mode in ["rw", "ro"] {
        let _ = std::fs::remove_file(&log);
        let out = std::process::Command::new("sh")
            .args(["-c", USERNS_SCRIPT, "castra-virtiofsd", mode, "/p/a b"])
            .args(["echo", "served", "-o", "source=/p/a b"])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "served -o source=/p/a b\n"
        );
        let calls = std::fs::read_to_string(&log).unwrap();
        let tmpfs = "-t|tmpfs|-o|mode=0700|castra-virtiofsd|/run|\n";
        if mode == "rw" {
            assert_eq!(calls, tmpfs);
        } else {
            assert_eq!(calls, format!("{tmpfs}--bind|-o|ro|--|/p/a b|/p/a b|\n"));
        }
    }
}

/// Issue 25: the seed's mount script checks each mount point as the driver checks remote_dir:
/// a parent another guest account replaced with a symbolic link, or one others can write to,
/// is refused before anything is made or mounted there; the other mounts go on.
#[test]
fn the_seeds_mount_script_refuses_a_symlinked_or_writable_parent() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = d.join("calls");
    crate::testutil::stub_command(&bin, "mountpoint", "exit 1");
    crate::testutil::stub_command(&bin, "mount", &format!("echo \"$*\" >>{}", calls.display()));
    std::fs::create_dir_all(d.join("elsewhere")).unwrap();
    std::fs::create_dir_all(d.join("open/sub")).unwrap();
    std::os::unix::fs::symlink(d.join("elsewhere"), d.join("link")).unwrap();
    std::fs::set_permissions(d.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut ms = mounts();
    ms[0].guest = format!("{}/link/src", d.display());
    ms[1].guest = format!("{}/open/sub/docs", d.display());
    let mut ok = ms[1].clone();
    ok.guest = format!("{}/fine/new/dir", d.display());
    ms.push(ok);
    let command = guest_command(&ms).unwrap();
    let out = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    let r = d.display();
    assert!(
        said.contains(&format!(
            "not mounting at {r}/link/src: {r}/link is a symbolic link"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "not mounting at {r}/open/sub/docs: {r}/open is owned by uid"
        )),
        "{said}"
    );
    assert!(
        std::fs::read_dir(d.join("elsewhere"))
            .unwrap()
            .next()
            .is_none(),
        "nothing made"
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!("-t virtiofs -o ro -- castra2 {r}/fine/new/dir\n"),
        "only the third is mounted"
    );
}
