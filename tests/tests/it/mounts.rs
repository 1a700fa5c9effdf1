//! Shared folders (`[[vms.mounts]]`) on the stock cloud image: the seed mounts them before
//! sshd starts, so the bootstrap script already sees them; a file crosses each way on a
//! read-write mount; a read-only mount refuses the guest's writes even after the guest
//! remounts it read-write (the host enforces it); plan and status name the transport;
//! castrad's virtiofsd daemons live exactly as long as the VM. The cloud guest boots are
//! shared with the project network's test (network.rs), whose `web-0` has these mounts.
//!
//! The transport is virtiofs: the test host has virtiofsd and castrad runs as root there
//! (scripts/setup, CI). The 9p fallback cannot be booted with these guests (Debian's cloud
//! kernel has no 9p), so it is covered by castrad's unit tests (`backend::qemu::mounts`).

use std::path::Path;
use std::time::Duration;

use crate::support::{Daemon, Env, vm_of, wait_until};

/// What the bootstrap script of the VM with the mounts does with them.
pub const SCRIPT_LINES: &str = "cat /src/from-host.txt > seen-at-bootstrap\n\
                                echo \"written by the guest\" > /src/from-guest.txt\n";

/// The `[[vms.mounts]]` of that VM: `src` read-write at /src, `docs` read-only at /srv/docs.
pub const MOUNTS: &str = "\n[[vms.mounts]]\nhost = \"src\"\nguest = \"/src\"\nreadonly = false\n\n\
                          [[vms.mounts]]\nhost = \"docs\"\nguest = \"/srv/docs\"\n";

/// The host side of the mounts in `project`, before castrad starts: the guest's login user is
/// not the host's, so `src` lets it write.
pub fn host_side(env: &Env) {
    env.write(&[
        ("p/src/from-host.txt", "written by the host\n"),
        ("p/docs/readme.txt", "read me\n"),
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.path("p/src"), std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// Before `up`: the plan shows `vm`'s mounts, their options and the transport a launch uses.
pub fn check_plan(env: &Env, vm: &str) {
    let project = env.path("p");
    let src = env.path("p/src");
    let plan = env.ctl(&project, &["plan", "--json"]).ok().json();
    let planned = vm_of_plan(&plan, vm);
    let mounts = planned["mounts"].as_array().unwrap().clone();
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
    let text = env.ctl(&project, &["plan"]).ok().stdout;
    assert!(
        text.contains(&format!("{vm}: ")) && text.contains("-> /srv/docs (ro, virtiofs)"),
        "{text}"
    );
}

fn vm_of_plan(plan: &serde_json::Value, vm: &str) -> serde_json::Value {
    plan["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == vm)
        .unwrap_or_else(|| panic!("no {vm} in {plan}"))
        .clone()
}

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

/// After `up`, `vm` (with [`MOUNTS`], its script doing [`SCRIPT_LINES`]) running: every check
/// on the running VM, including a castrad restart that adopts it and its daemons. Returns the
/// new castrad and what [`check_down`] needs.
pub fn check_running(env: &Env, vm: &str, daemon: Daemon) -> (Daemon, std::path::PathBuf) {
    let project = env.path("p");
    let src = env.path("p/src");
    let docs = env.path("p/docs");
    let ctl = |args: &[&str]| env.ctl(&project, args);
    let sh = |command: &str| env.guest_sh(&project, vm, command);
    use std::os::unix::fs::PermissionsExt;

    // The bootstrap script read the host's file through the mount and wrote one back.
    assert_eq!(
        sh(&format!("cat /var/tmp/castra/{vm}/seen-at-bootstrap")),
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
    let write = ctl(&["ssh", vm, "--", "sudo touch /srv/docs/new"]);
    assert_ne!(write.code, 0, "{write:?}");
    assert!(write.stderr.contains("Read-only file system"), "{write:?}");
    let remounted = ctl(&[
        "ssh",
        vm,
        "--",
        "sudo mount -o remount,rw /srv/docs && sudo touch /srv/docs/new",
    ]);
    assert_ne!(remounted.code, 0, "{remounted:?}");
    assert!(!docs.join("new").exists());

    // Status says how the running VM's mounts travel.
    let status = ctl(&["status", "--json"]).ok().json();
    let got = vm_of(&status, vm);
    assert_eq!(got["mounts"][0]["transport"], "virtiofs", "{got}");
    assert_eq!(got["mounts"][1]["transport"], "virtiofs", "{got}");
    let text = ctl(&["status"]).ok().stdout;
    assert!(text.contains("-> /src (rw, virtiofs)"), "{text}");

    // One daemon per mount while the VM runs; none once it is down.
    let state = env.project_state().join(format!("vms/{vm}"));
    let before = (daemons(&src), daemons(&docs));
    assert_eq!(before.0.len(), 1, "one virtiofsd for src");
    assert_eq!(before.1.len(), 1, "one virtiofsd for docs");
    assert!(state.join("virtiofsd.json").exists());

    // A new castrad adopts the running VM and its daemons: the same ones, still serving.
    assert!(daemon.terminate().success());
    let daemon = env.start_daemon();
    let got = wait_until(Duration::from_secs(30), "adopted", || {
        let got = vm_of(&ctl(&["status", "--json"]).ok().json(), vm);
        (got["state"] == "running").then_some(got)
    });
    assert_eq!(got["mounts"][0]["transport"], "virtiofs", "{got}");
    assert_eq!((daemons(&src), daemons(&docs)), before);
    assert_eq!(sh("cat /src/from-host.txt"), "written by the host\n");
    (daemon, state)
}

/// After `down`: no virtiofsd left for the mounts, no record of them, no transport in status.
pub fn check_down(env: &Env, vm: &str, state: &Path) {
    let (src, docs) = (env.path("p/src"), env.path("p/docs"));
    wait_until(Duration::from_secs(10), "virtiofsd gone", || {
        (daemons(&src).is_empty() && daemons(&docs).is_empty()).then_some(())
    });
    assert!(!state.join("virtiofsd.json").exists());
    let status = env.ctl(&env.path("p"), &["status", "--json"]).ok().json();
    let got = vm_of(&status, vm);
    assert!(got["mounts"][0]["transport"].is_null(), "{got}");
}
