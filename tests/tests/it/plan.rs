//! `castra.plan` end to end: castractl and raw HTTP against a real castrad on a real socket.

use serde_json::{Value, json};

use crate::support::{Env, snapshot};

pub const PROJECT: &str = r#"
version = "1"

[project]
name = "shop"

[bootstrap]
handshake_timeout_secs = 45

[bootstrap.env]
REGION = "eu"

[[vms]]
name = "web"
replicas = 3
backend = "external"

[vms.ssh]
host = "127.0.0.1"
port = 2201
user = "deploy"

[vms.bootstrap]
script = "scripts/web.sh"
payload = "payload"
verify_command = "test -f /tmp/ok"

[vms.bootstrap.env]
ROLE = "web"

[[vms]]
name = "db"
base_image = "images/base.img"
memory = "1 GiB"

[vms.bootstrap]
mode = "skip"
script = "scripts/db.sh"
handshake_timeout_secs = 10
"#;

/// The same project with keys and tables in another order (and other whitespace).
const PROJECT_REORDERED: &str = r#"version = "1"
[bootstrap.env]
REGION = "eu"
[project]
name = "shop"
[bootstrap]
handshake_timeout_secs = 45
"#;

fn write_project(env: &Env) {
    env.write(&[
        ("shop/castra.toml", PROJECT),
        ("shop/scripts/web.sh", "#!/bin/sh\necho web > /tmp/ok\n"),
        ("shop/scripts/db.sh", "#!/bin/sh\necho db\n"),
        (
            "shop/scripts/bootstrap.toml",
            "[env]\nSECRET = \"hunter2\"\n[ssh]\noptions = [\"ServerAliveInterval=5\"]\n",
        ),
        ("shop/payload/app.conf", "listen 8080\n"),
        ("shop/payload/static/index.html", "<h1>hi</h1>\n"),
        (
            "shop/images/base.img",
            "not really a disk image, but bytes to hash\n",
        ),
    ]);
}

fn plan_json(env: &Env, args: &[&str]) -> Value {
    let mut full = vec!["plan", "--json"];
    full.extend_from_slice(args);
    env.ctl(&env.path("shop"), &full).ok().json()
}

fn field<'a>(plan: &'a Value, key: &str) -> Vec<&'a Value> {
    plan["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| &vm[key])
        .collect()
}

fn strs(values: Vec<&Value>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| v.as_str().unwrap_or("null").to_owned())
        .collect()
}

#[test]
fn plan_reports_every_vm_in_file_order_with_the_seed_fields() {
    let env = Env::new();
    write_project(&env);
    let _daemon = env.start_daemon();

    let plan = plan_json(&env, &[]);
    assert_eq!(plan["project"], "shop");
    assert_eq!(strs(field(&plan, "vm")), ["web-0", "web-1", "web-2", "db"]);
    assert_eq!(strs(field(&plan, "mode")), ["auto", "auto", "auto", "skip"]);
    assert_eq!(strs(field(&plan, "action")), ["run", "run", "run", "skip"]);
    assert_eq!(
        strs(field(&plan, "trigger")),
        ["auto", "auto", "auto", "null"]
    );

    // Exactly the contract's fields, no more, no fewer.
    let mut keys: Vec<&str> = plan["vms"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut want = vec![
        "vm",
        "mode",
        "action",
        "reason",
        "trigger",
        "script_path",
        "payload_path",
        "payload_bytes",
        "handshake_timeout_secs",
        "remote_dir",
        "ssh",
        "env_keys",
        "verify",
        "artifact_hash",
        "metadata_path",
        "warnings",
        "vizier_status",
        "vizier_log_path",
        "vizier_remediation",
        "disk_mib",
        "network_address",
        "base_image",
        "drift",
        "mounts",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    // One QEMU VM: no project network.
    assert_eq!(
        strs(field(&plan, "network_address")),
        ["null", "null", "null", "null"]
    );

    let web1 = &plan["vms"][1];
    let shop = env.path("shop").canonicalize().unwrap();
    assert_eq!(web1["script_path"], json!(shop.join("scripts/web.sh")));
    assert_eq!(web1["payload_path"], json!(shop.join("payload")));
    assert_eq!(web1["payload_bytes"], 12 + 12);
    assert_eq!(web1["handshake_timeout_secs"], 45);
    assert_eq!(web1["remote_dir"], "/var/tmp/castra/web-1");
    assert_eq!(web1["env_keys"], json!(["REGION", "ROLE", "SECRET"]));
    assert_eq!(
        web1["verify"],
        json!({"command": "test -f /tmp/ok", "path": null})
    );
    assert_eq!(
        web1["metadata_path"],
        json!(shop.join("scripts/bootstrap.toml"))
    );
    assert_eq!(
        web1["ssh"],
        json!({"user": "deploy", "host": "127.0.0.1", "port": 2201, "identity": null,
               "options": ["ServerAliveInterval=5"]})
    );
    assert_eq!(web1["reason"], "not bootstrapped yet (no stamp)");
    let hashes = strs(field(&plan, "artifact_hash"));
    assert!(hashes.iter().all(|h| h.len() == 64), "{hashes:?}");
    assert_ne!(
        hashes[0], hashes[1],
        "replicas differ by remote_dir, so by artifact"
    );
    assert_eq!(plan["vms"][3]["reason"], "mode skip (from castra.toml)");
    assert_eq!(
        plan["vms"][3]["handshake_timeout_secs"],
        Value::Null,
        "skipped: no handshake"
    );

    // No env value ever leaves the daemon.
    let text = serde_json::to_string(&plan).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("\"eu\""),
        "env values leaked: {text}"
    );
}

#[test]
fn castractl_and_raw_http_see_the_same_plan() {
    let env = Env::new();
    write_project(&env);
    let _daemon = env.start_daemon();
    let config = env.path("shop/castra.toml").canonicalize().unwrap();

    let via_ctl = plan_json(&env, &["--bootstrap", "skip,web-1:always"]);
    let via_http = env.http_rpc(
        "castra.plan",
        json!({"config": config, "bootstrap": ["skip,web-1:always"]}),
    );
    assert_eq!(via_http["jsonrpc"], "2.0");
    assert_eq!(via_http["result"], via_ctl);

    let version = env.http_rpc("castra.version", json!({}));
    assert_eq!(version["result"]["protocol"], 1);
}

#[test]
fn overrides_follow_precedence_per_vm_over_global_over_file() {
    let env = Env::new();
    write_project(&env);
    let _daemon = env.start_daemon();

    let cases: &[(&[&str], [&str; 4])] = &[
        (
            &["--bootstrap", "always"],
            ["always", "always", "always", "always"],
        ),
        (
            &["--bootstrap", "skip", "--bootstrap", "web-1=always"],
            ["skip", "always", "skip", "skip"],
        ),
        (
            &["--bootstrap", "web-1=always", "--bootstrap", "skip"],
            ["skip", "always", "skip", "skip"],
        ),
        (
            &["--bootstrap", "always,db:skip"],
            ["always", "always", "always", "skip"],
        ),
        (
            &["--bootstrap", "db=always,web-2:disabled"],
            ["auto", "auto", "skip", "always"],
        ),
        (
            &["--bootstrap", "always", "--bootstrap", "always"],
            ["always", "always", "always", "always"],
        ),
    ];
    for (args, modes) in cases {
        let plan = plan_json(&env, args);
        assert_eq!(strs(field(&plan, "mode")), modes, "{args:?}");
    }

    let plan = plan_json(&env, &["--bootstrap", "skip,web-1=always"]);
    assert_eq!(
        strs(field(&plan, "action")),
        ["skip", "run", "skip", "skip"]
    );
    assert_eq!(
        plan["vms"][1]["reason"],
        "mode always (from --bootstrap web-1=always): runs even if a stamp matches"
    );
    assert_eq!(
        plan["vms"][0]["reason"],
        "mode skip (from --bootstrap skip)"
    );
}

#[test]
fn preflight_errors_exit_2_name_the_problem_and_write_nothing() {
    let env = Env::new();
    write_project(&env);
    let _daemon = env.start_daemon();
    let shop = env.path("shop");
    // Once on a fresh state dir (only castrad's lock in it), once after a plan populated it.
    for round in 0..2 {
        if round == 1 {
            plan_json(&env, &[]);
            assert!(env.state().exists());
        }
        let before = snapshot(&env.state());
        let project_before = snapshot(&shop);

        let conflict = env.ctl(&shop, &["plan", "--bootstrap", "web-0=always,web-0:skip"]);
        assert_eq!(conflict.code, 2, "{conflict:?}");
        assert!(
            conflict
                .stderr
                .contains("conflicting modes for VM web-0: web-0=always and web-0:skip"),
            "{conflict:?}"
        );

        let global = env.ctl(
            &shop,
            &["plan", "--bootstrap", "always", "--bootstrap", "skip"],
        );
        assert_eq!(global.code, 2);
        assert!(
            global
                .stderr
                .contains("conflicting global modes: always and skip"),
            "{global:?}"
        );

        let unknown = env.ctl(&shop, &["plan", "--json", "--bootstrap", "web=always"]);
        assert_eq!(unknown.code, 2);
        let err = unknown.json();
        assert_eq!(err["error"]["kind"], "preflight");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains("known VMs: web-0, web-1, web-2, db"), "{msg}");
        assert!(msg.contains("web has replicas"), "{msg}");

        let bad_mode = env.ctl(&shop, &["plan", "--bootstrap", "db=sometimes"]);
        assert_eq!(bad_mode.code, 2);
        assert!(
            bad_mode.stderr.contains("unknown mode \"sometimes\""),
            "{bad_mode:?}"
        );

        assert_eq!(
            snapshot(&env.state()),
            before,
            "a rejected plan wrote to the state dir"
        );
        assert_eq!(snapshot(&shop), project_before);
    }
}

#[test]
fn config_errors_exit_2_with_file_line_and_column() {
    let env = Env::new();
    write_project(&env);
    let _daemon = env.start_daemon();
    let broken = PROJECT.replace("mode = \"skip\"", "mode = \"sometimes\"");
    env.write(&[("shop/castra.toml", &broken)]);
    let line = broken
        .lines()
        .position(|l| l.contains("sometimes"))
        .unwrap()
        + 1;

    let out = env.ctl(&env.path("shop/scripts"), &["plan"]);
    assert_eq!(out.code, 2, "{out:?}");
    let config = env.path("shop/castra.toml").canonicalize().unwrap();
    let want = format!("{}:{line}:8: vms[1].bootstrap.mode", config.display());
    assert!(out.stderr.contains(&want), "want {want} in {}", out.stderr);

    let json = env.ctl(&env.path("shop"), &["--json", "plan"]).json();
    assert_eq!(json["error"]["kind"], "config");
    let location = &json["error"]["rpc"]["data"]["location"];
    assert_eq!(location["line"], line);
    assert_eq!(location["column"], 8);

    let nowhere = env.ctl(env.dir.path(), &["plan"]);
    assert_eq!(nowhere.code, 2);
    assert!(nowhere.stderr.contains("no castra.toml in"), "{nowhere:?}");
}

#[test]
fn artifact_hash_follows_content_not_key_order() {
    let env = Env::new();
    write_project(&env);
    let daemon = env.start_daemon();
    let hashes = |env: &Env| strs(field(&plan_json(env, &[]), "artifact_hash"));
    let first = hashes(&env);

    // Same content, keys and tables reordered.
    let vms = &PROJECT[PROJECT.find("[[vms]]").unwrap()..];
    let vms = vms.replace(
        "host = \"127.0.0.1\"\nport = 2201",
        "port = 2201\n  host = \"127.0.0.1\"",
    );
    assert!(
        vms.contains("port = 2201\n  host"),
        "the reordering applied"
    );
    let reordered = format!("{PROJECT_REORDERED}{vms}");
    env.write(&[("shop/castra.toml", &reordered)]);
    assert_eq!(hashes(&env), first);

    // One payload byte: every web replica changes, db does not.
    env.write(&[("shop/payload/app.conf", "listen 8081\n")]);
    let after = hashes(&env);
    for i in 0..3 {
        assert_ne!(after[i], first[i], "web-{i}");
    }
    assert_eq!(after[3], first[3]);

    // One env value (in bootstrap.toml, shared by all).
    env.write(&[(
        "shop/scripts/bootstrap.toml",
        "[env]\nSECRET = \"hunter3\"\n[ssh]\noptions = [\"ServerAliveInterval=5\"]\n",
    )]);
    let env_changed = hashes(&env);
    assert!(env_changed.iter().zip(&after).all(|(a, b)| a != b));

    // No plan read the base image (issue 23): a file to import is hashed as it is copied into
    // the image store, by the first `up`; plan only looks the store up.
    let status = env.http_rpc("castra.status", json!({}));
    assert_eq!(status["result"]["daemon"]["base_bytes_hashed"], 0);
    drop(daemon);
}

/// Issue 14 item 6: a qcow2 base whose backing file is a file of the user's (here a stand-in
/// for a private key) would hand that file to the guest. `plan` and `up` refuse it before
/// anything is hashed or made, naming the image, its backing file and how to flatten it.
#[test]
fn a_base_image_with_a_backing_file_is_refused_and_nothing_is_made() {
    let env = Env::new();
    env.write(&[
        (
            "secret",
            "-----BEGIN OPENSSH PRIVATE KEY----- not for the guest\n",
        ),
        (
            "chain/castra.toml",
            "[project]\nname = \"chain\"\n\n[[vms]]\nname = \"box\"\nbase_image = \"base.qcow2\"\n",
        ),
    ]);
    let (secret, base) = (env.path("secret"), env.path("chain/base.qcow2"));
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&base)
        .status()
        .expect("qemu-img (package qemu-utils)");
    assert!(made.success());
    let _daemon = env.start_daemon();
    let before = snapshot(&env.state());
    for command in ["plan", "up"] {
        let out = env.ctl(&env.path("chain"), &[command, "--json"]);
        assert_eq!(out.code, 2, "{command}: {out:?}");
        let error = &out.json()["error"];
        assert_eq!(error["kind"], "preflight", "{command}: {error}");
        let message = error["rpc"]["message"].as_str().unwrap();
        for part in [
            format!(
                "base image {} has a backing file, {}",
                base.display(),
                secret.display()
            ),
            format!("qemu-img convert -O qcow2 {}", base.display()),
        ] {
            assert!(message.contains(&part), "{command}: {part:?} in {message}");
        }
    }
    assert_eq!(snapshot(&env.state()), before, "something was written");
    assert!(
        !env.state().join("projects").exists(),
        "no overlay, no hash"
    );
}
