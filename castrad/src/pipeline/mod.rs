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
pub mod remote;

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
use crate::ssh::{self, Target};
use crate::stamps::{self, Stamp};
use crate::state_root::StateRoot;
use crate::vm::state::{self, State, VmSnapshot};

pub use remote::{ERROR_MARKER, NOOP_MARKER};

/// One VM's part of an operation.
#[derive(Debug, Clone)]
pub struct Job {
    pub vm: Arc<Vm>,
    pub mode: (BootstrapMode, ModeSource),
    /// Warnings that need the whole project (computed by the caller).
    pub extra_warnings: Vec<String>,
    pub operation: String,
    /// The castra.toml the VM comes from (recorded with a launched QEMU).
    pub config: PathBuf,
    /// For a QEMU VM: the host port forwarded to its SSH port, known once it runs.
    pub ssh_port: Option<u16>,
    /// The VM was started by this job: its SSH server is not up yet, so `wait-handshake`
    /// probes for its banner before running ssh (otherwise it tries ssh at once).
    pub booting: bool,
}

/// What the pipeline needs from the daemon.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub bus: EventBus,
    pub root: StateRoot,
    /// Where ssh's control sockets go.
    pub control_dir: PathBuf,
    pub snapshot: Arc<tokio::sync::watch::Sender<VmSnapshot>>,
}

/// What a run leaves behind: its outcome and, after a successful run that reached the guest,
/// its connection and session, still open, for the Vizier health check to take over (a run
/// and the watching after it cost one key exchange and one session start, not two of each).
pub struct Finished {
    pub outcome: VmOutcome,
    pub handover: Option<ssh::Tail>,
}

impl From<VmOutcome> for Finished {
    fn from(outcome: VmOutcome) -> Finished {
        Finished {
            outcome,
            handover: None,
        }
    }
}

/// Runs the whole pipeline for `job`; never panics on guest or IO errors (they become a
/// `Failed` outcome with a log).
pub async fn run(ctx: Ctx, job: Job) -> Finished {
    let started = Instant::now();
    let vm = job.vm.clone();
    let name = vm.name.clone();
    let op = job.operation.clone();
    let publish = |e: Event| {
        ctx.bus.publish(Some(&op), e);
    };

    let plan = {
        let (root, vm, mode) = (ctx.root.clone(), vm.clone(), job.mode.clone());
        let vizier = ctx.snapshot.borrow().vizier.clone();
        let warnings = job.extra_warnings.clone();
        tokio::task::spawn_blocking(move || planner::plan_vm(&root, &vm, mode, vizier, &warnings))
            .await
    };
    let plan = match plan {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            let error = crate::error::one_line(&e);
            return record_failure(&ctx, &job, started, error).into();
        }
        Err(e) => {
            let error = format!("planner panicked: {e}");
            return record_failure(&ctx, &job, started, error).into();
        }
    };
    publish(Event::BootstrapPlanned(crate::planner::planned(
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
            outcome(&name, OutcomeStatus::Skipped, ms(started)).into()
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
            .into()
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

/// Publishes `BootstrapFailed` (its log is already written) and returns the `Failed` outcome.
fn failed(
    bus: &EventBus,
    operation: &str,
    vm: &str,
    started: Instant,
    run_id: String,
    log_path: Option<PathBuf>,
    error: String,
) -> VmOutcome {
    let duration_ms = started.elapsed().as_millis() as u64;
    let event = Event::BootstrapFailed {
        vm: vm.to_owned(),
        duration_ms,
        error: error.clone(),
    };
    bus.publish(Some(operation), event);
    VmOutcome {
        run_id: Some(run_id),
        log_path,
        error: Some(error),
        ..outcome(vm, OutcomeStatus::Failed, duration_ms)
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
    failed(
        &ctx.bus,
        &job.operation,
        &job.vm.name,
        started,
        run_id,
        log_path,
        error,
    )
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
    /// The connection and session, kept after a successful run for the health check.
    kept: Option<ssh::Tail>,
}

/// A failed step: its detail.
type StepResult<T> = Result<T, String>;

/// How long the first ssh attempt on a VM that is not booting may take to reach the server
/// before `wait-handshake` falls back to probing for its banner.
const DIRECT_ATTEMPT: Duration = Duration::from_secs(3);

/// A guest session that ended before ssh authenticated: why (its retry may help).
struct Unreached(ssh::SshError);

/// What `apply` observed.
#[derive(Debug, Default)]
struct Applied {
    /// The script printed `CASTRA_NOOP`.
    noop: bool,
    /// The session, gone on as the agent's watch after `done`.
    watch: Option<ssh::Tail>,
}

/// Where the guest session is: the step running and what has been seen.
#[derive(Debug)]
struct Steps {
    step: Step,
    since: Instant,
    noop: bool,
    error_marker: Option<String>,
    last_stderr: String,
    /// The first failure, already recorded.
    failure: Option<String>,
    /// The script exited non-zero: (status, duration); recorded once the session drained.
    apply_exit: Option<(i32, u64)>,
    /// Lines of the agent's guest log are arriving (between the vizier-log markers).
    in_vizier_log: bool,
    vizier_log: String,
    /// The banner lines after `vizier-handshake 0` (Some while collecting).
    banner: Option<Vec<String>>,
    /// wait-handshake's detail, for when ssh has authenticated.
    handshake_detail: String,
    done: bool,
}

impl Default for Steps {
    fn default() -> Steps {
        Steps {
            step: Step::Transfer,
            since: Instant::now(),
            noop: false,
            error_marker: None,
            last_stderr: String::new(),
            failure: None,
            apply_exit: None,
            in_vizier_log: false,
            vizier_log: String::new(),
            banner: None,
            handshake_detail: String::new(),
            done: false,
        }
    }
}

impl Steps {
    fn next(&mut self, step: Step) {
        self.step = step;
        self.since = Instant::now();
    }
}

/// What to mask in guest output: every env value, and each line of a multi-line value (output
/// is handled line by line). Short values (< 4 bytes) would mask innocent text and are left.
fn redactions(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        for piece in std::iter::once(v.as_str()).chain(v.lines()) {
            let piece = piece.trim();
            if piece.len() >= 4 && !out.iter().any(|(p, _)| p == piece) {
                out.push((piece.to_owned(), format!("[{k} redacted]")));
            }
        }
    }
    out.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    out
}

fn tail(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        line => format!(": {line}"),
    }
}

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
        let redactions = redactions(&env);
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
            kept: None,
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
        self.step_done_ms(step, status, since.elapsed().as_millis() as u64, detail);
    }

    fn step_done_ms(
        &mut self,
        step: Step,
        status: StepStatus,
        duration_ms: u64,
        detail: Option<String>,
    ) {
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

    async fn execute(mut self) -> Finished {
        state::move_to(&self.ctx.snapshot, &self.job.vm.name, State::Bootstrapping);
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
        let after = if result.is_ok() {
            State::Running
        } else {
            State::Failed
        };
        state::move_to(&self.ctx.snapshot, &self.job.vm.name, after);
        if let Some(mut file) = self.output.take() {
            let _ = file.flush();
            let _ = file.sync_all();
        }
        let handover = self.kept.take();
        match result {
            Ok(applied) => Finished {
                outcome: self.succeed(applied.noop),
                handover,
            },
            Err(error) => self.fail(error).into(),
        }
    }

    /// wait-handshake (the guest's SSH server accepts us), then everything else in that
    /// connection's one session. A VM this job has just started is first probed for an SSH
    /// banner (it cannot answer yet, and each probe says what is missing); any other VM gets
    /// ssh at once, and the probes only if that attempt cannot reach the server. A probe costs
    /// the guest's sshd a fork and re-exec, about what a key exchange costs.
    async fn steps(&mut self) -> StepResult<Applied> {
        let vm = self.job.vm.clone();
        let b = &vm.bootstrap;
        let port = self.port()?;

        let t = Instant::now();
        self.set_step(Some(Step::WaitHandshake), None);
        let timeout = Duration::from_secs(b.handshake_timeout_secs);
        let deadline = t + timeout;
        let (bus, op, name, snapshot) = (
            self.ctx.bus.clone(),
            self.job.operation.clone(),
            vm.name.clone(),
            self.ctx.snapshot.clone(),
        );
        let progress = move |waiting_on: &str| {
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
        };
        let mut target = Target::for_vm(
            &vm,
            port,
            self.ctx.root.vm(&vm.name).known_hosts,
            ssh::control_path(&self.ctx.control_dir, &self.run_id),
            DIRECT_ATTEMPT.min(timeout),
        );
        let (mut probe, mut banner) = (self.job.booting, None);
        loop {
            if probe {
                let mut report = progress.clone();
                let left = deadline.saturating_duration_since(Instant::now());
                let found = handshake::wait(&target.host, port, left, &mut report).await;
                match found {
                    Ok(line) => banner = Some(line),
                    Err(e) => return self.checked(Step::WaitHandshake, t, Err(e)),
                }
                target.connect_timeout = Duration::from_secs(b.handshake_timeout_secs.clamp(1, 30));
            }
            progress(&format!("authentication as {}", target.display()));
            match self
                .remote_steps(target.clone(), t, banner.as_deref())
                .await
            {
                Err(Unreached(e)) if !probe && e.unreached() && Instant::now() < deadline => {
                    progress(&e.to_string());
                    probe = true; // then try again
                }
                Err(Unreached(e)) => {
                    return self.checked(Step::WaitHandshake, t, Err(e.to_string()));
                }
                Ok(mut result) => {
                    if let Ok(applied) = &mut result {
                        self.kept = applied.watch.take();
                    }
                    return result;
                }
            }
        }
    }

    /// The guest session: ssh authenticates (the end of wait-handshake, begun at `since`),
    /// then the Vizier steps, connect, transfer, apply and verify, each ended by a marker.
    /// `Err` when ssh ended without authenticating (nothing was recorded yet).
    async fn remote_steps(
        &mut self,
        target: Target,
        since: Instant,
        banner: Option<&str>,
    ) -> Result<StepResult<Applied>, Unreached> {
        let vm = self.job.vm.clone();
        let b = &vm.bootstrap;
        let who = target.display();
        let script = match b.script.clone() {
            Some(script) => script,
            None => return Ok(Err("no script configured".into())),
        };
        let program = match remote::program(&script) {
            Ok(program) => program,
            Err(e) => return Ok(Err(e)),
        };
        let env = self.env.clone();
        let session = remote::Session {
            remote_dir: &b.remote_dir,
            script: &script,
            payload: b.payload.as_deref(),
            program: program.clone(),
            env: &env,
            verify_command: b.verify_command.as_deref(),
            verify_path: b.verify_path.as_deref(),
            vizier_dir: b.vizier_dir.as_deref(),
        };
        let mut st = Steps {
            step: Step::WaitHandshake,
            since,
            handshake_detail: match banner {
                Some(line) => format!("{line}; authenticated as {who}"),
                None => format!("authenticated as {who}"),
            },
            ..Steps::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ended = {
            let run = remote::session(target.clone(), &session, tx);
            tokio::pin!(run);
            loop {
                tokio::select! {
                    biased;
                    Some(note) = rx.recv() => self.on_note(note, &mut st),
                    ended = &mut run => break ended,
                }
            }
        };
        while let Ok(note) = rx.try_recv() {
            self.on_note(note, &mut st);
        }
        if st.step == Step::WaitHandshake {
            return match ended {
                Ok(remote::Ended {
                    unauthenticated: Some(stderr),
                    ..
                }) => Err(Unreached(ssh::classify(&target, &stderr))),
                Ok(_) => Ok(self.checked(
                    Step::WaitHandshake,
                    since,
                    Err("ssh ended without a word".into()),
                )),
                Err(e) => Ok(self.checked(Step::WaitHandshake, since, Err(e))),
            };
        }
        self.mirror_vizier_log(&st.vizier_log);
        if let Some((rc, duration_ms)) = st.apply_exit {
            let e = format!(
                "{} exited with status {rc}{}",
                program.join(" "),
                tail(&st.last_stderr)
            );
            self.step_done_ms(
                Step::Apply,
                StepStatus::Failed,
                duration_ms,
                Some(e.clone()),
            );
            return Ok(Err(format!("apply: {e}")));
        }
        if let Some(failure) = st.failure {
            return Ok(Err(failure));
        }
        let ended = match ended {
            Ok(ended) => ended,
            Err(e) => return Ok(self.checked(st.step, st.since, Err(e))),
        };
        if !st.done {
            let why = if let Some(e) = ended.send_error {
                e
            } else if ended.status.and_then(|s| s.code()) == Some(255) {
                format!("the SSH connection failed{}", tail(&ended.last_stderr))
            } else {
                let how = ended.status.map(ssh::exit).unwrap_or_default();
                format!("the guest session {how}{}", tail(&ended.last_stderr))
            };
            return Ok(self.checked(st.step, st.since, Err(why)));
        }
        if b.verify_command.is_none() && b.verify_path.is_none() {
            let t = Instant::now();
            self.step_done(
                Step::Verify,
                StepStatus::Skipped,
                t,
                Some("nothing to verify".into()),
            );
        } else {
            self.step_done(Step::Verify, StepStatus::Success, st.since, None);
        }
        Ok(Ok(Applied {
            noop: st.noop,
            watch: ended.tail,
        }))
    }

    /// Where the guest keeps the agent's log, for messages.
    fn vizier_log_hint(&self) -> String {
        crate::vizier::guest_log_hint(self.job.vm.bootstrap.vizier_dir.as_deref())
    }

    /// Advances the step machine on one note from the guest session.
    fn on_note(&mut self, note: remote::Note, st: &mut Steps) {
        let b = self.job.vm.bootstrap.clone();
        match note {
            remote::Note::Authenticated => {
                let detail = std::mem::take(&mut st.handshake_detail);
                self.advance(st, Step::WaitHandshake, Some(detail), Step::VizierInstall);
            }
            remote::Note::Line {
                stream: OutputStream::Stdout,
                line,
            } if st.in_vizier_log => {
                st.vizier_log.push_str(&line);
                st.vizier_log.push('\n');
            }
            remote::Note::Line {
                stream: OutputStream::Stdout,
                line,
            } if st.banner.is_some() => {
                let banner = st.banner.as_mut().expect("checked");
                banner.push(line);
                if banner.len() == 2 {
                    let lines = st.banner.take().unwrap_or_default();
                    let result = crate::vizier::parse_banner(&lines[0], &lines[1]).and_then(|b| {
                        if b.version == crate::vizier::VERSION {
                            Ok(b)
                        } else {
                            Err(format!(
                                "the agent answering is version {}, not {}",
                                b.version,
                                crate::vizier::VERSION
                            ))
                        }
                    });
                    match result {
                        Ok(banner) => {
                            let detail = format!("vizier {} (pid {})", banner.version, banner.pid);
                            self.ctx.snapshot.send_modify(|s| {
                                s.vizier = Some(crate::vizier::VizierSeen {
                                    version: banner.version.clone(),
                                    pid: banner.pid,
                                    healthy: true,
                                });
                            });
                            self.advance(st, Step::VizierHandshake, Some(detail), Step::Connect);
                        }
                        Err(e) => {
                            let e = format!(
                                "{e}; see the guest log {} (mirrored to {})",
                                self.vizier_log_hint(),
                                self.ctx.root.vizier_log(&self.job.vm.name).display()
                            );
                            st.failure = self
                                .checked::<()>(Step::VizierHandshake, st.since, Err(e))
                                .err();
                        }
                    }
                }
            }
            remote::Note::Line { stream, line } => {
                let trimmed = line.trim();
                if stream == OutputStream::Stderr && !trimmed.is_empty() {
                    st.last_stderr = self.redact(trimmed);
                }
                if st.step == Step::Apply {
                    if trimmed == NOOP_MARKER {
                        st.noop = true;
                    } else if let Some(reason) = trimmed.strip_prefix(ERROR_MARKER) {
                        st.error_marker
                            .get_or_insert_with(|| reason.trim().to_owned());
                    }
                }
                self.output_line(st.step, stream, &line);
            }
            remote::Note::Marker { .. } if st.failure.is_some() => {}
            remote::Note::Marker { name, code, rest } => match (name.as_str(), code) {
                ("vizier-install", Some(0)) => {
                    self.advance(st, Step::VizierInstall, Some(rest), Step::VizierEnable);
                }
                ("vizier-install", _) => {
                    let dir = b
                        .vizier_dir
                        .clone()
                        .unwrap_or_else(|| "/opt/castra/vizier".into());
                    let e = format!(
                        "{rest}: bootstrap as a user who can write {dir} (root), or set \
                         [vms.bootstrap] vizier_dir to a writable directory"
                    );
                    st.failure = self
                        .checked::<()>(Step::VizierInstall, st.since, Err(e))
                        .err();
                }
                ("vizier-enable", Some(0)) => {
                    self.advance(st, Step::VizierEnable, Some(rest), Step::VizierHandshake);
                }
                ("vizier-log", _) => st.in_vizier_log = true,
                ("vizier-log-end", _) => st.in_vizier_log = false,
                ("vizier-handshake", Some(0)) => st.banner = Some(Vec::new()),
                ("vizier-handshake", _) => {
                    let e = format!(
                        "{rest}: the agent did not start; see the guest log {} (mirrored to {})",
                        self.vizier_log_hint(),
                        self.ctx.root.vizier_log(&self.job.vm.name).display()
                    );
                    st.failure = self
                        .checked::<()>(Step::VizierHandshake, st.since, Err(e))
                        .err();
                }
                ("connect", _) => {
                    let detail = format!("bootstrap session in {}", b.remote_dir);
                    self.advance(st, Step::Connect, Some(detail), Step::Transfer);
                }
                ("transfer", _) => {
                    let bytes = self.plan.payload_bytes.unwrap_or(0);
                    let detail = format!("script and {bytes} payload bytes to {}", b.remote_dir);
                    self.advance(st, Step::Transfer, Some(detail), Step::Apply);
                }
                ("apply", Some(rc)) => {
                    if rc != 0 && st.error_marker.is_none() {
                        // Its last stderr line may still be in the other pipe: decide once the
                        // session has drained, keeping the duration measured now.
                        st.apply_exit = Some((rc, st.since.elapsed().as_millis() as u64));
                        st.failure = Some(String::new());
                        return;
                    }
                    let result = match st.error_marker.clone() {
                        Some(reason) => Err(format!("the script reported {ERROR_MARKER} {reason}")),
                        None => Ok((
                            (),
                            st.noop.then(|| format!("the script printed {NOOP_MARKER}")),
                        )),
                    };
                    if let Err(e) = self.checked(Step::Apply, st.since, result) {
                        st.failure = Some(e);
                        return;
                    }
                    self.enter(st, Step::Verify);
                }
                ("verify-command", Some(rc)) if rc != 0 => {
                    let e = format!("verify_command exited with status {rc}");
                    st.failure = self.checked::<()>(Step::Verify, st.since, Err(e)).err();
                }
                ("verify-path", Some(1)) => {
                    let path = b.verify_path.clone().unwrap_or_default();
                    let e = format!("verify_path {path} does not exist in {}", b.remote_dir);
                    st.failure = self.checked::<()>(Step::Verify, st.since, Err(e)).err();
                }
                ("done", _) => st.done = true,
                _ => {}
            },
        }
    }

    /// Records `done` as a success and starts `next`.
    fn advance(&mut self, st: &mut Steps, done: Step, detail: Option<String>, next: Step) {
        self.step_done(done, StepStatus::Success, st.since, detail);
        self.enter(st, next);
    }

    /// Starts `step`: its clock, and the snapshot `status` reads.
    fn enter(&self, st: &mut Steps, step: Step) {
        st.next(step);
        self.set_step(Some(step), None);
    }

    /// Keeps the last of the agent's guest log in the state root (`vizier/<vm>/service.log`).
    fn mirror_vizier_log(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let path = self.ctx.root.vizier_log(&self.job.vm.name);
        let written = crate::state_root::ensure_dir(path.parent().expect("vizier dir"))
            .and_then(|()| crate::fsutil::write_atomic(&path, text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(vm = self.job.vm.name, error = %e, "cannot mirror the Vizier log");
        }
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

    /// The port the guest's SSH server answers on.
    fn port(&self) -> StepResult<u16> {
        match (self.job.vm.backend, self.job.ssh_port.or(self.job.vm.ssh.port)) {
            (_, Some(port)) => Ok(port),
            (crate::config::Backend::External, None) => Ok(22),
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
                return failed(&ctx.bus, &op, &vm, started, run_id, None, error);
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
        failed(&bus, &op, &vm, started, run_id, log_path, error)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_whole_values_and_each_line_of_multiline_ones() {
        let env = BTreeMap::from([
            ("TOKEN".to_owned(), "s3cr3t-value".to_owned()),
            ("MULTI".to_owned(), "first line\nsecond".to_owned()),
            ("TINY".to_owned(), "on".to_owned()),
        ]);
        let r = redactions(&env);
        let apply = |line: &str| {
            let mut out = line.to_owned();
            for (v, mask) in &r {
                out = out.replace(v.as_str(), mask);
            }
            out
        };
        assert_eq!(apply("token=s3cr3t-value!"), "token=[TOKEN redacted]!");
        assert_eq!(apply("got first line"), "got [MULTI redacted]");
        assert_eq!(apply("and second"), "and [MULTI redacted]");
        assert_eq!(
            apply("turn it on"),
            "turn it on",
            "short values are not masked"
        );
    }
}
