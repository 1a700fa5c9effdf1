use std::path::PathBuf;

use super::*;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto-docs/openrpc.json")
}

/// `proto-docs/openrpc.json` is the generated document, byte for byte. With `CASTRA_BLESS=1`
/// the test rewrites it first (the command proto-docs/PROTOCOL.md gives).
#[test]
fn checked_in_document_is_current() {
    let text = serde_json::to_string_pretty(&document()).unwrap() + "\n";
    let path = checked_in();
    if std::env::var_os("CASTRA_BLESS").is_some_and(|v| v == "1") {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "proto-docs/openrpc.json is stale; regenerate it with: \
         CASTRA_BLESS=1 cargo test -p castra-api openrpc"
    );
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["components"]["schemas"]
        .get(name)
        .unwrap_or_else(|| panic!("no schema {name}"))
}

/// The enum values a schema allows, whether schemars wrote `enum` or `oneOf` of `const`s.
fn spellings(schema: &Value) -> Vec<String> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
    }
    schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(spellings_of_one)
        .collect()
}

fn spellings_of_one(v: &Value) -> Vec<String> {
    match (v.get("const"), v.get("enum")) {
        (Some(c), _) => vec![c.as_str().unwrap().to_owned()],
        (None, Some(_)) => spellings(v),
        _ => panic!("not an enum value: {v}"),
    }
}

#[test]
fn every_method_is_described() {
    let doc = document();
    let names: Vec<&str> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for m in [
        method::VERSION,
        method::PLAN,
        method::STATUS,
        method::UP,
        method::OUTCOME,
        method::LOGS,
        method::DOWN,
        method::CANCEL,
        method::SSH_CONFIG,
        method::DOCTOR,
        method::SUBSCRIBE_EVENTS,
        method::UNSUBSCRIBE_EVENTS,
        method::EVENT,
        method::CONSOLE,
        method::SUBSCRIBE_CONSOLE,
        method::UNSUBSCRIBE_CONSOLE,
        method::CONSOLE_OUTPUT,
        method::IMAGE_LIST,
        method::IMAGE_PULL,
        method::IMAGE_REMOVE,
        method::IMAGE_PRUNE,
        method::IMAGE_ADOPT,
        method::IMAGE_CATALOG,
    ] {
        assert!(names.contains(&m), "{m} missing from {names:?}");
    }
    assert_eq!(doc["components"]["errors"].as_object().unwrap().len(), 5);
}

#[test]
fn enums_are_spelled_as_they_serialize() {
    let doc = document();
    let cases: [(&str, Value); 11] = [
        (
            "BaseImageStatus",
            json!(crate::BaseImageStatus::PredatesStore),
        ),
        ("CheckStatus", json!(crate::CheckStatus::Warn)),
        ("ConsoleEnd", json!(crate::ConsoleEnd::NotRunning)),
        ("OutcomeStatus", json!(crate::OutcomeStatus::NoOp)),
        ("BootstrapStatus", json!(crate::BootstrapStatus::NoOp)),
        ("RunStatus", json!(crate::RunStatus::Noop)),
        (
            "BootstrapPlanAction",
            json!(crate::BootstrapPlanAction::Noop),
        ),
        ("VizierPlanStatus", json!(crate::VizierPlanStatus::Healthy)),
        ("StopOutcome", json!(crate::StopOutcome::NotRunning)),
        (
            "BootstrapStepKind",
            json!(crate::BootstrapStepKind::WaitHandshake),
        ),
        ("BootstrapMode", json!(crate::BootstrapMode::Always)),
    ];
    for (name, wire) in cases {
        let allowed = spellings(schema(&doc, name));
        assert!(
            allowed.contains(&wire.as_str().unwrap().to_owned()),
            "{name}: {wire} not in {allowed:?}"
        );
    }
    assert_eq!(
        spellings(schema(&doc, "OutcomeStatus")),
        ["Success", "NoOp", "Skipped", "Failed", "Rejected"]
    );
}

#[test]
fn every_event_kind_is_in_the_envelope() {
    let doc = document();
    let kinds: Vec<&str> = schema(&doc, "Event")["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["required"].as_array().unwrap())
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 22, "{kinds:?}");
    for kind in [
        "BootstrapPlanned",
        "ImageFetch",
        "BootstrapFailed",
        "VizierLost",
        "VmLaunched",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let envelope = schema(&doc, "EventEnvelope");
    assert_eq!(
        envelope["required"],
        json!(["seq", "time", "operation", "event"])
    );
}

#[test]
fn nullability_and_absence_are_stated() {
    let doc = document();
    // An Option field is present, and may be null.
    let vm = schema(&doc, "VmStatus");
    assert!(vm["required"].as_array().unwrap().contains(&json!("pid")));
    assert_eq!(vm["properties"]["pid"]["type"], json!(["integer", "null"]));
    // StepRecord.detail is always there, null when there is none (issue 15's audit).
    let step = schema(&doc, "StepRecord");
    assert!(
        step["required"]
            .as_array()
            .unwrap()
            .contains(&json!("detail"))
    );
    // A param with a default is optional.
    let plan = &doc["methods"][1];
    assert_eq!(plan["name"], method::PLAN);
    let bootstrap = plan["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bootstrap")
        .unwrap();
    assert_eq!(bootstrap["required"], false);
}

#[test]
fn errors_refer_to_the_error_components() {
    let doc = document();
    let components = doc["components"]["errors"].as_object().unwrap();
    for (_, code, _) in ERRORS {
        assert!(components.values().any(|e| e["code"] == code), "{code}");
    }
    assert!(ALL.iter().all(|name| components.contains_key(*name)));
    for m in doc["methods"].as_array().unwrap() {
        for e in m["errors"].as_array().into_iter().flatten() {
            let name = e["$ref"].as_str().unwrap();
            let name = name.strip_prefix("#/components/errors/").unwrap();
            assert!(components.contains_key(name), "{}: {name}", m["name"]);
        }
    }
    let data = &components["Config"]["x-data-schema"];
    assert_eq!(data["$ref"], "#/components/schemas/ErrorData");
    assert_eq!(
        schema(&doc, "ErrorData")["properties"]["kind"]["enum"],
        json!([
            "invalid-params",
            "config",
            "preflight",
            "operation",
            "not-found"
        ])
    );
}
