//! The bootstrap pipeline of one VM, run by its actor as a task.
//!
//! Order: plan → `BootstrapPlanned`; then Skip → `BootstrapCompleted{Skipped}`, NoOp →
//! `BootstrapCompleted{NoOp}` (no SSH, nothing written), or a run: `BootstrapStarted`, one
//! `BootstrapStep` per step (wait-handshake, the three Vizier steps, connect, transfer, apply,
//! verify), then `BootstrapCompleted{Success|NoOp}` or `BootstrapFailed`.
//!
//! Invariants:
//! - An executed run writes exactly one durable log, success or failure.
//! - A stamp is written only after `Success`, after its log; a failure never touches it.
//! - Env values never reach an event or a log; output lines are redacted of them.
//! - On failure the VM is left as it is, for inspection.

mod handshake;
mod remote;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use castra_api::{
    BootstrapStatus, BootstrapStepKind as Step, BootstrapStepStatus as StepStatus,
    BootstrapTrigger, Event, OutcomeStatus, OutputStream, RunStatus, VmOutcome,
};

use crate::config::{BootstrapMode, Vm};
use crate::events::EventBus;
use crate::overrides::ModeSource;
use crate::planner::{self, Action, Trigger, VmPlan};
use crate::runlog::{self, Recorder};
use crate::ssh::{self, Master, Target};
use crate::stamps::{self, Stamp};
use crate::state_root::StateRoot;
use crate::vm::VmSnapshot;

pub use remote::{ERROR_MARKER, NOOP_MARKER};

/// One VM's part of an operation.
#[derive(Debug, Clone)]
pub struct Job {
    pub vm: Arc<Vm>,
    pub mode: (BootstrapMode, ModeSource),
    /// Warnings that need the whole project (computed by the caller).
    pub extra_warnings: Vec<String>,
    pub operation: String,
}

/// What the pipeline needs from the daemon.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub bus: EventBus,
    pub root: StateRoot,
    /// Where ControlMaster sockets go.
    pub control_dir: PathBuf,
    pub snapshot: Arc<tokio::sync::watch::Sender<VmSnapshot>>,
}

/// Runs the whole pipeline for `job`; never panics on guest or IO errors (they become a
/// `Failed` outcome with a log).
pub async fn run(ctx: Ctx, job: Job) -> VmOutcome {
    let started = Instant::now();
    let vm = job.vm.clone();
    let name = vm.name.clone();
    let op = job.operation.clone();
    let publish = |e: Event| {
        ctx.bus.publish(Some(&op), e);
    };

    let plan = {
        let (root, vm, mode) = (ctx.root.clone(), vm.clone(), job.mode.clone());
        tokio::task::spawn_blocking(move || {
            planner::gather(&root, &vm).map(|facts| planner::decide(&root, &vm, mode, facts))
        })
        .await
    };
    let mut plan = match plan {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            let error = crate::rpc::error::chain(&e).join(": ");
            return record_failure(&ctx, &job, started, error);
        }
        Err(e) => return record_failure(&ctx, &job, started, format!("planner panicked: {e}")),
    };
    plan.warnings.extend(job.extra_warnings.iter().cloned());
    publish(Event::BootstrapPlanned(crate::events::planned(
        &vm,
        plan.clone(),
    )));

    let ms = |since: Instant| since.elapsed().as_millis() as u64;
    match plan.action {
        Action::Skip => {
            publish(Event::BootstrapCompleted {
                vm: name.clone(),
                status: BootstrapStatus::Skipped,
                duration_ms: ms(started),
                stamp: None,
            });
            outcome(&name, OutcomeStatus::Skipped, ms(started))
        }
        Action::Noop => {
            let stamp = plan.stamp.as_ref().map(|s| s.log_path.clone());
            publish(Event::BootstrapCompleted {
                vm: name.clone(),
                status: BootstrapStatus::NoOp,
                duration_ms: ms(started),
                stamp: Some(plan.stamp_path.display().to_string()),
            });
            VmOutcome {
                run_id: plan.stamp.as_ref().map(|s| s.run_id.clone()),
                log_path: stamp,
                stamp: Some(plan.stamp_path.clone()),
                ..outcome(&name, OutcomeStatus::NoOp, ms(started))
            }
        }
        Action::Run => Run::new(ctx.clone(), job, plan, started).execute().await,
    }
}

fn outcome(vm: &str, status: OutcomeStatus, duration_ms: u64) -> VmOutcome {
    VmOutcome {
        vm: vm.to_owned(),
        status,
        duration_ms,
        run_id: None,
        log_path: None,
        stamp: None,
        error: None,
    }
}

/// A run that failed outside the step sequence (planning failed: a script vanished, a payload
/// holds a FIFO...; or the pipeline panicked): still one failure log and one `BootstrapFailed`.
pub fn record_failure(ctx: &Ctx, job: &Job, started: Instant, error: String) -> VmOutcome {
    let run_id = runlog::new_run_id();
    let recorder = Recorder::new(
        &ctx.root,
        &job.vm.name,
        &run_id,
        "",
        "",
        BootstrapTrigger::Auto,
        Some(&job.operation),
    );
    let log_path = recorder
        .finish(RunStatus::Failed, Some(&error))
        .ok()
        .map(|(p, _)| p);
    let duration_ms = started.elapsed().as_millis() as u64;
    ctx.bus.publish(
        Some(&job.operation),
        Event::BootstrapFailed {
            vm: job.vm.name.clone(),
            duration_ms,
            error: error.clone(),
        },
    );
    VmOutcome {
        run_id: Some(run_id),
        log_path,
        error: Some(error),
        ..outcome(&job.vm.name, OutcomeStatus::Failed, duration_ms)
    }
}

/// An executing run: the recorder, the redactor, and the event/snapshot plumbing.
struct Run {
    ctx: Ctx,
    job: Job,
    plan: VmPlan,
    started: Instant,
    run_id: String,
    recorder: Recorder,
    env: BTreeMap<String, String>,
    redactions: Vec<(String, String)>,
    output: Option<std::fs::File>,
}

/// A failed step: its detail.
type StepResult<T> = Result<T, String>;

impl Run {
    fn new(ctx: Ctx, job: Job, plan: VmPlan, started: Instant) -> Run {
        let run_id = runlog::new_run_id();
        let trigger = match plan.trigger {
            Some(Trigger::Always) => BootstrapTrigger::Always,
            _ => BootstrapTrigger::Auto,
        };
        let artifact = plan.artifact_hash.clone().unwrap_or_default();
        let recorder = Recorder::new(
            &ctx.root,
            &job.vm.name,
            &run_id,
            &plan.base_hash,
            &artifact,
            trigger,
            Some(&job.operation),
        );
        let b = &job.vm.bootstrap;
        let mut env = b.env.clone();
        // Values that may be secrets; CASTRA_* below are not.
        let mut redactions: Vec<(String, String)> = env
            .iter()
            .filter(|(_, v)| v.trim().len() >= 4)
            .map(|(k, v)| (v.clone(), format!("[{k} redacted]")))
            .collect();
        redactions.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        let payload_dir = format!("{}/payload", b.remote_dir.trim_end_matches('/'));
        env.insert("CASTRA_VM".into(), job.vm.name.clone());
        env.insert("CASTRA_RUN_ID".into(), run_id.clone());
        env.insert("CASTRA_PAYLOAD_DIR".into(), payload_dir);
        env.insert("CASTRA_BASE_HASH".into(), plan.base_hash.clone());
        env.insert("CASTRA_ARTIFACT_HASH".into(), artifact);
        Run {
            ctx,
            job,
            plan,
            started,
            run_id,
            recorder,
            env,
            redactions,
            output: None,
        }
    }

    fn vm(&self) -> &str {
        &self.job.vm.name
    }

    fn publish(&self, event: Event) {
        self.ctx.bus.publish(Some(&self.job.operation), event);
    }

    fn set_step(&self, step: Option<Step>, waiting_on: Option<String>) {
        self.ctx.snapshot.send_modify(|s| {
            s.current_step = step;
            s.waiting_on = waiting_on;
        });
    }

    /// Records and publishes a finished step.
    fn step_done(
        &mut self,
        step: Step,
        status: StepStatus,
        since: Instant,
        detail: Option<String>,
    ) {
        let duration_ms = since.elapsed().as_millis() as u64;
        self.recorder
            .step(step, status, duration_ms, detail.clone());
        self.publish(Event::BootstrapStep {
            vm: self.vm().to_owned(),
            step,
            status,
            duration_ms,
            detail,
        });
    }

    fn redact(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for (value, mask) in &self.redactions {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), mask);
            }
        }
        out
    }

    /// One line of guest output: redacted, published, appended to the run's output file.
    fn output_line(&mut self, step: Step, stream: OutputStream, line: &str) {
        let line = self.redact(line);
        if self.output.is_none()
            && let Some(path) = self.recorder.output_path()
        {
            let _ = crate::state_root::ensure_dir(path.parent().expect("log dir"));
            self.output = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok();
        }
        if let Some(file) = &mut self.output {
            let tag = match stream {
                OutputStream::Stdout => "out",
                OutputStream::Stderr => "err",
            };
            let _ = writeln!(file, "{} {tag} {line}", step.as_str());
        }
        self.publish(Event::BootstrapOutput {
            vm: self.vm().to_owned(),
            step,
            stream,
            line,
        });
    }

    async fn execute(mut self) -> VmOutcome {
        self.ctx.snapshot.send_modify(|s| s.bootstrapping = true);
        self.publish(Event::BootstrapStarted {
            vm: self.vm().to_owned(),
            base_hash: self.plan.base_hash.clone(),
            artifact_hash: self.plan.artifact_hash.clone().unwrap_or_default(),
            trigger: match self.plan.trigger {
                Some(Trigger::Always) => BootstrapTrigger::Always,
                _ => BootstrapTrigger::Auto,
            },
        });
        let result = self.steps().await;
        self.set_step(None, None);
        self.ctx.snapshot.send_modify(|s| s.bootstrapping = false);
        if let Some(mut file) = self.output.take() {
            let _ = file.flush();
            let _ = file.sync_all();
        }
        match result {
            Ok(applied) => self.succeed(applied.noop),
            Err(error) => self.fail(error),
        }
    }

    async fn steps(&mut self) -> StepResult<remote::Applied> {
        let vm = self.job.vm.clone();
        let b = &vm.bootstrap;
        let (host, port) = self.endpoint()?;

        // wait-handshake
        let t = Instant::now();
        self.set_step(Some(Step::WaitHandshake), None);
        let timeout = Duration::from_secs(b.handshake_timeout_secs);
        let (bus, op, name, snapshot) = (
            self.ctx.bus.clone(),
            self.job.operation.clone(),
            vm.name.clone(),
            self.ctx.snapshot.clone(),
        );
        let waited = handshake::wait(&host, port, timeout, |waiting_on| {
            snapshot.send_modify(|s| s.waiting_on = Some(waiting_on.to_owned()));
            bus.publish(
                Some(&op),
                Event::BootstrapProgress {
                    vm: name.clone(),
                    step: Step::WaitHandshake,
                    waiting_on: waiting_on.to_owned(),
                    elapsed_ms: t.elapsed().as_millis() as u64,
                },
            );
        })
        .await;
        self.checked(
            Step::WaitHandshake,
            t,
            waited.map(|banner| ((), Some(banner))),
        )?;

        for step in [
            Step::VizierInstall,
            Step::VizierEnable,
            Step::VizierHandshake,
        ] {
            let t = Instant::now();
            self.step_done(
                step,
                StepStatus::Skipped,
                t,
                Some("the Vizier agent is not shipped yet".into()),
            );
        }

        // connect
        let t = Instant::now();
        let target = Target {
            vm: vm.name.clone(),
            host: host.clone(),
            port,
            user: vm.ssh.user.clone(),
            identity: vm.ssh.identity.clone(),
            options: vm.ssh.options.clone(),
            known_hosts: self.ctx.root.vm_dir(&vm.name).join("known_hosts"),
            control_path: ssh::control_path(&self.ctx.control_dir, &self.run_id),
            connect_timeout: Duration::from_secs(b.handshake_timeout_secs.clamp(1, 30)),
        };
        let waiting = format!("authentication as {}", target.display());
        self.set_step(Some(Step::Connect), Some(waiting.clone()));
        self.publish(Event::BootstrapProgress {
            vm: vm.name.clone(),
            step: Step::Connect,
            waiting_on: waiting,
            elapsed_ms: 0,
        });
        let master = Master::connect(target).await.map_err(|e| e.to_string());
        let master = self.checked(Step::Connect, t, master.map(|m| (m, None)))?;
        let result = self.remote_steps(&master).await;
        master.close().await;
        result
    }

    async fn remote_steps(&mut self, master: &Master) -> StepResult<remote::Applied> {
        let vm = self.job.vm.clone();
        let b = &vm.bootstrap;
        let script = b.script.clone().ok_or("no script")?;

        let t = Instant::now();
        self.set_step(Some(Step::Transfer), None);
        let sent = remote::transfer(master, &b.remote_dir, &script, b.payload.as_deref()).await;
        self.checked(
            Step::Transfer,
            t,
            sent.map(|n| ((), Some(format!("{n} bytes to {}", b.remote_dir)))),
        )?;

        let t = Instant::now();
        self.set_step(Some(Step::Apply), None);
        let program = remote::program(&script)?;
        let env = self.env.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let applied = {
            let run = remote::run(master, &b.remote_dir, &program, &env, |stream, line| {
                let _ = tx.send((stream, line.to_owned()));
            });
            tokio::pin!(run);
            loop {
                tokio::select! {
                    biased;
                    Some((stream, line)) = rx.recv() => self.output_line(Step::Apply, stream, &line),
                    result = &mut run => break result,
                }
            }
        };
        while let Ok((stream, line)) = rx.try_recv() {
            self.output_line(Step::Apply, stream, &line);
        }
        let applied = self.checked(
            Step::Apply,
            t,
            applied.map(|a| {
                let detail = a.noop.then(|| format!("the script printed {NOOP_MARKER}"));
                (a, detail)
            }),
        )?;

        let t = Instant::now();
        if b.verify_command.is_none() && b.verify_path.is_none() {
            self.step_done(
                Step::Verify,
                StepStatus::Skipped,
                t,
                Some("nothing to verify".into()),
            );
            return Ok(applied);
        }
        self.set_step(Some(Step::Verify), None);
        if let Some(command) = &b.verify_command {
            let words = ["sh".to_owned(), "-c".to_owned(), command.clone()];
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let verified = remote::run(master, &b.remote_dir, &words, &env, |stream, line| {
                let _ = tx.send((stream, line.to_owned()));
            })
            .await;
            while let Ok((stream, line)) = rx.try_recv() {
                self.output_line(Step::Verify, stream, &line);
            }
            let verified =
                verified.map_err(|e| format!("verify_command failed: {}", self.redact(&e)));
            if let Err(e) = verified {
                self.step_done(Step::Verify, StepStatus::Failed, t, Some(e.clone()));
                return Err(e);
            }
        }
        if let Some(path) = &b.verify_path {
            match remote::path_exists(master, &b.remote_dir, path).await {
                Ok(true) => {}
                Ok(false) => {
                    let e = format!("verify_path {path} does not exist in {}", b.remote_dir);
                    self.step_done(Step::Verify, StepStatus::Failed, t, Some(e.clone()));
                    return Err(e);
                }
                Err(e) => {
                    self.step_done(Step::Verify, StepStatus::Failed, t, Some(e.clone()));
                    return Err(e);
                }
            }
        }
        self.step_done(Step::Verify, StepStatus::Success, t, None);
        Ok(applied)
    }

    /// Records a step's result; on error the step is failed with the (redacted) reason.
    fn checked<T>(
        &mut self,
        step: Step,
        since: Instant,
        result: Result<(T, Option<String>), String>,
    ) -> StepResult<T> {
        match result {
            Ok((value, detail)) => {
                self.step_done(step, StepStatus::Success, since, detail);
                Ok(value)
            }
            Err(e) => {
                let e = self.redact(&e);
                self.step_done(step, StepStatus::Failed, since, Some(e.clone()));
                Err(format!("{}: {e}", step.as_str()))
            }
        }
    }

    fn endpoint(&self) -> StepResult<(String, u16)> {
        let ssh = &self.job.vm.ssh;
        let host = ssh.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        match (self.job.vm.backend, ssh.port) {
            (_, Some(port)) => Ok((host, port)),
            (crate::config::Backend::External, None) => Ok((host, 22)),
            (crate::config::Backend::Qemu, None) => Err(
                "wait-handshake: no SSH port: this castrad cannot start QEMU VMs yet; set [vms.ssh] port to reach a guest you started".into(),
            ),
        }
    }

    fn succeed(self, runner_noop: bool) -> VmOutcome {
        let status = if runner_noop {
            RunStatus::Noop
        } else {
            RunStatus::Success
        };
        let vm = self.vm().to_owned();
        let (ctx, plan, run_id) = (self.ctx.clone(), self.plan.clone(), self.run_id.clone());
        let op = self.job.operation.clone();
        let started = self.started;
        let log = self.recorder.finish(status, None);
        let log_path = match log {
            Ok((path, _)) => path,
            Err(e) => {
                let error = format!("cannot write the run log: {e}");
                ctx.bus.publish(
                    Some(&op),
                    Event::BootstrapFailed {
                        vm: vm.clone(),
                        duration_ms: started.elapsed().as_millis() as u64,
                        error: error.clone(),
                    },
                );
                return VmOutcome {
                    run_id: Some(run_id),
                    error: Some(error),
                    ..outcome(
                        &vm,
                        OutcomeStatus::Failed,
                        started.elapsed().as_millis() as u64,
                    )
                };
            }
        };
        let mut stamp_path = None;
        if !runner_noop {
            match write_stamp(&ctx.root, &vm, &plan, &run_id, &log_path) {
                Ok(path) => stamp_path = Some(path),
                Err(e) => {
                    tracing::warn!(vm, error = %e, "bootstrap succeeded but no stamp was written")
                }
            }
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        ctx.bus.publish(
            Some(&op),
            Event::BootstrapCompleted {
                vm: vm.clone(),
                status: if runner_noop {
                    BootstrapStatus::NoOp
                } else {
                    BootstrapStatus::Success
                },
                duration_ms,
                stamp: stamp_path.as_ref().map(|p| p.display().to_string()),
            },
        );
        VmOutcome {
            run_id: Some(run_id),
            log_path: Some(log_path),
            stamp: stamp_path,
            ..outcome(
                &vm,
                if runner_noop {
                    OutcomeStatus::NoOp
                } else {
                    OutcomeStatus::Success
                },
                duration_ms,
            )
        }
    }

    fn fail(self, error: String) -> VmOutcome {
        let vm = self.vm().to_owned();
        let (bus, op, run_id, started) = (
            self.ctx.bus.clone(),
            self.job.operation.clone(),
            self.run_id.clone(),
            self.started,
        );
        let log_path = match self.recorder.finish(RunStatus::Failed, Some(&error)) {
            Ok((path, _)) => Some(path),
            Err(e) => {
                tracing::error!(vm, error = %e, "cannot write the failure log");
                None
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        bus.publish(
            Some(&op),
            Event::BootstrapFailed {
                vm: vm.clone(),
                duration_ms,
                error: error.clone(),
            },
        );
        VmOutcome {
            run_id: Some(run_id),
            log_path,
            error: Some(error),
            ..outcome(&vm, OutcomeStatus::Failed, duration_ms)
        }
    }
}

fn write_stamp(
    root: &StateRoot,
    vm: &str,
    plan: &VmPlan,
    run_id: &str,
    log_path: &std::path::Path,
) -> Result<PathBuf, String> {
    let disk_id =
        stamps::disk_id(root, vm).ok_or("the VM has no disk identity (no pinned host key)")?;
    let stamp = Stamp {
        vm: vm.to_owned(),
        base_hash: plan.base_hash.clone(),
        artifact_hash: plan.artifact_hash.clone().unwrap_or_default(),
        disk_id,
        run_id: run_id.to_owned(),
        log_path: log_path.to_owned(),
        completed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    stamps::write(root, &stamp).map_err(|e| e.to_string())
}
