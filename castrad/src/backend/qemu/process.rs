//! A QEMU VM's life on the host: launching QEMU in a session of its own (its CPUs held until
//! the disk's base is checked once more), recognising it again after castrad restarts, and
//! stopping it cooperatively. The disk file itself is `overlay`'s; what it is backed by,
//! `base`'s.
//!
//! Files (see `state_root::VmPaths`): QEMU's QMP and serial
//! console sockets, the serial log and stderr log (both capped by `console`), the pidfile, and
//! `launch.json`: what castrad launched (pid, the process start time, ports, the logs' cap). A
//! pid is taken for our QEMU only when its start time still matches (against pid reuse) and
//! its command line names our QMP socket ([`ours`]); that is checked again right before every
//! signal castrad sends it by pid.
//!
//! Re-adoption keeps every QEMU that is still ours, answering QMP or not: one that does not
//! answer (stopped, hung, its QMP socket gone) is adopted *unresponsive* with the reason, so
//! nothing can start a second QEMU on its disk, and `down` can still stop it by signal.
//!
//! Invariants: a VM's records (`launch.json`, the QMP socket, the pidfile) are removed
//! only once its QEMU is gone, and no disk is made, grown, launched on or deleted while a
//! recorded QEMU of ours still runs ([`still_running`]). QEMU is never a child that dies with
//! castrad: it runs under `setsid`, at a lower priority than castrad (`nice`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use futures::future::BoxFuture;

use super::argv::{self, LaunchSpec};
use super::console::Logs;
use super::qmp::Qmp;
use crate::backend::{Machine, StopPlan, StopStep, Stopped};
use crate::fsutil::write_atomic;
use crate::state_root::VmPaths;
use crate::vm::state::MachineInfo;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    BaseChanged(#[from] crate::images::disk::BaseChanged),
    #[error(
        "vm {vm}: QEMU (pid {pid}) still runs on this VM's disk; castrad neither starts a \
         second one on it nor deletes it: `castractl down {vm}` stops it first"
    )]
    StillRunning { vm: String, pid: u32 },
}

/// Refuses to touch a disk a recorded QEMU of ours still runs on.
pub fn ensure_not_running(paths: &VmPaths) -> Result<(), ProcessError> {
    match still_running(paths) {
        Some(record) => Err(ProcessError::StillRunning {
            vm: record.vm,
            pid: record.pid,
        }),
        None => Ok(()),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcessError {
    let what = what.into();
    move |source| ProcessError::Io { what, source }
}

/// A loopback TCP port that is free right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What castrad launched; `launch.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRecord {
    pub vm: String,
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat when launched: tells our QEMU from a reused pid.
    pub start_time: u64,
    pub ssh_port: u16,
    pub accel: String,
    pub accel_reason: String,
    pub qmp: PathBuf,
    /// RFC 3339 UTC.
    pub launched_at: String,
    pub launched_unix_ms: u64,
    /// The castra.toml the VM belongs to, so a restarted castrad can load its project.
    pub config: PathBuf,
    /// The cap of serial.log and qemu.log, in bytes (`serial_log_max`).
    #[serde(default = "default_log_cap")]
    pub log_max_bytes: u64,
    /// What the VM was launched with, for `plan` and `up` to compare with castra.toml (drift).
    #[serde(default)]
    pub settings: Option<crate::drift::LaunchSettings>,
    /// How the VM's mounts reach the guest (`virtiofs`, `9p`); None: no mounts.
    #[serde(default)]
    pub mount_transport: Option<String>,
}

fn default_log_cap() -> u64 {
    crate::config::DEFAULT_SERIAL_LOG_MAX_BYTES
}

/// A running QEMU: our child, or one adopted from a previous castrad.
#[derive(Debug)]
pub struct QemuProcess {
    pub record: LaunchRecord,
    child: Option<Child>,
    /// Why an adopted QEMU is taken to be unresponsive (QMP did not answer at adoption).
    pub unresponsive: Option<String>,
    /// Keeps serial.log and qemu.log within their cap while QEMU runs.
    logs: Option<Logs>,
}

/// The niceness QEMU runs at (relative to castrad).
const QEMU_NICE: &str = "5";

/// Starts QEMU for `spec`, connects to its serial console (QEMU waits for that before it
/// starts the guest) and waits until QMP answers. `log_cap` bounds serial.log and qemu.log.
///
/// QEMU starts with its CPUs stopped (`-S`): once its QMP answers (it has opened its disks by
/// then), `before_start` runs (the check of the disk's base, `base::check_opened`), and only
/// if it passes is the guest started (`cont`); otherwise QEMU is killed and its error returned.
#[allow(clippy::too_many_arguments)]
pub async fn launch(
    spec: &LaunchSpec,
    paths: &VmPaths,
    accel_reason: &str,
    config: &Path,
    log_cap: u64,
    settings: crate::drift::LaunchSettings,
    before_start: impl FnOnce() -> Result<(), ProcessError>,
) -> Result<QemuProcess, ProcessError> {
    ensure_not_running(paths)?;
    for stale in [
        &paths.qmp,
        &paths.serial_socket,
        &paths.pidfile,
        &paths.launch,
    ] {
        let _ = std::fs::remove_file(stale);
    }
    for socket in [&paths.qmp, &paths.serial_socket] {
        if socket.as_os_str().len() > 100 {
            return Err(ProcessError::Failed(format!(
                "socket path {} is too long for a Unix socket; use a shorter state directory",
                socket.display()
            )));
        }
    }
    // Appended to by QEMU, so that castrad can cut it back to its cap (`console`).
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.qemu_log)
        .and_then(|f| f.set_len(0).map(|()| f))
        .map_err(io(format!("creating {}", paths.qemu_log.display())))?;
    // setsid: QEMU gets a session of its own, so it outlives castrad (and a terminal's ^C).
    // nice: under CPU contention (TCG guests keep cores busy) the VMs yield to castrad, so
    // the control plane (status, events) stays responsive; without contention it costs nothing.
    let mut child = Command::new("setsid");
    let nine_p = spec
        .shares
        .as_ref()
        .is_some_and(|s| s.transport == super::mounts::Transport::NineP);
    if nine_p && nix::unistd::geteuid().is_root() {
        // QEMU serves 9p itself, as root here: no setuid files, device nodes or file
        // capabilities for the guest (mounts::seccomp).
        super::mounts::seccomp::apply(
            &mut child,
            std::sync::Arc::new(super::mounts::seccomp::Filter::new(true)),
        );
    }
    let mut child = child
        .args(["nice", "-n", QEMU_NICE])
        .arg(argv::QEMU)
        .args(argv::argv(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(false)
        .spawn()
        .map_err(io(format!(
            "starting {} (package qemu-system-x86)",
            argv::QEMU
        )))?;
    let pid = child
        .id()
        .ok_or_else(|| ProcessError::Failed("QEMU exited at once".into()))?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut serial = None;
    let qmp = loop {
        if let Some(status) = child.try_wait().map_err(io("waiting for QEMU"))? {
            let log = std::fs::read_to_string(&paths.qemu_log).unwrap_or_default();
            return Err(ProcessError::Failed(format!(
                "QEMU exited ({status}) while starting: {}",
                log.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no message")
            )));
        }
        if serial.is_none() && paths.serial_socket.exists() {
            serial = tokio::net::UnixStream::connect(&paths.serial_socket)
                .await
                .ok();
        }
        if serial.is_some()
            && paths.qmp.exists()
            && let Ok(qmp) = Qmp::connect(&paths.qmp, Duration::from_secs(2)).await
        {
            break Some(qmp);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Some(mut qmp) = qmp else {
        let _ = child.start_kill();
        let what = match serial {
            None => format!(
                "castrad could not connect to its serial console {}",
                paths.serial_socket.display()
            ),
            Some(_) => "its QMP socket never answered".to_owned(),
        };
        return Err(ProcessError::Failed(format!("QEMU started but {what}")));
    };
    let started = match before_start() {
        Ok(()) => qmp
            .execute("cont")
            .await
            .map(drop)
            .map_err(|e| ProcessError::Failed(format!("QEMU did not start its guest: {e}"))),
        Err(e) => Err(e),
    };
    if let Err(e) = started {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e);
    }
    let logs = Logs::spawn(
        serial,
        paths.serial_log.clone(),
        paths.qemu_log.clone(),
        log_cap,
        true,
    );
    let now = std::time::SystemTime::now();
    let record = LaunchRecord {
        vm: spec.vm.clone(),
        pid,
        start_time: start_time(pid).unwrap_or(0),
        ssh_port: spec.ssh_port,
        accel: spec.accel.as_str().to_owned(),
        accel_reason: accel_reason.to_owned(),
        qmp: paths.qmp.clone(),
        launched_at: humantime::format_rfc3339_millis(now).to_string(),
        launched_unix_ms: now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        config: config.to_owned(),
        log_max_bytes: log_cap,
        settings: Some(settings),
        mount_transport: spec
            .shares
            .as_ref()
            .map(|s| s.transport.as_str().to_owned()),
    };
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| ProcessError::Failed(e.to_string()))?;
    write_atomic(&paths.launch, &json)
        .map_err(io(format!("writing {}", paths.launch.display())))?;
    Ok(QemuProcess {
        record,
        child: Some(child),
        unresponsive: None,
        logs: Some(logs),
    })
}

/// Field 22 (starttime, in clock ticks since boot) of /proc/<pid>/stat.
fn start_time(pid: u32) -> Option<u64> {
    start_time_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// [`start_time`] from the text of a stat file.
fn start_time_in(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// The launch record of a VM, if castrad launched one and has not seen it stop.
pub fn read_record(paths: &VmPaths) -> Option<LaunchRecord> {
    serde_json::from_slice(&std::fs::read(&paths.launch).ok()?).ok()
}

/// True when the record's pid is still the QEMU castrad launched: the same process start
/// time (so not a reused pid) and a command line naming the record's QMP socket.
pub fn ours(record: &LaunchRecord) -> bool {
    start_time(record.pid) == Some(record.start_time)
        && std::fs::read(format!("/proc/{}/cmdline", record.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*record.qmp.to_string_lossy()))
}

/// The record of the VM's QEMU if that QEMU still runs (whether castrad holds it or not).
pub fn still_running(paths: &VmPaths) -> Option<LaunchRecord> {
    read_record(paths).filter(ours)
}

/// How long QMP gets to answer a re-adopting castrad.
const ADOPT_QMP: Duration = Duration::from_secs(2);

/// Finds the VM's QEMU left running by a previous castrad ([`ours`]). It is adopted whether
/// QMP answers `query-status` or not; when not, [`QemuProcess::unresponsive`] says why. Only
/// a record whose QEMU is gone is forgotten.
pub async fn adopt(paths: &VmPaths) -> Option<QemuProcess> {
    let record = read_record(paths)?;
    if !ours(&record) {
        forget(paths);
        return None;
    }
    let answer = match Qmp::connect(&record.qmp, ADOPT_QMP).await {
        Ok(mut qmp) => qmp.status().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let unresponsive = answer.err().map(|e| {
        format!(
            "QEMU (pid {}) is running but its QMP socket does not answer ({e}); it may be \
             stopped (SIGSTOP) or hung",
            record.pid
        )
    });
    // castrad connects to its serial console again (what the guest wrote in between was
    // dropped by QEMU).
    let serial = tokio::net::UnixStream::connect(&paths.serial_socket)
        .await
        .inspect_err(
            |e| tracing::warn!(vm = record.vm, error = %e, "cannot reach the serial console again"),
        )
        .ok();
    let logs = Logs::spawn(
        serial,
        paths.serial_log.clone(),
        paths.qemu_log.clone(),
        record.log_max_bytes,
        false,
    );
    Some(QemuProcess {
        record,
        child: None,
        unresponsive,
        logs: Some(logs),
    })
}

/// Removes the traces of a QEMU that is no longer running (its virtiofsd daemons stopped);
/// kept while it still runs.
pub fn forget(paths: &VmPaths) {
    if let Some(record) = still_running(paths) {
        tracing::warn!(
            vm = record.vm,
            pid = record.pid,
            "QEMU still runs; its records are kept"
        );
        return;
    }
    super::mounts::stop_now(paths);
    for f in [
        &paths.launch,
        &paths.guest_setup,
        &paths.qmp,
        &paths.serial_socket,
        &paths.pidfile,
    ] {
        let _ = std::fs::remove_file(f);
    }
}

impl Machine for QemuProcess {
    fn info(&self) -> MachineInfo {
        MachineInfo {
            pid: self.record.pid,
            accel: self.record.accel.clone(),
            accel_reason: self.record.accel_reason.clone(),
            ssh_port: self.record.ssh_port,
            launched_unix_ms: self.record.launched_unix_ms,
            unresponsive: self.unresponsive.clone(),
            settings: self.record.settings.clone(),
            mount_transport: self.record.mount_transport.clone(),
        }
    }

    fn alive(&mut self) -> bool {
        QemuProcess::alive(self)
    }

    fn exited(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(QemuProcess::exited(self))
    }

    fn stop<'a>(
        self: Box<Self>,
        plan: StopPlan,
        report: &'a mut (dyn FnMut(StopStep) + Send),
    ) -> BoxFuture<'a, Stopped> {
        Box::pin(stop(*self, plan.graceful, plan.term, report))
    }
}

impl QemuProcess {
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// True while the process is the one we launched and has not exited.
    pub fn alive(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            return matches!(child.try_wait(), Ok(None));
        }
        start_time(self.record.pid) == Some(self.record.start_time)
    }

    /// Resolves when QEMU has exited.
    pub async fn exited(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.wait().await;
            }
            None => {
                while start_time(self.record.pid) == Some(self.record.start_time) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn exited_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.exited()).await.is_ok()
    }

    /// Sends `signal` to QEMU, by pid, only if that pid is still our QEMU: our unreaped child
    /// (its pid cannot be reused), or for an adopted one, [`ours`] checked just before.
    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        let still_ours = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => ours(&self.record),
        };
        if !still_ours {
            return;
        }
        // 0 and -1 would be castrad's own process group and everything it may signal.
        let Some(pid) = i32::try_from(self.record.pid).ok().filter(|&p| p > 1) else {
            return;
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// ACPI power button, then SIGTERM, then SIGKILL, each waited for; `report` sees each step.
/// Then the serial log gets its last line.
pub async fn stop(
    mut process: QemuProcess,
    graceful: Duration,
    term: Duration,
    report: &mut (dyn FnMut(StopStep) + Send),
) -> Stopped {
    let stopped = escalate(&mut process, graceful, term, report).await;
    if let Some(logs) = process.logs.take() {
        logs.closed(Duration::from_secs(1)).await;
    }
    stopped
}

async fn escalate(
    process: &mut QemuProcess,
    graceful: Duration,
    term: Duration,
    report: &mut (dyn FnMut(StopStep) + Send),
) -> Stopped {
    let started = Instant::now();
    report(StopStep::CooperativeAttempted { timeout: graceful });
    let pressed = match Qmp::connect(&process.record.qmp, Duration::from_secs(2)).await {
        Ok(mut qmp) => qmp.system_powerdown().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let reason = match pressed {
        Ok(()) if process.exited_within(graceful).await => {
            report(StopStep::CooperativeSucceeded {
                elapsed: started.elapsed(),
            });
            return Stopped::Graceful;
        }
        Ok(()) => {
            format!("the guest did not power off within {graceful:?} of the ACPI power button")
        }
        Err(e) => format!("could not press the power button: {e}"),
    };
    report(StopStep::CooperativeTimedOut {
        waited: started.elapsed(),
        reason,
    });
    report(StopStep::Escalated {
        signal: "SIGTERM",
        timeout: term,
    });
    process.signal(nix::sys::signal::Signal::SIGTERM);
    // A stopped QEMU (SIGSTOP) would only see the SIGTERM once continued.
    process.signal(nix::sys::signal::Signal::SIGCONT);
    if process.exited_within(term).await {
        return Stopped::Terminated;
    }
    let last = Duration::from_secs(5);
    report(StopStep::Escalated {
        signal: "SIGKILL",
        timeout: last,
    });
    process.signal(nix::sys::signal::Signal::SIGKILL);
    if process.exited_within(last).await {
        Stopped::Killed
    } else {
        Stopped::Survived
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_reads_our_own_process() {
        let me = std::process::id();
        let t = start_time(me).expect("our own start time");
        assert!(t > 0);
        assert_eq!(start_time(me), Some(t), "stable");
        assert_eq!(start_time(u32::MAX - 1), None);
        // Issue 14 item 15: a stat text that ends at its last ')' panicked the slice.
        assert_eq!(start_time_in("1 (qemu)"), None);
        assert_eq!(start_time_in("1 (a) b) S"), None);
    }
}
