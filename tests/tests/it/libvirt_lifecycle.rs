//! Lifecycle checks shared by the libvirt tests (what `accel = "auto"` must choose, a `down`
//! with its events), and the cloud-style guest's lifecycle (Debian, systemd, cloud-init with
//! castrad's seed) through libvirt on the local URI (`qemu:///session`; the tiny guest's in
//! `libvirt.rs` goes over qemu+ssh): up, NoOp, an ACPI `down`, up again, castrad killed and
//! the domain re-adopted, then `down --discard` leaving nothing on the hypervisor.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::libvirt::{Libvirtd, project, status_of, up};
use crate::qemu::one_at_a_time;
use crate::support::Env;

/// What `accel = "auto"` must choose on the hypervisor `hv` (this machine, reached over ssh
/// as the sshd fixture's user): TCG where kvm_pvm is loaded (this machine kind) or /dev/kvm is
/// not usable, KVM otherwise; with the reason castrad gives.
pub(crate) fn auto_on_this_host(hv: &str) -> (&'static str, String) {
    let writable = nix::unistd::access("/dev/kvm", nix::unistd::AccessFlags::W_OK).is_ok();
    if Path::new("/sys/module/kvm_pvm").exists() {
        let why = "/dev/kvm is backed by kvm_pvm, which hangs stock guest kernels";
        ("tcg", format!("auto: {why}; using TCG (slower)"))
    } else if !writable {
        let why = format!("/dev/kvm is not usable on {hv}");
        ("tcg", format!("auto: {why}; using TCG (slower)"))
    } else {
        ("kvm", "auto: /dev/kvm is usable".to_owned())
    }
}

/// `castractl down --json ARGS` of a one-VM project: its result and the operation's events
/// (replayed by `castractl events --operation`, up to the VM's ShutdownComplete).
pub(crate) fn down_with_events(env: &Env, project: &Path, args: &[&str]) -> (Value, Vec<Value>) {
    let mut full = vec!["down", "--json"];
    full.extend_from_slice(args);
    let down = env.ctl(project, &full).ok().json();
    let operation = down["operation"].as_str().expect("an operation id");
    let mut child = env.spawn_ctl(
        project,
        &["events", "--json", "--since", "0", "--operation", operation],
    );
    let stdout = child.stdout.take().unwrap();
    let mut events = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        crate::contract::event(&v);
        let last = crate::support::event_kind(&v) == "ShutdownComplete";
        events.push(v);
        if last {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    (down, events)
}

/// The kinds of `events`, in order.
pub(crate) fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(crate::support::event_kind).collect()
}

#[test]
fn a_stock_cloud_image_comes_up_through_libvirt_with_castrads_seed() {
    let _lock = one_at_a_time();
    let t = Instant::now();
    let lv = Libvirtd::start();
    let env = Env::new();
    let vm = format!(
        "\n[[vms]]\nname = \"cloud\"\nbackend = \"libvirt\"\nbase_image = \"{}\"\ncpus = 2\n\
         memory = \"1 GiB\"\ndisk = \"3 GiB\"\naccel = \"tcg\"\n[vms.libvirt]\nuri = \"{}\"\n\
         [vms.ssh]\nuser = \"dev\"\n[vms.bootstrap]\nscript = \"mark.sh\"\n\
         verify_path = \"castra-mark\"\nhandshake_timeout_secs = 240\n",
        crate::cloud::image().display(),
        lv.uri()
    );
    let p = project(&env, &vm);
    let mut daemon = Some(env.start_daemon());
    let first = up(&env, &p, &[]);
    assert_eq!(first.statuses(), ["Success"], "{}", first.stderr);
    let (_, volumes) = lv.domains_and_volumes();
    assert_eq!(
        volumes,
        ["castra-lv-cloud-seed.img", "castra-lv-cloud.qcow2"]
    );
    assert_eq!(env.guest_sh(&p, "cloud", "id -un"), "dev\n");
    assert_eq!(up(&env, &p, &[]).statuses(), ["NoOp"]);

    let added = Instant::now();
    // down: systemd powers off on the ACPI power button; the domain stays defined.
    let (down, events) = down_with_events(&env, &p, &[]);
    assert_eq!(down["vms"][0]["outcome"], "graceful", "{down}");
    assert_eq!(
        kinds(&events),
        [
            "ShutdownRequested",
            "CooperativeAttempted",
            "CooperativeSucceeded",
            "ShutdownComplete"
        ]
    );
    assert_eq!(
        lv.virsh(&["domstate", "castra-lv-cloud"]).trim(),
        "shut off"
    );
    assert_eq!(
        lv.domains_and_volumes().0,
        ["castra-lv-cloud"],
        "persistent"
    );

    // up again: the same disk and stamp (NoOp), booted once more, and reachable.
    let again = up(&env, &p, &[]);
    assert_eq!(again.statuses(), ["NoOp"], "{}", again.stderr);
    assert_eq!(again.event("cloud", "VmLaunched").len(), 1);
    assert_eq!(env.guest_sh(&p, "cloud", "id -un"), "dev\n");

    // castrad dies hard; the domain runs on; a new castrad adopts it from libvirt.
    let d = daemon.take().unwrap();
    nix::sys::signal::kill(d.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(d);
    daemon = Some(env.start_daemon());
    let status = status_of(&env, &p, "cloud");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(env.guest_sh(&p, "cloud", "echo adopted"), "adopted\n");
    let adopted = up(&env, &p, &[]);
    assert_eq!(adopted.statuses(), ["NoOp"], "{}", adopted.stderr);
    assert!(
        adopted.event("cloud", "VmLaunched").is_empty(),
        "adopted, not relaunched"
    );

    eprintln!("libvirt cloud down, up and adoption: {:?}", added.elapsed());
    let gone = env.ctl(&p, &["down", "--discard", "--json"]).ok().json();
    assert_eq!(gone["vms"][0]["discarded"], true, "{gone}");
    let (domains, volumes) = lv.domains_and_volumes();
    assert!(
        domains.is_empty() && volumes.is_empty(),
        "{domains:?} {volumes:?}"
    );
    drop(daemon);
    eprintln!("libvirt cloud test: {:?}", t.elapsed());
}
