//! The step machine of an executing run: `wait-handshake` (probe the banner of a VM that is
//! booting, otherwise ssh at once), then everything else in that connection's one session,
//! advanced by the driver's [`Marker`]s: the Vizier steps, connect, transfer, apply, verify.
//!
//! It decides each step's outcome from what the session reports, in the order reported; what
//! a step failed on is recorded once (the first failure wins, later markers are ignored).

use std::collections::BTreeMap;

use castra_api::{
    BootstrapStepKind as Step, BootstrapStepStatus as StepStatus, BootstrapTrigger, Event,
    OutputStream,
};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use super::driver::{self, ERROR_MARKER, Marker, NOOP_MARKER, Session};
use super::record::{Record, RunError, Subject};
use super::remote::{Ended, Note};
use super::{Ctx, Finished, Job};
use crate::planner::VmPlan;
use crate::ssh::{self, Target};
use crate::vm::state::{self, State};

/// How long the first ssh attempt on a VM that is not booting may take to reach the server
/// before `wait-handshake` falls back to probing for its banner.
const DIRECT_ATTEMPT: Duration = Duration::from_secs(3);

/// Where cloud-init writes what it did, in the guest.
const CLOUD_INIT_LOGS: &str = "/var/log/cloud-init.log, /var/log/cloud-init-output.log";

/// The most of the agent's guest log a run keeps (to mirror it in the state root).
const VIZIER_LOG_CAP: usize = 64 << 10;

/// How long to wait before probing again after ssh failed to get in past a banner.
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A guest session that ended before ssh authenticated: why (its retry may help).
struct Unreached(ssh::SshError);

/// What `apply` observed.
#[derive(Default)]
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
    failure: Option<RunError>,
    /// The driver's pid (it leads the guest side's process group), once it said.
    guest_pid: Option<u32>,
    /// Opened (set true) once the stamp is gone: the driver may then change the guest.
    may_touch: Option<watch::Sender<bool>>,
    /// How the script was started, for messages.
    program: String,
    /// Lines on stderr are the script's (between the driver's stderr markers), whichever
    /// step stdout has reached.
    script_stderr: bool,
    /// Lines of the agent's guest log are arriving (between the vizier-log markers).
    in_vizier_log: bool,
    vizier_log: String,
    /// The banner lines after `vizier-handshake 0` (Some while collecting).
    banner: Option<Vec<String>>,
    /// wait-handshake's detail, for when ssh has authenticated.
    handshake_detail: String,
    /// ssh has authenticated (wait-handshake may still wait for cloud-init).
    authenticated: bool,
    /// wait-handshake ends only at the driver's `cloud-init` marker.
    cloud_init_wait: bool,
    /// The session does the guest setup: `guest-setup` follows wait-handshake.
    setup: bool,
    done: bool,
}

impl Steps {
    fn new(since: Instant, handshake_detail: String) -> Steps {
        Steps {
            step: Step::WaitHandshake,
            since,
            noop: false,
            error_marker: None,
            last_stderr: String::new(),
            failure: None,
            guest_pid: None,
            may_touch: None,
            program: String::new(),
            script_stderr: false,
            in_vizier_log: false,
            vizier_log: String::new(),
            banner: None,
            handshake_detail,
            authenticated: false,
            cloud_init_wait: false,
            setup: false,
            done: false,
        }
    }
}

/// `: <line>`, or nothing for an empty line.
fn tail(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        line => format!(": {line}"),
    }
}

/// An executing run.
pub struct Run {
    ctx: Ctx,
    job: Job,
    plan: VmPlan,
    record: Record,
    /// The script's environment: the configured env and castrad's `CASTRA_*`.
    env: BTreeMap<String, String>,
    /// The guest setup this boot still needs (`guest_setup.rs`), done in the session.
    setup: Option<super::guest_setup::Pending>,
}

impl Run {
    pub fn new(ctx: Ctx, job: Job, plan: VmPlan, started: Instant) -> Run {
        let b = &job.vm.bootstrap;
        // Values that may be secrets; CASTRA_* below are not.
        let mut env = b.env.clone();
        let record = Record::new(
            Subject {
                bus: &ctx.bus,
                root: &ctx.root,
                snapshot: &ctx.snapshot,
                vm: &job.vm.name,
                operation: &job.operation,
                limits: crate::runlog::Limits::of(b),
            },
            &plan,
            &env,
            started,
        );
        let payload_dir = format!("{}/payload", b.remote_dir.trim_end_matches('/'));
        env.insert("CASTRA_VM".into(), job.vm.name.clone());
        env.insert("CASTRA_RUN_ID".into(), record.run_id.clone());
        env.insert("CASTRA_PAYLOAD_DIR".into(), payload_dir);
        env.insert("CASTRA_BASE_HASH".into(), plan.base_hash.clone());
        env.insert(
            "CASTRA_ARTIFACT_HASH".into(),
            plan.artifact_hash.clone().unwrap_or_default(),
        );
        Run {
            ctx,
            job,
            plan,
            record,
            env,
            setup: None,
        }
    }

    /// The run does `pending`, the guest setup, first in its session.
    pub fn with_setup(mut self, pending: Option<super::guest_setup::Pending>) -> Run {
        self.setup = pending;
        self
    }

    fn vm(&self) -> &str {
        &self.job.vm.name
    }

    pub async fn execute(mut self) -> Finished {
        state::move_to(&self.ctx.snapshot, self.vm(), State::Bootstrapping);
        self.record.publish(Event::BootstrapStarted {
            vm: self.vm().to_owned(),
            base_hash: self.plan.base_hash.clone(),
            artifact_hash: self.plan.artifact_hash.clone().unwrap_or_default(),
            trigger: match self.plan.trigger {
                Some(crate::planner::Trigger::Always) => BootstrapTrigger::Always,
                _ => BootstrapTrigger::Auto,
            },
        });
        let result = self.steps().await;
        self.record.set_step(None, None);
        let after = if result.is_ok() {
            State::Running
        } else {
            State::Failed
        };
        state::move_to(&self.ctx.snapshot, self.vm(), after);
        match result {
            Ok(applied) => Finished {
                outcome: self.record.succeed(&self.plan, applied.noop),
                handover: applied.watch,
            },
            Err(error) => self.record.fail(&error).into(),
        }
    }

    /// Where the guest's SSH server answers.
    fn endpoint(&self) -> Result<ssh::Endpoint, RunError> {
        self.job.endpoint.clone().ok_or(RunError::NoPort)
    }

    /// wait-handshake (the guest's SSH server accepts us), then everything else in that
    /// connection's one session. A VM this job has just started is first probed for an SSH
    /// banner (it cannot answer yet, and each probe says what is missing); any other VM gets
    /// ssh at once, and the probes only if that attempt cannot reach the server. A probe costs
    /// the guest's sshd a fork and re-exec, about what a key exchange costs.
    async fn steps(&mut self) -> Result<Applied, RunError> {
        let vm = self.job.vm.clone();
        let b = &vm.bootstrap;
        let endpoint = self.endpoint()?;

        let t = Instant::now();
        self.record.set_step(Some(Step::WaitHandshake), None);
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
            &endpoint,
            &self.ctx.root,
            ssh::control_path(&self.ctx.control_dir, &self.record.run_id),
            DIRECT_ATTEMPT.min(timeout),
        );
        let (mut probe, mut banner) = (self.job.booting && target.proxy.is_none(), None);
        loop {
            if probe {
                let mut report = progress.clone();
                let left = deadline.saturating_duration_since(Instant::now());
                let remote = self.ctx.remote.clone();
                let port = target.port;
                let probe = remote.probe(&target.host, port, left, &mut report);
                let cancel = self.job.cancel.clone();
                let probed = tokio::select! {
                    probed = probe => probed,
                    reason = cancel.cancelled() => {
                        return self.record.checked(Step::WaitHandshake, t, Err(reason));
                    }
                };
                match probed {
                    Ok(line) => banner = Some(line),
                    Err(mut e) => {
                        // The whole wait, not only this probe's part of it.
                        e.waited = t.elapsed().as_secs_f64();
                        let e = e.to_string();
                        return self.record.checked(Step::WaitHandshake, t, Err(e));
                    }
                }
                target.connect_timeout = Duration::from_secs(b.handshake_timeout_secs.clamp(1, 30));
            }
            progress(&format!("authentication as {}", target.display()));
            match self
                .session(target.clone(), t, deadline, banner.as_deref())
                .await
            {
                // Not in yet, and not refused: the server is not (or no longer) up. A booting
                // guest's sshd can close connections after its banner (cloud-init restarts it
                // with the host keys it was given): probe for it again, a moment later.
                Err(Unreached(e)) if e.unreached() && Instant::now() < deadline => {
                    progress(&e.to_string());
                    if probe || target.proxy.is_some() {
                        let pause =
                            RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
                        tokio::time::sleep(pause).await;
                    }
                    probe = target.proxy.is_none(); // then try again
                }
                Err(Unreached(e)) => {
                    return self
                        .record
                        .checked(Step::WaitHandshake, t, Err(e.to_string()));
                }
                Ok(result) => return result,
            }
        }
    }

    /// The guest session: ssh authenticates (the end of wait-handshake, begun at `since`),
    /// then the Vizier steps, connect, transfer, apply and verify, each ended by a marker.
    /// `Err` when ssh ended without authenticating (nothing was recorded yet).
    async fn session(
        &mut self,
        target: Target,
        since: Instant,
        deadline: Instant,
        banner: Option<&str>,
    ) -> Result<Result<Applied, RunError>, Unreached> {
        let vm = self.job.vm.clone();
        let b = &vm.bootstrap;
        let who = target.display();
        let Some(script) = b.script.clone() else {
            return Ok(Err(RunError::NoScript));
        };
        let program = match driver::program(&script) {
            Ok(program) => program,
            Err(e) => return Ok(Err(e.into())),
        };
        let env = self.env.clone();
        let st_touch = watch::Sender::new(false);
        let session = Session {
            remote_dir: &b.remote_dir,
            script: &script,
            payload: b.payload.as_deref(),
            program: program.clone(),
            env: &env,
            verify_command: b.verify_command.as_deref(),
            verify_path: b.verify_path.as_deref(),
            vizier_dir: b.vizier_dir.as_deref(),
            cloud_init_wait: vm.cloud_init.enabled,
            // A healthy agent of this version is found running: its supervisor is set.
            supervisor_setup: self.plan.vizier != crate::planner::VizierExpect::Healthy,
            setup: self.setup.as_ref().map(|p| p.setup.clone()),
            may_touch: st_touch.subscribe(),
        };
        let handshake_detail = match banner {
            Some(line) => format!("{line}; authenticated as {who}"),
            None => format!("authenticated as {who}"),
        };
        let mut st = Steps::new(since, handshake_detail);
        st.cloud_init_wait = session.cloud_init_wait;
        st.setup = session.setup.is_some();
        st.may_touch = Some(st_touch);
        st.program = program.join(" ");
        let (tx, mut rx) = tokio::sync::mpsc::channel(super::remote::NOTES_BUFFER);
        let remote = self.ctx.remote.clone();
        // A cancel or a step's timeout: the step it cut short and why.
        let mut abort: Option<(Step, String)> = None;
        let cancel = self.job.cancel.clone();
        let ended = {
            let run = remote.session(target.clone(), &session, tx);
            tokio::pin!(run);
            loop {
                // The handshake's deadline also covers cloud-init, once ssh got in.
                let waiting = st.authenticated && st.step == Step::WaitHandshake;
                let limit = self.step_limit(st.step);
                let step_deadline = limit.map(|secs| st.since + Duration::from_secs(secs));
                tokio::select! {
                    biased;
                    reason = cancel.cancelled() => {
                        abort = Some((st.step, reason));
                        break None;
                    }
                    _ = sleep_until_some(step_deadline), if st.failure.is_none() => {
                        let secs = limit.unwrap_or_default();
                        let e = match st.step {
                            Step::Apply => format!("timed out after {secs}s (apply_timeout_secs)"),
                            Step::Verify => format!("timed out after {secs}s (verify_timeout_secs)"),
                            _ => format!("timed out after {secs}s"),
                        };
                        abort = Some((st.step, e));
                        break None;
                    }
                    Some(note) = rx.recv() => {
                        self.feed(note, &mut st);
                        if st.failure.is_some() && st.may_touch.as_ref().is_some_and(|t| !*t.borrow()) {
                            break None; // never let in: dropping the session ends it
                        }
                    }
                    ended = &mut run => break Some(ended),
                    _ = tokio::time::sleep_until(deadline), if waiting && st.failure.is_none() => {
                        let secs = vm.bootstrap.handshake_timeout_secs;
                        let e = format!(
                            "timed out after {secs}s waiting for cloud-init to finish in the guest \
                             (its logs there: {CLOUD_INIT_LOGS})"
                        );
                        self.fail_step(&mut st, Step::WaitHandshake, e);
                        break None; // dropping the session ends it
                    }
                }
            }
        };
        while let Ok(note) = rx.try_recv() {
            self.feed(note, &mut st);
        }
        if let Some((step, why)) = abort {
            let stopped = match st.guest_pid {
                None => String::new(),
                Some(pid) => match self.ctx.remote.stop(target.clone(), pid).await {
                    Ok(()) => format!("; its processes in the guest were stopped (group {pid})"),
                    Err(e) => format!("; stopping its processes in the guest failed: {e}"),
                },
            };
            if st.failure.is_none() {
                self.fail_step(&mut st, step, format!("{why}{stopped}"));
            }
        }
        let Some(ended) = ended else {
            return Ok(Err(st.failure.expect("the failure was recorded")));
        };
        if !st.authenticated {
            return match ended {
                Ok(Ended {
                    unauthenticated: Some(stderr),
                    ..
                }) => Err(Unreached(ssh::classify(&target, &stderr))),
                Ok(_) => Ok(self.record.checked(
                    Step::WaitHandshake,
                    since,
                    Err("ssh ended without a word".into()),
                )),
                Err(e) => {
                    let e = crate::error::one_line(&e);
                    Ok(self.record.checked(Step::WaitHandshake, since, Err(e)))
                }
            };
        }
        self.record.mirror_vizier_log(&st.vizier_log);
        if let Some(failure) = st.failure {
            return Ok(Err(failure));
        }
        let ended = match ended {
            Ok(ended) => ended,
            Err(e) => {
                let e = crate::error::one_line(&e);
                return Ok(self.record.checked(st.step, st.since, Err(e)));
            }
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
            return Ok(self.record.checked(st.step, st.since, Err(why)));
        }
        if b.verify_command.is_none() && b.verify_path.is_none() {
            let t = Instant::now();
            self.record.step_done(
                Step::Verify,
                StepStatus::Skipped,
                t,
                Some("nothing to verify".into()),
            );
        } else {
            self.record
                .step_done(Step::Verify, StepStatus::Success, st.since, None);
        }
        Ok(Ok(Applied {
            noop: st.noop,
            watch: ended.tail,
        }))
    }

    /// Advances the step machine on one note from the guest session.
    fn feed(&mut self, note: Note, st: &mut Steps) {
        match note {
            Note::Authenticated => {
                st.authenticated = true;
                // The guest presented the pinned key: a seed's pin is confirmed (a different
                // key from now on is a changed machine, not an ignored seed).
                super::confirm_pin(&self.ctx.root, self.vm());
                // From here the guest may change: the stamp no longer proves its state.
                if let Err(e) = crate::stamps::invalidate(&self.ctx.root, self.vm()) {
                    let path = self.ctx.root.stamp(self.vm());
                    let e = format!(
                        "cannot remove the stamp {} before the run: {e}",
                        path.display()
                    );
                    self.fail_step(st, Step::WaitHandshake, e);
                    return;
                }
                if let Some(touch) = &st.may_touch {
                    touch.send_replace(true);
                }
                if st.cloud_init_wait {
                    let waiting_on = "cloud-init to finish in the guest".to_owned();
                    self.record
                        .set_step(Some(Step::WaitHandshake), Some(waiting_on.clone()));
                    self.record.publish(Event::BootstrapProgress {
                        vm: self.vm().to_owned(),
                        step: Step::WaitHandshake,
                        waiting_on,
                        elapsed_ms: st.since.elapsed().as_millis() as u64,
                    });
                    return;
                }
                let detail = std::mem::take(&mut st.handshake_detail);
                let next = match st.setup {
                    true => Step::GuestSetup,
                    false => Step::VizierInstall,
                };
                self.advance(st, Step::WaitHandshake, Some(detail), next);
            }
            Note::Line {
                stream: OutputStream::Stdout,
                line,
            } if st.in_vizier_log => {
                // The driver sends its last 16 KiB; a guest that sends more is cut short.
                if st.vizier_log.len() < VIZIER_LOG_CAP {
                    st.vizier_log.push_str(&line);
                    st.vizier_log.push('\n');
                }
            }
            Note::Line {
                stream: OutputStream::Stdout,
                line,
            } if st.banner.is_some() => self.on_banner_line(line, st),
            Note::Line { stream, line } => self.on_output(stream, &line, st),
            Note::Marker(Marker::ScriptStarts) => st.script_stderr = true,
            Note::Marker(Marker::ScriptEnds) => st.script_stderr = false,
            Note::Marker(_) if st.failure.is_some() => {}
            Note::Marker(marker) => self.on_marker(marker, st),
        }
    }

    /// A line of the script's (or the session's) output. The script's own lines are those on
    /// stdout while apply runs, and those on stderr between the driver's stderr markers: the
    /// streams arrive independently, so stderr cannot go by stdout's step.
    fn on_output(&mut self, stream: OutputStream, line: &str, st: &mut Steps) {
        let trimmed = line.trim();
        let from_script = match stream {
            OutputStream::Stdout => st.step == Step::Apply,
            OutputStream::Stderr => st.script_stderr,
        };
        if stream == OutputStream::Stderr && !trimmed.is_empty() {
            // A piece of a line split at the reader's cap is redacted only once joined (see
            // `Record::output_line`): it never goes into a message.
            let split = trimmed.ends_with(crate::ssh::SPLIT_SUFFIX.trim())
                || trimmed.starts_with(crate::ssh::CONTINUED_PREFIX.trim());
            st.last_stderr = match split {
                false => self.record.redact(trimmed),
                true => "(a line longer than the 64 KiB cap; see the output log)".to_owned(),
            };
        }
        if from_script {
            if trimmed == NOOP_MARKER {
                st.noop = true;
            } else if let Some(reason) = trimmed.strip_prefix(ERROR_MARKER) {
                st.error_marker
                    .get_or_insert_with(|| reason.trim().to_owned());
            }
        }
        let step = if from_script { Step::Apply } else { st.step };
        self.record.output_line(step, stream, line);
    }

    /// One of the two banner lines that follow `vizier-handshake 0`.
    fn on_banner_line(&mut self, line: String, st: &mut Steps) {
        let banner = st.banner.as_mut().expect("collecting the banner");
        banner.push(line);
        if banner.len() < 2 {
            return;
        }
        let lines = st.banner.take().unwrap_or_default();
        match crate::vizier::parse_own_banner(&lines[0], &lines[1]) {
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
                    self.record.vizier_log_path().display()
                );
                self.fail_step(st, Step::VizierHandshake, e);
            }
        }
    }

    fn on_marker(&mut self, marker: Marker, st: &mut Steps) {
        let b = self.job.vm.bootstrap.clone();
        match marker {
            Marker::CloudInit { ok: true, detail } => {
                let detail = format!("{}; cloud-init: {detail}", st.handshake_detail);
                self.advance(st, Step::WaitHandshake, Some(detail), Step::VizierInstall);
            }
            Marker::CloudInit { ok: false, detail } => {
                let e = format!(
                    "cloud-init failed in the guest: {detail} (its logs there: {CLOUD_INIT_LOGS})"
                );
                self.fail_step(st, Step::WaitHandshake, e);
            }
            Marker::GuestSetup { ok: true, detail } => {
                if let Some(pending) = &self.setup {
                    super::guest_setup::done(&self.ctx.root, &self.job.vm.name, pending);
                }
                self.advance(st, Step::GuestSetup, Some(detail), Step::VizierInstall);
            }
            Marker::GuestSetup { ok: false, detail } => {
                self.fail_step(st, Step::GuestSetup, super::guest_setup::failure(&detail));
            }
            Marker::VizierInstall { ok: true, detail } => {
                self.advance(st, Step::VizierInstall, Some(detail), Step::VizierEnable);
            }
            Marker::VizierInstall { ok: false, detail } => {
                let dir = crate::vizier::guest_dir_hint(b.vizier_dir.as_deref());
                let e = format!(
                    "{detail}: bootstrap as a user who can write {dir} (root), or set \
                     [vms.bootstrap] vizier_dir to a writable directory"
                );
                self.fail_step(st, Step::VizierInstall, e);
            }
            Marker::VizierEnable { ok: true, detail } => {
                self.advance(st, Step::VizierEnable, Some(detail), Step::VizierHandshake);
            }
            Marker::VizierEnable { ok: false, detail } => {
                self.fail_step(st, Step::VizierEnable, detail);
            }
            Marker::VizierLog => st.in_vizier_log = true,
            Marker::VizierLogEnd => st.in_vizier_log = false,
            Marker::VizierHandshake { ok: true, .. } => st.banner = Some(Vec::new()),
            Marker::VizierHandshake { ok: false, detail } => {
                let e = format!(
                    "{detail}: the agent did not start; see the guest log {} (mirrored to {})",
                    self.vizier_log_hint(),
                    self.record.vizier_log_path().display()
                );
                self.fail_step(st, Step::VizierHandshake, e);
            }
            Marker::Pid(pid) => st.guest_pid = Some(pid),
            Marker::Unsafe { detail } => {
                let detail = match detail.as_str() {
                    "" => "a directory it would use failed the ownership check".to_owned(),
                    _ => detail,
                };
                let e = format!(
                    "{detail}: another account of the guest could change what runs there; it \
                     and its parents must be owned by the bootstrap user or root, not be \
                     symlinks, and not be writable by others (a root-owned sticky parent such \
                     as /var/tmp aside); fix that, or choose another remote_dir or vizier_dir"
                );
                self.fail_step(st, st.step, e);
            }
            Marker::Uncheckable { detail } => {
                let e = format!(
                    "cannot check who owns remote_dir ({}) or the Vizier directory and their \
                     parents in the guest: {detail}; castrad runs nothing there without that \
                     check, which needs a `stat` with `-c` (GNU coreutils, or busybox built \
                     with it) in the guest's PATH",
                    b.remote_dir
                );
                self.fail_step(st, st.step, e);
            }
            Marker::Connect { ok: true, .. } => {
                let detail = format!("bootstrap session in {}", b.remote_dir);
                self.advance(st, Step::Connect, Some(detail), Step::Transfer);
            }
            Marker::Connect { ok: false, detail } => {
                let e = format!(
                    "another run (pid {detail}) still holds {} after 10 s: a run castrad lost \
                     track of (was castrad killed?) may still be going; wait for it, or stop it \
                     in the guest",
                    b.remote_dir
                );
                self.fail_step(st, Step::Connect, e);
            }
            Marker::Transfer => {
                let bytes = self.plan.payload_bytes.unwrap_or(0);
                let detail = format!("script and {bytes} payload bytes to {}", b.remote_dir);
                self.advance(st, Step::Transfer, Some(detail), Step::Apply);
            }
            Marker::ScriptStarts | Marker::ScriptEnds => {} // in feed
            Marker::Apply { status } => self.on_apply(status, st),
            Marker::VerifyCommand { status } if status != 0 => {
                let e = format!("verify_command exited with status {status}");
                self.fail_step(st, Step::Verify, e);
            }
            Marker::VerifyCommand { .. } => {}
            Marker::VerifyPath { found: false } => {
                let path = b.verify_path.clone().unwrap_or_default();
                let e = format!("verify_path {path} does not exist in {}", b.remote_dir);
                self.fail_step(st, Step::Verify, e);
            }
            Marker::VerifyPath { found: true } => {}
            Marker::Done => st.done = true,
        }
    }

    /// The script's exit status, noted only once its stderr has been read (see
    /// `Marker::ScriptEnds`): a non-zero status fails apply with the script's last stderr
    /// line; a zero one with `CASTRA_ERROR:` printed fails it with the script's reason.
    fn on_apply(&mut self, status: i32, st: &mut Steps) {
        if status != 0 {
            let e = format!(
                "{} exited with status {status}{}",
                st.program,
                tail(&st.last_stderr)
            );
            self.fail_step(st, Step::Apply, e);
            return;
        }
        match st.error_marker.clone() {
            Some(reason) => {
                let e = format!("the script reported {ERROR_MARKER} {reason}");
                self.fail_step(st, Step::Apply, e);
            }
            None => {
                let detail = st.noop.then(|| format!("the script printed {NOOP_MARKER}"));
                self.record
                    .step_done(Step::Apply, StepStatus::Success, st.since, detail);
                self.enter(st, Step::Verify);
            }
        }
    }

    /// Records `step` as failed with `detail` (the run's first failure).
    fn fail_step(&mut self, st: &mut Steps, step: Step, detail: String) {
        let since = st.since;
        let duration_ms = since.elapsed().as_millis() as u64;
        st.failure = Some(self.record.step_failed_ms(step, duration_ms, &detail));
    }

    /// Records `done` as a success and starts `next`.
    fn advance(&mut self, st: &mut Steps, done: Step, detail: Option<String>, next: Step) {
        self.record
            .step_done(done, StepStatus::Success, st.since, detail);
        self.enter(st, next);
    }

    /// Starts `step`: its clock, and the snapshot `status` reads.
    fn enter(&self, st: &mut Steps, step: Step) {
        st.step = step;
        st.since = Instant::now();
        self.record.set_step(Some(step), None);
    }

    /// How long `step` may take, in seconds, if it has a limit of its own.
    fn step_limit(&self, step: Step) -> Option<u64> {
        let b = &self.job.vm.bootstrap;
        match step {
            Step::Apply => Some(b.apply_timeout_secs),
            Step::Verify => Some(b.verify_timeout_secs),
            Step::GuestSetup => Some(super::guest_setup::TIMEOUT.as_secs()),
            _ => None,
        }
    }

    /// Where the guest keeps the agent's log, for messages.
    fn vizier_log_hint(&self) -> String {
        crate::vizier::guest_log_hint(self.job.vm.bootstrap.vizier_dir.as_deref())
    }
}

/// Sleeps until `deadline`; forever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
