use super::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::Mount;
use crate::testutil::sample_vm;

fn vm_with(dir: &Path, network: bool) -> Vm {
    let mut vm = sample_vm(dir);
    vm.cloud_init.enabled = false;
    vm.mounts = vec![
        Mount {
            host: dir.join("src"),
            guest: "/src".into(),
            readonly: false,
        },
        Mount {
            host: dir.join("docs"),
            guest: "/srv/my docs".into(),
            readonly: true,
        },
    ];
    if network {
        let nets = crate::config::network::assign(
            &dir.join("castra.toml"),
            &[("web", true), ("db", true)],
        )
        .unwrap();
        vm.network = nets[0].clone();
    }
    vm
}

#[test]
fn only_a_qemu_guest_without_cloud_init_with_something_to_set_up_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with(dir.path(), false);
    assert!(needed(&vm));
    vm.cloud_init.enabled = true;
    assert!(!needed(&vm), "the seed does it");
    vm.cloud_init.enabled = false;
    vm.mounts.clear();
    assert!(!needed(&vm), "nothing to set up");
    let mut vm = vm_with(dir.path(), true);
    vm.mounts.clear();
    assert!(needed(&vm), "the project network");
    vm.backend = BackendKind::External;
    assert!(!needed(&vm));
}

#[test]
fn the_setup_carries_the_mounts_the_nic_and_the_hosts_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm_with(dir.path(), true);
    let net = vm.network.clone().unwrap();
    let s = setup(&vm, "virtiofs");
    let cidr = format!("{}/24", net.address);
    assert_eq!(
        s.args,
        [
            "virtiofs",
            "2",
            "castra0",
            "/src",
            "rw",
            "castra1",
            "/srv/my docs",
            "ro",
            net.mac.as_str(),
            cidr.as_str(),
            "/etc/hosts",
        ]
    );
    let (web, db) = (net.hosts[0].1, net.hosts[1].1);
    assert_eq!(s.input, format!("2\n{web} web\n{db} db\n"));
    let s = setup(&vm_with(dir.path(), false), "9p");
    assert_eq!(&s.args[8..], ["", "", ""]);
    assert_eq!(s.input, "");
}

/// Runs the setup session's command with the local shell, as the guest's would; programs in
/// `dir/bin` first in PATH.
fn run_setup(dir: &Path, setup: &Setup) -> String {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command(setup))
        .env(
            "PATH",
            format!(
                "{}:{}",
                dir.join("bin").display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(setup.input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The guest side: each mount point made and mounted over the transport unless something is
/// mounted there already, castrad's block of the hosts file replaced (the rest kept), every
/// failure said in the marker with the guest's own words; run again, nothing changes.
#[test]
fn the_guest_side_mounts_writes_the_hosts_block_and_says_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = d.join("calls");
    let stub = |name: &str, body: String| crate::testutil::stub_command(&bin, name, &body);
    stub("sudo", "[ \"$1\" = -n ] && shift; exec \"$@\"".into());
    // Mounted: the first mount point, once mounted.
    let mounted = d.join("mounted");
    stub(
        "mountpoint",
        format!("grep -qxF \"$3\" {} 2>/dev/null", mounted.display()),
    );
    // castra0 mounts; castra1's module is missing.
    stub(
        "mount",
        format!(
            "echo \"$*\" >>{c}; [ \"$6\" = castra0 ] && echo \"$7\" >>{m} && exit 0; \
             echo \"mount: mounting $6 on $7 failed: No such device\" >&2; exit 1",
            c = calls.display(),
            m = mounted.display()
        ),
    );
    let mut vm = vm_with(d, true);
    let (src, docs) = (d.join("g/src"), d.join("g/my docs"));
    vm.mounts[0].guest = src.to_str().unwrap().into();
    vm.mounts[1].guest = docs.to_str().unwrap().into();
    let hosts = d.join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n# castra project network: begin\n10.9.9.9 old\n\
         # castra project network: end\n192.168.1.1 router\n",
    )
    .unwrap();
    let mut s = setup(&vm, "virtiofs");
    // No interface of this machine has that MAC: the address cannot be set.
    s.args[8] = "52:54:00:ff:ff:fe".into();
    *s.args.last_mut().unwrap() = hosts.to_str().unwrap().into();

    let out = run_setup(d, &s);
    let err = outcome(&out).unwrap_err();
    assert_eq!(
        err,
        format!(
            "cannot mount castra1 (virtiofs) at {}: mount: mounting castra1 on {} failed: \
             No such device; no network interface has the MAC 52:54:00:ff:ff:fe",
            docs.display(),
            docs.display()
        )
    );
    let net = vm.network.clone().unwrap();
    let block = format!(
        "# castra project network: begin\n{} web\n{} db\n# castra project network: end\n",
        net.hosts[0].1, net.hosts[1].1
    );
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        format!("127.0.0.1 localhost\n192.168.1.1 router\n{block}")
    );
    assert!(src.is_dir() && docs.is_dir());
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!(
            "-t virtiofs -o rw -- castra0 {}\n-t virtiofs -o ro -- castra1 {}\n",
            src.display(),
            docs.display()
        )
    );

    // Again, with castra1's mount working (over 9p) and no network: what is there stays.
    stub("mount", format!("echo \"$*\" >>{c}", c = calls.display()));
    let mut again = setup(&vm_with(d, false), "9p");
    again.args[3] = src.to_str().unwrap().into();
    again.args[6] = docs.to_str().unwrap().into();
    let done = outcome(&run_setup(d, &again)).unwrap();
    assert_eq!(
        done,
        format!("mounted {} {} (9p)", src.display(), docs.display())
    );
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        calls.lines().last().unwrap(),
        format!(
            "-t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro -- castra1 {}",
            docs.display()
        ),
        "castra0 is mounted already: left alone"
    );
    assert_eq!(calls.lines().count(), 3);
}

/// Issue 25: a mount point whose parent another account replaced with a symbolic link, or
/// whose parent others can write to, is refused before anything is made or mounted: `mkdir
/// -p` and `mount` as root would follow the link to wherever it points.
#[test]
fn a_mount_point_through_a_symlink_or_a_writable_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = d.join("calls");
    let stub = |name: &str, body: String| crate::testutil::stub_command(&bin, name, &body);
    stub("sudo", "[ \"$1\" = -n ] && shift; exec \"$@\"".into());
    stub("mountpoint", "exit 1".into());
    stub("mount", format!("echo \"$*\" >>{}", calls.display()));
    let (elsewhere, open) = (d.join("elsewhere"), d.join("open"));
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(open.join("sub")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, d.join("link")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut vm = vm_with(d, false);
    vm.mounts[0].guest = d.join("link/src").to_str().unwrap().into();
    vm.mounts[1].guest = open.join("sub/docs").to_str().unwrap().into();
    let err = outcome(&run_setup(d, &setup(&vm, "virtiofs"))).unwrap_err();
    assert_eq!(
        err,
        format!(
            "refusing to mount castra0 at {0}/link/src: {0}/link is a symbolic link; \
             refusing to mount castra1 at {0}/open/sub/docs: {0}/open is owned by uid {1}, \
             mode 777: others can write to it",
            d.display(),
            nix::unistd::geteuid()
        )
    );
    assert!(!calls.exists(), "nothing mounted");
    assert!(!elsewhere.join("src").exists() && !open.join("sub/docs").exists());

    // Made one directory at a time below a checked one, then mounted.
    vm.mounts.truncate(1);
    vm.mounts[0].guest = d.join("new/a b/src").to_str().unwrap().into();
    let done = outcome(&run_setup(d, &setup(&vm, "virtiofs"))).unwrap();
    assert_eq!(
        done,
        format!("mounted {}/new/a b/src (virtiofs)", d.display())
    );
    assert!(d.join("new/a b/src").is_dir());
}

/// Run twice with the same hosts: the file is left as it was.
#[test]
fn an_unchanged_hosts_file_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut vm = vm_with(d, true);
    vm.mounts.clear();
    let hosts = d.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let mut s = setup(&vm, "virtiofs");
    s.args[2] = "52:54:00:ff:ff:fe".into();
    *s.args.last_mut().unwrap() = hosts.to_str().unwrap().into();
    let first = outcome(&run_setup(d, &s)).unwrap_err();
    assert!(first.starts_with("no network interface"), "{first}");
    let written = std::fs::read_to_string(&hosts).unwrap();
    let before = std::fs::metadata(&hosts).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let _ = run_setup(d, &s);
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), written);
    assert_eq!(
        std::fs::metadata(&hosts).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn only_the_setup_marker_is_believed() {
    assert_eq!(
        outcome("noise\n\nCASTRA-setup guest-setup 0 mounted /src (virtiofs)\n"),
        Ok("mounted /src (virtiofs)".into())
    );
    assert_eq!(
        outcome("CASTRA-setup guest-setup 1 cannot mount castra0\n"),
        Err("cannot mount castra0".into())
    );
    let e = outcome("sh: mount: not found\n").unwrap_err();
    assert!(
        e.contains("nothing castrad understands: sh: mount: not found"),
        "{e}"
    );
    assert!(outcome("CASTRA-setup done\n").is_err());
}

/// Once per boot: pending until done for this QEMU (pid and start time), again after a new
/// launch; nothing without a launch record.
#[test]
fn the_setup_is_pending_once_per_launch() {
    let dir = tempfile::tempdir().unwrap();
    let root = StateRoot::for_project(dir.path(), "p", &dir.path().join("castra.toml"));
    let vm = vm_with(dir.path(), false);
    assert_eq!(pending(&root, &vm), None, "not running");
    let paths = root.vm(&vm.name);
    std::fs::create_dir_all(&paths.dir).unwrap();
    let launch = |pid: u32| {
        let record = serde_json::json!({
            "vm": "web", "pid": pid, "start_time": 77, "ssh_port": 2222, "accel": "tcg",
            "accel_reason": "", "qmp": "/q", "launched_at": "", "launched_unix_ms": 1,
            "config": "/p/castra.toml", "mount_transport": "9p",
        });
        std::fs::write(&paths.launch, record.to_string()).unwrap();
    };
    launch(100);
    let p = pending(&root, &vm).expect("a fresh boot");
    assert_eq!(p.setup.args[0], "9p");
    done(&root, &vm.name, &p);
    assert_eq!(pending(&root, &vm), None, "done this boot");
    launch(101);
    assert!(pending(&root, &vm).is_some(), "a new boot");
}

/// A context on a scripted guest, `web` running (launch record of pid 100) with a mount.
fn bench(dir: &Path) -> (Ctx, Job, std::sync::Arc<crate::testutil::Fake>) {
    let root = StateRoot::for_project(&dir.join("state"), "p", &dir.join("castra.toml"));
    let paths = root.vm("web");
    crate::state_root::ensure_dir(&paths.dir).unwrap();
    let record = serde_json::json!({
        "vm": "web", "pid": 100, "start_time": 77, "ssh_port": 2222, "accel": "tcg",
        "accel_reason": "", "qmp": "/q", "launched_at": "", "launched_unix_ms": 1,
        "config": "/p/castra.toml", "mount_transport": "virtiofs",
    });
    std::fs::write(&paths.launch, record.to_string()).unwrap();
    let fake = crate::testutil::Fake::new(vec![], vec![]);
    let ctx = Ctx {
        bus: crate::events::EventBus::default(),
        root,
        control_dir: dir.join("ssh"),
        snapshot: std::sync::Arc::new(tokio::sync::watch::channel(Default::default()).0),
        remote: fake.clone(),
        slots: super::super::Slots::default(),
        images: crate::testutil::store(dir),
    };
    let job = Job {
        vm: std::sync::Arc::new(vm_with(dir, false)),
        mode: (
            crate::config::BootstrapMode::Auto,
            crate::overrides::ModeSource::File,
        ),
        extra_warnings: Vec::new(),
        operation: "op-test".into(),
        config: dir.join("castra.toml"),
        endpoint: Some(crate::ssh::Endpoint {
            host: "127.0.0.1".into(),
            port: 2222,
        }),
        booting: true,
        cancel: super::super::Cancel::none(),
    };
    (ctx, job, fake)
}

/// A setup of its own (a NoOp's): one `guest-setup` step event saying what the guest did,
/// recorded for the boot; a guest that says it failed fails it with its words and the hint.
#[tokio::test]
async fn a_setup_of_its_own_is_one_step_and_is_recorded_for_the_boot() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, job, fake) = bench(dir.path());
    let p = pending(&ctx.root, &job.vm).expect("pending");
    run(&ctx, &job, &p).await.unwrap();
    assert_eq!(fake.calls(), ["exec 2222"]);
    let steps: Vec<_> = ctx
        .bus
        .history()
        .into_iter()
        .filter_map(|e| match &e.event {
            Event::BootstrapStep {
                step,
                status,
                detail,
                ..
            } => Some((*step, *status, detail.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [(
            Step::GuestSetup,
            StepStatus::Success,
            Some("mounted /src (virtiofs)".into())
        )]
    );
    assert_eq!(pending(&ctx.root, &job.vm), None, "done for this boot");

    std::fs::remove_file(ctx.root.vm("web").guest_setup).unwrap();
    *fake.exec_reply.lock().unwrap() =
        Some("CASTRA-setup guest-setup 1 cannot mount castra0 (virtiofs) at /src: no".into());
    let p = pending(&ctx.root, &job.vm).unwrap();
    let e = run(&ctx, &job, &p).await.unwrap_err();
    assert!(
        e.starts_with("guest-setup: cannot mount castra0 (virtiofs) at /src: no (a guest"),
        "{e}"
    );
    assert!(pending(&ctx.root, &job.vm).is_some(), "not recorded");
}
