//! The first hour as a normal user (issue 24 §8): README's "Installing for daily use" after
//! `sudo scripts/setup`, run by an account that is not root, with no root anywhere after.
//!
//! The account is the test's own: uid 1000 named `castra-user`, with a home in the test's
//! directory, in a user database of the test's (an /etc/passwd bind-mounted in a mount
//! namespace of each command's own: the host's /etc is not touched, and the account needs no
//! cleaning up). Every command below runs as that uid (setpriv, no capabilities) with the
//! environment of a login shell and nothing of the test's: HOME, USER, a PATH with
//! ~/.local/bin first, an XDG_RUNTIME_DIR of its own.
//!
//! As that user: `scripts/install` from a checkout of the user's own, with the built tree's
//! binaries (`--from`: the suite builds no release); `castractl doctor` before castrad runs
//! (the machine's checks, through `castrad --check`); castrad by hand (no systemd as PID 1
//! here), with every default (socket, state, image store); `castractl init` in an empty
//! directory; `castractl up` of the cloud-style guest as `dev` (its catalog image from a local
//! mirror standing for Debian's); Vizier under the guest's systemd; a reboot, after which the
//! agent is back without a bootstrap run; `castractl ssh` and `doctor`. Every process of
//! castrad's and every file it wrote are the user's.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bootstrap::Up;
use crate::support::{CASTRACTL, CASTRAD, Ctl, Daemon, Env, uid_of, vm_of, wait_until};

const UID: u32 = 1000;
const USER: &str = "castra-user";

/// Bind-mounts `$1` on /etc/passwd, then runs the rest.
const ETC: &str = "mount --bind -- \"$1\" /etc/passwd && shift && exec \"$@\"";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The commands of README's "Installing for daily use" block, comments dropped.
fn readme_daily_use() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## Installing for daily use\n")
        .nth(1)
        .expect("README has \"## Installing for daily use\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in it");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The user: their home, their runtime directory, the user database that names them.
struct User {
    env: Env,
    passwd: PathBuf,
}

impl User {
    fn home(&self) -> PathBuf {
        self.env.path("home")
    }

    fn runtime_dir(&self) -> PathBuf {
        self.env.path("run-user")
    }

    /// `program` (found in the user's PATH) as the user, in `cwd`, with a login shell's
    /// environment and nothing else.
    fn command(&self, cwd: &Path, program: &str) -> Command {
        let home = self.home();
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", ETC])
            .arg("castra-etc")
            .arg(&self.passwd)
            .args([
                "setpriv".to_owned(),
                format!("--reuid={UID}"),
                format!("--regid={UID}"),
                "--groups=100".to_owned(),
                "--inh-caps=-all".to_owned(),
                "--".to_owned(),
                program.to_owned(),
            ])
            .current_dir(cwd)
            .env_clear()
            .env("HOME", &home)
            .env("USER", USER)
            .env("LOGNAME", USER)
            .env("SHELL", "/bin/sh")
            .env("LANG", "C.UTF-8")
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
                    home.join(".local/bin").display()
                ),
            );
        command
    }

    /// `castractl ARGS` as the user, in `cwd`: the castractl `scripts/install` put in PATH.
    fn ctl(&self, cwd: &Path, args: &[&str]) -> Ctl {
        let out = self
            .command(cwd, "castractl")
            .args(args)
            .output()
            .expect("run castractl");
        Ctl {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Ctl::from(out)
        }
    }
}

/// Processes whose command line mentions `needle`: (pid, command line).
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Every file and directory under `root` whose owner is not `uid`.
fn not_owned_by(root: &Path, uid: u32) -> Vec<PathBuf> {
    let mut wrong = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone meanwhile (a temp file)
        };
        if meta.uid() != uid {
            wrong.push(path.clone());
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(entry.path());
            }
        }
    }
    wrong
}

struct Down<F: Fn()>(F);

impl<F: Fn()> Drop for Down<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[test]
fn a_normal_user_installs_starts_castrad_and_brings_up_a_cloud_vm_with_no_root() {
    let _lock = crate::qemu::one_at_a_time();

    // README's block is what this test runs: setup (done by the suite's own scripts/setup),
    // install, the service, doctor.
    assert_eq!(
        readme_daily_use(),
        [
            "sudo scripts/setup --runtime",
            "scripts/install",
            "systemctl --user daemon-reload",
            "systemctl --user enable --now castrad.socket",
            "castractl doctor",
        ],
        "README's daily-use block changed: change this test with it"
    );

    let env = Env::new();
    // The user's checkout (what scripts/install reads of it) and the built tree's binaries
    // with their completions and man pages.
    let checkout = env.path("checkout");
    let built = env.path("built");
    for dir in ["scripts", "systemd"] {
        std::fs::create_dir_all(checkout.join(dir)).unwrap();
    }
    std::fs::copy(
        repo().join("scripts/install"),
        checkout.join("scripts/install"),
    )
    .unwrap();
    for unit in std::fs::read_dir(repo().join("systemd")).unwrap().flatten() {
        std::fs::copy(unit.path(), checkout.join("systemd").join(unit.file_name())).unwrap();
    }
    std::fs::copy(repo().join("Cargo.toml"), checkout.join("Cargo.toml")).unwrap();
    std::fs::create_dir_all(&built).unwrap();
    std::fs::copy(CASTRAD, built.join("castrad")).unwrap();
    std::fs::copy(CASTRACTL, built.join("castractl")).unwrap();
    xtask::write_assets(&built.join("assets")).unwrap();
    for dir in ["home/work", "run-user"] {
        std::fs::create_dir_all(env.path(dir)).unwrap();
    }
    std::fs::set_permissions(
        env.path("run-user"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let chown = Command::new("chown")
        .args(["-R", &format!("{UID}:{UID}")])
        .arg(env.dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    // The user database the user's commands see: the host's, with uid UID as USER.
    let passwd = crate::support::passwd_with(UID, USER, &env.path("home"));
    let passwd_file = env.path("passwd");
    std::fs::write(&passwd_file, passwd).unwrap();
    // The catalog's debian-12 as a local mirror serves it (root's: the test's, not Castra's).
    let mirror = crate::cloud::mirror(
        &env,
        "debian-12",
        "debian-12-genericcloud-amd64.qcow2",
        "SHA512SUMS",
    );
    let user = User {
        env,
        passwd: passwd_file,
    };
    let home = user.home();
    let work = home.join("work");

    // scripts/install, as the user, from their checkout, with no Rust in PATH.
    let install = user
        .command(&work, checkout.join("scripts/install").to_str().unwrap())
        .arg("--from")
        .arg(&built)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    assert!(install.status.success(), "scripts/install: {said}");
    for file in [
        ".local/bin/castrad",
        ".local/bin/castractl",
        ".local/share/systemd/user/castrad.service",
        ".local/share/systemd/user/castrad.socket",
    ] {
        assert!(home.join(file).is_file(), "{file} installed: {said}");
    }

    // doctor before castrad runs: castrad unreachable (the one failure), the machine's checks
    // from the castrad installed beside castractl, the units found where install put them.
    let doctor = user.ctl(&work, &["doctor", "--json"]);
    assert_eq!(doctor.code, 1, "{doctor:?}");
    let doc = doctor.json();
    let checks = doc["checks"].as_array().unwrap();
    let check = |checks: &[Value], name: &str| -> Value {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check: {checks:?}"))
    };
    assert_eq!(check(checks, "castrad")["status"], "fail", "{doc}");
    assert_eq!(
        check(checks, "castrad")["fix"],
        castra_api::START_CASTRAD,
        "{doc}"
    );
    let castrad_verdict = check(checks, "castrad")["verdict"].to_string();
    assert!(
        castrad_verdict.contains(&format!("{}/.local/bin/castrad --check", home.display())),
        "the installed castrad checked the machine: {castrad_verdict}"
    );
    for name in ["qemu", "qemu-img", "ssh", "units"] {
        assert_eq!(check(checks, name)["status"], "ok", "{name}: {doc}");
    }
    let failed: Vec<&Value> = checks.iter().filter(|c| c["status"] == "fail").collect();
    assert_eq!(failed.len(), 1, "only castrad: {doc}");

    // castrad by hand, every default its own (no systemd user manager on this machine).
    let log = user.env.path("castrad.log");
    let child = user
        .command(&work, "castrad")
        .arg("--image-mirror")
        .arg(format!("http://127.0.0.1:{}", mirror.port))
        .env("CASTRA_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon {
        child,
        log: log.clone(),
    };
    let socket = user.runtime_dir().join("castra/castrad.sock");
    wait_until(Duration::from_secs(10), "castrad's socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    assert_eq!(uid_of(daemon.child.id()), UID, "castrad is the user's");

    // init, then up: the cloud guest as `dev`.
    let project = home.join("work/myvm");
    std::fs::create_dir_all(&project).unwrap();
    let chown = Command::new("chown")
        .arg(format!("{UID}:{UID}"))
        .arg(&project)
        .status()
        .unwrap();
    assert!(chown.success());
    let init = user.ctl(&project, &["init", "--image", "debian-12"]);
    assert_eq!(init.code, 0, "{init:?}");
    let config = std::fs::read_to_string(project.join("castra.toml")).unwrap();
    assert!(config.contains("user = \"dev\""), "{config}");
    // The one change: a first boot under TCG (no KVM here) takes minutes, more than the
    // default handshake timeout; examples/cloud sets the same.
    std::fs::write(
        project.join("castra.toml"),
        format!("{config}handshake_timeout_secs = 600\n"),
    )
    .unwrap();
    let _down = Down(|| {
        let _ = user.ctl(&project, &["down", "--timeout", "5"]);
    });
    let up = user.ctl(&project, &["up", "--json"]);
    let up = Up::parse(up.code, &up.stdout, &up.stderr);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    let enabled = crate::cloud::step_detail(&up, "dev", "vizier-enable");
    assert!(
        enabled.starts_with("started under systemd (system unit castra-vizier as uid "),
        "{enabled}"
    );

    // QEMU is the user's too.
    let qemus: Vec<(u32, String)> = processes_naming("qemu-system")
        .into_iter()
        .filter(|(_, c)| c.contains(&home.display().to_string()))
        .collect();
    assert_eq!(qemus.len(), 1, "{qemus:?}");
    assert_eq!(uid_of(qemus[0].0), UID, "{qemus:?}");

    // castractl ssh: a shell in the VM as dev.
    let who = user.ctl(&project, &["ssh", "dev", "--", "id -un"]);
    assert_eq!((who.code, who.stdout.trim()), (0, "dev"), "{who:?}");

    // A reboot: the agent comes back by itself, with no bootstrap run.
    let status = || -> Value {
        let s = user.ctl(&project, &["status", "--json"]).ok().json();
        vm_of(&s, "dev")
    };
    let before = wait_until(Duration::from_secs(60), "the health check", || {
        status()["vizier"]["pid"].as_u64()
    });
    let logs = home.join(".local/state/castra");
    let run_logs = || {
        let mut n = 0;
        let mut stack = vec![logs.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.parent().is_some_and(|p| p.ends_with("logs/bootstrap")) {
                    n += 1;
                }
            }
        }
        n
    };
    let runs_before = run_logs();
    assert!(runs_before >= 1, "the first up's run log");
    let _ = user.ctl(&project, &["ssh", "dev", "--", "sudo systemctl reboot"]);
    let after = wait_until(
        Duration::from_secs(600),
        "the agent after the reboot",
        || {
            let v = status()["vizier"].clone();
            let pid = v["pid"].as_u64()?;
            (v["healthy"] == true && pid != before).then_some(pid)
        },
    );
    assert_ne!(after, before);
    assert_eq!(run_logs(), runs_before, "no bootstrap run");
    let active = user.ctl(
        &project,
        &["ssh", "dev", "--", "systemctl is-active castra-vizier"],
    );
    assert_eq!(active.stdout.trim(), "active", "{active:?}");

    // doctor with castrad and the project: nothing fails.
    let doctor = user.ctl(&project, &["doctor", "--json"]);
    let doc = doctor.json();
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(check(checks, "castrad")["status"], "ok", "{doc}");
    assert!(
        checks.iter().all(|c| c["status"] != "fail"),
        "nothing fails: {doc}"
    );
    assert_eq!(doctor.code, 0, "{doctor:?}");

    // A login user without sudo (issue 24 §5): dev loses it, with lingering turned on for
    // them (what a guest's admin does for such a user), and the system unit goes. The next
    // run finds no agent and puts it under dev's own systemd user manager, and says so; a
    // power cycle later it is back by itself, with no run.
    let sh = |command: &str| {
        let out = user.ctl(&project, &["ssh", "dev", "--", command]);
        assert_eq!(out.code, 0, "guest command {command:?}: {out:?}");
        out.stdout
    };
    sh("sudo systemctl disable --now castra-vizier && \
        sudo rm /etc/systemd/system/castra-vizier.service && sudo systemctl daemon-reload && \
        sudo loginctl enable-linger dev && sudo rm /etc/sudoers.d/90-cloud-init-users");
    assert_ne!(
        user.ctl(&project, &["ssh", "dev", "--", "sudo -n true"])
            .code,
        0,
        "dev has no sudo now"
    );
    let again = user.ctl(&project, &["up", "--bootstrap", "always", "--json"]);
    let again = Up::parse(again.code, &again.stdout, &again.stderr);
    assert_eq!(again.statuses(), ["Success"], "{}", again.stderr);
    let enabled = crate::cloud::step_detail(&again, "dev", "vizier-enable");
    assert_eq!(
        enabled,
        "started under systemd (user unit castra-vizier, lingering; no passwordless sudo)"
    );
    assert_eq!(
        sh("systemctl --user is-active castra-vizier").trim(),
        "active"
    );
    let under_user_unit = wait_until(Duration::from_secs(60), "the health check", || {
        status()["vizier"]["pid"].as_u64().filter(|p| *p != after)
    });
    let runs = run_logs();
    user.ctl(&project, &["down"]).ok();
    let back = user.ctl(&project, &["up", "--json"]);
    let back = Up::parse(back.code, &back.stdout, &back.stderr);
    assert_eq!(back.statuses(), ["NoOp"], "{}", back.stderr);
    // A NoOp touches no guest, so castrad's health check waits for the next run: the agent
    // is asked in the guest, as a user would (its banner names its pid).
    let banner_pid = || -> Option<u64> {
        let out = user.ctl(
            &project,
            &[
                "ssh",
                "dev",
                "--",
                "sh /var/tmp/castra/dev/.vizier/*/vizier.sh banner /var/tmp/castra/dev/.vizier/state | tail -n 1",
            ],
        );
        let banner: Value = serde_json::from_str(out.stdout.trim()).ok()?;
        banner["pid"].as_u64()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if banner_pid().is_some_and(|p| p != under_user_unit) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let seen = user.ctl(
                &project,
                &[
                    "ssh",
                    "dev",
                    "--",
                    "loginctl show-user dev; systemctl --user status castra-vizier; \
                     journalctl --user -b --no-pager | tail -n 30",
                ],
            );
            panic!("no agent after the power cycle; in the guest: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(run_logs(), runs, "no bootstrap run");

    // Nothing of root's in the user's home: castrad's state, the image store, the installed
    // files are all the user's.
    for dir in [".local/state/castra", ".cache/castra/images", ".local/bin"] {
        assert!(home.join(dir).is_dir(), "{dir}");
    }
    let wrong = not_owned_by(&home, UID);
    assert!(wrong.is_empty(), "not the user's: {wrong:?}");
}
