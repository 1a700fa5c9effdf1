//! The NoCloud seed a QEMU VM's cloud-init reads on first boot: a small FAT volume labelled
//! `cidata` with `meta-data` and `user-data`, attached read-only as a second disk.
//!
//! - `meta-data`: `instance-id` from the disk identity (a new disk, a new id: cloud-init runs
//!   again; the same disk keeps its id) and `local-hostname` = the VM's name.
//! - `user-data`: the login user (created with passwordless sudo unless it is root) with the
//!   project's client key and the configured extra keys; the guest's SSH host key, made by
//!   castrad and pinned before the first boot. When the user gives a cloud-config of their own,
//!   both go as one multipart MIME message, theirs merged after ours (lists appended, our keys
//!   kept). A `merge_how`/`merge_type` in theirs would override that merge: `config::user_data`
//!   refuses such a file when the project is loaded.
//!
//! - `network-config` (only on a project network, `config::network`): version 2, the
//!   user-mode NIC by its MAC (QEMU's default for the first NIC) with DHCP as before, the
//!   project NIC by its fixed MAC with its static address; and `/etc/hosts` written by the
//!   user-data (every VM of the network by name; cloud-init's own hosts management is turned
//!   off so it does not rewrite the file on the next boot).
//!
//! The cloud-configs are written as JSON, which YAML parses as it is: no value castrad writes
//! can change the document's structure. The volume is made in memory (`fatfs`): no mkfs.vfat
//! or mcopy processes, no mounts. Pure, but for `write`.

use std::io::{Cursor, Write};
use std::path::Path;

use serde_json::json;

use crate::config::network::{self, Attachment};
use crate::ssh::keys::KeyPair;

/// The MAC QEMU gives the first NIC it is not told one for: the user-mode NIC (argv.rs).
pub const USER_NIC_MAC: &str = "52:54:00:12:34:56";

/// What the seed says.
#[derive(Debug, Clone)]
pub struct Seed<'a> {
    /// The VM's name: its hostname.
    pub vm: &'a str,
    /// Identifies this disk to cloud-init (`castra-<disk id>`).
    pub instance_id: String,
    /// The account castrad logs in as.
    pub user: &'a str,
    /// Public keys for the user's authorized_keys: the project's, then the configured ones.
    pub authorized_keys: Vec<String>,
    /// The guest's SSH host key.
    pub host_key: &'a KeyPair,
    /// The user's own cloud-config, if any.
    pub user_data: Option<&'a str>,
    /// The VM's place on the project network, if it is on one.
    pub network: Option<&'a Attachment>,
    /// Commands (argv lists) cloud-init runs at every boot, before sshd starts: mounting the
    /// VM's shared folders (`mounts::guest_command`).
    pub bootcmd: Vec<Vec<String>>,
}

/// `meta-data`.
pub fn meta_data(seed: &Seed<'_>) -> String {
    let meta = json!({
        "instance-id": seed.instance_id,
        "local-hostname": seed.vm,
    });
    format!("{meta}\n")
}

/// castrad's cloud-config: the user, the keys, the host key.
pub fn castra_config(seed: &Seed<'_>) -> String {
    let user = if seed.user == "root" {
        json!({ "name": "root", "ssh_authorized_keys": seed.authorized_keys })
    } else {
        json!({
            "name": seed.user,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "lock_passwd": true,
            "ssh_authorized_keys": seed.authorized_keys,
        })
    };
    let mut config = json!({
        "users": [user],
        // Root keeps its keys usable (cloud-init otherwise prefixes them with a refusal).
        "disable_root": seed.user != "root",
        // No ssh_pwauth: setting it makes cloud-init restart sshd mid-boot (dropping the
        // first connection); the login user's password is locked anyway.
        "ssh_deletekeys": true,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": seed.host_key.private,
            "ed25519_public": seed.host_key.public,
        },
        "manage_etc_hosts": true,
    });
    if let Some(net) = seed.network {
        config["manage_etc_hosts"] = json!(false);
        config["write_files"] = json!([{
            "path": "/etc/hosts",
            "permissions": "0644",
            "owner": "root:root",
            "content": etc_hosts(net),
        }]);
    }
    if !seed.bootcmd.is_empty() {
        config["bootcmd"] = json!(seed.bootcmd);
    }
    format!("#cloud-config\n{config}\n")
}

/// The guest's /etc/hosts on a project network: localhost, then every VM of the network (the
/// VM's own name resolves to its project address, not to a loopback one).
pub fn etc_hosts(net: &Attachment) -> String {
    format!(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n\
         ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n\
         # castra project network\n{}",
        network::hosts_lines(net)
    )
}

/// `network-config` (version 2): the user-mode NIC with DHCP, the project NIC with its
/// static address, each matched by MAC (the guest's names for them vary).
pub fn network_config(net: &Attachment) -> String {
    let config = json!({
        "version": 2,
        "ethernets": {
            "nat": {
                "match": { "macaddress": USER_NIC_MAC },
                "dhcp4": true,
            },
            "castra": {
                "match": { "macaddress": net.mac },
                "addresses": [format!("{}/{}", net.address, net.prefix)],
                "dhcp4": false,
                "dhcp6": false,
            },
        },
    });
    format!("{config}\n")
}

/// `user-data`: castrad's cloud-config, or both as multipart MIME when the user has one.
pub fn user_data(seed: &Seed<'_>) -> String {
    let ours = castra_config(seed);
    let Some(theirs) = seed.user_data else {
        return ours;
    };
    // A boundary that occurs in neither part.
    let mut boundary = format!("castra-{}", seed.instance_id);
    while ours.contains(&boundary) || theirs.contains(&boundary) {
        boundary.push('-');
    }
    let mut out = String::new();
    out.push_str("Content-Type: multipart/mixed; boundary=\"");
    out.push_str(&boundary);
    out.push_str("\"\nMIME-Version: 1.0\n\n");
    for (name, text, merge) in [
        ("castra.cfg", ours.as_str(), None),
        // Theirs after ours: their lists are appended to ours, their keys never replace ours.
        (
            "user-data.cfg",
            theirs,
            Some("list(append)+dict(no_replace,recurse_list)+str()"),
        ),
    ] {
        out.push_str(&format!("--{boundary}\n"));
        out.push_str("Content-Type: text/cloud-config; charset=\"utf-8\"\n");
        out.push_str("MIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\n");
        out.push_str(&format!(
            "Content-Disposition: attachment; filename=\"{name}\"\n"
        ));
        if let Some(merge) = merge {
            out.push_str(&format!("Merge-Type: {merge}\n"));
        }
        out.push('\n');
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!("--{boundary}--\n"));
    out
}

/// The seed volume: FAT labelled `cidata` holding `files`.
pub fn volume(files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    // Big enough for the files and FAT12's minimum; cloud-init reads a few KiB of it.
    let payload: usize = files.iter().map(|(_, d)| d.len()).sum();
    let size = (1 << 20).max(payload.next_multiple_of(1 << 16) * 2);
    let mut disk = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     "),
    )?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        for (name, data) in files {
            fs.root_dir().create_file(name)?.write_all(data)?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// Writes the seed of `seed` to `path` atomically.
pub fn write(path: &Path, seed: &Seed<'_>) -> std::io::Result<()> {
    let meta = meta_data(seed);
    let user = user_data(seed);
    let net = seed.network.map(network_config);
    let mut files = vec![
        ("meta-data", meta.as_bytes()),
        ("user-data", user.as_bytes()),
    ];
    if let Some(net) = &net {
        files.push(("network-config", net.as_bytes()));
    }
    let image = volume(&files)?;
    crate::fsutil::write_atomic(path, &image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn host_key() -> KeyPair {
        KeyPair {
            private:
                "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
            public: "ssh-ed25519 AAAAhost castra-web".into(),
        }
    }

    fn seed<'a>(key: &'a KeyPair, user: &'a str, theirs: Option<&'a str>) -> Seed<'a> {
        Seed {
            vm: "web",
            instance_id: "castra-0123abcd".into(),
            user,
            authorized_keys: vec!["ssh-ed25519 AAAAproject castra".into()],
            host_key: key,
            user_data: theirs,
            network: None,
            bootcmd: Vec::new(),
        }
    }

    fn attachment() -> Attachment {
        Attachment {
            address: "10.120.7.10".parse().unwrap(),
            prefix: 24,
            mac: "52:54:00:78:07:0a".into(),
            group: "239.255.3.4".parse().unwrap(),
            port: 23456,
            hosts: vec![
                ("web-0".into(), "10.120.7.10".parse().unwrap()),
                ("db".into(), "10.120.7.11".parse().unwrap()),
            ],
        }
    }

    #[test]
    fn without_a_network_cloud_init_keeps_managing_etc_hosts() {
        let key = host_key();
        let c = config(&user_data(&seed(&key, "dev", None)));
        assert_eq!(c["manage_etc_hosts"], true);
        assert!(c.get("write_files").is_none());
    }

    #[test]
    fn on_a_project_network_the_seed_gives_the_address_and_the_names() {
        let key = host_key();
        let net = attachment();
        let mut s = seed(&key, "dev", None);
        s.network = Some(&net);
        let c = config(&user_data(&s));
        assert_eq!(c["manage_etc_hosts"], false);
        let file = &c["write_files"][0];
        assert_eq!(file["path"], "/etc/hosts");
        let hosts = file["content"].as_str().unwrap();
        assert!(hosts.starts_with("127.0.0.1 localhost\n"), "{hosts}");
        assert!(
            hosts.ends_with("10.120.7.10 web-0\n10.120.7.11 db\n"),
            "{hosts}"
        );
        assert!(!hosts.contains("127.0.1.1"), "{hosts}");
        let n: serde_json::Value = serde_json::from_str(&network_config(&net)).unwrap();
        assert_eq!(n["version"], 2);
        let nat = &n["ethernets"]["nat"];
        assert_eq!(nat["match"]["macaddress"], "52:54:00:12:34:56");
        assert_eq!(nat["dhcp4"], true);
        let ours = &n["ethernets"]["castra"];
        assert_eq!(ours["match"]["macaddress"], "52:54:00:78:07:0a");
        assert_eq!(ours["addresses"], serde_json::json!(["10.120.7.10/24"]));
        assert_eq!(ours["dhcp4"], false);
    }

    fn config(text: &str) -> serde_json::Value {
        let body = text
            .strip_prefix("#cloud-config\n")
            .expect("a cloud-config");
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn meta_data_names_the_disk_and_the_host() {
        let key = host_key();
        let meta: serde_json::Value =
            serde_json::from_str(&meta_data(&seed(&key, "dev", None))).unwrap();
        assert_eq!(meta["instance-id"], "castra-0123abcd");
        assert_eq!(meta["local-hostname"], "web");
    }

    #[test]
    fn a_user_gets_sudo_the_keys_and_the_guest_its_host_key() {
        let key = host_key();
        let c = config(&user_data(&seed(&key, "dev", None)));
        let user = &c["users"][0];
        assert_eq!(user["name"], "dev");
        assert_eq!(user["sudo"], "ALL=(ALL) NOPASSWD:ALL");
        assert_eq!(
            user["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAproject castra"
        );
        assert_eq!(
            c["ssh_keys"]["ed25519_public"],
            "ssh-ed25519 AAAAhost castra-web"
        );
        assert!(
            c["ssh_keys"]["ed25519_private"]
                .as_str()
                .unwrap()
                .contains("OPENSSH PRIVATE KEY")
        );
        assert!(
            c.get("ssh_pwauth").is_none(),
            "sshd is not restarted mid-boot"
        );
        assert_eq!(c["ssh_genkeytypes"], serde_json::json!([]));
        let root = config(&user_data(&seed(&key, "root", None)));
        assert_eq!(root["users"][0]["name"], "root");
        assert!(root["users"][0].get("sudo").is_none());
        assert_eq!(root["disable_root"], false);
    }

    #[test]
    fn a_users_cloud_config_goes_after_ours_in_one_mime_message() {
        let key = host_key();
        let theirs = "#cloud-config\npackages: [htop]\nruncmd:\n  - echo hi\n";
        let text = user_data(&seed(&key, "dev", Some(theirs)));
        assert!(
            text.starts_with("Content-Type: multipart/mixed; boundary=\"castra-castra-0123abcd\"")
        );
        let ours_at = text.find("filename=\"castra.cfg\"").unwrap();
        let theirs_at = text.find("filename=\"user-data.cfg\"").unwrap();
        assert!(ours_at < theirs_at);
        assert!(text.contains("Merge-Type: list(append)+dict(no_replace,recurse_list)+str()"));
        assert!(text.contains(theirs));
        assert!(text.ends_with("--castra-castra-0123abcd--\n"));
        // Python's email parser (what cloud-init uses) sees two cloud-config parts.
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import email,sys; m=email.message_from_string(sys.stdin.read()); \
                 print(m.is_multipart(), [p.get_content_type() for p in m.get_payload()])",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(text.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            "True ['text/cloud-config', 'text/cloud-config']"
        );
    }

    /// The volume carries `network-config` exactly when the VM is on a project network.
    #[test]
    fn the_seed_has_network_config_only_on_a_network() {
        let key = host_key();
        let net = attachment();
        let dir = tempfile::tempdir().unwrap();
        let names = |network: Option<&Attachment>| {
            let mut s = seed(&key, "dev", None);
            s.network = network;
            let path = dir.path().join("seed.img");
            write(&path, &s).unwrap();
            let mut disk = Cursor::new(std::fs::read(&path).unwrap());
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
            let mut names: Vec<String> = fs
                .root_dir()
                .iter()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(None), ["meta-data", "user-data"]);
        assert_eq!(
            names(Some(&net)),
            ["meta-data", "network-config", "user-data"]
        );
    }

    #[test]
    fn the_volume_is_fat_labelled_cidata_with_the_files() {
        let image = volume(&[
            ("meta-data", b"{}\n"),
            ("user-data", b"#cloud-config\n{}\n"),
        ])
        .unwrap();
        let mut disk = Cursor::new(image.clone());
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), "cidata");
        let mut text = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "#cloud-config\n{}\n");
        drop(fs);
        // What the guest's blkid sees (cloud-init finds the seed by its label).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        std::fs::write(&path, &image).unwrap();
        let out = std::process::Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&path)
            .output()
            .unwrap();
        let probe = String::from_utf8_lossy(&out.stdout);
        assert!(probe.lines().any(|l| l == "TYPE=vfat"), "{probe}");
        assert!(probe.lines().any(|l| l == "LABEL=cidata"), "{probe}");
    }
}
