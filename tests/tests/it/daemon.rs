//! castrad's socket: permissions, single instance, stale sockets, peer credentials, signals,
//! systemd readiness and socket activation, and castractl's behaviour without a daemon.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{CASTRAD, Env, snapshot, wait_until};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn socket_is_private_and_removed_on_sigterm() {
    let env = Env::new();
    let daemon = env.start_daemon();
    assert_eq!(mode(&env.socket()), 0o600, "socket mode");
    assert_eq!(
        mode(env.socket().parent().unwrap()),
        0o700,
        "socket dir mode"
    );

    let status = env.http_rpc("castra.status", json!({}));
    assert_eq!(status["result"]["daemon"]["pid"], daemon.child.id());
    assert_eq!(status["result"]["projects"], json!([]));

    let exit = daemon.terminate();
    assert!(exit.success(), "castrad exits 0 on SIGTERM, got {exit:?}");
    assert!(!env.socket().exists(), "socket removed on shutdown");
}

#[test]
fn a_second_daemon_on_the_same_socket_exits_with_a_clear_message() {
    let env = Env::new();
    let first = env.start_daemon();
    // Another state directory, so the state directory's lock does not stop it first.
    let out = Command::new(CASTRAD)
        .arg("--socket")
        .arg(env.socket())
        .arg("--state-dir")
        .arg(env.path("other-state"))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another castrad is already running on"),
        "{stderr}"
    );
    // The first one is unharmed.
    assert_eq!(
        env.http_rpc("castra.version", json!({}))["result"]["protocol"],
        1
    );
    drop(first);
}

/// Issue 14 item 13: one castrad per state directory, whatever socket each is given, also
/// when systemd starts the second one on an activated socket.
#[test]
fn a_second_daemon_on_the_same_state_dir_names_the_first_and_touches_nothing() {
    let env = Env::new();
    let first = env.start_daemon();
    env.write(&[("state/projects/p-00000000/stamps/vm.json", "{}")]);
    let lock = env.state().join("castrad.lock");
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        format!("{}\n", first.child.id())
    );
    assert_eq!(mode(&lock), 0o600);
    let before = snapshot(&env.state());
    let first_socket = snapshot(env.socket().parent().unwrap());
    let expect_refusal = |stderr: &str| {
        assert!(
            stderr.contains(&format!(
                "another castrad (pid {}) is using the state directory",
                first.child.id()
            )) && stderr.contains(&*lock.to_string_lossy()),
            "{stderr}"
        );
    };

    let other = env.path("other/castrad.sock");
    let out = Command::new(CASTRAD)
        .arg("--socket")
        .arg(&other)
        .arg("--state-dir")
        .arg(env.state())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    expect_refusal(&String::from_utf8_lossy(&out.stderr));
    assert!(
        !env.path("other").exists(),
        "the second daemon made its socket"
    );

    // Activated by systemd: the second one exits at once and leaves systemd's socket alone.
    let activated = env.path("activated.sock");
    let activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&activated)
        .arg(CASTRAD)
        .arg("--state-dir")
        .arg(env.state())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd) must be installed");
    wait_until(Duration::from_secs(10), "the activation socket", || {
        activated.exists().then_some(())
    });
    let _trigger = std::os::unix::net::UnixStream::connect(&activated).unwrap();
    let out = activator.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    expect_refusal(&String::from_utf8_lossy(&out.stderr));
    assert!(activated.exists(), "the activated socket was removed");

    assert_eq!(
        snapshot(&env.state()),
        before,
        "the state directory changed"
    );
    assert_eq!(snapshot(env.socket().parent().unwrap()), first_socket);
    let status = env.ctl(env.dir.path(), &["status", "--json"]).ok().json();
    assert_eq!(status["daemon"]["pid"], first.child.id());
    drop(first);
}

#[test]
fn a_stale_socket_is_replaced_but_a_regular_file_is_not() {
    let env = Env::new();
    std::fs::create_dir_all(env.socket().parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(env.socket()).unwrap());
    assert!(env.socket().exists(), "stale socket left behind");
    let daemon = env.start_daemon();
    assert_eq!(
        env.http_rpc("castra.version", json!({}))["result"]["protocol"],
        1
    );
    assert!(daemon.terminate().success());

    std::fs::write(env.socket(), "precious").unwrap();
    let out = env.castrad_command().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a socket; refusing to replace it")
    );
    assert_eq!(std::fs::read_to_string(env.socket()).unwrap(), "precious");
}

#[test]
fn castractl_without_a_daemon_exits_3_and_says_how_to_start_it() {
    let env = Env::new();
    let out = env.ctl(env.dir.path(), &["status"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("castrad is not running"), "{out:?}");
    // The one wording of that advice (issue 24): the same in doctor and in --help.
    assert!(out.stderr.contains(castra_api::START_CASTRAD), "{out:?}");
    let help = env.ctl(env.dir.path(), &["--help"]);
    assert!(help.stdout.contains(castra_api::START_CASTRAD), "{help:?}");
    let json = env.ctl(env.dir.path(), &["status", "--json"]);
    assert_eq!(json.code, 3);
    assert_eq!(json.json()["error"]["kind"], "unreachable");
}

#[test]
fn castractl_global_flags_work_before_and_after_the_subcommand() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    let before = env.ctl(env.dir.path(), &["--json", "version"]).ok().json();
    let after = env.ctl(env.dir.path(), &["version", "--json"]).ok().json();
    assert_eq!(before, after);
    assert_eq!(before["castrad"]["protocol"], 1);
    let usage = env.ctl(env.dir.path(), &["plan", "--no-such-flag", "--json"]);
    assert_eq!(usage.code, 2);
    assert_eq!(usage.json()["error"]["kind"], "usage");
}

#[test]
fn connections_from_another_user_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root to act as another user, and CI runs as root"
        );
        eprintln!("SKIPPED LOUDLY: connections_from_another_user_are_refused needs root");
        return;
    }
    let env = Env::new();
    let _daemon = env.start_daemon();
    // Open the filesystem path so only SO_PEERCRED stands between nobody and the daemon.
    for dir in env
        .socket()
        .ancestors()
        .skip(1)
        .take_while(|d| d.starts_with(env.dir.path()))
    {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();

    let body = r#"{"jsonrpc":"2.0","id":1,"method":"castra.version"}"#;
    let curl = |as_nobody: bool| {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]);
            c
        } else {
            Command::new("curl")
        };
        cmd.args(["-sS", "-m", "5", "--unix-socket"])
            .arg(env.socket())
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                body,
                "http://castrad/",
            ])
            .output()
            .unwrap()
    };
    let mine = curl(false);
    assert!(
        String::from_utf8_lossy(&mine.stdout).contains("\"protocol\":1"),
        "{mine:?}"
    );
    let theirs = curl(true);
    assert!(
        !theirs.status.success(),
        "another uid got an answer: {theirs:?}"
    );
    assert!(
        !String::from_utf8_lossy(&theirs.stdout).contains("protocol"),
        "{theirs:?}"
    );
}

#[test]
fn castrad_tells_systemd_it_is_ready() {
    let env = Env::new();
    let notify_path = env.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = env
        .castrad_command()
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("a notification within 10 s");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.contains("READY=1"), "{message}");
    // READY means the socket answers now, not eventually.
    assert!(std::os::unix::net::UnixStream::connect(env.socket()).is_ok());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn castrad_accepts_a_socket_from_systemd_activation() {
    let env = Env::new();
    let socket = env.path("activated.sock");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .args(["-E", "CASTRA_LOG=debug"])
        .arg(CASTRAD)
        .arg("--state-dir")
        .arg(env.state())
        .arg("--socket")
        .arg(env.path("unused/should-not-exist.sock"))
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd) must be installed");
    wait_until(Duration::from_secs(10), "the activation socket", || {
        socket.exists().then_some(())
    });

    let out = Command::new(crate::support::CASTRACTL)
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    crate::contract::result_of("castra.status", &status);
    assert!(status["daemon"]["pid"].as_u64().unwrap() > 0);
    assert!(
        !env.path("unused").exists(),
        "castrad bound its own socket despite activation"
    );
    activator.kill().unwrap();
    activator.wait().unwrap();
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let env = Env::new();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let units = env.path("units");
    std::fs::create_dir_all(&units).unwrap();
    for name in ["castrad.service", "castrad.socket"] {
        let text = std::fs::read_to_string(repo.join("systemd").join(name)).unwrap();
        // The unit names the installed path; point it at the binary under test (the only edit).
        let rewritten = text.replace(
            "ExecStart=%h/.local/bin/castrad",
            &format!("ExecStart={CASTRAD}"),
        );
        assert_eq!(
            rewritten != text,
            name == "castrad.service",
            "{name}: ExecStart rewrite"
        );
        std::fs::write(units.join(name), rewritten).unwrap();
    }
    let service = std::fs::read_to_string(units.join("castrad.service")).unwrap();
    assert!(service.contains("Type=notify") && service.contains("KillMode=process"));
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("castrad.service"))
        .arg(units.join("castrad.socket"))
        .output()
        .expect("systemd-analyze must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// Issue 16 §6: under systemd, stderr is the journal (`JOURNAL_STREAM` names its device and
/// inode), which timestamps every line itself: castrad then writes neither timestamps nor
/// colour codes. A `JOURNAL_STREAM` that names another file (inherited, stderr redirected
/// since) changes nothing.
#[test]
fn castrad_logs_without_timestamps_or_colours_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    for journal in [false, true] {
        let env = Env::new();
        // Env::spawn_daemon truncates this file for castrad's stderr: same device and inode.
        let log = env.path("castrad.log");
        std::fs::File::create(&log).unwrap();
        let meta = std::fs::metadata(&log).unwrap();
        let stream = if journal {
            format!("{}:{}", meta.dev(), meta.ino())
        } else {
            format!("{}:{}", meta.dev(), meta.ino() + 1)
        };
        let daemon = env.start_daemon_with(|c| {
            c.env("JOURNAL_STREAM", &stream);
        });
        let _ = daemon.terminate();
        let text = std::fs::read_to_string(&log).unwrap();
        let ready = text
            .lines()
            .find(|l| l.contains("castrad ready"))
            .unwrap_or_else(|| panic!("no ready line in {text}"));
        assert!(!text.contains('\x1b'), "colour codes in {text}");
        let first = ready.trim_start().chars().next().unwrap();
        assert_eq!(
            first.is_ascii_digit(),
            !journal,
            "journal {journal}: a timestamp only off the journal: {ready}"
        );
        if journal {
            assert!(ready.trim_start().starts_with("INFO"), "{ready}");
        }
    }
}
