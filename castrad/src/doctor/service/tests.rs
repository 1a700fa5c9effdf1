use std::path::{Path, PathBuf};

use castra_api::{CheckStatus, START_CASTRAD};

use super::*;

fn run(success: bool, stdout: &str, stderr: &str) -> Result<Run, String> {
    Ok(Run {
        success,
        stdout: stdout.to_owned(),
        stderr: stderr.to_owned(),
    })
}

#[test]
fn the_unit_path_follows_xdg_and_systemds_order() {
    let plain = Xdg {
        home: "/home/alice".into(),
        ..Xdg::default()
    };
    let expected: Vec<PathBuf> = [
        "/home/alice/.config/systemd/user",
        "/etc/systemd/user",
        "/home/alice/.local/share/systemd/user",
        "/usr/local/share/systemd/user",
        "/usr/share/systemd/user",
        "/usr/local/lib/systemd/user",
        "/usr/lib/systemd/user",
    ]
    .map(PathBuf::from)
    .to_vec();
    assert_eq!(unit_dirs(&plain), expected);
    let custom = Xdg {
        home: "/home/alice".into(),
        config_home: Some("/cfg".into()),
        data_home: Some("/data".into()),
        data_dirs: Some("/usr/share:relative:/opt/share".into()),
    };
    let dirs = unit_dirs(&custom);
    assert_eq!(dirs[0], Path::new("/cfg/systemd/user"));
    assert_eq!(dirs[2], Path::new("/data/systemd/user"));
    assert!(dirs.contains(&PathBuf::from("/opt/share/systemd/user")));
    assert!(!dirs.iter().any(|d| d.starts_with("relative")), "{dirs:?}");
}

#[test]
fn exec_start_names_the_program_with_home_expanded() {
    let home = Path::new("/home/alice");
    assert_eq!(
        exec_start(
            "[Service]\nType=notify\nExecStart=%h/.local/bin/castrad --max-parallel 4\n",
            home
        ),
        Some(PathBuf::from("/home/alice/.local/bin/castrad"))
    );
    assert_eq!(
        exec_start("ExecStart=-/usr/bin/castrad\n", home),
        Some(PathBuf::from("/usr/bin/castrad"))
    );
    // As scripts/install writes it: quoted, with systemd's escapes.
    assert_eq!(
        exec_start("ExecStart=\"/home/al ice/.local/bin/castrad\"\n", home),
        Some(PathBuf::from("/home/al ice/.local/bin/castrad"))
    );
    assert_eq!(
        exec_start("ExecStart='/opt/100%%/a\\\"b/castrad' --x\n", home),
        Some(PathBuf::from("/opt/100%/a\"b/castrad"))
    );
    assert_eq!(exec_start("ExecStart=castrad\n", home), None);
    assert_eq!(exec_start("[Service]\n", home), None);
}

#[test]
fn the_services_own_path_is_read_from_its_environment() {
    assert_eq!(
        service_env_path("LANG=C \"PATH=/opt/q/bin:/usr/bin\" X=1").as_deref(),
        Some("/opt/q/bin:/usr/bin")
    );
    assert_eq!(service_env_path("PATH=/a:/b").as_deref(), Some("/a:/b"));
    assert_eq!(service_env_path(""), None);
    let found = Lookup {
        program: "ssh",
        package: Package::OpenSsh,
        service: Some(PathBuf::from("/opt/q/bin/ssh")),
        here: Some(PathBuf::from("/opt/q/bin/ssh")),
    };
    let ok = service_path("/opt/q/bin", PathSource::Service, &[found], "x");
    assert!(
        ok.verdict.contains("castrad.service's Environment="),
        "{ok:?}"
    );
}

#[test]
fn units_found_missing_or_pointing_nowhere() {
    let dirs = [
        PathBuf::from("/home/a/.config/systemd/user"),
        PathBuf::from("/usr/lib/systemd/user"),
    ];
    let socket = Path::new("/usr/lib/systemd/user/castrad.socket");
    let service = Path::new("/usr/lib/systemd/user/castrad.service");
    let ok = units(
        &dirs,
        Some(socket),
        Some(service),
        Some(("/usr/bin/castrad".into(), true)),
    );
    assert_eq!(ok.status, CheckStatus::Ok, "{ok:?}");
    assert_eq!(
        ok.verdict,
        "castrad.socket and castrad.service in /usr/lib/systemd/user (starting /usr/bin/castrad)"
    );
    let gone = units(
        &dirs,
        Some(socket),
        Some(service),
        Some(("/home/a/.local/bin/castrad".into(), false)),
    );
    assert_eq!(gone.status, CheckStatus::Warn, "{gone:?}");
    assert!(
        gone.verdict
            .ends_with("starts /home/a/.local/bin/castrad, which does not exist"),
        "{gone:?}"
    );
    let none = units(&dirs, None, Some(service), None);
    assert_eq!(none.status, CheckStatus::Warn, "{none:?}");
    assert_eq!(
        none.verdict,
        "castrad's user units are not installed: no castrad.socket in \
         /home/a/.config/systemd/user, /usr/lib/systemd/user"
    );
    assert!(none.fix.unwrap().contains("scripts/install"));
}

#[test]
fn the_socket_is_enabled_or_says_how_to_start_castrad() {
    let enabled = socket_enabled("alice", &run(true, "enabled\n", ""));
    assert_eq!(enabled.status, CheckStatus::Ok, "{enabled:?}");
    for state in ["disabled", "masked", "static"] {
        let off = socket_enabled("alice", &run(false, &format!("{state}\n"), ""));
        assert_eq!(off.status, CheckStatus::Warn, "{off:?}");
        assert!(off.verdict.contains(state), "{off:?}");
        assert_eq!(off.fix.as_deref(), Some(START_CASTRAD));
    }
    // Older systemd says so on stderr, newer prints not-found.
    for unknown in [
        run(
            false,
            "",
            "Failed to get unit file state for castrad.socket: No such file or directory\n",
        ),
        run(false, "not-found\n", ""),
    ] {
        let check = socket_enabled("alice", &unknown);
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        assert!(check.verdict.contains("does not know"), "{check:?}");
        assert!(check.fix.unwrap().ends_with(START_CASTRAD));
    }
    // su, sudo, a shell without a session: no user manager to ask.
    let nobus = socket_enabled(
        "alice",
        &run(
            false,
            "",
            "Failed to connect to bus: $DBUS_SESSION_BUS_ADDRESS and $XDG_RUNTIME_DIR not \
             defined\n",
        ),
    );
    assert_eq!(nobus.status, CheckStatus::Warn, "{nobus:?}");
    assert!(
        nobus.verdict.contains("does not answer") && nobus.verdict.contains("Failed to connect"),
        "{nobus:?}"
    );
    let fix = nobus.fix.unwrap();
    assert!(
        fix.contains("loginctl enable-linger alice") && fix.ends_with(START_CASTRAD),
        "{fix}"
    );
    // A bus socket that is not there is the manager's absence, not the unit's.
    let nosocket = socket_enabled(
        "alice",
        &run(
            false,
            "",
            "Failed to connect to bus: No such file or directory\n",
        ),
    );
    assert!(nosocket.verdict.contains("does not answer"), "{nosocket:?}");
    let missing = socket_enabled("alice", &Err("cannot run systemctl: not found".into()));
    assert_eq!(missing.status, CheckStatus::Warn, "{missing:?}");
}

#[test]
fn lingering_off_is_a_warning_with_the_command() {
    assert_eq!(linger("alice", true).status, CheckStatus::Ok);
    let off = linger("alice", false);
    assert_eq!(off.status, CheckStatus::Warn);
    assert!(
        off.verdict.contains("/var/lib/systemd/linger/alice"),
        "{off:?}"
    );
    assert_eq!(
        off.fix.as_deref(),
        Some("sudo loginctl enable-linger alice (if VMs should outlive your sessions)")
    );
    // Without systemd: the same four checks, the socket's a warning saying how castrad starts.
    let none = no_systemd("tini");
    let names: Vec<&str> = none.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(names, ["units", "socket", "linger", "service-path"]);
    let socket = &none[1];
    assert_eq!(socket.status, CheckStatus::Warn);
    assert!(socket.verdict.contains("PID 1 is `tini`"), "{socket:?}");
    assert_eq!(socket.fix.as_deref(), Some(START_CASTRAD));
    for moot in [&none[0], &none[2], &none[3]] {
        assert_eq!(moot.status, CheckStatus::Ok, "{moot:?}");
        assert!(moot.verdict.starts_with("does not apply"), "{moot:?}");
    }
}

#[test]
fn the_services_path_must_find_what_castrad_runs() {
    assert_eq!(
        path_of("HOME=/home/a\nPATH=/usr/local/bin:/usr/bin\nLANG=C.UTF-8\n").as_deref(),
        Some("/usr/local/bin:/usr/bin")
    );
    assert_eq!(path_of("HOME=/home/a\n"), None);
    let found = |program, dir: &str| Lookup {
        program,
        package: Package::Qemu,
        service: Some(Path::new(dir).join(program)),
        here: Some(Path::new(dir).join(program)),
    };
    let all = [
        found("qemu-system-x86_64", "/usr/bin"),
        found("ssh", "/usr/bin"),
    ];
    let ok = service_path("/usr/bin", PathSource::Manager, &all, "unused");
    assert_eq!(ok.status, CheckStatus::Ok, "{ok:?}");
    assert!(
        ok.verdict.contains("finds qemu-system-x86_64, ssh"),
        "{ok:?}"
    );

    // QEMU built into /opt: the shell finds it, a service would not.
    let opt = Lookup {
        service: None,
        ..found("qemu-system-x86_64", "/opt/qemu/bin")
    };
    let shell_only = service_path(
        "/usr/bin",
        PathSource::Default,
        &[opt.clone(), all[1].clone()],
        "x",
    );
    assert_eq!(shell_only.status, CheckStatus::Warn, "{shell_only:?}");
    assert!(
        shell_only
            .verdict
            .contains("would not find qemu-system-x86_64 (PATH=/usr/bin, systemd's default"),
        "{shell_only:?}"
    );
    let fix = shell_only.fix.unwrap();
    assert!(
        fix.contains("Environment=\"PATH=/opt/qemu/bin:/usr/bin\""),
        "{fix}"
    );
    // Nowhere at all: install it.
    let nowhere = Lookup { here: None, ..opt };
    let install = "on Fedora Linux 44: sudo dnf install qemu-system-x86";
    let check = service_path("/usr/bin", PathSource::Manager, &[nowhere], install);
    assert_eq!(
        check.fix.as_deref(),
        Some("install them: on Fedora Linux 44: sudo dnf install qemu-system-x86")
    );
}
