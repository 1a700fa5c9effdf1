//! `castra.image*` on the daemon side: what a pull may name, a project's images, the wire forms.

use std::sync::Arc;
use std::time::Duration;

use super::*;

fn hex(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

#[test]
fn an_image_is_a_url_a_path_or_a_catalog_name() {
    let digest = format!("sha256:{}", hex('a'));
    assert_eq!(
        pull_source("https://h/d/debian.qcow2", None, None),
        Ok(Source::Url {
            url: "https://h/d/debian.qcow2".into(),
            check: Check::Unverified,
        })
    );
    assert_eq!(
        pull_source("file:///srv/base.qcow2", Some(&digest), None),
        Ok(Source::Url {
            url: "file:///srv/base.qcow2".into(),
            check: Check::Digest(Digest::parse(&digest).unwrap()),
        })
    );
    assert_eq!(
        pull_source("http://h/x.img", None, Some("http://h/SHA256SUMS")),
        Ok(Source::Url {
            url: "http://h/x.img".into(),
            check: Check::Sums("http://h/SHA256SUMS".into()),
        })
    );
    assert_eq!(
        pull_source("/srv/base.img", None, None),
        Ok(Source::File {
            path: "/srv/base.img".into(),
            import: true,
            digest: None,
        })
    );
    assert_eq!(
        pull_source("debian-12", None, None),
        Ok(Source::Catalog {
            name: "debian-12".into()
        })
    );
}

#[test]
fn a_pull_is_refused_as_castra_toml_would_refuse_its_base_image() {
    let digest = format!("sha256:{}", hex('a'));
    let refused = |image: &str, d: Option<&str>, c: Option<&str>, says: &str| {
        let e = pull_source(image, d, c).unwrap_err();
        assert!(e.contains(says), "{image}: {e}");
    };
    refused("http://h/x.img", None, None, "needs `digest`");
    refused("file:///x.img", None, None, "needs `digest`");
    refused(
        "https://h/x.img",
        Some(&digest),
        Some("https://h/SUMS"),
        "not both",
    );
    refused(
        "https://h/x.img",
        Some("md5:00"),
        None,
        "unknown hash function",
    );
    refused("ftp://h/x.img", None, None, "scheme ftp");
    refused("https://h/x.img", None, Some("sums.txt"), "not a valid URL");
    refused(
        "/srv/x.img",
        None,
        Some("https://h/SUMS"),
        "applies to a URL",
    );
    refused("debian-12", Some(&digest), None, "is a catalog image");
    refused("images/x.img", None, None, "not a URL, an absolute path");
    refused("debain-12", None, None, "the catalog has debian-12");
}

#[test]
fn a_digest_to_remove_is_a_prefix_of_at_least_eight_hex_digits() {
    assert_eq!(digest_prefix("sha256:0123ABCD").as_deref(), Ok("0123abcd"));
    assert_eq!(digest_prefix(&hex('f')), Ok(hex('f')));
    for bad in [
        "0123abc",
        "sha256:",
        "sha512:0123abcd",
        "0123abcg",
        &hex('a').repeat(2),
    ] {
        assert!(digest_prefix(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_catalog_resolves_every_entry_with_the_mirror() {
    let own = catalog_result(None);
    assert_eq!(own.mirror, None);
    assert_eq!(own.images.len(), catalog::entries().len());
    let debian = own.images.iter().find(|i| i.name == "debian-12").unwrap();
    assert!(
        debian.url.starts_with("https://cloud.debian.org/"),
        "{debian:?}"
    );
    assert_eq!(debian.user, "debian");

    let mirrored = catalog_result(Some("http://10.0.0.1/m".into()));
    let debian = mirrored
        .images
        .iter()
        .find(|i| i.name == "debian-12")
        .unwrap();
    assert_eq!(
        (debian.url.as_str(), debian.checksums.as_str()),
        (
            "http://10.0.0.1/m/debian-12/debian-12-genericcloud-amd64.qcow2",
            "http://10.0.0.1/m/debian-12/SHA512SUMS"
        )
    );
}

#[test]
fn progress_becomes_an_image_fetch_event() {
    let p = images::Progress {
        source: "https://h/x.img".into(),
        phase: images::Phase::Download,
        done: 10,
        total: Some(100),
        rate: 5,
    };
    assert_eq!(
        serde_json::to_value(crate::vm::image_fetch("web-0", &p)).unwrap(),
        serde_json::json!({"ImageFetch": {
            "vm": "web-0", "source": "https://h/x.img", "phase": "download",
            "bytes_done": 10, "bytes_total": 100, "rate_bps": 5
        }})
    );
}

fn daemon(dir: &Path) -> Arc<Daemon> {
    Daemon::new(super::super::Settings {
        socket: dir.join("castrad.sock"),
        state_base: dir.join("state"),
        shutdown_grace: Duration::from_secs(1),
        accel_override: None,
        max_parallel: 1,
        image_store: dir.join("images"),
        image_mirror: None,
        user_config: dir.join("config.toml"),
    })
}

/// What `castra.imagePull` is asked is checked before the store or a project is touched.
#[tokio::test]
async fn a_pull_asks_for_an_image_or_a_project() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path());
    let config = dir.path().join("castra.toml");
    let cases = [
        (api::ImagePullParams::default(), "give `image`"),
        (
            api::ImagePullParams {
                image: Some("debian-12".into()),
                config: Some(config.clone()),
                ..Default::default()
            },
            "not both",
        ),
        (
            api::ImagePullParams {
                image: Some("debian-12".into()),
                vms: vec!["web".into()],
                ..Default::default()
            },
            "`vms` goes with `config`",
        ),
        (
            api::ImagePullParams {
                config: Some(config),
                digest: Some(format!("sha256:{}", hex('a'))),
                ..Default::default()
            },
            "go with `image`",
        ),
    ];
    for (params, says) in cases {
        match daemon.image_pull(&params).await {
            Err(DaemonError::InvalidParams(e)) => assert!(e.contains(says), "{params:?}: {e}"),
            other => panic!("{params:?}: {other:?}"),
        }
    }
    assert!(
        !dir.path().join("images").exists(),
        "the store was not touched"
    );
}

/// A named VM whose image the store does not keep is refused; unnamed ones are passed over.
#[tokio::test]
async fn a_projects_pull_takes_the_images_the_store_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path());
    std::fs::write(dir.path().join("base.img"), "img").unwrap();
    let config = dir.path().join("castra.toml");
    std::fs::write(
        &config,
        "version = \"1\"\n[project]\nname = \"p\"\n\
         [[vms]]\nname = \"web\"\nreplicas = 2\nbase_image = \"base.img\"\n\
         [[vms]]\nname = \"kept\"\nbase_image = \"base.img\"\nbase_image_import = false\n\
         [[vms]]\nname = \"ext\"\nbackend = \"external\"\n[vms.ssh]\nhost = \"10.0.0.9\"\n",
    )
    .unwrap();
    let (sources, mirror) = daemon.project_sources(&config, &[]).await.unwrap();
    let names: Vec<&str> = sources.iter().map(|(vm, _)| vm.as_str()).collect();
    assert_eq!(names, ["web-0"], "one source, once, under its first VM");
    assert_eq!(mirror, None);
    for (vm, says) in [
        ("ext", "it has no base image"),
        ("kept", "base_image_import = false"),
    ] {
        match daemon.project_sources(&config, &[vm.to_owned()]).await {
            Err(e @ DaemonError::NoStoreImage { .. }) => {
                assert!(e.to_string().contains(says), "{e}");
            }
            other => panic!("{vm}: {other:?}"),
        }
    }
}
