//! Shared folders (`[[vms.mounts]]`) on the stock cloud image, in one boot: the seed mounts
//! them before sshd starts, so the bootstrap script already sees them; a file crosses each
//! way on a read-write mount; a read-only mount refuses the guest's writes even after the
//! guest remounts it read-write (the host enforces it); plan and status name the transport;
//! castrad's virtiofsd daemons live exactly as long as the VM.
//!
//! The transport is virtiofs: the test host has virtiofsd and castrad runs as root there
//! (scripts/setup, CI). The 9p fallback cannot be booted with these guests (Debian's cloud
//! kernel has no 9p), so it is covered by castrad's unit tests (`backend::qemu::mounts`).

use std::path::Path;
use std::time::Duration;

use crate::bootstrap::Up;
use crate::support::{Env, vm_of, wait_until};

const SCRIPT: &str = r#"#!/bin/sh
set -eu
cat /src/from-host.txt > seen-at-bootstrap
echo "written by the guest" > /src/from-guest.txt
"#;

/// The running virtiofsd daemons whose command line names `dir`: one pid per daemon (a
/// virtiofsd may fork into its sandbox; the child, whose parent is a match, is not counted).
pub(crate) fn daemons(dir: &Path) -> Vec<u32> {
    let dir = format!("source={}", dir.display());
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (cmdline.contains("virtiofsd") && cmdline.contains(&dir) && state != "Z")
                .then_some((pid, ppid))
        })
        .collect();
    all.iter()
        .filter(|(_, ppid)| !all.iter().any(|(pid, _)| pid == ppid))
        .map(|(pid, _)| *pid)
        .collect()
}

#[test]
fn shared_folders_cross_both_ways_and_read_only_holds() {
    let _lock = crate::qemu::one_at_a_time();
    let env = Env::new();
    let config = format!(
        "[project]\nname = \"shares\"\n\n[[vms]]\nname = \"box\"\nbase_image = \"{}\"\n\
         cpus = 2\nmemory = \"1 GiB\"\n\n\
         [[vms.mounts]]\nhost = \"src\"\nguest = \"/src\"\n\n\
         [[vms.mounts]]\nhost = \"docs\"\nguest = \"/srv/docs\"\nreadonly = true\n\n\
         [vms.ssh]\nuser = \"dev\"\n\n\
         [vms.bootstrap]\nscript = \"run.sh\"\nverify_path = \"seen-at-bootstrap\"\n\
         handshake_timeout_secs = 240\n",
        crate::cloud::image().display()
    );
    env.write(&[
        ("p/castra.toml", &config),
        ("p/run.sh", SCRIPT),
        ("p/src/from-host.txt", "written by the host\n"),
        ("p/docs/readme.txt", "read me\n"),
    ]);
    let project = env.path("p");
    let src = env.path("p/src");
    let docs = env.path("p/docs");
    // The guest's login user is not the host's: let it write to the shared directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o777)).unwrap();
    let daemon = env.start_daemon();
    let ctl = |args: &[&str]| env.ctl(&project, args);
    let sh = |command: &str| env.guest_sh(&project, "box", command);

    // The plan shows each mount, its options and the transport a launch will use.
    let plan = ctl(&["plan", "--json"]).ok().json();
    let mounts = plan["vms"][0]["mounts"].as_array().unwrap().clone();
    assert_eq!(mounts.len(), 2, "{plan}");
    assert_eq!(mounts[0]["host"], src.to_string_lossy().as_ref());
    assert_eq!(mounts[0]["guest"], "/src");
    assert_eq!(mounts[0]["readonly"], false);
    assert_eq!(mounts[1]["guest"], "/srv/docs");
    assert_eq!(mounts[1]["readonly"], true);
    for m in &mounts {
        assert_eq!(m["transport"], "virtiofs", "{plan}");
    }
    // PROTOCOL.md's mount object is this one.
    let scrub = crate::examples::Scrub::new().path(&project, "/home/me/shop");
    crate::examples::assert_matches("plan-mount", &mounts[..1], &scrub);
    let text = ctl(&["plan"]).ok().stdout;
    assert!(
        text.contains("box: ") && text.contains("-> /srv/docs (ro, virtiofs)"),
        "{text}"
    );

    let out = ctl(&["up", "--json"]);
    let up = Up::parse(out.code, &out.stdout, &out.stderr);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);

    // The bootstrap script read the host's file through the mount and wrote one back.
    assert_eq!(
        sh("cat /var/tmp/castra/box/seen-at-bootstrap"),
        "written by the host\n"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
    // Live, both ways.
    std::fs::write(src.join("later.txt"), "after the boot\n").unwrap();
    std::fs::set_permissions(
        src.join("later.txt"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    assert_eq!(sh("cat /src/later.txt"), "after the boot\n");
    sh("echo edited >> /src/later.txt");
    assert_eq!(
        std::fs::read_to_string(src.join("later.txt")).unwrap(),
        "after the boot\nedited\n"
    );
    let types = sh("findmnt -no FSTYPE,OPTIONS /src; findmnt -no FSTYPE,OPTIONS /srv/docs");
    assert!(types.starts_with("virtiofs rw"), "{types}");
    assert!(types.contains("\nvirtiofs ro"), "{types}");

    // Read-only: the guest reads, and cannot write, not even as root after remounting it
    // read-write: the host side is read-only too.
    assert_eq!(sh("cat /srv/docs/readme.txt"), "read me\n");
    let write = ctl(&["ssh", "box", "--", "sudo touch /srv/docs/new"]);
    assert_ne!(write.code, 0, "{write:?}");
    assert!(write.stderr.contains("Read-only file system"), "{write:?}");
    let remounted = ctl(&[
        "ssh",
        "box",
        "--",
        "sudo mount -o remount,rw /srv/docs && sudo touch /srv/docs/new",
    ]);
    assert_ne!(remounted.code, 0, "{remounted:?}");
    assert!(!docs.join("new").exists());

    // Status says how the running VM's mounts travel.
    let status = ctl(&["status", "--json"]).ok().json();
    let vm = vm_of(&status, "box");
    assert_eq!(vm["mounts"][0]["transport"], "virtiofs", "{vm}");
    assert_eq!(vm["mounts"][1]["transport"], "virtiofs", "{vm}");
    let text = ctl(&["status"]).ok().stdout;
    assert!(text.contains("-> /src (rw, virtiofs)"), "{text}");

    // One daemon per mount while the VM runs; none once it is down.
    let state = env.project_state().join("vms/box");
    let before = (daemons(&src), daemons(&docs));
    assert_eq!(before.0.len(), 1, "one virtiofsd for src");
    assert_eq!(before.1.len(), 1, "one virtiofsd for docs");
    assert!(state.join("virtiofsd.json").exists());

    // A new castrad adopts the running VM and its daemons: the same ones, still serving.
    assert!(daemon.terminate().success());
    let _daemon = env.start_daemon();
    let vm = wait_until(Duration::from_secs(30), "box adopted", || {
        let vm = vm_of(&ctl(&["status", "--json"]).ok().json(), "box");
        (vm["state"] == "running").then_some(vm)
    });
    assert_eq!(vm["mounts"][0]["transport"], "virtiofs", "{vm}");
    assert_eq!((daemons(&src), daemons(&docs)), before);
    assert_eq!(sh("cat /src/from-host.txt"), "written by the host\n");
    ctl(&["down", "--timeout", "20"]).ok();
    wait_until(Duration::from_secs(10), "virtiofsd gone", || {
        (daemons(&src).is_empty() && daemons(&docs).is_empty()).then_some(())
    });
    assert!(!state.join("virtiofsd.json").exists());
    let status = ctl(&["status", "--json"]).ok().json();
    let vm = vm_of(&status, "box");
    assert!(vm["mounts"][0]["transport"].is_null(), "{vm}");
}
