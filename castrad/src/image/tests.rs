use super::*;

const RAW: &str = r#"{
    "virtual-size": 67108864,
    "filename": "/img/base.img",
    "format": "raw",
    "actual-size": 4587520,
    "dirty-flag": false
}"#;

const CHAINED: &str = r#"{
    "backing-filename-format": "raw",
    "virtual-size": 512,
    "filename": "/img/chain.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "corrupt": false}},
    "full-backing-filename": "/home/u/.ssh/id_ed25519",
    "backing-filename": "../.ssh/id_ed25519",
    "dirty-flag": false
}"#;

const DATA_FILE: &str = r#"{
    "virtual-size": 1048576,
    "filename": "/img/df.qcow2",
    "format": "qcow2",
    "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "data-file": "/etc/shadow", "data-file-raw": false}},
    "dirty-flag": false
}"#;

fn parse(json: &str) -> Result<ImageInfo, ImageError> {
    parse_info(Path::new("/img/base.img"), json.as_bytes())
}

#[test]
fn a_raw_image_is_a_good_base() {
    let info = parse(RAW).unwrap();
    assert_eq!(
        info,
        ImageInfo {
            format: "raw".into(),
            virtual_size: 64 << 20,
            backing: None,
            data_file: None,
        }
    );
    check_base(Path::new("/img/base.img"), &info).unwrap();
}

#[test]
fn a_backing_file_is_refused_with_its_name_and_how_to_flatten() {
    let info = parse(CHAINED).unwrap();
    assert_eq!(info.backing.as_deref(), Some("/home/u/.ssh/id_ed25519"));
    let e = check_base(Path::new("/img/chain.qcow2"), &info).unwrap_err();
    let msg = e.to_string();
    for part in [
        "base image /img/chain.qcow2 has a backing file, /home/u/.ssh/id_ed25519",
        "qemu-img convert -O qcow2 /img/chain.qcow2 /img/chain-flat.qcow2",
    ] {
        assert!(msg.contains(part), "{part:?} missing from {msg}");
    }
    // Without the full name, the name as written in the image.
    let relative = CHAINED.replace(
        "\"full-backing-filename\": \"/home/u/.ssh/id_ed25519\",",
        "",
    );
    assert_eq!(
        parse(&relative).unwrap().backing.as_deref(),
        Some("../.ssh/id_ed25519")
    );
}

#[test]
fn an_external_data_file_and_other_formats_are_refused() {
    let info = parse(DATA_FILE).unwrap();
    let e = check_base(Path::new("/img/df.qcow2"), &info).unwrap_err();
    assert!(matches!(&e, ImageError::DataFile { data_file, .. } if data_file == "/etc/shadow"));
    let vmdk = parse(&RAW.replace("\"raw\"", "\"vmdk\"")).unwrap();
    let e = check_base(Path::new("/img/disk.vmdk"), &vmdk).unwrap_err();
    assert!(
        e.to_string()
            .contains("is in format vmdk; castrad accepts raw and qcow2"),
        "{e}"
    );
}

#[test]
fn output_that_is_not_what_qemu_img_prints_is_an_error() {
    for bad in [
        "",
        "not json",
        "{}",
        r#"{"format": "raw"}"#,
        r#"{"virtual-size": 1}"#,
    ] {
        let e = parse(bad).unwrap_err();
        assert!(matches!(e, ImageError::Unreadable { .. }), "{bad:?}: {e}");
    }
}

#[test]
fn real_images_are_read_and_a_chained_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "not for the guest").unwrap();
    let raw = dir.path().join("base.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    assert_eq!(base(&raw).unwrap().format, "raw");
    assert_eq!(base(&raw).unwrap().format, "raw", "remembered");

    let chained = dir.path().join("chained.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&chained)
        .status()
        .unwrap();
    assert!(made.success());
    let e = base(&chained).unwrap_err();
    assert!(
        matches!(&e, ImageError::Backed { backing, .. } if backing == &*secret.to_string_lossy()),
        "{e}"
    );
    let missing = base(&dir.path().join("missing.img")).unwrap_err();
    assert!(
        matches!(missing, ImageError::Unreadable { .. }),
        "{missing}"
    );
}
