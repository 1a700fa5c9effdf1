//! Issue 25's smaller items, end to end on the real castrad (external VMs behind a loopback
//! sshd): a state directory with a space keeps its host key pin; a guest whose `stat` cannot
//! answer fails the ownership check, and a non-root remote_dir is private from the start; a
//! script's last unterminated stderr line cannot cut the driver's end marker; extreme numbers
//! in a method's params leave castrad answering; a cloud-config with `merge_how` is refused;
//! `~/.ssh/config` cannot add host keys, look them up in DNS or send variables to the guest.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fleet::{Fleet, ONE_VM};
use crate::sshd::Sshd;
use crate::support::{Env, raw_rpc};

/// Item 12: with castrad's socket and state directory under a path with spaces, the first run
/// pins the guest's host key in the state directory, and a guest that comes back with another
/// key is refused. (ssh read an unquoted `UserKnownHostsFile=/tmp/castra it …/known_hosts` as
/// several files, none of them the pin, and refused the ControlPath outright.)
#[test]
fn a_state_directory_with_a_space_keeps_the_host_key_pinned() {
    let env = Env::with_prefix("castra it ");
    assert!(env.state().to_string_lossy().contains(' '));
    let mut fleet = Fleet::new_in(env, ONE_VM, |c| c, Sshd::start);
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    let pin = fleet.state_root().join("vms/db/known_hosts");
    let pinned = std::fs::read_to_string(&pin).unwrap();
    let host_key = std::fs::read_to_string(fleet.sshd.dir.join("host_key.pub")).unwrap();
    let key = host_key.split_whitespace().nth(1).unwrap();
    assert!(
        pinned.contains(key),
        "the sshd's key is the one pinned: {pinned}"
    );

    fleet.sshd.restart_with_new_host_key();
    let again = fleet.up(&["--bootstrap", "always"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    let error = again.event("db", "BootstrapFailed")[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("host key of db changed since it was pinned"),
        "{error}"
    );
    assert_eq!(fleet.guest_runs("db"), 1, "the changed guest ran nothing");
}

/// A directory holding a link to every program of the usual PATH but `stat`.
fn path_without_stat(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for bin in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        for entry in std::fs::read_dir(bin).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name == "stat" || dir.join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(entry.path(), dir.join(&name));
        }
    }
    assert!(dir.join("sh").exists() && !dir.join("stat").exists());
    dir.display().to_string()
}

/// Item 13: a guest without `stat` (or without `stat -c`: BSD, macOS, a small busybox) used to
/// pass the ownership check of remote_dir unchecked. It now fails the run, saying why, before
/// anything is installed or run. With `stat`, a remote_dir the driver makes is 0700 from the
/// start (it was made 0755 with a non-root user's Vizier directory inside it).
#[test]
fn a_guest_that_cannot_check_ownership_runs_nothing_and_remote_dir_is_private() {
    let env = Env::new();
    let bin = env.path("nostat");
    let path = path_without_stat(&bin);
    let fleet = Fleet::new_in(
        env,
        ONE_VM,
        |c| c,
        |dir| Sshd::start_with_env(dir, &format!("PATH={path}")),
    );
    let up = fleet.up(&[]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    let error = up.event("db", "BootstrapFailed")[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    for part in [
        "cannot check who owns remote_dir",
        "stat gave 0 of",
        "needs a `stat` with `-c`",
    ] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
    assert_eq!(fleet.guest_runs("db"), 0);
    assert!(
        !fleet.env.path("guest/db").exists() && fleet.stamp("db").is_none(),
        "no remote_dir made, no stamp"
    );
    drop(fleet);

    // With stat: the Vizier directory inside remote_dir (a non-root user's default) makes
    // remote_dir, private from the start.
    let env = Env::new();
    let vizier = env.path("guest/db/.vizier");
    let vms = ONE_VM.replace(
        "[vms.bootstrap]\n",
        &format!("[vms.bootstrap]\nvizier_dir = \"{}\"\n", vizier.display()),
    );
    let fleet = Fleet::new_in(env, &vms, |c| c, Sshd::start);
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    for dir in [fleet.env.path("guest/db"), vizier] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}: {mode:o}", dir.display());
    }
}

/// Item 14: a script whose stderr ends with a line without a newline, just long enough that
/// the driver's end marker glued to it straddled castrad's 64 KiB line cap: the marker was cut
/// in two, and apply waited for its timeout. It now starts a line of its own.
#[test]
fn a_last_stderr_line_at_the_cap_does_not_hide_the_end_of_the_script() {
    let vms = ONE_VM.replace(
        "[vms.bootstrap]\n",
        "[vms.bootstrap]\napply_timeout_secs = 40\n",
    );
    let fleet = Fleet::new(&vms);
    // 64 KiB less 4 bytes: `CAST` would end the first piece, `RA-…` start the next.
    std::fs::write(
        fleet.project().join("scripts/db.sh"),
        "#!/bin/sh\necho \"$CASTRA_RUN_ID\" >> \"../$CASTRA_VM.runs\"\n\
         head -c 65532 /dev/zero | tr '\\0' x >&2\n",
    )
    .unwrap();
    let started = Instant::now();
    let up = fleet.up(&[]);
    let took = started.elapsed();
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    assert!(took < Duration::from_secs(25), "took {took:?}");
    let stderr: Vec<&str> = up
        .events
        .iter()
        .filter_map(|e| e["event"].get("BootstrapOutput"))
        .filter(|o| o["stream"] == "stderr")
        .filter_map(|o| o["line"].as_str())
        .collect();
    let xs: usize = stderr.iter().map(|l| l.matches('x').count()).sum();
    assert_eq!(xs, 65532, "every byte of the line, nothing of the marker");
    assert!(
        stderr.iter().all(|l| !l.contains("CASTRA-")),
        "{:?}",
        stderr
            .iter()
            .map(|l| &l[l.len().saturating_sub(60)..])
            .collect::<Vec<_>>()
    );
}

/// Item 15: `graceful_timeout_secs` is any u64, and u64::MAX once panicked castrad (a
/// libvirt stop's deadline; `libvirt.rs` stops a domain with it). Every method with a number
/// in its params gets the extremes; castrad answers each and is still there.
#[test]
fn extreme_numbers_in_params_leave_castrad_answering() {
    let mut fleet = Fleet::new(ONE_VM);
    assert_eq!(fleet.up(&[]).statuses(), ["Success"]);
    let socket = fleet.env.socket();
    let config = fleet.project().join("castra.toml");
    let max = u64::MAX;
    for (method, params) in [
        (
            "castra.down",
            json!({"config": config, "graceful_timeout_secs": max}),
        ),
        (
            "castra.down",
            json!({"config": config, "graceful_timeout_secs": 0}),
        ),
        (
            "castra.restart",
            json!({"config": config, "graceful_timeout_secs": max}),
        ),
        (
            "castra.console",
            json!({"config": config, "vm": "db", "max_bytes": max}),
        ),
        ("castra.status", json!({})),
    ] {
        let (response, _) = raw_rpc(&socket, method, params);
        assert!(
            response.get("result").is_some() || response["error"]["message"].is_string(),
            "{method}: {response}"
        );
    }
    let mut daemon = fleet.take_daemon();
    assert!(daemon.child.try_wait().unwrap().is_none(), "castrad exited");
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
    let (status, _) = raw_rpc(&socket, "castra.status", json!({}));
    assert!(status["result"]["projects"].is_array(), "{status}");
}

/// Item 16: a cloud-config with `merge_how` (or `merge_type`) could replace castrad's login
/// user, keys or the guest's host key; `plan` and `up` refuse it, naming the file, line and
/// key, before anything is made.
#[test]
fn a_user_data_with_merge_how_is_refused_at_plan_and_up() {
    let env = Env::new();
    env.write(&[
        (
            "p/castra.toml",
            "[project]\nname = \"p\"\n\n[[vms]]\nname = \"box\"\nbase_image = \"base.img\"\n\
             [vms.cloud_init]\nuser_data = \"user-data.yaml\"\n",
        ),
        ("p/base.img", ""),
        (
            "p/user-data.yaml",
            "#cloud-config\nusers:\n  - name: mine\n    merge_how: 'dict(replace)+list(replace)'\n",
        ),
    ]);
    let _daemon = env.start_daemon();
    let file = env.path("p/user-data.yaml").canonicalize().unwrap();
    let want = format!(
        "{}:4:5: merge_how: castra does not take `merge_how` in a [vms.cloud_init] user_data",
        file.display()
    );
    for command in ["plan", "up"] {
        let out = env.ctl(&env.path("p"), &[command]);
        assert_eq!(out.code, 2, "{command}: {out:?}");
        assert!(out.stderr.contains(&want), "{command}: {}", out.stderr);
    }
    assert!(!env.state().join("projects").exists(), "nothing made");
}

/// Item 17: the user's ssh config (read by every ssh castrad runs) asks for a
/// KnownHostsCommand, SSHFP lookups, and to send a variable of castrad's environment and set
/// another; none of it applies to castrad's sessions. ssh reads ~/.ssh/config from the
/// password database, so the file comes in front with `-F`, which ssh reads where it would
/// read ~/.ssh/config (after every `-o`); the same wrapper records `ssh -G`, what ssh made of
/// castrad's command line and the file.
#[test]
fn the_users_ssh_config_adds_no_host_key_source_and_sends_no_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ran, seen) = (d.join("known-hosts-command-ran"), d.join("ssh-G"));
    let config = d.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  KnownHostsCommand /usr/bin/touch {}\n  VerifyHostKeyDNS yes\n  \
             SendEnv CASTRA_IT_SECRET\n  SetEnv CASTRA_IT_SET=from-config\n",
            ran.display()
        ),
    )
    .unwrap();
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let ssh = bin.join("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\n/usr/bin/ssh -G -F '{c}' \"$@\" > '{g}' 2>&1\nexec /usr/bin/ssh -F '{c}' \"$@\"\n",
            c = config.display(),
            g = seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let fleet = Fleet::new_with(ONE_VM, |castrad| {
        castrad
            .env("PATH", &path)
            .env("CASTRA_IT_SECRET", "s3cret-of-castrad");
    });
    std::fs::write(
        fleet.project().join("scripts/db.sh"),
        "#!/bin/sh\necho \"secret=${CASTRA_IT_SECRET:-none} set=${CASTRA_IT_SET:-none}\"\n",
    )
    .unwrap();
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    let lines: Vec<&str> = up
        .event("db", "BootstrapOutput")
        .iter()
        .filter_map(|e| e["line"].as_str())
        .filter(|l| l.starts_with("secret="))
        .collect();
    assert_eq!(lines, ["secret=none set=none"]);
    assert!(!ran.exists(), "KnownHostsCommand ran");
    let effective = std::fs::read_to_string(&seen).unwrap();
    assert!(
        effective.lines().any(|l| l == "verifyhostkeydns false"),
        "{effective}"
    );
    assert!(!effective.contains("knownhostscommand"), "{effective}");
    // The wrapper saw castrad's ssh: the config file was in force for the rest.
    assert!(
        effective.lines().any(|l| l == "sendenv CASTRA_IT_SECRET"),
        "{effective}"
    );
}
