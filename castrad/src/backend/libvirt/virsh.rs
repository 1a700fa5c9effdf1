//! Talking to one hypervisor: `virsh -c URI` as a subprocess, and for a `qemu+ssh://` URI a
//! shell on the hypervisor through the same SSH connection.
//!
//! Over SSH, libvirt runs the ssh client castrad names in the URI's `command=`: a wrapper
//! script castrad writes (in its private control directory, one per hypervisor) that adds
//! castrad's options ahead of the user's `~/.ssh/config`: strict host key checking
//! (against `[vms.libvirt] known_hosts`, else the user's own known_hosts; never
//! `no_verify`), batch mode, and one ControlMaster per hypervisor, shared by every `virsh`
//! call, every shell command and every guest connection (`ssh -W` through it; see
//! `crate::ssh::Hop`). A lost master is made again by the next call.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::libvirt::Libvirt;
use crate::ssh::{Hop, quote};

/// How long one `virsh` call or hypervisor command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A hypervisor as castrad reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hypervisor {
    /// The URI as written, for messages.
    pub uri: String,
    /// The URI virsh is given (with castrad's `command=` for SSH).
    connect: String,
    /// The SSH hop to the hypervisor; None for this machine.
    pub hop: Option<Hop>,
    /// The ssh wrapper libvirt runs, for SSH URIs.
    wrapper: Option<PathBuf>,
    /// castrad's private directory, for the XML files virsh reads.
    scratch: PathBuf,
}

/// What went wrong talking to a hypervisor, with virsh's or ssh's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} on hypervisor {uri}: {message}")]
pub struct CallError {
    pub uri: String,
    pub what: String,
    pub message: String,
}

/// Percent-encodes `s` for a URI query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Hypervisor {
    /// The hypervisor of `config`; `control_dir` is castrad's private directory of ssh
    /// control sockets (where the wrapper goes too).
    pub fn new(config: &Libvirt, control_dir: &Path) -> Hypervisor {
        let hop = config
            .remote
            .as_ref()
            .map(|r| Hop::new(r, config.known_hosts.as_deref(), control_dir));
        let wrapper = hop.as_ref().map(|h| h.control_path.with_extension("ssh"));
        let connect = match &wrapper {
            Some(w) => {
                let sep = if config.uri.contains('?') { '&' } else { '?' };
                format!(
                    "{}{sep}command={}&no_tty=1",
                    config.uri,
                    encode(&w.to_string_lossy())
                )
            }
            None => config.uri.clone(),
        };
        Hypervisor {
            uri: config.uri.clone(),
            connect,
            hop,
            wrapper,
            scratch: control_dir.to_owned(),
        }
    }

    /// The hypervisor's name for messages: `user@host:port`, or "this machine".
    pub fn name(&self) -> String {
        match &self.hop {
            Some(h) => h.display.clone(),
            None => "this machine".into(),
        }
    }

    fn error(&self, what: impl Into<String>, message: impl Into<String>) -> CallError {
        CallError {
            uri: self.uri.clone(),
            what: what.into(),
            message: message.into(),
        }
    }

    /// Writes the ssh wrapper libvirt runs (0700, in castrad's private directory).
    fn ensure_wrapper(&self) -> Result<(), CallError> {
        let (Some(wrapper), Some(hop)) = (&self.wrapper, &self.hop) else {
            return Ok(());
        };
        let mut script =
            String::from("#!/bin/sh\n# castrad's ssh to a libvirt hypervisor.\nexec ssh");
        for arg in hop.options() {
            script.push(' ');
            script.push_str(&quote(&arg));
        }
        script.push_str(" \"$@\"\n");
        if std::fs::read_to_string(wrapper).is_ok_and(|s| s == script) {
            return Ok(());
        }
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            if let Some(dir) = wrapper.parent() {
                crate::state_root::ensure_dir(dir)?;
            }
            crate::fsutil::write_atomic(wrapper, script.as_bytes())?;
            std::fs::set_permissions(wrapper, std::fs::Permissions::from_mode(0o700))
        };
        write().map_err(|e| self.error(format!("writing {}", wrapper.display()), e.to_string()))
    }

    /// `virsh ARGS` against this hypervisor: stdout, or the error with virsh's message.
    pub fn virsh(&self, args: &[&str]) -> Result<String, CallError> {
        self.virsh_within(args, CALL_TIMEOUT)
    }

    /// [`Self::virsh`] with its own time limit (an upload takes as long as the image needs).
    pub fn virsh_within(&self, args: &[&str], limit: Duration) -> Result<String, CallError> {
        self.ensure_wrapper()?;
        let mut cmd = Command::new("virsh");
        cmd.args(["-q", "-c", &self.connect]).args(args);
        let what = format!("virsh {}", args.first().copied().unwrap_or(""));
        run(cmd, None, limit).map_err(|m| self.error(what, m))
    }

    /// `virsh ARGS` with `file` (XML castrad made) as the last argument, written to a
    /// private temporary file first (virsh reads it on this machine).
    pub fn virsh_with_file(&self, args: &[&str], text: &str) -> Result<String, CallError> {
        let file = self
            .scratch
            .join(format!("libvirt-{}.xml", crate::ids::random_hex(6)));
        crate::state_root::ensure_dir(&self.scratch)
            .and_then(|()| std::fs::write(&file, text))
            .map_err(|e| self.error(format!("writing {}", file.display()), e.to_string()))?;
        let path = file.to_string_lossy().into_owned();
        let mut all: Vec<&str> = args.to_vec();
        all.push(&path);
        let result = self.virsh(&all);
        let _ = std::fs::remove_file(&file);
        result
    }

    /// Runs `words` on the hypervisor (here, or over the SSH connection, each word quoted).
    pub fn sh(&self, words: &[&str]) -> Result<String, CallError> {
        self.sh_within(words, CALL_TIMEOUT)
    }

    /// [`Self::sh`] with its own time limit (hashing an image takes as long as it needs).
    pub fn sh_within(&self, words: &[&str], limit: Duration) -> Result<String, CallError> {
        let what = words.first().copied().unwrap_or("").to_owned();
        let cmd = match &self.hop {
            None => {
                let mut cmd = Command::new(words[0]);
                cmd.args(&words[1..]);
                cmd
            }
            Some(hop) => {
                let mut cmd = Command::new("ssh");
                cmd.args(hop.options())
                    .args(hop.login_args())
                    .arg("-T")
                    .arg("--")
                    .arg(&hop.host)
                    .arg(crate::ssh::command_line(words));
                cmd
            }
        };
        run(cmd, None, limit).map_err(|m| self.error(what, m))
    }
}

/// Runs `cmd` to its end within `limit`: its stdout, or its stderr as the error.
fn run(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Result<String, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| e.to_string())?,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(format!("no answer within {limit:?}"));
        }
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches("error: ").trim())
        .filter(|l| !l.is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .join("; ");
    Err(if message.is_empty() {
        format!("exited with {}", out.status)
    } else {
        message
    })
}

/// Runs blocking `f` from async or plain code: on a multi-threaded runtime the worker is
/// handed over to the others meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ssh_uri_gets_castrads_wrapper_and_a_local_one_stays_as_written() {
        let remote = Libvirt {
            uri: "qemu+ssh://me@hv:2222/session?keyfile=/k".into(),
            remote: crate::config::libvirt::parse_uri("qemu+ssh://me@hv:2222/session?keyfile=/k")
                .unwrap(),
            pool: "castra".into(),
            known_hosts: Some("/pins/known_hosts".into()),
            upload: false,
        };
        let hv = Hypervisor::new(&remote, Path::new("/run/c d/ssh"));
        assert!(
            hv.connect
                .starts_with("qemu+ssh://me@hv:2222/session?keyfile=/k&command=/run/c%20d/ssh/hv-"),
            "{}",
            hv.connect
        );
        assert!(hv.connect.ends_with(".ssh&no_tty=1"));
        assert_eq!(hv.name(), "me@hv:2222");
        let local = Libvirt {
            uri: "qemu:///session".into(),
            remote: None,
            ..remote
        };
        let hv = Hypervisor::new(&local, Path::new("/run/c/ssh"));
        assert_eq!(hv.connect, "qemu:///session");
        assert_eq!(hv.name(), "this machine");
    }
}
