//! What a valid castra.toml becomes: defaults, names, replicas, precedence, paths.

use super::*;
use crate::config::diagnostics::line_col;

#[test]
fn invalid_vm_names_are_rejected() {
    let names = [
        vm_named!("\"Web\""),
        vm_named!("\"a/b\""),
        vm_named!("\"..\""),
        vm_named!("\"\""),
        vm_named!("\"-web\""),
        vm_named!("\"we b\""),
        vm_named!("\"wéb\""),
        vm_named!("\"web_1\""),
        vm_named!("\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
    ];
    for text in names {
        assert_parse_error(text, "vms[0].name", "invalid VM name", 5, 8);
        assert!(err(text).to_string().contains(NAME_RULES), "{text}");
    }
}

#[test]
fn valid_edge_names_are_accepted() {
    let sixty_three = "a".repeat(63);
    assert!(is_valid_name(&sixty_three));
    assert!(!is_valid_name(&"a".repeat(64)));
    assert!(is_valid_name("0web-1"));
    let p = ok(vm_named!("\"0-web-\""));
    assert_eq!(p.vms[0].name, "0-web-");
    // 61 characters + "-9" = 63: fits.
    let p = ok(concat!(
        vm_named!("\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
        "replicas = 10\n"
    ));
    assert_eq!(p.vms[9].name.len(), 63);
}

#[test]
fn external_vms_reject_lifecycle_keys() {
    let ssh = "[vms.ssh]\nhost = \"db.example\"\n";
    let cases = [
        ("base_image = \"x\"\n", "base_image", 14),
        ("kernel = \"k\"\n", "kernel", 10),
        ("initrd = \"i\"\n", "initrd", 10),
        ("cmdline = \"c\"\n", "cmdline", 11),
        ("ephemeral = true\n", "ephemeral", 13),
        ("accel = \"tcg\"\n", "accel", 9),
        ("cpus = 4\n", "cpus", 8),
        ("memory = \"1 GiB\"\n", "memory", 10),
        ("serial_log_max = 1\n", "serial_log_max", 18),
        (
            "[[vms.port_forwards]]\nhost = 1\nguest = 2\n",
            "port_forwards",
            1,
        ),
    ];
    for (line7, key, col) in cases {
        let text = format!("{}{line7}{ssh}", ext!());
        let key = format!("vms[0].{key}");
        let needle = "external VMs have no lifecycle";
        assert_parse_error(&text, &key, needle, 7, col);
    }
    let p = ok(&format!("{}ephemeral = false\n{ssh}", ext!()));
    assert!(!p.vms[0].ephemeral);
}

#[test]
fn memory_sizes() {
    let good: &[(&str, u64)] = &[
        ("\"2 GiB\"", 2048),
        ("\"512 MiB\"", 512),
        ("\"2GiB\"", 2048),
        ("\"1024 MiB\"", 1024),
        ("\"2G\"", 2048),
        ("\"512M\"", 512),
        ("\"3 gib\"", 3072),
        ("\" 1 TiB \"", 1024 * 1024),
        ("\"1024\"", 1024),
        ("4096", 4096),
    ];
    for (value, mib) in good {
        let p = ok(&format!("{}memory = {value}\n", head!()));
        assert_eq!(p.vms[0].memory_mib, *mib, "memory = {value}");
    }
    let bad = [
        "\"0\"",
        "0",
        "-1",
        "\"lots\"",
        "\"2 GB\"",
        "\"1.5 GiB\"",
        "\"-5 GiB\"",
        "\"\"",
        "\"GiB\"",
        "\"0 GiB\"",
    ];
    for value in bad {
        let text = format!("{}memory = {value}\n", head!());
        let needle = "expected an integer number of MiB (e.g. 2048) or a size like \"512 MiB\"";
        assert_parse_error(&text, "vms[0].memory", needle, 7, 10);
    }
    let huge = format!("{}memory = \"99999999999999999 TiB\"\n", head!());
    assert_parse_error(&huge, "vms[0].memory", "is too large", 7, 10);
}

#[test]
fn defaults_for_a_minimal_qemu_vm() {
    let p = ok(head!());
    assert_eq!(p.config_path, PathBuf::from(PATH));
    assert_eq!(p.name, "demo");
    assert_eq!(p.version, None);
    assert_eq!(p.bootstrap_defaults, BootstrapDefaults::default());
    assert_eq!(p.bootstrap_defaults.handshake_timeout_secs, 120);
    assert_eq!(p.bootstrap_defaults.remote_dir, "/var/tmp/castra/{vm}");
    let expected = Vm {
        name: "web".into(),
        declared_name: "web".into(),
        replica: None,
        description: None,
        backend: BackendKind::Qemu,
        base_image: Some(BaseImage::path("/p/img.qcow2")),
        image_mirror: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        cpus: 2,
        memory_mib: 2048,
        ephemeral: false,
        accel: crate::config::AccelSetting::Auto,
        port_forwards: vec![],
        disk_mib: None,
        firmware: crate::config::Firmware::Bios,
        serial_log_max_bytes: 64 << 20,
        libvirt: None,
        cloud_init: crate::config::CloudInit {
            enabled: true,
            ..Default::default()
        },
        network: None,
        mounts: Vec::new(),
        ssh: Ssh {
            host: Some("127.0.0.1".into()),
            ..Ssh::default()
        },
        bootstrap: Bootstrap {
            mode: BootstrapMode::Auto,
            script: None,
            payload: None,
            verify_command: None,
            verify_path: None,
            handshake_timeout_secs: 120,
            apply_timeout_secs: 3600,
            verify_timeout_secs: 60,
            output_log_max_bytes: 64 << 20,
            keep_run_logs: 50,
            remote_dir: "/var/tmp/castra/web".into(),
            env: BTreeMap::new(),
            metadata_path: None,
            vizier_dir: None,
        },
    };
    assert_eq!(p.vms, vec![expected]);
}

#[test]
fn project_without_vms_is_valid() {
    let p = ok("version = \"0.3\"\n[project]\nname = \"empty\"\n");
    assert_eq!(p.version.as_deref(), Some("0.3"));
    assert!(p.vms.is_empty());
}

#[test]
fn full_qemu_vm_is_read_verbatim() {
    let text = concat!(
        head!(),
        "description = \"Web tier\"\nkernel = \"boot/vmlinuz\"\ninitrd = \"boot/initrd\"\n",
        "cmdline = \"console=ttyS0\"\ncpus = 4\nephemeral = true\n",
        "port_forwards = [{ host = 8080, guest = 80 }, { host = 8080, guest = 80, protocol = \"udp\" }]\n",
        "[vms.ssh]\nport = 2200\nuser = \"castra\"\noptions = [\"ConnectionAttempts=3\"]\n",
        "[vms.bootstrap]\nmode = \"always\"\nscript = \"scripts/up.sh\"\npayload = \"payload\"\n",
        "verify_command = \"test -f done\"\nverify_path = \"state/./done\"\n",
    );
    let vm = &ok(text).vms[0];
    assert_eq!(vm.description.as_deref(), Some("Web tier"));
    assert_eq!(vm.kernel, Some(PathBuf::from("/p/boot/vmlinuz")));
    assert_eq!(vm.initrd, Some(PathBuf::from("/p/boot/initrd")));
    assert_eq!(vm.cmdline.as_deref(), Some("console=ttyS0"));
    assert_eq!((vm.cpus, vm.ephemeral), (4, true));
    let tcp = PortForward {
        host: 8080,
        guest: 80,
        protocol: Protocol::Tcp,
    };
    let udp = PortForward {
        host: 8080,
        guest: 80,
        protocol: Protocol::Udp,
    };
    assert_eq!(vm.port_forwards, vec![tcp, udp]);
    assert_eq!(vm.ssh.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(vm.ssh.port, Some(2200));
    assert_eq!(vm.ssh.user.as_deref(), Some("castra"));
    assert_eq!(vm.ssh.options, vec!["ConnectionAttempts=3".to_owned()]);
    assert_eq!(vm.bootstrap.mode, BootstrapMode::Always);
    assert_eq!(vm.bootstrap.script, Some(PathBuf::from("/p/scripts/up.sh")));
    assert_eq!(vm.bootstrap.payload, Some(PathBuf::from("/p/payload")));
    assert_eq!(vm.bootstrap.verify_command.as_deref(), Some("test -f done"));
    assert_eq!(vm.bootstrap.verify_path.as_deref(), Some("state/./done"));
}

#[test]
fn external_vm_defaults() {
    let p = ok(concat!(
        ext!(),
        "[vms.ssh]\nhost = \"db.example\"\nuser = \"ops\"\n"
    ));
    let vm = &p.vms[0];
    assert_eq!(vm.backend, BackendKind::External);
    assert_eq!(vm.base_image, None);
    assert_eq!(vm.ssh.host.as_deref(), Some("db.example"));
    assert_eq!(vm.ssh.port, Some(22));
    assert_eq!(vm.ssh.user.as_deref(), Some("ops"));
    let p = ok(concat!(ext!(), "[vms.ssh]\nhost = \"db\"\nport = 2022\n"));
    assert_eq!(p.vms[0].ssh.port, Some(2022));
}

#[test]
fn replicas_expand_in_file_order() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\nreplicas = 3\n",
        "[[vms]]\nname = \"db\"\nbase_image = \"i\"\n",
        "[[vms]]\nname = \"cache\"\nbase_image = \"i\"\nreplicas = 1\n",
    );
    let p = ok(text);
    let names: Vec<_> = p.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2", "db", "cache"]);
    let replicas: Vec<_> = p.vms.iter().map(|v| v.replica).collect();
    assert_eq!(replicas, [Some(0), Some(1), Some(2), None, None]);
    assert!(p.vms[..3].iter().all(|v| v.declared_name == "web"));
    assert_eq!(p.vms[3].declared_name, "db");
}

#[test]
fn remote_dir_substitution_and_precedence() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[bootstrap]\nremote_dir = \"/srv/{vm}/work/{vm}\"\nhandshake_timeout_secs = 30\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\nreplicas = 2\n",
        "[[vms]]\nname = \"db\"\nbase_image = \"i\"\n",
        "[vms.bootstrap]\nremote_dir = \"/opt/castra-{vm}\"\nhandshake_timeout_secs = 5\n",
        "[[vms]]\nname = \"fixed\"\nbase_image = \"i\"\n",
        "[vms.bootstrap]\nremote_dir = \"/opt/shared\"\n",
    );
    let p = ok(text);
    assert_eq!(p.bootstrap_defaults.remote_dir, "/srv/{vm}/work/{vm}");
    assert_eq!(p.bootstrap_defaults.handshake_timeout_secs, 30);
    let dirs: Vec<_> = p
        .vms
        .iter()
        .map(|v| v.bootstrap.remote_dir.as_str())
        .collect();
    assert_eq!(
        dirs,
        [
            "/srv/web-0/work/web-0",
            "/srv/web-1/work/web-1",
            "/opt/castra-db",
            "/opt/shared"
        ]
    );
    let timeouts: Vec<_> = p
        .vms
        .iter()
        .map(|v| v.bootstrap.handshake_timeout_secs)
        .collect();
    assert_eq!(timeouts, [30, 30, 5, 30]);
}

#[test]
fn modes_and_disabled_alias() {
    for (written, mode) in [
        ("auto", BootstrapMode::Auto),
        ("skip", BootstrapMode::Skip),
        ("disabled", BootstrapMode::Skip),
        ("always", BootstrapMode::Always),
    ] {
        let text = format!("{}[vms.bootstrap]\nmode = \"{written}\"\n", head!());
        assert_eq!(ok(&text).vms[0].bootstrap.mode, mode, "{written}");
        assert_eq!(BootstrapMode::parse(written), Some(mode));
    }
    assert_eq!(BootstrapMode::parse("Skip"), None);
    assert_eq!(BootstrapMode::parse(""), None);
    assert_eq!(BootstrapMode::Skip.as_str(), "skip");
    for mode in [
        BootstrapMode::Auto,
        BootstrapMode::Skip,
        BootstrapMode::Always,
    ] {
        assert_eq!(BootstrapMode::parse(mode.as_str()), Some(mode));
    }
    assert_eq!(BackendKind::parse("external"), Some(BackendKind::External));
    assert_eq!(Protocol::parse("udp").map(Protocol::as_str), Some("udp"));
}

#[test]
fn env_precedence_global_then_vm() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[bootstrap.env]\nA = \"global\"\nB = \"global\"\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\n",
        "[vms.bootstrap.env]\nB = \"vm\"\nC = \"vm\"\n_under = \"\"\n",
        "[[vms]]\nname = \"db\"\nbase_image = \"i\"\n",
    );
    let p = ok(text);
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        p.bootstrap_defaults.env,
        env(&[("A", "global"), ("B", "global")])
    );
    let want = env(&[("A", "global"), ("B", "vm"), ("C", "vm"), ("_under", "")]);
    assert_eq!(p.vms[0].bootstrap.env, want);
    assert_eq!(
        p.vms[1].bootstrap.env,
        env(&[("A", "global"), ("B", "global")])
    );
}

#[test]
fn paths_resolve_against_the_config_directory() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[[vms]]\nname = \"a\"\nbase_image = \"./images/a.qcow2\"\n",
        "[vms.ssh]\nidentity = \"keys/id\"\n",
        "[[vms]]\nname = \"b\"\nbase_image = \"/abs/b.qcow2\"\n",
        "[[vms]]\nname = \"c\"\nbase_image = \"~/c.qcow2\"\n",
        "[[vms]]\nname = \"d\"\nbase_image = \"../shared/d.qcow2\"\n",
    );
    let p = parse(Path::new("/proj/sub/castra.toml"), text).expect("valid");
    let images: Vec<_> = p
        .vms
        .iter()
        .filter_map(|v| v.base_image.as_ref()?.file().map(Path::to_owned))
        .collect();
    let want: Vec<PathBuf> = [
        "/proj/sub/images/a.qcow2",
        "/abs/b.qcow2",
        "/proj/sub/~/c.qcow2",
        "/proj/sub/../shared/d.qcow2",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(images, want);
    assert_eq!(
        p.vms[0].ssh.identity,
        Some(PathBuf::from("/proj/sub/keys/id"))
    );
}

#[test]
fn identity_tilde_expands_to_home() {
    let text = format!("{}[vms.ssh]\nidentity = \"~/.ssh/castra\"\n", head!());
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => {
            let want = Path::new(&home).join(".ssh/castra");
            assert_eq!(ok(&text).vms[0].ssh.identity, Some(want));
        }
        None => assert_parse_error(&text, "vms[0].ssh.identity", "HOME", 8, 12),
    }
}

#[test]
fn relative_config_path_is_made_absolute() {
    let p = parse(Path::new("rel/castra.toml"), head!()).expect("valid");
    assert!(p.config_path.is_absolute());
    assert!(p.config_path.ends_with("rel/castra.toml"));
    let image = p.vms[0].base_image.clone();
    assert_eq!(
        image,
        Some(BaseImage::path(p.config_path.with_file_name("img.qcow2")))
    );
}

#[test]
fn reordering_keys_gives_an_equal_project() {
    let a = concat!(
        "version = \"1\"\n",
        "[project]\nname = \"demo\"\n",
        "[bootstrap]\nremote_dir = \"/srv/{vm}\"\n[bootstrap.env]\nX = \"1\"\nY = \"2\"\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\ncpus = 3\nmemory = \"1 GiB\"\nreplicas = 2\n",
        "[vms.ssh]\nuser = \"u\"\nport = 2222\n",
        "[vms.bootstrap]\nmode = \"skip\"\nscript = \"s.sh\"\n",
        "[[vms]]\nname = \"db\"\nbackend = \"external\"\nssh = { host = \"h\", user = \"x\" }\n",
    );
    let b = concat!(
        "[[vms]]\nreplicas = 2\nmemory = 1024\ncpus = 3\nbase_image = \"./i\"\nname = \"web\"\n",
        "bootstrap = { script = \"s.sh\", mode = \"disabled\" }\n",
        "ssh.port = 2222\nssh.user = \"u\"\n",
        "[[vms]]\nssh.user = \"x\"\nssh.host = \"h\"\nname = \"db\"\nbackend = \"external\"\n",
        "[bootstrap]\nenv = { Y = \"2\", X = \"1\" }\nremote_dir = \"/srv/{vm}\"\n",
        "[project]\nname = \"demo\"\n",
    );
    let b = format!("version = \"1\"\n{b}");
    let (pa, pb) = (ok(a), ok(&b));
    assert_eq!(pa.vms.len(), 3);
    assert_eq!(pa, pb);
    // And a real difference is noticed.
    assert_ne!(pa, ok(&b.replace("cpus = 3", "cpus = 4")));
}

#[test]
fn line_col_counts_characters() {
    let text = "ab\ncdé\nfg";
    assert_eq!(line_col(text, 0), (1, 1));
    assert_eq!(line_col(text, 3), (2, 1));
    assert_eq!(line_col(text, 5), (2, 3));
    assert_eq!(line_col(text, 7), (2, 4)); // after the two-byte 'é'
    assert_eq!(line_col(text, 6), (2, 3)); // inside 'é': clamps back
    assert_eq!(line_col(text, 100), (3, 3));
}

#[test]
fn parse_does_no_io() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("bootstrap.toml"), "bogus = 1\n").expect("write");
    let config = dir.path().join("castra.toml");
    let text = format!("{}[vms.bootstrap]\nscript = \"run.sh\"\n", head!());
    let p = parse(&config, &text).expect("parse neither stats nor reads bootstrap.toml");
    assert_eq!(p.vms[0].bootstrap.metadata_path, None);
    assert_eq!(p.vms[0].bootstrap.script, Some(dir.path().join("run.sh")));
}

#[test]
fn disk_firmware_and_cloud_init_are_read_and_checked() {
    let text = format!(
        "{}disk = \"20 GiB\"\nfirmware = \"uefi\"\n[vms.cloud_init]\nenabled = true\n\
         authorized_keys = [\"keys/me.pub\", \"~/.ssh/id_ed25519.pub\"]\n\
         user_data = \"cloud/user-data.yaml\"\n",
        head!()
    );
    let vm = &ok(&text).vms[0];
    assert_eq!(vm.disk_mib, Some(20 * 1024));
    assert_eq!(vm.firmware, crate::config::Firmware::Uefi);
    assert!(vm.cloud_init.enabled);
    let home = std::env::var("HOME").unwrap();
    assert_eq!(
        vm.cloud_init.authorized_keys,
        [
            PathBuf::from("/p/keys/me.pub"),
            PathBuf::from(format!("{home}/.ssh/id_ed25519.pub"))
        ]
    );
    assert_eq!(
        vm.cloud_init.user_data.as_deref(),
        Some(Path::new("/p/cloud/user-data.yaml"))
    );
    let off = format!("{}[vms.cloud_init]\nenabled = false\n", head!());
    assert!(!ok(&off).vms[0].cloud_init.enabled);

    assert_parse_error(
        &format!("{}disk = \"lots\"\n", head!()),
        "vms[0].disk",
        "invalid disk size \"lots\"; expected a size like \"20 GiB\"",
        7,
        8,
    );
    assert_parse_error(
        &format!("{}firmware = \"coreboot\"\n", head!()),
        "vms[0].firmware",
        "unknown firmware \"coreboot\"; expected \"bios\" or \"uefi\"",
        7,
        12,
    );
    assert_parse_error(
        &format!("{}[vms.cloud_init]\nenable = true\n", head!()),
        "vms[0].cloud_init",
        "unknown key `enable`; did you mean `enabled`?",
        8,
        1,
    );
    let external = format!(
        "{}[vms.ssh]\nhost = \"h\"\n[vms.cloud_init]\nenabled = true\n",
        ext!()
    );
    assert_parse_error(
        &external,
        "vms[0].cloud_init",
        "`cloud_init` does not apply",
        9,
        1,
    );
    assert!(
        !ok(&format!("{}[vms.ssh]\nhost = \"h\"\n", ext!())).vms[0]
            .cloud_init
            .enabled
    );
}

#[test]
fn log_caps_and_retention_default_inherit_and_are_bounded() {
    let defaults = ok(head!());
    let b = &defaults.vms[0].bootstrap;
    assert_eq!((b.output_log_max_bytes, b.keep_run_logs), (64 << 20, 50));
    assert_eq!(defaults.vms[0].serial_log_max_bytes, 64 << 20);

    let text = concat!(
        "[project]\nname = \"demo\"\n[bootstrap]\noutput_log_max = 8\nkeep_run_logs = 3\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"img.qcow2\"\nserial_log_max = \"2 GiB\"\n",
        "[[vms]]\nname = \"db\"\nbase_image = \"img.qcow2\"\nserial_log_max = \"64KiB\"\n",
        "[vms.bootstrap]\noutput_log_max = \"256 KiB\"\nkeep_run_logs = 100\n",
    );
    let p = ok(text);
    assert_eq!(p.bootstrap_defaults.output_log_max_bytes, 8 << 20, "MiB");
    assert_eq!(p.bootstrap_defaults.keep_run_logs, 3);
    let (web, db) = (&p.vms[0], &p.vms[1]);
    assert_eq!(web.serial_log_max_bytes, 2 << 30);
    assert_eq!(
        (
            web.bootstrap.output_log_max_bytes,
            web.bootstrap.keep_run_logs
        ),
        (8 << 20, 3),
        "the global values"
    );
    assert_eq!(db.serial_log_max_bytes, 64 << 10);
    assert_eq!(
        (
            db.bootstrap.output_log_max_bytes,
            db.bootstrap.keep_run_logs
        ),
        (256 << 10, 100),
        "the VM's own"
    );

    let expected = "expected a size like \"64 MiB\" or \"256 KiB\", or an integer number of MiB";
    assert_parse_error(
        &format!("{}serial_log_max = 0\n", head!()),
        "vms[0].serial_log_max",
        &format!("serial_log_max must be between 1 KiB and 1 TiB, got 0; {expected}"),
        7,
        18,
    );
    assert_parse_error(
        &format!("{}[vms.bootstrap]\noutput_log_max = \"2 TiB\"\n", head!()),
        "vms[0].bootstrap.output_log_max",
        "output_log_max must be between 1 KiB and 1 TiB, got \"2 TiB\"",
        8,
        18,
    );
    assert_parse_error(
        &format!("{}[vms.bootstrap]\noutput_log_max = \"lots\"\n", head!()),
        "vms[0].bootstrap.output_log_max",
        &format!("invalid output_log_max \"lots\"; {expected}"),
        8,
        18,
    );
    assert_parse_error(
        &format!(
            "{}output_log_max = \"99999999999999 TiB\"\n",
            "[project]\nname = \"demo\"\n[bootstrap]\n"
        ),
        "bootstrap.output_log_max",
        "invalid output_log_max",
        4,
        18,
    );
    assert_parse_error(
        "[project]\nname = \"demo\"\n[bootstrap]\nkeep_run_logs = 0\n",
        "bootstrap.keep_run_logs",
        "keep_run_logs must be between 1 and 1000000, got 0",
        4,
        17,
    );
    assert_parse_error(
        &format!("{}[vms.bootstrap]\nkeep_run_logs = \"all\"\n", head!()),
        "vms[0].bootstrap.keep_run_logs",
        "integer",
        8,
        17,
    );
}
