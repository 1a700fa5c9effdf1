//! `castractl doctor`: castrad's `castra.doctor` checks (the machine, the project), behind the
//! one only a client can make: whether castrad answers at all, and in which version. castrad
//! not answering is a failed check, not an error: the report is printed either way, with the
//! machine's checks from `castrad --check` (the castrad installed with this castractl, run in
//! castractl's environment).
//!
//! Why run castrad rather than check here: the verdicts are the daemon's own decisions (the
//! accelerator `accel::choose` would pick, the user namespace virtiofsd would get, the open
//! file limit against `--max-parallel`), made by one implementation; moving them to a crate
//! castractl links would put the QEMU backend's probes into the wire crate, or castrad's code
//! into castractl (ARCHITECTURE.md: castractl links castra-api only). The price is that the
//! checks need a castrad binary, which is installed beside castractl anyway, and a castrad
//! that cannot be run is itself what doctor reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    let restart = api::RESTART_CASTRAD;
    match Daemon::connect(socket).await {
        Err(f) => {
            let program = castrad_program();
            let machine = machine_checks(&program).await;
            let verdict = match &machine {
                Ok(_) => format!(
                    "{}; the machine's checks below are `{} --check`'s",
                    f.message,
                    program.display()
                ),
                Err(_) => f.message,
            };
            checks.push(DoctorCheck::fail(
                "castrad",
                None,
                verdict,
                api::START_CASTRAD,
            ));
            checks.extend(machine.unwrap_or_else(|failed| vec![failed]));
            if let Some(config) = &config {
                checks.push(DoctorCheck::warn(
                    "config",
                    None,
                    format!(
                        "{} was not checked: a project's checks need castrad (then run \
                         castractl doctor again)",
                        config.display()
                    ),
                    api::START_CASTRAD,
                ));
            }
        }
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
            "no castra.toml here or above: only the machine was checked (castractl init \
             writes one)",
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

/// Names the castrad `castractl doctor` runs with `--check` when castrad does not answer.
pub const CASTRAD_ENV: &str = "CASTRA_CASTRAD";

/// How long `castrad --check` may take (it runs QEMU's, ssh's and systemctl's version and
/// state queries, and starts virtiofsd once).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// The castrad to run with `--check`: `$CASTRA_CASTRAD`, else the castrad beside this
/// castractl (they are installed together, so they are one build), else `castrad` in PATH.
fn castrad_program() -> PathBuf {
    if let Some(path) = std::env::var_os(CASTRAD_ENV).filter(|p| !p.is_empty()) {
        return path.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("castrad")))
        .filter(|beside| beside.is_file())
        .unwrap_or_else(|| PathBuf::from("castrad"))
}

/// The machine's checks, from `program --check` (castra.doctor's result on its stdout), or
/// one failed `machine` check saying why there are none.
async fn machine_checks(program: &Path) -> Result<Vec<DoctorCheck>, DoctorCheck> {
    let fail = |verdict: String, fix: &str| DoctorCheck::fail("machine", None, verdict, fix);
    let same_build = "install castrad and castractl from the same build (scripts/install), or \
                      set CASTRA_CASTRAD to castrad's path";
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--check")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(CHECK_TIMEOUT, command.output()).await {
        Err(_) => {
            return Err(fail(
                format!(
                    "the machine was not checked: `{} --check` did not finish in {} s",
                    program.display(),
                    CHECK_TIMEOUT.as_secs()
                ),
                "run castrad --check yourself to see where it waits",
            ));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let place = match std::env::var_os(CASTRAD_ENV).filter(|p| !p.is_empty()) {
                Some(_) => format!("{CASTRAD_ENV}={} does not exist", program.display()),
                None => "there is no castrad beside castractl or in PATH".to_owned(),
            };
            return Err(fail(
                format!("the machine was not checked: {place}"),
                same_build,
            ));
        }
        Ok(Err(e)) => {
            return Err(fail(
                format!(
                    "the machine was not checked: cannot run {}: {e}",
                    program.display()
                ),
                same_build,
            ));
        }
        Ok(Ok(out)) => out,
    };
    if let Ok(result) = serde_json::from_slice::<DoctorResult>(&out.stdout) {
        return Ok(result.checks);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("nothing on stderr");
    if stderr.contains("--check") {
        // clap: "unexpected argument '--check' found".
        return Err(fail(
            format!(
                "the machine was not checked: {} has no --check (older than this castractl): \
                 {said}",
                program.display()
            ),
            same_build,
        ));
    }
    Err(fail(
        format!(
            "the machine was not checked: `{} --check` failed ({}): {said}",
            program.display(),
            out.status
        ),
        "run castrad --check yourself to see why",
    ))
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
            format!(
                "install castrad and castractl from the same build (scripts/install), then {}",
                api::RESTART_CASTRAD
            ),
        )
    } else if v.version != ours {
        DoctorCheck::warn(
            "castrad",
            None,
            format!("{verdict}; castractl is {ours}"),
            format!("to run the installed version, {}", api::RESTART_CASTRAD),
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
