//! `castractl image`'s text against the exact text a user sees.

use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn image(source: &str, checked_by: Option<&str>, users: &[&str]) -> api::StoredImage {
    api::StoredImage {
        digest: DIGEST.into(),
        path: format!("/c/images/{}", DIGEST.replace(':', "-")).into(),
        size: 356 * 1024 * 1024 + 512 * 1024,
        format: "qcow2".into(),
        virtual_size: 3 << 30,
        origins: vec![api::ImageOrigin {
            source: source.into(),
            checked_by: checked_by.map(str::to_owned),
            at: "2026-12-07T12:00:00Z".into(),
        }],
        users: users
            .iter()
            .map(|vm| api::ImageUser {
                vm: (*vm).into(),
                config: "/p/castra.toml".into(),
                disk: format!("/s/vms/{vm}/disk.qcow2").into(),
            })
            .collect(),
    }
}

#[test]
fn ls_shows_each_image_with_its_users_and_marks_the_unverified() {
    let list = api::ImageListResult {
        store: "/c/images".into(),
        images: vec![
            image(
                "https://cloud.debian.org/d/debian-12.qcow2",
                Some("https://cloud.debian.org/d/SHA512SUMS"),
                &["web-0", "web-1"],
            ),
            image("https://example.org/x.img", None, &[]),
            image("/home/me/base.img", None, &["db"]),
        ],
    };
    assert_eq!(
        list_text(&list),
        "store /c/images\n\
         \n\
         IMAGE         SIZE       FORMAT  USED BY       SOURCE\n\
         0123456789ab  356.5 MiB  qcow2   web-0, web-1  https://cloud.debian.org/d/debian-12.qcow2\n\
         0123456789ab  356.5 MiB  qcow2   -             https://example.org/x.img (unverified)\n\
         0123456789ab  356.5 MiB  qcow2   db            /home/me/base.img\n\
         \n\
         3 image(s), 1.0 GiB\n"
    );
    let empty = api::ImageListResult {
        store: "/c/images".into(),
        images: vec![],
    };
    assert_eq!(
        list_text(&empty),
        "store /c/images\n\nno images (`castractl image pull IMAGE` or `castractl up` fetches \
         them)\n"
    );
}

#[test]
fn rm_and_prune_say_what_they_freed() {
    let one = api::ImageRemoveResult {
        removed: vec![image("https://example.org/x.img", Some("sha256:ab"), &[])],
        freed_bytes: 356 * 1024 * 1024 + 512 * 1024,
    };
    assert_eq!(
        removed_text(&one),
        format!("removed {DIGEST}  356.5 MiB  https://example.org/x.img\nfreed 356.5 MiB\n")
    );
    let none = api::ImageRemoveResult {
        removed: vec![],
        freed_bytes: 0,
    };
    assert_eq!(
        removed_text(&none),
        "nothing removed: no image is unused (0 B freed)\n"
    );
}

#[test]
fn a_pull_ends_with_what_is_in_the_store() {
    let pulled = api::ImagePullResult {
        operation: "op-1".into(),
        images: vec![image("debian-12", Some("https://h/SHA512SUMS"), &[])],
    };
    let text = pulled_text(&pulled);
    assert!(text.starts_with("in the store:\n\nIMAGE "), "{text}");
    assert!(
        text.contains("0123456789ab  356.5 MiB  qcow2   -        debian-12\n"),
        "{text}"
    );
    let nothing = api::ImagePullResult {
        operation: "op-1".into(),
        images: vec![],
    };
    assert!(pulled_text(&nothing).contains("nothing to pull"));
}

#[test]
fn adopt_says_where_each_disk_is_now() {
    let adopted = api::ImageAdoptResult {
        vms: vec![
            api::VmImageAdopt {
                vm: "web-0".into(),
                digest: DIGEST.into(),
                before: "/p/images/base.img".into(),
                after: "/c/images/sha256-0123".into(),
                already: false,
            },
            api::VmImageAdopt {
                vm: "db".into(),
                digest: DIGEST.into(),
                before: "/c/images/sha256-0123".into(),
                after: "/c/images/sha256-0123".into(),
                already: true,
            },
        ],
    };
    assert_eq!(
        adopt_text(&adopted),
        "web-0: now on the store's copy /c/images/sha256-0123 (was /p/images/base.img)\n\
         db: already on the store's copy (0123456789ab)\n"
    );
    let none = api::ImageAdoptResult { vms: vec![] };
    assert!(adopt_text(&none).contains("nothing to adopt"));
}

#[test]
fn the_catalog_names_its_mirror_and_each_image() {
    let catalog = api::ImageCatalogResult {
        mirror: Some("http://10.0.0.1/m".into()),
        images: vec![api::CatalogImage {
            name: "debian-12".into(),
            description: "Debian 12 (bookworm), generic cloud image".into(),
            url: "http://10.0.0.1/m/debian-12/debian-12-genericcloud-amd64.qcow2".into(),
            checksums: "http://10.0.0.1/m/debian-12/SHA512SUMS".into(),
            user: "debian".into(),
        }],
    };
    assert_eq!(
        catalog_text(&catalog),
        "through the mirror http://10.0.0.1/m\n\
         \n\
         NAME       USER    DESCRIPTION                                URL\n\
         debian-12  debian  Debian 12 (bookworm), generic cloud image  \
         http://10.0.0.1/m/debian-12/debian-12-genericcloud-amd64.qcow2\n"
    );
    let own = api::ImageCatalogResult {
        mirror: None,
        images: vec![],
    };
    assert!(catalog_text(&own).starts_with("from the distributions' own servers\n"));
}

#[test]
fn an_image_argument_is_a_url_a_file_made_absolute_or_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    std::fs::write(cwd.join("base.img"), "img").unwrap();
    let here = |rel: &str| cwd.join(rel).display().to_string();
    assert_eq!(image_arg("https://h/x.img", &cwd), "https://h/x.img");
    assert_eq!(image_arg("debian-12", &cwd), "debian-12");
    assert_eq!(image_arg("base.img", &cwd), here("base.img"));
    assert_eq!(image_arg("./base.img", &cwd), here("base.img"));
    // A path that is not there yet is still a path: castrad says what is wrong with it.
    assert_eq!(image_arg("images/new.img", &cwd), here("images/new.img"));
    assert_eq!(image_arg("/srv/x.img", &cwd), "/srv/x.img");
}

/// What a store record or castrad relays (a URL, a VM name) cannot drive the terminal.
#[test]
fn hostile_text_stays_in_its_cell() {
    let hostile = "evil\u{1b}]0;pwned\u{7}\nnext";
    let list = api::ImageListResult {
        store: "/c".into(),
        images: vec![image(hostile, None, &[hostile])],
    };
    let text = list_text(&list);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text}"
    );
    assert_eq!(text.lines().count(), 6, "{text}");
    let adopted = api::ImageAdoptResult {
        vms: vec![api::VmImageAdopt {
            vm: hostile.into(),
            digest: DIGEST.into(),
            before: hostile.into(),
            after: "/c".into(),
            already: false,
        }],
    };
    let text = adopt_text(&adopted);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}
