//! What castractl checks before it believes castrad: that the socket is castrad's user's own,
//! that the process answering on it runs as that user, and that what castrad says about
//! reaching a VM is made of fields castractl can check before they go on ssh's command line.
//!
//! castractl talks only to its own user's castrad. Before connecting, the socket and its
//! directory (symlinks resolved) must be owned by the user or root and writable by neither
//! group nor others: in a directory another user can write, that user could have put a socket
//! of their own in castrad's place. After connecting, the listener's uid (SO_PEERCRED, the
//! credentials of whoever called `listen`) must be the user's own, which holds even where
//! the file checks could be raced. castrad applies the same rule to its clients.
//!
//! `castractl ssh` and `cp` run OpenSSH with what `castra.sshConfig` answers. castractl never
//! runs a command line it received (castrad's `proxy_command` is for other clients): it
//! builds the route through a hypervisor itself, from `hop`'s fields
//! (`castra_api::ssh::proxy_command`), and every field it uses is checked here first, the
//! project's options against the allow-list castrad applies to project files
//! (`castra_api::ssh`). A [`Host`] exists only once its fields passed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use castra_api as api;

use crate::Exit;
use crate::client::Failure;

/// `uid`, with its user name when this machine knows one: `uid 1001 (alice)`.
fn who(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn refused(socket: &Path, message: String) -> Failure {
    Failure::new(
        Exit::Unreachable,
        "untrusted",
        format!(
            "refusing to talk to castrad at {}: {message}",
            socket.display()
        ),
    )
    .detail(
        "another user may be listening in castrad's place; castractl talks only to a castrad \
         of your own, on a socket in a directory only you (or root) can write",
    )
}

/// Whether a file owned by `owner` with `mode` may be trusted by uid `me` (pure): owned by
/// `me` or root, writable by neither group nor others.
pub fn trusted(owner: u32, mode: u32, me: u32) -> bool {
    (owner == me || owner == 0) && mode & 0o022 == 0
}

fn describe(what: &str, path: &Path, meta: &std::fs::Metadata, me: u32) -> String {
    format!(
        "{what} {} is owned by {} with mode {:04o}; expected one owned by you (uid {me}) or \
         root, not writable by group or others",
        path.display(),
        who(meta.uid()),
        meta.mode() & 0o7777,
    )
}

/// Checks `socket` and its directory before connecting; the path to connect to (symlinks
/// resolved, so the checked file is the one connected to). A socket that is not there is left
/// to `connect` to report.
pub fn check_socket(socket: &Path) -> Result<PathBuf, Failure> {
    let real = match std::fs::canonicalize(socket) {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(socket.to_owned()),
        Err(e) => return Err(refused(socket, format!("cannot resolve it: {e}"))),
    };
    let me = me();
    let dir = real.parent().unwrap_or(Path::new("/"));
    let dir_meta =
        std::fs::metadata(dir).map_err(|e| refused(socket, format!("{}: {e}", dir.display())))?;
    if !trusted(dir_meta.uid(), dir_meta.mode(), me) {
        return Err(refused(
            socket,
            describe("its directory", dir, &dir_meta, me),
        ));
    }
    let meta = std::fs::symlink_metadata(&real)
        .map_err(|e| refused(socket, format!("{}: {e}", real.display())))?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(refused(
            socket,
            format!("{} is not a socket", real.display()),
        ));
    }
    if !trusted(meta.uid(), meta.mode(), me) {
        return Err(refused(socket, describe("the socket", &real, &meta, me)));
    }
    Ok(real)
}

/// Checks, on a connected socket, that the process listening runs as this user.
pub fn check_peer(socket: &Path, stream: &tokio::net::UnixStream) -> Result<(), Failure> {
    let me = me();
    let cred = stream
        .peer_cred()
        .map_err(|e| refused(socket, format!("cannot read its credentials: {e}")))?;
    if cred.uid() != me {
        return Err(refused(
            socket,
            format!(
                "the process listening there runs as {}, not as you (uid {me})",
                who(cred.uid()),
            ),
        ));
    }
    Ok(())
}

/// An `SshHost` whose every field castractl uses has been checked ([`Host::check`]).
#[derive(Debug, Clone)]
pub struct Host(api::SshHost);

impl Host {
    /// Checks what castrad said about reaching a VM: host and user names are ssh words,
    /// paths absolute and free of control characters, the port not 0, each option well formed
    /// and on the allow-list. The error names the field, its value and what was expected.
    pub fn check(host: api::SshHost) -> Result<Host, Failure> {
        let bad = |field: &str, value: &str, expected: &str| {
            Failure::new(
                Exit::Failed,
                "untrusted",
                format!(
                    "castrad's settings for VM {:?}: {field} {value:?} is not {expected}",
                    host.vm
                ),
            )
            .detail("castractl runs ssh only with settings it has checked; nothing was run")
        };
        const WORD: &str = "a name without whitespace or control characters, not starting with '-'";
        const PATH: &str = "an absolute path without control characters";
        let word = |field: &str, v: &str| {
            if api::ssh::is_word(v) {
                Ok(())
            } else {
                Err(bad(field, v, WORD))
            }
        };
        let path = |field: &str, p: &Path| {
            let s = p.to_string_lossy();
            if p.is_absolute() && p.to_str().is_some() && !s.chars().any(char::is_control) {
                Ok(())
            } else {
                Err(bad(field, &s, PATH))
            }
        };
        let port = |field: &str, p: u16| {
            if p == 0 {
                Err(bad(field, "0", "a port from 1 to 65535"))
            } else {
                Ok(())
            }
        };
        word("host_name", &host.host_name)?;
        word("host_key_alias", &host.host_key_alias)?;
        port("port", host.port)?;
        if let Some(user) = &host.user {
            word("user", user)?;
        }
        if let Some(identity) = &host.identity_file {
            path("identity_file", identity)?;
        }
        path("known_hosts", &host.known_hosts)?;
        for option in &host.options {
            let name = option.split_once('=').map_or(option.as_str(), |(n, _)| n);
            if !api::ssh::is_option(option) {
                return Err(bad(
                    "option",
                    option,
                    "Key=Value with an alphanumeric key and a value without control characters",
                ));
            }
            if api::ssh::allowed(name).is_none() {
                return Err(bad(
                    "option",
                    option,
                    &format!(
                        "one a project file may set ({}: {})",
                        api::ssh::why_not(name),
                        api::ssh::ALLOWED.join(", ")
                    ),
                ));
            }
        }
        if let Some(hop) = &host.hop {
            word("hop.host", &hop.host)?;
            if let Some(p) = hop.port {
                port("hop.port", p)?;
            }
            if let Some(user) = &hop.user {
                word("hop.user", user)?;
            }
            if let Some(identity) = &hop.identity_file {
                path("hop.identity_file", identity)?;
            }
            if let Some(known_hosts) = &hop.known_hosts {
                path("hop.known_hosts", known_hosts)?;
            }
            path("hop.control_path", &hop.control_path)?;
        }
        Ok(Host(host))
    }

    pub fn get(&self) -> &api::SshHost {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_ours_or_roots_that_nobody_else_writes_are_trusted() {
        assert!(trusted(1000, 0o140600, 1000));
        assert!(trusted(1000, 0o40755, 1000));
        assert!(trusted(0, 0o40755, 1000));
        assert!(!trusted(1001, 0o140600, 1000));
        assert!(!trusted(1000, 0o140620, 1000));
        assert!(
            !trusted(0, 0o41777, 1000),
            "sticky or not, others can write"
        );
        assert!(!trusted(1000, 0o40707, 1000));
        assert!(trusted(0, 0o40700, 0));
    }

    fn host() -> api::SshHost {
        api::SshHost {
            vm: "far".into(),
            alias: "castra-p-far".into(),
            host_name: "127.0.0.1".into(),
            port: 40022,
            user: Some("dev".into()),
            identity_file: Some("/k/id".into()),
            known_hosts: "/s/known hosts".into(),
            host_key_alias: "castra-far".into(),
            options: vec!["Compression=yes".into()],
            proxy_command: Some("touch /tmp/pwned".into()),
            hop: Some(api::SshHop {
                host: "hv".into(),
                port: Some(22),
                user: Some("me".into()),
                identity_file: None,
                known_hosts: Some("/s/hv".into()),
                control_path: "/run/c/hv-1".into(),
            }),
            config: String::new(),
        }
    }

    #[test]
    fn castrads_settings_are_checked_field_by_field() {
        assert!(Host::check(host()).is_ok());
        let refused = |edit: fn(&mut api::SshHost)| {
            let mut h = host();
            edit(&mut h);
            let f = Host::check(h).unwrap_err();
            assert_eq!((f.exit, f.kind.as_str()), (Exit::Failed, "untrusted"));
            f.message
        };
        let m = refused(|h| h.options.push("ProxyCommand=touch /tmp/x".into()));
        assert!(
            m.contains("option \"ProxyCommand=touch /tmp/x\" is not one a project file may set (it can run a program on this machine"),
            "{m}"
        );
        assert!(refused(|h| h.options.push("LocalCommand=x".into())).contains("LocalCommand"));
        assert!(
            refused(|h| h.options.push("Compression=yes\nProxyCommand=x".into()))
                .contains("Key=Value")
        );
        let m = refused(|h| h.host_name = "-oProxyCommand=x".into());
        assert!(
            m.contains("host_name \"-oProxyCommand=x\" is not a name"),
            "{m}"
        );
        assert!(refused(|h| h.user = Some("a b".into())).contains("user \"a b\""));
        assert!(refused(|h| h.port = 0).contains("port \"0\""));
        assert!(refused(|h| h.known_hosts = "rel/kh".into()).contains("known_hosts"));
        assert!(refused(|h| h.identity_file = Some("/k/a\nb".into())).contains("identity_file"));
        let m = refused(|h| h.hop.as_mut().unwrap().host = "-x".into());
        assert!(m.contains("hop.host \"-x\""), "{m}");
        assert!(
            refused(|h| h.hop.as_mut().unwrap().control_path = "c".into())
                .contains("hop.control_path")
        );
    }
}
