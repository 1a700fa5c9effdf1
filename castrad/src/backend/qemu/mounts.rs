//! Shared folders (`[[vms.mounts]]`) on the host side: which transport a VM's mounts use, the
//! part of QEMU's command line they add, and the virtiofsd daemons castrad runs for them.
//!
//! - Transport: virtiofs when a `virtiofsd` is installed and either castrad runs as root or
//!   an unprivileged user namespace is usable (probed once: [`userns::probe`]; with a group
//!   map written by newgidmap, else a plain one), else 9p (`-virtfs`, built into QEMU, with
//!   QEMU's own `readonly=on`). virtiofsd sandboxes itself in namespaces, and a read-only
//!   share is a read-only bind mount in a mount namespace of its own: as root directly;
//!   otherwise inside a user namespace that maps castrad's uid and gid to themselves and keeps
//!   the capabilities it grants ([`virtiofsd_command`]). One
//!   transport for all of a VM's mounts, chosen at launch and recorded in `launch.json`
//!   (`status` shows it; `plan` shows what a launch would choose).
//! - virtiofs: one daemon per mount, started before QEMU (which connects to its socket),
//!   under `setsid` like QEMU, recorded in `virtiofsd.json` (pid, process start time,
//!   socket). Each daemon exits by itself when QEMU closes its connection; castrad also stops
//!   every recorded daemon that is still ours whenever it forgets the VM's QEMU (after a stop,
//!   an unexpected exit, a failed launch, or a re-adoption that finds QEMU gone), and before a
//!   launch. A re-adopted QEMU keeps its daemons: they serve its mounts.
//! - As root, each virtiofsd (and QEMU, when it serves 9p) runs under [`seccomp`]'s filter:
//!   the guest's root can leave no setuid or setgid file and no device node on the host. The
//!   host path handed to virtiofsd has no comma or backslash (its option parser would split
//!   or decode it: `config::mounts::option_unsafe`), checked at load and again here.
//! - Guest memory is shared with the daemons (`memory-backend-memfd,share=on` plus a NUMA
//!   node), only when there are virtiofs mounts.
//!
//! Tags are `castra<i>` (the mount's index): short (virtiofs allows 36 bytes), and the guest
//! side uses the same names: [`guest_command`] in the seed's `bootcmd` for cloud-init guests,
//! [`guest_args`] for the mounts `pipeline::guest_setup` makes on guests without cloud-init.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::config::Mount;
use crate::state_root::VmPaths;

pub mod seccomp;
pub mod userns;

use userns::USERNS_SCRIPT;
pub use userns::{NoUserNs, UserNs};

/// Why the virtiofsd daemons of a VM could not be started (none is left running).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// How a VM's mounts reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    #[serde(rename = "virtiofs")]
    Virtiofs,
    #[serde(rename = "9p")]
    NineP,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Virtiofs => "virtiofs",
            Transport::NineP => "9p",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "virtiofs" => Some(Transport::Virtiofs),
            "9p" => Some(Transport::NineP),
            _ => None,
        }
    }
}

/// Where distributions install virtiofsd, off PATH: the `virtiofsd` package (Rust) of Debian 13
/// on, Ubuntu 24.04 on and Fedora in /usr/libexec, Arch's in /usr/lib; QEMU's own, up to QEMU
/// 7.2, in qemu-system-common (Debian 12, Ubuntu 22.04).
const VIRTIOFSD_PATHS: [&str; 3] = [
    "/usr/libexec/virtiofsd",
    "/usr/lib/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
];

/// What the transport choice depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub virtiofsd: Option<PathBuf>,
    pub root: bool,
    /// The unprivileged user namespace virtiofsd can run in here ([`userns::probe`]), or why
    /// none. Only asked when castrad is not root and a virtiofsd is installed.
    pub userns: Result<UserNs, NoUserNs>,
}

/// Looks for virtiofsd ($PATH, then Debian's places), whether castrad is root, and (when it
/// is not) whether virtiofsd can run in a user namespace.
pub fn probe() -> Probe {
    let in_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("virtiofsd"))
            .find(|p| p.is_file())
    });
    let root = nix::unistd::geteuid().is_root();
    let virtiofsd = in_path.or_else(|| {
        VIRTIOFSD_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    });
    let userns = match &virtiofsd {
        Some(path) if !root => userns::probe(path),
        // Not asked.
        _ => Ok(UserNs::Plain),
    };
    Probe {
        virtiofsd,
        root,
        userns,
    }
}

/// Pure: the transport, and why.
pub fn choose(probe: &Probe) -> (Transport, String) {
    match (&probe.virtiofsd, probe.root, &probe.userns) {
        (Some(path), true, _) => (
            Transport::Virtiofs,
            format!("virtiofsd: {}", path.display()),
        ),
        (Some(path), false, Ok(UserNs::Newgidmap { .. })) => (
            Transport::Virtiofs,
            format!(
                "virtiofsd: {} in a user namespace whose group map newgidmap wrote (castrad is \
                 not root)",
                path.display()
            ),
        ),
        (Some(path), false, Ok(UserNs::Plain)) => (
            Transport::Virtiofs,
            format!(
                "virtiofsd: {} in a user namespace (castrad is not root)",
                path.display()
            ),
        ),
        (Some(path), false, Err(no)) => (
            Transport::NineP,
            format!(
                "9p: {} needs root or a user namespace; castrad is not root and cannot run it in \
                 one ({no}; to fix: {}), so the fallback is used",
                path.display(),
                no.fix()
            ),
        ),
        (None, _, _) => (
            Transport::NineP,
            "9p: no virtiofsd installed (Debian: the virtiofsd package, or QEMU 7.2's \
             /usr/lib/qemu/virtiofsd in qemu-system-common)"
                .to_owned(),
        ),
    }
}

/// The tag a mount is offered to the guest under.
pub fn tag(index: usize) -> String {
    format!("castra{index}")
}

/// A VM's mounts as its launch needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shares {
    pub transport: Transport,
    pub dirs: Vec<Share>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub host: PathBuf,
    pub readonly: bool,
    /// virtiofs: the daemon's vhost-user socket.
    pub socket: PathBuf,
}

/// The shares of `mounts` over `transport` (None when there are none).
pub fn shares(mounts: &[Mount], transport: Transport, paths: &VmPaths) -> Option<Shares> {
    (!mounts.is_empty()).then(|| Shares {
        transport,
        dirs: mounts
            .iter()
            .enumerate()
            .map(|(i, m)| Share {
                tag: tag(i),
                host: m.host.clone(),
                readonly: m.readonly,
                socket: paths.virtiofs_socket(i),
            })
            .collect(),
    })
}

/// QEMU's value syntax doubles a comma inside a value.
fn escaped(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// Pure: the arguments the shares add to QEMU's command line.
pub fn argv(shares: &Shares, memory_mib: u64) -> Vec<String> {
    let mut a = Vec::new();
    match shares.transport {
        Transport::Virtiofs => {
            // vhost-user devices need the guest's memory shared with the daemon.
            a.push("-object".into());
            a.push(format!(
                "memory-backend-memfd,id=castra-mem,size={memory_mib}M,share=on"
            ));
            a.extend(["-numa".into(), "node,memdev=castra-mem".into()]);
            for (i, s) in shares.dirs.iter().enumerate() {
                a.push("-chardev".into());
                a.push(format!(
                    "socket,id=castra-fs{i},path={}",
                    escaped(&s.socket)
                ));
                a.push("-device".into());
                a.push(format!(
                    "vhost-user-fs-pci,chardev=castra-fs{i},tag={}",
                    s.tag
                ));
            }
        }
        Transport::NineP => {
            for (i, s) in shares.dirs.iter().enumerate() {
                // security_model=none: files keep the host user's ownership; the guest's
                // chown is ignored rather than failing.
                let ro = if s.readonly { ",readonly=on" } else { "" };
                a.push("-virtfs".into());
                a.push(format!(
                    "local,path={},mount_tag={},security_model=none,id=castra-fs{i}{ro}",
                    escaped(&s.host),
                    s.tag
                ));
            }
        }
    }
    a
}

/// How a virtiofsd gets the privileges its sandbox needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// castrad is root.
    Root,
    /// In the user namespace `userns`; `nofile` is castrad's hard limit on open files, which
    /// virtiofsd may not raise from there (it would by default).
    UserNs { userns: UserNs, nofile: u64 },
}

/// Pure: the command that runs one share's virtiofsd (program first). A read-only share runs
/// it in a mount namespace of its own where the directory is bind-mounted read-only, so the
/// guest cannot write to it whatever it mounts. Without root, it runs in a user namespace.
pub fn virtiofsd_command(
    virtiofsd: &Path,
    share: &Share,
    privilege: Privilege,
) -> Vec<std::ffi::OsString> {
    let mut c: Vec<std::ffi::OsString> = vec!["setsid".into()];
    match privilege {
        Privilege::UserNs { userns, .. } => {
            c.extend(userns.prelude().into_iter().map(Into::into));
            c.extend(["--", "sh", "-c", USERNS_SCRIPT, "castra-virtiofsd"].map(Into::into));
            c.push(if share.readonly { "ro" } else { "rw" }.into());
            c.push(share.host.clone().into());
        }
        Privilege::Root if share.readonly => {
            c.extend(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    "mount --bind -o ro -- \"$1\" \"$1\" && shift && exec \"$@\"",
                    "castra-virtiofsd",
                ]
                .map(Into::into),
            );
            c.push(share.host.clone().into());
        }
        Privilege::Root => {}
    }
    c.push(virtiofsd.into());
    let mut socket = std::ffi::OsString::from("--socket-path=");
    socket.push(&share.socket);
    c.push(socket);
    let mut source = std::ffi::OsString::from("source=");
    source.push(&share.host);
    c.extend(["-o".into(), source]);
    c.extend(["-o", "cache=auto", "-o", "log_level=warn"].map(Into::into));
    if let Privilege::UserNs { nofile, .. } = privilege {
        c.push(format!("--rlimit-nofile={nofile}").into());
    }
    c
}

/// The guest's side, as a shell program: arguments are triples (tag, guest path, `ro`|`rw`);
/// each directory is made and mounted unless something is mounted there already (it runs at
/// every boot, as root, from the seed's `bootcmd`). virtiofs first, 9p when the guest or the
/// host has no virtiofs, so a seed made for one transport still works if the next launch
/// chooses the other. Exits 1 if a mount failed, after trying the others.
///
/// Before it makes or mounts anything, `pt` checks the mount point as the driver checks
/// `remote_dir` (and `pipeline/guest_setup.sh` does for guests without cloud-init): no
/// component is a symbolic link, every directory above it is owned by root (or whoever runs
/// this) and cannot be written by others (a root-owned sticky one such as /tmp excepted), and
/// the missing ones are made one at a time by `mkdir`, which fails on a link planted meanwhile
/// instead of following it. Otherwise another account of the guest could have root mount a
/// share, or make directories, wherever it likes. The mount point itself may be anyone's: the
/// mount covers it. A refusal is said on stderr (cloud-init's output log).
pub const GUEST_SCRIPT: &str = "st=0; me=$(id -u); \
pt() { d=$1; p=; r=${1#/}; while [ -n \"$r\" ]; do c=${r%%/*}; \
case $r in */*) r=${r#*/} ;; *) r= ;; esac; q=$p/$c; \
if [ -L \"$q\" ]; then echo \"castra: not mounting at $d: $q is a symbolic link\" >&2; return 1; \
elif [ ! -e \"$q\" ]; then mkdir -m 755 -- \"$q\" || return 1; \
elif [ -n \"$r\" ]; then [ -d \"$q\" ] || { echo \"castra: not mounting at $d: $q is not a directory\" >&2; return 1; }; \
s=$(stat -c '%u %a' -- \"$q\") || { echo \"castra: not mounting at $d: cannot check $q\" >&2; return 1; }; \
u=${s% *}; a=${s#* }; case $u$a in ''|*[!0-9]*) echo \"castra: not mounting at $d: cannot check $q\" >&2; return 1 ;; esac; \
{ [ \"$u\" = 0 ] || [ \"$u\" = \"$me\" ]; } && { [ $((0$a & 022)) = 0 ] || { [ \"$u\" = 0 ] && [ $((0$a & 01000)) != 0 ]; }; } \
|| { echo \"castra: not mounting at $d: $q is owned by uid $u, mode $a (it must be root's \
and not writable by others)\" >&2; return 1; }; fi; p=$q; done; }; \
while [ $# -ge 3 ]; do pt \"$2\" && \
{ mountpoint -q -- \"$2\" || mount -t virtiofs -o \"$3\" -- \"$1\" \"$2\" 2>/dev/null || \
mount -t 9p -o \"trans=virtio,version=9p2000.L,msize=262144,$3\" -- \"$1\" \"$2\"; } || st=1; \
shift 3; done; exit $st";

/// Pure: the argv (`sh -c GUEST_SCRIPT ...`) that mounts `mounts` in the guest; None when
/// there are none. Paths travel as arguments, never inside the script.
pub fn guest_command(mounts: &[Mount]) -> Option<Vec<String>> {
    if mounts.is_empty() {
        return None;
    }
    let mut c: Vec<String> = ["sh", "-c", GUEST_SCRIPT, "castra-mounts"]
        .map(str::to_owned)
        .to_vec();
    c.extend(guest_args(mounts));
    Some(c)
}

/// Pure: (tag, guest path, `ro`|`rw`) for each mount, flat: the guest side's arguments (also
/// `pipeline::guest_setup`'s, for guests without cloud-init).
pub fn guest_args(mounts: &[Mount]) -> Vec<String> {
    let mut a = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        a.push(tag(i));
        a.push(m.guest.clone());
        a.push(if m.readonly { "ro" } else { "rw" }.to_owned());
    }
    a
}

/// One running virtiofsd, as `virtiofsd.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecord {
    pub pid: u32,
    pub start_time: u64,
    pub socket: PathBuf,
}

/// How long a virtiofsd gets to offer its socket.
const READY: Duration = Duration::from_secs(10);

/// Starts one virtiofsd per share (after stopping any a previous launch left), waits for each
/// socket, and records them. On an error, the ones started are stopped again.
pub async fn start(paths: &VmPaths, shares: &Shares) -> Result<(), MountError> {
    stop(paths).await;
    if shares.transport != Transport::Virtiofs {
        return Ok(());
    }
    let probe = probe();
    let virtiofsd = probe
        .virtiofsd
        .ok_or_else(|| MountError::Failed("virtiofsd is no longer installed".into()))?;
    let privilege = if probe.root {
        Privilege::Root
    } else {
        let userns = probe.userns.map_err(|no| {
            MountError::Failed(format!(
                "castrad is not root and cannot run virtiofsd in a user namespace: {no}"
            ))
        })?;
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_err(|e| MountError::Failed(format!("reading the open files limit: {e}")))?;
        Privilege::UserNs {
            userns,
            nofile: hard,
        }
    };
    let mut records = Vec::new();
    let result = start_each(paths, shares, &virtiofsd, privilege, &mut records).await;
    let saved = save(paths, &records);
    if let Err(e) = result.and(saved) {
        stop(paths).await;
        kill_all(&records).await;
        return Err(e);
    }
    Ok(())
}

async fn start_each(
    paths: &VmPaths,
    shares: &Shares,
    virtiofsd: &Path,
    privilege: Privilege,
    records: &mut Vec<DaemonRecord>,
) -> Result<(), MountError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&paths.virtiofsd_log)
        .map_err(|source| MountError::Io {
            what: format!("creating {}", paths.virtiofsd_log.display()),
            source,
        })?;
    for share in &shares.dirs {
        if share.socket.as_os_str().len() > 100 {
            return Err(MountError::Failed(format!(
                "socket path {} is too long for a Unix socket; use a shorter state directory",
                share.socket.display()
            )));
        }
        if let Some(problem) = crate::config::mounts::option_unsafe(&share.host) {
            // Checked when the project loads; asked again where the path becomes an option.
            return Err(MountError::Failed(format!(
                "virtiofsd cannot be given {}: it contains {problem}",
                share.host.display()
            )));
        }
        if privilege != Privilege::Root
            && [&share.socket, &share.host]
                .iter()
                .any(|p| p.starts_with("/run"))
        {
            // The namespace hides the host's /run behind a tmpfs of its own.
            return Err(MountError::Failed(format!(
                "without root, virtiofsd cannot serve {} through {}: neither may be under /run",
                share.host.display(),
                share.socket.display()
            )));
        }
        let _ = std::fs::remove_file(&share.socket);
        let command = virtiofsd_command(virtiofsd, share, privilege);
        let stderr = log.try_clone().map_err(|source| MountError::Io {
            what: "virtiofsd's log".into(),
            source,
        })?;
        let mut child = Command::new(&command[0]);
        if privilege == Privilege::Root {
            // As root, virtiofsd could leave setuid files and device nodes for the guest.
            seccomp::apply(&mut child, std::sync::Arc::new(seccomp::Filter::new(false)));
        }
        let mut child = child
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| MountError::Io {
                what: format!("starting {}", virtiofsd.display()),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        records.push(DaemonRecord {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            socket: share.socket.clone(),
        });
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&paths.virtiofsd_log).unwrap_or_default();
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                return Err(MountError::Failed(format!(
                    "virtiofsd for {} exited ({status}) while starting: {}",
                    share.host.display(),
                    last.unwrap_or("no message")
                )));
            }
            if share.socket.exists() {
                break;
            }
            if Instant::now() > deadline {
                return Err(MountError::Failed(format!(
                    "virtiofsd for {} did not offer {} within {READY:?}",
                    share.host.display(),
                    share.socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reaped when it exits (it outlives castrad otherwise, like QEMU).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
    }
    Ok(())
}

fn save(paths: &VmPaths, records: &[DaemonRecord]) -> Result<(), MountError> {
    let json = serde_json::to_vec_pretty(records).map_err(|e| MountError::Failed(e.to_string()))?;
    crate::fsutil::write_atomic(&paths.virtiofsd, &json).map_err(|source| MountError::Io {
        what: format!("writing {}", paths.virtiofsd.display()),
        source,
    })
}

/// The recorded daemons of the VM.
pub fn records(paths: &VmPaths) -> Vec<DaemonRecord> {
    std::fs::read(&paths.virtiofsd)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Stops every recorded daemon that is still ours, then removes the record and the sockets.
/// Blocking for at most about a second; also called from synchronous code (`forget`).
pub fn stop_now(paths: &VmPaths) {
    let records = records(paths);
    for r in &records {
        signal(r, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while records.iter().any(ours) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for r in &records {
        signal(r, nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(&r.socket);
    }
    let _ = std::fs::remove_file(&paths.virtiofsd);
}

/// [`stop_now`] off the async runtime's threads.
pub async fn stop(paths: &VmPaths) {
    let paths = paths.clone();
    let _ = tokio::task::spawn_blocking(move || stop_now(&paths)).await;
}

async fn kill_all(records: &[DaemonRecord]) {
    for r in records {
        signal(r, nix::sys::signal::Signal::SIGKILL);
    }
}

/// True while the record's pid is the daemon castrad started: the same start time and a
/// command line naming its socket.
pub fn ours(record: &DaemonRecord) -> bool {
    record.pid > 1
        && start_time(record.pid) == Some(record.start_time)
        && std::fs::read(format!("/proc/{}/cmdline", record.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*record.socket.to_string_lossy()))
}

fn signal(record: &DaemonRecord, signal: nix::sys::signal::Signal) {
    if !ours(record) {
        return;
    }
    let Ok(pid) = i32::try_from(record.pid) else {
        return;
    };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// Field 22 of /proc/<pid>/stat (None for a zombie).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests;
