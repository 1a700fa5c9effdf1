//! `base_image` as a path, a URL or a catalog name, with `base_image_digest`,
//! `base_image_checksums` and `base_image_import` (issue 23): what each becomes, and located
//! errors for every way to get them wrong.

use super::errors::run_cases;
use super::*;
use crate::images::{Check, Digest, Source};

/// Lines 1-5 of a qemu VM "web" without base_image; appended text starts on line 6.
macro_rules! vm {
    () => {
        "[project]\nname = \"demo\"\n\n[[vms]]\nname = \"web\"\n"
    };
}

fn source(text: &str) -> Source {
    ok(text).vms[0]
        .base_image
        .as_ref()
        .and_then(|b| b.local())
        .cloned()
        .expect("a local base image")
}

#[test]
fn a_url_with_a_digest_or_a_checksums_file() {
    let hex = "Ab".repeat(32);
    let s = source(&format!(
        "{}base_image = \"https://h/i/x.qcow2\"\nbase_image_digest = \"sha256:{hex}\"\n",
        vm!()
    ));
    assert_eq!(
        s,
        Source::Url {
            url: "https://h/i/x.qcow2".into(),
            check: Check::Digest(Digest::sha256(&hex).unwrap()),
        }
    );
    let s = source(concat!(
        vm!(),
        "base_image = \"http://127.0.0.1:8000/x.img\"\n",
        "base_image_checksums = \"http://127.0.0.1:8000/SHA256SUMS\"\n"
    ));
    assert_eq!(
        s,
        Source::Url {
            url: "http://127.0.0.1:8000/x.img".into(),
            check: Check::Sums("http://127.0.0.1:8000/SHA256SUMS".into()),
        }
    );
    // https without a checksum: allowed, unverified (plan says so).
    let s = source(concat!(vm!(), "base_image = \"https://h/x.qcow2\"\n"));
    assert!(matches!(
        s,
        Source::Url {
            check: Check::Unverified,
            ..
        }
    ));
}

#[test]
fn a_catalog_name_a_path_and_import() {
    let p = ok(concat!(vm!(), "base_image = \"debian-12\"\n"));
    assert_eq!(
        p.vms[0].base_image.as_ref().and_then(|b| b.local()),
        Some(&Source::Catalog {
            name: "debian-12".into()
        })
    );
    let s = source(concat!(
        vm!(),
        "base_image = \"images/b.qcow2\"\nbase_image_import = false\n"
    ));
    assert_eq!(
        s,
        Source::File {
            path: Path::new(PATH).with_file_name("images/b.qcow2"),
            import: false,
            digest: None,
        }
    );
    // A file of a catalog image's name is written as a path.
    let s = source(concat!(vm!(), "base_image = \"./debian-12\"\n"));
    assert!(matches!(s, Source::File { import: true, .. }), "{s:?}");
    // The project's mirror reaches every VM.
    let p = ok(concat!(
        "[project]\nname = \"demo\"\nimage_mirror = \"http://127.0.0.1:1/m\"\n\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"debian-12\"\n"
    ));
    assert_eq!(p.image_mirror.as_deref(), Some("http://127.0.0.1:1/m"));
    assert_eq!(p.vms[0].image_mirror, p.image_mirror);
}

#[test]
fn a_url_on_a_libvirt_vm_is_fetched_here_and_uploaded() {
    let p = ok(concat!(
        vm!(),
        "backend = \"libvirt\"\nbase_image = \"https://h/x.qcow2\"\n",
        "base_image_digest = \"sha256:",
        "0000000000000000000000000000000000000000000000000000000000000000\"\n"
    ));
    assert!(p.vms[0].libvirt.as_ref().unwrap().upload, "upload implied");
    let p = ok(concat!(
        vm!(),
        "backend = \"libvirt\"\nbase_image = \"debian-13\"\n"
    ));
    assert!(p.vms[0].libvirt.as_ref().unwrap().upload, "upload implied");
    let p = ok(concat!(
        vm!(),
        "backend = \"libvirt\"\nbase_image = \"/var/b.qcow2\"\n"
    ));
    assert_eq!(
        p.vms[0].base_image.as_ref().and_then(|b| b.hypervisor()),
        Some(Path::new("/var/b.qcow2"))
    );
}

#[test]
fn base_image_mistakes_are_located() {
    let sha = "0".repeat(64);
    let digest_line = format!("base_image_digest = \"sha256:{sha}\"\n");
    let cases = [
        (
            "http without a checksum",
            format!("{}base_image = \"http://h/x.img\"\n", vm!()),
            "vms[0].base_image",
            "a http:// base_image needs `base_image_digest",
            6,
            14,
        ),
        (
            "file:// without a checksum",
            format!("{}base_image = \"file:///srv/x.img\"\n", vm!()),
            "vms[0].base_image",
            "or give the file as a plain path",
            6,
            14,
        ),
        (
            "a scheme castrad does not fetch",
            format!("{}base_image = \"ftp://h/x.img\"\n", vm!()),
            "vms[0].base_image",
            "uses the scheme ftp",
            6,
            14,
        ),
        (
            "a URL without a file name",
            format!("{}base_image = \"https://h/images/\"\n", vm!()),
            "vms[0].base_image",
            "names no file",
            6,
            14,
        ),
        (
            "a malformed digest",
            format!(
                "{}base_image = \"https://h/x.img\"\nbase_image_digest = \"sha256:12\"\n",
                vm!()
            ),
            "vms[0].base_image_digest",
            "expected \"sha256:<64 hex digits>\"",
            7,
            21,
        ),
        (
            "both a digest and a checksums file",
            format!(
                "{}base_image = \"https://h/x.img\"\n{digest_line}base_image_checksums = \"https://h/SUMS\"\n",
                vm!()
            ),
            "vms[0].base_image_checksums",
            "not both",
            8,
            24,
        ),
        (
            "a checksums file for a path",
            format!(
                "{}base_image = \"x.img\"\nbase_image_checksums = \"https://h/SUMS\"\n",
                vm!()
            ),
            "vms[0].base_image_checksums",
            "applies to a URL",
            7,
            24,
        ),
        (
            "import for a URL",
            format!(
                "{}base_image = \"https://h/x.img\"\nbase_image_import = false\n",
                vm!()
            ),
            "vms[0].base_image_import",
            "applies to a base_image given as a path",
            7,
            21,
        ),
        (
            "a digest for a catalog image",
            format!("{}base_image = \"ubuntu-24.04\"\n{digest_line}", vm!()),
            "vms[0].base_image_digest",
            "a catalog image is checked against the checksums file",
            7,
            21,
        ),
        (
            "a URL on a libvirt VM that says upload = false",
            format!(
                "{}backend = \"libvirt\"\nbase_image = \"https://h/x.img\"\n\n[vms.libvirt]\nupload = false\n",
                vm!()
            ),
            "vms[0].base_image",
            "fetching on the hypervisor itself is not supported",
            7,
            14,
        ),
        (
            "import = false on an uploading libvirt VM",
            format!(
                "{}backend = \"libvirt\"\nbase_image = \"b.img\"\nbase_image_import = false\n\n[vms.libvirt]\nupload = true\n",
                vm!()
            ),
            "vms[0].base_image_import",
            "applies to qemu VMs",
            8,
            21,
        ),
        (
            "a companion key on an external VM",
            format!(
                "{}backend = \"external\"\n{digest_line}\n[vms.ssh]\nhost = \"h\"\n",
                vm!()
            ),
            "vms[0].base_image_digest",
            "",
            7,
            21,
        ),
        (
            "a mirror that is not a URL",
            "[project]\nname = \"demo\"\nimage_mirror = \"mirror.example\"\n".to_owned(),
            "project.image_mirror",
            "is not a URL",
            3,
            16,
        ),
    ];
    // `run_cases` takes the static texts of the other tables: these are made once per run.
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, text, key, needle, line, col)| {
            let text: &'static str = Box::leak(text.into_boxed_str());
            (what, text, key, needle, line, col)
        })
        .collect();
    run_cases(&cases);
}
