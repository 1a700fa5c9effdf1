//! castractl's own `--json` objects: what it prints besides methods' results (`castractl plan
//! --json` prints castra.plan's result as it came) and event envelopes. They are part of the
//! OpenRPC document's `components.schemas` (`Castractl*`), so a script reading castractl's
//! output has a schema for every line it can get.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ErrorData, ImagePullResult, OutcomeResult, VersionResult};

/// A command that failed, with `--json`: the whole output (or, after `up`'s or `events`' JSON
/// lines, the last line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CastractlFailure")]
pub struct CliFailure {
    pub error: CliError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CastractlError")]
pub struct CliError {
    /// castractl's own (`usage`: bad arguments; `unreachable`: no castrad on the socket;
    /// `connection`: the connection broke; `interrupted`: Ctrl-C while following; `internal`),
    /// or castrad's error's `data.kind` (`config`, `preflight`, `operation`, `not-found`,
    /// `invalid-params`); `config` also when castractl finds no castra.toml.
    #[schemars(extend("enum" = [
        "usage", "unreachable", "connection", "interrupted", "internal",
        "config", "preflight", "operation", "not-found", "invalid-params"
    ]))]
    pub kind: String,
    /// castractl's exit status for it (see README: 1 failed, 2 usage or preflight, 3 castrad
    /// unreachable).
    pub exit_code: u8,
    pub message: String,
    /// Further causes and hints.
    pub details: Vec<String>,
    /// castrad's JSON-RPC error object, when castrad sent one.
    pub rpc: Option<RpcError>,
}

/// A JSON-RPC 2.0 error object as castrad sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CastractlRpcError")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    /// Absent on the JSON-RPC library's own errors (see PROTOCOL.md's error table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ErrorData>,
}

/// The last line of `castractl up --json`: castra.outcome's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CastractlOutcome")]
pub struct CliOutcome {
    pub outcome: OutcomeResult,
}

/// The last line of `castractl image pull --json`: castra.imagePull's result (the lines before
/// it are the pull's `ImageFetch` event envelopes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CastractlPull")]
pub struct CliPull {
    pub pull: ImagePullResult,
}

/// `castractl version --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CastractlVersion")]
pub struct CliVersion {
    /// castractl's own version.
    pub castractl: String,
    /// castra.version's result; null when castrad is not reachable.
    pub castrad: Option<VersionResult>,
    /// Why castrad could not be reached; null when it answered.
    pub unreachable: Option<String>,
}

/// `castractl init --json`: the files it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "CastractlInit")]
pub struct CliInit {
    /// The castra.toml written (absolute path).
    pub config: std::path::PathBuf,
    /// The bootstrap script written beside it (absolute path).
    pub script: std::path::PathBuf,
    /// The project's name in it.
    pub project: String,
    /// Its VM's `base_image`: a catalog name or an https:// URL.
    pub image: String,
}
