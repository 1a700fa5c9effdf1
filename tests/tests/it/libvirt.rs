//! libvirt VMs end to end, against a real libvirtd: the `Libvirtd` fixture starts its own
//! `virtlogd` and `libvirtd` in session mode with private directories (in a user namespace
//! where they run as uid 1000, so libvirtd takes itself for an unprivileged user's daemon: no
//! /etc, /run or /var/lib of the host is read or written), reached at their own socket
//! (`qemu:///session?socket=…`), and stops them by pid. QEMU's capability probe (≈ 9 s on
//! a first start) is cached in `target/libvirt-cache`, shared by the tests (0.3 s after).
//! A "remote" hypervisor is that same daemon reached through a loopback sshd (`qemu+ssh://`)
//! whose host key castrad has pinned.
//!
//! Guests boot under TCG (domain type 'qemu'), one test at a time (`qemu::one_at_a_time`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bootstrap::Up;
use crate::libvirt_drift::drift_and_restart;
use crate::libvirt_lifecycle::{auto_on_this_host, down_with_events, kinds};
use crate::qemu::{guest, one_at_a_time};
use crate::support::{Env, wait_until};

/// A private libvirtd + virtlogd.
pub struct Libvirtd {
    pub dir: tempfile::TempDir,
    virtlogd: Child,
    libvirtd: Child,
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/libvirt-cache")
}

impl Libvirtd {
    /// A libvirtd with a `castra` pool in the fixture's directory.
    pub fn start() -> Libvirtd {
        let lv = Libvirtd::start_without_pool();
        let pool = lv.dir.path().join("pool");
        lv.virsh(&[
            "pool-define-as",
            "castra",
            "dir",
            "--target",
            pool.to_str().unwrap(),
        ]);
        lv.virsh(&["pool-start", "castra"]);
        lv
    }

    /// A libvirtd without any storage pool, as a user's session daemon starts (castrad makes
    /// its own there, issue 24).
    pub fn start_without_pool() -> Libvirtd {
        assert!(
            Path::new("/usr/sbin/libvirtd").exists(),
            "libvirtd missing: scripts/setup installs libvirt-daemon libvirt-daemon-driver-qemu"
        );
        let dir = tempfile::Builder::new()
            .prefix("castra-lv-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["run", "config/libvirt", "pool", "home"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::create_dir_all(cache_dir()).unwrap();
        // Shared base images are never chowned (a session daemon cannot anyway).
        std::fs::write(
            d.join("config/libvirt/qemu.conf"),
            "dynamic_ownership = 0\n",
        )
        .unwrap();
        let spawn = |program: &str, log: &str| {
            Command::new("unshare")
                // A mount namespace of their own: `small_pool` mounts there, never on the host.
                .args([
                    "--user",
                    "--map-user=1000",
                    "--map-group=1000",
                    "--mount",
                    "--",
                ])
                .arg(program)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", d.join("home"))
                .env("XDG_RUNTIME_DIR", d.join("run"))
                .env("XDG_CONFIG_HOME", d.join("config"))
                .env("XDG_CACHE_HOME", cache_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(d.join(log)).unwrap()))
                .spawn()
                .expect("unshare (util-linux)")
        };
        let virtlogd = spawn("virtlogd", "virtlogd.log");
        let libvirtd = spawn("libvirtd", "libvirtd.log");
        let lv = Libvirtd {
            dir,
            virtlogd,
            libvirtd,
        };
        wait_until(Duration::from_secs(60), "libvirtd to answer", || {
            lv.try_virsh(&["uri"]).ok()
        });
        lv
    }

    /// A dir pool `name` on a tmpfs of `size` (as mount's size=), mounted in libvirtd's own
    /// mount namespace: gone with libvirtd, never seen by the host.
    pub fn small_pool(&self, name: &str, size: &str) {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("nsenter")
            .arg(format!("--target={}", self.libvirtd.id()))
            .args(["--mount", "--", "mount", "-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg(format!("castra-{name}"))
            .arg(&dir)
            .status()
            .expect("nsenter (util-linux)");
        assert!(status.success(), "mounting a tmpfs for pool {name}");
        let target = dir.to_str().unwrap();
        self.virsh(&["pool-define-as", name, "dir", "--target", target]);
        self.virsh(&["pool-start", name]);
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/libvirt/libvirt-sock")
    }

    pub fn uri(&self) -> String {
        format!("qemu:///session?socket={}", self.socket().display())
    }

    pub fn try_virsh(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn virsh(&self, args: &[&str]) -> String {
        self.try_virsh(args)
            .unwrap_or_else(|e| panic!("virsh {args:?}: {e}"))
    }

    /// `virsh list --all --name` and `virsh vol-list castra`, as names.
    pub fn domains_and_volumes(&self) -> (Vec<String>, Vec<String>) {
        let names = |s: String| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        (
            names(self.virsh(&["list", "--all", "--name"])),
            names(self.virsh(&["vol-list", "castra"])),
        )
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // No guest outlives the test: libvirtd's QEMUs would outlive libvirtd.
        if let Ok(running) = self.try_virsh(&["list", "--name"]) {
            for name in running.lines().filter(|l| !l.trim().is_empty()) {
                let _ = self.try_virsh(&["destroy", name.trim()]);
            }
        }
        for child in [&mut self.libvirtd, &mut self.virtlogd] {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const MARK_SCRIPT: &str =
    "#!/bin/sh\nset -eu\necho \"$CASTRA_RUN_ID\" >> runs\necho bootstrapped > castra-mark\n";

/// A `[[vms]]` of the tiny guest on libvirt at `uri` (plus `extra` in `[vms.libvirt]`).
pub(crate) fn libvirt_vm(name: &str, uri: &str, extra: &str) -> String {
    let g = guest().display();
    format!(
        "\n[[vms]]\nname = \"{name}\"\nbackend = \"libvirt\"\nbase_image = \"{g}/base.img\"\n\
         kernel = \"{g}/vmlinuz\"\ninitrd = \"{g}/initrd.img\"\ncmdline = \"console=ttyS0 quiet\"\n\
         cpus = 1\nmemory = \"512 MiB\"\naccel = \"tcg\"\n\
         [vms.libvirt]\nuri = \"{uri}\"\n{extra}\
         [vms.cloud_init]\nenabled = false\n\
         [vms.ssh]\nuser = \"root\"\nidentity = \"{g}/id_ed25519\"\n\
         [vms.bootstrap]\nscript = \"mark.sh\"\nremote_dir = \"/data/castra/{{vm}}\"\n\
         verify_path = \"castra-mark\"\nhandshake_timeout_secs = 180\n"
    )
}

fn qemu_vm(name: &str) -> String {
    let g = guest().display();
    format!(
        "\n[[vms]]\nname = \"{name}\"\nbase_image = \"{g}/base.img\"\nkernel = \"{g}/vmlinuz\"\n\
         initrd = \"{g}/initrd.img\"\ncmdline = \"console=ttyS0 quiet\"\ncpus = 1\nmemory = \"512 MiB\"\n\
         accel = \"tcg\"\n[vms.cloud_init]\nenabled = false\n\
         [vms.ssh]\nuser = \"root\"\nidentity = \"{g}/id_ed25519\"\n\
         [vms.bootstrap]\nscript = \"mark.sh\"\nremote_dir = \"/data/castra/{{vm}}\"\n\
         verify_path = \"castra-mark\"\nhandshake_timeout_secs = 180\n"
    )
}

pub(crate) fn project(env: &Env, vms: &str) -> PathBuf {
    env.write(&[
        ("p/castra.toml", &format!("[project]\nname = \"lv\"\n{vms}")),
        ("p/mark.sh", MARK_SCRIPT),
    ]);
    env.path("p")
}

/// The name castrad gives the domain of `vm` in the project `project` of `env`'s castrad:
/// `castra-<project>-<vm>-<8 hex of the sha256 of the project's state root>` (issue 25).
pub(crate) fn domain_of(env: &Env, project: &str, vm: &str) -> String {
    use std::io::Write;
    let projects = env.state().join("projects");
    let root = std::fs::read_dir(&projects)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.rsplit_once('-').is_some_and(|(n, _)| n == project)
        })
        .unwrap_or_else(|| panic!("no state root of {project} in {}", projects.display()));
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = root.as_os_str().as_encoded_bytes();
    sha.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = sha.wait_with_output().unwrap();
    format!(
        "castra-{project}-{vm}-{}",
        &String::from_utf8_lossy(&out.stdout)[..8]
    )
}

pub(crate) fn up(env: &Env, project: &Path, args: &[&str]) -> Up {
    let mut full = vec!["up", "--json"];
    full.extend_from_slice(args);
    let out = env.ctl(project, &full);
    Up::parse(out.code, &out.stdout, &out.stderr)
}

pub(crate) fn status_of(env: &Env, project: &Path, vm: &str) -> serde_json::Value {
    let config = project.join("castra.toml").canonicalize().unwrap();
    let status = env.http_rpc("castra.status", serde_json::json!({ "config": config }));
    crate::support::vm_of(&status["result"], vm)
}

/// The whole lifecycle of the tiny guest on a "remote" hypervisor (qemu+ssh through the
/// loopback sshd; the cloud-guest test covers the local URI), with `accel = "auto"` probed
/// there, and a `down` escalated to `virsh destroy` once the guest ignores the power button.
#[test]
fn a_libvirt_vm_from_up_to_discard_with_a_castrad_restart_between() {
    let _lock = one_at_a_time();
    let t = Instant::now();
    let lv = Libvirtd::start();
    let env = Env::new();
    let sshd = crate::sshd::Sshd::start(&env.path("hv"));
    let pins = env.path("hv_known_hosts");
    pin(&sshd, &pins);
    let extra = format!("known_hosts = \"{}\"\n", pins.display());
    let vm = libvirt_vm("box", &remote_uri(&sshd, &lv), &extra);
    let p = project(&env, &vm.replace("accel = \"tcg\"", "accel = \"auto\""));
    let mut daemon = Some(env.start_daemon());

    let first = up(&env, &p, &[]);
    assert_eq!(first.statuses(), ["Success"], "{}", first.stderr);
    let seq = first.sequence("box");
    assert_eq!(
        &seq[..3],
        ["OverlayPrepared", "VmLaunched", "BootstrapPlanned"],
        "{seq:?}"
    );
    let launched = first.event("box", "VmLaunched")[0].clone();
    let hv = format!("{}@127.0.0.1:{}", sshd.user, sshd.port);
    let (accel, reason) = auto_on_this_host(&hv);
    assert_eq!(
        (
            launched["accel"].as_str(),
            launched["accel_reason"].as_str()
        ),
        (Some(accel), Some(reason.as_str())),
        "{launched}"
    );
    assert_eq!(status_of(&env, &p, "box")["accel"], accel);
    let (domains, volumes) = lv.domains_and_volumes();
    let dom = domain_of(&env, "lv", "box");
    assert_eq!(domains, [dom.as_str()]);
    assert_eq!(volumes, [format!("{dom}.qcow2")]);
    let xml = lv.virsh(&["dumpxml", &dom]);
    let kind = if accel == "tcg" { "qemu" } else { "kvm" };
    assert!(
        xml.contains(&format!("<domain type='{kind}'")),
        "{accel}: {xml}"
    );
    assert!(xml.contains(&format!(
        "hostfwd=tcp:127.0.0.1:{}-:22",
        launched["ssh_port"]
    )));
    assert!(lv.virsh(&["dominfo", &dom]).contains("Persistent:     yes"));
    assert_eq!(
        env.guest_sh(&p, "box", "cat /data/castra/box/castra-mark"),
        "bootstrapped\n"
    );

    // Rerun: NoOp, nothing relaunched.
    let second = up(&env, &p, &[]);
    assert_eq!(second.statuses(), ["NoOp"], "{}", second.stderr);
    assert!(second.event("box", "VmLaunched").is_empty());

    // down: ACPI through libvirt, the same lifecycle events as a QEMU VM; still defined. With
    // the longest timeout there is (issue 25: its deadline overflowed and panicked castrad).
    let longest = u64::MAX.to_string();
    let down = env
        .ctl(&p, &["down", "--json", "--timeout", &longest])
        .ok()
        .json();
    assert_eq!(down["vms"][0]["outcome"], "graceful", "{down}");
    assert_eq!(lv.virsh(&["domstate", &dom]).trim(), "shut off");
    assert_eq!(lv.domains_and_volumes().0, [dom.as_str()], "persistent");

    // up again: the same disk, still stamped: NoOp, and the guest answers. castrad's own copy
    // of the disk id is gone first: the domain's metadata has it.
    let disk_id = env.project_state().join("vms/box/disk-id");
    let id = std::fs::read_to_string(&disk_id).unwrap();
    std::fs::remove_file(&disk_id).unwrap();
    let third = up(&env, &p, &[]);
    assert_eq!(third.statuses(), ["NoOp"], "{}", third.stderr);
    assert_eq!(third.event("box", "VmLaunched").len(), 1);
    assert_eq!(
        std::fs::read_to_string(&disk_id).unwrap(),
        id,
        "the same disk"
    );
    assert_eq!(
        env.guest_sh(&p, "box", "cat /data/castra/box/runs | wc -l")
            .trim(),
        "1"
    );

    // libvirt.json is only a cache: without it, the restarted castrad finds the domain
    // from castra.toml's [vms.libvirt] and the domain's metadata (and writes the cache again).
    let cache = env.project_state().join("vms/box/libvirt.json");
    std::fs::remove_file(&cache).unwrap();

    // castrad dies hard; the domain runs on; a new castrad adopts it from libvirt.
    let d = daemon.take().unwrap();
    nix::sys::signal::kill(d.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(d);
    daemon = Some(env.start_daemon());
    let status = status_of(&env, &p, "box");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(env.guest_sh(&p, "box", "echo adopted"), "adopted\n");
    let fourth = up(&env, &p, &[]);
    assert_eq!(fourth.statuses(), ["NoOp"]);
    assert!(
        fourth.event("box", "VmLaunched").is_empty(),
        "adopted, not relaunched"
    );

    assert!(cache.exists(), "the cache written again from the metadata");

    drift_and_restart(&lv, &env, &p);

    // A guest deaf to the power button (its acpid gone): after the timeout, virsh destroy.
    let deaf = Instant::now();
    env.guest_sh(&p, "box", "kill $(pidof acpid)");
    let (down, events) = down_with_events(&env, &p, &["--timeout", "1"]);
    assert_eq!(down["vms"][0]["outcome"], "terminated", "{down}");
    assert_eq!(
        kinds(&events),
        [
            "ShutdownRequested",
            "CooperativeAttempted",
            "CooperativeTimedOut",
            "ShutdownEscalated",
            "ShutdownComplete"
        ]
    );
    let timed_out = &events[2]["event"]["CooperativeTimedOut"];
    assert!(
        timed_out["reason"]
            .as_str()
            .unwrap()
            .contains("did not power off within 1s of the ACPI power button"),
        "{timed_out}"
    );
    assert_eq!(
        events[3]["event"]["ShutdownEscalated"]["signal"], "destroy",
        "{events:?}"
    );
    assert_eq!(lv.virsh(&["domstate", &dom]).trim(), "shut off");
    eprintln!("libvirt down escalated to destroy: {:?}", deaf.elapsed());

    // down --discard, again without libvirt.json (the volumes are the metadata's): no
    // domain, no volume left.
    std::fs::remove_file(&cache).unwrap();
    let gone = env.ctl(&p, &["down", "--discard", "--json"]).ok().json();
    assert_eq!(gone["vms"][0]["outcome"], "not-running", "{gone}");
    assert_eq!(gone["vms"][0]["discarded"], true, "{gone}");
    let (domains, volumes) = lv.domains_and_volumes();
    assert!(
        domains.is_empty() && volumes.is_empty(),
        "{domains:?} {volumes:?}"
    );
    drop(daemon);
    eprintln!("libvirt lifecycle test: {:?}", t.elapsed());
}

/// The sshd standing in for a remote hypervisor: it logs in as this user, and the URI sends
/// libvirt's stream to the private daemon's socket with netcat.
pub(crate) fn remote_uri(sshd: &crate::sshd::Sshd, lv: &Libvirtd) -> String {
    format!(
        "qemu+ssh://{}@127.0.0.1:{}/session?socket={}&proxy=netcat&keyfile={}",
        sshd.user,
        sshd.port,
        lv.socket().display(),
        sshd.client_key.display()
    )
}

/// The hypervisor's host key, pinned as castrad expects it (`known_hosts` of [vms.libvirt]).
pub(crate) fn pin(sshd: &crate::sshd::Sshd, file: &Path) {
    let key = std::fs::read_to_string(sshd.dir.join("host_key.pub")).unwrap();
    let mut words = key.split_whitespace();
    let (kind, body) = (words.next().unwrap(), words.next().unwrap());
    std::fs::write(file, format!("[127.0.0.1]:{} {kind} {body}\n", sshd.port)).unwrap();
}

/// The shared volume `upload = true` makes of the tiny guest's base.img (raw), and that file
/// in the fixture's pool directory.
pub(crate) fn base_volume(lv: &Libvirtd) -> (String, PathBuf) {
    let out = Command::new("sha256sum")
        .arg(guest().join("base.img"))
        .output()
        .unwrap();
    let sha = String::from_utf8_lossy(&out.stdout)[..16].to_owned();
    let name = format!("castra-base-{sha}.raw");
    let file = lv.dir.path().join("pool").join(&name);
    (name, file)
}

/// The mixed project's libvirt VM also has `upload = true` (over qemu+ssh): its base image is
/// copied into the pool once, and a second project with the same image reuses that volume.
#[test]
fn a_mixed_project_brings_up_a_qemu_vm_and_a_libvirt_vm_over_ssh_in_one_up() {
    use std::os::unix::fs::MetadataExt;
    let _lock = one_at_a_time();
    let t = Instant::now();
    let lv = Libvirtd::start();
    let env = Env::new();
    // Its log shows each forwarding through the hypervisor (see below).
    let sshd = crate::sshd::Sshd::start_logging_channels(&env.path("hv"));
    let pins = env.path("hv_known_hosts");
    pin(&sshd, &pins);
    let extra = format!("known_hosts = \"{}\"\nupload = true\n", pins.display());
    let vms = format!(
        "{}{}",
        libvirt_vm("far", &remote_uri(&sshd, &lv), &extra),
        qemu_vm("near")
    );
    let p = project(&env, &vms);
    let daemon = env.start_daemon();
    // What an upload cut short leaves: a temporary volume, never taken for the image.
    let (base, base_file) = base_volume(&lv);
    let dead = format!("{base}.part-dead");
    lv.virsh(&["vol-create-as", "castra", &dead, "64M", "--allocation", "0"]);

    let first = up(&env, &p, &[]);
    assert_eq!(first.statuses(), ["Success", "Success"], "{}", first.stderr);
    let far = domain_of(&env, "lv", "far");
    let far_disk = format!("{far}.qcow2");
    assert_eq!(
        lv.domains_and_volumes().1,
        [base.as_str(), dead.as_str(), &far_disk],
        "one base volume; no .part of this upload left, another's untouched"
    );
    lv.virsh(&["vol-delete", "--pool", "castra", &dead]);
    assert!(
        std::fs::read(&base_file).unwrap() == std::fs::read(guest().join("base.img")).unwrap(),
        "the volume holds the image, byte for byte"
    );
    let overlay = lv.virsh(&["vol-dumpxml", "--pool", "castra", &far_disk]);
    assert!(
        overlay.contains(&format!("<path>{}</path>", base_file.display()))
            && overlay.contains("<format type='raw'/>"),
        "backed by the uploaded volume, its format explicit: {overlay}"
    );
    let uploaded = std::fs::metadata(&base_file).unwrap();
    assert_eq!(uploaded.len(), 64 << 20);
    assert!(
        uploaded.blocks() * 512 < 32 << 20,
        "holes neither sent nor allocated: {} blocks",
        uploaded.blocks()
    );
    assert_eq!(daemon.log().matches("base image uploaded").count(), 1);
    let names: Vec<&str> = first.outcome["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["vm"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["far", "near"], "outcomes in file order");
    assert_eq!(lv.domains_and_volumes().0, [far]);

    // The guest behind the hypervisor, as a user reaches it: through the hypervisor.
    let config = env.ctl(&p, &["ssh-config", "far"]).ok().stdout;
    assert!(config.contains("ProxyCommand 'ssh'"), "{config}");
    assert!(config.contains("-W %h:%p"), "{config}");
    assert!(config.contains("StrictHostKeyChecking=yes"), "{config}");
    let control = env.path("run/castra/ssh/hv-");
    assert!(
        config.contains(&format!("'ControlPath=\"{}", control.display())),
        "castrad's master: {config}"
    );
    assert_eq!(
        env.guest_sh(&p, "far", "cat /data/castra/far/castra-mark"),
        "bootstrapped\n"
    );
    // One master connection to the hypervisor carries virsh and the guest's ssh.
    let masters: Vec<_> = std::fs::read_dir(env.path("run/castra/ssh"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hv-") && !n.ends_with(".ssh"))
        .collect();
    assert_eq!(masters.len(), 1, "{masters:?}");
    // castractl's ssh and cp take that route too: each opens one forwarding to the guest's
    // port on the hypervisor's sshd. A direct connection to the workstation's 127.0.0.1:PORT
    // would reach the guest just as well here (the "remote" hypervisor is this machine) but
    // would not pass through that sshd.
    let hosts = env.ctl(&p, &["ssh-config", "far", "--json"]).ok().json();
    let port = hosts["hosts"][0]["port"].as_u64().unwrap();
    assert!(
        hosts["hosts"][0]["proxy_command"]
            .as_str()
            .is_some_and(|c| c.ends_with("-W %h:%p -- '127.0.0.1'")),
        "{hosts}"
    );
    let forwards = || {
        let to_guest = format!(", target 127.0.0.1 port {port}");
        sshd.log()
            .lines()
            .filter(|l| l.contains("server_request_direct_tcpip") && l.ends_with(&to_guest))
            .count()
    };
    let before = forwards();
    env.ctl(&p, &["ssh", "far", "--", "true"]).ok();
    assert_eq!(
        forwards(),
        before + 1,
        "castractl ssh went around the hypervisor"
    );
    // The tiny guest has no sftp server: the copy fails, in the guest's words, once its
    // connection got there (through the hypervisor, with the pinned key).
    let sent = env.path("sent.txt");
    std::fs::write(&sent, "through the hypervisor\n").unwrap();
    let cp = env.ctl(&p, &["cp", sent.to_str().unwrap(), "far:/tmp/sent.txt"]);
    assert!(
        cp.code == 1 && cp.stderr.contains("sftp-server: not found"),
        "{cp:?}"
    );
    assert_eq!(
        forwards(),
        before + 2,
        "castractl cp went around the hypervisor"
    );

    let again = up(&env, &p, &[]);
    assert_eq!(again.statuses(), ["NoOp", "NoOp"], "{}", again.stderr);
    let gone = env.ctl(&p, &["down", "--discard", "--json"]).ok().json();
    assert_eq!(gone["vms"].as_array().unwrap().len(), 2, "{gone}");
    // The VM's own volumes are gone; the shared base volume stays for other VMs.
    let (domains, volumes) = lv.domains_and_volumes();
    assert!(domains.is_empty(), "{domains:?}");
    assert_eq!(volumes, [base.as_str()]);

    // Another project with the same image (here on the local URI of the same daemon and
    // pool) finds the volume: not uploaded again, the same file.
    env.write(&[
        (
            "q/castra.toml",
            &format!(
                "[project]\nname = \"lv2\"\n{}",
                libvirt_vm("far", &lv.uri(), "upload = true\n")
            ),
        ),
        ("q/mark.sh", MARK_SCRIPT),
    ]);
    let q = env.path("q");
    let other = up(&env, &q, &[]);
    assert_eq!(other.statuses(), ["Success"], "{}", other.stderr);
    let reused = std::fs::metadata(&base_file).unwrap();
    assert_eq!(
        (reused.ino(), reused.mtime(), reused.mtime_nsec()),
        (uploaded.ino(), uploaded.mtime(), uploaded.mtime_nsec()),
        "the same volume, not uploaded again"
    );
    let log = daemon.log();
    assert_eq!(log.matches("base image uploaded").count(), 1, "{log}");
    assert!(log.contains("base volume reused"), "{log}");
    assert_eq!(
        lv.domains_and_volumes().1,
        [
            base.clone(),
            format!("{}.qcow2", domain_of(&env, "lv2", "far"))
        ]
    );
    env.ctl(&q, &["down", "--discard"]).ok();
    assert_eq!(lv.domains_and_volumes().1, [base.as_str()]);
    // What docs/REMOTE.md tells a user to do once no VM uses it.
    lv.virsh(&["vol-delete", "--pool", "castra", &base]);
    let (domains, volumes) = lv.domains_and_volumes();
    assert!(
        domains.is_empty() && volumes.is_empty(),
        "{domains:?} {volumes:?}"
    );
    drop(daemon);
    eprintln!("libvirt mixed test: {:?}", t.elapsed());
}

#[test]
fn hypervisor_problems_are_preflight_errors_naming_the_hypervisor_and_the_fix() {
    let lv = Libvirtd::start();
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

    // With upload = true the base image is a file on this machine, and missing here: a disk
    // still to be made cannot be (one that exists no longer needs it: it is not a config
    // error, issue 23).
    let err =
        try_up(libvirt_vm("vm", &lv.uri(), "upload = true\n").replace("base.img", "missing.img"));
    assert!(
        err.contains("vm vm: base_image ")
            && err.contains("missing.img cannot be used: it does not exist"),
        "{err}"
    );

    // libvirtd not running (nothing at that socket).
    let dead = "qemu:///session?socket=/nonexistent/libvirt-sock";
    let err = try_up(libvirt_vm("vm", dead, ""));
    assert!(
        err.contains(&format!("hypervisor this machine ({dead})")),
        "{err}"
    );
    assert!(err.contains("libvirtd is not running there"), "{err}");

    // No permission on libvirt's socket: a socket of another user, and a castrad (root here)
    // without the capability to override file permissions.
    let theirs = env.path("theirs/libvirt-sock");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(1000)), None).unwrap();
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    {
        let env = Env::new();
        let mut command = Command::new("setpriv");
        let castrad = env.castrad_command();
        for (k, v) in castrad.get_envs() {
            match v {
                Some(v) => command.env(k, v),
                None => command.env_remove(k),
            };
        }
        command
            .arg("--bounding-set=-dac_override,-dac_read_search")
            .arg("--")
            .arg(crate::support::CASTRAD)
            .args(castrad.get_args());
        let _daemon = env.spawn_daemon(command);
        let p = project(
            &env,
            &libvirt_vm(
                "vm",
                &format!("qemu:///session?socket={}", theirs.display()),
                "",
            ),
        );
        let out = env.ctl(&p, &["up"]);
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr
                .contains("castrad may not use libvirt's socket there"),
            "{}",
            out.stderr
        );
    }

    // The hypervisor's host key is not pinned: refused, never accepted on first use.
    std::fs::write(&pins, "").unwrap();
    let extra = format!("known_hosts = \"{}\"\n", pins.display());
    let err = try_up(libvirt_vm("vm", &remote_uri(&sshd, &lv), &extra));
    let hv = format!("hypervisor {}@127.0.0.1:{}", sshd.user, sshd.port);
    assert!(err.contains(&hv), "{err}");
    assert!(err.contains("host key is not the one pinned"), "{err}");

    // The pool does not exist there.
    pin(&sshd, &pins);
    let err = try_up(libvirt_vm(
        "vm",
        &remote_uri(&sshd, &lv),
        &format!("{extra}pool = \"nope\"\n"),
    ));
    assert!(
        err.contains("storage pool \"nope\" does not exist"),
        "{err}"
    );
    assert!(err.contains("pool-define-as nope dir"), "{err}");

    // upload = true into a pool whose volumes are not files (castrad could not rename a
    // finished upload there).
    lv.virsh(&[
        "pool-define-as",
        "lvm",
        "logical",
        "--source-name",
        "vg0",
        "--target",
        "/dev/vg0",
    ]);
    let err = try_up(libvirt_vm(
        "vm",
        &remote_uri(&sshd, &lv),
        &format!("{extra}pool = \"lvm\"\nupload = true\n"),
    ));
    assert!(err.contains(&hv), "{err}");
    assert!(
        err.contains("needs a pool whose volumes are files")
            && err.contains("pool \"lvm\" is of type \"logical\""),
        "{err}"
    );

    // A pool without room for even a new disk's first writes: refused before anything starts.
    lv.small_pool("tiny", "1m");
    let err = try_up(libvirt_vm("vm", &lv.uri(), "pool = \"tiny\"\n"));
    assert!(err.contains("vm vm: hypervisor this machine ("), "{err}");
    assert!(
        err.contains(
            "pool \"tiny\" on this machine is out of space (1 MiB free): starting a VM (its \
             new disk's and seed's first writes) needs 8 MiB there; free space in the pool's \
             directory, or set [vms.libvirt] pool to a bigger one"
        ),
        "{err}"
    );
    assert_eq!(
        lv.virsh(&["vol-list", "tiny"]).trim(),
        "",
        "nothing made there"
    );

    // The base image is not on the hypervisor.
    let vm = libvirt_vm("vm", &remote_uri(&sshd, &lv), &extra).replace("base.img", "missing.img");
    let err = try_up(vm);
    assert!(err.contains("missing.img is not there"), "{err}");
    let (domains, volumes) = lv.domains_and_volumes();
    assert!(
        domains.is_empty() && volumes.is_empty(),
        "nothing started: {domains:?} {volumes:?}"
    );
}
