//! `load`: referenced files must exist, bootstrap.toml is merged, errors name their file.

use super::*;

fn write(root: &Path, rel: &str, contents: &str) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, contents).expect("write");
    path
}

/// A canonical temp dir (so expected paths match `load`'s canonical config path).
fn temp_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(dir.path()).expect("canonicalize");
    (dir, root)
}

const LOAD_CONFIG: &str = concat!(
    "[project]\nname = \"demo\"\n",
    "[bootstrap.env]\nA = \"global\"\nB = \"global\"\nC = \"global\"\n",
    "[[vms]]\nname = \"web\"\nbase_image = \"images/base.qcow2\"\nreplicas = 2\n",
    "[vms.ssh]\nuser = \"castra\"\nidentity = \"keys/castra_id\"\n",
    "options = [\"Compression=yes\"]\n",
    "[vms.bootstrap]\nscript = \"bootstrap/run.sh\"\npayload = \"payload\"\n",
    "[vms.bootstrap.env]\nB = \"vm\"\nC = \"vm\"\n",
    "[[vms]]\nname = \"plain\"\nbase_image = \"images/base.qcow2\"\n",
);

fn load_fixture(root: &Path, metadata: Option<&str>) -> PathBuf {
    write(root, "images/base.qcow2", "qcow");
    write(root, "bootstrap/run.sh", "#!/bin/sh\n");
    fs::create_dir_all(root.join("payload")).expect("mkdir");
    if let Some(metadata) = metadata {
        write(root, "bootstrap/bootstrap.toml", metadata);
    }
    write(root, "castra.toml", LOAD_CONFIG)
}

#[test]
fn load_merges_bootstrap_toml() {
    let (_guard, root) = temp_root();
    let metadata = concat!(
        "[ssh]\nport = 2222\nidentity = \"meta_key\"\noptions = [\"ServerAliveInterval=5\"]\n",
        "[env]\nC = \"meta\"\nD = \"meta\"\n",
    );
    let config = load_fixture(&root, Some(metadata));
    let p = load(&config).expect("valid project");
    assert_eq!(p.config_path, config);
    let env: BTreeMap<String, String> =
        [("A", "global"), ("B", "vm"), ("C", "meta"), ("D", "meta")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for vm in &p.vms[..2] {
        assert_eq!(vm.bootstrap.env, env, "{}", vm.name);
        let want = Ssh {
            host: Some("127.0.0.1".into()),
            port: Some(2222),
            user: Some("castra".into()),
            identity: Some(root.join("bootstrap/meta_key")),
            options: vec!["Compression=yes".into(), "ServerAliveInterval=5".into()],
        };
        assert_eq!(vm.ssh, want, "{}", vm.name);
        assert_eq!(
            vm.bootstrap.metadata_path,
            Some(root.join("bootstrap/bootstrap.toml"))
        );
        assert_eq!(vm.bootstrap.payload, Some(root.join("payload")));
    }
    let plain = &p.vms[2];
    assert_eq!(plain.bootstrap.metadata_path, None);
    assert_eq!(
        plain.bootstrap.env.get("C").map(String::as_str),
        Some("global")
    );
    assert_eq!(plain.ssh.identity, None);
}

#[test]
fn load_without_bootstrap_toml_keeps_castra_toml_values() {
    let (_guard, root) = temp_root();
    let config = load_fixture(&root, None);
    let p = load(&config).expect("valid project");
    let vm = &p.vms[0];
    assert_eq!(vm.bootstrap.metadata_path, None);
    assert_eq!(vm.ssh.identity, Some(root.join("keys/castra_id")));
    assert_eq!(vm.bootstrap.env.get("C").map(String::as_str), Some("vm"));
    // parse gives the same result when there is no bootstrap.toml.
    let text = fs::read_to_string(&config).expect("read");
    assert_eq!(parse(&config, &text).expect("valid"), p);
}

#[test]
fn load_canonicalizes_the_config_path() {
    let (_guard, root) = temp_root();
    let config = load_fixture(&root, None);
    let roundabout = root.join("images/../castra.toml");
    let p = load(&roundabout).expect("valid project");
    assert_eq!(p.config_path, config);
    assert_eq!(
        p.vms[0].base_image,
        Some(BaseImage::path(root.join("images/base.qcow2")))
    );
}

#[test]
fn bootstrap_toml_errors_name_that_file() {
    let cases = [
        (
            "[ssh]\nhots = \"h\"\n",
            "ssh",
            "unknown key `hots`; did you mean `host`?",
            2,
            1,
        ),
        (
            "shh = 1\n",
            "",
            "unknown top-level key `shh`; did you mean `ssh`?",
            1,
            1,
        ),
        (
            "[env]\nCASTRA_X = \"1\"\n",
            "env.CASTRA_X",
            "reserved prefix CASTRA_",
            2,
            1,
        ),
        (
            "[env]\nX = 1\n",
            "env.X",
            "expected a string, found an integer",
            2,
            5,
        ),
        (
            "[ssh]\nport = \"22\"\n",
            "ssh.port",
            "expected an integer",
            2,
            8,
        ),
        (
            "[ssh]\noptions = [\"x\"]\n",
            "ssh.options[0]",
            "invalid ssh option",
            2,
            12,
        ),
        (
            "[ssh]\noptions = [\"Compression=yes\", \"ProxyCommand=touch /tmp/x\"]\n",
            "ssh.options[1]",
            "ssh option `ProxyCommand` is not allowed in a project file",
            2,
            31,
        ),
        ("[ssh\n", "", "TOML syntax error", 1, 5),
    ];
    for (metadata, key, needle, line, col) in cases {
        let (_guard, root) = temp_root();
        let config = load_fixture(&root, Some(metadata));
        let e = load(&config).expect_err(metadata);
        let file = root.join("bootstrap/bootstrap.toml");
        assert_error_at(&e, &file, key, needle, line, col);
    }
}

#[test]
fn load_checks_that_referenced_files_exist() {
    // (text in LOAD_CONFIG, replacement, key, message, line, column)
    let cases = [
        (
            "bootstrap/run.sh",
            "bootstrap/gone.sh",
            "vms[0].bootstrap.script",
            "does not exist",
            16,
            10,
        ),
        (
            "payload = \"payload\"",
            "payload = \"gone\"",
            "vms[0].bootstrap.payload",
            "does not exist",
            17,
            11,
        ),
    ];
    for (from, to, key, message, line, col) in cases {
        let (_guard, root) = temp_root();
        let config = load_fixture(&root, None);
        let broken = LOAD_CONFIG.replacen(from, to, 1);
        assert_ne!(broken, LOAD_CONFIG);
        fs::write(&config, &broken).expect("write");
        let e = load(&config).expect_err(key);
        assert_error_at(&e, &config, key, message, line, col);
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
    }
    // The base image is not stat'ed: a disk made on the image store's copy outlives the
    // user's file (a disk still to be made checks it: the planner, preflight).
    let (_guard, root) = temp_root();
    let config = load_fixture(&root, None);
    let gone = LOAD_CONFIG.replacen("images/base.qcow2", "images/gone.qcow2", 1);
    fs::write(&config, &gone).expect("write");
    let p = load(&config).expect("a missing base image file loads");
    assert_eq!(
        p.vms[0].base_image.as_ref().and_then(|b| b.file()),
        Some(root.join("images/gone.qcow2").as_path())
    );
}

#[test]
fn load_checks_kernel_initrd_and_file_kinds() {
    let (_guard, root) = temp_root();
    write(&root, "img", "x");
    write(&root, "vmlinuz", "x");
    fs::create_dir_all(root.join("dir")).expect("mkdir");
    let base = "[project]\nname = \"demo\"\n[[vms]]\nname = \"web\"\nbase_image = \"img\"\n";
    let cases = [
        ("kernel = \"nope\"\n", "vms[0].kernel", "does not exist", 10),
        (
            "kernel = \"vmlinuz\"\ninitrd = \"nope\"\n",
            "vms[0].initrd",
            "does not exist",
            10,
        ),
        (
            "kernel = \"dir\"\n",
            "vms[0].kernel",
            "is a directory; expected a regular file",
            10,
        ),
        (
            "[vms.bootstrap]\nscript = \"dir\"\n",
            "vms[0].bootstrap.script",
            "is a directory",
            10,
        ),
    ];
    for (tail, key, message, col) in cases {
        let config = write(&root, "castra.toml", &format!("{base}{tail}"));
        let line = 5 + tail.lines().count();
        let e = load(&config).expect_err(tail);
        assert_error_at(&e, &config, key, message, line, col);
    }
    let good = format!("{base}kernel = \"vmlinuz\"\n[vms.bootstrap]\npayload = \"dir\"\n");
    let config = write(&root, "castra.toml", &good);
    let p = load(&config).expect("payload may be a directory");
    assert_eq!(p.vms[0].kernel, Some(root.join("vmlinuz")));
}

#[test]
fn load_reports_unreadable_config() {
    let (_guard, root) = temp_root();
    let missing = root.join("castra.toml");
    let e = load(&missing).expect_err("missing file");
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert_eq!(e.location(), None);
    assert_eq!(e.path(), missing);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read file", missing.display()))
    );
    // Issue 24: a castra.toml that is not there says how to make one; other files do not.
    assert!(
        e.to_string()
            .ends_with("(`castractl init` writes one for a cloud image)")
    );
    let other = load(&root.join("project.toml")).expect_err("missing file");
    assert!(!other.to_string().contains("castractl init"), "{other}");
}

#[test]
fn discover_walks_up() {
    let (_guard, root) = temp_root();
    let nested = root.join("a/b/c");
    fs::create_dir_all(&nested).expect("mkdir");
    assert_eq!(discover(&nested).filter(|p| p.starts_with(&root)), None);
    let top = write(&root, "castra.toml", "");
    assert_eq!(discover(&nested), Some(top.clone()));
    assert_eq!(discover(&root), Some(top));
    let middle = write(&root, "a/castra.toml", "");
    assert_eq!(discover(&nested), Some(middle.clone()));
    // A directory named castra.toml is not a project file.
    fs::create_dir_all(root.join("a/b/castra.toml")).expect("mkdir");
    assert_eq!(discover(&nested), Some(middle));
}
