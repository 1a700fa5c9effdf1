//! Guests and runs that misbehave, end to end (real castrad, castractl, a loopback sshd as the
//! guest): a remote_dir or Vizier directory that another account could change, scripts that
//! hang (step timeouts), runs a user stops (`castractl cancel`, `down` mid-run), and a run
//! left going in the guest by a castrad that was killed (the guest-side run lock).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fleet::Fleet;
use crate::support::wait_until;

/// A VM of the fleet with its own remote_dir and Vizier directory (`GUEST/vizier-<name>`),
/// `GUEST` standing for the test's guest directory.
fn vm(name: &str, remote_dir: &Path, extra: &str) -> String {
    let vizier = Path::new("GUEST").join(format!("vizier-{name}"));
    format!(
        "[[vms]]\nname = \"{name}\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\n\
         script = \"scripts/box.sh\"\nremote_dir = \"{}\"\nvizier_dir = \"{}\"\n{extra}",
        remote_dir.display(),
        vizier.display()
    )
}

fn error_of(outcome: &Value, vm: &str) -> String {
    let o = outcome["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["vm"] == vm)
        .unwrap_or_else(|| panic!("no outcome for {vm}: {outcome}"));
    assert_eq!(o["status"], "Failed", "{o}");
    o["error"].as_str().unwrap().to_owned()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purpose: its process is gone, only its entry waits.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn read_pid(path: &Path) -> i32 {
    let text = wait_until(Duration::from_secs(20), "the script's pid file", || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    text.trim().parse().unwrap()
}

/// Another account of the guest (uid 65534 here) owning a parent of remote_dir, a remote_dir
/// anyone can write to, a symlinked remote_dir, and a Vizier directory of another account:
/// each fails before anything runs, naming the path, its owner and mode.
#[test]
fn directories_another_account_could_change_are_refused() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let at = |dir: &str| Path::new("GUEST").join(dir);
    let vms = [
        vm("foreign", &at("theirs/box"), ""),
        vm("open", &at("open"), ""),
        vm("link", &at("link"), ""),
        vm("agent", &at("agent"), ""),
    ]
    .join("\n");
    let fleet = Fleet::new(&vms);
    // The guest's paths are known once the fleet is: put them in castra.toml now.
    let config = fleet.project().join("castra.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let guest_dir = fleet.env.path("guest");
    std::fs::write(&config, text.replace("GUEST", guest_dir.to_str().unwrap())).unwrap();
    let guest = fleet.env.path("guest");
    let foreign = guest.join("theirs/box");
    std::fs::create_dir_all(guest.join("theirs")).unwrap();
    chown(guest.join("theirs"), Some(65534), Some(65534)).unwrap();
    std::fs::create_dir_all(guest.join("open")).unwrap();
    std::fs::set_permissions(guest.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir_all(guest.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(guest.join("elsewhere"), guest.join("link")).unwrap();
    std::fs::create_dir_all(guest.join("vizier-agent")).unwrap();
    chown(guest.join("vizier-agent"), Some(65534), Some(65534)).unwrap();
    let marker = fleet.env.path("ran");
    let script = format!("touch '{}'\n", marker.display());
    fleet.env.write(&[("p/scripts/box.sh", &script)]);

    let up = fleet.up(&[]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    assert_eq!(up.statuses(), ["Failed"; 4]);
    let fails_with = |vm: &str, start: String| {
        let e = error_of(&up.outcome, vm);
        assert!(e.starts_with(&start), "{vm}: {e}");
    };
    fails_with(
        "foreign",
        format!(
            "connect: {} is owned by uid 65534, mode 755: another account of the guest could \
             change what runs there",
            guest.join("theirs").display()
        ),
    );
    fails_with(
        "open",
        format!(
            "connect: {} is owned by uid 0, mode 777: others can write to it",
            guest.join("open").display()
        ),
    );
    let link = guest.join("link");
    fails_with(
        "link",
        format!("connect: {} is a symbolic link", link.display()),
    );
    let agent = guest.join("vizier-agent");
    fails_with(
        "agent",
        format!("vizier-install: {} is owned by uid 65534", agent.display()),
    );
    assert!(!marker.exists(), "a script ran");
    assert!(!foreign.join("box.sh").exists(), "the script was sent");
    for vm in ["foreign", "open", "link", "agent"] {
        assert!(fleet.stamp(vm).is_none(), "{vm}");
    }
}

/// A script that never ends and a verify_command that never ends: each step fails at its
/// timeout, saying which key sets it, and the guest side's processes (the script and what it
/// started in the background) are stopped.
#[test]
fn hung_steps_time_out_and_their_guest_processes_are_stopped() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"apply\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\n\
         script = \"scripts/hang.sh\"\napply_timeout_secs = 2\n\
         [[vms]]\nname = \"verify\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\n\
         script = \"scripts/ok.sh\"\nverify_command = \"echo $$ > ../verify.pid; exec sleep 600\"\n\
         verify_timeout_secs = 1\n",
    );
    fleet.env.write(&[
        (
            "p/scripts/hang.sh",
            "sleep 600 &\necho $! > ../child.pid\necho $$ > ../script.pid\nwait\n",
        ),
        ("p/scripts/ok.sh", "echo fine\n"),
    ]);
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Failed", "Failed"], "{}", up.stderr);
    let e = error_of(&up.outcome, "apply");
    assert!(
        e.starts_with("apply: timed out after 2s (apply_timeout_secs); its processes in the guest were stopped (group "),
        "{e}"
    );
    let e = error_of(&up.outcome, "verify");
    assert!(
        e.starts_with("verify: timed out after 1s (verify_timeout_secs); its processes in the guest were stopped (group "),
        "{e}"
    );
    let guest = fleet.env.path("guest");
    for file in ["script.pid", "child.pid", "verify.pid"] {
        let pid = read_pid(&guest.join(file));
        wait_until(
            Duration::from_secs(10),
            &format!("{file} {pid} to end"),
            || (!alive(pid)).then_some(()),
        );
    }
    for vm in ["apply", "verify"] {
        let logs = fleet.logs(vm);
        assert_eq!(logs.len(), 1, "{vm}");
        assert_eq!(logs[0]["status"], "failed");
        assert!(fleet.stamp(vm).is_none());
    }
}

/// A VM `box` whose script writes its pid to the returned file, then sleeps for ten minutes.
fn sleeping_box() -> (Fleet, std::path::PathBuf) {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\n\
         script = \"scripts/box.sh\"\n",
    );
    fleet.env.write(&[(
        "p/scripts/box.sh",
        "echo $$ > ../box.pid.tmp; mv ../box.pid.tmp ../box.pid\nexec sleep 600\n",
    )]);
    let pid_file = fleet.env.path("guest/box.pid");
    (fleet, pid_file)
}

/// `castractl cancel` stops a run in flight: the script's processes end, the run fails
/// "cancelled" with its log and no stamp, and the `up` following it says so. `down` of a VM
/// mid-run cancels the run first, then stops the VM (an external one: nothing to stop).
#[test]
fn cancel_and_down_stop_a_run_in_flight() {
    let (fleet, pid_file) = sleeping_box();
    let idle = fleet.env.ctl(&fleet.project(), &["cancel"]);
    assert_eq!(idle.code, 0, "{}", idle.stderr);
    assert_eq!(idle.stdout, "box: no run in flight\n");

    let follow = fleet.env.spawn_ctl(&fleet.project(), &["up", "--json"]);
    let script = read_pid(&pid_file);
    let cancel = fleet.env.ctl(&fleet.project(), &["cancel", "box"]);
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    assert!(
        cancel
            .stdout
            .starts_with("box: cancelling the run of operation op-"),
        "{}",
        cancel.stdout
    );
    let out = follow.wait_with_output().unwrap();
    let up = crate::fleet::Up::parse(
        out.status.code().unwrap(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(up.code, 1);
    let e = error_of(&up.outcome, "box");
    assert!(
        e.starts_with("apply: cancelled; its processes in the guest were stopped (group "),
        "{e}"
    );
    assert_eq!(up.sequence("box").last().unwrap(), "BootstrapFailed");
    wait_until(Duration::from_secs(10), "the script to end", || {
        (!alive(script)).then_some(())
    });
    assert_eq!(fleet.logs("box").len(), 1);
    assert!(fleet.stamp("box").is_none());

    // down mid-run: the run is cancelled, then the VM is "stopped".
    std::fs::remove_file(&pid_file).unwrap();
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    let started = fleet.env.http_rpc("castra.up", json!({"config": config}));
    let operation = started["result"]["operation"].clone();
    let script = read_pid(&pid_file);
    let down = fleet.env.ctl(&fleet.project(), &["down", "--json", "box"]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    let down: Value = down.json();
    assert_eq!(down["vms"][0]["outcome"], "external", "{down}");
    let outcome = fleet
        .env
        .http_rpc("castra.outcome", json!({"operation": operation}))["result"]
        .clone();
    let e = error_of(&outcome, "box");
    assert!(
        e.starts_with(
            "apply: cancelled: castractl down stops the VM; its processes in the guest were stopped"
        ),
        "{e}"
    );
    wait_until(Duration::from_secs(10), "the script to end", || {
        (!alive(script)).then_some(())
    });
}

/// Ctrl-C in `castractl up` stops following, not the run, and says how to stop the run.
#[test]
fn ctrl_c_in_up_says_how_to_cancel() {
    let (fleet, pid_file) = sleeping_box();
    let follow = fleet.env.spawn_ctl(&fleet.project(), &["up"]);
    let script = read_pid(&pid_file);
    let ctl = nix::unistd::Pid::from_raw(follow.id() as i32);
    nix::sys::signal::kill(ctl, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = follow.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("castractl cancel"), "{stderr}");
    assert!(alive(script), "Ctrl-C stopped the run itself");
    let cancel = fleet.env.ctl(&fleet.project(), &["cancel"]);
    assert!(
        cancel.stdout.starts_with("box: cancelling"),
        "{}",
        cancel.stdout
    );
    wait_until(Duration::from_secs(10), "the script to end", || {
        (!alive(script)).then_some(())
    });
}

/// castrad killed mid-run leaves the guest side going; a new castrad's run on that VM finds
/// the guest-side run lock held by a live process and fails clearly after its bounded wait,
/// never running two scripts at once. Once the old run is gone, its stale lock is taken over.
#[test]
fn a_run_left_going_by_a_killed_castrad_is_never_doubled() {
    let mut fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\n\
         script = \"scripts/box.sh\"\n",
    );
    let pid_file = fleet.env.path("guest/box.pid");
    let runs = fleet.env.path("guest/box.runs");
    fleet.env.write(&[(
        "p/scripts/box.sh",
        "echo run >> ../box.runs\nif [ ! -e ../box.pid ]; then echo $$ > ../box.pid.tmp; \
         mv ../box.pid.tmp ../box.pid; exec sleep 600; fi\n",
    )]);
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    fleet.env.http_rpc("castra.up", json!({"config": config}));
    let old = read_pid(&pid_file);
    let daemon = fleet.take_daemon();
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(daemon);
    assert!(alive(old), "the old run goes on in the guest");

    let _daemon = fleet.env.start_daemon();
    let second = fleet.up(&["--bootstrap", "always"]);
    let e = error_of(&second.outcome, "box");
    assert!(
        e.starts_with("connect: another run (pid ") && e.contains("still holds"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "run\n",
        "two runs at once"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), "the old run to end", || {
        (!alive(old)).then_some(())
    });
    let third = fleet.up(&["--bootstrap", "always"]);
    assert_eq!(
        third.statuses(),
        ["Success"],
        "the stale lock is taken over"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
}
