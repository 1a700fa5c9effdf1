//! Imports of local files.

use std::path::Path;
use std::sync::Arc;

use super::copy_in;
use crate::images::testkit::{Seen, files, raw_image, sha256_hex};
use crate::images::{Digest, FileIdentity, ImageError, Lookup, Phase, Source, Store};

fn store(dir: &Path) -> Arc<Store> {
    Arc::new(Store::new(dir.join("store"), None))
}

fn file(path: &Path, digest: Option<Digest>) -> Source {
    Source::File {
        path: path.to_owned(),
        import: true,
        digest,
    }
}

#[tokio::test]
async fn an_import_copies_hashes_and_remembers_the_file_by_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.img");
    let image = raw_image(5 << 20, 1);
    std::fs::write(&path, &image).unwrap();
    // A second name for the file (made before: a new link changes the inode's ctime).
    let link = dir.path().join("link.img");
    std::fs::hard_link(&path, &link).unwrap();
    let digest = Digest::sha256(&sha256_hex(&image)).unwrap();
    let store = store(dir.path());
    let source = file(&path, Some(digest.clone()));
    let mut seen = Seen::default();
    let (stored, _lease) = store
        .ensure(&source, None, false, &mut seen.callback())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), image);
    assert_eq!(seen.phases(), [Phase::Import, Phase::Done]);
    let origin = &stored.record.origins[0];
    assert_eq!(origin.source, path.display().to_string());
    assert_eq!(origin.checked_by, Some(digest.to_string()));

    // Known by identity without reading the file (no digest given now)...
    let plain = file(&path, None);
    assert_eq!(store.lookup(&plain, None), Lookup::Stored(stored.clone()));
    // ... also under another name for the same inode.
    assert_eq!(
        store.lookup(&file(&link, None), None),
        Lookup::Stored(stored.clone())
    );
    // A changed file is not the image any more.
    std::fs::write(&path, raw_image(5 << 20, 2)).unwrap();
    assert_eq!(store.lookup(&plain, None), Lookup::Missing { sha256: None });
}

#[tokio::test]
async fn a_wrong_digest_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.img");
    let image = raw_image(1 << 20, 3);
    std::fs::write(&path, &image).unwrap();
    let store = store(dir.path());
    let wrong = Digest::sha256(&"12".repeat(32)).unwrap();
    let err = store
        .ensure(&file(&path, Some(wrong.clone())), None, false, &mut |_| {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImageError::Mismatch { .. }), "{text}");
    assert!(text.contains(&wrong.to_string()), "{text}");
    assert!(text.contains(&sha256_hex(&image)), "{text}");
    assert_eq!(
        files(store.dir()).into_iter().collect::<Vec<_>>(),
        [".lock"]
    );
    assert_eq!(
        store.lookup(&file(&path, Some(wrong.clone())), None),
        Lookup::Missing {
            sha256: Some(wrong.hex)
        }
    );
}

#[tokio::test]
async fn an_unimported_file_is_not_for_ensure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.img");
    std::fs::write(&path, raw_image(4096, 4)).unwrap();
    let source = Source::File {
        path: path.clone(),
        import: false,
        digest: None,
    };
    let err = store(dir.path())
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotImported { .. }), "{err}");
    assert!(
        err.to_string().contains("base_image_import = false"),
        "{err}"
    );
}

#[tokio::test]
async fn a_qcow2_with_a_backing_file_is_not_imported() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, raw_image(1 << 16, 5)).unwrap();
    let child = dir.path().join("child.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base)
        .args(["-F", "raw"])
        .arg(&child)
        .status()
        .unwrap();
    assert!(status.success());
    let store = store(dir.path());
    let err = store
        .ensure(&file(&child, None), None, false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotABase { .. }), "{err}");
    // The advice names the user's file (the part it was read from is gone).
    let why = std::error::Error::source(&err).unwrap().to_string();
    assert!(why.contains("has a backing file"), "{why}");
    assert!(
        why.contains(&format!("qemu-img convert -O qcow2 {}", child.display())),
        "{why}"
    );
    assert!(
        err.to_string().contains(&child.display().to_string()),
        "{err}"
    );
    assert_eq!(
        files(store.dir()).into_iter().collect::<Vec<_>>(),
        [".lock"]
    );
}

#[test]
fn a_file_written_while_it_is_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("growing.img");
    std::fs::write(&src, raw_image(12 << 20, 6)).unwrap();
    let part = dir.path().join("x.part");
    let mut touched = false;
    let err = copy_in(
        &src,
        &part,
        false,
        &mut |_| {
            if !touched {
                touched = true;
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&src).unwrap();
                f.write_all(b"more").unwrap();
            }
        },
        &|| false,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("size"), "{err}");
    assert!(!part.exists());
}

#[test]
fn a_cancelled_copy_leaves_no_part() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.img");
    std::fs::write(&src, raw_image(12 << 20, 7)).unwrap();
    let part = dir.path().join("a.part");
    let err = copy_in(&src, &part, false, &mut |_| {}, &|| true).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(!part.exists());
}

#[test]
fn a_copy_is_exact_and_the_identity_is_the_sources() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.img");
    // Not a multiple of any chunk size.
    let image = raw_image((9 << 20) + 12345, 8);
    std::fs::write(&src, &image).unwrap();
    let part = dir.path().join("a.part");
    let copied = copy_in(&src, &part, true, &mut |_| {}, &|| false).unwrap();
    assert_eq!(std::fs::read(&part).unwrap(), image);
    assert_eq!(copied.hashes.sha256, sha256_hex(&image));
    assert!(copied.hashes.sha512.is_some());
    assert_eq!(copied.identity, FileIdentity::of(&src).unwrap());
}

/// `cargo test -p castrad --release --lib images::import::tests::bench -- --ignored
/// --nocapture`: an import of a 512 MiB file (`CASTRA_BENCH_MIB` to change) against `cp
/// --reflink=auto` of it, in the directory `CASTRA_BENCH_DIR` (default: a temp dir).
#[test]
#[ignore = "a benchmark: run by hand"]
fn bench_import_against_cp() {
    use std::time::Instant;
    let mib: usize = std::env::var("CASTRA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let base = std::env::var_os("CASTRA_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let src = dir.path().join("src.img");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        let chunk = raw_image(1 << 20, 9);
        for i in 0..mib {
            let mut c = chunk.clone();
            c[100..108].copy_from_slice(&(i as u64).to_le_bytes());
            f.write_all(&c).unwrap();
        }
        f.sync_all().unwrap();
    }
    let rounds = 3;
    for round in 0..rounds {
        let cp_dst = dir.path().join("cp.img");
        let t = Instant::now();
        let ok = std::process::Command::new("cp")
            .arg("--reflink=auto")
            .arg(&src)
            .arg(&cp_dst)
            .status()
            .unwrap()
            .success();
        let cp = t.elapsed();
        let t = Instant::now();
        std::process::Command::new("sync")
            .arg(&cp_dst)
            .status()
            .unwrap();
        let cp_sync = cp + t.elapsed();
        assert!(ok);
        std::fs::remove_file(&cp_dst).unwrap();

        // The copy and hash alone (no fsync), as `cp` does it.
        let part = dir.path().join("import.part");
        let t = Instant::now();
        {
            let (s, d) = (
                std::fs::File::open(&src).unwrap(),
                std::fs::File::create(&part).unwrap(),
            );
            super::copy_and_hash(&s, &d, (mib as u64) << 20, false, &mut |_| {}, &|| false)
                .unwrap();
        }
        let no_sync = t.elapsed();
        std::fs::remove_file(&part).unwrap();
        std::process::Command::new("sync").status().unwrap();

        let t = Instant::now();
        let copied = copy_in(&src, &part, false, &mut |_| {}, &|| false).unwrap();
        let ours = t.elapsed();
        std::fs::remove_file(&part).unwrap();
        assert_eq!(copied.size, (mib as u64) << 20);
        let rate = |d: std::time::Duration| (mib as f64) / d.as_secs_f64();
        eprintln!(
            "round {round}: {mib} MiB: import {ours:.2?} ({:.0} MiB/s; {:.2}x cp + sync), without \
             its fsync {no_sync:.2?} ({:.2}x cp); cp --reflink=auto {cp:.2?} ({:.0} MiB/s), cp + \
             sync {cp_sync:.2?}",
            rate(ours),
            ours.as_secs_f64() / cp_sync.as_secs_f64(),
            no_sync.as_secs_f64() / cp.as_secs_f64(),
            rate(cp),
        );
        std::process::Command::new("sync").status().unwrap();
    }
}

/// A sparse image (a raw disk is mostly holes) stays sparse in the store: its holes are not
/// copied as zeros (an upload of it to a libvirt pool then sends no holes either).
#[tokio::test]
async fn a_sparse_image_stays_sparse() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(32 << 20).unwrap();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    f.write_all(&[0x5a; 64 << 10]).unwrap();
    drop(f);
    let bytes = std::fs::read(&path).unwrap();
    let store = store(dir.path());
    let (stored, _lease) = store
        .ensure(&file(&path, None), None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(stored.record.sha256, sha256_hex(&bytes));
    assert_eq!(
        std::fs::read(&stored.path).unwrap(),
        bytes,
        "the same bytes"
    );
    let meta = std::fs::metadata(&stored.path).unwrap();
    assert_eq!(meta.len(), 32 << 20);
    assert!(
        meta.blocks() * 512 < 4 << 20,
        "{} bytes allocated for 64 KiB of data",
        meta.blocks() * 512
    );
}
