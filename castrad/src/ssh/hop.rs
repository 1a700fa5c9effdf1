//! The SSH hop to a libvirt hypervisor (pure). castrad reaches a libvirt VM's guest through
//! its hypervisor: the guest's forwarded port listens on the hypervisor's 127.0.0.1, so the
//! guest connection goes through `ProxyCommand ssh … -W %h:%p hypervisor` (a plain `-J`
//! would not pass our options). The hop's options come ahead of the user's `~/.ssh/config`
//! (which is honoured for everything else about the host): strict host key checking, batch
//! mode and one ControlMaster per hypervisor, which `virsh`, castrad's shell commands and
//! every guest connection share.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::libvirt::Hypervisor;

/// One hypervisor's SSH connection as castrad opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// `[user@]host[:port]`, for messages.
    pub display: String,
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub keyfile: Option<PathBuf>,
    /// The file pinning the hypervisor's host key; None: ssh's own (~/.ssh/known_hosts).
    pub known_hosts: Option<PathBuf>,
    /// The ControlMaster's socket (one per hypervisor, in castrad's control directory).
    pub control_path: PathBuf,
}

impl Hop {
    pub fn new(hv: &Hypervisor, known_hosts: Option<&Path>, control_dir: &Path) -> Hop {
        let mut h = Sha256::new();
        for part in [
            hv.display(),
            hv.keyfile
                .as_deref()
                .map(|k| k.to_string_lossy().into_owned())
                .unwrap_or_default(),
            known_hosts
                .map(|k| k.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let tag = crate::ids::hex(&h.finalize()[..6]);
        Hop {
            display: hv.display(),
            host: hv.host.clone(),
            user: hv.user.clone(),
            port: hv.port,
            keyfile: hv.keyfile.clone(),
            known_hosts: known_hosts.map(Path::to_owned),
            control_path: control_dir.join(format!("hv-{tag}")),
        }
    }

    /// The hop as castra-api's fields: what `castra.sshConfig` hands castractl, and what
    /// the options and the `ProxyCommand` below are built from (one builder for both).
    pub fn wire(&self) -> castra_api::SshHop {
        castra_api::SshHop {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            identity_file: self.keyfile.clone(),
            known_hosts: self.known_hosts.clone(),
            control_path: self.control_path.clone(),
        }
    }

    /// The options every connection to the hypervisor starts with (ahead of ~/.ssh/config).
    pub fn options(&self) -> Vec<String> {
        let mut o = castra_api::ssh::hop_options(&self.wire());
        if self.known_hosts.is_some() {
            // castrad's pin and nothing else (the user's own trust applies without one).
            if super::ssh_knows("KnownHostsCommand") {
                o.extend(["-o".to_owned(), "KnownHostsCommand=none".to_owned()]);
            }
            o.extend(["-o".to_owned(), "VerifyHostKeyDNS=no".to_owned()]);
        }
        o
    }

    /// Who logs in, on which port, with which key (libvirt passes these itself).
    pub fn login_args(&self) -> Vec<String> {
        castra_api::ssh::hop_login_args(&self.wire())
    }

    /// The `ProxyCommand` that reaches a guest port on the hypervisor's loopback: a shell
    /// command line (ssh runs it with `sh -c`), each word quoted, `%` doubled where ssh would
    /// expand it.
    pub fn proxy_command(&self) -> String {
        castra_api::ssh::proxy_command(&self.wire())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_pins_strictly_and_shares_one_master() {
        let hv = crate::config::libvirt::parse_uri("qemu+ssh://me@hv:2222/session?keyfile=/k/id")
            .unwrap()
            .unwrap();
        let hop = Hop::new(
            &hv,
            Some(Path::new("/pins/known hosts")),
            Path::new("/run/c"),
        );
        let opts = hop.options().join(" ");
        assert!(opts.contains("StrictHostKeyChecking=yes"));
        assert!(opts.contains("UserKnownHostsFile=\"/pins/known hosts\""));
        assert!(opts.contains("KnownHostsCommand=none"));
        assert!(opts.contains("ControlMaster=auto"));
        assert!(!opts.contains("no_verify") && !opts.contains("StrictHostKeyChecking=no"));
        assert!(hop.control_path.starts_with("/run/c"));
        let proxy = hop.proxy_command();
        assert!(proxy.starts_with("'ssh' '-o' 'BatchMode=yes'"), "{proxy}");
        assert!(proxy.contains("'UserKnownHostsFile=\"/pins/known hosts\"'"));
        assert!(
            proxy.ends_with(
                "'-p' '2222' '-l' 'me' '-i' '/k/id' '-o' 'IdentitiesOnly=yes' -W %h:%p -- 'hv'"
            ),
            "{proxy}"
        );
        let other = Hop::new(&hv, None, Path::new("/run/c"));
        assert_ne!(
            other.control_path, hop.control_path,
            "another pin, another master"
        );
    }
}
