//! scripts/setup, run against stand-ins of the package and service tools (apt-get, dpkg-query,
//! systemctl, runuser…) that log their argv and touch nothing: what it would install, for
//! whom, and what it leaves on the host.
//!
//! It must never harm the host it runs on (issue 14 item 16): it once stopped the host's own
//! ssh service whenever a package was missing. And it is for the people Castra is for (issue
//! 24): `sudo scripts/setup` gives Rust to the user who ran sudo, `--runtime` installs only
//! what running Castra needs, and an interrupted run leaves no policy-rc.d behind.
//!
//! Why stand-ins rather than a `--dry-run` flag: the tests then see the very `apt-get install`
//! and `systemctl` calls setup makes, on the path a fresh machine takes (dpkg-query says
//! nothing is installed), instead of a list printed by a second code path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::support::wait_until;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// One run of scripts/setup against the stand-ins, which log their argv (one line per call,
/// `name arg…`).
struct SetupRun {
    status: std::process::ExitStatus,
    stderr: String,
    calls: Vec<String>,
    /// What `/usr/sbin/policy-rc.d` (here a file in the temp dir) said while apt-get installed.
    policy_during_install: Option<String>,
}

/// scripts/setup ARGS as a command against the stand-ins in `dir/bin`. `installed` are the
/// packages they say are there; `uid` is what `id -u` says. Not through sudo (SUDO_USER
/// removed, whoever runs the suite) unless the caller sets it; `getent passwd` answers with
/// the home `SHIM_HOME`, when the caller sets that.
fn setup_command(dir: &Path, installed: &[&str], uid: u32, args: &[&str]) -> Command {
    let bin = dir.join("bin");
    let _ = std::fs::remove_file(dir.join("calls.log"));
    let _ = std::fs::remove_file(dir.join("policy.log"));
    std::fs::create_dir_all(&bin).unwrap();
    // One shim for every tool; it acts on its own name. dpkg-query -L openssh-server lists what
    // the real package ships (units, a template, an init script). apt-get install runs the
    // policy-rc.d as invoke-rc.d would, and with SHIM_APT_HOLD=DIR it says so in DIR/started,
    // then waits for DIR/release (an install that takes a while).
    let shim = r#"#!/bin/bash
name=${0##*/}
echo "$name $*" >>"$SHIM_LOG"
installed() { [[ " $SHIM_INSTALLED " == *" $1 "* ]]; }
case $name in
  id) [[ ${1:-} == -u ]] && echo "$SHIM_UID" || echo "uid=$SHIM_UID" ;;
  dpkg-query)
    case ${1:-} in
      -W) if installed "${!#}"; then echo installed; else echo not-installed; fi ;;
      -L) [[ ${2:-} == openssh-server ]] && printf '%s\n' /etc/init.d/ssh \
            /lib/systemd/system/ssh.service /lib/systemd/system/ssh.socket \
            /lib/systemd/system/ssh@.service /usr/sbin/sshd ;;
    esac ;;
  dpkg) [[ ${1:-} == -s ]] && installed "$2" ;;
  apt-get)
    if [[ ${1:-} == install ]]; then
      if [[ -x $CASTRA_SETUP_POLICY_RC_D ]]; then
        "$CASTRA_SETUP_POLICY_RC_D" ssh start; echo "exit $?" >"$SHIM_POLICY"
      else
        echo missing >"$SHIM_POLICY"
      fi
      if [[ -n ${SHIM_APT_HOLD:-} ]]; then
        touch "$SHIM_APT_HOLD/started"
        while [[ ! -e $SHIM_APT_HOLD/release ]]; do sleep 0.02; done
      fi
    fi ;;
  getent) [[ ${1:-} == passwd && -n ${SHIM_HOME:-} ]] || exit 2
    echo "$2:x:1000:1000::$SHIM_HOME:/bin/bash" ;;
  curl) exit 1 ;;
  runuser) # rustup's install, done: a cargo in the user's home (none with SHIM_RUSTUP_FAILS)
    if [[ -n ${SHIM_HOME:-} && -z ${SHIM_RUSTUP_FAILS:-} ]]; then
      mkdir -p "$SHIM_HOME/.cargo/bin" && printf '#!/bin/sh\n' >"$SHIM_HOME/.cargo/bin/cargo" &&
        chmod 755 "$SHIM_HOME/.cargo/bin/cargo"
    fi ;;
esac
exit 0
"#;
    std::fs::write(bin.join("shim"), shim).unwrap();
    let mut perms = std::fs::metadata(bin.join("shim")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(bin.join("shim"), perms).unwrap();
    for name in [
        "id",
        "dpkg-query",
        "dpkg",
        "apt-get",
        "apt-cache",
        "systemctl",
        "update-rc.d",
        "invoke-rc.d",
        "service",
        "deb-systemd-invoke",
        "cargo",
        "curl",
        "getent",
        "runuser",
    ] {
        let link = bin.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink("shim", link).unwrap();
        }
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut command = Command::new(workspace().join("scripts/setup"));
    command
        .args(args)
        .env("PATH", path)
        .env("SHIM_LOG", dir.join("calls.log"))
        .env("SHIM_INSTALLED", installed.join(" "))
        .env("SHIM_UID", uid.to_string())
        .env("SHIM_POLICY", dir.join("policy.log"))
        .env("CASTRA_SETUP_POLICY_RC_D", dir.join("policy-rc.d"))
        .env_remove("SUDO_USER")
        .env_remove("SHIM_HOME")
        .env_remove("SHIM_RUSTUP_FAILS")
        .env_remove("SHIM_APT_HOLD");
    command
}

/// What a finished run of `setup_command(dir, …)` did.
fn setup_run(dir: &Path, out: Output) -> SetupRun {
    SetupRun {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        calls: std::fs::read_to_string(dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect(),
        policy_during_install: std::fs::read_to_string(dir.join("policy.log")).ok(),
    }
}

fn run_setup(dir: &Path, installed: &[&str], uid: u32) -> SetupRun {
    run_setup_with(dir, installed, uid, &[], &[])
}

/// `run_setup` with arguments and more environment.
fn run_setup_with(
    dir: &Path,
    installed: &[&str],
    uid: u32,
    args: &[&str],
    env: &[(&str, &Path)],
) -> SetupRun {
    let mut command = setup_command(dir, installed, uid, args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    setup_run(dir, out)
}

/// The packages a run asked apt-get to install.
fn apt_installs(run: &SetupRun) -> Vec<String> {
    run.calls
        .iter()
        .filter_map(|c| c.strip_prefix("apt-get install "))
        .flat_map(|c| c.split(' ').map(str::to_owned))
        .filter(|a| !a.starts_with('-'))
        .collect()
}

/// Whether this machine has a virtiofsd where setup looks for one (then setup does not ask
/// for the package).
fn host_has_virtiofsd() -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("virtiofsd").is_file()));
    on_path
        || [
            "/usr/libexec/virtiofsd",
            "/usr/lib/virtiofsd",
            "/usr/lib/qemu/virtiofsd",
        ]
        .iter()
        .any(|p| Path::new(p).is_file())
}

/// scripts/setup on a machine missing packages must leave the host's services alone (issue 14
/// item 16). It used to run `systemctl disable --now ssh` whenever any package was missing
/// (stopping the host's own sshd, maybe the only way in) and to install linux-image-cloud-amd64
/// (a kernel in the host's /boot, maybe its next default boot entry). Here every tool it would
/// use to change the host is a logging shim:
/// - fresh machine: openssh-server is installed with services held back (policy-rc.d says 101
///   while apt-get runs, and is gone after), then only its own units are disabled, without
///   `--now`; no kernel is installed;
/// - openssh-server already there, another package missing: no systemctl call at all, and an
///   existing policy-rc.d is left as it was;
/// - not root: a clear error naming the packages, nothing run.
#[test]
fn setup_installs_packages_without_touching_the_hosts_services_or_boot() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy-rc.d");
    let forbidden = |run: &SetupRun, allowed_units: &[&str]| {
        for call in &run.calls {
            let mut words = call.split(' ');
            let name = words.next().unwrap();
            let args: Vec<&str> = words.collect();
            assert!(
                !["invoke-rc.d", "service", "deb-systemd-invoke", "curl"].contains(&name),
                "setup ran {call:?}"
            );
            if name == "systemctl" || name == "update-rc.d" {
                for bad in [
                    "stop", "--now", "restart", "mask", "kill", "start", "enable",
                ] {
                    assert!(!args.contains(&bad), "setup ran {call:?}: {:?}", run.calls);
                }
                for unit in args
                    .iter()
                    .filter(|a| !a.starts_with('-') && **a != "disable")
                {
                    assert!(
                        allowed_units.contains(unit),
                        "setup touched {unit}, a service it did not install: {call:?}"
                    );
                }
            }
        }
    };

    // A fresh machine: nothing installed.
    let fresh = run_setup(dir.path(), &[], 0);
    assert!(fresh.status.success(), "{}", fresh.stderr);
    let installs = apt_installs(&fresh);
    assert!(
        installs.iter().any(|p| p == "openssh-server"),
        "openssh-server is installed: {:?}",
        fresh.calls
    );
    assert!(
        !installs.iter().any(|p| p.starts_with("linux-image")),
        "no kernel is installed on the host: {installs:?}"
    );
    assert_eq!(
        fresh.policy_during_install.as_deref(),
        Some("exit 101\n"),
        "policy-rc.d forbids starting services while apt-get installs: {}",
        fresh.stderr
    );
    assert!(
        !policy.exists(),
        "setup's own policy-rc.d is removed afterwards"
    );
    forbidden(&fresh, &["ssh.service", "ssh.socket"]);
    let systemctl: Vec<&String> = fresh
        .calls
        .iter()
        .filter(|c| c.starts_with("systemctl "))
        .collect();
    assert_eq!(
        systemctl,
        ["systemctl disable --quiet ssh.service ssh.socket"],
        "openssh-server's units (no template), which setup just installed, are disabled \
         (not stopped: they never started)"
    );

    // openssh-server there before (its service may be how the admin gets in), cpio missing;
    // an admin's policy-rc.d in place.
    let admins_policy = "#!/bin/sh\n# the admin's\nexit 0\n";
    std::fs::write(&policy, admins_policy).unwrap();
    let every: Vec<&str> = installs.iter().map(String::as_str).collect();
    let all_but_cpio: Vec<&str> = every.iter().copied().filter(|p| *p != "cpio").collect();
    let later = run_setup(dir.path(), &all_but_cpio, 0);
    assert!(later.status.success(), "{}", later.stderr);
    assert_eq!(apt_installs(&later), ["cpio"], "{:?}", later.calls);
    forbidden(&later, &[]);
    assert!(
        !later
            .calls
            .iter()
            .any(|c| c.starts_with("systemctl ") || c.starts_with("update-rc.d ")),
        "no service is touched when setup installed none: {:?}",
        later.calls
    );
    assert_eq!(
        std::fs::read_to_string(&policy).unwrap(),
        admins_policy,
        "an existing policy-rc.d is left as it was"
    );
    std::fs::remove_file(&policy).unwrap();

    // Everything there: nothing to do, nothing run but the queries.
    let done = run_setup(dir.path(), &every, 0);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.calls.iter().all(|c| c.starts_with("dpkg-query ")),
        "{:?}",
        done.calls
    );

    // Not root, packages missing: a clear error, nothing installed.
    let user = run_setup(dir.path(), &["curl"], 1000);
    assert!(!user.status.success());
    assert!(
        user.stderr
            .contains("missing packages: ca-certificates openssh-client uidmap")
            && user.stderr.contains("run as root (sudo scripts/setup)"),
        "{}",
        user.stderr
    );
    assert!(
        !user.calls.iter().any(|c| c.starts_with("apt-get")),
        "{:?}",
        user.calls
    );
}

/// `scripts/setup --runtime --no-build` on a fresh machine installs exactly what running Castra
/// needs (issue 24 item 1): QEMU, qemu-img, the OpenSSH client, newgidmap, OVMF, the trust
/// roots, and virtiofsd when the machine has none; nothing of the test bench, and no Rust (not
/// even through sudo). `--runtime` adds exactly what building needs for `scripts/install`
/// (gcc, the C library's files, curl) and Rust for the user who ran sudo; the developer set
/// (no flag) holds all of it and more.
#[test]
fn setup_runtime_and_build_install_only_what_running_and_building_castra_need() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home-alice");
    std::fs::create_dir_all(&home).unwrap();
    let sudo = [
        ("SUDO_USER", Path::new("alice")),
        ("SHIM_HOME", home.as_path()),
    ];
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let runtime = run_setup_with(dir.path(), &[], 0, &["--runtime", "--no-build"], &sudo);
    assert!(runtime.status.success(), "{}", runtime.stderr);
    let installs = sorted(apt_installs(&runtime));
    let mut expected = vec![
        "ca-certificates",
        "openssh-client",
        "ovmf",
        "qemu-system-x86",
        "qemu-utils",
        "uidmap",
    ];
    if !host_has_virtiofsd() {
        expected.push("virtiofsd");
    }
    expected.sort();
    assert_eq!(installs, expected, "{:?}", runtime.calls);
    assert!(
        !runtime
            .calls
            .iter()
            .any(|c| ["runuser ", "curl ", "getent "]
                .iter()
                .any(|p| c.starts_with(p))),
        "--runtime --no-build installs no Rust: {:?}",
        runtime.calls
    );
    assert_eq!(runtime.policy_during_install.as_deref(), Some("exit 101\n"));
    assert!(!dir.path().join("policy-rc.d").exists());

    let build = run_setup_with(dir.path(), &[], 0, &["--runtime"], &sudo);
    assert!(build.status.success(), "{}", build.stderr);
    let mut expected_build = expected.clone();
    expected_build.extend(["curl", "gcc", "libc6-dev"]);
    expected_build.sort();
    assert_eq!(
        sorted(apt_installs(&build)),
        expected_build,
        "{:?}",
        build.calls
    );
    assert_eq!(
        build
            .calls
            .iter()
            .filter(|c| c.starts_with("runuser -u alice "))
            .count(),
        1,
        "--runtime installs Rust for alice: {:?}",
        build.calls
    );

    let developer = run_setup(dir.path(), &[], 0);
    assert!(developer.status.success(), "{}", developer.stderr);
    let developer = apt_installs(&developer);
    for p in &expected_build {
        assert!(
            developer.iter().any(|d| d == p),
            "the developer set lacks {p}: {developer:?}"
        );
    }
    for p in [
        "busybox-static",
        "dropbear-bin",
        "cpio",
        "libvirt-daemon",
        "neovim",
    ] {
        assert!(developer.iter().any(|d| d == p), "{p}: {developer:?}");
        assert!(!expected_build.contains(&p), "{p}");
    }

    // Not root: the error says how to run it.
    let user = run_setup_with(dir.path(), &[], 1000, &["--runtime"], &[]);
    assert!(!user.status.success());
    assert!(
        user.stderr.contains("sudo scripts/setup --runtime)"),
        "{}",
        user.stderr
    );
    let user = run_setup_with(dir.path(), &[], 1000, &["--runtime", "--no-build"], &[]);
    assert!(
        user.stderr
            .contains("sudo scripts/setup --runtime --no-build)"),
        "{}",
        user.stderr
    );
    let alone = run_setup_with(dir.path(), &[], 0, &["--no-build"], &[]);
    assert!(
        !alone.status.success() && alone.stderr.contains("--no-build goes with --runtime"),
        "{}",
        alone.stderr
    );
    let bad = run_setup_with(dir.path(), &[], 0, &["--runtim"], &[]);
    assert!(
        !bad.status.success() && bad.stderr.contains("unknown argument '--runtim'"),
        "{}",
        bad.stderr
    );
}

/// `sudo scripts/setup` (issue 24 item 1): the packages as root, and Rust for the user who ran
/// sudo, installed as that user (runuser) with that user's HOME, by rustup told to leave the
/// shell start-up files alone; nothing when that user has a cargo already.
#[test]
fn setup_through_sudo_installs_rust_for_the_invoking_user_as_that_user() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home-alice");
    std::fs::create_dir_all(&home).unwrap();
    // Every package there (what a fresh run would install), so only the Rust part acts.
    let fresh = run_setup(dir.path(), &[], 0);
    let every = apt_installs(&fresh);
    let every: Vec<&str> = every.iter().map(String::as_str).collect();
    let sudo = [
        ("SUDO_USER", Path::new("alice")),
        ("SHIM_HOME", home.as_path()),
    ];

    let run = run_setup_with(dir.path(), &every, 0, &[], &sudo);
    assert!(run.status.success(), "{}", run.stderr);
    let runuser: Vec<&String> = run
        .calls
        .iter()
        .filter(|c| c.starts_with("runuser "))
        .collect();
    assert_eq!(runuser.len(), 1, "{:?}", run.calls);
    let call = runuser[0];
    for part in [
        "runuser -u alice -- env -u CARGO_HOME -u RUSTUP_HOME ",
        &format!(
            "HOME={} USER=alice LOGNAME=alice sh -c cd && curl ",
            home.display()
        ),
        "https://sh.rustup.rs | sh -s -- -y --no-modify-path --profile minimal --component clippy,rustfmt",
    ] {
        assert!(call.contains(part), "{part:?} in {call}");
    }
    assert!(
        !run.calls.iter().any(|c| c.starts_with("curl ")),
        "rustup is not fetched as root: {:?}",
        run.calls
    );
    assert!(
        run.stderr.contains(&format!(
            "installing the stable Rust toolchain for alice with rustup, in {}/.cargo",
            home.display()
        )),
        "{}",
        run.stderr
    );

    // rustup's download failed (no network: curl feeds sh nothing, and sh exits 0): setup
    // fails, and says what to run as alice.
    let offline_home = dir.path().join("home-offline");
    std::fs::create_dir_all(&offline_home).unwrap();
    let offline = run_setup_with(
        dir.path(),
        &every,
        0,
        &[],
        &[
            ("SUDO_USER", Path::new("alice")),
            ("SHIM_HOME", offline_home.as_path()),
            ("SHIM_RUSTUP_FAILS", Path::new("1")),
        ],
    );
    assert!(!offline.status.success(), "{}", offline.stderr);
    assert!(
        offline
            .stderr
            .contains("installing Rust for alice failed (see above); as alice, run: curl "),
        "{}",
        offline.stderr
    );

    // alice has rustup's cargo: nothing to do.
    let cargo = home.join(".cargo/bin/cargo");
    std::fs::create_dir_all(cargo.parent().unwrap()).unwrap();
    std::fs::write(&cargo, "#!/bin/sh\n").unwrap();
    let mut perms = std::fs::metadata(&cargo).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&cargo, perms).unwrap();
    let again = run_setup_with(dir.path(), &every, 0, &[], &sudo);
    assert!(again.status.success(), "{}", again.stderr);
    assert!(
        !again.calls.iter().any(|c| c.starts_with("runuser ")),
        "{:?}",
        again.calls
    );

    // A SUDO_USER with no passwd entry: a clear error.
    let ghost = run_setup_with(
        dir.path(),
        &every,
        0,
        &[],
        &[("SUDO_USER", Path::new("ghost"))],
    );
    assert!(!ghost.status.success());
    assert!(
        ghost.stderr.contains("SUDO_USER='ghost': no such user"),
        "{}",
        ghost.stderr
    );
}

/// Setup interrupted while apt-get installs (issue 24 item 1) leaves no policy-rc.d, and the
/// service it was installing stays off:
/// - SIGTERM to setup alone (`kill PID`): it waits for apt-get to end (services stay held back
///   meanwhile), then removes its policy-rc.d, disables what it installed, and exits 143;
/// - SIGINT to the whole process group (Ctrl-C): apt-get ends at once, and so does setup (130),
///   with the same clean-up;
/// - a policy-rc.d of setup's own left by a SIGKILL (which no trap sees) is taken for setup's
///   own by the next run, and removed.
#[test]
fn setup_interrupted_while_apt_get_runs_leaves_no_policy_rc_d() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let policy = dir.path().join("policy-rc.d");
    std::fs::create_dir_all(&hold).unwrap();
    let start = || {
        let _ = std::fs::remove_file(hold.join("started"));
        let _ = std::fs::remove_file(hold.join("release"));
        let mut command = setup_command(dir.path(), &[], 0, &[]);
        command
            .env("SHIM_APT_HOLD", &hold)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().unwrap();
        wait_until(Duration::from_secs(30), "apt-get install to start", || {
            hold.join("started").exists().then_some(())
        });
        child
    };
    let disabled = |run: &SetupRun| {
        assert!(
            run.calls
                .iter()
                .any(|c| c == "systemctl disable --quiet ssh.service ssh.socket"),
            "what apt-get was installing stays off: {:?}",
            run.calls
        );
    };

    // SIGTERM to setup alone.
    let mut child = start();
    let written = std::fs::read_to_string(&policy).expect("the policy-rc.d while apt-get runs");
    assert!(written.ends_with("exit 101\n"), "{written}");
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "setup waits for apt-get"
    );
    assert!(
        policy.exists(),
        "services stay held back while apt-get runs"
    );
    std::fs::write(hold.join("release"), "").unwrap();
    let run = setup_run(dir.path(), child.wait_with_output().unwrap());
    assert_eq!(run.status.code(), Some(143), "{}", run.stderr);
    assert!(!policy.exists(), "{}", run.stderr);
    disabled(&run);

    // SIGINT to the process group, as Ctrl-C sends.
    let child = start();
    let pgid = Pid::from_raw(child.id() as i32);
    killpg(pgid, Signal::SIGINT).unwrap();
    let run = setup_run(dir.path(), child.wait_with_output().unwrap());
    assert_eq!(run.status.code(), Some(130), "{}", run.stderr);
    assert!(!policy.exists(), "{}", run.stderr);
    disabled(&run);

    // Left by a setup that was killed: the next run knows it for its own.
    std::fs::write(&policy, &written).unwrap();
    let next = run_setup(dir.path(), &[], 0);
    assert!(next.status.success(), "{}", next.stderr);
    assert!(
        next.stderr.contains("left by a setup that was killed"),
        "{}",
        next.stderr
    );
    assert_eq!(next.policy_during_install.as_deref(), Some("exit 101\n"));
    assert!(!policy.exists(), "{}", next.stderr);
}
