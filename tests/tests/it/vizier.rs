//! The in-guest agent on real guests (here: a loopback sshd; the QEMU guest in qemu.rs):
//! one instance however often it is enabled, respawned and reported when killed, restarted
//! when an older version runs, a clear failure when it cannot be installed.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::bootstrap::Fleet;
use crate::support::wait_until;

const BOX: &str = "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/db.sh\"\n";
const VERSION: &str = "0.2.0";

impl Fleet {
    fn vizier_dir(&self, vm: &str) -> std::path::PathBuf {
        self.env.path(&format!("guest/vizier/{vm}"))
    }

    fn status_vm(&self, vm: &str) -> Value {
        let out = self
            .env
            .ctl(&self.project(), &["status", "--json"])
            .ok()
            .json();
        crate::support::vm_of(&out, vm)
    }

    /// Processes whose command line contains `pattern`.
    fn processes(&self, pattern: &str) -> usize {
        let out = Command::new("pgrep")
            .args(["-f", "-c", pattern])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

#[test]
fn enabling_again_and_again_leaves_exactly_one_agent() {
    let fleet = Fleet::new(BOX);
    let loop_ = "in a respawn loop (CASTRA_VIZIER_SUPERVISOR=loop in the login environment; \
                 a reboot ends it until the next run)";
    for (i, args) in [
        &[][..],
        &["--bootstrap", "always"],
        &["--bootstrap", "always"],
        &["--bootstrap", "always"],
    ]
    .into_iter()
    .enumerate()
    {
        let up = fleet.up(args);
        assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
        // The first run chose the supervisor and says why; the later ones find it running.
        let enabled = up
            .event("box", "BootstrapStep")
            .into_iter()
            .find(|s| s["step"] == "vizier-enable")
            .unwrap()["detail"]
            .clone();
        let how = if i == 0 { "started" } else { "running" };
        assert_eq!(enabled, format!("{how} {loop_}"), "run {i}");
    }
    let dir = fleet.vizier_dir("box");
    let bin = dir.join(format!("{VERSION}/vizier.sh"));
    assert_eq!(
        fleet.processes(&format!("{} supervise", bin.display())),
        1,
        "one supervisor"
    );
    assert_eq!(
        fleet.processes(&format!("{} run", bin.display())),
        1,
        "one agent"
    );
    // One watch of the agent (the last run's session, gone on as the watch; the earlier ones
    // were replaced and end at their next report), carrying none of the run's environment.
    let watch = format!("{} watch", bin.display());
    wait_until(Duration::from_secs(10), "a single watch session", || {
        (fleet.processes(&watch) == 1).then_some(())
    });
    let pid = Command::new("pgrep")
        .args(["-f", &watch])
        .output()
        .unwrap()
        .stdout;
    let pid = String::from_utf8(pid).unwrap().trim().to_owned();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("CASTRA_RUN_ID="),
        "the watch kept the run's environment"
    );
    let status = fleet.status_vm("box");
    assert_eq!(status["vizier"]["version"], VERSION);
    assert_eq!(status["vizier"]["healthy"], true);
    // The agent's log was mirrored into the state root.
    let mirrored =
        std::fs::read_to_string(fleet.state_root().join("vizier/box/service.log")).unwrap();
    assert!(mirrored.contains("supervisor started"), "{mirrored}");
}

#[test]
fn a_killed_agent_is_respawned_and_the_loss_reported() {
    let fleet = Fleet::new(BOX);
    assert_eq!(fleet.up(&[]).statuses(), ["Success"]);
    let pid = wait_until(
        Duration::from_secs(10),
        "the health check to see the agent",
        || fleet.status_vm("box")["vizier"]["pid"].as_u64(),
    );
    // `--since 0`: whenever the subscription starts, it sees what the kill causes (the replay
    // covers any gap), so no pause is needed before the kill.
    crate::support::agent_lost_and_back(
        &fleet.env.socket(),
        "box",
        Duration::from_secs(10),
        || {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        },
    );
    let new_pid = fleet.status_vm("box")["vizier"]["pid"].as_u64().unwrap();
    assert_ne!(new_pid, pid, "a new agent process");
    // Issue 15: the agent's events belong to no operation; PROTOCOL.md shows them so.
    let documented = crate::protocol_docs::documented_examples();
    for kind in ["VizierLost", "VizierConnected"] {
        let real = crate::protocol_docs::first_replayed(&fleet.env.socket(), "box", kind);
        assert_eq!(real["operation"], serde_json::Value::Null, "{real}");
        if let Some(doc) = documented.get(&format!("event-{kind}")) {
            assert_eq!(
                doc["operation"],
                serde_json::Value::Null,
                "PROTOCOL.md: {doc}"
            );
            let name = format!("event-{kind}");
            crate::examples::assert_matches(&name, &[real], &crate::examples::Scrub::new());
        }
    }
    for name in crate::protocol_docs::CHECKED_BY_VIZIER_TESTS {
        assert!(
            documented.contains_key(*name),
            "PROTOCOL.md lacks check {name}"
        );
    }
}

#[test]
fn an_older_agent_in_the_guest_is_planned_as_restart_and_replaced() {
    let fleet = Fleet::new(BOX);
    assert_eq!(fleet.up(&[]).statuses(), ["Success"]);
    let dir = fleet.vizier_dir("box");
    let state = dir.join("state");
    let (current, old) = (
        dir.join(format!("{VERSION}/vizier.sh")),
        dir.join("0.0.9/vizier.sh"),
    );

    // Plant version 0.0.9 and run it in place of ours.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let script = std::fs::read_to_string(repo.join("castrad/src/vizier/agent.sh")).unwrap();
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, script.replace("@VERSION@", "0.0.9")).unwrap();
    assert!(
        Command::new("sh")
            .arg(&current)
            .arg("stop")
            .arg(&state)
            .status()
            .unwrap()
            .success()
    );
    let started = Command::new("setsid")
        .args(["--fork", "sh"])
        .arg(&old)
        .arg("supervise")
        .arg(&state)
        .arg(dir.join("service.log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(started.success());
    wait_until(
        Duration::from_secs(15),
        "the health check to see version 0.0.9",
        || (fleet.status_vm("box")["vizier"]["version"] == "0.0.9").then_some(()),
    );

    let plan = fleet
        .env
        .ctl(&fleet.project(), &["plan", "--json"])
        .ok()
        .json();
    let planned = &plan["vms"][0];
    assert_eq!(planned["vizier_status"], "Restart", "{planned}");
    assert_eq!(
        planned["action"], "run",
        "a stamp does not hide a stale agent"
    );

    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    let enable = up
        .event("box", "BootstrapStep")
        .into_iter()
        .find(|s| s["step"] == "vizier-enable")
        .unwrap()
        .clone();
    assert!(
        enable["detail"]
            .as_str()
            .unwrap()
            .contains("restarted (was 0.0.9)"),
        "{enable}"
    );
    assert_eq!(fleet.status_vm("box")["vizier"]["version"], VERSION);
    assert_eq!(
        fleet.processes(&format!("{} supervise", old.display())),
        0,
        "the old one is gone"
    );
}

#[test]
fn an_unwritable_install_path_fails_vizier_install_with_a_hint() {
    let fleet = Fleet::new(&BOX.replace(
        "[vms.bootstrap]\n",
        "[vms.bootstrap]\nvizier_dir = \"/proc/castra-cannot-write/{vm}\"\n",
    ));
    let up = fleet.up(&[]);
    assert_eq!(up.code, 1);
    assert_eq!(up.statuses(), ["Failed"]);
    let seq = up.sequence("box");
    assert_eq!(
        &seq[seq.len() - 2..],
        ["BootstrapStep:vizier-install:failed", "BootstrapFailed"]
    );
    let error = up.event("box", "BootstrapFailed")[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("cannot write /proc/castra-cannot-write/box"),
        "{error}"
    );
    assert!(
        error.contains("set [vms.bootstrap] vizier_dir to a writable directory"),
        "{error}"
    );
    assert_eq!(fleet.logs("box").len(), 1, "one failure log");
    assert!(fleet.stamp("box").is_none());
}
