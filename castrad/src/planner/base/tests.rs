//! What a plan says of a VM's base image, from the disk's record, the store and the config.

use super::*;
use crate::images::{Check, Digest};
use crate::testutil::{fake_disk, sample_vm, store};

fn setup() -> (tempfile::TempDir, StateRoot, std::sync::Arc<Store>, Vm) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("base.img"), b"base image bytes").unwrap();
    let root = StateRoot::for_project(&d.join("state"), "p", &d.join("castra.toml"));
    let (vm, store) = (sample_vm(d), store(d));
    (dir, root, store, vm)
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    crate::ids::hex(&sha2::Sha256::digest(bytes))
}

#[test]
fn a_disk_is_known_by_its_record_and_nothing_is_read() {
    let (dir, root, store, vm) = setup();
    fake_disk(&root, "web", &dir.path().join("base.img"));
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    assert_eq!(f.sha256.as_deref(), Some(sha(b"base image bytes").as_str()));
    assert_eq!(f.bytes_read, 0);
    assert_eq!(f.plan.status, api::BaseImageStatus::Stored);
    assert!(f.plan.verified);
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
}

#[test]
fn a_changed_backing_file_is_announced_before_the_start_refuses_it() {
    let (dir, root, store, vm) = setup();
    let base = dir.path().join("base.img");
    fake_disk(&root, "web", &base);
    std::fs::remove_file(&base).unwrap();
    std::fs::write(&base, b"other bytes, longer").unwrap();
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    let text = f.warnings.join("\n");
    assert!(
        text.contains("refuses to boot the disk unless its content is unchanged"),
        "{text}"
    );
    assert!(text.contains("size 16 → 19 bytes"), "{text}");
    // The disk's base is still the one recorded: the stamp of its last run still holds.
    assert_eq!(f.sha256.as_deref(), Some(sha(b"base image bytes").as_str()));
}

#[test]
fn a_disk_made_before_the_store_says_how_to_move_it() {
    let (dir, root, store, vm) = setup();
    let paths = root.vm("web");
    crate::state_root::ensure_dir(&paths.dir).unwrap();
    std::fs::write(&paths.overlay, b"").unwrap();
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    assert_eq!(f.plan.status, api::BaseImageStatus::PredatesStore);
    assert_eq!(f.sha256.as_deref(), Some(sha(b"base image bytes").as_str()));
    assert_eq!(f.bytes_read, 16, "hashed through the hash cache, as before");
    let text = f.warnings.join("\n");
    assert!(text.contains("castractl image adopt web"), "{text}");
    assert!(
        text.contains(&dir.path().join("base.img").display().to_string()),
        "{text}"
    );
}

#[test]
fn without_a_disk_the_configured_source_decides() {
    let (dir, root, store, mut vm) = setup();
    // A file to import: not hashed by plan (the import hashes it), so unknown for now.
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    assert_eq!(f.plan.status, api::BaseImageStatus::Import);
    assert_eq!((f.sha256.as_deref(), f.bytes_read), (None, 0));
    // The user's own file (import = false): hashed once, through the cache.
    vm.base_image = Some(crate::config::BaseImage::Local(Source::File {
        path: dir.path().join("base.img"),
        import: false,
        digest: None,
    }));
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    assert_eq!(f.plan.status, api::BaseImageStatus::ByPath);
    assert_eq!(f.sha256.as_deref(), Some(sha(b"base image bytes").as_str()));
    // An https image without a checksum: to be fetched, and unverified.
    vm.base_image = Some(crate::config::BaseImage::Local(Source::Url {
        url: "https://example.org/x.qcow2".into(),
        check: Check::Unverified,
    }));
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    assert_eq!(f.plan.status, api::BaseImageStatus::Fetch);
    assert!(!f.plan.verified);
    assert!(f.plan.message.contains("https://example.org/x.qcow2"));
    assert!(
        f.warnings.join("\n").contains("unverified"),
        "{:?}",
        f.warnings
    );
    // A path on a libvirt hypervisor: never read here.
    vm.base_image = Some(crate::config::BaseImage::Hypervisor("/var/x.qcow2".into()));
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    assert_eq!(f.plan.status, api::BaseImageStatus::Hypervisor);
    assert_eq!(f.sha256, None);
}

#[test]
fn a_base_image_that_now_names_other_contents_leaves_the_disk_on_its_own() {
    let (dir, root, store, mut vm) = setup();
    fake_disk(&root, "web", &dir.path().join("base.img"));
    let other = "ab".repeat(32);
    vm.base_image = Some(crate::config::BaseImage::Local(Source::Url {
        url: "https://example.org/new.qcow2".into(),
        check: Check::Digest(Digest::sha256(&other).unwrap()),
    }));
    let f = facts(&root, &store, &vm).unwrap().unwrap();
    assert_eq!(
        f.sha256.as_deref(),
        Some(sha(b"base image bytes").as_str()),
        "the disk's own base"
    );
    let text = f.warnings.join("\n");
    assert!(
        text.contains(&format!(
            "base_image now names other contents (sha256:{other})"
        )),
        "{text}"
    );
    assert!(text.contains("castractl down web --discard"), "{text}");
}
