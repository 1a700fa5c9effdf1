//! The repository's shell scripts, read as a fresh machine would run them. A shell function
//! named like a command shadows that command for the rest of the script: `install()` (to run
//! apt-get) once turned build-guest's later `install -d …` calls into apt-get on any machine
//! where a package was missing, and only there.
//!
//! They must also never harm the host they run on (issue 14 item 16): build-guest once had
//! scripts/setup install a cloud kernel into the host's /boot for it to copy. (scripts/setup
//! itself: `setup.rs`.)

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
///
/// And the guest's kernel comes from the Debian .deb (downloaded into target/guest-cache and
/// unpacked there), never from the host: build-guest runs in a mount
/// namespace where /boot and /lib/modules are empty, the manifest names the .deb, the kernel
/// is the one inside it, and the host's /boot and /lib/modules are the same afterwards.
#[test]
fn build_guest_completes_on_the_missing_package_path() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (build-guest installs missing packages; unshare masks /boot): \
         run the suite as root, as scripts/test and CI do"
    );
    let host_boot = || boot_listing(&["/boot", "/lib/modules"]);
    let boot_before = host_boot();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("guest");
    // The host's kernels are out of reach: empty tmpfs over /boot and /lib/modules (those that
    // exist: a fresh machine or a container may have neither), in a private mount namespace
    // (unshare's default propagation is private: nothing leaks to the host).
    let run = std::process::Command::new("unshare")
        .args(["--mount", "--", "sh", "-c"])
        .arg(
            "for d in /boot /lib/modules; do \
               if [ -d \"$d\" ]; then mount -t tmpfs castra-test \"$d\" || exit 1; fi; \
             done && exec \"$0\" \"$1\"",
        )
        .arg(workspace().join("scripts/build-guest"))
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
    // The drivers, from the .deb's module tree (depmod'ed in the build directory).
    for ko in ["virtio_net.ko", "virtio_blk.ko", "evdev.ko"] {
        assert!(
            listing.lines().any(|l| l == format!("lib/modules/{ko}")),
            "{ko} in the initramfs: {listing}"
        );
    }
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

    // The manifest names the .deb: "kernel_deb=linux-image-<release> <version> sha256:<hex>".
    let manifest = std::fs::read_to_string(out.join("manifest")).unwrap();
    let field = |key: &str| {
        manifest
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in the manifest:\n{manifest}"))
            .to_owned()
    };
    let release = field("kernel");
    let deb_line = field("kernel_deb");
    let [package, version, sha] = deb_line.split(' ').collect::<Vec<_>>()[..] else {
        panic!("kernel_deb is not 'package version sha256:hex': {deb_line}");
    };
    assert_eq!(package, format!("linux-image-{release}"), "{manifest}");
    let sha = sha.strip_prefix("sha256:").unwrap();
    // The cached .deb is the one named, and the guest's kernel is the one inside it.
    let deb = workspace()
        .join("target/guest-cache")
        .join(format!("{package}_{}.deb", version.replace(':', "%3a")));
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "sha256sum \"$1\" | cut -d' ' -f1 && \
             dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - --occurrence \"./boot/vmlinuz-$2\" | cmp - \"$3\" && \
             echo same-kernel",
        )
        .arg("sh")
        .arg(&deb)
        .arg(&release)
        .arg(out.join("vmlinuz"))
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        check,
        format!("{sha}\nsame-kernel\n"),
        "{} is the .deb the manifest names, and holds the guest's vmlinuz",
        deb.display()
    );
    assert_eq!(
        host_boot(),
        boot_before,
        "the host's /boot and /lib/modules"
    );
}

/// Names, sizes and modification times of everything under `dirs` (what installing a kernel
/// changes); a directory that is not there (a fresh machine or a container may have no
/// /lib/modules, or no kernel in /boot) is listed as absent, so that making it is a change too.
fn boot_listing(dirs: &[&str]) -> String {
    let mut listing = String::new();
    for dir in dirs {
        if !std::path::Path::new(dir).exists() {
            listing.push_str(&format!("{dir} absent\n"));
            continue;
        }
        let out = std::process::Command::new("find")
            .arg(dir)
            .args(["-printf", "%p %s %T@\n"])
            .output()
            .unwrap();
        assert!(out.status.success(), "find {dir}");
        listing.push_str(&String::from_utf8(out.stdout).unwrap());
    }
    listing
}
