//! `backend = "libvirt"` and `[vms.libvirt]`: located errors, and what a valid entry becomes.

use super::errors::run_cases;
use super::*;

/// Lines 1-7 of a libvirt VM "web"; appended text starts on line 8.
macro_rules! lv {
    () => {
        "[project]\nname = \"demo\"\n\n[[vms]]\nname = \"web\"\nbackend = \"libvirt\"\nbase_image = \"/img.qcow2\"\n"
    };
}

#[test]
fn libvirt_mistakes_are_located() {
    run_cases(&[
        (
            "a base image path that is not absolute (it is on the hypervisor)",
            concat!(head!(), "backend = \"libvirt\"\n"),
            "vms[0].base_image",
            "must be an absolute path on the hypervisor",
            6,
            14,
        ),
        (
            "a transport castrad does not drive",
            concat!(lv!(), "[vms.libvirt]\nuri = \"qemu+tcp://h/system\"\n"),
            "vms[0].libvirt.uri",
            "invalid libvirt URI \"qemu+tcp://h/system\"",
            9,
            7,
        ),
        (
            "no_verify",
            concat!(
                lv!(),
                "[vms.libvirt]\nuri = \"qemu+ssh://h/system?no_verify=1\"\n"
            ),
            "vms[0].libvirt.uri",
            "castrad sets `no_verify` itself",
            9,
            7,
        ),
        (
            "upload = true keeps kernel a path on the hypervisor",
            concat!(
                lv!(),
                "kernel = \"vmlinuz\"\n[vms.libvirt]\nupload = true\n"
            ),
            "vms[0].kernel",
            "must be an absolute path on the hypervisor",
            8,
            10,
        ),
        (
            "upload must be a boolean",
            concat!(lv!(), "[vms.libvirt]\nupload = \"yes\"\n"),
            "vms[0].libvirt.upload",
            "expected a boolean",
            9,
            10,
        ),
        (
            "a pool name with a slash",
            concat!(lv!(), "[vms.libvirt]\npool = \"a/b\"\n"),
            "vms[0].libvirt.pool",
            "invalid pool name \"a/b\"",
            9,
            8,
        ),
        (
            "a fixed ssh port",
            concat!(lv!(), "[vms.ssh]\nport = 2222\n"),
            "vms[0].ssh.port",
            "`ssh.port` is not supported for libvirt VMs",
            9,
            8,
        ),
        (
            "a shared folder",
            concat!(lv!(), "[[vms.mounts]]\nhost = \".\"\nguest = \"/src\"\n"),
            "vms[0].mounts",
            "shared folders are not supported for libvirt VMs",
            8,
            1,
        ),
        (
            "an unknown key",
            concat!(lv!(), "[vms.libvirt]\nhost = \"x\"\n"),
            "vms[0].libvirt",
            "unknown key `host`; expected one of `uri`, `pool`, `upload`, `known_hosts`",
            9,
            1,
        ),
    ]);
}

#[test]
fn a_libvirt_table_on_a_qemu_vm_is_refused() {
    let e = err(concat!(
        head!(),
        "[vms.libvirt]\nuri = \"qemu:///session\"\n"
    ));
    assert_eq!(e.key(), Some("vms[0].libvirt"), "{e}");
    assert!(
        e.to_string()
            .contains("only applies to backend = \"libvirt\""),
        "{e}"
    );
}

#[test]
fn a_libvirt_vm_gets_its_defaults_and_a_remote_uri_is_understood() {
    let p = ok(lv!());
    let vm = &p.vms[0];
    assert_eq!(vm.backend, BackendKind::Libvirt);
    let l = vm.libvirt.as_ref().unwrap();
    assert_eq!(l.uri, "qemu:///session");
    assert_eq!(l.pool, "castra");
    assert_eq!(l.remote, None);
    assert_eq!(vm.ssh.host.as_deref(), Some("127.0.0.1"));
    assert!(vm.cloud_init.enabled);
    let p = ok(concat!(
        lv!(),
        "[vms.libvirt]\nuri = \"qemu+ssh://me@hv:2222/session\"\n"
    ));
    let remote = p.vms[0].libvirt.as_ref().unwrap().remote.clone().unwrap();
    assert_eq!(
        (remote.user.as_deref(), remote.host.as_str(), remote.port),
        (Some("me"), "hv", Some(2222))
    );
}

/// Issue 24: castrad makes only its own pool, only on this machine's session daemon.
#[test]
fn castrad_makes_its_own_pool_only_on_a_local_session_uri() {
    assert!(ok(lv!()).vms[0].libvirt.as_ref().unwrap().makes_own_pool());
    for (libvirt, makes) in [
        ("uri = \"qemu+unix:///session?socket=/run/s\"\n", true),
        ("uri = \"qemu:///session?socket=/tmp/x\"\n", true),
        ("uri = \"qemu:///system\"\n", false),
        ("uri = \"qemu+ssh://me@hv/session\"\n", false),
        ("pool = \"fast\"\n", false),
    ] {
        let p = ok(&format!("{}[vms.libvirt]\n{libvirt}", lv!()));
        let l = p.vms[0].libvirt.as_ref().unwrap();
        assert_eq!(l.makes_own_pool(), makes, "{libvirt}");
    }
}

#[test]
fn with_upload_the_base_image_is_a_file_on_this_machine() {
    // Relative, resolved against the castra.toml's directory like a qemu VM's.
    let p = ok(concat!(
        "[project]\nname = \"demo\"\n\n[[vms]]\nname = \"web\"\nbackend = \"libvirt\"\n",
        "base_image = \"images/base.qcow2\"\n[vms.libvirt]\nupload = true\n"
    ));
    let vm = &p.vms[0];
    assert!(vm.libvirt.as_ref().unwrap().upload);
    assert_eq!(
        vm.base_image.as_ref().and_then(|b| b.file()),
        Some(Path::new("/p/images/base.qcow2"))
    );
    assert!(!ok(lv!()).vms[0].libvirt.as_ref().unwrap().upload);

    // Not stat'ed by `load`: once in the image store, the file may go (a new disk checks it).
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("castra.toml");
    std::fs::write(
        &config,
        concat!(lv!(), "[vms.libvirt]\nupload = true\n").replace("/img.qcow2", "gone.img"),
    )
    .unwrap();
    assert!(load(&config).is_ok());
}
