//! Shared fixtures for unit tests: a sample VM, and a scripted remote (the guest side of a
//! run as a list of notes, for the step machine and the actor).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::{BackendKind, Bootstrap, BootstrapMode, Ssh, Vm};
use crate::pipeline::Remote;
use crate::pipeline::driver::Session;
use castra_api::OutputStream;

use crate::pipeline::driver::Marker;
use crate::pipeline::handshake::NoBanner;
use crate::pipeline::remote::{Ended, Note, SessionError};
use crate::ssh::Target;

/// Writes an executable shell script `dir/name` running `body`: a stand-in for a guest's
/// command, for tests of the shell castrad sends (put `dir` first on the script's PATH).
pub fn stub_command(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Gives `vm` of the project at `root` a disk as a QEMU VM's start leaves it: an overlay (an
/// empty stand-in) and its record, backed by `base` (whose sha256 it records). A stand-in for
/// the image store and qemu-img in tests of what comes after a start.
pub fn fake_disk(root: &crate::state_root::StateRoot, vm: &str, base: &Path) {
    use sha2::Digest as _;
    let paths = root.vm(vm);
    crate::state_root::ensure_dir(&paths.dir).unwrap();
    std::fs::write(&paths.overlay, b"").unwrap();
    let sha256 = crate::ids::hex(&sha2::Sha256::digest(std::fs::read(base).unwrap()));
    let record = crate::images::disk::DiskBase {
        sha256,
        backing: base.to_owned(),
        format: "raw".into(),
        stored: true,
        identity: crate::images::FileIdentity::of(base).unwrap(),
        source: base.display().to_string(),
    };
    crate::images::disk::write(&paths.base_record, &record).unwrap();
}

/// An image store in `dir` (nothing in it).
pub fn store(dir: &Path) -> Arc<crate::images::Store> {
    Arc::new(crate::images::Store::new(dir.join("images"), None))
}

/// A QEMU VM named `web` whose files (base.img, run.sh, payload/) live in `dir`.
pub fn sample_vm(dir: &Path) -> Vm {
    Vm {
        name: "web".into(),
        declared_name: "web".into(),
        replica: None,
        description: None,
        backend: BackendKind::Qemu,
        base_image: Some(crate::config::BaseImage::path(dir.join("base.img"))),
        image_mirror: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        cpus: 2,
        memory_mib: 2048,
        ephemeral: false,
        accel: crate::config::AccelSetting::Auto,
        port_forwards: vec![],
        disk_mib: None,
        firmware: crate::config::Firmware::Bios,
        serial_log_max_bytes: 64 << 20,
        libvirt: None,
        cloud_init: crate::config::CloudInit::default(),
        network: None,
        mounts: Vec::new(),
        ssh: Ssh::default(),
        bootstrap: Bootstrap {
            mode: BootstrapMode::Auto,
            script: Some(dir.join("run.sh")),
            payload: Some(dir.join("payload")),
            verify_command: Some("test -f done".into()),
            verify_path: Some("done".into()),
            handshake_timeout_secs: 120,
            apply_timeout_secs: 3600,
            verify_timeout_secs: 60,
            output_log_max_bytes: 64 << 20,
            keep_run_logs: 50,
            remote_dir: "/var/tmp/castra/web".into(),
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
            metadata_path: None,
            vizier_dir: None,
        },
    }
}

/// One scripted session: the notes it sends (each after its delay), then how it ends.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub notes: Vec<(Duration, Note)>,
    /// The exit status of ssh (None: the session went on as the watch after `done`).
    pub status: Option<i32>,
    /// ssh's stderr when it ends before authenticating.
    pub unauthenticated: Option<String>,
    pub last_stderr: String,
}

/// A probe's answer: the banner after a delay, or nothing before the deadline.
#[derive(Debug, Clone)]
pub enum Probe {
    After(Duration),
    Never,
}

#[derive(Debug, Default)]
pub struct Fake {
    sessions: Mutex<VecDeque<Script>>,
    probes: Mutex<VecDeque<Probe>>,
    /// What was called, in order: `probe`, `session <port>` or `login <port>`.
    calls: Mutex<Vec<String>>,
    /// ssh's stderr for the next login, which then fails.
    pub denied: Mutex<Option<String>>,
    /// What the next `exec` prints (by default, a guest setup that succeeded).
    pub exec_reply: Mutex<Option<String>>,
}

impl Fake {
    pub fn new(sessions: Vec<Script>, probes: Vec<Probe>) -> Arc<Fake> {
        Arc::new(Fake {
            sessions: Mutex::new(sessions.into()),
            probes: Mutex::new(probes.into()),
            calls: Mutex::default(),
            denied: Mutex::default(),
            exec_reply: Mutex::default(),
        })
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Remote for Fake {
    /// The agent's watch: a fresh banner of pid 42 every interval, as long as it is read.
    fn tail(
        &self,
        target: Target,
        _command: &str,
    ) -> Result<crate::ssh::Tail, crate::ssh::SshError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("tail {}", target.port));
        let (tx, rx) = tokio::sync::mpsc::channel(crate::ssh::LINES_BUFFER);
        tokio::spawn(async move {
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let banner = format!(
                    r#"{{"version":"{}","pid":42,"started_at":{now},"heartbeat":{now},"now":{now}}}"#,
                    crate::vizier::VERSION
                );
                if tx.send("VIZIER/1".to_owned()).await.is_err() || tx.send(banner).await.is_err() {
                    return;
                }
                tokio::time::sleep(crate::vizier::WATCH_INTERVAL).await;
            }
        });
        Ok(crate::ssh::Tail::from_lines(rx))
    }

    /// A login succeeds unless `denied` says otherwise.
    fn login(&self, target: Target) -> BoxFuture<'_, Result<(), crate::ssh::SshError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("login {}", target.port));
        let denied = self.denied.lock().unwrap().take();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match denied {
                Some(stderr) => Err(crate::ssh::classify(&target, &stderr)),
                None => Ok(()),
            }
        })
    }

    /// `exec_reply`, or a guest setup that succeeds, saying so as the guest would.
    fn exec(
        &self,
        target: Target,
        _command: String,
        _input: String,
    ) -> BoxFuture<'_, Result<String, crate::ssh::SshError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("exec {}", target.port));
        let reply = self.exec_reply.lock().unwrap().take();
        Box::pin(async {
            Ok(reply.unwrap_or_else(|| {
                "\nCASTRA-setup guest-setup 0 mounted /src (virtiofs)\n".to_owned()
            }))
        })
    }

    fn stop(&self, target: Target, pid: u32) -> BoxFuture<'_, Result<(), crate::ssh::SshError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("stop {} {pid}", target.port));
        Box::pin(async { Ok(()) })
    }

    fn probe<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
        timeout: Duration,
        progress: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<String, NoBanner>> {
        self.calls.lock().unwrap().push("probe".into());
        let probe = self
            .probes
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Probe::Never);
        Box::pin(async move {
            progress("tcp 127.0.0.1:2222: connection refused");
            match probe {
                Probe::After(d) if d < timeout => {
                    tokio::time::sleep(d).await;
                    Ok("SSH-2.0-Fake".to_owned())
                }
                _ => {
                    tokio::time::sleep(timeout).await;
                    Err(NoBanner {
                        host: "127.0.0.1".into(),
                        port: 2222,
                        waited: timeout.as_secs_f64(),
                        last: "tcp 127.0.0.1:2222: connection refused".into(),
                    })
                }
            }
        })
    }

    fn session<'a>(
        &'a self,
        target: Target,
        _session: &'a Session<'a>,
        notes: tokio::sync::mpsc::Sender<Note>,
    ) -> BoxFuture<'a, Result<Ended, SessionError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("session {}", target.port));
        let script = self
            .sessions
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_default();
        Box::pin(async move {
            for (delay, note) in script.notes {
                tokio::time::sleep(delay).await;
                let _ = notes.send(note).await;
            }
            use std::os::unix::process::ExitStatusExt;
            Ok(Ended {
                status: script
                    .status
                    .map(|code| std::process::ExitStatus::from_raw(code << 8)),
                unauthenticated: script.unauthenticated,
                last_stderr: script.last_stderr,
                send_error: None,
                tail: None,
            })
        })
    }
}

pub fn marker(m: Marker) -> (Duration, Note) {
    (Duration::from_millis(10), Note::Marker(m))
}

pub fn out(line: &str) -> (Duration, Note) {
    line_on(OutputStream::Stdout, line)
}

pub fn line_on(stream: OutputStream, line: &str) -> (Duration, Note) {
    (
        Duration::from_millis(1),
        Note::Line {
            stream,
            line: line.into(),
        },
    )
}

/// Everything up to `transfer` of a run whose agent answers.
pub fn up_to_transfer() -> Vec<(Duration, Note)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let banner = format!(
        r#"{{"version":"{}","pid":42,"started_at":{now},"heartbeat":{now},"now":{now}}}"#,
        crate::vizier::VERSION
    );
    vec![
        (Duration::from_millis(300), Note::Authenticated),
        marker(Marker::Pid(77)),
        marker(Marker::VizierInstall {
            ok: true,
            detail: "installed /opt/castra/vizier/v/vizier.sh".into(),
        }),
        marker(Marker::VizierEnable {
            ok: true,
            detail: "started (respawn loop)".into(),
        }),
        marker(Marker::VizierLog),
        out("agent started"),
        marker(Marker::VizierLogEnd),
        marker(Marker::VizierHandshake {
            ok: true,
            detail: String::new(),
        }),
        out("VIZIER/1"),
        out(&banner),
        marker(Marker::Connect {
            ok: true,
            detail: String::new(),
        }),
        marker(Marker::Transfer),
    ]
}

pub fn successful_session(apply: Vec<(Duration, Note)>) -> Script {
    let mut notes = up_to_transfer();
    notes.extend(apply);
    notes.push(marker(Marker::Apply { status: 0 }));
    notes.push(marker(Marker::VerifyCommand { status: 0 }));
    notes.push(marker(Marker::VerifyPath { found: true }));
    notes.push(marker(Marker::Done));
    Script {
        notes,
        ..Script::default()
    }
}

/// Settings of the property tests (proptest): `PROPTEST_CASES` cases when set (`scripts/fuzz`
/// sets 100 000), else `cases`; nothing written to the source tree (an input that found a bug
/// becomes a plain regression test beside the property instead).
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
