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
use crate::images::ImageError;

impl From<DaemonError> for ErrorObjectOwned {
    fn from(err: DaemonError) -> Self {
        let (code, kind) = match &err {
            DaemonError::Image(e) | DaemonError::VmImage { source: e, .. } => image_code(e),
            DaemonError::InvalidParams(_)
            | DaemonError::RelativeConfig(_)
            | DaemonError::AmbiguousRun(_) => (code::INVALID_PARAMS, "invalid-params"),
            DaemonError::Config(_) => (code::CONFIG, "config"),
            DaemonError::Preflight(_)
            | DaemonError::Overrides(_)
            | DaemonError::UnknownVm { .. }
            | DaemonError::DiskShrinks { .. }
            | DaemonError::NoConsole { .. }
            | DaemonError::NoStoreImage { .. }
            | DaemonError::CannotAdopt { .. }
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

/// An image store error's code: the user's input for a checksum that does not match (as a
/// wrong `base_image_digest` is), a refusal for an image in use or a busy store, and a digest
/// that names no image or several.
fn image_code(e: &ImageError) -> (i32, &'static str) {
    match e {
        ImageError::Mismatch { .. } => (code::CONFIG, "config"),
        ImageError::InUse { .. } | ImageError::Busy { .. } => (code::PREFLIGHT, "preflight"),
        ImageError::NotFound { .. } => (code::NOT_FOUND, "not-found"),
        ImageError::Ambiguous { .. } | ImageError::BadDigest { .. } => {
            (code::INVALID_PARAMS, "invalid-params")
        }
        ImageError::Http { .. }
        | ImageError::Transfer { .. }
        | ImageError::Sums { .. }
        | ImageError::UnknownCatalogName { .. }
        | ImageError::Io { .. }
        | ImageError::NotABase { .. }
        | ImageError::NotImported { .. }
        | ImageError::Changed { .. } => (code::OPERATION, "operation"),
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

    fn data(obj: &ErrorObjectOwned) -> ErrorData {
        serde_json::from_str(obj.data().unwrap().get()).unwrap()
    }

    #[test]
    fn image_errors_map_to_the_code_the_user_acts_on() {
        let mismatch = || ImageError::Mismatch {
            source_label: "https://h/debian.qcow2".into(),
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        };
        let cases = [
            (DaemonError::Image(mismatch()), code::CONFIG, "config"),
            (
                DaemonError::VmImage {
                    vm: "web-0".into(),
                    source: mismatch(),
                },
                code::CONFIG,
                "config",
            ),
            (
                DaemonError::Image(ImageError::InUse {
                    digest: "sha256:aa".into(),
                    users: vec!["web-0".into(), "db".into()],
                }),
                code::PREFLIGHT,
                "preflight",
            ),
            (
                DaemonError::Image(ImageError::Busy { dir: "/s".into() }),
                code::PREFLIGHT,
                "preflight",
            ),
            (
                DaemonError::Image(ImageError::NotFound {
                    digest: "0123abcd".into(),
                    dir: "/s".into(),
                }),
                code::NOT_FOUND,
                "not-found",
            ),
            (
                DaemonError::Image(ImageError::Http {
                    url: "https://h/x.img".into(),
                    status: 404,
                }),
                code::OPERATION,
                "operation",
            ),
            (
                DaemonError::NoStoreImage {
                    vm: "ext".into(),
                    why: "it has no base image",
                },
                code::PREFLIGHT,
                "preflight",
            ),
            (
                DaemonError::CannotAdopt {
                    vm: "web".into(),
                    why: "it is running".into(),
                },
                code::PREFLIGHT,
                "preflight",
            ),
        ];
        for (err, want_code, want_kind) in cases {
            let text = err.to_string();
            let obj = ErrorObjectOwned::from(err);
            assert_eq!(
                (obj.code(), data(&obj).kind.as_str()),
                (want_code, want_kind),
                "{text}"
            );
        }
        let obj = ErrorObjectOwned::from(DaemonError::Image(ImageError::InUse {
            digest: "sha256:aa".into(),
            users: vec!["web-0".into(), "db".into()],
        }));
        assert!(obj.message().contains("web-0, db"), "{}", obj.message());
    }

    /// The causes under an image error reach the client: a VM's context first, then the
    /// store's error, then what it was caused by.
    #[test]
    fn image_errors_keep_their_cause_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let err = DaemonError::VmImage {
            vm: "web-0".into(),
            source: ImageError::Io {
                what: "cannot create /s/partial".into(),
                source: io,
            },
        };
        let obj = ErrorObjectOwned::from(err);
        assert_eq!(
            data(&obj).causes,
            ["vm web-0: cannot create /s/partial", "permission denied"]
        );
        assert_eq!(
            obj.message(),
            "vm web-0: cannot create /s/partial: permission denied"
        );
    }
}
