//! The NoCloud seed a QEMU VM's cloud-init reads on first boot: a small FAT volume labelled
//! `cidata` with `meta-data` and `user-data`, attached read-only as a second disk.
//!
//! - `meta-data`: `instance-id` from the disk identity (a new disk, a new id: cloud-init runs
//!   again; the same disk keeps its id) and `local-hostname` = the VM's name.
//! - `user-data`: the login user (created with passwordless sudo unless it is root) with the
//!   project's client key and the configured extra keys; the guest's SSH host key, made by
//!   castrad and pinned before the first boot. When the user gives a cloud-config of their own,
//!   both go as one multipart MIME message, theirs merged after ours (lists appended, our keys
//!   kept).
//!
//! The cloud-configs are written as JSON, which YAML parses as it is: no value castrad writes
//! can change the document's structure. The volume is made in memory (`fatfs`): no mkfs.vfat
//! or mcopy processes, no mounts. Pure, but for `write`.

use std::io::{Cursor, Write};
use std::path::Path;

use serde_json::json;

use crate::ssh::keys::KeyPair;

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
    if !seed.bootcmd.is_empty() {
        config["bootcmd"] = json!(seed.bootcmd);
    }
    format!("#cloud-config\n{config}\n")
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
    let image = volume(&[
        ("meta-data", meta.as_bytes()),
        ("user-data", user.as_bytes()),
    ])?;
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
            bootcmd: Vec::new(),
        }
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
