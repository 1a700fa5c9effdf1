//! scripts/install in a scratch HOME (issue 16 §4 and §6), from prebuilt binaries (`--from`):
//! the binaries, the user units with ExecStart naming the installed castrad (checked by
//! `systemd-analyze --user verify`, which needs no systemd running, only an XDG_RUNTIME_DIR),
//! a bash completion that loads and completes a subcommand, and man pages that render.
//!
//! And its default path, which builds (cargo, then xtask for the assets) and installs what it
//! built: run with `--debug`, which differs from the default only in the profile word given to
//! cargo, so the suite needs no release build. The dev build is the one `cargo test` keeps up
//! to date (only the castrad, castractl and xtask executables may need linking), and the bench
//! smoke stage after the end-to-end tests builds the same executables: it finds them current.
//! It runs with no cargo in PATH, as a user's shell is after scripts/setup (issue 24).
//!
//! And the Debian package of `--deb` (issue 24), read back with dpkg-deb.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{CASTRACTL, CASTRAD, Env};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `scripts/install ARGS` with HOME at `home`; its output. It must succeed. cargo (a rustup
/// proxy) keeps finding its toolchain and crates: CARGO_HOME and RUSTUP_HOME stay the real ones.
///
/// And the script's cargo sees the environment of a user's shell, not the one `cargo test`
/// gives this test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME…): some build scripts (ring's) rerun
/// when those change, so inheriting them rebuilt ring and all above it twice per suite run,
/// here and again in the bench smoke stage.
fn install(home: &Path, args: &[&str]) -> String {
    install_with(home, args, &[])
}

/// `install` with more environment.
fn install_with(home: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let real = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let real = real.as_deref().unwrap_or(Path::new("/root"));
    let mut command = Command::new(repo().join("scripts/install"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let from_cargo_test = name == "CARGO"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_CRATE_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR";
        if from_cargo_test {
            command.env_remove(&*name);
        }
    }
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .env("HOME", home)
        .env(
            "CARGO_HOME",
            std::env::var_os("CARGO_HOME").unwrap_or_else(|| real.join(".cargo").into()),
        )
        .env(
            "RUSTUP_HOME",
            std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| real.join(".rustup").into()),
        )
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/install {args:?}: {text}");
    text
}

/// `systemd-analyze --user verify` of the two units in `dir`: no complaint at all.
fn verify(home: &Path, dir: &Path) {
    let runtime = home.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(dir.join("castrad.service"))
        .arg(dir.join("castrad.socket"))
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .expect("systemd-analyze must be installed (scripts/setup installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze --user verify {}: {stderr}",
        dir.display()
    );
}

/// A scratch HOME and a `--from` directory: the test binaries (links) and their assets.
fn home_and_prebuilt(env: &Env) -> (PathBuf, PathBuf) {
    let home = env.path("home");
    let from = env.path("build");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&from).unwrap();
    std::os::unix::fs::symlink(CASTRAD, from.join("castrad")).unwrap();
    std::os::unix::fs::symlink(CASTRACTL, from.join("castractl")).unwrap();
    xtask::write_assets(&from.join("assets")).unwrap();
    (home, from)
}

#[test]
fn install_puts_binaries_units_completions_and_man_pages_in_place() {
    let env = Env::new();
    let (home, from) = home_and_prebuilt(&env);

    let said = install(&home, &["--from", from.to_str().unwrap()]);
    assert!(
        said.contains("systemctl --user enable --now castrad.socket"),
        "{said}"
    );
    assert!(said.contains("loginctl enable-linger"), "{said}");
    let bin = home.join(".local/bin");
    for (name, built) in [("castrad", CASTRAD), ("castractl", CASTRACTL)] {
        assert_eq!(
            std::fs::read(bin.join(name)).unwrap(),
            std::fs::read(built).unwrap(),
            "{name}"
        );
    }
    let units = home.join(".local/share/systemd/user");
    let service = std::fs::read_to_string(units.join("castrad.service")).unwrap();
    let exec: Vec<&str> = service
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        [format!("ExecStart=\"{}\"", bin.join("castrad").display())]
    );
    verify(&home, &units);

    // The installed castractl completes; the script on disk is the one it prints.
    let bash = home.join(".local/share/bash-completion/completions/castractl");
    let printed = Command::new(bin.join("castractl"))
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert_eq!(printed.stdout, std::fs::read(&bash).unwrap());
    let completed = Command::new("bash")
        .arg("-c")
        .arg(
            "source \"$1\" && complete -p castractl && COMP_WORDS=(castractl do) COMP_CWORD=1 \
             COMP_LINE='castractl do' COMP_POINT=12 && _castractl castractl do castractl && \
             echo \"${COMPREPLY[*]}\"",
        )
        .arg("bash")
        .arg(&bash)
        .output()
        .unwrap();
    let completed = String::from_utf8_lossy(&completed.stdout);
    assert!(
        completed.contains("-F _castractl castractl") && completed.contains("doctor"),
        "{completed}"
    );
    for f in [
        ".local/share/zsh/site-functions/_castractl",
        ".local/share/fish/vendor_completions.d/castractl.fish",
    ] {
        assert!(home.join(f).is_file(), "{f}");
    }

    // The man pages render (man-db, reading the file).
    let man = home.join(".local/share/man");
    for (page, expect) in [
        ("man1/castractl.1", "doctor"),
        ("man1/castractl-doctor.1", "castractl doctor"),
        ("man8/castrad.8", "--max-parallel"),
    ] {
        let out = Command::new("man")
            .arg("-l")
            .arg(man.join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man (man-db) must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(expect),
            "{page}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Again (an upgrade): the same files, replaced whole.
    install(&home, &["--from", from.to_str().unwrap()]);
    verify(&home, &units);

    // A prefix with a space and systemd's specifier character in it: ExecStart quotes it and
    // doubles the %, and systemd still finds the binary.
    let prefix = env.path("opt/castra 100%");
    install(
        &home,
        &[
            "--from",
            from.to_str().unwrap(),
            "--prefix",
            prefix.to_str().unwrap(),
        ],
    );
    let units = prefix.join("lib/systemd/user");
    let service = std::fs::read_to_string(units.join("castrad.service")).unwrap();
    assert!(
        service.contains("ExecStart=\"") && service.contains("castra 100%%/bin/castrad\""),
        "{service}"
    );
    verify(&home, &units);
    assert!(prefix.join("share/man/man8/castrad.8").is_file());
}

#[test]
fn install_without_from_builds_then_installs_what_it_built() {
    let env = Env::new();
    let home = env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    // PATH without cargo, as a user's is after scripts/setup (rustup edits no shell start-up
    // file): the script finds rustup's cargo in CARGO_HOME/bin (~/.cargo/bin) itself.
    let path = std::env::var_os("PATH").unwrap();
    let path = std::env::join_paths(
        std::env::split_paths(&path).filter(|dir| !dir.join("cargo").exists()),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let said = install_with(&home, &["--debug"], &[("PATH", &path)]);
    eprintln!("scripts/install --debug: {:?}", t.elapsed());
    // Where cargo test put its own executables is where the dev build goes.
    let built = Path::new(CASTRAD).parent().unwrap();
    assert!(
        said.contains("building castrad and castractl (dev profile)"),
        "{said}"
    );
    assert!(
        said.contains("completions and man pages into ") && said.contains("/debug/assets"),
        "{said}"
    );
    let bin = home.join(".local/bin");
    for name in ["castrad", "castractl"] {
        assert_eq!(
            std::fs::read(bin.join(name)).unwrap(),
            std::fs::read(built.join(name)).unwrap(),
            "{name}: what cargo built"
        );
    }
    let version = Command::new(bin.join("castrad"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("castrad "),
        "{version:?}"
    );
    let units = home.join(".local/share/systemd/user");
    let service = std::fs::read_to_string(units.join("castrad.service")).unwrap();
    assert!(
        service.contains(&format!("ExecStart=\"{}\"", bin.join("castrad").display())),
        "{service}"
    );
    verify(&home, &units);
    // The assets xtask wrote for this build are the ones installed.
    let printed = Command::new(bin.join("castractl"))
        .args(["completion", "bash"])
        .output()
        .unwrap();
    let bash = home.join(".local/share/bash-completion/completions/castractl");
    assert_eq!(printed.stdout, std::fs::read(bash).unwrap());
    assert_eq!(
        std::fs::read(home.join(".local/share/man/man8/castrad.8")).unwrap(),
        std::fs::read(built.join("assets/man/castrad.8")).unwrap()
    );
}

/// The package `scripts/install --deb` builds and installs (issue 24 item 2), from prebuilt
/// binaries, with a stand-in apt-get first on PATH that only logs its argv: the suite never
/// installs a package on the machine it runs on. What is in the .deb is read with dpkg-deb
/// (its listing, its control fields) and unpacked into a throwaway root (`dpkg-deb -x`):
/// - the files of the user install, in the system's places: /usr/bin, the user units in
///   /usr/lib/systemd/user with `ExecStart` naming /usr/bin/castrad (nothing else changed),
///   completions where bash, zsh (Debian's vendor-completions) and fish look, compressed man
///   pages in man1 and man8; all owned by root, nothing outside /usr;
/// - Depends: glibc, and the packages `scripts/setup --runtime --no-build` installs (read from the
///   script: the two lists cannot drift apart), a virtiofsd as an alternative;
/// - apt-get is asked to install that file, and the one command a user then runs is printed.
///
/// `--deb-only` builds the same package and installs nothing: its path is what it prints.
#[test]
fn install_deb_builds_a_package_of_the_same_files_in_the_systems_places() {
    let env = Env::new();
    let (home, from) = home_and_prebuilt(&env);
    let fake = env.path("fake-bin");
    std::fs::create_dir_all(&fake).unwrap();
    let apt_log = env.path("apt-get.log");
    // And a sudo that runs its command as it is (as a suite not run as root would): the
    // stand-in apt-get, never the real one.
    for (name, script) in [
        ("apt-get", "#!/bin/sh\necho \"$*\" >>\"$FAKE_APT_LOG\"\n"),
        ("sudo", "#!/bin/sh\nexec \"$@\"\n"),
    ] {
        std::fs::write(fake.join(name), script).unwrap();
        let mut perms = std::fs::metadata(fake.join(name)).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(fake.join(name), perms).unwrap();
    }
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let fake_env = [
        ("PATH", std::ffi::OsStr::new(&path)),
        ("FAKE_APT_LOG", apt_log.as_os_str()),
    ];

    let t = std::time::Instant::now();
    let said = install_with(
        &home,
        &["--deb", "--from", from.to_str().unwrap()],
        &fake_env,
    );
    eprintln!("scripts/install --deb: {:?}", t.elapsed());
    let text = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let arch = text(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap(),
    );
    let version = text(Command::new(CASTRAD).arg("--version").output().unwrap());
    let version = version.trim().strip_prefix("castrad ").unwrap().to_owned();
    let deb = from.join(format!("castra_{version}_{}.deb", arch.trim()));
    assert!(deb.is_file(), "{} after: {said}", deb.display());
    assert_eq!(
        std::fs::read_to_string(&apt_log).unwrap(),
        format!("install --no-install-recommends {}\n", deb.display()),
        "{said}"
    );
    assert!(
        said.contains("\n  systemctl --user enable --now castrad.socket\n"),
        "{said}"
    );
    assert!(
        !home.join(".local").exists(),
        "--deb writes nothing in the user's home"
    );

    // The listing: "perms owner size date time path", paths without spaces.
    let listing = text(
        Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .unwrap(),
    );
    let mut files = std::collections::BTreeMap::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [perms, owner, .., path] = fields[..] else {
            panic!("{line}")
        };
        assert_eq!(owner, "root/root", "{line}");
        assert!(
            path == "./" || path.starts_with("./usr/"),
            "nothing outside /usr: {line}"
        );
        if !perms.starts_with('d') {
            files.insert(path.strip_prefix('.').unwrap().to_owned(), perms.to_owned());
        }
    }
    for (file, perms) in [
        ("/usr/bin/castrad", "-rwxr-xr-x"),
        ("/usr/bin/castractl", "-rwxr-xr-x"),
        ("/usr/lib/systemd/user/castrad.service", "-rw-r--r--"),
        ("/usr/lib/systemd/user/castrad.socket", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/castractl",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_castractl", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/castractl.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/man/man1/castractl.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/castractl-doctor.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man8/castrad.8.gz", "-rw-r--r--"),
        ("/usr/share/doc/castra/copyright", "-rw-r--r--"),
    ] {
        assert_eq!(
            files.get(file).map(String::as_str),
            Some(perms),
            "{file}: {listing}"
        );
    }
    let man1 = std::fs::read_dir(from.join("assets/man")).unwrap().count();
    assert_eq!(
        files
            .keys()
            .filter(|f| f.starts_with("/usr/share/man/"))
            .count(),
        man1,
        "every man page: {listing}"
    );

    // The control fields.
    let field = |name: &str| {
        text(
            Command::new("dpkg-deb")
                .arg("-f")
                .arg(&deb)
                .arg(name)
                .output()
                .unwrap(),
        )
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "castra");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), arch.trim());
    let depends = field("Depends");
    let depends: Vec<&str> = depends.split(", ").collect();
    assert!(
        depends.iter().any(|d| d.starts_with("libc6 (>= 2.")),
        "{depends:?}"
    );
    assert!(
        depends.contains(&"virtiofsd | qemu-system-common (<< 1:8.0)"),
        "{depends:?}"
    );
    let setup = std::fs::read_to_string(repo().join("scripts/setup")).unwrap();
    let runtime = setup
        .split_once("\nRUNTIME_PACKAGES=(\n")
        .and_then(|(_, rest)| rest.split_once("\n)\n"))
        .expect("RUNTIME_PACKAGES=( ... ) in scripts/setup")
        .0;
    let runtime: Vec<&str> = runtime
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| !w.starts_with('#'))
        .collect();
    assert!(runtime.len() >= 6, "{runtime:?}");
    for p in &runtime {
        assert!(
            depends.contains(p),
            "{p} (scripts/setup --runtime --no-build) in {depends:?}"
        );
    }

    // Unpacked: the unit names /usr/bin/castrad and is otherwise the repository's; the rest
    // are the files it was built from.
    let root = env.path("root");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .unwrap();
    assert!(x.status.success(), "{x:?}");
    let service =
        std::fs::read_to_string(root.join("usr/lib/systemd/user/castrad.service")).unwrap();
    let original = std::fs::read_to_string(repo().join("systemd/castrad.service")).unwrap();
    let changed: Vec<(&str, &str)> = original
        .lines()
        .zip(service.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed,
        [(
            "ExecStart=%h/.local/bin/castrad",
            "ExecStart=\"/usr/bin/castrad\""
        )],
        "{service}"
    );
    assert_eq!(original.lines().count(), service.lines().count());
    for (packed, built) in [
        ("usr/bin/castrad", Path::new(CASTRAD).to_owned()),
        ("usr/bin/castractl", Path::new(CASTRACTL).to_owned()),
        (
            "usr/lib/systemd/user/castrad.socket",
            repo().join("systemd/castrad.socket"),
        ),
        (
            "usr/share/bash-completion/completions/castractl",
            from.join("assets/completions/castractl"),
        ),
    ] {
        assert!(
            std::fs::read(root.join(packed)).unwrap() == std::fs::read(&built).unwrap(),
            "{packed} is {}",
            built.display()
        );
    }
    let out = Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man8/castrad.8.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("--max-parallel"),
        "{out:?}"
    );

    // --deb-only: the same package, its path on stdout, nothing installed.
    std::fs::remove_file(&deb).unwrap();
    std::fs::remove_file(&apt_log).unwrap();
    let said = install_with(
        &home,
        &["--deb-only", "--from", from.to_str().unwrap()],
        &fake_env,
    );
    assert!(said.starts_with(&format!("{}\n", deb.display())), "{said}");
    assert!(deb.is_file());
    assert!(!apt_log.exists(), "--deb-only ran apt-get");
}
