//! What an executing run writes, and only that: its durable log (`runlog::Recorder`), its
//! events, the status snapshot's step, the guest output file, and the stamp after a success.
//! Everything that leaves here is redacted of env values first.
//!
//! The output file stops at `output_log_max`: the line that would cross the cap is
//! replaced by one saying so, later lines are counted (the log's `output_dropped_bytes`, a last
//! line in the file) and neither written nor published. After the log is written, the VM's
//! old logs are pruned (`runlog::prune`).
//!
//! Invariants: a run ends through [`Record::succeed`] or [`Record::fail`], which write its one
//! log; the stamp is written after the log and only by `succeed` of a run that changed the
//! guest and whose log (JSON and output) was written whole: a run whose record cannot be
//! written fails, saying why.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use castra_api::{
    BootstrapStatus, BootstrapStepKind as Step, BootstrapStepStatus as StepStatus,
    BootstrapTrigger, Event, OutcomeStatus, OutputStream, RunStatus, VmOutcome,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::EventBus;
use crate::planner::VmPlan;
use crate::runlog::{self, Limits, Recorder};
use crate::ssh::{CONTINUED_PREFIX, SPLIT_SUFFIX};
use crate::stamps::{self, Stamp};
use crate::state_root::StateRoot;
use crate::vm::state::{self, State, VmSnapshot};

/// How much guest output is buffered before it is written to the run's output file.
const OUTPUT_BUFFER: usize = 64 << 10;

/// Why a run failed. Its `Display` is what the log's `error` record, `BootstrapFailed` and the
/// outcome say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// A step failed; it is already recorded as failed with `detail`.
    #[error("{}: {detail}", step.as_str())]
    Step { step: Step, detail: String },
    /// The VM has no script (planning should have made this a Skip).
    #[error("no script configured")]
    NoScript,
    #[error(transparent)]
    ScriptName(#[from] super::driver::BadScriptName),
    /// castrad does not know where the guest's SSH server is.
    #[error(
        "wait-handshake: no SSH port: the VM is not running under castrad; start it with \
         `castractl up` or set [vms.ssh] port to reach a guest you started"
    )]
    NoPort,
    /// The run's record could not be written (a full disk, say).
    #[error("{0}")]
    Record(String),
}

/// The log, events and snapshot of one executing run.
pub struct Record {
    bus: EventBus,
    operation: String,
    vm: String,
    root: StateRoot,
    snapshot: Arc<watch::Sender<VmSnapshot>>,
    pub run_id: String,
    pub started: Instant,
    recorder: Recorder,
    redactions: Vec<(String, String)>,
    /// How much of a split line's piece is held back for the next piece: one byte less than
    /// the longest value to mask, so that a value the split cut in two is still masked.
    hold: usize,
    /// That held-back text (not yet redacted), with its step and stream.
    carry: Option<(Step, OutputStream, String)>,
    /// The guest output file, its cap and what was dropped past it.
    output: Output,
    keep: usize,
}

/// Who a record is for.
pub struct Subject<'a> {
    pub bus: &'a EventBus,
    pub root: &'a StateRoot,
    pub snapshot: &'a Arc<watch::Sender<VmSnapshot>>,
    pub vm: &'a str,
    pub operation: &'a str,
    /// The VM's output cap and log retention.
    pub limits: Limits,
}

impl Record {
    /// Starts recording a run of `plan`; `env` is what may be secret in the guest's output.
    pub fn new(
        who: Subject<'_>,
        plan: &VmPlan,
        env: &BTreeMap<String, String>,
        started: Instant,
    ) -> Record {
        let run_id = runlog::new_run_id();
        let redactions = redactions(env);
        let recorder = Recorder::new(
            who.root,
            who.vm,
            &run_id,
            &plan.base_hash,
            plan.artifact_hash.as_deref().unwrap_or_default(),
            trigger(plan),
            Some(who.operation),
        );
        let output = Output::new(
            recorder.output_path().map(Path::to_owned),
            who.limits.output_max_bytes,
        );
        Record {
            bus: who.bus.clone(),
            operation: who.operation.to_owned(),
            vm: who.vm.to_owned(),
            root: who.root.clone(),
            snapshot: who.snapshot.clone(),
            run_id,
            started,
            recorder,
            hold: redactions.first().map_or(0, |(v, _)| v.len() - 1),
            redactions,
            carry: None,
            output,
            keep: who.limits.keep,
        }
    }

    pub fn publish(&self, event: Event) {
        self.bus.publish(Some(&self.operation), event);
    }

    /// What `status` shows as the run's step and what it waits on.
    pub fn set_step(&self, step: Option<Step>, waiting_on: Option<String>) {
        self.snapshot.send_modify(|s| {
            s.current_step = step;
            s.waiting_on = waiting_on;
        });
    }

    /// Records and publishes a finished step.
    pub fn step_done(
        &mut self,
        step: Step,
        status: StepStatus,
        since: Instant,
        detail: Option<String>,
    ) {
        self.step_done_ms(step, status, since.elapsed().as_millis() as u64, detail);
    }

    pub fn step_done_ms(
        &mut self,
        step: Step,
        status: StepStatus,
        duration_ms: u64,
        detail: Option<String>,
    ) {
        self.recorder
            .step(step, status, duration_ms, detail.clone());
        self.publish(Event::BootstrapStep {
            vm: self.vm.clone(),
            step,
            status,
            duration_ms,
            detail,
        });
    }

    /// Records a step's result; on error the step is failed with the (redacted) reason.
    pub fn checked<T>(
        &mut self,
        step: Step,
        since: Instant,
        result: Result<(T, Option<String>), String>,
    ) -> Result<T, RunError> {
        match result {
            Ok((value, detail)) => {
                self.step_done(step, StepStatus::Success, since, detail);
                Ok(value)
            }
            Err(e) => Err(self.step_failed_ms(step, since.elapsed().as_millis() as u64, &e)),
        }
    }

    /// Records `step` as failed with the (redacted) `detail`; returns the run's error.
    pub fn step_failed_ms(&mut self, step: Step, duration_ms: u64, detail: &str) -> RunError {
        let detail = self.redact(detail);
        self.step_done_ms(step, StepStatus::Failed, duration_ms, Some(detail.clone()));
        RunError::Step { step, detail }
    }

    /// `line` with every env value masked.
    pub fn redact(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for (value, mask) in &self.redactions {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), mask);
            }
        }
        out
    }

    /// One line of guest output: redacted, published, appended to the run's output file. The
    /// pieces of a line split by the reader (`ssh::LINE_CAP`) are redacted across the split:
    /// the end of a piece waits for the next one (see `hold`).
    pub fn output_line(&mut self, step: Step, stream: OutputStream, line: &str) {
        let mut joined = None;
        if let Some((held_step, held_stream, held)) = self.carry.take() {
            if held_stream != stream {
                self.carry = Some((held_step, held_stream, held));
            } else if let Some(rest) = line.strip_prefix(CONTINUED_PREFIX) {
                joined = Some(format!("{CONTINUED_PREFIX}{held}{rest}"));
            } else {
                // Not the continuation after all (the guest printed the marker itself).
                self.emit(held_step, stream, &held);
            }
        }
        let line = joined.as_deref().unwrap_or(line);
        match line.strip_suffix(SPLIT_SUFFIX) {
            Some(body) if self.hold > 0 => {
                let start = if body.starts_with(CONTINUED_PREFIX) {
                    CONTINUED_PREFIX.len()
                } else {
                    0
                };
                let cut = self.safe_cut(body, start);
                if cut > start {
                    self.emit(step, stream, &format!("{}{SPLIT_SUFFIX}", &body[..cut]));
                    self.carry = Some((step, stream, body[cut..].to_owned()));
                } else {
                    // Too little to show yet: all of it goes on with the next piece.
                    self.carry = Some((step, stream, body[start..].to_owned()));
                }
            }
            _ => self.emit(step, stream, line),
        }
    }

    /// Where to end what is shown of a split piece `body` (at or after `start`): `hold` bytes
    /// before its end, or earlier so that no value to mask straddles the cut.
    fn safe_cut(&self, body: &str, start: usize) -> usize {
        let floor = |mut at: usize| {
            while !body.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        let mut cut = floor(body.len().saturating_sub(self.hold).max(start));
        // Any occurrence that starts less than its length before the cut straddles it.
        while let Some(at) = self.redactions.iter().find_map(|(value, _)| {
            let from = floor(cut.saturating_sub(value.len() - 1));
            body[from..]
                .find(value.as_str())
                .map(|i| from + i)
                .filter(|&at| at < cut)
        }) {
            cut = at;
        }
        cut.max(start)
    }

    /// Redacts, appends to the output file and publishes one line, until the file reaches its
    /// cap; then one line says so, and the rest is only counted.
    fn emit(&mut self, step: Step, stream: OutputStream, line: &str) {
        let tag = match stream {
            OutputStream::Stdout => "out",
            OutputStream::Stderr => "err",
        };
        let prefix = format!("{} {tag} ", step.as_str());
        if self.output.cut {
            // Counted as it came: a flood past the cap costs no redaction.
            self.output.admit((prefix.len() + line.len() + 1) as u64);
            return;
        }
        let line = self.redact(line);
        let (stream, line) = match self.output.admit((prefix.len() + line.len() + 1) as u64) {
            Admit::Drop => return,
            Admit::Write => {
                self.output.write(&format!("{prefix}{line}\n"));
                (stream, line)
            }
            Admit::Cut(note) => {
                self.output
                    .write(&format!("{} castrad {note}\n", step.as_str()));
                (OutputStream::Stderr, format!("castrad: {note}"))
            }
        };
        self.publish(Event::BootstrapOutput {
            vm: self.vm.clone(),
            step,
            stream,
            line,
        });
    }

    /// Keeps the last of the agent's guest log in the state root (`vizier/<vm>/service.log`).
    pub fn mirror_vizier_log(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let path = self.root.vizier_log(&self.vm);
        let written = crate::state_root::ensure_dir(path.parent().expect("vizier dir"))
            .and_then(|()| crate::fsutil::write_atomic(&path, text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(vm = self.vm, error = %e, "cannot mirror the Vizier log");
        }
    }

    /// Where the agent's guest log is mirrored, for messages.
    pub fn vizier_log_path(&self) -> PathBuf {
        self.root.vizier_log(&self.vm)
    }

    /// Shows what is still held back of a split line; then the output file is closed (see
    /// `Output::close`).
    fn flush_carry(&mut self) {
        if let Some((step, stream, held)) = self.carry.take() {
            self.emit(step, stream, &held);
        }
    }

    /// Ends a run that succeeded: its log, then (unless the script said nothing changed) its
    /// stamp, then `BootstrapCompleted`. A run whose output or log cannot be written fails
    /// instead, without a stamp.
    pub fn succeed(mut self, plan: &VmPlan, runner_noop: bool) -> VmOutcome {
        self.flush_carry();
        if let Some(error) = self.output.close() {
            state::move_to(&self.snapshot, &self.vm, State::Failed);
            return self.fail(&RunError::Record(error));
        }
        self.recorder.output_dropped(self.output.dropped_bytes);
        let status = if runner_noop {
            RunStatus::Noop
        } else {
            RunStatus::Success
        };
        let log_path = match self.recorder.finish(status, None) {
            Ok((path, _)) => path,
            Err(e) => {
                state::move_to(&self.snapshot, &self.vm, State::Failed);
                let error = e.to_string();
                tracing::error!(
                    vm = self.vm,
                    error,
                    "the run succeeded but is recorded failed"
                );
                return failed(
                    &self.bus,
                    &self.operation,
                    &self.vm,
                    self.started,
                    self.run_id,
                    None,
                    error,
                );
            }
        };
        let mut stamp_path = None;
        if !runner_noop {
            match write_stamp(&self.root, &self.vm, plan, &self.run_id, &log_path) {
                Ok(path) => stamp_path = Some(path),
                Err(e) => {
                    tracing::warn!(vm = self.vm, error = %e, "bootstrap succeeded but no stamp was written")
                }
            }
        }
        prune(&self.root, &self.vm, self.keep);
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let (event_status, outcome_status) = if runner_noop {
            (BootstrapStatus::NoOp, OutcomeStatus::NoOp)
        } else {
            (BootstrapStatus::Success, OutcomeStatus::Success)
        };
        self.bus.publish(
            Some(&self.operation),
            Event::BootstrapCompleted {
                vm: self.vm.clone(),
                status: event_status,
                duration_ms,
                stamp: stamp_path.as_ref().map(|p| p.display().to_string()),
            },
        );
        VmOutcome {
            run_id: Some(self.run_id),
            log_path: Some(log_path),
            stamp: stamp_path,
            ..super::outcome(&self.vm, outcome_status, duration_ms)
        }
    }

    /// Ends a run that failed: its log (ending with the `error` record), `BootstrapFailed`.
    /// When the log cannot be written either, the error says both.
    pub fn fail(mut self, error: &RunError) -> VmOutcome {
        let mut error = error.to_string();
        self.flush_carry();
        if let Some(output) = self.output.close()
            && !error.contains(&output)
        {
            error = format!("{error}; and {output}");
        }
        self.recorder.output_dropped(self.output.dropped_bytes);
        let log_path = match self.recorder.finish(RunStatus::Failed, Some(&error)) {
            Ok((path, _)) => Some(path),
            Err(e) => {
                tracing::error!(vm = self.vm, error = %e, "cannot write the failure log");
                error = format!("{error}; and {e}");
                None
            }
        };
        if log_path.is_some() {
            prune(&self.root, &self.vm, self.keep);
        }
        failed(
            &self.bus,
            &self.operation,
            &self.vm,
            self.started,
            self.run_id,
            log_path,
            error,
        )
    }
}

/// Prunes the VM's old run logs; a failure is only worth a warning (the run is recorded).
fn prune(root: &StateRoot, vm: &str, keep: usize) {
    match runlog::prune(root, vm, keep) {
        Ok(pruned) if pruned.removed.is_empty() && pruned.orphans.is_empty() => {}
        Ok(pruned) => tracing::debug!(
            vm,
            removed = pruned.removed.len(),
            orphans = pruned.orphans.len(),
            "old run logs pruned"
        ),
        Err(e) => tracing::warn!(vm, error = %e, "cannot prune old run logs"),
    }
}

/// What becomes of one line of output.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Write,
    /// This line would cross the cap: the note that says so goes instead.
    Cut(String),
    Drop,
}

/// A run's output file (opened at the first line), its cap and what was dropped past it.
struct Output {
    path: Option<PathBuf>,
    /// Buffered: a flood of short lines is millions of lines. Flushed when the run ends.
    file: Option<std::io::BufWriter<File>>,
    cap: u64,
    written: u64,
    cut: bool,
    dropped_bytes: u64,
    dropped_lines: u64,
    /// Why the file could not be written, once that happened: no more is written, and the
    /// run fails.
    error: Option<String>,
}

impl Output {
    fn new(path: Option<PathBuf>, cap: u64) -> Output {
        Output {
            path,
            file: None,
            cap,
            written: 0,
            cut: false,
            dropped_bytes: 0,
            dropped_lines: 0,
            error: None,
        }
    }

    /// Accounts a line of `len` bytes (in the file): written while the file stays within its
    /// cap, then cut (once), then dropped.
    fn admit(&mut self, len: u64) -> Admit {
        if !self.cut && self.written.saturating_add(len) <= self.cap {
            self.written += len;
            return Admit::Write;
        }
        self.dropped_bytes += len;
        self.dropped_lines += 1;
        if self.cut {
            return Admit::Drop;
        }
        self.cut = true;
        Admit::Cut(format!(
            "output cut at {} bytes (output_log_max); further output is dropped",
            self.cap
        ))
    }

    /// Appends `text` (whole lines) to the file, opening it first; the first failure is kept
    /// and ends the writing.
    fn write(&mut self, text: &str) {
        let Some(path) = &self.path else { return };
        if self.error.is_some() {
            return;
        }
        if self.file.is_none() {
            let opened =
                crate::state_root::ensure_dir(path.parent().expect("log dir")).and_then(|()| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                });
            match opened {
                Ok(file) => {
                    self.file = Some(std::io::BufWriter::with_capacity(OUTPUT_BUFFER, file))
                }
                Err(e) => return self.failed(e),
            }
        }
        if let Some(file) = &mut self.file
            && let Err(e) = file.write_all(text.as_bytes())
        {
            self.failed(e);
        }
    }

    fn failed(&mut self, e: std::io::Error) {
        self.file = None;
        let path = self.path.as_deref().unwrap_or(Path::new("?"));
        self.error = Some(format!(
            "cannot write the run's output log {}: {e}",
            path.display()
        ));
    }

    /// Says what was dropped (if anything), flushes the file to disk and closes it; returns
    /// why the output could not be written, if it could not.
    fn close(&mut self) -> Option<String> {
        if self.cut && self.file.is_some() {
            let note = format!(
                "castrad dropped {} bytes ({} lines) of output past the cap\n",
                self.dropped_bytes, self.dropped_lines
            );
            self.write(&note);
        }
        if let Some(file) = self.file.take() {
            let synced = file
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)
                .and_then(|file| file.sync_all());
            if let Err(e) = synced {
                self.failed(e);
            }
        }
        self.error.clone()
    }
}

fn trigger(plan: &VmPlan) -> BootstrapTrigger {
    match plan.trigger {
        Some(crate::planner::Trigger::Always) => BootstrapTrigger::Always,
        _ => BootstrapTrigger::Auto,
    }
}

/// Publishes `BootstrapFailed` (its log is already written) and returns the `Failed` outcome.
pub fn failed(
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
        ..super::outcome(vm, OutcomeStatus::Failed, duration_ms)
    }
}

/// A run that failed before its steps began: one failure log, one `BootstrapFailed`.
pub fn failure_outside_steps(who: Subject<'_>, started: Instant, mut error: String) -> VmOutcome {
    let run_id = runlog::new_run_id();
    let recorder = Recorder::new(
        who.root,
        who.vm,
        &run_id,
        "",
        "",
        BootstrapTrigger::Auto,
        Some(who.operation),
    );
    let log_path = match recorder.finish(RunStatus::Failed, Some(&error)) {
        Ok((path, _)) => {
            prune(who.root, who.vm, who.limits.keep);
            Some(path)
        }
        Err(e) => {
            error = format!("{error}; and {e}");
            None
        }
    };
    failed(
        who.bus,
        who.operation,
        who.vm,
        started,
        run_id,
        log_path,
        error,
    )
}

#[derive(Debug, thiserror::Error)]
enum StampError {
    #[error("the VM has no disk identity (no pinned host key)")]
    NoDiskId,
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

fn write_stamp(
    root: &StateRoot,
    vm: &str,
    plan: &VmPlan,
    run_id: &str,
    log_path: &Path,
) -> Result<PathBuf, StampError> {
    let disk_id = stamps::disk_id(root, vm).ok_or(StampError::NoDiskId)?;
    let stamp = Stamp {
        vm: vm.to_owned(),
        base_hash: plan.base_hash.clone(),
        artifact_hash: plan.artifact_hash.clone().unwrap_or_default(),
        disk_id,
        run_id: run_id.to_owned(),
        log_path: log_path.to_owned(),
        completed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    Ok(stamps::write(root, &stamp)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_written_up_to_its_cap_then_cut_once_then_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/run.output.log");
        let mut out = Output::new(Some(path.clone()), 10);
        assert_eq!(out.admit(4), Admit::Write);
        out.write("abc\n");
        assert_eq!(out.admit(6), Admit::Write, "exactly at the cap");
        out.write("defgh\n");
        let Admit::Cut(note) = out.admit(1) else {
            panic!("no cut")
        };
        assert_eq!(
            note,
            "output cut at 10 bytes (output_log_max); further output is dropped"
        );
        out.write(&format!("apply castrad {note}\n"));
        assert_eq!(out.admit(1), Admit::Drop);
        assert_eq!(out.admit(5), Admit::Drop);
        assert_eq!((out.dropped_bytes, out.dropped_lines), (7, 3));
        assert_eq!(out.close(), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "abc\ndefgh\napply castrad {note}\n\
                 castrad dropped 7 bytes (3 lines) of output past the cap\n"
            )
        );
    }

    #[test]
    fn an_output_file_that_cannot_be_written_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        // The log directory's place is taken by a file: nothing can be created under it.
        std::fs::write(dir.path().join("logs"), "").unwrap();
        let path = dir.path().join("logs/run.output.log");
        let mut out = Output::new(Some(path.clone()), 1 << 20);
        assert_eq!(out.admit(4), Admit::Write);
        out.write("abc\n");
        let error = out.close().expect("an error");
        assert!(
            error.starts_with(&format!(
                "cannot write the run's output log {}: ",
                path.display()
            )),
            "{error}"
        );
    }

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
