//! Fixtures: a private castrad per test (own temp socket and state dir), castractl and raw
//! HTTP (`curl --unix-socket`) against it, project writers and a whole-tree snapshot used to
//! prove that a request wrote nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CASTRAD: &str = env!("CARGO_BIN_EXE_it-castrad");
pub const CASTRACTL: &str = env!("CARGO_BIN_EXE_it-castractl");

/// Polls `check` every 20 ms until it returns Some, or panics after `timeout` naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real uid of `pid`, from /proc/<pid>/status.
pub fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The host's /etc/passwd with uid `uid` as `user` (primary group `uid`, home `home`, shell
/// /bin/sh) in place of whoever has it there: the user database a test bind-mounts over
/// /etc/passwd for the processes it runs as that user.
pub fn passwd_with(uid: u32, user: &str, home: &Path) -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter(|l| l.split(':').nth(2) != Some(&uid.to_string()))
        .map(|l| format!("{l}\n"))
        .chain([format!(
            "{user}:x:{uid}:{uid}:castra test:{}:/bin/sh\n",
            home.display()
        )])
        .collect()
}

/// A temp directory holding a socket dir, a state dir and projects.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env::with_prefix("castra-it-")
    }

    /// An env whose directory's name starts with `prefix` (one with a space, say: then so do
    /// the paths of castrad's socket and state directory).
    pub fn with_prefix(prefix: &str) -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/castra/castrad.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// castrad's image store (`--image-store`).
    pub fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    /// The state root of the (only) project this env's daemon has seen.
    pub fn project_state(&self) -> PathBuf {
        let projects = self.state().join("projects");
        let entry = std::fs::read_dir(&projects)
            .unwrap_or_else(|e| panic!("{}: {e}", projects.display()))
            .next()
            .expect("a project's state root")
            .unwrap();
        entry.path()
    }

    /// Runs `command` in the guest of `vm` as a user would: `castractl ssh VM -- COMMAND` in
    /// `project` (castrad's identity for the VM, its pinned host key). Its stdout; the command
    /// must succeed.
    pub fn guest_sh(&self, project: &Path, vm: &str, command: &str) -> String {
        let out = self.ctl(project, &["ssh", vm, "--", command]);
        assert_eq!(out.code, 0, "guest command {command:?}: {out:?}");
        out.stdout
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `files` (relative path → contents) under the env dir.
    pub fn write(&self, files: &[(&str, &str)]) {
        for (rel, contents) in files {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
        }
    }

    /// castrad's `--user-config`: the test user's own config.toml, which lets projects name
    /// the built test guests in the repository's `target/` (as a user allows `~/images`).
    pub fn user_config(&self) -> PathBuf {
        let path = self.path("user-config.toml");
        if !path.exists() {
            let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
            let target = std::fs::canonicalize(&target).unwrap_or(target);
            std::fs::write(
                &path,
                format!("allowed_paths = [{:?}]\n", target.display().to_string()),
            )
            .unwrap();
        }
        path
    }

    /// Lets projects name `dir` (the user's config.toml gains it in `allowed_paths`): what a
    /// user with images in a directory of their own does. Counts at castrad's next load.
    pub fn allow(&self, dir: &Path) {
        let path = self.user_config();
        let text = std::fs::read_to_string(&path).unwrap();
        let entry = format!("{:?}, ", dir.display().to_string());
        std::fs::write(
            &path,
            text.replacen("allowed_paths = [", &format!("allowed_paths = [{entry}"), 1),
        )
        .unwrap();
    }

    pub fn castrad_command(&self) -> Command {
        let mut cmd = Command::new(CASTRAD);
        // Its own image store: a test never touches ~/.cache.
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--image-store")
            .arg(self.images())
            .arg("--user-config")
            .arg(self.user_config())
            .env("CASTRA_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        cmd
    }

    /// Starts castrad and waits until its socket answers.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(|_| {})
    }

    /// Starts castrad with its command adjusted by `configure` (its environment, say) and
    /// waits until its socket answers.
    pub fn start_daemon_with(&self, configure: impl FnOnce(&mut Command)) -> Daemon {
        let mut command = self.castrad_command();
        configure(&mut command);
        self.spawn_daemon(command)
    }

    /// Starts castrad with `command` (built from [`Env::castrad_command`]) and waits until
    /// its socket answers.
    pub fn spawn_daemon(&self, mut command: Command) -> Daemon {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.path("castrad.log")).unwrap(),
            ))
            .spawn()
            .expect("spawn castrad");
        let daemon = Daemon {
            child,
            log: self.path("castrad.log"),
        };
        let socket = self.socket();
        wait_until(
            Duration::from_secs(10),
            "castrad's socket to answer",
            || std::os::unix::net::UnixStream::connect(&socket).ok(),
        );
        daemon
    }

    /// Starts castractl against this env's daemon, in `cwd`, its stdout and stderr piped (a
    /// command that follows, like `up`, while the test acts).
    pub fn spawn_ctl(&self, cwd: &Path, args: &[&str]) -> Child {
        Command::new(CASTRACTL)
            .args(args)
            .current_dir(cwd)
            .env("CASTRA_SOCKET", self.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn castractl")
    }

    /// Runs castractl against this env's daemon, in `cwd`.
    pub fn ctl(&self, cwd: &Path, args: &[&str]) -> Ctl {
        let out = Command::new(CASTRACTL)
            .args(args)
            .current_dir(cwd)
            .env("CASTRA_SOCKET", self.socket())
            .output()
            .expect("run castractl");
        Ctl {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Ctl::from(out)
        }
    }

    /// POSTs a JSON-RPC request over the socket with curl, returns the parsed response.
    pub fn http_rpc(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--unix-socket"])
            .arg(self.socket())
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(body.to_string())
            .arg("http://castrad/")
            .output()
            .expect("curl must be installed (scripts/setup installs it)");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let response = serde_json::from_slice(&out.stdout).expect("JSON-RPC response");
        crate::contract::response(method, &response);
        response
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        crate::contract::report();
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        wait_until(Duration::from_secs(15), "castrad to exit", || {
            self.child.try_wait().unwrap()
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- castrad log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `command` run under `prlimit --nofile=SOFT:HARD` (util-linux): the same program, arguments
/// and environment, with that open file limit from its first instruction.
pub fn under_nofile_limit(command: &Command, soft: u64, hard: u64) -> Command {
    let mut wrapped = Command::new("prlimit");
    wrapped
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// The number of open file descriptors of process `pid` (`ls /proc/PID/fd`).
pub fn open_fds(pid: nix::unistd::Pid) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The soft and hard `Max open files` of process `pid` (/proc/PID/limits).
pub fn nofile_limits(pid: nix::unistd::Pid) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// castractl's result.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// castractl's arguments, when known: `json` validates what is a protocol object.
    pub args: Vec<String>,
}

impl From<Output> for Ctl {
    fn from(out: Output) -> Ctl {
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: Vec::new(),
        }
    }
}

impl Ctl {
    /// The `--json` output, checked against the protocol where it is a protocol object.
    pub fn json(&self) -> serde_json::Value {
        let output = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("castractl printed no JSON ({e}): {self:?}"));
        crate::contract::castractl_output(&self.args, &output);
        output
    }

    pub fn ok(self) -> Ctl {
        assert_eq!(self.code, 0, "castractl failed: {self:?}");
        self
    }
}

/// Every file and directory under `root` with its size, mtime (ns), inode and content hash:
/// equal snapshots mean nothing was created, removed or changed.
pub type Snapshot = BTreeMap<PathBuf, (u64, i64, u64, Vec<u8>)>;

pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u64, i64, u64, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let content = if meta.is_file() {
            std::fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        out.insert(
            path.strip_prefix(root).unwrap().to_owned(),
            (meta.size(), mtime, meta.ino(), content),
        );
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// One JSON-RPC call over a fresh connection with plain HTTP/1.1; returns the response and
/// how long the call took from connect to the last byte.
pub fn raw_rpc(
    socket: &Path,
    method: &str,
    params: serde_json::Value,
) -> (serde_json::Value, Duration) {
    use std::io::{Read, Write};
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        .to_string();
    let started = Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: castrad\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let took = started.elapsed();
    let text = String::from_utf8(response).unwrap();
    let (_, json) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let response = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"));
    crate::contract::response(method, &response);
    (response, took)
}

/// Every file's text under `root`, concatenated (lossy), for "does X appear anywhere" checks.
pub fn read_tree_text(root: &Path) -> String {
    snapshot(root)
        .into_values()
        .map(|(_, _, _, bytes)| String::from_utf8_lossy(&bytes).into_owned())
        .collect()
}

/// The kind of an event envelope: `BootstrapStarted` for `{"event": {"BootstrapStarted": …}}`.
/// The VM an event envelope is about (the agent's and lifecycle events name one too).
pub fn event_vm(envelope: &serde_json::Value) -> Option<&str> {
    envelope["event"].as_object()?.values().next()?["vm"].as_str()
}

pub fn event_kind(envelope: &serde_json::Value) -> String {
    let event = envelope["event"].as_object().expect("an event envelope");
    event.keys().next().expect("a tagged event").clone()
}

/// Follows `castractl events --json --vm VM --since 0` on `socket` while `act` runs (the
/// replay covers whatever `act` causes before the subscription starts), until the events end
/// with `VizierLost` then `VizierConnected`, or nothing comes for `quiet`. Returns the kinds
/// seen; asserts that they end that way.
pub fn agent_lost_and_back(
    socket: &std::path::Path,
    vm: &str,
    quiet: std::time::Duration,
    act: impl FnOnce(),
) -> Vec<String> {
    let mut follow = std::process::Command::new(CASTRACTL)
        .args(["events", "--json", "--vm", vm, "--since", "0"])
        .env("CASTRA_SOCKET", socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    act();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let back = ["VizierLost".to_owned(), "VizierConnected".to_owned()];
    let mut kinds = Vec::new();
    while let Ok(line) = rx.recv_timeout(quiet) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        crate::contract::event(&v);
        kinds.push(event_kind(&v));
        if kinds.ends_with(&back) {
            break;
        }
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert!(kinds.ends_with(&back), "{kinds:?}");
    kinds
}

/// The entry of `vm` in a `castra.status` result (first project).
pub fn vm_of(status: &serde_json::Value, vm: &str) -> serde_json::Value {
    let vms = status["projects"][0]["vms"]
        .as_array()
        .expect("a status result with a project");
    vms.iter()
        .find(|v| v["name"] == vm)
        .unwrap_or_else(|| panic!("no VM {vm} in {status}"))
        .clone()
}

pub const IT_HTTP: &str = env!("CARGO_BIN_EXE_it-http");

/// A local HTTP server (`it-http`) serving a directory on 127.0.0.1: a distribution's mirror
/// the image store's tests download from, whose requests they count and which they can kill
/// mid-file.
pub struct Mirror {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

/// One request the mirror answered: `GET /tiny/base.img bytes=N- 206 BYTES-SENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The `Range` header, or `-`.
    pub range: String,
    pub status: u16,
    pub sent: u64,
}

impl Mirror {
    /// Serves `dir` (on `port`, else a free one); with `drop_after`, the first longer file
    /// body is cut after that many bytes and the server exits (killed mid-file).
    pub fn start(dir: &Path, log: &Path, port: Option<u16>, drop_after: Option<u64>) -> Mirror {
        let mut cmd = Command::new(IT_HTTP);
        cmd.arg(dir).arg(log);
        if let Some(port) = port {
            cmd.arg("--port").arg(port.to_string());
        }
        if let Some(n) = drop_after {
            cmd.arg("--drop-after").arg(n.to_string());
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start it-http");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .expect("it-http prints its port");
        Mirror {
            child,
            port: line.trim().parse().expect("a port"),
            log: log.to_owned(),
        }
    }

    pub fn url(&self, rel: &str) -> String {
        format!("http://127.0.0.1:{}/{rel}", self.port)
    }

    /// Every request so far (of this server and any earlier one logging to the same file).
    pub fn requests(&self) -> Vec<Request> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some(Request {
                    method: f.first()?.to_string(),
                    path: f.get(1)?.to_string(),
                    range: f.get(2)?.to_string(),
                    status: f.get(3)?.parse().ok()?,
                    sent: f.get(4)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Waits for the server to exit by itself (after a cut).
    pub fn wait_exit(mut self) {
        wait_until(Duration::from_secs(30), "it-http to exit", || {
            self.child.try_wait().unwrap()
        });
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sha256 (hex) of a file, as `sha256sum` prints it.
pub fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The sha512 (hex) of a file, as `sha512sum` prints it.
pub fn sha512_of(path: &Path) -> String {
    let out = Command::new("sha512sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
