//! Shared folders with castrad not root, as a systemd user service runs it: castrad runs
//! as uid and gid 1000 (the cloud guest's login user has those too) with supplementary
//! groups, as a user service gets its user's. virtiofs still works there (virtiofsd in a user
//! namespace), which matters because Debian's cloud kernel has no 9p. QEMU 7.2's virtiofsd
//! drops supplementary groups when it starts, which a user namespace allows only when its
//! group map was written by newgidmap (uidmap), from one of the user's subordinate gids: so
//! castrad's process tree sees a user database entry and an /etc/subgid of the test's own
//! (bind-mounted in a mount namespace of its own; the host's /etc is not touched). Without a
//! subgid range, castrad falls back to 9p and says what to add; with one, one boot: a file
//! crosses each way, the one the guest wrote is the host user's, a read-only share holds, and
//! the daemons live exactly as long as the VM.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::bootstrap::Up;
use crate::mounts::daemons;
use crate::support::{CASTRACTL, CASTRAD, Ctl, Env, passwd_with, uid_of, vm_of, wait_until};

const UID: u32 = 1000;
const USER: &str = "castra-user";

/// Bind-mounts `$1` on /etc/passwd and `$2` on /etc/subgid, then runs the rest.
const ETC: &str = "mount --bind -- \"$1\" /etc/passwd && mount --bind -- \"$2\" /etc/subgid && \
shift 2 && exec \"$@\"";

/// castrad's supplementary groups, a login user's kind: users (100), and /dev/kvm's group
/// where there is one (then KVM is castrad's to use, where the host allows it).
fn groups() -> String {
    let kvm = std::fs::metadata("/dev/kvm").map(|m| m.gid());
    match kvm {
        Ok(gid) if gid != 0 && gid != 100 => format!("--groups=100,{gid}"),
        _ => "--groups=100".to_owned(),
    }
}

const SCRIPT: &str = r#"#!/bin/sh
set -eu
cat /src/from-host.txt > seen-at-bootstrap
echo "written by the guest" > /src/from-guest.txt
"#;

#[test]
fn a_castrad_without_root_shares_folders_over_virtiofs() {
    let _lock = crate::qemu::one_at_a_time();
    let env = Env::new();
    let config = format!(
        "[project]\nname = \"usershares\"\n\n[[vms]]\nname = \"box\"\nbase_image = \"{}\"\n\
         cpus = 2\nmemory = \"1 GiB\"\n\n\
         [[vms.mounts]]\nhost = \"src\"\nguest = \"/src\"\nreadonly = false\n\n\
         [[vms.mounts]]\nhost = \"docs\"\nguest = \"/srv/docs\"\n\n\
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

    // The user database castrad's tree sees: the host's, with uid UID as `castra-user` (its
    // primary group UID, its home the test's), which newgidmap requires.
    let passwd = passwd_with(UID, USER, &env.path("home"));
    env.write(&[
        ("etc/passwd", &passwd),
        ("etc/subgid-none", "someone-else:100000:65536\n"),
        ("etc/subgid", &format!("{USER}:100000:65536\n")),
    ]);
    let (etc_passwd, subgid_none, subgid) = (
        env.path("etc/passwd"),
        env.path("etc/subgid-none"),
        env.path("etc/subgid"),
    );
    // `program` as UID with `groups` as its supplementary groups (setpriv), in a mount
    // namespace where /etc/passwd and /etc/subgid are the test's `passwd` and `subgid`.
    let as_user = |subgid: &Path, groups: &str, program: &str| {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", ETC])
            .arg("castra-etc")
            .args([&etc_passwd, subgid])
            .args([
                "setpriv".to_owned(),
                format!("--reuid={UID}"),
                format!("--regid={UID}"),
                groups.to_owned(),
                "--inh-caps=-all".to_owned(),
                "--".to_owned(),
                program.to_owned(),
            ]);
        command
    };
    let groups = groups();
    let castrad_as_user = |subgid: &Path| {
        let castrad = env.castrad_command();
        let mut command = as_user(subgid, &groups, CASTRAD);
        for (k, v) in castrad.get_envs() {
            match v {
                Some(v) => command.env(k, v),
                None => command.env_remove(k),
            };
        }
        command
            .env("HOME", env.path("home"))
            .env_remove("XDG_RUNTIME_DIR")
            .args(castrad.get_args());
        let daemon = env.spawn_daemon(command);
        assert_eq!(uid_of(daemon.child.id()), UID);
        daemon
    };
    // castrad answers only its own user: castractl runs as that uid too.
    let ctl = |args: &[&str]| {
        let out = as_user(&subgid, "--clear-groups", CASTRACTL)
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

    // doctor's verdict on shared folders.
    let shares_check = || {
        let doctor = ctl(&["doctor", "--json"]).json();
        let checks = doctor["checks"].as_array().unwrap();
        let shares = checks.iter().find(|c| c["check"] == "virtiofsd");
        shares
            .unwrap_or_else(|| panic!("no virtiofsd check: {doctor}"))
            .clone()
    };

    // No subordinate gids: QEMU 7.2's virtiofsd cannot start in a user namespace, so 9p, and
    // doctor says what is missing and the command that adds it.
    let daemon = castrad_as_user(&subgid_none);
    let plan = ctl(&["plan", "--json"]).ok().json();
    assert_eq!(plan["vms"][0]["mounts"][0]["transport"], "9p", "{plan}");
    let shares = shares_check();
    assert_eq!(shares["status"], "warn", "{shares}");
    let verdict = shares["verdict"].as_str().unwrap();
    for part in [
        "supplementary groups",
        &format!("/etc/subgid has no range for {USER} (uid {UID})"),
    ] {
        assert!(verdict.contains(part), "{part:?} in {shares}");
    }
    let fix = shares["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("sudo usermod --add-subgids 165536-231071 {USER}")),
        "{shares}"
    );
    assert!(daemon.terminate().success());

    // With a range: virtiofs (before, a castrad with supplementary groups always chose 9p).
    let _daemon = castrad_as_user(&subgid);
    // A failed assertion below still stops the VM (dropped before the castrad above).
    let _down = Down(|| {
        let _ = ctl(&["down", "--timeout", "5"]);
    });
    let plan = ctl(&["plan", "--json"]).ok().json();
    assert_eq!(
        plan["vms"][0]["mounts"][0]["transport"], "virtiofs",
        "{plan}"
    );
    let shares = shares_check();
    assert_eq!(shares["status"], "ok", "{shares}");
    assert!(
        shares["verdict"]
            .as_str()
            .unwrap()
            .contains("in a user namespace whose group map newgidmap wrote"),
        "{shares}"
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
