use std::collections::BTreeMap;
use std::path::Path;

use super::*;

fn debian() -> Image {
    parse_image("debian-12", &catalog()).unwrap()
}

#[test]
fn the_catalog_compiled_in_has_the_default_image() {
    let catalog = catalog();
    assert!(catalog.contains_key(DEFAULT_IMAGE), "{catalog:?}");
    assert!(catalog.keys().any(|k| k.starts_with("ubuntu-")));
    assert_eq!(
        debian(),
        Image::Catalog {
            name: "debian-12".into(),
            description: catalog["debian-12"].clone(),
        }
    );
}

#[test]
fn images_are_catalog_names_or_https_urls() {
    let catalog: BTreeMap<String, String> = [("debian-12".to_owned(), "Debian".to_owned())].into();
    let url = "https://example.org/images/x.qcow2";
    assert_eq!(
        parse_image(url, &catalog).unwrap(),
        Image::Url(url.to_owned())
    );
    for (bad, says) in [
        (
            "debian-99",
            "not a catalog name (debian-12) or an https:// URL",
        ),
        (
            "http://example.org/x.qcow2",
            "a http:// image needs base_image_digest",
        ),
        ("file:///srv/x.qcow2", "https:// URLs only"),
        ("https://example.org/", "naming an image file"),
        ("https://example.org", "naming an image file"),
    ] {
        let f = parse_image(bad, &catalog).unwrap_err();
        assert_eq!(f.exit, Exit::Usage, "{bad}");
        assert!(
            f.message.starts_with(&format!("--image {bad:?}: ")) && f.message.contains(says),
            "{bad}: {}",
            f.message
        );
    }
}

#[test]
fn project_names_come_from_the_directory_made_valid() {
    for (dir, name) in [
        ("/home/a/shop", "shop"),
        ("/home/a/My Project (2)", "my-project-2"),
        ("/home/a/_x__y_", "x-y"),
        ("/home/a/Ünïcode", "n-code"),
        ("/home/a/---", "castra"),
        ("/", "castra"),
    ] {
        let made = project_name(Path::new(dir));
        assert_eq!(made, name, "{dir}");
        assert!(valid_name(&made), "{made}");
    }
    let long = format!("/home/a/{}", "a".repeat(100));
    assert_eq!(project_name(Path::new(&long)).len(), 63);
    assert!(!valid_name("-x") && !valid_name("") && !valid_name("A") && valid_name("a-1"));
}

/// The keys castrad reads, as TOML parses them (castrad's acceptance of the whole file is the
/// end-to-end test's: tests/it/init.rs).
#[test]
fn the_config_is_toml_with_one_cloud_vm_and_its_script() {
    let text = render_config("shop", &debian());
    let doc: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(doc["project"]["name"].as_str(), Some("shop"));
    let vms = doc["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 1);
    let vm = &vms[0];
    assert_eq!(vm["name"].as_str(), Some("dev"));
    assert_eq!(vm["base_image"].as_str(), Some("debian-12"));
    assert_eq!(vm["ssh"]["user"].as_str(), Some("dev"));
    assert_eq!(vm["bootstrap"]["script"].as_str(), Some(SCRIPT_NAME));
    assert!(vm.get("cloud_init").is_none(), "commented out");
    assert!(text.contains("# authorized_keys = "), "{text}");
    assert!(text.contains("castractl image catalog"), "{text}");

    let url = "https://example.org/img/cloud \"x\".qcow2";
    let text = render_config("p", &Image::Url(url.into()));
    let doc: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(doc["vms"][0]["base_image"].as_str(), Some(url), "quoted");
    assert!(
        text.contains("# base_image_checksums = \"https://example.org/img/SHA256SUMS\"\n"),
        "{text}"
    );
    assert!(text.contains("# base_image_digest = "), "{text}");
    assert!(SCRIPT.starts_with("#!/bin/sh\n") && SCRIPT.contains("touch ~/.castra-ready"));
}

#[test]
fn init_writes_both_files_and_never_over_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("castra.toml");
    let script = dir.path().join(SCRIPT_NAME);
    assert_eq!(
        run(&config, "debian-12", Some("lab"), true).unwrap(),
        Exit::Ok
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert_eq!(written, render_config("lab", &debian()));
    assert_eq!(std::fs::read_to_string(&script).unwrap(), SCRIPT);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
    assert_ne!(mode(&script) & 0o100, 0, "the script is executable");
    assert_eq!(mode(&config) & 0o111, 0);

    // Again: castra.toml is there; nothing changes.
    std::fs::write(&script, "mine\n").unwrap();
    let again = run(&config, "debian-12", None, false).unwrap_err();
    assert_eq!(again.exit, Exit::Usage);
    assert!(
        again
            .message
            .starts_with(&format!("{} exists", config.display())),
        "{}",
        again.message
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);
    assert_eq!(std::fs::read_to_string(&script).unwrap(), "mine\n");

    // Only the script is there: it is named, and no castra.toml is written either.
    std::fs::remove_file(&config).unwrap();
    let f = run(&config, "debian-12", None, false).unwrap_err();
    assert!(f.message.contains(SCRIPT_NAME), "{}", f.message);
    assert!(!config.exists());
    // A bad name or image writes nothing.
    std::fs::remove_file(&script).unwrap();
    assert_eq!(
        run(&config, "debian-12", Some("Bad"), false)
            .unwrap_err()
            .exit,
        Exit::Usage
    );
    assert_eq!(
        run(&config, "nope", None, false).unwrap_err().exit,
        Exit::Usage
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no file, no temporary: {left:?}");
}

#[test]
fn write_new_refuses_a_file_that_exists_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    write_new(&path, b"one", 0o644).unwrap();
    let f = write_new(&path, b"two", 0o644).unwrap_err();
    assert_eq!(f.exit, Exit::Usage);
    assert_eq!(std::fs::read(&path).unwrap(), b"one");
    // A dangling symlink counts as a file: link(2) does not follow it.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    assert_eq!(write_new(&link, b"x", 0o644).unwrap_err().exit, Exit::Usage);
    assert!(!dir.path().join("nowhere").exists());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
