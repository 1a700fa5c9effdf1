//! The image store's methods and `castractl image` against a real castrad with its own store
//! (`Env` passes `--image-store`): the empty store's answers (PROTOCOL.md's examples), the
//! catalog through a project's mirror, what castractl refuses and with which exit code; and a
//! pull of a `file://` image (its progress, its result, a checksum that does not match). No VM
//! boots here.

use serde_json::{Value, json};

use crate::examples::{self, Scrub};
use crate::support::Env;

/// The documents' paths for this env's store and project.
fn scrub(env: &Env) -> Scrub {
    Scrub::new()
        .path(&env.images(), "/home/me/.cache/castra/images")
        .path(&env.path("shop"), "/home/me/shop")
}

#[test]
fn an_empty_store_answers_and_castractl_says_so() {
    let env = Env::new();
    env.write(&[(
        "shop/castra.toml",
        "version = \"1\"\n[project]\nname = \"shop\"\nimage_mirror = \"http://127.0.0.1:9/m/\"\n\
         [[vms]]\nname = \"web\"\nbackend = \"external\"\n[vms.ssh]\nhost = \"127.0.0.1\"\n",
    )]);
    let _daemon = env.start_daemon();
    let shop = env.path("shop");
    let nowhere = env.path("");

    let scrub = scrub(&env);
    for (name, method) in [
        ("image-list-result", "castra.imageList"),
        ("image-catalog-result", "castra.imageCatalog"),
        ("image-prune-result", "castra.imagePrune"),
    ] {
        let result = env.http_rpc(method, json!({}))["result"].clone();
        examples::assert_matches(name, &[result], &scrub);
    }

    let ls = env.ctl(&nowhere, &["image", "ls"]).ok();
    assert!(ls.stdout.contains("no images"), "{ls:?}");
    let ls = env.ctl(&nowhere, &["image", "ls", "--json"]).ok().json();
    assert_eq!(ls["images"], json!([]), "{ls}");

    // Outside a project, the distributions' servers; in one, its mirror.
    let catalog = env.ctl(&nowhere, &["image", "catalog"]).ok();
    assert!(
        catalog
            .stdout
            .starts_with("from the distributions' own servers\n"),
        "{catalog:?}"
    );
    assert!(
        catalog
            .stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["debian-12", "debian"])),
        "{catalog:?}"
    );
    let mirrored = env.ctl(&shop, &["image", "catalog", "--json"]).ok().json();
    assert_eq!(mirrored["mirror"], "http://127.0.0.1:9/m/", "{mirrored}");
    let debian = mirrored["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "debian-12")
        .unwrap();
    assert_eq!(
        debian["checksums"], "http://127.0.0.1:9/m/debian-12/SHA512SUMS",
        "{debian}"
    );

    let prune = env.ctl(&nowhere, &["image", "prune"]).ok();
    assert_eq!(
        prune.stdout, "nothing removed: no image is unused (0 B freed)\n",
        "{prune:?}"
    );

    // What castractl and castrad refuse, and the exit codes they say.
    let cases: [(&[&str], i32, &str); 5] = [
        (&["image", "rm", "0123456789ab"], 1, "no image"),
        (
            &["image", "rm", "xyz"],
            2,
            "at least 8 of its first hex digits",
        ),
        (&["image", "pull", "http://h/x.img"], 2, "needs `digest`"),
        (
            &["image", "pull", "debain-12"],
            2,
            "the catalog has debian-12",
        ),
        (
            &["image", "pull", "--vm", "web"],
            2,
            "has no image in the image store",
        ),
    ];
    for (args, code, says) in cases {
        let out = env.ctl(&shop, args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {out:?}");
    }
    let usage = env.ctl(&shop, &["image", "pull", "--digest", "sha256:00"]);
    assert_eq!(usage.code, 2, "--digest needs IMAGE: {usage:?}");
    let no_project = env.ctl(&nowhere, &["image", "pull"]);
    assert_eq!(no_project.code, 2, "{no_project:?}");
    assert!(
        no_project.stderr.contains("no castra.toml"),
        "{no_project:?}"
    );

    // `image pull --json` streams: its error is one JSON line.
    let failed = env.ctl(&shop, &["image", "pull", "file:///x.img", "--json"]);
    assert_eq!(failed.code, 2, "{failed:?}");
    let line: Value = serde_json::from_str(failed.stdout.trim()).unwrap();
    crate::contract::castractl_line(&line);
    assert_eq!(line["error"]["kind"], "invalid-params", "{line}");
}

const MIB: usize = 1 << 20;

/// sha256 of 1 MiB of zeros.
const ZEROS: &str = "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58";

#[test]
fn a_pull_shows_its_progress_and_a_mismatch_keeps_nothing() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("shop/images")).unwrap();
    std::fs::write(env.path("shop/images/base.img"), vec![0u8; MIB]).unwrap();
    let _daemon = env.start_daemon();
    let shop = env.path("shop");
    let url = format!("file://{}", env.path("shop/images/base.img").display());

    let wrong = format!("sha256:{}", "a".repeat(64));
    let mismatch = env.ctl(&shop, &["image", "pull", &url, "--digest", &wrong]);
    assert_eq!(
        mismatch.code, 2,
        "a checksum is the user's input: {mismatch:?}"
    );
    assert!(
        mismatch.stderr.contains("checksum mismatch"),
        "{mismatch:?}"
    );
    let ls = env.ctl(&shop, &["image", "ls", "--json"]).ok().json();
    assert_eq!(ls["images"], json!([]), "nothing was kept: {ls}");

    let digest = format!("sha256:{ZEROS}");
    let pull = env
        .ctl(
            &shop,
            &["image", "pull", &url, "--digest", &digest, "--json"],
        )
        .ok();
    let lines: Vec<Value> = pull
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.iter().for_each(crate::contract::castractl_line);
    let (last, events) = lines.split_last().expect("lines");
    let result = &last["pull"];
    let done = events
        .iter()
        .rfind(|e| e["event"]["ImageFetch"]["phase"] == "done")
        .unwrap_or_else(|| panic!("no done event in {}", pull.stdout));
    assert!(
        events
            .iter()
            .all(|e| e["operation"] == result["operation"] && e["event"]["ImageFetch"]["vm"] == ""),
        "{}",
        pull.stdout
    );
    let scrub = scrub(&env);
    examples::assert_matches("image-pull-result", std::slice::from_ref(result), &scrub);
    examples::assert_matches("event-ImageFetch", std::slice::from_ref(done), &scrub);

    let ls = env.ctl(&shop, &["image", "ls"]).ok();
    assert!(ls.stdout.contains(&ZEROS[..12]), "{ls:?}");
    let rm = env
        .ctl(&shop, &["image", "rm", &ZEROS[..12], "--json"])
        .ok()
        .json();
    assert_eq!(rm["freed_bytes"], MIB, "{rm}");
}

/// `image pull NAME` where NAME is both a catalog name and a file here means the catalog's
/// image, as `base_image = "NAME"` does; `./NAME` is the file.
#[test]
fn a_catalog_name_beats_a_file_of_that_name_and_dot_slash_names_the_file() {
    let env = Env::new();
    env.write(&[("here/debian-12", "not Debian\n")]);
    // Nothing listens on the discard port: the catalog's fetch fails at once, naming its URL.
    let _daemon = env.start_daemon_with(|c| {
        c.arg("--image-mirror").arg("http://127.0.0.1:9/m/");
    });
    let here = env.path("here");
    let by_name = env.ctl(&here, &["image", "pull", "debian-12"]);
    assert_ne!(by_name.code, 0, "{by_name:?}");
    assert!(
        by_name.stderr.contains("127.0.0.1:9/m/debian-12/"),
        "the catalog's image was asked for: {by_name:?}"
    );
    let ls = env.ctl(&here, &["image", "ls", "--json"]).ok().json();
    assert_eq!(ls["images"], json!([]), "the file was not imported: {ls}");

    let by_path = env
        .ctl(&here, &["image", "pull", "./debian-12", "--json"])
        .ok();
    let last: Value = serde_json::from_str(by_path.stdout.lines().last().unwrap()).unwrap();
    let source = last["pull"]["images"][0]["origins"][0]["source"]
        .as_str()
        .unwrap_or("");
    assert!(source.ends_with("/here/debian-12"), "{last}");
}
