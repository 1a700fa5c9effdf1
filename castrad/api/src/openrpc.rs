//! The protocol as an [OpenRPC](https://spec.open-rpc.org) 1.x document: what castrad answers
//! to `rpc.discover`, and what `proto-docs/openrpc.json` holds (a test keeps the two equal).
//!
//! Every JSON Schema in it is generated from this crate's types (`schemars` derives), so the
//! document says what the code serializes: enums as they are spelled on the wire, `null` where
//! a field may be null, a field missing only where it may be missing. Results and events are
//! described as castrad writes them (serialize contract), params as castrad reads them
//! (deserialize contract: a field with a default is optional).
//!
//! OpenRPC has no word for a subscription or for the shape of `error.data`, so the document
//! declares two specification extensions (`x-extensions`): `x-notification` marks
//! `castra.event` and `castra.consoleOutput`, the notifications a `castra.subscribeEvents` or
//! `castra.subscribeConsole` subscription receives, and
//! `x-data-schema` gives each error the schema of its `data` ([`ErrorData`]).

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::{
    CancelParams, CancelResult, ConsoleChunk, ConsoleParams, ConsoleResult, DoctorParams,
    DoctorResult, DownParams, DownResult, ErrorData, EventEnvelope, ImageAdoptParams,
    ImageAdoptResult, ImageCatalogParams, ImageCatalogResult, ImageListParams, ImageListResult,
    ImagePruneParams, ImagePullParams, ImagePullResult, ImageRemoveParams, ImageRemoveResult,
    LogsParams, LogsResult, OutcomeParams, OutcomeResult, PROTOCOL_VERSION, PlanParams, PlanResult,
    RestartParams, RestartResult, SshConfigParams, SshConfigResult, StatusParams, StatusResult,
    SubscribeConsoleParams, SubscribeParams, UpParams, UpResult, VersionResult, code, method,
};

/// The OpenRPC specification version the document follows.
pub const OPENRPC_VERSION: &str = "1.3.2";

/// The error codes castrad returns, as (component name, code, summary with `data.kind`).
const ERRORS: [(&str, i32, &str); 5] = [
    (
        "InvalidParams",
        code::INVALID_PARAMS,
        "Invalid params: they do not have the documented shape (data.kind invalid-params)",
    ),
    (
        "Config",
        code::CONFIG,
        "castra.toml or a bootstrap.toml is unreadable or invalid, or an image's content does \
         not match its checksum (data.kind config)",
    ),
    (
        "Preflight",
        code::PREFLIGHT,
        "Rejected before anything ran: an override conflict, an unknown VM, an image in use, \
         a busy image store (data.kind preflight)",
    ),
    (
        "Operation",
        code::OPERATION,
        "Something was attempted and failed: hashing, state IO (data.kind operation)",
    ),
    (
        "NotFound",
        code::NOT_FOUND,
        "The named operation, VM, run or image does not exist (data.kind not-found)",
    ),
];

/// Every error of [`ERRORS`]: what a method that loads a project may answer.
const ALL: &[&str] = &[
    "InvalidParams",
    "Config",
    "Preflight",
    "Operation",
    "NotFound",
];

/// The whole OpenRPC document.
pub fn document() -> Value {
    let mut results = SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .for_serialize()
        .into_generator();
    let mut params = SchemaSettings::draft07()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .for_deserialize()
        .into_generator();

    let methods = vec![
        call(
            method::VERSION,
            "castrad's version and the protocol revision",
            vec![],
            result::<VersionResult>(&mut results),
            &[],
        ),
        call(
            method::PLAN,
            "What castra.up would do for each VM, without doing it",
            by_name::<PlanParams>(&mut params),
            result::<PlanResult>(&mut results),
            ALL,
        ),
        call(
            method::STATUS,
            "The daemon and the VMs of its loaded projects (or of one project)",
            by_name::<StatusParams>(&mut params),
            result::<StatusResult>(&mut results),
            ALL,
        ),
        call(
            method::UP,
            "Starts what is not running and bootstraps the project's VMs; returns at once with \
             the operation id (follow it with castra.subscribeEvents and castra.outcome)",
            by_name::<UpParams>(&mut params),
            result::<UpResult>(&mut results),
            ALL,
        ),
        call(
            method::OUTCOME,
            "Waits for an operation's VMs to finish and returns how each ended",
            by_name::<OutcomeParams>(&mut params),
            result::<OutcomeResult>(&mut results),
            &["InvalidParams", "NotFound"],
        ),
        call(
            method::LOGS,
            "A VM's durable run logs: the list, and one run's log",
            by_name::<LogsParams>(&mut params),
            result::<LogsResult>(&mut results),
            ALL,
        ),
        call(
            method::DOWN,
            "Stops the project's VMs (and with discard, deletes their disks)",
            by_name::<DownParams>(&mut params),
            result::<DownResult>(&mut results),
            ALL,
        ),
        call(
            method::RESTART,
            "Stops the project's VMs (or those named), then starts and bootstraps them as \
             castra.up does, in one operation: applies changed launch settings (drift); \
             returns once they have stopped, with the operation id",
            by_name::<RestartParams>(&mut params),
            result::<RestartResult>(&mut results),
            ALL,
        ),
        call(
            method::CANCEL,
            "Stops the runs in flight on the project's VMs; the VMs keep running",
            by_name::<CancelParams>(&mut params),
            result::<CancelResult>(&mut results),
            ALL,
        ),
        call(
            method::SSH_CONFIG,
            "How to reach each VM with OpenSSH exactly as castrad does",
            by_name::<SshConfigParams>(&mut params),
            result::<SshConfigResult>(&mut results),
            ALL,
        ),
        call(
            method::DOCTOR,
            "Whether this machine, and a project, can run Castra's VMs: one verdict per check",
            by_name::<DoctorParams>(&mut params),
            result::<DoctorResult>(&mut results),
            ALL,
        ),
        call(
            method::IMAGE_LIST,
            "The images in the image store, newest first, each with the VM disks made on it",
            by_name::<ImageListParams>(&mut params),
            result::<ImageListResult>(&mut results),
            &["Operation"],
        ),
        call(
            method::IMAGE_PULL,
            "Fetches (or imports) an image into the store, or every base image of a project's \
             VMs, reading checksums files again; returns when it is done. Progress: ImageFetch \
             events carrying the result's operation",
            by_name::<ImagePullParams>(&mut params),
            result::<ImagePullResult>(&mut results),
            ALL,
        ),
        call(
            method::IMAGE_REMOVE,
            "Removes one image from the store; refused while a VM disk is made on it",
            by_name::<ImageRemoveParams>(&mut params),
            result::<ImageRemoveResult>(&mut results),
            &["InvalidParams", "Preflight", "Operation", "NotFound"],
        ),
        call(
            method::IMAGE_PRUNE,
            "Removes every image no VM disk is made on, and abandoned partial downloads",
            by_name::<ImagePruneParams>(&mut params),
            result::<ImageRemoveResult>(&mut results),
            &["Preflight", "Operation"],
        ),
        call(
            method::IMAGE_ADOPT,
            "Moves VM disks made before the image store onto the store's copy of their base \
             image (the VMs stopped, the contents equal)",
            by_name::<ImageAdoptParams>(&mut params),
            result::<ImageAdoptResult>(&mut results),
            ALL,
        ),
        call(
            method::IMAGE_CATALOG,
            "The images `base_image` may name, with the URLs they are fetched from (through a \
             project's mirror, given its config)",
            by_name::<ImageCatalogParams>(&mut params),
            result::<ImageCatalogResult>(&mut results),
            ALL,
        ),
        call(
            method::SUBSCRIBE_EVENTS,
            "Subscribes to the event bus (WebSocket only; params optional). Each event arrives \
             as a castra.event notification",
            by_name::<SubscribeParams>(&mut params),
            json!({
                "name": "subscription",
                "description": "The subscription's id: the `subscription` of its castra.event \
                                notifications, and the param of castra.unsubscribeEvents",
                "schema": { "type": "integer", "format": "uint64", "minimum": 0 },
            }),
            &["InvalidParams"],
        ),
        unsubscribe(method::UNSUBSCRIBE_EVENTS, "Ends a subscription"),
        json!({
            "name": method::EVENT,
            "summary": "Notification (not a method to call): one event of a \
                        castra.subscribeEvents subscription",
            "description": "Sent by castrad as `{\"jsonrpc\": \"2.0\", \"method\": \
                            \"castra.event\", \"params\": {\"subscription\": ID, \"result\": \
                            EventEnvelope}}`, in `seq` order.",
            "x-notification": true,
            "paramStructure": "by-name",
            "params": [
                {
                    "name": "subscription",
                    "description": "The id castra.subscribeEvents returned",
                    "required": true,
                    "schema": { "type": "integer", "format": "uint64", "minimum": 0 },
                },
                {
                    "name": "result",
                    "required": true,
                    "schema": results.subschema_for::<EventEnvelope>(),
                },
            ],
        }),
        call(
            method::CONSOLE,
            "The end of a QEMU VM's serial console log (bounded; `truncated` says when earlier \
             output was left out)",
            by_name::<ConsoleParams>(&mut params),
            result::<ConsoleResult>(&mut results),
            ALL,
        ),
        call(
            method::SUBSCRIBE_CONSOLE,
            "Follows a QEMU VM's serial console (WebSocket only): the log's end, then what the \
             guest writes next, as castra.consoleOutput notifications, until the VM stops",
            by_name::<SubscribeConsoleParams>(&mut params),
            json!({
                "name": "subscription",
                "description": "The subscription's id: the `subscription` of its \
                                castra.consoleOutput notifications, and the param of \
                                castra.unsubscribeConsole",
                "schema": { "type": "integer", "format": "uint64", "minimum": 0 },
            }),
            ALL,
        ),
        unsubscribe(method::UNSUBSCRIBE_CONSOLE, "Ends a console subscription"),
        json!({
            "name": method::CONSOLE_OUTPUT,
            "summary": "Notification (not a method to call): console output of a \
                        castra.subscribeConsole subscription",
            "description": "Sent by castrad as `{\"jsonrpc\": \"2.0\", \"method\": \
                            \"castra.consoleOutput\", \"params\": {\"subscription\": ID, \
                            \"result\": ConsoleChunk}}`, in the order the guest wrote; the last \
                            one has `end` set.",
            "x-notification": true,
            "paramStructure": "by-name",
            "params": [
                {
                    "name": "subscription",
                    "description": "The id castra.subscribeConsole returned",
                    "required": true,
                    "schema": { "type": "integer", "format": "uint64", "minimum": 0 },
                },
                {
                    "name": "result",
                    "required": true,
                    "schema": results.subschema_for::<ConsoleChunk>(),
                },
            ],
        }),
    ];
    // Every schema the errors' data refers to is in components too.
    let error_data = results.subschema_for::<ErrorData>();
    let errors: Map<String, Value> = ERRORS
        .iter()
        .map(|(name, code, message)| {
            let error = json!({
                "code": code,
                "message": message,
                "x-data-schema": error_data.clone(),
            });
            ((*name).to_owned(), error)
        })
        .collect();
    // castractl's own `--json` objects, so its every output line has a schema here.
    results.subschema_for::<crate::cli::CliFailure>();
    results.subschema_for::<crate::cli::CliOutcome>();
    results.subschema_for::<crate::cli::CliPull>();
    results.subschema_for::<crate::cli::CliVersion>();
    results.subschema_for::<crate::cli::CliInit>();
    json!({
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "castrad",
            "version": PROTOCOL_VERSION.to_string(),
            "description": "JSON-RPC 2.0 on castrad's Unix socket (HTTP POST, or WebSocket for \
                            subscriptions). `info.version` is the protocol revision \
                            (castra.version's `protocol`). rpc.discover returns this document. \
                            For humans: proto-docs/PROTOCOL.md.",
            "license": { "name": "Apache-2.0" },
        },
        "x-extensions": [
            {
                "openrpcExtension": "0.0.0-development",
                "name": "x-notification",
                "version": "0.0.1",
                "summary": "A notification",
                "description": "True on an entry of `methods` that castrad sends as a \
                                notification rather than answers as a call",
                "restricted": ["methodObject"],
                "schema": { "type": "boolean" },
            },
            {
                "openrpcExtension": "0.0.0-development",
                "name": "x-data-schema",
                "version": "0.0.1",
                "summary": "The schema of error.data",
                "description": "A JSON Schema the error's `data` member conforms to",
                "restricted": ["errorObject"],
                "schema": { "type": "object" },
            },
        ],
        "methods": methods,
        "components": {
            "schemas": results.take_definitions(true),
            "errors": errors,
        },
    })
}

/// The method that ends a subscription (by its id, the one positional param).
fn unsubscribe(name: &str, summary: &str) -> Value {
    json!({
        "name": name,
        "summary": summary,
        "paramStructure": "by-position",
        "params": [{
            "name": "subscription",
            "required": true,
            "schema": { "type": "integer", "format": "uint64", "minimum": 0 },
        }],
        "result": {
            "name": "unsubscribed",
            "description": "False when no such subscription was open",
            "schema": { "type": "boolean" },
        },
    })
}

/// A method that is called; `errors`: the names (in [`ERRORS`]) of the errors it may answer.
fn call(name: &str, summary: &str, params: Vec<Value>, result: Value, errors: &[&str]) -> Value {
    let mut method = json!({
        "name": name,
        "summary": summary,
        "paramStructure": "by-name",
        "params": params,
        "result": result,
    });
    if !errors.is_empty() {
        method["errors"] = errors
            .iter()
            .map(|name| json!({ "$ref": format!("#/components/errors/{name}") }))
            .collect();
    }
    method
}

fn result<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    json!({
        "name": T::schema_name(),
        "schema": generator.subschema_for::<T>(),
    })
}

/// The fields of a params struct as OpenRPC content descriptors, one per named param.
fn by_name<T: JsonSchema>(generator: &mut SchemaGenerator) -> Vec<Value> {
    let schema = generator.root_schema_for::<T>();
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return vec![];
    };
    properties
        .iter()
        .map(|(name, schema)| {
            let mut param = json!({
                "name": name,
                "required": required.contains(&name.as_str()),
                "schema": schema,
            });
            if let Some(description) = schema.get("description") {
                param["description"] = description.clone();
            }
            param
        })
        .collect()
}

#[cfg(test)]
mod tests;
