//! Issue 16 §3 on a real QEMU guest: `up` of named VMs, launch settings changed in castra.toml
//! while a VM runs (drift: reported by `plan` and `up`, kept across a castrad restart) and
//! `restart`, which applies them. One project, its boots shared by the steps.

use serde_json::Value;

use crate::qemu::{Lab, one_at_a_time};

/// Rewrites the `[[vms]]` section of `vm` in the lab's castra.toml: `key = from` becomes
/// `key = to` (the first one after its name).
fn set(lab: &Lab, vm: &str, from: &str, to: &str) {
    let path = lab.project().join("castra.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find(&format!("name = \"{vm}\"")).unwrap();
    let (head, tail) = text.split_at(at);
    assert!(tail.contains(from), "{from} in {tail}");
    std::fs::write(&path, format!("{head}{}", tail.replacen(from, to, 1))).unwrap();
}

/// `castractl plan --json`: each VM's drift as (setting, running, configured).
fn drift(lab: &Lab) -> Vec<(String, String, String, String)> {
    let plan = lab.env.ctl(&lab.project(), &["plan", "--json"]).ok().json();
    plan["vms"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|vm| vm["drift"].as_array().unwrap().clone())
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap().to_owned();
            (s("vm"), s("setting"), s("running"), s("configured"))
        })
        .collect()
}

/// The value of `flag` (`-smp`, `-m`) on the command line of the VM's running QEMU.
fn qemu_arg(lab: &Lab, vm: &str, flag: &str) -> String {
    let pid = lab.status_vm(vm)["pid"].as_u64().expect("running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == flag).expect(flag);
    args[at + 1].clone()
}

fn smp(lab: &Lab, vm: &str) -> String {
    qemu_arg(lab, vm, "-smp")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first bytes a connection to 127.0.0.1:`port` receives (empty when none is accepted).
fn banner(port: u16) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn state(lab: &Lab, vm: &str) -> Value {
    lab.status_vm(vm)["state"].clone()
}

#[test]
fn up_targets_vms_and_restart_applies_the_drift_that_plan_and_up_report() {
    let _lock = one_at_a_time();
    // box forwards a host port to its sshd (dropbear), then another one.
    let (old_port, new_port) = (free_port(), free_port());
    let forward = format!("[[vms.port_forwards]]\nhost = {old_port}\nguest = 22\n");
    let mut lab = Lab::new(&[("box", &forward), ("other", "")]);

    // An unknown name: a preflight error (exit 2), nothing started.
    let unknown = lab.env.ctl(&lab.project(), &["up", "box", "nosuch"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(
        unknown.stderr.contains("unknown VM \"nosuch\""),
        "{unknown:?}"
    );
    assert_eq!(state(&lab, "box"), "stopped");
    assert_eq!(state(&lab, "other"), "stopped");
    let unknown = lab.env.ctl(&lab.project(), &["restart", "nosuch"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");

    // `up box`: only box starts and is bootstrapped.
    let up = lab.up(&["box"]);
    assert_eq!(up.code, 0, "{}", up.stderr);
    assert_eq!(up.statuses(), ["Success"]);
    assert_eq!(up.outcome["outcomes"][0]["vm"], "box");
    assert!(up.sequence("other").is_empty(), "{:?}", up.events);
    assert_eq!(state(&lab, "box"), "running");
    assert_eq!(state(&lab, "other"), "stopped");
    assert_eq!(smp(&lab, "box"), "1");
    assert_eq!(qemu_arg(&lab, "box", "-m"), "512M");
    assert!(
        banner(old_port).starts_with("SSH-2.0-"),
        "forwarded to sshd"
    );
    assert!(drift(&lab).is_empty());

    // cpus, memory and the forward changed while box runs: plan says so, and so does up
    // (which leaves box as it is).
    set(&lab, "box", "cpus = 1", "cpus = 2");
    set(&lab, "box", "memory = \"512 MiB\"", "memory = \"640 MiB\"");
    set(
        &lab,
        "box",
        &format!("host = {old_port}"),
        &format!("host = {new_port}"),
    );
    let row = |setting: &str, running: &str, configured: &str| {
        (
            "box".to_owned(),
            setting.to_owned(),
            running.to_owned(),
            configured.to_owned(),
        )
    };
    let want = [
        row("cpus", "1", "2"),
        row("memory", "512 MiB", "640 MiB"),
        row(
            "forwards",
            &format!("tcp:{old_port}->22"),
            &format!("tcp:{new_port}->22"),
        ),
    ];
    assert_eq!(drift(&lab), want);
    let text = lab.env.ctl(&lab.project(), &["plan"]).ok();
    let sentences = [
        "box is running with 1 cpus, castra.toml says 2: `castractl restart box` to apply"
            .to_owned(),
        "box is running with 512 MiB of memory, castra.toml says 640 MiB: `castractl restart \
         box` to apply"
            .to_owned(),
        format!(
            "box is running with port forwards tcp:{old_port}->22, castra.toml says \
             tcp:{new_port}->22: `castractl restart box` to apply"
        ),
    ];
    for sentence in &sentences {
        assert!(text.stdout.contains(sentence), "{}", text.stdout);
    }
    let up = lab.up(&["box"]);
    assert_eq!(up.statuses(), ["NoOp"]);
    for sentence in &sentences {
        assert!(up.stderr.contains(sentence), "{}", up.stderr);
    }
    let planned = up.event("box", "BootstrapPlanned");
    let settings: Vec<&Value> = planned[0]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["setting"])
        .collect();
    assert_eq!(settings, ["cpus", "memory", "forwards"], "{planned:?}");
    assert_eq!(smp(&lab, "box"), "1", "up does not restart a running VM");
    assert_eq!(qemu_arg(&lab, "box", "-m"), "512M");
    assert_eq!(banner(new_port), "", "not forwarded yet");

    // The record of what box was launched with survives castrad (re-adoption).
    let pid = lab.status_vm("box")["pid"].clone();
    lab.restart_daemon();
    assert_eq!(lab.status_vm("box")["pid"], pid, "adopted, not relaunched");
    assert_eq!(drift(&lab), want);

    // A smaller disk than box has: refused before anything stops.
    set(&lab, "box", "memory = ", "disk = \"32 MiB\"\nmemory = ");
    let shrink = lab.env.ctl(&lab.project(), &["restart", "box"]);
    assert_eq!(shrink.code, 2, "{shrink:?}");
    assert!(shrink.stderr.contains("never shrinks"), "{shrink:?}");
    assert_eq!(lab.status_vm("box")["pid"], pid, "nothing stopped");

    // restart box (with a larger disk too): stopped, started with 2 cpus on its disk grown
    // to 96 MiB, bootstrap NoOp (the disk and its stamp are kept); other is not touched;
    // the drift is gone.
    set(&lab, "box", "disk = \"32 MiB\"", "disk = \"96 MiB\"");
    let restart = lab.env.ctl(
        &lab.project(),
        &["restart", "box", "--json", "--timeout", "20"],
    );
    let restart = crate::fleet::Up::parse(restart.code, &restart.stdout, &restart.stderr);
    assert_eq!(restart.statuses(), ["NoOp"], "{:?}", restart.events);
    assert_eq!(restart.code, 0, "{}", restart.stderr);
    let seq = restart.sequence("box");
    assert_eq!(
        &seq[..2],
        ["ShutdownRequested", "CooperativeAttempted"],
        "{seq:?}"
    );
    let at = |kind: &str| seq.iter().position(|k| k == kind).unwrap();
    assert!(at("ShutdownComplete") < at("VmLaunched"), "{seq:?}");
    assert_eq!(seq.last().unwrap(), "BootstrapCompleted:NoOp");
    assert!(restart.sequence("other").is_empty());
    for applied in [
        "box: cpus 1 -> 2 (applied by this restart)".to_owned(),
        "box: memory 512 MiB -> 640 MiB (applied by this restart)".to_owned(),
        format!("box: forwards tcp:{old_port}->22 -> tcp:{new_port}->22 (applied by this restart)"),
        "box: disk the base image's size -> 96 MiB (applied by this restart)".to_owned(),
    ] {
        assert!(restart.stderr.contains(&applied), "{}", restart.stderr);
    }
    assert_ne!(lab.status_vm("box")["pid"], pid);
    assert_eq!(smp(&lab, "box"), "2");
    assert_eq!(qemu_arg(&lab, "box", "-m"), "640M");
    let meminfo = lab.guest_sh("box", "grep MemTotal /proc/meminfo");
    let kib: u64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        kib > 512 * 1024,
        "the guest has more than 512 MiB: {meminfo}"
    );
    assert!(
        banner(new_port).starts_with("SSH-2.0-"),
        "the new forward reaches sshd"
    );
    assert_eq!(banner(old_port), "", "the old forward is gone");
    assert_eq!(
        lab.guest_sh("box", "grep -c ^processor /proc/cpuinfo")
            .trim(),
        "2"
    );
    let overlay = lab.state_root().join("vms/box/overlay.qcow2");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 96 << 20, "{info}");
    assert!(drift(&lab).is_empty(), "{:?}", drift(&lab));
    assert_eq!(state(&lab, "other"), "stopped");
    lab.down(&[]);
}
