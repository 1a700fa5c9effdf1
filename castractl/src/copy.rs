//! `castractl cp SRC VM:DST` and `castractl cp VM:SRC DST`: files between this host and a VM,
//! over the VM's pinned SSH connection.
//!
//! castrad says how to reach the VM (`castra.sshConfig`: its address, user, castrad's key for
//! it, the file its host key is pinned in) and castractl runs OpenSSH's `sftp` with exactly
//! those settings, as `castractl ssh` runs `ssh`. The copy runs here rather than in castrad
//! because castractl is on castrad's machine, as castrad's user (castrad only accepts its own
//! uid on its socket), so it reaches the same key and pin files; and so the bytes go straight
//! between the disk and the VM, with the permissions of the user who typed the command,
//! instead of through castrad's JSON-RPC.
//!
//! No path is ever put on a shell command line. `sftp -b -` reads its commands from stdin and
//! no shell sees them; each path is a double-quoted sftp word ([`word`]) in which the quote
//! and the backslash are escaped, and in which sftp takes its wildcards (`*`, `?`, `[`)
//! literally, so a name means itself (no wildcards: `cp 'vm:*.log' .` copies a file named
//! `*.log`); a relative path starting
//! with `-` gets a `./` so sftp cannot take it for a flag. A newline cannot be written in an
//! sftp command, so a path with one is refused. Relative guest paths are relative to the
//! login's home directory (`vm:` alone is the home directory); `~` is not expanded.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use castra_api as api;

use crate::Exit;
use crate::client::{Daemon, Failure};
use crate::term;
use crate::trust::Host;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Local(PathBuf),
    /// `VM:PATH` (PATH may be empty: the login's home directory).
    Remote {
        vm: String,
        path: String,
    },
}

impl Side {
    /// `VM:PATH` when there is a `:` with no `/` before it (like scp: `./a:b` is local).
    pub fn parse(arg: &str) -> Side {
        match arg.split_once(':') {
            Some((vm, path)) if !vm.is_empty() && !vm.contains('/') => Side::Remote {
                vm: vm.to_owned(),
                path: path.to_owned(),
            },
            _ => Side::Local(PathBuf::from(arg)),
        }
    }
}

/// A copy to do: to the VM (`put`) or from it (`get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub vm: String,
    pub upload: bool,
    pub local: PathBuf,
    pub remote: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, "usage", message)
}

impl Plan {
    pub fn new(src: &str, dst: &str) -> Result<Plan, Failure> {
        match (Side::parse(src), Side::parse(dst)) {
            (Side::Local(local), Side::Remote { vm, path }) => Ok(Plan {
                vm,
                upload: true,
                local,
                remote: if path.is_empty() { ".".into() } else { path },
            }),
            (Side::Remote { vm, path }, Side::Local(local)) => {
                if path.is_empty() {
                    return Err(usage(format!("{src} names no file: write {vm}:PATH")));
                }
                Ok(Plan {
                    vm,
                    upload: false,
                    local,
                    remote: path,
                })
            }
            (Side::Local(_), Side::Local(_)) => Err(usage(
                "neither SRC nor DST is in a VM: write one of them as VM:PATH",
            )
            .detail("a local path with a colon: write it as ./NAME:WITH:COLONS")),
            (Side::Remote { .. }, Side::Remote { .. }) => Err(usage(
                "both SRC and DST are in VMs: one of them must be a local path",
            )),
        }
    }

    /// The sftp batch: one command, its paths quoted; errors on a path sftp cannot be told.
    pub fn batch(&self, recursive: bool) -> Result<String, Failure> {
        let local = self.local.to_str().ok_or_else(|| {
            usage(format!(
                "{}: castractl cp takes UTF-8 paths only",
                self.local.display()
            ))
        })?;
        let (verb, from, to) = if self.upload {
            ("put", local, self.remote.as_str())
        } else {
            ("get", self.remote.as_str(), local)
        };
        let flags = if recursive { " -r" } else { "" };
        // `@`: sftp does not echo the command.
        let line = format!("@{verb}{flags} {} {}\n", word(from)?, word(to)?);
        if line.len() > LINE_MAX {
            return Err(usage(format!(
                "the paths are too long for sftp: at most {} bytes together",
                LINE_MAX - 16
            )));
        }
        Ok(line)
    }
}

/// The longest command line sftp reads from its batch (its buffer is 2048 bytes).
const LINE_MAX: usize = 2047;

/// `path` as one double-quoted sftp word that means exactly `path`.
pub fn word(path: &str) -> Result<String, Failure> {
    if path.contains(['\n', '\0']) {
        return Err(usage(format!(
            "{path:?}: sftp cannot be given a path with a newline"
        )));
    }
    let mut out = String::with_capacity(path.len() + 4);
    out.push('"');
    if path.starts_with('-') {
        out.push_str("./");
    }
    for c in path.chars() {
        // Inside quotes sftp itself escapes its wildcards; the quote and the backslash are
        // ours to escape.
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// argv (after `ssh`) of `castractl ssh`: a shell on `host`, or `command`.
pub fn ssh_args(host: &Host, command: &[String]) -> Vec<OsString> {
    let mut args = pinned_options(host);
    args.push("--".into());
    args.push(host.get().host_name.clone().into());
    args.extend(command.iter().map(OsString::from));
    args
}

/// argv (after `sftp`) of `castractl cp`: a batch read from stdin.
fn sftp_args(host: &Host) -> Vec<OsString> {
    let mut destination = host.get().host_name.clone();
    if destination.contains(':') {
        destination = format!("[{destination}]");
    }
    let mut args: Vec<OsString> = ["-q", "-b", "-"].map(OsString::from).into();
    args.extend(pinned_options(host));
    args.push("--".into());
    args.push(destination.into());
    args
}

/// The options that make OpenSSH (ssh, sftp) reach `host` exactly as castrad does: its pinned
/// host key and nothing else, castrad's identity for it, its user and port, its route (through
/// a libvirt VM's hypervisor), then the project's options. They come first: OpenSSH keeps the
/// first value of each, so the user's ~/.ssh/config cannot undo the pinning or the route,
/// while the rest of it still applies. Only from checked fields ([`Host`]); the route is
/// built here from the hop's fields, never castrad's `proxy_command` text.
pub fn pinned_options(host: &Host) -> Vec<OsString> {
    let host = host.get();
    let mut args = Vec::new();
    let mut opt = |k: &str, v: &std::ffi::OsStr| {
        let mut o = OsString::from(format!("{k}="));
        o.push(v);
        args.push("-o".into());
        args.push(o);
    };
    opt("HostKeyAlias", host.host_key_alias.as_ref());
    // Paths as ssh reads an option's value: one quoted word, `%` doubled.
    opt(
        "UserKnownHostsFile",
        &api::ssh::option_path(&host.known_hosts),
    );
    opt("GlobalKnownHostsFile", "/dev/null".as_ref());
    opt("StrictHostKeyChecking", "yes".as_ref());
    opt("UpdateHostKeys", "no".as_ref());
    if let Some(identity) = &host.identity_file {
        opt("IdentityFile", &api::ssh::option_path(identity));
        opt("IdentitiesOnly", "yes".as_ref());
    }
    if let Some(user) = &host.user {
        opt("User", user.as_ref());
    }
    opt("Port", host.port.to_string().as_ref());
    if let Some(hop) = &host.hop {
        // One argv word, no shell of ours: ssh takes the rest of it as the command line (and
        // runs that with `sh -c`, as it would from a config file). Built by castractl from
        // the hop's checked fields, each word quoted.
        opt("ProxyCommand", api::ssh::proxy_command(hop).as_ref());
    }
    for option in &host.options {
        args.push("-o".into());
        args.push(option.into());
    }
    args
}

/// `castractl cp`: checks the local side, asks castrad how to reach the VM, runs sftp.
pub async fn run(
    daemon: &Daemon,
    config: PathBuf,
    plan: Plan,
    recursive: bool,
    json: bool,
) -> Result<Exit, Failure> {
    if plan.upload {
        check_source(&plan.local, recursive)?;
    }
    let batch = plan.batch(recursive)?;
    let params = api::SshConfigParams {
        config,
        vms: vec![plan.vm.clone()],
    };
    let result: api::SshConfigResult = daemon.call(api::method::SSH_CONFIG, &params).await?;
    let host = result
        .hosts
        .into_iter()
        .next()
        .ok_or_else(|| Failure::new(Exit::Failed, "internal", "castrad described no VM"))?;
    sftp(&Host::check(host)?, &batch, &plan, recursive).await?;
    if json {
        term::json_pretty(&serde_json::json!({
            "vm": plan.vm,
            "direction": if plan.upload { "to-vm" } else { "from-vm" },
            "local": plan.local,
            "remote": plan.remote,
            "recursive": recursive,
        }));
    }
    Ok(Exit::Ok)
}

fn check_source(local: &Path, recursive: bool) -> Result<(), Failure> {
    let meta = std::fs::metadata(local).map_err(|e| {
        Failure::new(
            Exit::Usage,
            "usage",
            format!("cannot copy {}: {e}", local.display()),
        )
    })?;
    if meta.is_dir() && !recursive {
        return Err(usage(format!(
            "{} is a directory: pass -r to copy it and what it holds",
            local.display()
        )));
    }
    Ok(())
}

async fn sftp(host: &Host, batch: &str, plan: &Plan, recursive: bool) -> Result<(), Failure> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sftp")
        .args(sftp_args(host))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Failure::new(Exit::Failed, "internal", format!("cannot run sftp: {e}"))
                .detail("sftp comes with OpenSSH's client (Debian: apt-get install openssh-client)")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // sftp reads the whole batch; a failure to write shows in its exit status.
        let _ = stdin.write_all(batch.as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Failure::new(Exit::Failed, "internal", format!("sftp: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let (from, to) = if plan.upload {
        (
            plan.local.display().to_string(),
            format!("{}:{}", plan.vm, plan.remote),
        )
    } else {
        (
            format!("{}:{}", plan.vm, plan.remote),
            plan.local.display().to_string(),
        )
    };
    let mut f = Failure::new(
        Exit::Failed,
        "operation",
        format!("cannot copy {from} to {to}"),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    // What sftp said, bounded (the guest's side of it is untrusted; term escapes it).
    for line in said.lines().filter(|l| !l.trim().is_empty()).take(20) {
        f = f.detail(line.chars().take(500).collect::<String>());
    }
    if !recursive && !plan.upload && said.contains("not a regular file") {
        f = f.detail("it is a directory: pass -r to copy it and what it holds");
    }
    Err(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_told_apart_like_scp() {
        assert_eq!(
            Side::parse("web-0:/tmp/x"),
            Side::Remote {
                vm: "web-0".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(Side::parse("./a:b"), Side::Local("./a:b".into()));
        assert_eq!(Side::parse("/abs/a:b"), Side::Local("/abs/a:b".into()));
        assert_eq!(Side::parse(":x"), Side::Local(":x".into()));
        assert_eq!(Side::parse("plain"), Side::Local("plain".into()));
        let home = Plan::new("f", "db:").unwrap();
        assert_eq!((home.upload, home.remote.as_str()), (true, "."));
        assert_eq!(Plan::new("db:", "f").unwrap_err().exit, Exit::Usage);
        assert_eq!(Plan::new("a", "b").unwrap_err().exit, Exit::Usage);
        assert_eq!(Plan::new("a:x", "b:y").unwrap_err().exit, Exit::Usage);
    }

    #[test]
    fn words_mean_themselves_to_sftp() {
        assert_eq!(word("a b").unwrap(), r#""a b""#);
        assert_eq!(
            word(r#"it's "q" \ $(touch x) *?[]#"#).unwrap(),
            r#""it's \"q\" \\ $(touch x) *?[]#""#
        );
        assert_eq!(word("-rf").unwrap(), r#""./-rf""#);
        assert_eq!(word("/-x").unwrap(), r#""/-x""#);
        assert!(word("a\nb").is_err());
        let plan = Plan::new("-x y", "vm:dir/").unwrap();
        assert_eq!(plan.batch(true).unwrap(), "@put -r \"./-x y\" \"dir/\"\n");
        let long = "x".repeat(1100);
        assert!(
            Plan::new(&long, &format!("vm:{long}"))
                .unwrap()
                .batch(false)
                .is_err()
        );
    }

    /// A VM's settings, through a hypervisor (`hop`) or not; `proxy_command` is what a
    /// hostile castrad might send, which castractl must never run.
    fn host(hop: Option<api::SshHop>) -> Host {
        Host::check(api::SshHost {
            vm: "far".into(),
            alias: "castra-p-far".into(),
            host_name: "127.0.0.1".into(),
            port: 40022,
            user: Some("dev".into()),
            identity_file: Some("/k/id".into()),
            known_hosts: "/s/known_hosts".into(),
            host_key_alias: "castra-far".into(),
            options: vec!["Compression=yes".into()],
            proxy_command: Some("touch /tmp/castra-pwned".into()),
            hop,
            config: String::new(),
        })
        .unwrap()
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn ssh_and_sftp_take_the_hypervisor_route_when_there_is_one() {
        let direct = strings(ssh_args(&host(None), &["true".into()]));
        assert!(
            !direct.iter().any(|a| a.contains("ProxyCommand")),
            "{direct:?}"
        );
        assert_eq!(direct[direct.len() - 3..], ["--", "127.0.0.1", "true"]);
        assert!(direct.windows(2).any(|w| w == ["-o", "Port=40022"]));

        // castractl's own command from the hop's fields: shell words, ssh's own tokens, a
        // doubled `%`, a quote; never the proxy_command castrad sent.
        let hop = api::SshHop {
            host: "hv".into(),
            port: None,
            user: None,
            identity_file: None,
            known_hosts: Some("/p/it's 100%".into()),
            control_path: "/run/c/hv-1".into(),
        };
        let proxy = api::ssh::proxy_command(&hop);
        assert!(
            proxy.contains(r#"'UserKnownHostsFile="/p/it'\''s 100%%%%"'"#),
            "{proxy}"
        );
        assert!(proxy.ends_with("-W %h:%p -- 'hv'"), "{proxy}");
        let routed = strings(ssh_args(&host(Some(hop.clone())), &["true".into()]));
        assert!(!routed.iter().any(|a| a.contains("pwned")), "{routed:?}");
        let word = format!("ProxyCommand={proxy}");
        let at = routed
            .iter()
            .position(|a| *a == word)
            .expect("one argv word");
        assert_eq!(routed[at - 1], "-o");
        // Ahead of the project's options, so that none can replace the route.
        let project = routed.iter().position(|a| a == "Compression=yes").unwrap();
        assert!(at < project, "{routed:?}");
        assert_eq!(routed[routed.len() - 3..], ["--", "127.0.0.1", "true"]);
        // The rest is what a direct connection passes.
        let mut without = routed.clone();
        without.drain(at - 1..=at);
        assert_eq!(without, direct);

        let sftp = strings(sftp_args(&host(Some(hop))));
        assert!(sftp.contains(&word), "{sftp:?}");
        assert_eq!(sftp[..3], ["-q", "-b", "-"]);
        assert_eq!(sftp[sftp.len() - 2..], ["--", "127.0.0.1"]);
        assert!(
            !strings(sftp_args(&host(None)))
                .iter()
                .any(|a| a.contains("ProxyCommand") || a.contains("pwned"))
        );
    }
}
