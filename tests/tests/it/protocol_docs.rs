//! proto-docs/PROTOCOL.md cannot drift: each `<!-- check: NAME -->` JSON block must have the
//! same fields, at every level, as what a real castrad returns for NAME.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::Env;

/// Examples only a real QEMU guest produces: `qemu.rs` checks them.
pub const CHECKED_BY_QEMU_TESTS: &[&str] = &[
    "down-result",
    "event-VmLaunched",
    "event-ShutdownComplete",
    "event-CooperativeAttempted",
    "event-EphemeralLayerDiscarded",
];

/// The JSON blocks of the protocol document, by check name.
pub fn documented_examples() -> BTreeMap<String, Value> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = std::fs::read_to_string(repo.join("proto-docs/PROTOCOL.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut rest = text.as_str();
    const MARK: &str = "\n<!-- check: ";
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let name = rest[..rest.find(" -->").unwrap()].to_owned();
        let start = rest.find("```json\n").unwrap() + "```json\n".len();
        let end = start + rest[start..].find("\n```").unwrap();
        let value = serde_json::from_str(&rest[start..end])
            .unwrap_or_else(|e| panic!("example {name} is not valid JSON: {e}"));
        assert!(
            out.insert(name.clone(), value).is_none(),
            "duplicate check {name}"
        );
        rest = &rest[end..];
    }
    out
}

/// Panics unless `doc` and `real` have the same keys at every level. Arrays compare their
/// first elements; `null` matches anything (an optional field that is set on one side).
pub fn assert_same_shape(name: &str, path: &str, doc: &Value, real: &Value) {
    match (doc, real) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(d), Value::Object(r)) => {
            let dk: Vec<_> = d.keys().collect();
            let rk: Vec<_> = r.keys().collect();
            assert_eq!(
                dk, rk,
                "{name}: fields of {path} differ between PROTOCOL.md and castrad"
            );
            for (k, v) in d {
                assert_same_shape(name, &format!("{path}.{k}"), v, &r[k]);
            }
        }
        (Value::Array(d), Value::Array(r)) => {
            if let (Some(d0), Some(r0)) = (d.first(), r.first()) {
                assert_same_shape(name, &format!("{path}[0]"), d0, r0);
            }
        }
        (d, r) => assert_eq!(
            std::mem::discriminant(d),
            std::mem::discriminant(r),
            "{name}: {path} is {d} in PROTOCOL.md but {r} from castrad"
        ),
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
    let mut real = BTreeMap::new();
    real.insert(
        "version-result",
        env.http_rpc("castra.version", json!({}))["result"].clone(),
    );
    let plan = env.http_rpc(
        "castra.plan",
        json!({"config": config, "bootstrap": ["web-1=always"]}),
    );
    real.insert("plan-result", plan["result"].clone());
    real.insert(
        "status-result",
        env.http_rpc("castra.status", json!({}))["result"].clone(),
    );
    env.write(&[(
        "shop/castra.toml",
        &crate::plan::PROJECT.replace("mode = \"skip\"", "mode = \"sometimes\""),
    )]);
    real.insert(
        "error-config",
        env.http_rpc("castra.plan", json!({"config": config})),
    );

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
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    let up = fleet.env.http_rpc("castra.up", json!({"config": config}));
    real.insert("up-result", up["result"].clone());
    let operation = up["result"]["operation"].clone();
    real.insert(
        "outcome-result",
        fleet
            .env
            .http_rpc("castra.outcome", json!({"operation": operation}))["result"]
            .clone(),
    );
    let logs = fleet
        .env
        .http_rpc("castra.logs", json!({"config": config, "vm": "web"}))["result"]
        .clone();
    assert_detail_always_present(&logs);
    real.insert("logs-result", logs);
    real.insert(
        "status-result",
        fleet
            .env
            .http_rpc("castra.status", json!({"config": config}))["result"]
            .clone(),
    );
    real.insert(
        "ssh-config-result",
        fleet.env.http_rpc(
            "castra.sshConfig",
            json!({"config": config, "vms": ["web"]}),
        )["result"]
            .clone(),
    );
    real.insert(
        "cancel-result",
        fleet
            .env
            .http_rpc("castra.cancel", json!({"config": config}))["result"]
            .clone(),
    );
    let events = fleet.up(&["--bootstrap", "always"]).events;
    let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
    for e in events {
        let kind = crate::support::event_kind(&e);
        by_kind.entry(format!("event-{kind}")).or_insert(e);
    }
    for (name, value) in &by_kind {
        real.insert(name.as_str(), value.clone());
    }

    let documented = documented_examples();
    for (name, value) in &real {
        let doc = documented
            .get(*name)
            .unwrap_or_else(|| panic!("PROTOCOL.md lacks check {name}"));
        assert_same_shape(name, "$", doc, value);
    }
    let extra: Vec<_> = documented
        .keys()
        .filter(|k| !real.contains_key(k.as_str()) && !CHECKED_BY_QEMU_TESTS.contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "PROTOCOL.md checks no test produces: {extra:?}"
    );
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
