//! What a project file may reach, through the real castrad on its socket: host paths stay
//! inside the project's directory unless the user's own config allows more; home, ~/.ssh and
//! `/` never; a read-write share never holds what castrad reads next; castractl's walk up to
//! castra.toml stops at a directory others can write or own; another user's project file is
//! refused. A guest that swaps the payload for a symlink between two runs gets nothing.

use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};

use crate::fleet::{Fleet, ONE_VM};
use crate::support::{Ctl, Env};

/// Another local user: uid 1000 is the test machine's first normal account.
const OTHER_UID: u32 = 1000;

const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG2f0q7tEB2g1Bm3bYyjTn0L1E2 me\n";

fn guest_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest/base.img")
}

/// An env whose castrad has `home` for $HOME (with a key pair in .ssh) and a project
/// directory `home/src/x`.
fn home_env() -> (Env, crate::support::Daemon) {
    let env = Env::new();
    env.write(&[
        (
            "home/.ssh/id_ed25519",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n",
        ),
        ("home/.ssh/id_ed25519.pub", PUBLIC_KEY),
        ("home/outside/notes.txt", "mine\n"),
        ("home/src/x/src/main.c", "int main;\n"),
    ]);
    let home = env.path("home");
    let daemon = env.start_daemon_with(|c| {
        c.env("HOME", &home);
    });
    (env, daemon)
}

/// `castractl plan` in home/src/x with one QEMU VM whose table ends with `extra`.
fn plan_with(env: &Env, extra: &str) -> Ctl {
    let config = format!(
        "[project]\nname = \"x\"\n\n[[vms]]\nname = \"box\"\nbase_image = \"{}\"\n{extra}",
        guest_image().display()
    );
    env.write(&[("home/src/x/castra.toml", &config)]);
    env.ctl(&env.path("home/src/x"), &["plan"])
}

fn refused(out: &Ctl, line: usize, key: &str, why: &str) {
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!("castra.toml:{line}:")),
        "names the file and line {line}: {out:?}"
    );
    assert!(out.stderr.contains(key), "names {key}: {out:?}");
    assert!(out.stderr.contains(why), "says {why:?}: {out:?}");
    assert!(
        !out.stderr.contains("BEGIN OPENSSH"),
        "never echoes a key: {out:?}"
    );
}

#[test]
fn a_cloned_project_reaches_only_its_own_directory_unless_the_user_allows_more() {
    let (env, _daemon) = home_env();
    let mount = |host: &str, readonly: bool| {
        format!("[[vms.mounts]]\nhost = \"{host}\"\nguest = \"/w\"\nreadonly = {readonly}\n")
    };
    // The home directory two levels up, `/`, a file in ~/.ssh (through a symlink in the
    // project), a private key as authorized_keys: refused, whatever the user config says.
    refused(
        &plan_with(&env, &mount("../..", true)),
        8,
        "vms[0].mounts[0].host",
        "your home directory",
    );
    refused(
        &plan_with(&env, &mount("/", true)),
        8,
        "vms[0].mounts[0].host",
        "the root directory",
    );
    symlink(
        env.path("home/.ssh/id_ed25519"),
        env.path("home/src/x/user-data"),
    )
    .unwrap();
    let user_data = "[vms.cloud_init]\nuser_data = \"user-data\"\n";
    refused(
        &plan_with(&env, user_data),
        8,
        "vms[0].cloud_init.user_data",
        "in ~/.ssh",
    );
    let private = "[vms.cloud_init]\nauthorized_keys = [\"~/.ssh/id_ed25519\"]\n";
    refused(
        &plan_with(&env, private),
        8,
        "authorized_keys[0]",
        "in ~/.ssh",
    );

    // Outside the project: refused, until the user's own config allows that directory.
    let outside = mount("../../outside", false);
    refused(
        &plan_with(&env, &outside),
        8,
        "vms[0].mounts[0].host",
        "outside the project directory",
    );
    let allowed = std::fs::canonicalize(env.path("home/outside")).unwrap();
    env.allow(&allowed);
    let both =
        format!("{outside}[vms.cloud_init]\nauthorized_keys = [\"~/.ssh/id_ed25519.pub\"]\n");
    let out = plan_with(&env, &both);
    assert_eq!(out.code, 0, "{out:?}");
    let line = |needle: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {}", out.stdout))
            .to_owned()
    };
    assert!(
        out.stdout
            .contains("host paths (what the project reads or shares here):")
    );
    let share = line(&allowed.display().to_string());
    assert!(
        share.contains("share-read-write") && share.contains("allowed_paths"),
        "{share}"
    );
    let key = line("id_ed25519.pub");
    assert!(
        key.contains("read") && key.contains("a public key"),
        "{key}"
    );
    let json = env.ctl(&env.path("home/src/x"), &["plan", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let paths = plan["host_paths"].as_array().expect("host_paths");
    assert!(
        paths.iter().any(|h| h["grant"] == "allowed_path"
            && h["allowed_by"] == allowed.display().to_string()
            && h["access"] == "share-read-write"),
        "{plan}"
    );
    assert!(
        paths
            .iter()
            .any(|h| h["key"] == "vms[0].base_image" && h["access"] == "read"),
        "{plan}"
    );

    // A read-write share of the project itself would let the guest rewrite castra.toml.
    refused(
        &plan_with(&env, &mount(".", false)),
        8,
        "vms[0].mounts[0].host",
        "shared read-write",
    );
    assert_eq!(plan_with(&env, &mount(".", true)).code, 0);
}

#[test]
fn the_walk_up_stops_where_someone_else_could_have_put_a_castra_toml() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    let project = "[project]\nname = \"planted\"\n\n[[vms]]\nname = \"web\"\nbackend = \"external\"\n\
                   [vms.ssh]\nhost = \"127.0.0.1\"\n";
    env.write(&[
        ("shared/castra.toml", project),
        ("theirs/castra.toml", project),
        ("mine/castra.toml", project),
    ]);
    for dir in ["shared/sub", "theirs/sub", "mine/sub"] {
        std::fs::create_dir_all(env.path(dir)).unwrap();
    }
    // A sticky world-writable directory (like /tmp) and one of another user's.
    std::fs::set_permissions(env.path("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    chown(env.path("theirs"), Some(OTHER_UID), Some(OTHER_UID)).unwrap();

    let out = env.ctl(&env.path("shared/sub"), &["plan"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no castra.toml"), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "stopped looking at {} (writable by others)",
            env.path("shared").display()
        )),
        "{out:?}"
    );
    let out = env.ctl(&env.path("theirs/sub"), &["plan"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("owned by uid {OTHER_UID}, not by you")),
        "{out:?}"
    );
    // One's own directory is walked as before.
    let out = env.ctl(&env.path("mine/sub"), &["plan"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("project planted"), "{out:?}");
}

#[test]
fn project_files_of_another_user_are_refused_however_they_are_named() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    env.write(&[
        (
            "p/castra.toml",
            "[project]\nname = \"p\"\n\n[[vms]]\nname = \"web\"\nbackend = \"external\"\n\
             [vms.ssh]\nhost = \"127.0.0.1\"\n[vms.bootstrap]\nscript = \"boot/run.sh\"\n",
        ),
        ("p/boot/run.sh", "#!/bin/sh\n"),
        (
            "p/boot/bootstrap.toml",
            "[ssh]\nhost = \"attacker.example\"\n",
        ),
    ]);
    let config = env.path("p/castra.toml");
    chown(env.path("p/boot/bootstrap.toml"), Some(OTHER_UID), None).unwrap();
    let out = env.ctl(&env.path("p"), &["plan"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("bootstrap.toml: belongs to"), "{out:?}");
    assert!(out.stderr.contains(&format!("uid {OTHER_UID}")), "{out:?}");

    chown(env.path("p/boot/bootstrap.toml"), Some(0), None).unwrap();
    assert_eq!(env.ctl(&env.path("p"), &["plan"]).code, 0);
    chown(&config, Some(OTHER_UID), None).unwrap();
    let out = env.ctl(
        &env.path("p"),
        &["plan", "--config", config.to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("castra.toml: belongs to"), "{out:?}");
    assert!(out.stderr.contains("not to you"), "{out:?}");
}

#[test]
fn a_payload_swapped_for_a_symlink_between_runs_sends_nothing_out_of_the_project() {
    let fleet = Fleet::new(&ONE_VM.replace(
        "script = \"scripts/db.sh\"",
        "script = \"scripts/db.sh\"\npayload = \"payload\"",
    ));
    let first = fleet.up(&[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(fleet.guest_runs("db"), 1);
    // What a guest with write access to the project would do: the payload becomes a link to
    // the user's secrets.
    let env = &fleet.env;
    env.write(&[(
        "secrets/id_ed25519",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n",
    )]);
    let payload = fleet.project().join("payload");
    std::fs::remove_dir_all(&payload).unwrap();
    symlink(env.path("secrets"), &payload).unwrap();
    let again = fleet.up(&["--bootstrap", "always"]);
    // --json: the error is the outcome's (stderr for a person).
    let said = format!("{}{}{:?}", again.stderr, again.outcome, again.events);
    assert_eq!(again.code, 2, "{said}");
    assert!(said.contains("vms[0].bootstrap.payload"), "{said}");
    assert!(said.contains("outside the project directory"), "{said}");
    assert_eq!(fleet.guest_runs("db"), 1, "nothing ran");
    let leaked = walk(&env.path("guest"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "id_ed25519"))
        .collect::<Vec<_>>();
    assert!(
        leaked.is_empty(),
        "the secret reached the guest: {leaked:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
