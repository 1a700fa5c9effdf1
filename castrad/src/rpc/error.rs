//! The one place that maps castrad errors to JSON-RPC error objects.
//!
//! Every error a castrad method returns carries `error.data` ([`castra_api::ErrorData`]): a
//! kind, the full cause chain and, for file problems, the location. (Errors jsonrpsee answers
//! before a method runs, such as parse errors and unknown methods, have no `data`; PROTOCOL.md
//! lists them.) Clients show the chain, so a user sees the real reason
//! (a missing file, a bad key) instead of a generic "request failed".

use castra_api::{ErrorData, ErrorLocation, code};
use jsonrpsee::types::ErrorObjectOwned;

use crate::daemon::DaemonError;

impl From<DaemonError> for ErrorObjectOwned {
    fn from(err: DaemonError) -> Self {
        let (code, kind) = match &err {
            DaemonError::InvalidParams(_)
            | DaemonError::RelativeConfig(_)
            | DaemonError::AmbiguousRun(_) => (code::INVALID_PARAMS, "invalid-params"),
            DaemonError::Config(_) => (code::CONFIG, "config"),
            DaemonError::Preflight(_)
            | DaemonError::Overrides(_)
            | DaemonError::UnknownVm { .. }
            | DaemonError::DiskShrinks { .. }
            | DaemonError::NoConsole { .. }
            | DaemonError::Plan(
                crate::planner::PlanError::BaseImage { .. }
                | crate::planner::PlanError::BaseMissing { .. },
            ) => (code::PREFLIGHT, "preflight"),
            DaemonError::NoOperation(_) | DaemonError::NoSuchRun { .. } => {
                (code::NOT_FOUND, "not-found")
            }
            DaemonError::Plan(_)
            | DaemonError::Logs { .. }
            | DaemonError::Console { .. }
            | DaemonError::Panicked { .. }
            | DaemonError::NotRunning(_) => (code::OPERATION, "operation"),
        };
        let location = match &err {
            DaemonError::Config(e) => e.location().map(|(file, line, column)| ErrorLocation {
                file: file.to_owned(),
                line,
                column,
            }),
            _ => None,
        };
        let causes = crate::error::chain(&err);
        let message = causes.join(": ");
        let data = ErrorData {
            kind: kind.to_owned(),
            causes,
            location,
        };
        ErrorObjectOwned::owned(code, message, Some(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_carry_code_kind_causes_and_location() {
        let err = DaemonError::Config(crate::config::ConfigError::Invalid {
            path: "/p/castra.toml".into(),
            line: 3,
            column: 7,
            key: "vms[0].bootstrap.mode".into(),
            message: "unknown mode".into(),
        });
        let obj = ErrorObjectOwned::from(err);
        assert_eq!(obj.code(), code::CONFIG);
        let data: ErrorData = serde_json::from_str(obj.data().unwrap().get()).unwrap();
        assert_eq!(data.kind, "config");
        let loc = data.location.unwrap();
        assert_eq!(
            (loc.file.to_str().unwrap(), loc.line, loc.column),
            ("/p/castra.toml", 3, 7)
        );
        assert!(
            obj.message().contains("/p/castra.toml:3:7"),
            "{}",
            obj.message()
        );
    }
}
