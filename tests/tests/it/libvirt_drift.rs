//! Drift of a libvirt VM (checked on the lifecycle test's adopted domain, no boot of its
//! own): castra.toml changes its cpus, memory and disk; plan and up report it from the
//! domain's metadata; restart redefines the domain and grows its volume.

use std::path::Path;
use std::time::Instant;

use crate::bootstrap::Up;
use crate::libvirt::{Libvirtd, up};
use crate::support::Env;

/// `castractl plan --json`: each drift entry as (setting, running, configured).
fn drift(env: &Env, project: &Path) -> Vec<(String, String, String)> {
    let plan = env.ctl(project, &["plan", "--json"]).ok().json();
    plan["vms"][0]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap().to_owned();
            (s("setting"), s("running"), s("configured"))
        })
        .collect()
}

/// Replaces `from` by `to` in the project's castra.toml.
fn edit(project: &Path, from: &str, to: &str) {
    let path = project.join("castra.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} in {text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// The adopted domain `box` (1 cpu, 512 MiB, the base image's 64 MiB disk): castra.toml
/// changes its cpus, memory and disk; plan and up report it from the domain's metadata; a
/// smaller disk is refused before anything stops; restart redefines the domain and grows its
/// volume, and the drift is gone.
pub(crate) fn drift_and_restart(lv: &Libvirtd, env: &Env, p: &Path) {
    let t = Instant::now();
    let dom = crate::libvirt::domain_of(env, "lv", "box");
    let dominfo = |key: &str| {
        let info = lv.virsh(&["dominfo", &dom]);
        let line = info
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap()
            .to_owned();
        line[key.len()..].trim().to_owned()
    };
    assert!(drift(env, p).is_empty(), "{:?}", drift(env, p));
    edit(p, "cpus = 1", "cpus = 2");
    edit(
        p,
        "memory = \"512 MiB\"",
        "memory = \"768 MiB\"\ndisk = \"32 MiB\"",
    );
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        drift(env, p),
        [
            s("cpus", "1", "2"),
            s("memory", "512 MiB", "768 MiB"),
            s("disk", "the base image's size", "32 MiB"),
        ]
    );
    let sentence =
        "box is running with 1 cpus, castra.toml says 2: `castractl restart box` to apply";
    let text = env.ctl(p, &["plan"]).ok();
    assert!(text.stdout.contains(sentence), "{}", text.stdout);
    let noop = up(env, p, &[]);
    assert_eq!(noop.statuses(), ["NoOp"]);
    assert!(noop.stderr.contains(sentence), "{}", noop.stderr);

    // Smaller than the volume (the base image's 64 MiB): refused, the domain left running.
    let shrink = env.ctl(p, &["restart", "box"]);
    assert_eq!(shrink.code, 2, "{shrink:?}");
    assert!(
        shrink
            .stderr
            .contains("vm box: disk = 32 MiB is smaller than its disk (64 MiB)"),
        "{shrink:?}"
    );
    assert_eq!(lv.virsh(&["domstate", &dom]).trim(), "running");
    assert_eq!(dominfo("CPU(s):"), "1");

    edit(p, "disk = \"32 MiB\"", "disk = \"96 MiB\"");
    let out = env.ctl(p, &["restart", "box", "--json", "--timeout", "20"]);
    let restart = Up::parse(out.code, &out.stdout, &out.stderr);
    assert_eq!(restart.statuses(), ["NoOp"], "{:?}", restart.events);
    let seq = restart.sequence("box");
    let at = |kind: &str| seq.iter().position(|k| k == kind).unwrap();
    assert!(at("ShutdownComplete") < at("VmLaunched"), "{seq:?}");
    assert!(
        restart
            .stderr
            .contains("box: cpus 1 -> 2 (applied by this restart)"),
        "{}",
        restart.stderr
    );
    assert!(drift(env, p).is_empty(), "{:?}", drift(env, p));
    assert_eq!(dominfo("CPU(s):"), "2");
    assert_eq!(dominfo("Max memory:"), "786432 KiB");
    let volume = lv.virsh(&[
        "vol-info",
        "--bytes",
        "--pool",
        "castra",
        &format!("{dom}.qcow2"),
    ]);
    assert!(
        volume.contains(&format!("{} bytes", 96u64 << 20)),
        "grown: {volume}"
    );
    assert_eq!(
        env.guest_sh(p, "box", "grep -c ^processor /proc/cpuinfo")
            .trim(),
        "2"
    );
    eprintln!("libvirt drift and restart: {:?}", t.elapsed());
}
