//! Shared folders with castrad not root, as a systemd user service runs it: castrad runs
//! as uid and gid 1000 (the cloud guest's login user has those too). virtiofs still works
//! there (virtiofsd in a user namespace), which matters because Debian's cloud kernel has no
//! 9p. One boot: a file crosses each way, the one the guest wrote is the host user's, a
//! read-only share holds, and the daemons live exactly as long as the VM.
//!
//! QEMU 7.2's virtiofsd insists on dropping supplementary groups, which a user namespace
//! does not allow: a castrad with any falls back to 9p. So the booting castrad has none, and
//! so no /dev/kvm on this host (mode 0660, group kvm): the guest runs under TCG, slower.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use crate::bootstrap::Up;
use crate::mounts::daemons;
use crate::support::{CASTRACTL, CASTRAD, Ctl, Env, vm_of, wait_until};

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
         [[vms.mounts]]\nhost = \"docs\"\nguest = \"/srv/docs\"\nreadonly = true\n\n\
         [vms.ssh]\nuser = \"dev\"\n\n\
         [vms.bootstrap]\nscript = \"run.sh\"\nverify_path = \"seen-at-bootstrap\"\n\
         handshake_timeout_secs = 600\n",
        crate::cloud::image().display()
    );
    env.write(&[
        ("p/castra.toml", &config),
        ("p/run.sh", SCRIPT),
        ("p/src/from-host.txt", "written by the host\n"),
        ("p/docs/readme.txt", "read me\n"),
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

    // castrad as UID, with `groups` (a setpriv option) as its supplementary groups.
    let castrad_as_user = |groups: &str| {
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
                groups.to_owned(),
                "--inh-caps=-all".to_owned(),
                "--".to_owned(),
                CASTRAD.to_owned(),
            ])
            .args(castrad.get_args());
        let daemon = env.spawn_daemon(command);
        assert_eq!(uid_of(daemon.child.id()), UID);
        daemon
    };
    // castrad answers only its own user: castractl runs as that uid too.
    let ctl = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args([
                format!("--reuid={UID}"),
                format!("--regid={UID}"),
                "--clear-groups".to_owned(),
                "--".to_owned(),
                CASTRACTL.to_owned(),
            ])
            .args(args)
            .current_dir(&project)
            .env("CASTRA_SOCKET", env.socket())
            .env("HOME", env.path("home"))
            .output()
            .expect("run castractl");
        Ctl {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Ctl::from(out)
        }
    };
    let sh = |command: &str| {
        let out = ctl(&["ssh", "box", "--", command]);
        assert_eq!(out.code, 0, "guest command {command:?}: {out:?}");
        out.stdout
    };

    // With a supplementary group, QEMU 7.2's virtiofsd cannot start there: 9p.
    let daemon = castrad_as_user("--groups=100");
    let plan = ctl(&["plan", "--json"]).ok().json();
    assert_eq!(plan["vms"][0]["mounts"][0]["transport"], "9p", "{plan}");
    assert!(daemon.terminate().success());

    // Without: the plan says virtiofs (before, a non-root castrad always chose 9p).
    let _daemon = castrad_as_user("--clear-groups");
    // A failed assertion below still stops the VM (dropped before the castrad above).
    let _down = Down(|| {
        let _ = ctl(&["down", "--timeout", "5"]);
    });
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
        "{out:?}\nvirtiofsd: {}",
        std::fs::read_to_string(env.project_state().join("vms/box/virtiofsd.log"))
            .unwrap_or_default()
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

    // Read-only, held by the host (the bind mount in virtiofsd's namespace): the guest's
    // user, whose uid may write the directory, cannot even after remounting it read-write.
    assert_eq!(sh("cat /srv/docs/readme.txt"), "read me\n");
    let remounted = ctl(&[
        "ssh",
        "box",
        "--",
        "sudo mount -o remount,rw /srv/docs && touch /srv/docs/new",
    ]);
    assert_ne!(remounted.code, 0, "{remounted:?}");
    assert!(
        remounted.stderr.contains("Read-only file system"),
        "{remounted:?}"
    );
    assert!(!env.path("p/docs/new").exists());

    let status = ctl(&["status", "--json"]).ok().json();
    assert_eq!(vm_of(&status, "box")["mounts"][0]["transport"], "virtiofs");
    assert_eq!(vm_of(&status, "box")["mounts"][1]["transport"], "virtiofs");

    // One daemon, running as the host user (not root), until the VM is down.
    let docs = env.path("p/docs");
    for dir in [&src, &docs] {
        let running = daemons(dir);
        assert_eq!(running.len(), 1, "one virtiofsd for {}", dir.display());
        assert_eq!(uid_of(running[0]), UID);
    }
    ctl(&["down", "--timeout", "20"]).ok();
    wait_until(Duration::from_secs(10), "virtiofsd gone", || {
        (daemons(&src).is_empty() && daemons(&docs).is_empty()).then_some(())
    });
    assert!(!env.project_state().join("vms/box/virtiofsd.json").exists());
}

/// Runs its closure when dropped: the test's `down`, even when an assertion failed first.
struct Down<F: Fn()>(F);

impl<F: Fn()> Drop for Down<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
