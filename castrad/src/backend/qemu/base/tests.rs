//! The check before a start, on real files and real qcow2 overlays (qemu-img): a disk made
//! before the store is checked against its last stamp, a record that cannot be read refuses
//! the start, and the check once QEMU has the disk open sees a file changed meanwhile.

use std::path::Path;

use super::*;
use crate::stamps::Stamp;

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    crate::ids::hex(&sha2::Sha256::digest(bytes))
}

/// A plain VM (no kernel) whose disk is an overlay on `dir/base.img`, made as castrad made
/// disks before the image store (no record), and its last stamp saying which base it had.
fn pre_store_disk(dir: &Path) -> (StateRoot, Vm, VmPaths) {
    std::fs::write(dir.join("base.img"), vec![7u8; 1 << 20]).unwrap();
    let root = StateRoot::for_project(&dir.join("state"), "p", &dir.join("castra.toml"));
    let mut vm = crate::testutil::sample_vm(dir);
    vm.kernel = None;
    let paths = root.vm(&vm.name);
    crate::state_root::ensure_dir(&paths.dir).unwrap();
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(dir.join("base.img"))
        .arg(&paths.overlay)
        .status()
        .expect("qemu-img (package qemu-utils)");
    assert!(made.success());
    let stamp = Stamp {
        vm: vm.name.clone(),
        base_hash: sha(&vec![7u8; 1 << 20]),
        artifact_hash: "a".into(),
        disk_id: "d1".into(),
        run_id: "r1".into(),
        log_path: "/l.json".into(),
        completed_at: "2026-01-01T00:00:00.000Z".into(),
    };
    crate::stamps::write(&root, &stamp).unwrap();
    (root, vm, paths)
}

#[test]
fn a_disk_made_before_the_store_boots_while_its_base_is_what_its_stamp_says() {
    let dir = tempfile::tempdir().unwrap();
    let (root, vm, paths) = pre_store_disk(dir.path());
    check_existing(&root, &vm, &paths).unwrap();
    let record = disk::read(&paths.base_record).expect("a record from now on");
    assert_eq!(record.sha256, sha(&vec![7u8; 1 << 20]));
    assert!(!record.stored);
    check_opened(&vm.name, &paths).unwrap();
}

#[test]
fn a_disk_made_before_the_store_on_a_changed_base_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (root, vm, paths) = pre_store_disk(dir.path());
    // "latest" downloaded again over the file.
    std::fs::write(dir.path().join("base.img"), vec![8u8; 1 << 20]).unwrap();
    let e = check_existing(&root, &vm, &paths).unwrap_err().to_string();
    assert!(
        e.contains(&dir.path().join("base.img").display().to_string()),
        "{e}"
    );
    assert!(e.contains("not what run"), "{e}");
    assert!(
        !paths.base_record.exists(),
        "no record of a base that is not the disk's"
    );
}

#[test]
fn a_record_that_cannot_be_read_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (root, vm, paths) = pre_store_disk(dir.path());
    std::fs::write(&paths.base_record, b"{ not json").unwrap();
    let e = check_existing(&root, &vm, &paths).unwrap_err().to_string();
    assert!(e.contains("cannot be used"), "{e}");
    assert!(
        e.contains(&format!("castractl down {} --discard", vm.name)),
        "{e}"
    );
}

#[test]
fn a_base_changed_after_the_check_stops_the_guest_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let (root, vm, paths) = pre_store_disk(dir.path());
    check_existing(&root, &vm, &paths).unwrap();
    // Between the check and QEMU opening the file: a write (content, mtime, ctime).
    std::fs::write(dir.path().join("base.img"), vec![9u8; 1 << 20]).unwrap();
    let e = check_opened(&vm.name, &paths).unwrap_err().to_string();
    assert!(
        e.contains(&dir.path().join("base.img").display().to_string()),
        "{e}"
    );
}
