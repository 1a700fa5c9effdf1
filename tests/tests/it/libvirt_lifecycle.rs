//! Lifecycle checks shared by the libvirt tests (what `accel = "auto"` must choose, a `down`
//! with its events), and the cloud-style guest's lifecycle (Debian, systemd, cloud-init with
//! castrad's seed) through libvirt on the local URI (`qemu:///session`; the tiny guest's in
//! `libvirt.rs` goes over qemu+ssh): up (in the `castra` pool castrad makes itself on a
//! daemon that has none), NoOp, an ACPI `down`, up again, castrad killed and the domain
//! re-adopted, then `down --discard` leaving nothing on the hypervisor.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::libvirt::{Libvirtd, libvirt_vm, pin, project, remote_uri, status_of, up};
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
    // No pool: castrad makes its own on this session daemon (issue 24).
    let lv = Libvirtd::start_without_pool();
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
    let dom = crate::libvirt::domain_of(&env, "lv", "cloud");
    assert_eq!(volumes, [format!("{dom}-seed.img"), format!("{dom}.qcow2")]);
    assert!(
        env.state()
            .join(format!("libvirt-pool/{dom}.qcow2"))
            .exists(),
        "the disk is in castrad's own pool"
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
    assert_eq!(lv.virsh(&["domstate", &dom]).trim(), "shut off");
    assert_eq!(lv.domains_and_volumes().0, [dom.as_str()], "persistent");

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

/// Issue 24: on this machine's session daemon (the default URI) castrad makes its own pool
/// `castra` when it is missing, in its state directory, and starts it again when it does not
/// run; on another host (the same daemon through a loopback sshd) it makes none and says how.
/// No guest boots: each `up` stops at a preflight check after the pool's.
#[test]
fn castrad_makes_its_own_pool_on_this_machines_session_daemon_only() {
    let lv = Libvirtd::start_without_pool();
    let env = Env::new();
    let sshd = crate::sshd::Sshd::start(&env.path("hv"));
    let pins = env.path("hv_known_hosts");
    let _daemon = env.start_daemon();
    let try_up = |vm: String| {
        let p = project(&env, &vm);
        let out = env.ctl(&p, &["up"]);
        assert_eq!(out.code, 2, "a preflight error: {out:?}");
        out.stderr
    };

    // Over SSH: none made, and how to make it.
    pin(&sshd, &pins);
    let extra = format!("known_hosts = \"{}\"\n", pins.display());
    let err = try_up(libvirt_vm("vm", &remote_uri(&sshd, &lv), &extra));
    assert!(
        err.contains("storage pool \"castra\" does not exist; create it there once")
            && err.contains("pool-define-as castra dir"),
        "{err}"
    );
    assert!(lv.try_virsh(&["pool-info", "castra"]).is_err(), "none made");
    // On this machine's session daemon castrad makes its own, in its state directory, before
    // it finds the next problem; and starts it again when it does not run.
    let own_pool = |what: &str| {
        let xml = lv.virsh(&["pool-dumpxml", "castra"]);
        let dir = env.state().join("libvirt-pool");
        assert!(
            xml.contains(&format!("<path>{}</path>", dir.display())),
            "{what}: {xml}"
        );
        let info = lv.virsh(&["pool-info", "castra"]);
        let state = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
        };
        assert_eq!(
            state("State:").as_deref(),
            Some("running"),
            "{what}: {info}"
        );
        assert_eq!(
            state("Autostart:").as_deref(),
            Some("yes"),
            "{what}: {info}"
        );
    };
    let missing_base = libvirt_vm("vm", &lv.uri(), "").replace("base.img", "missing.img");
    let err = try_up(missing_base.clone());
    assert!(err.contains("missing.img is not there"), "{err}");
    own_pool("made");
    lv.virsh(&["pool-destroy", "castra"]);
    let err = try_up(missing_base);
    assert!(err.contains("missing.img is not there"), "{err}");
    own_pool("started again");
}
