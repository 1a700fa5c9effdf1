//! `castractl doctor` and `castra.doctor` (issue 16 §5) against a real castrad: a good project
//! passes, an unusable base image and a taken port fail by name, castrad unreachable is a
//! failed check (exit 1), and the `--json` output is castra.doctor's result.

use serde_json::Value;

use crate::support::Env;

/// A QEMU project whose files are all there: a raw base image, a key, a free forwarded port.
fn project(env: &Env, image: &str, port: u16) -> std::path::PathBuf {
    env.write(&[
        (
            "lab/castra.toml",
            &format!(
                "version = \"1\"\n[project]\nname = \"lab\"\n[[vms]]\nname = \"web\"\n\
                 base_image = \"{image}\"\n[vms.ssh]\nuser = \"root\"\nidentity = \"id_test\"\n\
                 [[vms.port_forwards]]\nhost = {port}\nguest = 80\n"
            ),
        ),
        ("lab/base.img", "a raw disk image\n"),
        ("lab/id_test", "not really a key\n"),
    ]);
    env.path("lab")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The checks of `--json` output by (check, vm) → status.
fn statuses(doc: &Value) -> Vec<(String, Option<String>, String)> {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["vm"].as_str().map(str::to_owned),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn doctor_passes_a_good_project_and_names_an_unusable_image_and_a_taken_port() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    let port = free_port();
    let dir = project(&env, "base.img", port);

    let good = env.ctl(&dir, &["doctor"]);
    assert_eq!(good.code, 0, "{good:?}");
    for line in [
        "ok    castrad: castrad ",
        "ok    config: ",
        "ok    base-image [web]: ",
        &format!("ok    ports [web]: {port}/tcp: free"),
        "ok    keys [web]: readable: ",
        "ok    state-dir: ",
        "ok    ssh: OpenSSH",
    ] {
        assert!(good.stdout.contains(line), "{line:?} missing: {good:?}");
    }
    assert!(!good.stdout.contains("FAIL"), "{good:?}");
    let json = env.ctl(&dir, &["doctor", "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let doc = json.json();
    let seen = statuses(&doc);
    for check in [
        "castrad",
        "qemu",
        "qemu-img",
        "kvm",
        "virtiofsd",
        "state-dir",
        "disk-space",
        "fd-limit",
        "ssh",
        "config",
        "base-image",
        "ports",
        "keys",
    ] {
        assert!(
            seen.iter().any(|(c, _, _)| c == check),
            "no {check} check: {doc}"
        );
    }
    assert!(seen.iter().all(|(_, _, s)| s != "fail"), "{doc}");

    // The image now has a backing file (castrad refuses those as bases), and another program
    // holds the forwarded port.
    let overlay = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.img"])
        .arg("layered.qcow2")
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(overlay.success());
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    project(&env, "layered.qcow2", port);
    let bad = env.ctl(&dir, &["doctor"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    let image_line = bad
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL  base-image [web]: "))
        .unwrap_or_else(|| panic!("no failed base-image check: {bad:?}"));
    assert!(
        image_line.contains("layered.qcow2") && image_line.contains("backing"),
        "{image_line}"
    );
    assert!(
        bad.stdout.contains(&format!(
            "FAIL  ports [web]: in use by another program: {port}/tcp (port_forwards)"
        )),
        "{bad:?}"
    );
    assert!(bad.stdout.contains("2 failed"), "{bad:?}");
    let json = env.ctl(&dir, &["doctor", "--json"]);
    assert_eq!(json.code, 1, "{json:?}");
    let failed: Vec<_> = statuses(&json.json())
        .into_iter()
        .filter(|(_, _, s)| s == "fail")
        .map(|(c, vm, _)| (c, vm))
        .collect();
    let web = Some("web".to_owned());
    assert_eq!(
        failed,
        [
            ("base-image".to_owned(), web.clone()),
            ("ports".to_owned(), web)
        ]
    );

    // An editor gets the same checks over the API, castrad's side only.
    let config = dir.join("castra.toml").canonicalize().unwrap();
    let rpc = env.http_rpc("castra.doctor", serde_json::json!({"config": config}));
    let checks = &rpc["result"]["checks"];
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "ports" && c["status"] == "fail"),
        "{rpc}"
    );
}

#[test]
fn doctor_reports_an_unreachable_castrad_as_a_failed_check() {
    let env = Env::new();
    // No daemon: its socket does not exist.
    let out = env.ctl(env.dir.path(), &["doctor"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .starts_with("FAIL  castrad: cannot reach castrad at "),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("systemctl --user enable --now castrad.socket")
    );
    let json = env.ctl(env.dir.path(), &["doctor", "--json"]);
    assert_eq!(json.code, 1, "{json:?}");
    let doc = json.json();
    assert_eq!(doc["checks"][0]["check"], "castrad", "{doc}");
    assert_eq!(doc["checks"][0]["status"], "fail", "{doc}");
}
