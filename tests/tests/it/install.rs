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

use std::path::Path;
use std::process::Command;

use crate::support::{CASTRACTL, CASTRAD, Env};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `scripts/install ARGS` with HOME at `home`; its output. It must succeed. cargo (a rustup
/// proxy) keeps finding its toolchain and crates: CARGO_HOME and RUSTUP_HOME stay the real ones.
fn install(home: &Path, args: &[&str]) -> String {
    let real = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let real = real.as_deref().unwrap_or(Path::new("/root"));
    let out = Command::new(repo().join("scripts/install"))
        .args(args)
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

#[test]
fn install_puts_binaries_units_completions_and_man_pages_in_place() {
    let env = Env::new();
    let home = env.path("home");
    let from = env.path("build");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&from).unwrap();
    std::os::unix::fs::symlink(CASTRAD, from.join("castrad")).unwrap();
    std::os::unix::fs::symlink(CASTRACTL, from.join("castractl")).unwrap();
    xtask::write_assets(&from.join("assets")).unwrap();

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
    let t = std::time::Instant::now();
    let said = install(&home, &["--debug"]);
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
