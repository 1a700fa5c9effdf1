//! castractl talks only to its own castrad, and castrad leaves directories it did not make as
//! they are (issue 25, items 7 and 8).
//!
//! The user is uid 1000 (`castra-user`, in a user database of the test's bind-mounted over
//! /etc/passwd for its commands, as in mounts_user.rs), running castractl with setpriv and no
//! capabilities. The attacker is uid 1001, or whoever answers on the socket: `it-rogue`, a
//! fake castrad that binds a socket, gives the file to one uid, listens as another, and
//! answers `castra.sshConfig` with settings that would run `touch MARKER` (a `proxy_command`,
//! a `ProxyCommand` option, a shell word in the hop's user). Each test checks castractl's
//! message and that MARKER was never made.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::json;

use crate::support::{CASTRACTL, CASTRAD, Ctl, Env, passwd_with, wait_until};

const UID: u32 = 1000;
const USER: &str = "castra-user";
const OTHER: u32 = 1001;

/// Bind-mounts `$1` on /etc/passwd and hides /run/user (the user has no runtime directory),
/// then runs the rest.
const ETC: &str = "mount --bind -- \"$1\" /etc/passwd && \
                   { [ ! -d /run/user ] || mount -t tmpfs -o mode=755 tmpfs /run/user; } && \
                   shift && exec \"$@\"";

const ROGUE: &str = env!("CARGO_BIN_EXE_it-rogue");

/// A fake castrad, killed when dropped.
struct Rogue(Child);

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test's directory, readable by the user, with the user's home, a project, a directory
/// the user owns for MARKER, and the user database.
struct Bench {
    env: Env,
}

impl Bench {
    fn new() -> Bench {
        let env = Env::new();
        std::fs::set_permissions(env.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        env.write(&[
            ("p/castra.toml", "[project]\nname = \"p\"\n"),
            ("etc/passwd", &passwd_with(UID, USER, &env.path("home"))),
        ]);
        for dir in ["home", "out"] {
            std::fs::create_dir(env.path(dir)).unwrap();
            std::os::unix::fs::chown(env.path(dir), Some(UID), Some(UID)).unwrap();
        }
        Bench { env }
    }

    fn marker(&self) -> PathBuf {
        self.env.path("out/pwned")
    }

    /// A directory for a socket: `mode`, owned by `owner`.
    fn dir(&self, name: &str, owner: u32, mode: u32) -> PathBuf {
        let dir = self.env.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(mode)).unwrap();
        dir
    }

    /// `program` as the user, with their home and the test's user database.
    fn as_user(&self, program: &str) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", ETC])
            .arg("castra-etc")
            .arg(self.env.path("etc/passwd"))
            .args([
                "setpriv".to_owned(),
                format!("--reuid={UID}"),
                format!("--regid={UID}"),
                "--clear-groups".to_owned(),
                "--inh-caps=-all".to_owned(),
                "--".to_owned(),
                program.to_owned(),
            ])
            .env("HOME", self.env.path("home"))
            .env("USER", USER)
            .env_remove("XDG_RUNTIME_DIR");
        command
    }

    /// castractl as the user in the project, against `socket`.
    fn ctl(&self, socket: &Path, args: &[&str]) -> Ctl {
        let out = self
            .as_user(CASTRACTL)
            .args(args)
            .current_dir(self.env.path("p"))
            .env("CASTRA_SOCKET", socket)
            .output()
            .expect("run castractl");
        Ctl {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Ctl::from(out)
        }
    }

    /// A fake castrad on `socket` (the file `owner`'s, mode 0600, listening as `listen_as`)
    /// answering `castra.sshConfig` with one host: `host` over the base below.
    fn rogue(&self, socket: &Path, owner: u32, listen_as: u32, host: serde_json::Value) -> Rogue {
        self.rogue_with_mode(socket, owner, 0o600, listen_as, host)
    }

    fn rogue_with_mode(
        &self,
        socket: &Path,
        owner: u32,
        mode: u32,
        listen_as: u32,
        host: serde_json::Value,
    ) -> Rogue {
        let mut answer = json!({
            "vm": "box",
            "alias": "castra-p-box",
            "host_name": "127.0.0.1",
            "port": closed_port(),
            "user": "dev",
            "identity_file": null,
            "known_hosts": "/dev/null",
            "host_key_alias": "castra-box",
            "options": [],
            "proxy_command": format!("touch {}", self.marker().display()),
            "config": "",
        });
        for (k, v) in host.as_object().unwrap() {
            answer[k] = v.clone();
        }
        let name = socket.file_name().unwrap().to_string_lossy();
        let file = self.env.path(&format!("answer-{name}.json"));
        std::fs::write(
            &file,
            json!({"project": "p", "hosts": [answer]}).to_string(),
        )
        .unwrap();
        let child = Command::new(ROGUE)
            .arg(socket)
            .args([
                owner.to_string(),
                format!("{mode:o}"),
                listen_as.to_string(),
            ])
            .arg(&file)
            .spawn()
            .expect("spawn it-rogue");
        let rogue = Rogue(child);
        wait_until(Duration::from_secs(10), "it-rogue to listen", || {
            std::os::unix::net::UnixStream::connect(socket).ok()
        });
        rogue
    }

    fn assert_nothing_ran(&self, out: &Ctl) {
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !self.marker().exists(),
            "castractl ran the fake castrad's command: {out:?}"
        );
    }
}

/// A TCP port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The user's socket directory holds a socket of another uid's that anyone may connect to
/// (put there by someone who could): castractl names its owner, mode and what it expected,
/// and connects to nothing.
#[test]
fn a_socket_of_another_user_is_refused_and_nothing_runs() {
    let bench = Bench::new();
    let socket = bench.dir("a", UID, 0o755).join("castrad.sock");
    let _rogue = bench.rogue_with_mode(&socket, OTHER, 0o666, OTHER, json!({}));
    let out = bench.ctl(&socket, &["ssh", "box", "--", "true"]);
    bench.assert_nothing_ran(&out);
    assert_eq!(out.code, 3, "{out:?}");
    let expected = format!(
        "refusing to talk to castrad at {}: the socket {} is owned by uid {OTHER} with mode 0666; \
         expected one owned by you (uid {UID}) or root, not writable by group or others",
        socket.display(),
        socket.display()
    );
    assert!(out.stderr.contains(&expected), "{expected}\n{out:?}");
}

/// A socket of the user's own in a directory anyone may write (sticky or not, another user
/// could have made the name first): refused, naming the directory.
#[test]
fn a_socket_directory_others_can_write_is_refused() {
    let bench = Bench::new();
    for (name, mode) in [("b", 0o777), ("t", 0o1777)] {
        let dir = bench.dir(name, 0, mode);
        let socket = dir.join("castrad.sock");
        let _rogue = bench.rogue(&socket, UID, UID, json!({}));
        let out = bench.ctl(&socket, &["ssh", "box", "--", "true"]);
        bench.assert_nothing_ran(&out);
        assert_eq!(out.code, 3, "{out:?}");
        let expected = format!(
            "its directory {} is owned by uid 0 (root) with mode {mode:04o}; expected one owned \
             by you",
            dir.display()
        );
        assert!(out.stderr.contains(&expected), "{expected}\n{out:?}");
    }
}

/// The socket file is the user's and its directory private, but the process that listens runs
/// as another uid (staged here by root: bind, give the file to the user, listen as 1001):
/// SO_PEERCRED says so after connecting, and castractl sends nothing.
#[test]
fn a_listener_of_another_uid_behind_the_users_own_socket_is_refused() {
    let bench = Bench::new();
    let socket = bench.dir("c", UID, 0o700).join("castrad.sock");
    let _rogue = bench.rogue(&socket, UID, OTHER, json!({}));
    let out = bench.ctl(&socket, &["ssh", "box", "--", "true"]);
    bench.assert_nothing_ran(&out);
    assert_eq!(out.code, 3, "{out:?}");
    let expected = format!(
        "refusing to talk to castrad at {}: the process listening there runs as uid {OTHER}, \
         not as you (uid {UID})",
        socket.display()
    );
    assert!(out.stderr.contains(&expected), "{expected}\n{out:?}");
    // `castractl version` says so too, rather than showing the fake's version.
    let version = bench.ctl(&socket, &["version", "--daemon"]);
    assert_eq!(version.code, 3, "{version:?}");
    assert!(version.stderr.contains("runs as uid 1001"), "{version:?}");
}

/// What answers on the user's own socket, as the user, is believed about where a VM is, but
/// castractl runs nothing it was handed: not a `proxy_command` (it builds the route itself
/// from `hop`'s fields, and without a hop connects directly), not a `ProxyCommand` among the
/// options (refused by the allow-list before ssh runs), not a shell word in a hop field (each
/// word of castractl's own ProxyCommand is quoted); for `cp` (sftp) as for `ssh`.
#[test]
fn castrads_ssh_settings_never_run_a_command_it_sent() {
    let bench = Bench::new();
    let dir = bench.dir("d", UID, 0o700);
    let marker = bench.marker();
    let touch = format!("touch {}", marker.display());

    // proxy_command alone: ssh goes straight to the (closed) port, and fails.
    let socket = dir.join("a.sock");
    let _rogue = bench.rogue(&socket, UID, UID, json!({}));
    let out = bench.ctl(&socket, &["ssh", "box", "--", "true"]);
    assert_eq!(out.code, 255, "ssh's own failure: {out:?}");
    bench.assert_nothing_ran(&out);
    std::fs::write(bench.env.path("p/f"), "x").unwrap();
    let out = bench.ctl(&socket, &["cp", "f", "box:/tmp/"]);
    assert_eq!(out.code, 1, "{out:?}");
    bench.assert_nothing_ran(&out);

    // A ProxyCommand (or LocalCommand) among the options: refused, naming it; nothing runs.
    for option in [
        format!("ProxyCommand={touch}"),
        format!("LocalCommand={touch}"),
    ] {
        let socket = dir.join(format!("{}.sock", &option[..5]));
        let _rogue = bench.rogue(&socket, UID, UID, json!({"options": [option]}));
        for args in [&["ssh", "box", "--", "true"][..], &["cp", "f", "box:/tmp/"]] {
            let out = bench.ctl(&socket, args);
            assert_eq!(out.code, 1, "{out:?}");
            let expected = format!(
                "castrad's settings for VM \"box\": option {option:?} is not one a project file \
                 may set (it can run a program on this machine"
            );
            assert!(out.stderr.contains(&expected), "{expected}\n{out:?}");
            bench.assert_nothing_ran(&out);
        }
    }

    // A hop whose user is a command substitution without whitespace (a valid ssh word): the
    // ProxyCommand castractl builds quotes it, so the shell running it substitutes nothing.
    let socket = dir.join("hop.sock");
    let hop = json!({"hop": {
        "host": "127.0.0.1",
        "port": closed_port(),
        "user": format!("$(touch${{IFS}}{})", marker.display()),
        "identity_file": null,
        "known_hosts": "/dev/null",
        "control_path": dir.join("hv-x"),
    }});
    let _rogue = bench.rogue(&socket, UID, UID, hop);
    let out = bench.ctl(&socket, &["ssh", "box", "--", "true"]);
    assert_eq!(out.code, 255, "{out:?}");
    bench.assert_nothing_ran(&out);

    // A hop field castractl cannot check: refused before anything runs.
    let socket = dir.join("badhop.sock");
    let hop = json!({"hop": {
        "host": "-oProxyCommand=sh",
        "port": null,
        "user": null,
        "identity_file": null,
        "known_hosts": null,
        "control_path": dir.join("hv-y"),
    }});
    let _rogue = bench.rogue(&socket, UID, UID, hop);
    let out = bench.ctl(&socket, &["ssh", "box", "--", "true"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("hop.host \"-oProxyCommand=sh\" is not a name without whitespace"),
        "{out:?}"
    );
}

/// castrad (`command`: the program, run as whoever it says) with `--socket SOCKET` and the
/// env's state directory and image store, until its socket answers or it exits.
fn castrad_in(env: &Env, socket: &Path, mut command: Command) -> CastradRun {
    command
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(env.state())
        .arg("--image-store")
        .arg(env.images())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    watch(command, socket, env.path("castrad.log"))
}

/// Starts castrad (`command`), its stderr to `log`, until `socket` answers or it exits.
fn watch(mut command: Command, socket: &Path, log: PathBuf) -> CastradRun {
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn castrad");
    // Owned before waiting: a castrad that never answers here is still stopped.
    let mut run = CastradRun {
        child,
        exited: None,
        log,
    };
    run.exited = wait_until(Duration::from_secs(20), "castrad to listen or exit", || {
        if let Some(status) = run.child.try_wait().unwrap() {
            return Some(Some(status));
        }
        std::os::unix::net::UnixStream::connect(socket)
            .ok()
            .map(|_| None)
    });
    run
}

struct CastradRun {
    child: Child,
    exited: Option<std::process::ExitStatus>,
    log: PathBuf,
}

impl CastradRun {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CastradRun {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The user's castrad with `--socket` in an existing directory of theirs, mode 0755: the
/// directory keeps its mode (castrad used to chmod it 0700), and the user's castractl talks
/// to it there.
#[test]
fn castrad_keeps_an_existing_socket_directory_as_it_is() {
    let bench = Bench::new();
    let env = &bench.env;
    // Everything this castrad uses is the user's.
    for dir in ["state", "images"] {
        std::fs::create_dir(env.path(dir)).unwrap();
        std::os::unix::fs::chown(env.path(dir), Some(UID), Some(UID)).unwrap();
    }
    let dir = bench.dir("shared-run", UID, 0o755);
    let socket = dir.join("castrad.sock");
    let castrad = castrad_in(env, &socket, bench.as_user(CASTRAD));
    assert!(castrad.exited.is_none(), "{}", castrad.stderr());
    assert_eq!(mode(&dir), 0o755);
    let version = bench.ctl(&socket, &["version", "--daemon", "--json"]).ok();
    assert!(version.stdout.contains("\"castrad\""), "{version:?}");
    assert_eq!(mode(&dir), 0o755);
}

/// `--socket` in a directory anyone may write, like `/tmp` without its sticky bit: castrad
/// refuses to start, naming it, and leaves its mode alone (no chmod of a directory it did not
/// make: with `--socket /run/castrad.sock` as root it used to `chmod 700 /run`).
#[test]
fn castrad_refuses_a_socket_directory_others_can_write_and_changes_nothing() {
    let env = Env::new();
    for mode_was in [0o777, 0o1777] {
        let dir = env.path(&format!("open-{mode_was:o}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(mode_was)).unwrap();
        let socket = dir.join("castrad.sock");
        let castrad = castrad_in(&env, &socket, Command::new(CASTRAD));
        let status = castrad.exited.expect("castrad must not start");
        assert!(!status.success());
        let expected = format!(
            "socket directory {} is writable by others (mode {mode_was:04o}, owner uid 0)",
            dir.display()
        );
        assert!(castrad.stderr().contains(&expected), "{}", castrad.stderr());
        assert_eq!(mode(&dir), mode_was);
        assert!(!socket.exists());
    }
}

/// A socket directory that does not exist yet is castrad's own: made 0700, with its missing
/// parents, and castractl talks to castrad there.
#[test]
fn castrad_makes_a_missing_socket_directory_0700() {
    let env = Env::new();
    let socket = env.path("new/deeper/castrad.sock");
    let castrad = castrad_in(&env, &socket, Command::new(CASTRAD));
    assert!(castrad.exited.is_none(), "{}", castrad.stderr());
    assert_eq!(mode(&env.path("new")), 0o700);
    assert_eq!(mode(&env.path("new/deeper")), 0o700);
    let out = Command::new(CASTRACTL)
        .args(["version", "--daemon"])
        .env("CASTRA_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Without XDG_RUNTIME_DIR and without /run/user/<uid> (hidden), the user's castrad and
/// castractl agree on a socket under the user's state directory, never in /tmp (castrad used
/// to listen on /tmp/castra-<uid>/castrad.sock there): castrad makes
/// `~/.local/state/castra/run` 0700 and castractl reaches it with every default.
#[test]
fn without_a_runtime_directory_the_socket_is_under_the_users_state_directory() {
    let bench = Bench::new();
    let home = bench.env.path("home");
    let socket = home.join(".local/state/castra/run/castrad.sock");
    let defaults = |program: &str| {
        let mut command = bench.as_user(program);
        for var in [
            "CASTRA_SOCKET",
            "CASTRA_STATE_DIR",
            "XDG_STATE_HOME",
            "XDG_CACHE_HOME",
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
        ] {
            command.env_remove(var);
        }
        command
    };
    let old = std::env::temp_dir().join(format!("castra-{UID}/castrad.sock"));
    let castrad = watch(defaults(CASTRAD), &socket, bench.env.path("castrad.log"));
    assert!(castrad.exited.is_none(), "{}", castrad.stderr());
    assert!(!old.exists(), "a socket in /tmp: {}", old.display());
    let run = socket.parent().unwrap();
    assert_eq!(mode(run), 0o700);
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(run).unwrap()),
        UID
    );
    let out = defaults(CASTRACTL)
        .args(["version", "--daemon"])
        .current_dir(&home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
