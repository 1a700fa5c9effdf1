//! How castrad talks to a guest: the user's OpenSSH client, one ControlMaster per run.
//!
//! [`Target`] builds argv (pure, unit-tested); [`Master`] owns the ControlMaster process of one
//! pipeline run and runs commands multiplexed over it.
//!
//! Host keys are pinned per VM in the state root (`vms/<vm>/known_hosts`) under a
//! `HostKeyAlias` of the VM's name, so the pin follows the VM whatever host port it is
//! forwarded to. First contact accepts and records the key (trust on first use); afterwards a
//! different key fails the run. Only our pin file is consulted, never the user's known_hosts.
//!
//! Nothing user-provided is interpolated into a remote command line unquoted: every argument
//! goes through [`quote`], and env values never appear on a command line at all (they are sent
//! on stdin, see `pipeline`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Everything needed to reach one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vm: String,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub identity: Option<PathBuf>,
    /// User `-o Key=Value` options from castra.toml / bootstrap.toml.
    pub options: Vec<String>,
    /// The pinned host key file of this VM.
    pub known_hosts: PathBuf,
    /// The ControlMaster socket of this run.
    pub control_path: PathBuf,
    pub connect_timeout: Duration,
}

impl Target {
    /// `user@host:port`, for messages.
    pub fn display(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// Options shared by the master and every multiplexed command. Ours come first: ssh keeps
    /// the first value it sees for an option, so users cannot accidentally disable pinning
    /// through `options`, while the rest of their `-o` options and ~/.ssh/config still apply.
    fn common_args(&self, pinned: bool) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, v: &str| {
            args.push("-o".into());
            args.push(format!("{k}={v}").into());
        };
        opt("BatchMode", "yes");
        opt(
            "ConnectTimeout",
            &self.connect_timeout.as_secs().max(1).to_string(),
        );
        opt("HostKeyAlias", &format!("castra-{}", self.vm));
        opt(
            "StrictHostKeyChecking",
            if pinned { "yes" } else { "accept-new" },
        );
        opt("UpdateHostKeys", "no");
        opt("GlobalKnownHostsFile", "/dev/null");
        opt("LogLevel", "ERROR");
        opt("ServerAliveInterval", "10");
        opt("ServerAliveCountMax", "3");
        let user_kex = self.options.iter().any(|o| {
            o.trim_start()
                .get(..13)
                .is_some_and(|k| k.eq_ignore_ascii_case("KexAlgorithms"))
        });
        if is_loopback(&self.host) && !user_kex {
            opt("KexAlgorithms", LOOPBACK_KEX);
        }
        args.push("-o".into());
        let mut known = OsString::from("UserKnownHostsFile=");
        known.push(&self.known_hosts);
        args.push(known);
        args.push("-o".into());
        let mut control = OsString::from("ControlPath=");
        control.push(&self.control_path);
        args.push(control);
        args.push("-p".into());
        args.push(self.port.to_string().into());
        if let Some(user) = &self.user {
            args.push("-l".into());
            args.push(user.into());
        }
        if let Some(identity) = &self.identity {
            args.push("-i".into());
            args.push(identity.into());
            args.push("-o".into());
            args.push("IdentitiesOnly=yes".into());
        }
        for o in &self.options {
            args.push("-o".into());
            args.push(o.into());
        }
        args
    }

    /// argv (after `ssh`) of the ControlMaster: authenticates, then holds the connection.
    pub fn master_args(&self, pinned: bool) -> Vec<OsString> {
        let mut args = self.common_args(pinned);
        args.extend(
            [
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=no",
                "-N",
                "-T",
                "--",
            ]
            .map(OsString::from),
        );
        args.push(self.host.clone().into());
        args
    }

    /// argv (after `ssh`) running `remote_command` over the master's connection.
    pub fn command_args(&self, remote_command: &str) -> Vec<OsString> {
        let mut args = self.common_args(true);
        args.extend(["-o", "ControlMaster=no", "-T", "--"].map(OsString::from));
        args.push(self.host.clone().into());
        args.push(remote_command.into());
        args
    }
}

/// Key exchange for guests on this machine (every QEMU VM; external VMs on 127.0.0.1 or ::1):
/// OpenSSH's defaults without the post-quantum hybrid, whose key generation costs the client
/// about 140 ms of CPU per connection on the machines we measured (curve25519: about 15 ms).
/// Its protection, against traffic recorded now and decrypted later, is moot for traffic
/// that never leaves the machine. Every algorithm here is known to OpenSSH since 7.4. A
/// `KexAlgorithms` in a VM's `ssh.options` replaces this.
const LOOPBACK_KEX: &str = "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,\
ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,\
diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256";

/// Whether `host` names this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Quotes `s` for a POSIX shell: one single-quoted word, byte-exact for any content.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// A remote command line from words, each quoted.
pub fn command_line<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "host key of {vm} changed since it was pinned in {}: the machine at {endpoint} is not the \
         one castra first bootstrapped. If it was rebuilt on purpose, delete that file and run again",
        known_hosts.display()
    )]
    HostKeyChanged {
        vm: String,
        endpoint: String,
        known_hosts: PathBuf,
    },
    #[error("ssh to {endpoint} failed: {message}")]
    Failed { endpoint: String, message: String },
    #[error("cannot run ssh")]
    Spawn(#[source] std::io::Error),
}

/// The ControlMaster of one run. Dropping it kills the master and removes its socket.
#[derive(Debug)]
pub struct Master {
    target: Target,
    child: Child,
}

impl Master {
    /// Starts the master and waits until it has authenticated (its control socket exists).
    pub async fn connect(target: Target) -> Result<Master, SshError> {
        let pinned = std::fs::metadata(&target.known_hosts).is_ok_and(|m| m.len() > 0);
        if let Some(dir) = target.control_path.parent() {
            crate::state_root::ensure_dir(dir).map_err(SshError::Spawn)?;
        }
        if let Some(dir) = target.known_hosts.parent() {
            crate::state_root::ensure_dir(dir).map_err(SshError::Spawn)?;
        }
        let _ = std::fs::remove_file(&target.control_path);
        let mut child = Command::new("ssh")
            .args(target.master_args(pinned))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(SshError::Spawn)?;
        let deadline = Instant::now() + target.connect_timeout + Duration::from_secs(5);
        loop {
            if target.control_path.exists() {
                return Ok(Master { target, child });
            }
            if let Some(_status) = child.try_wait().map_err(SshError::Spawn)? {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr).await;
                }
                return Err(classify(&target, &stderr));
            }
            if Instant::now() >= deadline {
                return Err(SshError::Failed {
                    endpoint: target.display(),
                    message: format!(
                        "no connection after {:?} (authentication did not finish)",
                        target.connect_timeout + Duration::from_secs(5)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A command that runs `remote_command` over this connection (caller sets stdio).
    pub fn command(&self, remote_command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.target.command_args(remote_command))
            .kill_on_drop(true);
        cmd
    }

    /// Stops the master.
    pub async fn close(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_file(&self.target.control_path);
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.target.control_path);
    }
}

fn classify(target: &Target, stderr: &str) -> SshError {
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("Host key verification failed")
    {
        return SshError::HostKeyChanged {
            vm: target.vm.clone(),
            endpoint: target.display(),
            known_hosts: target.known_hosts.clone(),
        };
    }
    let message = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@'))
        .collect::<Vec<_>>()
        .join("; ");
    SshError::Failed {
        endpoint: target.display(),
        message: if message.is_empty() {
            "ssh exited without a message".into()
        } else {
            message
        },
    }
}

/// The directory for ControlMaster sockets: short, private, next to castrad's socket (Unix
/// socket paths are limited to 108 bytes).
pub fn control_path(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("{run_id}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            vm: "web-0".into(),
            host: "127.0.0.1".into(),
            port: 2222,
            user: Some("deploy".into()),
            identity: Some("/k/id_ed25519".into()),
            options: vec![
                "ServerAliveInterval=5".into(),
                "StrictHostKeyChecking=no".into(),
            ],
            known_hosts: "/s/vms/web-0/known_hosts".into(),
            control_path: "/run/c/abc.sock".into(),
            connect_timeout: Duration::from_secs(7),
        }
    }

    fn joined(args: Vec<OsString>) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn master_pins_keys_before_user_options() {
        let first = joined(target().master_args(false));
        assert!(first.starts_with("-o BatchMode=yes -o ConnectTimeout=7 -o HostKeyAlias=castra-web-0 -o StrictHostKeyChecking=accept-new"), "{first}");
        assert!(first.contains("-o UserKnownHostsFile=/s/vms/web-0/known_hosts"));
        assert!(first.contains("-o ControlPath=/run/c/abc.sock"));
        assert!(first.contains("-p 2222 -l deploy -i /k/id_ed25519 -o IdentitiesOnly=yes"));
        assert!(
            first.ends_with("-o ControlMaster=yes -o ControlPersist=no -N -T -- 127.0.0.1"),
            "{first}"
        );
        // Ours precede the user's, so the user's StrictHostKeyChecking=no cannot win.
        let ours = first.find("StrictHostKeyChecking=accept-new").unwrap();
        let theirs = first.find("StrictHostKeyChecking=no").unwrap();
        assert!(ours < theirs);
        let pinned = joined(target().master_args(true));
        assert!(pinned.contains("StrictHostKeyChecking=yes"));
    }

    #[test]
    fn loopback_guests_skip_the_post_quantum_key_exchange_unless_told() {
        let kex = |t: &Target| {
            joined(t.master_args(true))
                .split(' ')
                .filter(|a| a.starts_with("KexAlgorithms="))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let local = target();
        assert_eq!(kex(&local), [format!("KexAlgorithms={LOOPBACK_KEX}")]);
        assert!(!LOOPBACK_KEX.contains("sntrup"));
        let remote = Target {
            host: "build.example.org".into(),
            ..target()
        };
        assert!(
            kex(&remote).is_empty(),
            "a remote host keeps ssh's defaults"
        );
        let told = Target {
            options: vec!["kexalgorithms=sntrup761x25519-sha512@openssh.com".into()],
            ..target()
        };
        assert!(kex(&told).is_empty(), "the user's choice is the only one");
        for (host, local) in [
            ("::1", true),
            ("[::1]", true),
            ("127.0.0.2", true),
            ("LOCALHOST", true),
            ("10.0.0.1", false),
        ] {
            assert_eq!(is_loopback(host), local, "{host}");
        }
        // The list is one ssh accepts.
        let out = std::process::Command::new("ssh")
            .args([
                "-G",
                "-o",
                &format!("KexAlgorithms={LOOPBACK_KEX}"),
                "localhost",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn command_args_end_with_host_and_one_remote_string() {
        let args = target().command_args("echo 'hi'");
        let n = args.len();
        assert_eq!(args[n - 1], "echo 'hi'");
        assert_eq!(args[n - 2], "127.0.0.1");
        assert_eq!(args[n - 3], "--");
        assert!(joined(args).contains("ControlMaster=no"));
    }

    #[test]
    fn quote_survives_a_real_shell_byte_for_byte() {
        let nasty = [
            "plain",
            "",
            "a'b\"c $(touch /tmp/castra-quote-test)\nline2",
            "'''",
            "back\\slash `uname` ${HOME} *?[]",
            "tab\there\r\n",
        ];
        for s in nasty {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
        assert!(!Path::new("/tmp/castra-quote-test").exists());
    }

    #[test]
    fn ssh_errors_are_classified() {
        let t = target();
        let changed = classify(
            &t,
            "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
        );
        assert!(matches!(changed, SshError::HostKeyChanged { .. }));
        assert!(
            changed
                .to_string()
                .contains("delete that file and run again")
        );
        let denied = classify(&t, "deploy@127.0.0.1: Permission denied (publickey).\n");
        assert_eq!(
            denied.to_string(),
            "ssh to deploy@127.0.0.1:2222 failed: deploy@127.0.0.1: Permission denied (publickey)."
        );
    }
}
