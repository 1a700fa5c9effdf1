//! The store's directory: lookups, refs, `ls`, `rm`, `prune` and the store lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::images::disk::{self, DiskBase};
use crate::images::testkit::{files, raw_image, sha256_hex};
use crate::images::{
    Check, Digest, FileIdentity, ImageError, Lookup, Ref, Source, Store, Stored, lock,
};

fn store(dir: &Path) -> Arc<Store> {
    Arc::new(Store::new(dir.join("store"), None))
}

/// Imports a raw image of `len` bytes (different per `seed`) from a file in `dir`.
async fn imported(store: &Arc<Store>, dir: &Path, seed: u8) -> Stored {
    let path = dir.join(format!("image-{seed}.img"));
    std::fs::write(&path, raw_image(64 << 10, seed)).unwrap();
    let source = Source::File {
        path,
        import: true,
        digest: None,
    };
    store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap()
        .0
}

/// A VM disk in `dir` backed by `stored`, with its record, and the ref to it.
fn disk_on(store: &Store, dir: &Path, vm: &str, stored: &Stored) -> Ref {
    let vm_dir = dir.join("vms").join(vm);
    std::fs::create_dir_all(&vm_dir).unwrap();
    let disk_path = vm_dir.join("disk.qcow2");
    std::fs::write(&disk_path, b"overlay").unwrap();
    let record = vm_dir.join("base.json");
    disk::write(
        &record,
        &DiskBase {
            sha256: stored.record.sha256.clone(),
            backing: stored.path.clone(),
            format: "raw".into(),
            stored: true,
            identity: stored.record.identity,
            source: "test".into(),
        },
    )
    .unwrap();
    let r = Ref {
        disk: disk_path,
        record,
        vm: vm.into(),
        config: dir.join("castra.toml"),
    };
    store.add_ref(&stored.record.sha256, &r).unwrap();
    r
}

#[tokio::test]
async fn a_used_image_is_kept_until_its_disk_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let image = imported(&store, dir.path(), 1).await;
    let r = disk_on(&store, dir.path(), "web", &image);
    let short = &image.record.sha256[..10];

    let err = store.remove(&format!("sha256:{short}")).unwrap_err();
    match &err {
        ImageError::InUse { users, .. } => {
            assert_eq!(
                users,
                &[format!(
                    "web ({})",
                    dir.path().join("castra.toml").display()
                )]
            );
        }
        other => panic!("{other}"),
    }
    assert!(store.prune().unwrap().images.is_empty());
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].users, std::slice::from_ref(&r));

    // The disk discarded: its ref is stale, dropped by ls, and the image can go.
    std::fs::remove_file(&r.disk).unwrap();
    assert!(store.list()[0].users.is_empty());
    assert!(!files(store.dir()).iter().any(|n| n.starts_with("refs/")));
    let removed = store.remove(short).unwrap();
    assert_eq!(removed.images, std::slice::from_ref(&image));
    assert_eq!(removed.bytes, image.record.size);
    assert!(!image.path.exists());
    assert!(store.get(&image.record.sha256).is_none());
    assert!(!files(store.dir()).iter().any(|n| n.starts_with("sources/")));
}

#[tokio::test]
async fn a_disk_rebased_elsewhere_or_dropped_releases_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let one = imported(&store, dir.path(), 2).await;
    let two = imported(&store, dir.path(), 3).await;
    let r = disk_on(&store, dir.path(), "db", &one);
    // The disk's record now names another image: the ref to `one` is stale.
    let mut base = disk::read(&r.record).unwrap();
    base.sha256 = two.record.sha256.clone();
    disk::write(&r.record, &base).unwrap();
    let removed = store.prune().unwrap();
    assert_eq!(removed.images.len(), 2, "neither is used by a ref to it");

    let three = imported(&store, dir.path(), 4).await;
    let r = disk_on(&store, dir.path(), "db", &three);
    store.drop_ref(&three.record.sha256, &r.disk);
    store.drop_ref(&three.record.sha256, &r.disk); // quiet when absent
    assert_eq!(store.remove(&three.record.sha256).unwrap().images.len(), 1);
}

#[tokio::test]
async fn rm_and_prune_are_busy_while_a_lease_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let path = dir.path().join("l.img");
    std::fs::write(&path, raw_image(4096, 5)).unwrap();
    let source = Source::File {
        path,
        import: true,
        digest: None,
    };
    let (stored, lease) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    let hex = stored.record.sha256.clone();
    assert!(matches!(store.remove(&hex), Err(ImageError::Busy { .. })));
    assert!(matches!(store.prune(), Err(ImageError::Busy { .. })));
    // A lease from a lookup hit holds the lock too.
    drop(lease);
    let (_, lease) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert!(matches!(store.prune(), Err(ImageError::Busy { .. })));
    drop(lease);
    assert_eq!(store.prune().unwrap().images, [stored]);
}

#[tokio::test]
async fn rm_wants_a_digest_prefix_that_names_one_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let image = imported(&store, dir.path(), 6).await;
    for bad in ["abc", "sha256:1234567", "zzzzzzzzzz", "sha512:12345678"] {
        assert!(
            matches!(store.remove(bad), Err(ImageError::BadDigest { .. })),
            "{bad}"
        );
    }
    let absent = if image.record.sha256.starts_with('0') {
        "11111111"
    } else {
        "00000000"
    };
    assert!(matches!(
        store.remove(absent),
        Err(ImageError::NotFound { .. })
    ));
    // Two files sharing a prefix (made by hand: no real pair of images does in a test).
    for tail in ['a', 'b'] {
        let name = format!("sha256-{}{}", "f".repeat(63), tail);
        std::fs::write(store.dir().join(name), b"x").unwrap();
    }
    let err = store.remove(&"F".repeat(12)).unwrap_err();
    assert!(
        matches!(err, ImageError::Ambiguous { count: 2, .. }),
        "{err}"
    );
    // An image without a record (castrad stopped before writing it) can be removed too.
    let removed = store.remove(&format!("{}a", "f".repeat(63))).unwrap();
    assert_eq!(
        (removed.images[0].record.format.as_str(), removed.bytes),
        ("unknown", 1)
    );
    let empty = tempfile::tempdir().unwrap();
    let none = Store::new(empty.path().join("none"), None);
    assert!(matches!(
        none.remove("12345678"),
        Err(ImageError::NotFound { .. })
    ));
    assert_eq!(none.prune().unwrap().bytes, 0);
    assert!(
        !empty.path().join("none").exists(),
        "rm and prune create no store"
    );
}

#[tokio::test]
async fn prune_removes_abandoned_partials_but_not_one_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let image = imported(&store, dir.path(), 7).await;
    let _r = disk_on(&store, dir.path(), "web", &image);
    let partial = store.dir().join("partial");
    std::fs::write(partial.join("0123456789abcdef.part"), vec![0u8; 1000]).unwrap();
    std::fs::write(partial.join("0123456789abcdef.json"), b"{}").unwrap();
    std::fs::write(partial.join("fedcba9876543210.part"), vec![0u8; 500]).unwrap();
    let busy = lock::open(&partial.join("fedcba9876543210.lock")).unwrap();
    assert!(lock::try_lock(&busy, true).unwrap());
    let removed = store.prune().unwrap();
    assert!(removed.images.is_empty());
    assert_eq!(removed.bytes, 1002);
    let left: Vec<String> = files(&partial).into_iter().collect();
    assert_eq!(left, ["fedcba9876543210.lock", "fedcba9876543210.part"]);
}

#[tokio::test]
async fn ls_lists_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let old = imported(&store, dir.path(), 8).await;
    let new = imported(&store, dir.path(), 9).await;
    // Backdate the first image's origin (times are kept to the second).
    let record_path = store
        .dir()
        .join(format!("sha256-{}.json", old.record.sha256));
    let mut record = old.record.clone();
    record.origins[0].at = "2020-01-01T00:00:00Z".into();
    std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    let listed: Vec<String> = store
        .list()
        .into_iter()
        .map(|l| l.stored.record.sha256)
        .collect();
    assert_eq!(listed, [new.record.sha256, old.record.sha256]);
}

#[tokio::test]
async fn lookup_answers_from_memos_and_digests_without_a_store_or_network() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let hex = "ab".repeat(32);
    let url = Source::Url {
        url: "https://example.invalid/a.img".into(),
        check: Check::Digest(Digest::sha256(&hex).unwrap()),
    };
    assert_eq!(
        store.lookup(&url, None),
        Lookup::Missing {
            sha256: Some(hex.clone())
        }
    );
    assert!(!store.dir().exists(), "lookup writes nothing");
    let unknown = Source::Catalog {
        name: "nope".into(),
    };
    assert_eq!(
        store.lookup(&unknown, None),
        Lookup::Missing { sha256: None }
    );

    // An image in the store is found by the sha256 a source gives, whatever its URL.
    let image = imported(&store, dir.path(), 10).await;
    let by_digest = Source::Url {
        url: "https://example.invalid/other-name.img".into(),
        check: Check::Digest(Digest::sha256(&image.record.sha256).unwrap()),
    };
    assert_eq!(
        store.lookup(&by_digest, None),
        Lookup::Stored(image.clone())
    );
    assert_eq!(store.get(&image.record.sha256), Some(image.clone()));
    assert_eq!(store.get("../../etc/passwd"), None);
    assert_eq!(store.get(&image.record.sha256.to_uppercase()), None);
}

#[tokio::test]
async fn records_and_refs_are_where_the_design_says() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let image = imported(&store, dir.path(), 11).await;
    let r = disk_on(&store, dir.path(), "web", &image);
    let hex = &image.record.sha256;
    let names = files(store.dir());
    let key = |text: &str| sha256_hex(text.as_bytes())[..16].to_owned();
    assert!(names.contains(&format!(
        "refs/sha256-{hex}/{}.json",
        key(&r.disk.to_string_lossy())
    )));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("sources/") && n.len() == "sources/".len() + 21)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.dir().to_owned()), 0o700);
    assert_eq!(mode(image.path.clone()), 0o444);
    assert_eq!(
        image.record.identity,
        FileIdentity::of(&image.path).unwrap()
    );
    let parsed: crate::images::Record = serde_json::from_slice(
        &std::fs::read(store.dir().join(format!("sha256-{hex}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(parsed, image.record);
}
