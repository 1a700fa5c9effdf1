//! The repository's shell scripts, read as a fresh machine would run them. A shell function
//! named like a command shadows that command for the rest of the script: `install()` (to run
//! apt-get) once turned build-guest's later `install -d …` calls into apt-get on any machine
//! where a package was missing, and only there.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Shell scripts of the repository: `scripts/*` and `.ci/*` with a shell `#!`, and the shell
/// castrad sends to guests.
fn shell_scripts() -> Vec<PathBuf> {
    let root = workspace();
    let mut out = Vec::new();
    for dir in ["scripts", ".ci"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let head = std::fs::read_to_string(&path).unwrap_or_default();
            let first = head.lines().next().unwrap_or("");
            if first.starts_with("#!") && (first.contains("sh") && !first.contains("python")) {
                out.push(path);
            }
        }
    }
    out.push(root.join("castrad/src/pipeline/driver.sh"));
    out.push(root.join("castrad/src/vizier/agent.sh"));
    out.sort();
    out
}

/// The names of the functions a script defines (`name() {`, `function name {`).
fn functions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let l = line.trim_start();
            let l = l.strip_prefix("function ").unwrap_or(l);
            let end = l.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))?;
            let (name, rest) = l.split_at(end);
            let rest = rest.trim_start();
            (!name.is_empty() && (rest.starts_with("()") || line.contains("function ")))
                .then(|| name.to_owned())
        })
        .collect()
}

/// Whether `name` is a command on this machine, or a shell builtin.
fn is_command(name: &str) -> bool {
    const BUILTINS: &[&str] = &[
        "cd", "echo", "printf", "read", "test", "true", "false", "set", "exit", "return", "export",
        "local", "eval", "exec", "trap", "wait", "kill", "type", "command", "source", "shift",
        "getopts", "umask", "alias", "unset", "readonly", "break", "continue",
    ];
    BUILTINS.contains(&name)
        || std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

#[test]
fn no_shell_function_is_named_like_a_command() {
    let scripts = shell_scripts();
    assert!(scripts.len() >= 6, "found only {scripts:?}");
    let mut checked = 0;
    let mut shadowing = Vec::new();
    for script in &scripts {
        let text = std::fs::read_to_string(script).unwrap();
        for name in functions(&text) {
            checked += 1;
            if is_command(&name) {
                shadowing.push(format!("{}: {name}()", script.display()));
            }
        }
    }
    assert!(checked >= 5, "found only {checked} functions");
    assert!(
        shadowing.is_empty(),
        "these functions shadow a command of the same name: {shadowing:?}"
    );
    // The check itself sees the bug it is for.
    assert!(is_command("install"), "coreutils' install(1) is on PATH");
    assert_eq!(
        functions("  install() { apt-get install -y x; }"),
        ["install"]
    );
}

/// build-guest on the path a fresh machine takes (a package to install first), into a new
/// directory: the guest must come out complete. `cpio` is installed already; build-guest is
/// told to take it as missing, so apt-get runs (a no-op) and the rest of the script runs
/// after it, as on a fresh machine.
#[test]
fn build_guest_completes_on_the_missing_package_path() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (build-guest installs missing packages): run the suite as root, \
         as scripts/test and CI do"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("guest");
    let run = std::process::Command::new(workspace().join("scripts/build-guest"))
        .arg(&out)
        .env("CASTRA_BUILD_GUEST_MISSING", "cpio")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("installing cpio"),
        "the missing path ran: {stderr}"
    );
    for f in [
        "vmlinuz",
        "initrd.img",
        "base.img",
        "id_ed25519",
        "id_ed25519.pub",
    ] {
        let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} is missing or empty");
    }
    // What `install` made: root's authorized_keys in the initramfs, /etc/dropbear on the disk.
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg("zcat \"$1\" | cpio -it 2>/dev/null")
        .arg("sh")
        .arg(out.join("initrd.img"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l == "root/.ssh/authorized_keys"),
        "{listing}"
    );
    let etc = std::process::Command::new("debugfs")
        .args(["-R", "ls -l /etc"])
        .arg(out.join("base.img"))
        .output()
        .unwrap();
    let etc = String::from_utf8_lossy(&etc.stdout);
    assert!(
        etc.lines()
            .any(|l| l.contains("40700") && l.ends_with(" dropbear")),
        "/etc/dropbear (0700) on the data disk: {etc}"
    );
}
