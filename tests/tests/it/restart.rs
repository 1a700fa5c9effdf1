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

/// The `-smp` value on the command line of the VM's running QEMU.
fn smp(lab: &Lab, vm: &str) -> String {
    let pid = lab.status_vm(vm)["pid"].as_u64().expect("running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "-smp").expect("-smp");
    args[at + 1].clone()
}

fn state(lab: &Lab, vm: &str) -> Value {
    lab.status_vm(vm)["state"].clone()
}

#[test]
fn up_targets_vms_and_restart_applies_the_drift_that_plan_and_up_report() {
    let _lock = one_at_a_time();
    let mut lab = Lab::new(&[("box", ""), ("other", "")]);

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
    assert!(drift(&lab).is_empty());

    // cpus changed while box runs: plan says so, and so does up (which leaves box as it is).
    set(&lab, "box", "cpus = 1", "cpus = 2");
    let want = [(
        "box".to_owned(),
        "cpus".to_owned(),
        "1".to_owned(),
        "2".to_owned(),
    )];
    assert_eq!(drift(&lab), want);
    let text = lab.env.ctl(&lab.project(), &["plan"]).ok();
    let sentence =
        "box is running with 1 cpus, castra.toml says 2: `castractl restart box` to apply";
    assert!(text.stdout.contains(sentence), "{}", text.stdout);
    let up = lab.up(&["box"]);
    assert_eq!(up.statuses(), ["NoOp"]);
    assert!(up.stderr.contains(sentence), "{}", up.stderr);
    let planned = up.event("box", "BootstrapPlanned");
    assert_eq!(planned[0]["drift"][0]["setting"], "cpus", "{planned:?}");
    assert_eq!(smp(&lab, "box"), "1", "up does not restart a running VM");

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
        "box: cpus 1 -> 2 (applied by this restart)",
        "box: disk the base image's size -> 96 MiB (applied by this restart)",
    ] {
        assert!(restart.stderr.contains(applied), "{}", restart.stderr);
    }
    assert_ne!(lab.status_vm("box")["pid"], pid);
    assert_eq!(smp(&lab, "box"), "2");
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
