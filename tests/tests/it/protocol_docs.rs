//! proto-docs/PROTOCOL.md cannot drift: each `<!-- check: NAME -->` JSON block must have the
//! same fields, at every level, as what a real castrad returns for NAME.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::examples::{self, Scrub};
use crate::support::Env;

/// Examples only a real QEMU guest produces: `qemu.rs` checks them.
pub const CHECKED_BY_QEMU_TESTS: &[&str] = &[
    "down-result",
    "event-VmLaunched",
    "event-ShutdownComplete",
    "event-CooperativeAttempted",
    "event-EphemeralLayerDiscarded",
];

/// Examples of a QEMU guest's serial console: `console.rs` checks them.
pub const CHECKED_BY_CONSOLE_TEST: &[&str] = &["console-result", "console-chunk"];

/// The shared folder of a plan: `mounts.rs` checks it (on the cloud guest).
pub const CHECKED_BY_MOUNTS_TEST: &[&str] = &["plan-mount"];

/// Examples of an agent that is lost and comes back: `vizier.rs` checks them.
pub const CHECKED_BY_VIZIER_TESTS: &[&str] = &["event-VizierConnected"];

/// The image store's examples: `images.rs` checks them (an empty store, then a pull).
pub const CHECKED_BY_IMAGE_TESTS: &[&str] = &[
    "image-list-result",
    "image-catalog-result",
    "image-prune-result",
    "image-pull-result",
    "event-ImageFetch",
];

/// The examples of the protocol document, by check name (the first value of each).
pub fn documented_examples() -> BTreeMap<String, Value> {
    examples::all()
        .into_iter()
        .filter(|(_, e)| e.doc == "proto-docs/PROTOCOL.md")
        .map(|(name, e)| (name, e.values[0].clone()))
        .collect()
}

/// The documents' own paths, for what a test's castrad names in its temp directory.
fn scrub_env(env: &Env, project_dir: &str, project: &str) -> Scrub {
    let scrub = Scrub::new()
        .path(&env.path(project_dir), "/home/me/shop")
        .path(&env.state(), "/home/me/.local/state/castra")
        .path(&env.socket(), "/run/user/1000/castra/castrad.sock");
    // The project's state root, made or not yet (a plan writes nothing): where castrad puts
    // it, by its name and the path of its castra.toml.
    let config = env.path(project_dir).join("castra.toml");
    match config.canonicalize() {
        Ok(config) => scrub.path(
            castrad::state_root::StateRoot::for_project(&env.state(), project, &config).path(),
            "/home/me/.local/state/castra/projects/shop-1f2e3d4c",
        ),
        _ => scrub,
    }
}

#[test]
fn protocol_examples_match_real_responses() {
    let env = Env::new();
    env.write(&[
        ("shop/castra.toml", crate::plan::PROJECT),
        ("shop/scripts/web.sh", "#!/bin/sh\n"),
        ("shop/scripts/db.sh", "#!/bin/sh\n"),
        ("shop/payload/a", "a"),
        ("shop/images/base.img", "img"),
    ]);
    let _daemon = env.start_daemon();
    let config = env.path("shop/castra.toml").canonicalize().unwrap();
    let mut real: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    real.insert(
        "version-result",
        vec![env.http_rpc("castra.version", json!({}))["result"].clone()],
    );
    let plan = env.http_rpc(
        "castra.plan",
        json!({"config": config, "bootstrap": ["web-1=always"]}),
    );
    let mut plan = plan["result"].clone();
    // The example shows one VM of the plan.
    plan["vms"] = json!([plan["vms"][1].clone()]);
    real.insert("plan-result", vec![plan]);
    env.write(&[(
        "shop/castra.toml",
        &crate::plan::PROJECT.replace("mode = \"skip\"", "mode = \"sometimes\""),
    )]);
    real.insert(
        "error-config",
        vec![env.http_rpc("castra.plan", json!({"config": config}))],
    );
    let scrub = scrub_env(&env, "shop", "shop");
    for (name, values) in &real {
        examples::assert_matches(name, values, &scrub);
    }

    // The bootstrap methods and every event kind, from a run with one good and one dead VM.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fleet = crate::bootstrap::Fleet::new(&format!(
        "[[vms]]\nname = \"web\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/web.sh\"\n\
         payload = \"payload\"\n[[vms]]\nname = \"db\"\nbackend = \"external\"\n[vms.ssh]\nhost = \"127.0.0.1\"\n\
         port = {dead}\n[vms.bootstrap]\nscript = \"scripts/db.sh\"\nhandshake_timeout_secs = 1\n"
    ));
    // The documents' project is "shop".
    let toml = fleet.project().join("castra.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("name = \"fleet\"", "name = \"shop\"")).unwrap();
    let config = toml.canonicalize().unwrap();
    let mut real: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let up = fleet.env.http_rpc("castra.up", json!({"config": config}));
    real.insert("up-result", vec![up["result"].clone()]);
    let operation = up["result"]["operation"].clone();
    real.insert(
        "outcome-result",
        vec![
            fleet
                .env
                .http_rpc("castra.outcome", json!({"operation": operation}))["result"]
                .clone(),
        ],
    );
    let logs = fleet
        .env
        .http_rpc("castra.logs", json!({"config": config, "vm": "web"}))["result"]
        .clone();
    assert_detail_always_present(&logs);
    // Issue 15: an external VM's base_hash is a constant; the docs say which.
    let base = logs["log"]["base_hash"].as_str().unwrap().to_owned();
    for doc in examples::DOCS {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join(doc),
        )
        .unwrap();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let at = text
            .find("the same for every external VM")
            .unwrap_or_else(|| panic!("{doc} does not say external VMs' base_hash is constant"));
        assert!(
            text[at..]
                .chars()
                .take(160)
                .collect::<String>()
                .contains(&base),
            "{doc} does not give external VMs' constant base_hash {base}"
        );
    }
    real.insert("bootstrap-log", vec![logs["log"].clone()]);
    real.insert("logs-result", vec![logs]);
    let db_log = fleet
        .env
        .http_rpc("castra.logs", json!({"config": config, "vm": "db"}))["result"]["log"]
        .clone();
    let last = db_log["steps"].as_array().unwrap().last().unwrap().clone();
    real.insert("bootstrap-error-record", vec![last]);
    let status = fleet
        .env
        .http_rpc("castra.status", json!({"config": config}))["result"]
        .clone();
    let vizier_pid = status["projects"][0]["vms"][0]["vizier"]["pid"]
        .as_u64()
        .expect("web's agent pid");
    real.insert("status-result", vec![status]);
    real.insert(
        "ssh-config-result",
        vec![
            fleet.env.http_rpc(
                "castra.sshConfig",
                json!({"config": config, "vms": ["web"]}),
            )["result"]
                .clone(),
        ],
    );
    real.insert(
        "cancel-result",
        vec![
            fleet
                .env
                .http_rpc("castra.cancel", json!({"config": config}))["result"]
                .clone(),
        ],
    );
    real.insert(
        "doctor-result",
        vec![
            fleet
                .env
                .http_rpc("castra.doctor", json!({"config": config}))["result"]
                .clone(),
        ],
    );
    // Every event kind of a forced run: web's where it has one (db's only fail), in order.
    let events = fleet.up(&["--bootstrap", "always"]).events;
    let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
    for vm in ["web", "db"] {
        for e in events
            .iter()
            .filter(|e| crate::support::event_vm(e) == Some(vm))
        {
            let kind = crate::support::event_kind(e);
            by_kind.entry(format!("event-{kind}")).or_insert(e.clone());
        }
    }
    real.insert(
        "bootstrap-event",
        vec![by_kind["event-BootstrapStarted"].clone()],
    );
    let db_end: Vec<Value> = events
        .iter()
        .filter(|e| crate::support::event_vm(e) == Some("db"))
        .map(|e| e["event"].clone())
        .filter(|e| e.get("BootstrapFailed").is_some() || e["BootstrapStep"]["status"] == "failed")
        .collect();
    real.insert("bootstrap-failed", db_end);
    for (name, value) in &by_kind {
        real.insert(name.as_str(), vec![value.clone()]);
    }
    // An unchanged rerun: web's whole story is two events.
    let noop: Vec<Value> = fleet
        .up(&[])
        .events
        .iter()
        .filter(|e| crate::support::event_vm(e) == Some("web"))
        .map(|e| e["event"].clone())
        .collect();
    real.insert("bootstrap-noop", noop);

    // Issue 15: a NoOp has a trigger and a handshake timeout; PROTOCOL.md said null "when
    // nothing runs". Only a skip has neither, and that is what the table says now.
    let plan = fleet.env.http_rpc("castra.plan", json!({"config": config}))["result"].clone();
    let web = &plan["vms"][0];
    assert_eq!(
        (&web["vm"], &web["action"]),
        (&json!("web"), &json!("noop")),
        "{web}"
    );
    assert_eq!(web["trigger"], "auto", "{web}");
    assert!(web["handshake_timeout_secs"].as_u64().is_some(), "{web}");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = std::fs::read_to_string(repo.join("proto-docs/PROTOCOL.md")).unwrap();
    for field in ["trigger", "handshake_timeout_secs"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{field}` |")))
            .unwrap();
        assert!(
            row.contains("null when the action is `skip`") && !row.contains("nothing runs"),
            "PROTOCOL.md: {row}"
        );
    }

    // An external VM is not stopped by a restart; it is bootstrapped again (skip: no SSH).
    let restart = fleet.env.http_rpc(
        "castra.restart",
        json!({"config": config, "vms": ["web"], "bootstrap": ["skip"]}),
    )["result"]
        .clone();
    assert_eq!(restart["stopped"][0]["outcome"], "external", "{restart}");
    let restarted = fleet
        .env
        .http_rpc("castra.outcome", json!({"operation": restart["operation"]}));
    assert_eq!(
        restarted["result"]["outcomes"][0]["status"], "Skipped",
        "{restarted}"
    );
    real.insert("restart-result", vec![restart]);

    let scrub = scrub_fleet(&fleet, dead, vizier_pid);
    for (name, values) in &real {
        examples::assert_matches(name, values, &scrub);
    }
    let extra: Vec<String> = examples::all()
        .into_keys()
        .filter(|k| {
            !real.contains_key(k.as_str())
                && !["version-result", "plan-result", "error-config"].contains(&k.as_str())
                && !CHECKED_BY_QEMU_TESTS.contains(&k.as_str())
                && !CHECKED_BY_CONSOLE_TEST.contains(&k.as_str())
                && !CHECKED_BY_MOUNTS_TEST.contains(&k.as_str())
                && !CHECKED_BY_VIZIER_TESTS.contains(&k.as_str())
                && !CHECKED_BY_IMAGE_TESTS.contains(&k.as_str())
        })
        .collect();
    assert!(extra.is_empty(), "checks no test produces: {extra:?}");
}

/// [`scrub_env`] for a `Fleet` whose project was renamed "shop": its guest directories, the
/// sshd's port and user, the dead VM's port, the agent's pid.
fn scrub_fleet(fleet: &crate::bootstrap::Fleet, dead: u16, vizier_pid: u64) -> Scrub {
    scrub_env(&fleet.env, "p", "shop")
        .path(&fleet.env.path("guest/vizier/web"), "/opt/castra/vizier")
        .path(&fleet.env.path("guest/vizier/db"), "/opt/castra/vizier")
        .path(&fleet.env.path("guest"), "/var/tmp/castra")
        .path(&fleet.env.path("sshd"), "/home/me/.ssh/castra")
        .endpoint(fleet.sshd.port, 2201)
        .endpoint(dead, 2202)
        .user(&fleet.sshd.user, "me")
        .with(format!("Port {}\n", fleet.sshd.port), "Port 2201\n")
        .with(format!("User {}\n", fleet.sshd.user), "User me\n")
        .with(format!("(pid {vizier_pid})"), "(pid 3117)")
}

/// castrad's `rpc.discover` serves exactly the checked-in proto-docs/openrpc.json (which
/// castra-api's test keeps equal to the generated document, and scripts/test validates with
/// the OpenRPC project's validator), and every method it lists that is called over HTTP exists.
#[test]
fn rpc_discover_serves_the_checked_in_openrpc_document() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("proto-docs/openrpc.json")).unwrap(),
    )
    .unwrap();
    let served = env.http_rpc("rpc.discover", json!([]));
    assert!(
        served["result"] == file,
        "rpc.discover differs from proto-docs/openrpc.json: {served}"
    );
    assert_eq!(served["result"]["info"]["version"], "1");

    let methods = file["methods"].as_array().unwrap();
    let mut called = 0;
    for m in methods {
        let name = m["name"].as_str().unwrap();
        // Notifications are sent, not called; subscriptions need a WebSocket.
        if m.get("x-notification").is_some()
            || name.contains("subscribeEvents")
            || name.contains("subscribeConsole")
        {
            continue;
        }
        let answer = env.http_rpc(name, json!({}));
        assert_ne!(
            answer["error"]["code"], -32601,
            "{name} is in the OpenRPC document but castrad does not know it: {answer}"
        );
        called += 1;
    }
    assert!(called >= 12, "only {called} methods called over HTTP");
}

/// Issue 15: a step record without a detail (`apply` that printed no `CASTRA_NOOP`) omitted
/// `detail` instead of carrying `null`, in `castra.logs` and in the file on disk.
fn assert_detail_always_present(logs: &Value) {
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(logs["log_path"].as_str().expect("a log path")).unwrap(),
    )
    .unwrap();
    for (from, log) in [("castra.logs", &logs["log"]), ("the log file", &on_disk)] {
        let steps = log["steps"].as_array().expect("steps");
        assert!(
            steps.iter().any(|s| s["step"] == "apply"),
            "{from}: the run applied: {log}"
        );
        for step in steps {
            assert!(
                step.as_object().unwrap().contains_key("detail"),
                "{from}: a step record lacks `detail` (it must be null): {step}"
            );
        }
    }
}

/// POSTs `body` as it is; the JSON-RPC response whatever the HTTP status.
fn post(env: &Env, body: &str) -> Value {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(env.socket())
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ])
        .arg("http://castrad/")
        .output()
        .expect("curl");
    let response = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    // A request that is not JSON or names no method is checked as a call of no method.
    let method = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|b| b["method"].as_str().map(str::to_owned))
        .unwrap_or_default();
    crate::contract::response(&method, &response);
    response
}

/// The JSON blocks (```json) of a document under the repository root, as text.
fn json_blocks(doc: &str) -> Vec<String> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = std::fs::read_to_string(repo.join(doc)).unwrap();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("```json\n") {
        rest = &rest[at + "```json\n".len()..];
        let end = rest.find("\n```").unwrap();
        out.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    out
}

/// The rows of PROTOCOL.md's error table: code → (kind column, rest of the row).
fn error_table() -> BTreeMap<i64, (String, String)> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = std::fs::read_to_string(repo.join("proto-docs/PROTOCOL.md")).unwrap();
    let errors = &text[text.find("## Errors").unwrap()..];
    let errors = &errors[..errors[3..].find("\n## ").unwrap()];
    errors
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(1)?.parse().ok()?;
            Some((
                code,
                (cells[2].trim_matches('`').to_owned(), line.to_owned()),
            ))
        })
        .collect()
}

/// Issue 15: what PROTOCOL.md and BOOTSTRAP.md state about errors and examples is what castrad
/// does: every code in the error table (with its `data` kind, or that it has no `data`), no
/// `…` placeholders in examples, no `vizier_status: null` (castrad never sends it).
#[test]
fn documented_errors_and_examples_are_what_castrad_sends() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    let table = error_table();
    for code in [
        castra_api::code::INVALID_PARAMS,
        castra_api::code::CONFIG,
        castra_api::code::PREFLIGHT,
        castra_api::code::OPERATION,
        castra_api::code::NOT_FOUND,
    ] {
        assert!(
            table.contains_key(&i64::from(code)),
            "PROTOCOL.md's error table lacks {code}"
        );
    }
    // Errors castrad's methods return carry `data` of the kind the table names; the ones
    // the JSON-RPC library answers before any castrad method runs carry none, as documented.
    let config = env.path("nope/castra.toml");
    for body in [
        "{not json".to_owned(),
        r#"[]"#.to_owned(),
        r#"{"id":1,"method":"castra.version"}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"castra.nope"}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"castra.subscribeEvents"}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"castra.plan","params":{"config":5}}"#.to_owned(),
        json!({"jsonrpc": "2.0", "id": 1, "method": "castra.plan", "params": {"config": config}})
            .to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"castra.outcome","params":{"operation":"op-x"}}"#
            .to_owned(),
    ] {
        let error = &post(&env, &body)["error"];
        let code = error["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{body}: {error}"));
        let (kind, row) = table
            .get(&code)
            .unwrap_or_else(|| panic!("{body}: code {code} is not in PROTOCOL.md's table"));
        match error.get("data") {
            Some(data) => assert_eq!(&data["kind"], kind.as_str(), "{body}: {error} vs {row}"),
            None => assert!(
                row.contains("no `data`"),
                "{body}: {error} has no data, but PROTOCOL.md does not say so: {row}"
            ),
        }
    }

    for doc in ["proto-docs/PROTOCOL.md", "docs/BOOTSTRAP.md"] {
        for block in json_blocks(doc) {
            assert!(
                !block.contains('…'),
                "{doc}: an example holds a placeholder: {block}"
            );
            assert!(
                !block.contains("\"vizier_status\": null"),
                "{doc}: castrad never sends vizier_status null: {block}"
            );
        }
    }
}

/// The first buffered event of `kind` about `vm`, replayed by `castractl events`.
pub fn first_replayed(socket: &std::path::Path, vm: &str, kind: &str) -> Value {
    let mut follow = std::process::Command::new(crate::support::CASTRACTL)
        .args(["events", "--json", "--vm", vm, "--since", "0"])
        .env("CASTRA_SOCKET", socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let found = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).unwrap();
                crate::contract::event(&v);
                if crate::support::event_kind(&v) == kind {
                    break Some(v);
                }
            }
            Err(_) => break None,
        }
    };
    follow.kill().unwrap();
    follow.wait().unwrap();
    found.unwrap_or_else(|| panic!("no {kind} about {vm} within 10 s"))
}

/// The method a checked example named `<stem>-result` shows: `ssh-config` is `castra.sshConfig`.
fn method_of(stem: &str) -> String {
    let mut method = String::from("castra.");
    let mut upper = false;
    for c in stem.chars() {
        match c {
            '-' => upper = true,
            c if upper => {
                method.extend(c.to_uppercase());
                upper = false;
            }
            c => method.push(c),
        }
    }
    method
}

/// Issue 15: every checked example of PROTOCOL.md satisfies the strict schema of what it shows
/// (a method's result, an event envelope, an error response), not only the shape of real
/// output: an example cannot document a field, a null or an enum value castrad never sends.
#[test]
fn every_checked_example_satisfies_the_openrpc_document() {
    let examples = examples::all();
    let mut checked = 0;
    for (name, example) in &examples {
        for value in &example.values {
            match name.as_str() {
                n if n.starts_with("event-") || n == "bootstrap-event" => {
                    crate::contract::event(value)
                }
                "bootstrap-noop" | "bootstrap-failed" => crate::contract::component("Event", value),
                "bootstrap-log" => crate::contract::component("RunLog", value),
                "bootstrap-error-record" => crate::contract::component("StepRecord", value),
                "console-chunk" => crate::contract::component("ConsoleChunk", value),
                "plan-mount" => crate::contract::component("VmMount", value),
                // What castra.plan answers for a castra.toml that does not load.
                "error-config" => crate::contract::response("castra.plan", value),
                n => match n.strip_suffix("-result") {
                    Some(stem) => crate::contract::result_of(&method_of(stem), value),
                    None => panic!("example {name}: the test does not know what it shows"),
                },
            }
            checked += 1;
        }
    }
    assert!(checked >= 29, "{checked} examples");
}
