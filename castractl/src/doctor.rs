//! `castractl doctor`: castrad's `castra.doctor` checks (the machine, the project), behind the
//! one only a client can make: whether castrad answers at all, and in which version. castrad
//! not answering is a failed check, not an error: the report is printed either way.

use std::path::{Path, PathBuf};

use api::{CheckStatus, DoctorCheck, DoctorResult};
use castra_api as api;

use crate::Exit;
use crate::client::Daemon;
use crate::term;

/// JSON-RPC's "method not found": a castrad older than `castra.doctor`.
const METHOD_NOT_FOUND: i64 = -32601;

/// Runs the checks, prints them (text, or castra.doctor's result with `--json`), and exits 0
/// when none failed, 1 otherwise. `config`: the project to check too, when there is one.
pub async fn run(socket: &Path, config: Option<PathBuf>, json: bool) -> Exit {
    let mut checks = Vec::new();
    let restart = "restart castrad to run the installed version: systemctl --user restart castrad";
    match Daemon::connect(socket).await {
        Err(f) => checks.push(DoctorCheck::fail(
            "castrad",
            None,
            f.message,
            "start it: systemctl --user enable --now castrad.socket (or run castrad in a \
             terminal); if it listens elsewhere, pass --socket or set CASTRA_SOCKET",
        )),
        Ok(daemon) => {
            let version: Result<api::VersionResult, _> = daemon
                .call(api::method::VERSION, &serde_json::json!({}))
                .await;
            checks.push(match version {
                Err(f) => DoctorCheck::fail("castrad", None, f.message, restart),
                Ok(v) => version_check(&v, socket),
            });
            let params = api::DoctorParams {
                config: config.clone(),
            };
            match daemon
                .call::<_, DoctorResult>(api::method::DOCTOR, &params)
                .await
            {
                Ok(result) => checks.extend(result.checks),
                Err(f) if f.rpc.as_ref().is_some_and(|r| r.code == METHOD_NOT_FOUND) => checks
                    .push(DoctorCheck::fail(
                        "castrad",
                        None,
                        "castrad does not know castra.doctor: it is older than this castractl",
                        restart,
                    )),
                Err(f) => checks.push(DoctorCheck::fail(
                    "castrad",
                    None,
                    format!("castra.doctor failed: {}", f.message),
                    "see castrad's log (journalctl --user -u castrad)",
                )),
            }
        }
    }
    if config.is_none() {
        checks.push(DoctorCheck::ok(
            "config",
            None,
            "no castra.toml here or above: only the machine was checked",
        ));
    }
    let result = DoctorResult { checks };
    if json {
        term::json_pretty(&result);
    } else {
        term::text(&render(&result));
    }
    if result.checks.iter().any(|c| c.status == CheckStatus::Fail) {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

/// castrad answers: its version against castractl's.
fn version_check(v: &api::VersionResult, socket: &Path) -> DoctorCheck {
    let ours = env!("CARGO_PKG_VERSION");
    let verdict = format!(
        "castrad {} (protocol {}) answers on {}",
        v.version,
        v.protocol,
        socket.display()
    );
    if v.protocol != api::PROTOCOL_VERSION {
        DoctorCheck::fail(
            "castrad",
            None,
            format!(
                "{verdict}, but this castractl {ours} speaks protocol {}",
                api::PROTOCOL_VERSION
            ),
            "install castrad and castractl from the same build (scripts/install), then restart \
             castrad: systemctl --user restart castrad",
        )
    } else if v.version != ours {
        DoctorCheck::warn(
            "castrad",
            None,
            format!("{verdict}; castractl is {ours}"),
            "restart castrad to run the installed version: systemctl --user restart castrad",
        )
    } else {
        DoctorCheck::ok("castrad", None, verdict)
    }
}

/// One line per check (`ok`, `WARN`, `FAIL`, the check, its VM, the verdict), what to do
/// under it, and a count.
fn render(result: &DoctorResult) -> String {
    let mut out = String::new();
    let (mut warned, mut failed) = (0, 0);
    for c in &result.checks {
        let status = match c.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => {
                warned += 1;
                "WARN"
            }
            CheckStatus::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        let vm =
            c.vm.as_deref()
                .map(|v| format!(" [{v}]"))
                .unwrap_or_default();
        out.push_str(&format!("{status}  {}{vm}: {}\n", c.check, c.verdict));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      fix: {fix}\n"));
        }
    }
    out.push_str(&format!(
        "{} checks: {} ok, {warned} warnings, {failed} failed\n",
        result.checks.len(),
        result.checks.len() - warned - failed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_marks_what_failed_and_says_what_to_do() {
        let result = DoctorResult {
            checks: vec![
                DoctorCheck::ok("qemu", None, "QEMU 7.2"),
                DoctorCheck::warn("kvm", None, "TCG, slower", "use KVM"),
                DoctorCheck::fail("ports", Some("web-0"), "8080/tcp taken", "free it"),
            ],
        };
        assert_eq!(
            render(&result),
            "ok    qemu: QEMU 7.2\n\
             WARN  kvm: TCG, slower\n      fix: use KVM\n\
             FAIL  ports [web-0]: 8080/tcp taken\n      fix: free it\n\
             3 checks: 1 ok, 1 warnings, 1 failed\n"
        );
    }

    #[test]
    fn a_castrad_of_another_version_is_a_warning_another_protocol_a_failure() {
        let socket = Path::new("/run/castrad.sock");
        let same = api::VersionResult {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: api::PROTOCOL_VERSION,
        };
        assert_eq!(version_check(&same, socket).status, CheckStatus::Ok);
        let older = api::VersionResult {
            version: "0.0.1".into(),
            ..same.clone()
        };
        assert_eq!(version_check(&older, socket).status, CheckStatus::Warn);
        let other = api::VersionResult {
            protocol: api::PROTOCOL_VERSION + 1,
            ..same
        };
        assert_eq!(version_check(&other, socket).status, CheckStatus::Fail);
    }
}
