//! `[[vms.mounts]]`: paths resolved and checked, every mistake located.

use super::*;

#[test]
fn mounts_resolve_the_host_path_and_normalize_the_guest_path() {
    let p = ok(concat!(
        head!(),
        "[[vms.mounts]]\nhost = \"src\"\nguest = \"/src/\"\nreadonly = false\n",
        "[[vms.mounts]]\nhost = \"/data/sets\"\nguest = \"/srv//./data\"\n",
    ));
    let m = &p.vms[0].mounts;
    assert_eq!(
        m,
        &vec![
            Mount {
                host: "/p/src".into(),
                guest: "/src".into(),
                readonly: false,
            },
            Mount {
                host: "/data/sets".into(),
                guest: "/srv/data".into(),
                readonly: true,
            },
        ]
    );
    assert!(ok(head!()).vms[0].mounts.is_empty());
}

#[test]
fn mount_mistakes_are_located() {
    let cases: &[Case] = &[
        (
            "relative guest path",
            concat!(head!(), "[[vms.mounts]]\nhost = \"src\"\nguest = \"src\"\n"),
            "vms[0].mounts[0].guest",
            "must be an absolute path in the guest",
            9,
            9,
        ),
        (
            "the guest's root",
            concat!(head!(), "[[vms.mounts]]\nhost = \"src\"\nguest = \"//\"\n"),
            "vms[0].mounts[0].guest",
            "not the root itself",
            9,
            9,
        ),
        (
            "dot-dot",
            concat!(
                head!(),
                "[[vms.mounts]]\nhost = \"src\"\nguest = \"/a/../etc\"\n"
            ),
            "vms[0].mounts[0].guest",
            "must not contain `..`",
            9,
            9,
        ),
        (
            "a newline",
            concat!(
                head!(),
                "[[vms.mounts]]\nhost = \"src\"\nguest = \"/a\\nb\"\n"
            ),
            "vms[0].mounts[0].guest",
            "control characters",
            9,
            9,
        ),
        (
            "the same guest path twice",
            concat!(
                head!(),
                "[[vms.mounts]]\nhost = \"a\"\nguest = \"/src\"\n",
                "[[vms.mounts]]\nhost = \"b\"\nguest = \"/src/\"\n"
            ),
            "vms[1].mounts[1].guest",
            "already mounted by mounts[0]",
            12,
            9,
        ),
        (
            "an empty host path",
            concat!(head!(), "[[vms.mounts]]\nhost = \"\"\nguest = \"/src\"\n"),
            "vms[0].mounts[0].host",
            "expected a path",
            8,
            8,
        ),
        (
            "a comma in the host path",
            concat!(head!(), "[[vms.mounts]]\nhost = \"a,b\"\nguest = \"/a\"\n"),
            "vms[0].mounts[0].host",
            "contains a comma",
            8,
            8,
        ),
        (
            "a backslash in the host path (issue 25: virtiofsd reads `\\056\\056` as `..`)",
            concat!(
                head!(),
                "[[vms.mounts]]\nhost = 'src/\\056\\056'\nguest = \"/a\"\n"
            ),
            "vms[0].mounts[0].host",
            "host path /p/src/\\056\\056 contains a backslash, which virtiofsd's options read as \
             an escape",
            8,
            8,
        ),
        (
            "an unknown key",
            concat!(
                head!(),
                "[[vms.mounts]]\nhost = \"a\"\nguest = \"/a\"\nro = true\n"
            ),
            "vms[0].mounts[0]",
            "ro",
            10,
            1,
        ),
        (
            "an external VM",
            concat!(
                ext!(),
                "[vms.ssh]\nhost = \"db.example\"\n",
                "[[vms.mounts]]\nhost = \"a\"\nguest = \"/a\"\n"
            ),
            "vms[0].mounts",
            "`mounts` does not apply",
            9,
            1,
        ),
    ];
    for (what, text, key, needle, line, col) in cases {
        let e = err(text);
        let shown = e.to_string();
        // The duplicate case's key names the second mount of vms[0].
        let key = key.replace("vms[1]", "vms[0]");
        assert!(
            e.key() == Some(key.as_str()) || e.key().is_some_and(|k| k.starts_with(&key)),
            "{what}: key of {shown}"
        );
        assert!(shown.contains(needle), "{what}: {shown}");
        let (_, l, c) = e.location().expect("located");
        assert_eq!((l, c), (*line, *col), "{what}: {shown}");
    }
}

#[test]
fn load_wants_each_host_side_to_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    fs::write(root.join("img.qcow2"), "q").unwrap();
    fs::write(root.join("afile"), "f").unwrap();
    fs::create_dir(root.join("src")).unwrap();
    let config = root.join("castra.toml");
    let write = |mounts: &str| fs::write(&config, format!("{}{mounts}", head!())).unwrap();

    write("[[vms.mounts]]\nhost = \"src\"\nguest = \"/src\"\n");
    assert_eq!(
        load(&config).unwrap().vms[0].mounts[0].host,
        root.join("src")
    );

    write("[[vms.mounts]]\nhost = \"missing\"\nguest = \"/src\"\n");
    let e = load(&config).unwrap_err();
    assert_error_at(&e, &config, "vms[0].mounts[0].host", "does not exist", 8, 8);
    assert!(
        e.to_string()
            .contains(&*root.join("missing").to_string_lossy()),
        "{e}"
    );

    write(
        "[[vms.mounts]]\nhost = \"src\"\nguest = \"/src\"\n[[vms.mounts]]\nhost = \"afile\"\nguest = \"/f\"\n",
    );
    let e = load(&config).unwrap_err();
    assert_error_at(
        &e,
        &config,
        "vms[0].mounts[1].host",
        "is not a directory",
        11,
        8,
    );
}
