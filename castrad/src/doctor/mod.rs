//! `castra.doctor`: whether this machine, and a project, can run Castra's VMs, as a list of
//! checks with a one-line verdict each and what to do. castrad answers for its own side (the
//! programs it runs, /dev/kvm, its state directory and limits, how systemd would run it as a
//! user service, a project's files and ports); `castractl doctor` adds what only a client can
//! see (whether castrad answers at all), and when it does not, runs `castrad --check`, which
//! prints [`machine`]'s checks without a daemon.
//!
//! `host.rs` checks the machine, `service.rs` the systemd user service, `project.rs` a
//! project; the verdicts are pure functions of what was probed (unit-tested in `tests.rs` and
//! `service/tests.rs`). Nothing here writes anything: the state directory's writability is
//! asked of the kernel (`access`), ports are bound and let go, systemctl is only asked.

mod host;
mod project;
mod service;

use std::path::Path;

use castra_api::{DoctorCheck, DoctorResult};

use crate::daemon::Daemon;

pub use host::Settings;

/// Every check: the machine's, then (given `config`) the project's.
pub async fn run(daemon: &Daemon, config: Option<&Path>) -> DoctorResult {
    let settings = host::Settings {
        state_base: daemon.settings.state_base.clone(),
        accel_override: daemon.settings.accel_override,
        max_parallel: daemon.settings.max_parallel,
    };
    let mut checks = tokio::task::spawn_blocking(move || machine(&settings))
        .await
        .unwrap_or_else(|e| vec![panicked("host", &e)]);
    if let Some(config) = config {
        checks.extend(project::checks(daemon, config).await);
    }
    DoctorResult { checks }
}

/// The machine's checks (blocking: it runs programs): the host's, then the user service's.
/// `castra.doctor` and `castrad --check` both answer with these.
pub fn machine(settings: &Settings) -> Vec<DoctorCheck> {
    let mut checks = host::checks(settings);
    checks.extend(service::checks());
    checks
}

fn panicked(what: &str, e: &tokio::task::JoinError) -> DoctorCheck {
    DoctorCheck::fail(
        what,
        None,
        format!("the {what} checks panicked: {e}"),
        "report this as a bug in castrad, with its log",
    )
}

/// The first line `program --version`-like `args` print (stdout, else stderr), or why it
/// could not be run.
fn version_of(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if program.contains('/') => "not found".to_owned(),
            std::io::ErrorKind::NotFound => "not found in PATH".to_owned(),
            _ => e.to_string(),
        })?;
    let text = if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
        out.stdout
    } else {
        out.stderr
    };
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match (out.status.success(), line) {
        (true, Some(line)) => Ok(line.chars().take(200).collect()),
        (true, None) => Ok("(no version printed)".to_owned()),
        (false, line) => Err(format!(
            "`{program} {}` failed ({}){}",
            args.join(" "),
            out.status,
            line.map(|l| format!(": {l}")).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests;
