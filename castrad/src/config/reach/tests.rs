//! What a project may reach: inside its directory, what the user allows, never the refused.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::*;
use crate::config::load_confined;

/// A canonical temp dir holding `home/` (with .ssh), `project/`, `state/`, `run/castra`.
struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        for d in [
            "home/.ssh",
            "home/.gnupg",
            "project",
            "state",
            "run/castra",
            "images",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        Lab { _dir: dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn boundary(&self, user: UserConfig) -> Boundary {
        Boundary::new(
            Some(&self.path("home")),
            &[&self.path("state"), &self.path("images")],
            &[&self.path("run/castra")],
            user,
        )
    }

    /// castra.toml in project/ with `vm` appended to one external VM's table.
    fn project(&self, vm: &str) -> PathBuf {
        self.write(
            "project/castra.toml",
            &format!(
                "[project]\nname = \"p\"\n\n[[vms]]\nname = \"box\"\nbackend = \"external\"\n\
                 {vm}\n[vms.ssh]\nhost = \"127.0.0.1\"\n"
            ),
        )
    }

    fn load(&self, vm: &str, user: UserConfig) -> Result<Project, ConfigError> {
        load_confined(&self.project(vm), &self.boundary(user))
    }
}

fn err(r: Result<Project, ConfigError>) -> String {
    r.expect_err("must be refused").to_string()
}

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG2f0q7tEB2g1Bm3bYyjTn0L1E2 me@host\n";

#[test]
fn paths_inside_the_project_are_listed_with_their_access() {
    let lab = Lab::new();
    lab.write("project/run.sh", "#!/bin/sh\n");
    lab.write("project/payload/a", "a");
    let p = lab
        .load(
            "[vms.bootstrap]\nscript = \"run.sh\"\npayload = \"payload\"\n",
            UserConfig::default(),
        )
        .unwrap();
    let listed: Vec<(&str, &Path, Access, &Grant)> = p
        .host_paths
        .iter()
        .map(|h| (h.key.as_str(), h.path.as_path(), h.access, &h.grant))
        .collect();
    assert_eq!(
        listed,
        [
            (
                "vms[0].bootstrap.script",
                lab.path("project/run.sh").as_path(),
                Access::Read,
                &Grant::Project
            ),
            (
                "vms[0].bootstrap.payload",
                lab.path("project/payload").as_path(),
                Access::Read,
                &Grant::Project
            ),
        ]
    );
}

#[test]
fn a_payload_symlink_out_of_the_project_is_refused_unless_the_user_allows_it() {
    let lab = Lab::new();
    lab.write("elsewhere/secret", "s");
    symlink(lab.path("elsewhere"), lab.path("project/payload")).unwrap();
    let vm = "[vms.bootstrap]\npayload = \"payload\"\n";
    let e = err(lab.load(vm, UserConfig::default()));
    assert!(e.contains("castra.toml:8:"), "{e}");
    assert!(e.contains("vms[0].bootstrap.payload"), "{e}");
    assert!(
        e.contains(&format!("leads to {}", lab.path("elsewhere").display())),
        "{e}"
    );
    assert!(e.contains("outside the project directory"), "{e}");
    assert!(e.contains("allowed_paths"), "{e}");
    let allowed = UserConfig {
        allowed_paths: vec![lab.path("elsewhere")],
        ..UserConfig::default()
    };
    let p = lab.load(vm, allowed).unwrap();
    assert_eq!(
        p.host_paths[0].grant,
        Grant::AllowedPath(lab.path("elsewhere"))
    );
    let trusted = UserConfig {
        trusted_projects: vec![lab.path("project")],
        ..UserConfig::default()
    };
    assert_eq!(
        lab.load(vm, trusted).unwrap().host_paths[0].grant,
        Grant::TrustedProject
    );
}

#[test]
fn home_ssh_gnupg_root_and_castrads_directories_are_refused_even_when_allowed() {
    let lab = Lab::new();
    let everything = UserConfig {
        allowed_paths: vec![PathBuf::from("/")],
        ..UserConfig::default()
    };
    lab.write(
        "home/.ssh/id_ed25519",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    );
    lab.write("home/.gnupg/x", "x");
    for (named, why) in [
        (lab.path("home"), "your home directory"),
        (lab.path("home/.ssh/id_ed25519"), "~/.ssh"),
        (lab.path("home/.gnupg/x"), "~/.gnupg"),
        (PathBuf::from("/"), "the root directory"),
        (lab.root.clone(), "your home directory (or holds it)"),
        (lab.path("state"), "castrad's own"),
        (lab.path("run"), "castrad's own"),
    ] {
        let vm = format!("[vms.bootstrap]\npayload = \"{}\"\n", named.display());
        let e = err(lab.load(&vm, everything.clone()));
        assert!(e.contains(why), "{}: {e}", named.display());
        assert!(e.contains("no project may reach"), "{e}");
    }
    // Beside the socket's directory is not castrad's.
    lab.write("run/other/x", "x");
    let vm = format!(
        "[vms.bootstrap]\npayload = \"{}\"\n",
        lab.path("run/other").display()
    );
    lab.load(&vm, everything).unwrap();
}

#[test]
fn public_keys_may_come_from_ssh_but_only_public_key_lines_are_read() {
    let lab = Lab::new();
    lab.write("home/.ssh/id_ed25519.pub", KEY);
    lab.write(
        "home/.ssh/id_ed25519",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n",
    );
    lab.write("project/keys/team.pub", &format!("# the team\n\n{KEY}"));
    lab.write(
        "project/keys/not-a-key.pub",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    );
    lab.write("project/base.img", "");
    let with = |names: &str| {
        let text =
            format!("base_image = \"base.img\"\n[vms.cloud_init]\nauthorized_keys = [{names}]\n");
        lab.write(
            "project/castra.toml",
            &format!("[project]\nname = \"p\"\n\n[[vms]]\nname = \"box\"\n{text}"),
        );
        load_confined(
            &lab.path("project/castra.toml"),
            &lab.boundary(UserConfig::default()),
        )
    };
    let ssh_pub = lab.path("home/.ssh/id_ed25519.pub");
    let p = with(&format!("\"{}\", \"keys/team.pub\"", ssh_pub.display())).unwrap();
    let grant = |key: &str| &p.host_paths.iter().find(|h| h.key == key).unwrap().grant;
    assert_eq!(
        grant("vms[0].cloud_init.authorized_keys[0]"),
        &Grant::PublicKey
    );
    assert_eq!(
        grant("vms[0].cloud_init.authorized_keys[1]"),
        &Grant::Project
    );
    let e = err(with(&format!(
        "\"{}\"",
        lab.path("home/.ssh/id_ed25519").display()
    )));
    assert!(e.contains("~/.ssh"), "{e}");
    let e = err(with("\"keys/not-a-key.pub\""));
    assert!(e.contains("line 1 is not a public key"), "{e}");
    assert!(!e.contains("BEGIN"), "the file's text is never echoed: {e}");
}

#[test]
fn a_read_write_share_may_not_hold_what_castrad_reads_next() {
    let lab = Lab::new();
    lab.write("project/run.sh", "#!/bin/sh\n");
    lab.write("project/base.img", "");
    fs::create_dir_all(lab.path("project/src")).unwrap();
    let share = |host: &str, readonly: bool| {
        format!(
            "base_image = \"base.img\"\n[vms.cloud_init]\nenabled = false\n[vms.bootstrap]\n\
             script = \"run.sh\"\n[[vms.mounts]]\nhost = \"{host}\"\nguest = \"/w\"\n\
             readonly = {readonly}\n"
        )
    };
    let qemu = |vm: String| {
        lab.write(
            "project/castra.toml",
            &format!("[project]\nname = \"p\"\n\n[[vms]]\nname = \"box\"\n{vm}"),
        );
        load_confined(
            &lab.path("project/castra.toml"),
            &lab.boundary(UserConfig::default()),
        )
    };
    let e = err(qemu(share(".", false)));
    assert!(e.contains("vms[0].mounts[0].host"), "{e}");
    assert!(e.contains("shared read-write"), "{e}");
    let p = qemu(share(".", true)).unwrap();
    assert!(
        p.host_paths
            .iter()
            .any(|h| h.access == Access::ShareReadOnly)
    );
    let p = qemu(share("src", false)).unwrap();
    assert!(
        p.host_paths
            .iter()
            .any(|h| h.access == Access::ShareReadWrite && h.path == lab.path("project/src"))
    );
    let e = err(qemu(share("../home", true)));
    assert!(e.contains("your home directory"), "{e}");
}

#[test]
fn the_user_config_is_read_with_locations_and_must_be_private() {
    let lab = Lab::new();
    let home = lab.path("home");
    let path = lab.write(
        "home/.config/castra/config.toml",
        "allowed_paths = [\"~/images\", \"/srv\"]\ntrusted_projects = [\"/p\"]\n",
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let user = UserConfig::load(&path, Some(&home)).unwrap();
    assert_eq!(
        user.allowed_paths,
        [home.join("images"), PathBuf::from("/srv")]
    );
    assert_eq!(user.trusted_projects, [PathBuf::from("/p")]);
    assert_eq!(
        UserConfig::load(&lab.path("none.toml"), None).unwrap(),
        UserConfig::default()
    );

    fs::write(&path, "allowed_paths = [\"/a\"]\nallow = [\"x\"]\n").unwrap();
    let e = UserConfig::load(&path, Some(&home))
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.toml:2:"), "{e}");
    fs::write(&path, "allowed_paths = [\"relative\"]\n").unwrap();
    let e = UserConfig::load(&path, Some(&home))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("allowed_paths[0]") && e.contains("absolute"),
        "{e}"
    );

    fs::write(&path, "allowed_paths = [\"/\"]\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let e = UserConfig::load(&path, Some(&home))
        .unwrap_err()
        .to_string();
    assert!(e.contains("writable by others"), "{e}");
}

#[test]
fn public_key_lines() {
    assert!(is_public_key_line(KEY.trim()));
    assert!(is_public_key_line("  # comment"));
    assert!(is_public_key_line(""));
    assert!(is_public_key_line(&format!(
        "no-pty,command=\"x y\" {}",
        KEY.trim()
    )));
    assert!(!is_public_key_line("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert!(!is_public_key_line(
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
    ));
    assert!(!is_public_key_line("ssh-ed25519 short"));
    assert!(!is_public_key_line("password123"));
}
