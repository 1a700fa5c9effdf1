//! Every JSON-RPC response, error and event the tests receive is checked against the OpenRPC
//! document castrad serves (`castra_api::openrpc::document()`, which `protocol_docs` keeps
//! equal to the served one and to proto-docs/openrpc.json), not only PROTOCOL.md's examples.
//!
//! The check is stricter than the document: every object schema that lists its properties
//! gets `additionalProperties: false`, so a field the document does not describe fails, like
//! a null where the document says non-null or an enum value it does not list. (A map by design
//! says what its values are with `additionalProperties: {schema}` and is left as it is.)
//!
//! The fixtures call in at their choke points (`Env::http_rpc`, `raw_rpc`, `Ctl::json`,
//! `Up::parse`, the `castractl events --json` readers); a violation panics there, naming the
//! method, the path in the instance and what the schema wanted. Each test's count and the run's
//! total are printed when its `Env` is dropped.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonschema::Validator;
use serde_json::{Map, Value, json};

/// How many responses, errors and events the whole run validated.
static TOTAL: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// How many this test (its thread) validated.
    static MINE: Cell<usize> = const { Cell::new(0) };
}

struct Contract {
    /// Method name → validator of its `result`.
    results: BTreeMap<String, Validator>,
    /// Method name → the error codes it documents.
    errors: BTreeMap<String, Vec<i64>>,
    /// Error code → the `data.kind` it documents.
    kinds: BTreeMap<i64, String>,
    error_data: Validator,
    envelope: Validator,
    /// A `castra.consoleOutput` notification's `result`.
    console_chunk: Validator,
}

/// Error codes the JSON-RPC library answers itself, before a castrad method runs: they carry
/// no `data` (PROTOCOL.md's error table says so, row by row).
const LIBRARY_CODES: [i64; 4] = [-32700, -32600, -32601, -32603];

fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        let mut doc = castra_api::openrpc::document();
        strict(&mut doc["components"]["schemas"]);
        let components = doc["components"].clone();
        // A schema of the document, with the components its `$ref`s point into.
        let compile = |what: &str, schema: &Value| {
            let mut schema = schema.clone();
            strict(&mut schema);
            let root = json!({ "allOf": [schema], "components": components });
            jsonschema::draft7::new(&root)
                .unwrap_or_else(|e| panic!("the schema of {what} does not compile: {e}"))
        };
        let mut results = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut notifications = BTreeMap::new();
        for method in doc["methods"].as_array().expect("methods") {
            let name = method["name"].as_str().expect("a method name").to_owned();
            if method.get("x-notification").is_some() {
                let result = method["params"]
                    .as_array()
                    .and_then(|p| p.iter().find(|p| p["name"] == "result"))
                    .expect("a notification's result param");
                notifications.insert(name.clone(), compile(&name, &result["schema"]));
                continue;
            }
            results.insert(name.clone(), compile(&name, &method["result"]["schema"]));
            let codes = method["errors"]
                .as_array()
                .map(|refs| {
                    refs.iter()
                        .map(|r| {
                            let at = r["$ref"].as_str().expect("an error $ref");
                            let key = at.rsplit('/').next().unwrap();
                            components["errors"][key]["code"]
                                .as_i64()
                                .unwrap_or_else(|| panic!("no error {at}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            errors.insert(name, codes);
        }
        let mut kinds = BTreeMap::new();
        let mut data_schema = None;
        for error in components["errors"].as_object().expect("errors").values() {
            let message = error["message"].as_str().unwrap();
            let kind = message
                .split("(data.kind ")
                .nth(1)
                .and_then(|k| k.split(')').next())
                .unwrap_or_else(|| panic!("no data.kind in {message}"));
            kinds.insert(error["code"].as_i64().unwrap(), kind.to_owned());
            data_schema = Some(error["x-data-schema"].clone());
        }
        Contract {
            results,
            errors,
            kinds,
            error_data: compile("error.data", &data_schema.expect("an error")),
            envelope: notifications
                .remove(castra_api::method::EVENT)
                .expect("castra.event in the document"),
            console_chunk: notifications
                .remove(castra_api::method::CONSOLE_OUTPUT)
                .expect("castra.consoleOutput in the document"),
        }
    })
}

/// Adds `additionalProperties: false` to every object schema under `schema` that lists its
/// properties and says nothing about others.
pub fn strict(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.contains_key("properties") && !object.contains_key("additionalProperties") {
                object.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, value) in object.iter_mut() {
                // `properties` maps names to schemas: a property called `properties` is not one.
                if key == "properties" {
                    if let Value::Object(props) = value {
                        props.values_mut().for_each(strict);
                    }
                } else {
                    strict(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

fn counted() {
    TOTAL.fetch_add(1, Ordering::Relaxed);
    MINE.with(|m| m.set(m.get() + 1));
}

fn problems(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect()
}

/// What is wrong with `result` as the result of `method` (nothing: empty).
pub fn result_problems(method: &str, result: &Value) -> Vec<String> {
    problems(&contract().results[method], result)
}

fn check(validator: &Validator, what: &str, instance: &Value) {
    let problems = problems(validator, instance);
    assert!(
        problems.is_empty(),
        "{what} violates the OpenRPC document:\n  {}\nin {}",
        problems.join("\n  "),
        serde_json::to_string_pretty(instance).unwrap()
    );
    counted();
}

/// A whole JSON-RPC response to a call of `method`: its envelope, then the result against the
/// method's result schema, or the error against the error table and its `data` schema.
pub fn response(method: &str, response: &Value) {
    let object = response
        .as_object()
        .unwrap_or_else(|| panic!("{method}: a response that is not an object: {response}"));
    assert_eq!(object.get("jsonrpc"), Some(&json!("2.0")), "{response}");
    assert!(object.contains_key("id"), "{method}: no id in {response}");
    let extra: Vec<&String> = object
        .keys()
        .filter(|k| !["jsonrpc", "id", "result", "error"].contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "{method}: undocumented {extra:?} in {response}"
    );
    match (object.get("result"), object.get("error")) {
        (Some(result), None) => result_of(method, result),
        (None, Some(error)) => error_of(method, error),
        _ => panic!("{method}: a response needs exactly one of result and error: {response}"),
    }
}

/// The `result` of a call of `method` (castractl's `--json` output of it included).
pub fn result_of(method: &str, result: &Value) {
    // rpc.discover returns the document itself, which protocol_docs compares whole.
    if method == "rpc.discover" {
        return;
    }
    let validator = contract()
        .results
        .get(method)
        .unwrap_or_else(|| panic!("a result for {method}, which the document does not list"));
    check(validator, &format!("the result of {method}"), result);
}

/// An `error` object answered to a call of `method`.
pub fn error_of(method: &str, error: &Value) {
    let c = contract();
    let object: &Map<String, Value> = error
        .as_object()
        .unwrap_or_else(|| panic!("{method}: an error that is not an object: {error}"));
    let extra: Vec<&String> = object
        .keys()
        .filter(|k| !["code", "message", "data"].contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "{method}: undocumented {extra:?} in {error}"
    );
    let code = error["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("{method}: an error code that is no integer: {error}"));
    assert!(error["message"].is_string(), "{method}: {error}");
    match object.get("data") {
        None => assert!(
            LIBRARY_CODES.contains(&code),
            "{method}: error {code} has no data, and only the JSON-RPC library's \
             {LIBRARY_CODES:?} may: {error}"
        ),
        Some(data) => {
            if let Some(codes) = c.errors.get(method) {
                assert!(
                    codes.contains(&code),
                    "{method}: error {code} is not one it documents ({codes:?}): {error}"
                );
            }
            let kind = c
                .kinds
                .get(&code)
                .unwrap_or_else(|| panic!("{method}: error {code} is not in the document"));
            assert_eq!(
                data["kind"].as_str(),
                Some(kind.as_str()),
                "{method}: error {code}'s data.kind: {error}"
            );
            check(&c.error_data, &format!("error {code} of {method}"), data);
            return;
        }
    }
    counted();
}

/// `instance` against the document's schema `components.schemas.NAME` (a bare event, a run
/// log, one of its step records).
pub fn component(name: &str, instance: &Value) {
    let mut doc = castra_api::openrpc::document();
    strict(&mut doc["components"]["schemas"]);
    assert!(
        doc["components"]["schemas"].get(name).is_some(),
        "no schema {name} in the document"
    );
    let root = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    let validator = jsonschema::draft7::new(&root)
        .unwrap_or_else(|e| panic!("the schema {name} does not compile: {e}"));
    check(&validator, name, instance);
}

/// An event envelope (a `castra.event` notification's `result`, or a line of
/// `castractl events --json` / `castractl up --json`).
pub fn event(envelope: &Value) {
    check(&contract().envelope, "an event", envelope);
}

/// A line of `castractl console --follow --json`: a `castra.consoleOutput` notification's
/// result or castractl's `{"error": …}`; parsed and checked.
pub fn console_line(line: &str) -> Value {
    let chunk: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("a console line that is not JSON ({e}): {line}"));
    if chunk.get("error").is_none() {
        check(&contract().console_chunk, "castra.consoleOutput", &chunk);
    }
    chunk
}

/// A line of `castractl events --json`, parsed and checked as an event envelope.
pub fn event_line(line: &str) -> Value {
    let envelope = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("an event line that is not JSON ({e}): {line}"));
    event(&envelope);
    envelope
}

/// The `--json` output of `castractl ARGS`: a method's result, or one of castractl's own
/// objects (`components.schemas.Castractl*`: a failure, the version pair).
pub fn castractl_output(args: &[String], output: &Value) {
    if output.get("error").is_some() && output.as_object().is_some_and(|o| o.len() == 1) {
        component("CastractlFailure", output);
        return;
    }
    use castra_api::method;
    // `image SUBCOMMAND`: the argument after `image`.
    if let Some(at) = args.iter().position(|a| a == "image") {
        let method = match args.get(at + 1).map(String::as_str) {
            Some("ls" | "list") => method::IMAGE_LIST,
            Some("rm" | "remove") => method::IMAGE_REMOVE,
            Some("prune") => method::IMAGE_PRUNE,
            Some("adopt") => method::IMAGE_ADOPT,
            Some("catalog") => method::IMAGE_CATALOG,
            _ => return,
        };
        result_of(method, output);
        return;
    }
    // The subcommand: the first argument that names one (a flag's value comes after its flag).
    let commands = [
        ("plan", method::PLAN),
        ("status", method::STATUS),
        ("down", method::DOWN),
        ("cancel", method::CANCEL),
        ("logs", method::LOGS),
        ("ssh-config", method::SSH_CONFIG),
        ("doctor", method::DOCTOR),
        ("console", method::CONSOLE),
        ("version", method::VERSION),
        // castractl's own objects, no method's result: checked by name below.
        ("init", ""),
    ];
    let Some((command, method)) = args
        .iter()
        .find_map(|a| commands.iter().find(|(c, _)| c == a))
    else {
        return;
    };
    match *command {
        "version" => component("CastractlVersion", output),
        "init" => component("CastractlInit", output),
        _ => result_of(method, output),
    }
}

/// A line of `castractl up --json`, `events --json` or `image pull --json`: an event envelope,
/// the final `{"outcome": …}` or `{"pull": …}`, or castractl's `{"error": …}`.
pub fn castractl_line(line: &Value) {
    match line.as_object() {
        Some(o) if o.len() == 1 && o.contains_key("outcome") => component("CastractlOutcome", line),
        Some(o) if o.len() == 1 && o.contains_key("pull") => component("CastractlPull", line),
        Some(o) if o.len() == 1 && o.contains_key("error") => component("CastractlFailure", line),
        _ => event(line),
    }
}

/// Prints this test's count and the run's total so far, to the real stderr (past the test
/// harness's capture): the last such line of a run is the run's total.
pub fn report() {
    let mine = MINE.with(|m| m.replace(0));
    if mine > 0 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "contract: {mine} responses/errors/events valid against openrpc.json ({} in this \
             run so far)",
            TOTAL.load(Ordering::Relaxed)
        );
    }
}

#[test]
fn the_strict_contract_rejects_nulls_unknown_values_and_undocumented_fields() {
    let c = contract();
    let problems = |v: &Value| {
        c.envelope
            .iter_errors(v)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };
    let good = json!({
        "seq": 1,
        "time": "2026-01-01T00:00:00.000Z",
        "operation": null,
        "event": { "BootstrapStep": {
            "vm": "web", "step": "connect", "status": "success", "duration_ms": 3, "detail": null,
        } },
    });
    // The sample is valid, so each mutation below is what fails.
    assert_eq!(problems(&good), Vec::<String>::new());
    let mut null = good.clone();
    null["seq"] = Value::Null;
    assert!(!problems(&null).is_empty(), "a null seq passed");
    let mut extra = good.clone();
    extra["event"]["BootstrapStep"]["secret"] = json!("x");
    assert!(!problems(&extra).is_empty(), "an undocumented field passed");
    let mut top = good.clone();
    top["extra"] = json!(1);
    assert!(
        !problems(&top).is_empty(),
        "an undocumented envelope field passed"
    );
    let mut value = good.clone();
    value["event"]["BootstrapStep"]["status"] = json!("Success");
    assert!(
        !problems(&value).is_empty(),
        "an enum value not in the schema passed"
    );
    let mut missing = good;
    missing["event"]["BootstrapStep"]
        .as_object_mut()
        .unwrap()
        .remove("detail");
    assert!(
        !problems(&missing).is_empty(),
        "a missing required field passed"
    );
}

/// Real responses of a real castrad pass (the fixtures check them), and the same responses
/// with a documented non-null field set to null, an enum value the document does not list, or
/// an undocumented field do not: the strict contract has teeth on what castrad really sends.
#[test]
fn real_responses_pass_and_each_kind_of_drift_from_them_fails() {
    let env = crate::support::Env::new();
    env.write(&[
        ("shop/castra.toml", crate::plan::PROJECT),
        ("shop/scripts/web.sh", "#!/bin/sh\n"),
        ("shop/scripts/db.sh", "#!/bin/sh\n"),
        ("shop/payload/a", "a"),
        ("shop/images/base.img", "img"),
    ]);
    let _daemon = env.start_daemon();
    let config = env.path("shop/castra.toml").canonicalize().unwrap();
    let before = MINE.with(Cell::get);
    let plan =
        env.http_rpc(castra_api::method::PLAN, json!({ "config": config }))["result"].clone();
    let status = env.http_rpc(castra_api::method::STATUS, json!({}))["result"].clone();
    let error = env.http_rpc(
        castra_api::method::LOGS,
        json!({ "config": config, "vm": "nope" }),
    );
    assert!(error["error"]["data"].is_object(), "{error}");
    assert_eq!(
        MINE.with(Cell::get) - before,
        3,
        "each response was validated"
    );
    let vm = status["projects"][0]["vms"][0].clone();
    assert!(vm.is_object(), "a VM in {status}");

    let mut drifts = Vec::new();
    let mut null = status.clone();
    null["daemon"]["pid"] = Value::Null;
    drifts.push(("castra.status", "a null pid", null));
    let mut value = status.clone();
    value["projects"][0]["vms"][0]["state"] = json!("Levitating");
    drifts.push(("castra.status", "an unknown state", value));
    let mut field = status;
    field["projects"][0]["vms"][0]["secret"] = json!("x");
    drifts.push(("castra.status", "an undocumented field", field));
    assert!(plan["vms"][0]["ssh"].is_object(), "{plan}");
    let mut nested = plan;
    nested["vms"][0]["ssh"]["extra"] = json!(true);
    drifts.push(("castra.plan", "an undocumented nested field", nested));
    for (method, what, drifted) in drifts {
        assert!(
            !result_problems(method, &drifted).is_empty(),
            "{what} passed as a {method} result: {drifted}"
        );
    }
    let mut data = error["error"]["data"].clone();
    data["kind"] = json!("oops");
    assert!(
        !problems(&contract().error_data, &data).is_empty(),
        "{data}"
    );
}
