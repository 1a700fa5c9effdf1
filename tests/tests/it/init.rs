//! `castractl init` (issue 24) against a real castrad: what it writes loads, and `castractl
//! plan` plans its VM (a catalog image, and an https URL without a checksum); a second `init`
//! changes nothing and exits 2 naming the file; "no castra.toml" errors, castractl's and
//! castrad's, point at `init`.

use crate::support::Env;

#[test]
fn init_writes_a_project_that_castrad_plans_and_never_overwrites_it() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    let dir = env.path("My Project");
    std::fs::create_dir_all(&dir).unwrap();

    // Nothing here yet: castractl says how to make a castra.toml.
    let none = env.ctl(&dir, &["plan"]);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(
        none.stderr.contains("no castra.toml in") && none.stderr.contains("castractl init"),
        "{none:?}"
    );

    let init = env.ctl(&dir, &["init", "--json"]);
    assert_eq!(init.code, 0, "{init:?}");
    let written = init.json();
    let config = dir.join("castra.toml").canonicalize().unwrap();
    assert_eq!(written["config"], config.to_str().unwrap(), "{written}");
    assert_eq!(written["project"], "my-project", "{written}");
    assert_eq!(written["image"], "debian-12", "{written}");
    assert!(dir.join("bootstrap.sh").is_file());

    let plan = env.ctl(&dir, &["plan", "--json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan = plan.json();
    assert_eq!(plan["project"], "my-project", "{plan}");
    let vms = plan["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 1, "{plan}");
    let dev = &vms[0];
    assert_eq!(dev["vm"], "dev", "{plan}");
    assert_eq!(dev["action"], "run", "{plan}");
    assert_eq!(dev["ssh"]["user"], "dev", "{plan}");
    assert_eq!(
        dev["script_path"],
        dir.join("bootstrap.sh")
            .canonicalize()
            .unwrap()
            .to_str()
            .unwrap(),
        "{plan}"
    );
    assert_eq!(dev["verify"]["command"], "test -f ~/.castra-ready");
    assert_eq!(dev["base_image"]["source"], "debian-12", "{plan}");
    assert_eq!(dev["base_image"]["status"], "fetch", "{plan}");
    assert_eq!(dev["base_image"]["verified"], true, "{plan}");

    // Again: exit 2 naming the file, and both files as they were.
    let before = (
        std::fs::read(&config).unwrap(),
        std::fs::read(dir.join("bootstrap.sh")).unwrap(),
    );
    let again = env.ctl(&dir, &["init"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again
            .stderr
            .contains(&format!("{} exists", dir.join("castra.toml").display())),
        "{again:?}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), before.0);
    assert_eq!(std::fs::read(dir.join("bootstrap.sh")).unwrap(), before.1);

    // An image by URL, in another directory named by --config: planned as a download that
    // nothing checks (init leaves the checksum to the user, commented).
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let url = "https://images.example.invalid/cloud/disk.qcow2";
    let init = env.ctl(
        &env.path(""),
        &[
            "init",
            "--config",
            "other/castra.toml",
            "--image",
            url,
            "--name",
            "web",
        ],
    );
    assert_eq!(init.code, 0, "{init:?}");
    assert!(
        init.stdout.contains("project web, VM dev from https://"),
        "{init:?}"
    );
    let plan = env.ctl(&other, &["plan", "--json"]).ok().json();
    let dev = &plan["vms"][0];
    assert_eq!(dev["base_image"]["source"], url, "{plan}");
    assert_eq!(dev["base_image"]["verified"], false, "{plan}");
    assert!(
        dev["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("has no checksum")),
        "{plan}"
    );

    // castrad's own word for a castra.toml that is not there (an editor asking over the API).
    let gone = env.path("gone/castra.toml");
    let rpc = env.http_rpc(
        "castra.plan",
        serde_json::json!({"config": gone, "bootstrap": []}),
    );
    let message = rpc["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("castractl init"), "{rpc}");
}
