//! Downloads against a real HTTP server on 127.0.0.1 (`testkit::Server`).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::images::testkit::{Seen, Server, files, raw_image, sha256_hex, sha512_hex};
use crate::images::{Check, Digest, ImageError, Lookup, Phase, Progress, Source, Store};

fn store(dir: &std::path::Path) -> Arc<Store> {
    Arc::new(Store::new(dir.join("store"), None))
}

fn by_digest(url: String, digest: Digest) -> Source {
    Source::Url {
        url,
        check: Check::Digest(digest),
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::sha256(&sha256_hex(bytes)).unwrap()
}

#[tokio::test]
async fn a_download_checked_by_sha256_lands_read_only_with_its_record_and_memo() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(300_000, 1);
    server.serve("/img/base.raw", &image, "v1");
    let store = store(dir.path());
    let source = by_digest(server.url("/img/base.raw"), sha256(&image));
    let mut seen = Seen::default();
    let (stored, _lease) = store
        .ensure(&source, None, false, &mut seen.callback())
        .await
        .unwrap();

    assert_eq!(std::fs::read(&stored.path).unwrap(), image);
    let mode = std::fs::metadata(&stored.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    assert_eq!(stored.record.sha256, sha256_hex(&image));
    assert_eq!(
        (stored.record.format.as_str(), stored.record.size),
        ("raw", 300_000)
    );
    let origin = stored.record.origins.last().unwrap();
    assert_eq!(origin.source, server.url("/img/base.raw"));
    assert_eq!(origin.checked_by, Some(sha256(&image).to_string()));
    assert_eq!(seen.phases().last(), Some(&Phase::Done));
    // Only the image, its record, the memo and the store lock: no partial files left.
    let hex = sha256_hex(&image);
    let names = files(store.dir());
    assert!(names.contains(&format!("sha256-{hex}")), "{names:?}");
    assert!(names.contains(&format!("sha256-{hex}.json")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("partial/")),
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.starts_with("sources/")).count(),
        1
    );
    // Known now without the network; and ensure finds it without a transfer.
    assert!(matches!(store.lookup(&source, None), Lookup::Stored(_)));
    let mut again = Seen::default();
    store
        .ensure(&source, None, false, &mut again.callback())
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 1);
    assert!(again.0.is_empty(), "no transfer, no progress");
}

#[tokio::test]
async fn a_sha512_digest_is_checked_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(70_000, 2);
    server.serve("/a.img", &image, "e");
    let digest = Digest::from_hex(crate::images::Algo::Sha512, &sha512_hex(&image)).unwrap();
    let (stored, _) = store(dir.path())
        .ensure(
            &by_digest(server.url("/a.img"), digest),
            None,
            false,
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(stored.record.sha512, Some(sha512_hex(&image)));
}

#[tokio::test]
async fn a_sha256sums_file_names_the_digest_and_refresh_reads_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(50_000, 3);
    let sums = |img: &[u8]| {
        format!(
            "{}  other.img\n{} *disk.img\n",
            "0".repeat(64),
            sha256_hex(img)
        )
    };
    server.serve("/d/disk.img", &image, "1");
    server.serve("/d/SHA256SUMS", sums(&image).as_bytes(), "s1");
    let store = store(dir.path());
    let source = Source::Url {
        url: server.url("/d/disk.img"),
        check: Check::Sums(server.url("/d/SHA256SUMS")),
    };
    let (first, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(first.record.sha256, sha256_hex(&image));
    assert_eq!(
        first.record.origins[0].checked_by,
        Some(server.url("/d/SHA256SUMS"))
    );

    // A new image published: without refresh the memo answers; with it the checksums file
    // is read again, and only then the image fetched.
    let newer = raw_image(50_000, 4);
    server.serve("/d/disk.img", &newer, "2");
    server.serve("/d/SHA256SUMS", sums(&newer).as_bytes(), "s2");
    let (same, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(same.record.sha256, first.record.sha256);
    assert_eq!(server.requests().len(), 2);
    let (fresh, _) = store
        .ensure(&source, None, true, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(fresh.record.sha256, sha256_hex(&newer));
    assert_eq!(server.requests_for("/d/disk.img").len(), 2);
    // Refreshing with nothing new reads the checksums file and fetches nothing.
    store
        .ensure(&source, None, true, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(server.requests_for("/d/SHA256SUMS").len(), 3);
    assert_eq!(server.requests_for("/d/disk.img").len(), 2);
}

#[tokio::test]
async fn a_bsd_checksum_file_and_a_catalog_name_through_a_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(40_000, 5);
    // debian-12 is fetched from <mirror>/debian-12/<file name> with its SHA512SUMS.
    let entry = crate::images::catalog::get("debian-12").unwrap();
    let file = entry.url.rsplit('/').next().unwrap();
    let bsd = format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSHA512 ({file}) = {}\n",
        sha512_hex(&image)
    );
    server.serve(&format!("/m/debian-12/{file}"), &image, "x");
    server.serve("/m/debian-12/SHA512SUMS", bsd.as_bytes(), "y");
    let store = Arc::new(Store::new(dir.path().join("store"), Some(server.url("/m"))));
    let source = Source::Catalog {
        name: "debian-12".into(),
    };
    assert_eq!(
        store.lookup(&source, None),
        Lookup::Missing { sha256: None }
    );
    let (stored, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(stored.record.sha512, Some(sha512_hex(&image)));
    assert!(matches!(store.lookup(&source, None), Lookup::Stored(_)));
    // Another mirror is another source (not known yet).
    assert!(matches!(
        store.lookup(&source, Some("http://127.0.0.1:1/elsewhere")),
        Lookup::Missing { .. }
    ));
}

#[tokio::test]
async fn a_mismatch_names_both_digests_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let good = raw_image(20_000, 6);
    server.serve("/good.img", &good, "g");
    let store = store(dir.path());
    store
        .ensure(
            &by_digest(server.url("/good.img"), sha256(&good)),
            None,
            false,
            &mut |_| {},
        )
        .await
        .unwrap();
    let before = files(store.dir());

    let bad = raw_image(20_000, 7);
    server.serve("/bad.img", &bad, "b");
    let claimed = Digest::sha256(&"ab".repeat(32)).unwrap();
    let err = store
        .ensure(
            &by_digest(server.url("/bad.img"), claimed.clone()),
            None,
            false,
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Mismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&claimed.to_string()), "{text}");
    assert!(
        text.contains(&format!("sha256:{}", sha256_hex(&bad))),
        "{text}"
    );
    assert_eq!(files(store.dir()), before);
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(1 << 20, 8);
    server.serve("/big.img", &image, "etag-1");
    server.drop_after(300_000);
    let store = store(dir.path());
    let source = by_digest(server.url("/big.img"), sha256(&image));
    let err = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Transfer { .. }), "{err}");
    let kept = files(store.dir());
    assert_eq!(
        kept.iter().filter(|n| n.starts_with("partial/")).count(),
        3,
        "{kept:?}"
    );

    let mut seen = Seen::default();
    let (stored, _) = store
        .ensure(&source, None, false, &mut seen.callback())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), image);
    assert_eq!(seen.phases().first(), Some(&Phase::Resume));
    let reqs = server.requests_for("/big.img");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].sent, 300_000);
    assert_eq!(
        reqs[1].headers.get("range").map(String::as_str),
        Some("bytes=300000-")
    );
    assert_eq!(
        reqs[1].headers.get("if-range").map(String::as_str),
        Some("\"etag-1\"")
    );
    assert_eq!((reqs[1].status, reqs[1].sent), (206, image.len() - 300_000));
    assert!(!files(store.dir()).iter().any(|n| n.starts_with("partial/")));
}

#[tokio::test]
async fn a_part_already_whole_is_complete_on_416() {
    // A castrad stopped after the last byte, before the commit: the part is all there.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(100_000, 19);
    server.serve("/w.img", &image, "w");
    let store = store(dir.path());
    let url = server.url("/w.img");
    store.make_dirs().unwrap();
    let partial = store.partial(&url);
    std::fs::write(&partial.part, &image).unwrap();
    let state = serde_json::json!({ "url": url, "etag": "\"w\"", "total": image.len() });
    std::fs::write(&partial.state, state.to_string()).unwrap();
    let (stored, _) = store
        .ensure(&by_digest(url, sha256(&image)), None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), image);
    let reqs = server.requests_for("/w.img");
    assert_eq!((reqs.len(), reqs[0].status, reqs[0].sent), (1, 416, 0));
}

#[tokio::test]
async fn a_server_answering_200_to_a_range_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(600_000, 9);
    server.serve("/x.img", &image, "1");
    server.drop_after(200_000);
    let store = store(dir.path());
    let source = by_digest(server.url("/x.img"), sha256(&image));
    store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap_err();
    server.ignore_range(true);
    let (stored, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), image);
    let reqs = server.requests_for("/x.img");
    assert!(reqs[1].headers.contains_key("range"));
    assert_eq!((reqs[1].status, reqs[1].sent), (200, image.len()));
}

#[tokio::test]
async fn a_changed_file_on_the_server_is_fetched_whole() {
    // The part is of the old file; If-Range no longer matches, so the server sends all of
    // the new one, which is what the digest is of.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let old = raw_image(500_000, 10);
    let new = raw_image(500_000, 11);
    server.serve("/y.img", &old, "old");
    server.drop_after(100_000);
    let store = store(dir.path());
    let source = by_digest(server.url("/y.img"), sha256(&new));
    store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap_err();
    server.serve("/y.img", &new, "new");
    let (stored, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), new);
    assert_eq!(server.requests_for("/y.img")[1].status, 200);
}

#[tokio::test]
async fn two_ensures_of_one_url_share_one_get_and_both_see_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(2 << 20, 12);
    server.serve("/s.img", &image, "1");
    server.delay(Some(Duration::from_millis(20)));
    let store = store(dir.path());
    let source = by_digest(server.url("/s.img"), sha256(&image));
    let (mut a, mut b) = (Seen::default(), Seen::default());
    let started = Instant::now();
    let (ra, rb) = {
        let (mut ca, mut cb) = (a.callback(), b.callback());
        tokio::join!(
            store.ensure(&source, None, false, &mut ca),
            store.ensure(&source, None, false, &mut cb),
        )
    };
    let elapsed = started.elapsed();
    assert_eq!(ra.unwrap().0, rb.unwrap().0);
    assert_eq!(server.requests_for("/s.img").len(), 1);
    for seen in [&a, &b] {
        assert_eq!(seen.phases(), [Phase::Download, Phase::Done]);
        // At most four a second, then Done.
        let reports = seen.0.len() - 1;
        let allowed = (elapsed.as_millis() / 250) as usize + 1;
        assert!(reports <= allowed, "{reports} reports in {elapsed:?}");
        let done = &seen.0.last().unwrap().1;
        assert_eq!(
            (done.done, done.total),
            (image.len() as u64, Some(image.len() as u64))
        );
    }
}

#[tokio::test]
async fn a_second_castrad_on_the_same_store_waits_and_finds_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(1 << 20, 13);
    server.serve("/p.img", &image, "1");
    server.delay(Some(Duration::from_millis(10)));
    // Two stores on one directory stand for two processes: no shared flights, only the lock.
    let (one, two) = (store(dir.path()), store(dir.path()));
    let source = by_digest(server.url("/p.img"), sha256(&image));
    let (mut c1, mut c2) = (|_: &Progress| {}, |_: &Progress| {});
    let (r1, r2) = tokio::join!(
        one.ensure(&source, None, false, &mut c1),
        two.ensure(&source, None, false, &mut c2),
    );
    assert_eq!(r1.unwrap().0, r2.unwrap().0);
    assert_eq!(server.requests_for("/p.img").len(), 1);
}

#[tokio::test]
async fn dropping_the_last_waiter_stops_the_transfer_and_keeps_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(2 << 20, 14);
    server.serve("/c.img", &image, "1");
    server.delay(Some(Duration::from_millis(20)));
    let store = store(dir.path());
    let source = by_digest(server.url("/c.img"), sha256(&image));
    let waited = tokio::time::timeout(
        Duration::from_millis(400),
        store.ensure(&source, None, false, &mut |_| {}),
    )
    .await;
    assert!(waited.is_err(), "the download cannot be done yet");
    // The server notices the client gone; the part stays for the next attempt.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = &server.requests_for("/c.img")[0];
    assert!(
        first.sent < image.len(),
        "the transfer stopped: {}",
        first.sent
    );
    server.delay(None);
    let (stored, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), image);
    let second = &server.requests_for("/c.img")[1];
    let range = second.headers.get("range").expect("resumed with a range");
    let from: usize = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0);
    assert_eq!(second.sent, image.len() - from);
}

#[tokio::test]
async fn a_file_url_is_copied_and_checked_without_http() {
    let dir = tempfile::tempdir().unwrap();
    let image = raw_image(90_000, 15);
    let path = dir.path().join("local.img");
    std::fs::write(&path, &image).unwrap();
    let url = url::Url::from_file_path(&path).unwrap().to_string();
    let store = store(dir.path());
    let (stored, _) = store
        .ensure(
            &by_digest(url.clone(), sha256(&image)),
            None,
            false,
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&stored.path).unwrap(), image);
    assert_eq!(stored.record.origins[0].source, url);
    let wrong = Digest::sha256(&"cd".repeat(32)).unwrap();
    let err = store
        .ensure(&by_digest(url, wrong), None, false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Mismatch { .. }), "{err}");
}

#[tokio::test]
async fn an_image_with_a_backing_file_is_refused_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, raw_image(1 << 16, 16)).unwrap();
    let child = dir.path().join("child.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base)
        .args(["-F", "raw"])
        .arg(&child)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&child).unwrap();
    let server = Server::start();
    server.serve("/child.qcow2", &bytes, "1");
    let store = store(dir.path());
    let err = store
        .ensure(
            &by_digest(server.url("/child.qcow2"), sha256(&bytes)),
            None,
            false,
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotABase { .. }), "{err}");
    let left = files(store.dir());
    assert!(
        left.iter().all(|n| n == ".lock"),
        "nothing but the store lock: {left:?}"
    );
}

#[tokio::test]
async fn an_unverified_https_image_is_taken_and_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(30_000, 17);
    server.serve("/u.img", &image, "1");
    let store = store(dir.path());
    let source = Source::Url {
        url: server.url("/u.img"),
        check: Check::Unverified,
    };
    let (stored, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(stored.record.origins[0].checked_by, None);
    assert!(matches!(store.lookup(&source, None), Lookup::Stored(_)));
    store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn http_errors_and_oversized_checksums_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let store = store(dir.path());
    let missing = by_digest(
        server.url("/nope.img"),
        Digest::sha256(&"0".repeat(64)).unwrap(),
    );
    let err = store
        .ensure(&missing, None, false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Http { status: 404, .. }), "{err}");

    let huge = vec![b'#'; crate::images::sums::MAX_BYTES as usize + 1];
    server.serve("/SUMS", &huge, "1");
    let source = Source::Url {
        url: server.url("/i.img"),
        check: Check::Sums(server.url("/SUMS")),
    };
    let err = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");

    let unknown = Source::Catalog {
        name: "no-such-os".into(),
    };
    let err = store
        .ensure(&unknown, None, false, &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::UnknownCatalogName { .. }),
        "{err}"
    );
}

/// `cargo test -p castrad --release --lib images::fetch::tests::bench -- --ignored
/// --nocapture`: a download of 256 MiB (`CASTRA_BENCH_MIB`) from the local test server,
/// checked by sha256, committed (fsync included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand"]
async fn bench_download_from_the_local_server() {
    let mib: usize = std::env::var("CASTRA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let image = raw_image(mib << 20, 18);
    server.serve("/bench.img", &image, "1");
    let store = store(dir.path());
    let source = by_digest(server.url("/bench.img"), sha256(&image));
    let started = Instant::now();
    let (stored, _) = store
        .ensure(&source, None, false, &mut |_| {})
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(stored.record.size, (mib as u64) << 20);
    eprintln!(
        "download of {mib} MiB from 127.0.0.1: {took:.2?} ({:.0} MiB/s), sha256 + fsync + \
         qemu-img included",
        mib as f64 / took.as_secs_f64()
    );
}
