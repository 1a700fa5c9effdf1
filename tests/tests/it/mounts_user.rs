//! Shared folders with castrad not root, as a systemd user service runs it: castrad runs
//! as uid 1000 (the cloud guest's login user has that uid too), with the kvm group and
//! nothing else. virtiofs still works there (virtiofsd in a user namespace), which matters
//! because Debian's cloud kernel has no 9p. One boot: a file crosses each way, the one the
//! guest wrote is the host user's, and the daemon lives exactly as long as the VM.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use crate::bootstrap::Up;
use crate::mounts::daemons;
use crate::support::{CASTRAD, Env, vm_of, wait_until};

const UID: u32 = 1000;

const SCRIPT: &str = r#"#!/bin/sh
set -eu
cat /src/from-host.txt > seen-at-bootstrap
echo "written by the guest" > /src/from-guest.txt
"#;

/// The real uid of `pid`, from /proc/<pid>/status.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_castrad_without_root_shares_folders_over_virtiofs() {
    let _lock = crate::qemu::one_at_a_time();
    let env = Env::new();
    let config = format!(
        "[project]\nname = \"usershares\"\n\n[[vms]]\nname = \"box\"\nbase_image = \"{}\"\n\
         cpus = 2\nmemory = \"1 GiB\"\n\n\
         [[vms.mounts]]\nhost = \"src\"\nguest = \"/src\"\n\n\
         [vms.ssh]\nuser = \"dev\"\n\n\
         [vms.bootstrap]\nscript = \"run.sh\"\nverify_path = \"seen-at-bootstrap\"\n\
         handshake_timeout_secs = 240\n",
        crate::cloud::image().display()
    );
    env.write(&[
        ("p/castra.toml", &config),
        ("p/run.sh", SCRIPT),
        ("p/src/from-host.txt", "written by the host\n"),
    ]);
    std::fs::create_dir_all(env.path("home")).unwrap();
    // Everything castrad uses is its user's; the shared directory keeps mode 0755, so only
    // the uid it is served as can write there.
    let chown = Command::new("chown")
        .args(["-R", &format!("{UID}:{UID}")])
        .arg(env.dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let project = env.path("p");
    let src = env.path("p/src");
    let kvm = nix::unistd::Group::from_name("kvm")
        .unwrap()
        .map(|g| g.gid.as_raw());

    let mut command = Command::new("setpriv");
    let castrad = env.castrad_command();
    for (k, v) in castrad.get_envs() {
        match v {
            Some(v) => command.env(k, v),
            None => command.env_remove(k),
        };
    }
    command
        .env("HOME", env.path("home"))
        .env_remove("XDG_RUNTIME_DIR")
        .args([
            format!("--reuid={UID}"),
            format!("--regid={UID}"),
            match kvm {
                Some(gid) => format!("--groups={gid}"),
                None => "--clear-groups".to_owned(),
            },
            "--inh-caps=-all".to_owned(),
            "--".to_owned(),
            CASTRAD.to_owned(),
        ])
        .args(castrad.get_args());
    let daemon = env.spawn_daemon(command);
    assert_eq!(uid_of(daemon.child.id()), UID);
    let ctl = |args: &[&str]| env.ctl(&project, args);
    let sh = |command: &str| env.guest_sh(&project, "box", command);

    // The plan already says virtiofs (before, a non-root castrad chose 9p).
    let plan = ctl(&["plan", "--json"]).ok().json();
    assert_eq!(
        plan["vms"][0]["mounts"][0]["transport"], "virtiofs",
        "{plan}"
    );

    let out = ctl(&["up", "--json"]);
    let up = Up::parse(out.code, &out.stdout, &out.stderr);
    assert_eq!(
        up.statuses(),
        ["Success"],
        "{}\n{}",
        up.stderr,
        daemon.log()
    );

    // The guest's login user has the host user's uid: the shared files are its own.
    assert_eq!(sh("id -u").trim(), UID.to_string());
    let types = sh("findmnt -no FSTYPE,OPTIONS /src");
    assert!(types.starts_with("virtiofs rw"), "{types}");
    // The bootstrap script read the host's file and wrote one back, owned by the host user.
    assert_eq!(
        sh("cat /var/tmp/castra/box/seen-at-bootstrap"),
        "written by the host\n"
    );
    let written = src.join("from-guest.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "written by the guest\n"
    );
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (UID, UID));
    // Live, both ways.
    std::fs::write(src.join("later.txt"), "after the boot\n").unwrap();
    nix::unistd::chown(
        &src.join("later.txt"),
        Some(nix::unistd::Uid::from_raw(UID)),
        Some(nix::unistd::Gid::from_raw(UID)),
    )
    .unwrap();
    assert_eq!(sh("cat /src/later.txt"), "after the boot\n");
    sh("echo edited >> /src/later.txt && mkdir /src/made && echo x > /src/made/f");
    assert_eq!(
        std::fs::read_to_string(src.join("later.txt")).unwrap(),
        "after the boot\nedited\n"
    );
    assert_eq!(std::fs::metadata(src.join("made/f")).unwrap().uid(), UID);
    // The guest's root is not mapped in the namespace: it cannot create files (as documented).
    let root = ctl(&["ssh", "box", "--", "sudo touch /src/by-root"]);
    assert_ne!(root.code, 0, "{root:?}");
    assert!(root.stderr.contains("Invalid argument"), "{root:?}");
    assert!(!src.join("by-root").exists());

    let status = ctl(&["status", "--json"]).ok().json();
    assert_eq!(vm_of(&status, "box")["mounts"][0]["transport"], "virtiofs");

    // One daemon, running as the host user (not root), until the VM is down.
    let running = daemons(&src);
    assert_eq!(running.len(), 1, "one virtiofsd for src");
    assert_eq!(uid_of(running[0]), UID);
    ctl(&["down", "--timeout", "20"]).ok();
    wait_until(Duration::from_secs(10), "virtiofsd gone", || {
        daemons(&src).is_empty().then_some(())
    });
    assert!(!env.project_state().join("vms/box/virtiofsd.json").exists());
}
