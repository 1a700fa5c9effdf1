//! How castrad talks to a guest: the user's OpenSSH client, one connection per guest session.
//!
//! [`Target`] builds argv (pure, unit-tested); [`Connection`] owns one `ssh` process that
//! authenticates and runs one remote command (a run's guest session, or the health check's
//! watch). It is a ControlMaster only so that its control socket tells castrad the moment
//! authentication succeeded, before the session starts: `wait-handshake` ends there. The
//! command runs on the master's own session, not a multiplexed one: a second `ssh` process per
//! run cost every VM a few milliseconds of CPU and latency for nothing.
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
use std::time::Duration;

mod connection;
mod hop;
pub mod keys;

pub use hop::Hop;

pub use connection::{
    CONTINUED_PREFIX, Connection, LINE_CAP, LINES_BUFFER, SPLIT_SUFFIX, Tail, exit, lines,
};

/// The name a VM's host key is pinned under (`HostKeyAlias`), whatever port it answers on.
pub fn host_key_alias(vm: &str) -> String {
    format!("castra-{vm}")
}

/// Where a guest's SSH server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

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
    /// The control socket of this connection (it exists once ssh has authenticated).
    pub control_path: PathBuf,
    pub connect_timeout: Duration,
    /// The `ProxyCommand` through a libvirt VM's hypervisor ([`Hop::proxy_command`]); None:
    /// a direct connection.
    pub proxy: Option<String>,
}

/// The hop to `vm`'s hypervisor, for a libvirt VM on another host: connections go through
/// that host, sharing its one master (whose socket lives beside `control_path`).
pub fn hop_of(vm: &crate::config::Vm, control_path: &Path) -> Option<Hop> {
    let l = vm.libvirt.as_ref()?;
    let remote = l.remote.as_ref()?;
    let dir = control_path.parent().unwrap_or(Path::new("/tmp"));
    Some(Hop::new(remote, l.known_hosts.as_deref(), dir))
}

impl Target {
    /// `user@host:port`, for messages.
    pub fn display(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// The target of `vm` at `endpoint`, its host key pinned in the project's state root.
    /// The identity is `[vms.ssh] identity`, else, for a VM whose cloud-init seed carries it,
    /// the project's client key.
    pub fn for_vm(
        vm: &crate::config::Vm,
        endpoint: &Endpoint,
        root: &crate::state_root::StateRoot,
        control_path: PathBuf,
        connect_timeout: Duration,
    ) -> Target {
        let identity = vm
            .ssh
            .identity
            .clone()
            .or_else(|| vm.cloud_init.enabled.then(|| root.project_key()));
        let proxy = hop_of(vm, &control_path).map(|h| h.proxy_command());
        Target {
            vm: vm.name.clone(),
            host: endpoint.host.clone(),
            port: endpoint.port,
            user: vm.ssh.user.clone(),
            identity,
            options: vm.ssh.options.clone(),
            known_hosts: root.vm(&vm.name).known_hosts,
            control_path,
            connect_timeout,
            proxy,
        }
    }

    /// An OpenSSH config block `Host <alias>` that reaches this target as castrad does: the
    /// pinned host key under its alias, castrad's identity, the user's options.
    pub fn config_block(&self, alias: &str) -> String {
        let mut out = format!("Host {alias}\n");
        let mut raw = |k: &str, v: String| out.push_str(&format!("  {k} {v}\n"));
        let word = |v: &str| config_word(v);
        raw("HostName", word(&self.host));
        raw("Port", word(&self.port.to_string()));
        if let Some(user) = &self.user {
            raw("User", word(user));
        }
        if let Some(identity) = &self.identity {
            raw("IdentityFile", config_path(identity));
            raw("IdentitiesOnly", word("yes"));
        }
        raw("HostKeyAlias", word(&host_key_alias(&self.vm)));
        raw("UserKnownHostsFile", config_path(&self.known_hosts));
        raw("GlobalKnownHostsFile", word("/dev/null"));
        raw("StrictHostKeyChecking", word("yes"));
        raw("UpdateHostKeys", word("no"));
        if let Some(proxy) = &self.proxy {
            // The rest of the line, as ssh reads a ProxyCommand (no quotes around it).
            out.push_str(&format!("  ProxyCommand {proxy}\n"));
        }
        // As ssh reads them after `-o` (the same parser): unquoted, so that a value of several
        // words (`RekeyLimit=1G 1h`) stays several words. config::ssh_options allows no
        // control character in them.
        for option in &self.options {
            if let Some((k, v)) = option.split_once('=') {
                out.push_str(&format!("  {k} {v}\n"));
            }
        }
        out
    }

    /// argv (after `ssh`): a ControlMaster that authenticates, then runs `remote_command` as
    /// its own session.
    ///
    /// ssh keeps the first value it sees for an option, and command-line options come before
    /// any config file. So the options castrad depends on come first: the host key pinning,
    /// no agent, X11 or port forwarding (whatever ~/.ssh/config says: the guest is not
    /// trusted with this machine), batch mode, the control socket, a quiet log (ssh's stderr
    /// is the script's). Then the project's options (config::ssh_options allows only ones
    /// that tune the connection), then castrad's defaults for those, which the project's
    /// replace.
    pub fn args(&self, pinned: bool, remote_command: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let opt = |args: &mut Vec<OsString>, k: &str, v: &std::ffi::OsStr| {
            let mut o = OsString::from(format!("{k}="));
            o.push(v);
            args.push("-o".into());
            args.push(o);
        };
        let alias = host_key_alias(&self.vm);
        let timeout = self.connect_timeout.as_secs().max(1).to_string();
        for (k, v) in [
            ("BatchMode", "yes"),
            ("ConnectTimeout", timeout.as_str()),
            ("HostKeyAlias", alias.as_str()),
            (
                "StrictHostKeyChecking",
                if pinned { "yes" } else { "accept-new" },
            ),
            ("UpdateHostKeys", "no"),
            ("GlobalKnownHostsFile", "/dev/null"),
        ] {
            opt(&mut args, k, v.as_ref());
        }
        // Paths as ssh's option parser reads them (a state directory may hold a space).
        opt(
            &mut args,
            "UserKnownHostsFile",
            &option_path(&self.known_hosts),
        );
        for (k, v) in FORCED {
            opt(&mut args, k, v.as_ref());
        }
        opt(&mut args, "LogLevel", "ERROR".as_ref());
        if let Some(proxy) = &self.proxy {
            opt(&mut args, "ProxyCommand", proxy.as_ref());
        }
        opt(&mut args, "ControlPath", &option_path(&self.control_path));
        opt(&mut args, "ControlMaster", "yes".as_ref());
        opt(&mut args, "ControlPersist", "no".as_ref());
        args.push("-p".into());
        args.push(self.port.to_string().into());
        if let Some(user) = &self.user {
            args.push("-l".into());
            args.push(user.into());
        }
        if let Some(identity) = &self.identity {
            args.push("-i".into());
            args.push(identity.into());
            opt(&mut args, "IdentitiesOnly", "yes".as_ref());
        }
        for o in &self.options {
            args.push("-o".into());
            args.push(o.into());
        }
        opt(&mut args, "ServerAliveInterval", "10".as_ref());
        opt(&mut args, "ServerAliveCountMax", "3".as_ref());
        if is_loopback(&self.host) && self.proxy.is_none() {
            opt(&mut args, "KexAlgorithms", LOOPBACK_KEX.as_ref());
        }
        args.extend(["-T", "--"].map(OsString::from));
        args.push(self.host.clone().into());
        args.push(remote_command.into());
        args
    }
}

/// What every session castrad opens passes, ahead of ~/.ssh/config and the project's
/// options: the guest gets no agent, no X11 display and no port forwarded from this machine;
/// no host key is believed beyond castrad's pin (no `KnownHostsCommand`, no SSHFP records
/// from DNS); and no `SetEnv` of ~/.ssh/config reaches it (ssh keeps the first `SetEnv` it
/// reads, so this one, which names a variable of castrad's, replaces any other). `SendEnv`
/// cannot be turned off this way (ssh adds up every `SendEnv` it reads): [`SSH_ENV`] is.
pub const FORCED: [(&str, &str); 6] = [
    ("ForwardAgent", "no"),
    ("ForwardX11", "no"),
    ("ClearAllForwardings", "yes"),
    ("KnownHostsCommand", "none"),
    ("VerifyHostKeyDNS", "no"),
    ("SetEnv", "CASTRA_SESSION=1"),
];

/// Options castrad passes that an older OpenSSH does not know (`KnownHostsCommand` came with
/// 8.5, `SetEnv` with 7.8): such an ssh refuses the whole command line, so castrad leaves out
/// the ones it does not know ([`ssh_knows`]). Nothing is lost: that ssh refuses a config file
/// that sets them too.
pub const NEWER_OPTIONS: [&str; 2] = ["KnownHostsCommand", "SetEnv"];

/// Whether the ssh in PATH knows `option` (one of [`NEWER_OPTIONS`]): asked once per castrad
/// with `ssh -G`, which only reads options.
pub fn ssh_knows(option: &str) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<bool>> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        NEWER_OPTIONS
            .iter()
            .map(|name| {
                let value = FORCED
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or("none", |f| f.1);
                std::process::Command::new("ssh")
                    .args(["-G", "-F", "/dev/null", "-o"])
                    .arg(format!("{name}={value}"))
                    .arg("castra-probe")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .collect()
    });
    NEWER_OPTIONS
        .iter()
        .position(|n| *n == option)
        .is_none_or(|i| known[i])
}

/// `args` without the `-o Key=…` pairs whose key `known` says ssh does not know.
pub fn known_options(args: Vec<OsString>, known: impl Fn(&str) -> bool) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        if arg == "-o"
            && let Some(option) = args.peek()
            && let Some((key, _)) = option.to_string_lossy().split_once('=')
            && !known(key)
        {
            args.next();
            continue;
        }
        out.push(arg);
    }
    out
}

/// The variables of castrad's environment its ssh processes get (none other): what ssh, and a
/// `ProxyCommand` of the user's own ~/.ssh/config, need to run, and the locale Debian's
/// /etc/ssh/ssh_config sends. A `SendEnv` in ~/.ssh/config can then hand the guest nothing
/// but these: no token or secret castrad was started with. `LC_*` are matched by prefix.
pub const SSH_ENV: [&str; 11] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "SSH_AUTH_SOCK",
    "KRB5CCNAME",
    "LANG",
    "LC_*",
];

/// The part of castrad's environment (`vars`) its ssh processes get: [`SSH_ENV`]'s.
pub fn ssh_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            SSH_ENV.iter().any(|&name| match name.strip_suffix('*') {
                Some(prefix) => k.starts_with(prefix),
                None => k == name,
            })
        })
        .collect()
}

pub use castra_api::ssh::option_path;

/// Key exchange for guests on this machine (every QEMU VM; external VMs on 127.0.0.1 or ::1):
/// OpenSSH's defaults without the post-quantum hybrid, whose key generation costs the client
/// about 140 ms of CPU per connection on the machines we measured (curve25519: about 15 ms).
/// Its protection, against traffic recorded now and decrypted later, is moot for traffic
/// that never leaves the machine. Every algorithm here is known to OpenSSH since 7.4. A
/// `KexAlgorithms` in a VM's `ssh.options` comes first, so it wins.
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

/// A value in an OpenSSH config file: double-quoted when it has blanks or quotes.
fn config_word(v: &str) -> String {
    if v.is_empty() || v.contains([' ', '\t', '"', '#']) {
        format!("\"{}\"", v.replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

/// A path in a config block a person reads: as it is when ssh would read it so, else as
/// [`option_path`] writes it.
fn config_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.is_empty() || text.contains([' ', '\t', '"', '\'', '\\', '%', '#']) {
        option_path(path).to_string_lossy().into_owned()
    } else {
        text.into_owned()
    }
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

/// The longest remote command castrad sends as it is. Dropbear refuses a command longer than
/// 9000 bytes by closing the connection (its MAX_CMD_LEN; the length checked is exactly that
/// of the string ssh sends); past this, the agent's text (the biggest word) goes on stdin
/// instead, read slowly but only when it makes the difference.
pub const COMMAND_LIMIT: usize = 8800;

/// A shell script as castrad sends it: without comment lines, indentation and blank lines
/// (the text travels on a command line; see [`COMMAND_LIMIT`]). The scripts it is used on
/// keep no meaningful leading whitespace inside a quoted string.
pub fn compact(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    for (i, line) in script.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || (t.starts_with('#') && !(i == 0 && t.starts_with("#!"))) {
            continue;
        }
        out.push_str(t);
        out.push('\n');
    }
    out
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
    #[error(
        "{vm} did not take the host key castrad gave it: castrad put a host key in the guest's \
         cloud-init seed and pinned it in {}, but on this disk's first contact the guest at \
         {endpoint} presented another{}. An image without cloud-init ignores the seed: set \
         `[vms.cloud_init] enabled = false` for {vm} in castra.toml, then `castractl down \
         --discard {vm}` and `castractl up` (castrad then pins the key the guest presents \
         first). To check the guest's own key: `castractl console {vm}` shows its boot log \
         (a libvirt VM's: `virsh console`), where many images print their host key \
         fingerprints, or run `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the \
         guest's console",
        known_hosts.display(),
        offered.as_ref().map(|o| format!(" ({o})")).unwrap_or_default()
    )]
    SeedKeyIgnored {
        vm: String,
        endpoint: String,
        known_hosts: PathBuf,
        /// The key the guest presented, as ssh described it (`ED25519 key SHA256:…`).
        offered: Option<String>,
    },
    #[error("ssh to {endpoint} failed: {message}")]
    Failed { endpoint: String, message: String },
    #[error("cannot run ssh")]
    Spawn(#[source] std::io::Error),
}

impl SshError {
    /// Whether ssh gave up before the guest could judge us (no host key or authentication
    /// verdict): the SSH server may just not be up yet.
    pub fn unreached(&self) -> bool {
        match self {
            SshError::Failed { message, .. } => !message.contains("Permission denied"),
            SshError::HostKeyChanged { .. }
            | SshError::SeedKeyIgnored { .. }
            | SshError::Spawn(_) => false,
        }
    }
}

/// What ssh's stderr says about a connection that ended before authenticating. A host key
/// that is not the pinned one is a changed machine, unless the pin is a seed's that no
/// connection has confirmed: then the guest never took the key its seed gave it.
pub fn classify(target: &Target, stderr: &str) -> SshError {
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("Host key verification failed")
    {
        if keys::seed_pin_unconfirmed(&target.known_hosts) {
            return SshError::SeedKeyIgnored {
                vm: target.vm.clone(),
                endpoint: target.display(),
                known_hosts: target.known_hosts.clone(),
                offered: offered_key(stderr),
            };
        }
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

/// The key a server presented, from ssh's words about a host key it refused: `The fingerprint
/// for the ED25519 key sent by the remote host is\nSHA256:…` (a changed key) or `ED25519 key
/// fingerprint is SHA256:…`; as `ED25519 key SHA256:…`.
fn offered_key(stderr: &str) -> Option<String> {
    let words: Vec<&str> = stderr.split_whitespace().collect();
    let at = words.iter().position(|w| w.starts_with("SHA256:"))?;
    let fingerprint = words[at].trim_end_matches('.');
    let kind = words[..at]
        .windows(2)
        .rev()
        .find(|w| {
            w[1] == "key"
                && w[0]
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
        .map(|w| w[0]);
    Some(match kind {
        Some(kind) => format!("{kind} key {fingerprint}"),
        None => format!("key {fingerprint}"),
    })
}

/// The control socket of a connection, in the directory for them: short, private, next to
/// castrad's socket (Unix socket paths are limited to 108 bytes).
pub fn control_path(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("{run_id}.sock"))
}

#[cfg(test)]
mod tests;
