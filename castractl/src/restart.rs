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
    let applied = r.drift.iter().map(|d| {
        format!(
            "{}: {} {} -> {} (applied by this restart)",
            d.vm, d.setting, d.running, d.configured
        )
    });
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
