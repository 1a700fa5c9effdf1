//! A QEMU VM's life on the host: its overlay (the VM's disk), launching QEMU in a session of
//! its own, recognising it again after castrad restarts, and stopping it cooperatively.
//!
//! Files (see `state_root::VmPaths`): the overlay and its `disk-id`, QEMU's QMP and serial
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
//! The base image is checked at every start (`crate::image::base`: self-contained raw or
//! qcow2, no backing file) and its detected format is passed to `qemu-img create -F`, which
//! records it in the overlay, so QEMU never probes the base's format.
//!
//! Invariants: a new overlay always gets a new disk id, and the stamp and pinned host key of
//! the previous disk are removed with it, so nothing proven about an old disk is believed
//! about a new one. A VM's records (`launch.json`, the QMP socket, the pidfile) are removed
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
use crate::image::ImageInfo;
use crate::state_root::{VmPaths, ensure_dir};
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

/// Grows the VM's existing overlay to `size_mib` (None: leaves it). The VM is stopped: this
/// runs before a launch. Asking for less than the overlay has is an error, nothing changes.
pub async fn grow_overlay(paths: &VmPaths, size_mib: Option<u64>) -> Result<(), ProcessError> {
    ensure_not_running(paths)?;
    let Some(want) = size_mib.map(|m| m.saturating_mul(1 << 20)) else {
        return Ok(());
    };
    let have = image_info(&paths.overlay).await?.virtual_size;
    if want < have {
        return Err(ProcessError::Failed(format!(
            "disk = {} MiB is smaller than the VM's disk ({} MiB): a disk cannot shrink; \
             set disk to at least that, or discard the disk (`castractl down --discard`)",
            want >> 20,
            have >> 20
        )));
    }
    if want > have {
        let overlay = paths.overlay.as_os_str();
        qemu_img(
            &[
                "resize".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                overlay,
                want.to_string().as_ref(),
            ],
            &paths.overlay,
        )
        .await?;
    }
    Ok(())
}

/// What a new overlay is made on: the backing file and its format and virtual size.
#[derive(Debug, Clone, Copy)]
pub struct Backing<'a> {
    pub path: &'a Path,
    pub format: &'a str,
    pub virtual_size: u64,
}

/// Makes the VM's disk: a new overlay on `base` of at least `size_mib` (None: the base's
/// size). A new disk gets a new disk id, and what was proven about or handed to the previous
/// one (stamp, pinned host key, seed, UEFI variables, its base record) is removed;
/// `before_rename` writes what must exist whenever the overlay does (its base record, its
/// ref in the image store) just before the overlay is renamed into place. Returns its path.
pub async fn create_overlay(
    paths: &VmPaths,
    base: Backing<'_>,
    size_mib: Option<u64>,
    before_rename: impl FnOnce() -> Result<(), ProcessError>,
) -> Result<PathBuf, ProcessError> {
    ensure_not_running(paths)?;
    let want = size_mib.map(|m| m.saturating_mul(1 << 20));
    ensure_dir(&paths.dir).map_err(io(format!("creating {}", paths.dir.display())))?;
    if let Some(want) = want
        && want < base.virtual_size
    {
        return Err(ProcessError::Failed(format!(
            "disk = {} MiB is smaller than the base image {} ({} MiB); set disk to at least that",
            want >> 20,
            base.path.display(),
            base.virtual_size >> 20
        )));
    }
    let tmp = &paths.overlay_tmp;
    let _ = std::fs::remove_file(tmp);
    let size = want.map(|w| w.to_string());
    let words = ["create", "-q", "-f", "qcow2", "-F", base.format, "-b"];
    let mut args: Vec<&std::ffi::OsStr> = words.iter().map(|a| a.as_ref()).collect();
    args.extend([base.path.as_os_str(), tmp.as_os_str()]);
    args.extend(size.as_deref().map(std::ffi::OsStr::new));
    let created = qemu_img(&args, base.path).await;
    if let Err(e) = created {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    // A new disk: nothing proven about or given to the previous one holds.
    for stale in [
        &paths.stamp,
        &paths.known_hosts,
        &paths.seed,
        &paths.seed_inputs,
        &paths.seed_settings,
        &paths.efi_vars,
        &paths.base_record,
    ] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", stale.display()))(e));
            }
            _ => {}
        }
    }
    let disk_id = crate::ids::random_hex(8);
    write_atomic(&paths.disk_id, format!("{disk_id}\n").as_bytes())
        .map_err(io(format!("writing {}", paths.disk_id.display())))?;
    if let Err(e) = before_rename() {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    std::fs::rename(tmp, &paths.overlay)
        .map_err(io(format!("creating {}", paths.overlay.display())))?;
    Ok(paths.overlay.clone())
}

/// Points `overlay` at `backing` (of `format`) without touching its data: `qemu-img rebase
/// -u`. Only for a backing file with the same content as the one it replaces.
pub async fn rebase_unsafe(
    overlay: &Path,
    backing: &Path,
    format: &str,
) -> Result<(), ProcessError> {
    let words = ["rebase", "-u", "-f", "qcow2", "-F", format, "-b"];
    let mut args: Vec<&std::ffi::OsStr> = words.iter().map(|a| a.as_ref()).collect();
    args.extend([backing.as_os_str(), overlay.as_os_str()]);
    qemu_img(&args, overlay).await
}

/// Runs `qemu-img ARGS...` on `image` (named in the error).
async fn qemu_img(args: &[&std::ffi::OsStr], image: &Path) -> Result<(), ProcessError> {
    let out = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io("running qemu-img (package qemu-utils)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ProcessError::Failed(format!(
        "qemu-img {} on {} failed: {}",
        args.first()
            .map(|a| a.to_string_lossy())
            .unwrap_or_default(),
        image.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// The format and virtual size of an image as qemu-img reads them (blocking qemu-img, on
/// the blocking pool).
pub async fn image_info(image: &Path) -> Result<ImageInfo, ProcessError> {
    let image = image.to_owned();
    Ok(
        tokio::task::spawn_blocking(move || crate::image::info(&image))
            .await
            .map_err(|e| ProcessError::Failed(format!("qemu-img info panicked: {e}")))??,
    )
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
pub async fn launch(
    spec: &LaunchSpec,
    paths: &VmPaths,
    accel_reason: &str,
    config: &Path,
    log_cap: u64,
    settings: crate::drift::LaunchSettings,
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
    let mut child = Command::new("setsid")
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
    let qmp_ok = loop {
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
            && Qmp::connect(&paths.qmp, Duration::from_secs(2))
                .await
                .is_ok()
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !qmp_ok {
        let _ = child.start_kill();
        let what = match serial {
            None => format!(
                "castrad could not connect to its serial console {}",
                paths.serial_socket.display()
            ),
            Some(_) => "its QMP socket never answered".to_owned(),
        };
        return Err(ProcessError::Failed(format!("QEMU started but {what}")));
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

/// Deletes the VM's disk and everything bound to it; returns the bytes reclaimed. Refused
/// while a recorded QEMU of ours still runs on it.
pub fn discard(paths: &VmPaths) -> Result<u64, ProcessError> {
    use std::os::unix::fs::MetadataExt;
    ensure_not_running(paths)?;
    let reclaimed = std::fs::metadata(&paths.overlay)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    for f in [
        &paths.overlay,
        &paths.disk_id,
        &paths.stamp,
        &paths.known_hosts,
        &paths.seed,
        &paths.seed_inputs,
        &paths.seed_settings,
        &paths.efi_vars,
        &paths.base_record,
    ] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("cannot discard {}", f.display()))(e));
            }
            _ => {}
        }
    }
    Ok(reclaimed)
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

    /// What the backend does before a launch: grow the disk it has, or make one on `base`.
    async fn prepare_overlay(
        paths: &VmPaths,
        base: &Path,
        size_mib: Option<u64>,
    ) -> Result<Option<PathBuf>, ProcessError> {
        if paths.overlay.exists() {
            return grow_overlay(paths, size_mib).await.map(|()| None);
        }
        let info = image_info(base).await?;
        let backing = Backing {
            path: base,
            format: &info.format,
            virtual_size: info.virtual_size,
        };
        create_overlay(paths, backing, size_mib, || Ok(()))
            .await
            .map(Some)
    }

    #[tokio::test]
    async fn a_new_overlay_gets_a_new_disk_id_and_drops_the_old_disks_proofs() {
        let dir = tempfile::tempdir().unwrap();
        let root =
            crate::state_root::StateRoot::for_project(dir.path(), "p", Path::new("/p/castra.toml"));
        let paths = root.vm("vm");
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let first = prepare_overlay(&paths, &base, None).await.unwrap();
        assert_eq!(first.as_deref(), Some(paths.overlay.as_path()));
        let id1 = std::fs::read_to_string(&paths.disk_id).unwrap();
        assert_eq!(
            prepare_overlay(&paths, &base, None).await.unwrap(),
            None,
            "kept"
        );

        // Proofs about this disk and what was given to it, then the disk goes away.
        crate::state_root::ensure_dir(&root.stamps_dir()).unwrap();
        for f in [
            &paths.stamp,
            &paths.known_hosts,
            &paths.seed,
            &paths.efi_vars,
            &paths.base_record,
        ] {
            std::fs::write(f, "x").unwrap();
        }
        assert!(discard(&paths).unwrap() > 0);
        for f in [
            &paths.stamp,
            &paths.known_hosts,
            &paths.seed,
            &paths.efi_vars,
            &paths.base_record,
            &paths.overlay,
        ] {
            assert!(!f.exists(), "{} is left", f.display());
        }

        prepare_overlay(&paths, &base, None).await.unwrap();
        let id2 = std::fs::read_to_string(&paths.disk_id).unwrap();
        assert_ne!(id1, id2);
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&paths.overlay)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename-format"], "raw");
    }

    #[tokio::test]
    async fn a_disk_is_made_at_its_size_grown_when_asked_and_never_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let root =
            crate::state_root::StateRoot::for_project(dir.path(), "p", Path::new("/p/castra.toml"));
        let paths = root.vm("vm");
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 4 << 20]).unwrap();

        let small = prepare_overlay(&paths, &base, Some(2)).await.unwrap_err();
        assert!(
            small.to_string().contains("smaller than the base image"),
            "{small}"
        );
        assert!(!paths.overlay.exists(), "nothing made");
        prepare_overlay(&paths, &base, Some(16)).await.unwrap();
        assert_eq!(mib(&paths.overlay).await, 16);
        let id = std::fs::read_to_string(&paths.disk_id).unwrap();
        assert_eq!(
            prepare_overlay(&paths, &base, Some(32)).await.unwrap(),
            None
        );
        assert_eq!(mib(&paths.overlay).await, 32, "grown");
        assert_eq!(
            std::fs::read_to_string(&paths.disk_id).unwrap(),
            id,
            "the same disk"
        );
        let shrink = prepare_overlay(&paths, &base, Some(8)).await.unwrap_err();
        assert!(shrink.to_string().contains("cannot shrink"), "{shrink}");
        assert_eq!(mib(&paths.overlay).await, 32, "unchanged");
        assert_eq!(prepare_overlay(&paths, &base, None).await.unwrap(), None);
    }

    async fn mib(path: &Path) -> u64 {
        image_info(path).await.unwrap().virtual_size >> 20
    }
}
