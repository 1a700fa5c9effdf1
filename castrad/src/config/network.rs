//! The project network: a private Ethernet segment the QEMU VMs of one project share, and each
//! VM's place on it. Pure: the project's config path and its VMs in, one [`Attachment`] per
//! QEMU VM out (docs/NETWORK.md has the why).
//!
//! - The segment is a UDP multicast group on the host's loopback interface (QEMU's
//!   `-netdev socket,mcast=`): group `239.255.G.H` and port `P` derived from the SHA-256 of the
//!   config file's absolute path, so two projects on one host get different segments.
//! - The subnet is `10.A.B.0/24`, `A` in 100..=227 and `B` from the same hash (never QEMU
//!   user-mode's 10.0.2.0/24, which the first NIC uses).
//! - Hosts are numbered in file order (after replica expansion) from `.10`: the first QEMU VM
//!   is `.10`, the next `.11`, ... External VMs are not on it. At most [`MAX_HOSTS`].
//! - Each VM's NIC on it has the MAC `52:54:00:A:B:host` (QEMU's prefix; unique on the
//!   segment because the address is).
//!
//! Invariant: the same config path and VM list give the same attachments, byte for byte.

use std::net::Ipv4Addr;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The first host number on the subnet.
pub const FIRST_HOST: u8 = 10;
/// How many VMs one project network holds (`.10` to `.249`).
pub const MAX_HOSTS: usize = 240;
/// The subnet's prefix length.
pub const PREFIX: u8 = 24;

/// One VM's place on the project network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The VM's address on the project subnet.
    pub address: Ipv4Addr,
    /// Prefix length of the subnet ([`PREFIX`]).
    pub prefix: u8,
    /// The MAC address of the VM's NIC on the network, `52:54:00:..:..:..`.
    pub mac: String,
    /// The multicast group and UDP port that carry the segment on the host's loopback.
    pub group: Ipv4Addr,
    pub port: u16,
    /// Every VM on the network (this one included) with its address, in file order: what
    /// the guests' /etc/hosts lists.
    pub hosts: Vec<(String, Ipv4Addr)>,
}

/// The project's segment: subnet octets and multicast group/port, from the config path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `10.A.B.0/24`.
    pub subnet: [u8; 2],
    pub group: Ipv4Addr,
    pub port: u16,
}

/// The segment of the project whose castra.toml is at `config_path`.
pub fn segment(config_path: &Path) -> Segment {
    let h = Sha256::digest(config_path.as_os_str().as_encoded_bytes());
    // A port above the well-known and registered ranges' busiest part, below the kernel's
    // ephemeral range (32768..): 20000..=32767.
    let port = 20000 + (u16::from_be_bytes([h[4], h[5]]) % 12768);
    Segment {
        subnet: [100 + h[0] % 128, h[1]],
        group: Ipv4Addr::new(239, 255, h[2], h[3]),
        port,
    }
}

/// Attachments for `vms` (name, whether it is a QEMU VM), in the same order: None for the
/// VMs not on the network. Err(count) when more QEMU VMs than [`MAX_HOSTS`].
pub fn assign(config_path: &Path, vms: &[(&str, bool)]) -> Result<Vec<Option<Attachment>>, usize> {
    let qemu = vms.iter().filter(|(_, q)| *q).count();
    if qemu > MAX_HOSTS {
        return Err(qemu);
    }
    let seg = segment(config_path);
    let [a, b] = seg.subnet;
    let mut hosts = Vec::with_capacity(qemu);
    let mut out = Vec::with_capacity(vms.len());
    let mut next = FIRST_HOST;
    for (name, is_qemu) in vms {
        if !is_qemu {
            out.push(None);
            continue;
        }
        let host = next;
        next += 1;
        hosts.push((name.to_string(), Ipv4Addr::new(10, a, b, host)));
        out.push(Some(host));
    }
    Ok(out
        .into_iter()
        .map(|host| {
            host.map(|host| Attachment {
                address: Ipv4Addr::new(10, a, b, host),
                prefix: PREFIX,
                mac: format!("52:54:00:{a:02x}:{b:02x}:{host:02x}"),
                group: seg.group,
                port: seg.port,
                hosts: hosts.clone(),
            })
        })
        .collect())
}

/// Whether the network is on: `[project] network` when set, else true when the project has
/// more than one QEMU VM and no more than the network holds (a bigger fleet has to ask for it,
/// and is then told it cannot).
pub fn enabled(setting: Option<bool>, qemu_vms: usize) -> bool {
    setting.unwrap_or(qemu_vms > 1 && qemu_vms <= MAX_HOSTS)
}

/// The lines castrad puts in a guest's /etc/hosts for the network: `address name`, one a VM.
pub fn hosts_lines(attachment: &Attachment) -> String {
    attachment
        .hosts
        .iter()
        .map(|(name, address)| format!("{address} {name}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_vms_are_numbered_in_file_order_and_external_ones_left_out() {
        let path = Path::new("/home/u/app/castra.toml");
        let got = assign(path, &[("web-0", true), ("ext", false), ("db", true)]).unwrap();
        let seg = segment(path);
        let [a, b] = seg.subnet;
        let web = got[0].as_ref().unwrap();
        let db = got[2].as_ref().unwrap();
        assert!(got[1].is_none());
        assert_eq!(web.address, Ipv4Addr::new(10, a, b, 10));
        assert_eq!(db.address, Ipv4Addr::new(10, a, b, 11));
        assert_eq!(web.mac, format!("52:54:00:{a:02x}:{b:02x}:0a"));
        assert_eq!(db.mac, format!("52:54:00:{a:02x}:{b:02x}:0b"));
        assert_eq!((web.group, web.port), (db.group, db.port));
        assert_eq!(web.hosts, db.hosts);
        assert_eq!(
            hosts_lines(web),
            format!("10.{a}.{b}.10 web-0\n10.{a}.{b}.11 db\n")
        );
        assert_eq!(web.prefix, 24);
    }

    #[test]
    fn the_segment_is_deterministic_and_differs_between_projects() {
        let one = segment(Path::new("/home/u/one/castra.toml"));
        assert_eq!(one, segment(Path::new("/home/u/one/castra.toml")));
        let two = segment(Path::new("/home/u/two/castra.toml"));
        assert_ne!(one, two);
        for s in [one, two] {
            assert!((100..=227).contains(&s.subnet[0]), "{s:?}");
            assert!((20000..=32767).contains(&s.port), "{s:?}");
            assert!(s.group.is_multicast());
            assert_eq!(s.group.octets()[..2], [239, 255]);
        }
    }

    /// Over many paths: never QEMU user-mode's subnet, always an administratively scoped group.
    #[test]
    fn no_segment_uses_the_user_mode_subnet() {
        for i in 0..5000 {
            let s = segment(Path::new(&format!("/p/{i}/castra.toml")));
            assert_ne!(s.subnet, [0, 2]);
            assert!(s.subnet[0] >= 100 && s.subnet[0] <= 227);
            assert!(s.port >= 20000 && s.port < 32768);
        }
    }

    #[test]
    fn at_most_max_hosts_and_the_default_needs_two_qemu_vms() {
        let names: Vec<String> = (0..=MAX_HOSTS).map(|i| format!("v{i}")).collect();
        let vms: Vec<(&str, bool)> = names.iter().map(|n| (n.as_str(), true)).collect();
        assert_eq!(assign(Path::new("/c"), &vms), Err(MAX_HOSTS + 1));
        let fits = assign(Path::new("/c"), &vms[..MAX_HOSTS]).unwrap();
        assert_eq!(
            fits.last().unwrap().as_ref().unwrap().address.octets()[3],
            249
        );
        assert!(!enabled(None, 1));
        assert!(enabled(None, 2));
        assert!(enabled(None, MAX_HOSTS));
        assert!(!enabled(None, MAX_HOSTS + 1));
        assert!(!enabled(Some(false), 3));
        assert!(enabled(Some(true), 1));
    }
}
