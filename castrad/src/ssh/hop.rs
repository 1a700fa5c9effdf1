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

/// How long the shared master outlives its last use.
const PERSIST_SECS: u32 = 60;

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

    /// The options every connection to the hypervisor starts with (ahead of ~/.ssh/config).
    pub fn options(&self) -> Vec<String> {
        let mut o = vec![
            "BatchMode=yes".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
            "UpdateHostKeys=no".to_owned(),
        ];
        if let Some(k) = &self.known_hosts {
            o.push(format!(
                "UserKnownHostsFile={}",
                super::option_path(k).to_string_lossy()
            ));
            o.push("GlobalKnownHostsFile=/dev/null".to_owned());
            // castrad's pin and nothing else (the user's own trust applies without one).
            if super::ssh_knows("KnownHostsCommand") {
                o.push("KnownHostsCommand=none".to_owned());
            }
            o.push("VerifyHostKeyDNS=no".to_owned());
        }
        o.extend([
            "ControlMaster=auto".to_owned(),
            format!(
                "ControlPath={}",
                super::option_path(&self.control_path).to_string_lossy()
            ),
            format!("ControlPersist={PERSIST_SECS}"),
            "ConnectTimeout=10".to_owned(),
            "ServerAliveInterval=10".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
            "ForwardAgent=no".to_owned(),
            "ForwardX11=no".to_owned(),
            "LogLevel=ERROR".to_owned(),
        ]);
        o.into_iter().flat_map(|v| ["-o".to_owned(), v]).collect()
    }

    /// Who logs in, on which port, with which key (libvirt passes these itself).
    pub fn login_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(port) = self.port {
            a.extend(["-p".to_owned(), port.to_string()]);
        }
        if let Some(user) = &self.user {
            a.extend(["-l".to_owned(), user.clone()]);
        }
        if let Some(key) = &self.keyfile {
            a.extend([
                "-i".to_owned(),
                key.to_string_lossy().into_owned(),
                "-o".to_owned(),
                "IdentitiesOnly=yes".to_owned(),
            ]);
        }
        a
    }

    /// The `ProxyCommand` that reaches a guest port on the hypervisor's loopback: a shell
    /// command line (ssh runs it with `sh -c`), each word quoted, `%` doubled where ssh would
    /// expand it.
    pub fn proxy_command(&self) -> String {
        let mut words: Vec<String> = vec!["ssh".into()];
        words.extend(self.options());
        words.extend(self.login_args());
        let mut line: Vec<String> = words
            .iter()
            .map(|w| super::quote(&w.replace('%', "%%")))
            .collect();
        line.extend(["-W".into(), "%h:%p".into(), "--".into()]);
        line.push(super::quote(&self.host.replace('%', "%%")));
        line.join(" ")
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
