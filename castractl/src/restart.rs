//! `castractl restart`: `castra.restart`, then the operation followed as `up` follows its own
//! (the stop's events are replayed first: castrad answers once the VMs have stopped).

use castra_api as api;

use crate::Exit;
use crate::client::{Daemon, Failure};
use crate::term;

pub async fn restart(
    daemon: &Daemon,
    params: api::RestartParams,
    json: bool,
) -> Result<Exit, Failure> {
    if !json {
        // castrad answers once the VMs have stopped, which can take the whole timeout.
        let which = if params.vms.is_empty() {
            "the project's VMs".to_owned()
        } else {
            params.vms.join(", ")
        };
        let _ = term::line(&format!("stopping {which} (then starting them again)..."));
    }
    let r: api::RestartResult = daemon.call(api::method::RESTART, &params).await?;
    let applied = r.drift.iter().map(drift_note);
    let failed_stops = r.stopped.iter().filter_map(|s| {
        let error = s.error.as_deref()?;
        Some(format!("{} was not stopped ({}): {error}", s.vm, s.outcome))
    });
    let notes: Vec<String> = applied.chain(failed_stops).collect();
    let up = api::UpResult {
        operation: r.operation,
        project: r.project,
        vms: r.vms,
        drift: Vec::new(),
    };
    crate::cli::follow(daemon, up, &notes, json).await
}

/// What the restart does about one drift entry: applies it, or (a setting a cloud-init guest
/// takes from its seed) not, with castrad's sentence saying what does.
fn drift_note(d: &api::Drift) -> String {
    if d.restart_applies {
        format!(
            "{}: {} {} -> {} (applied by this restart)",
            d.vm, d.setting, d.running, d.configured
        )
    } else {
        format!("not applied by this restart: {}", d.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift(setting: &str, restart_applies: bool) -> api::Drift {
        api::Drift {
            vm: "db".into(),
            setting: setting.into(),
            running: "10.142.7.11".into(),
            configured: "10.142.7.12".into(),
            message: "db is running with project network address 10.142.7.11, castra.toml says \
                      10.142.7.12: ... `castractl down --discard db`, then `castractl up db`"
                .into(),
            restart_applies,
        }
    }

    #[test]
    fn only_what_a_restart_applies_is_said_to_be_applied() {
        assert_eq!(
            drift_note(&drift("cpus", true)),
            "db: cpus 10.142.7.11 -> 10.142.7.12 (applied by this restart)"
        );
        let note = drift_note(&drift("network", false));
        assert!(!note.contains("(applied"), "{note}");
        assert!(
            note.starts_with("not applied by this restart: db is running with"),
            "{note}"
        );
        assert!(note.contains("--discard db"), "{note}");
    }
}
