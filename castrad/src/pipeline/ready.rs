//! `wait_ready`: a VM just booted whose bootstrap does nothing (a NoOp or a Skip) is still
//! only handed back once its guest lets us in, as an executing run's `wait-handshake` would.

use castra_api::{BootstrapStepKind as Step, Event};
use tokio::time::{Duration, Instant};

use super::record::RunError;
use super::steps::RETRY_PAUSE;
use super::{Ctx, Job};

/// For a VM this job has just booted whose bootstrap is a NoOp or a Skip: waits until the
/// guest accepts us (its SSH banner, then a login that runs nothing), saying what it waits on
/// as `wait-handshake` does, so `up` never returns a VM that cannot be used yet. Nothing is
/// run in the guest and nothing is written. Err: why the guest did not become reachable.
pub async fn wait_ready(ctx: &Ctx, job: &Job) -> Result<(), String> {
    let vm = &job.vm;
    let endpoint = job
        .endpoint
        .clone()
        .ok_or_else(|| RunError::NoPort.to_string())?;
    let t = Instant::now();
    let timeout = Duration::from_secs(vm.bootstrap.handshake_timeout_secs);
    let deadline = t + timeout;
    let progress = |waiting_on: &str| {
        ctx.snapshot.send_modify(|s| {
            s.current_step = Some(Step::WaitHandshake);
            s.waiting_on = Some(waiting_on.to_owned());
        });
        ctx.bus.publish(
            Some(&job.operation),
            Event::BootstrapProgress {
                vm: vm.name.clone(),
                step: Step::WaitHandshake,
                waiting_on: waiting_on.to_owned(),
                elapsed_ms: t.elapsed().as_millis() as u64,
            },
        );
    };
    let target = ctx.session(
        vm,
        &endpoint,
        "ready",
        Duration::from_secs(vm.bootstrap.handshake_timeout_secs.clamp(1, 30)),
    );
    let result = loop {
        let mut report = progress;
        let left = deadline.saturating_duration_since(Instant::now());
        let probe = ctx
            .remote
            .probe(&target.host, target.port, left, &mut report);
        let probed = tokio::select! {
            probed = probe, if target.proxy.is_none() => probed,
            reason = job.cancel.cancelled() => break Err(reason),
            () = std::future::ready(()), if target.proxy.is_some() => Ok(String::new()),
        };
        if let Err(mut e) = probed {
            e.waited = t.elapsed().as_secs_f64();
            break Err(e.to_string());
        }
        progress(&format!("authentication as {}", target.display()));
        match ctx.remote.login(target.clone()).await {
            Ok(()) => {
                super::confirm_pin(&ctx.root, &vm.name);
                break Ok(());
            }
            Err(e) if e.unreached() && Instant::now() < deadline => {
                progress(&e.to_string());
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    ctx.snapshot.send_modify(|s| {
        s.current_step = None;
        s.waiting_on = None;
    });
    result.map_err(|e| format!("wait-handshake: {e}"))
}
