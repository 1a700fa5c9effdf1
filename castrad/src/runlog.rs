//! Durable run logs: one JSON file per executed bootstrap run, written once, atomically, when
//! the run ends. `logs/bootstrap/<vm>-<UTC timestamp>-<run id>.json`; the script's output goes
//! beside it in `<same stem>.output.log` while the run is going.
//!
//! Names never collide: the timestamp has milliseconds and the run id is random per run.
//! Skipped and NoOp outcomes write nothing here.
//!
//! Retention ([`prune`]): after a run has written its log, only the newest `keep_run_logs` logs
//! of its VM are kept, plus the latest `success` and the one the VM's stamp names. A log goes
//! JSON first, then its output: a log that is listed always has its output. An output without
//! its JSON (castrad stopped in between, or killed mid-run) counts as a log of its own.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use castra_api::{
    BootstrapStepKind, BootstrapStepStatus, BootstrapTrigger, RunLog, RunStatus, RunSummary,
    StepRecord,
};

use crate::fsutil::write_atomic;
use crate::state_root::{StateRoot, ensure_dir};

/// Length of the `YYYYMMDDTHHMMSS.mmmZ` part of a log file name.
const STAMP_LEN: usize = 20;
/// Length of a run id.
pub const RUN_ID_LEN: usize = 12;
/// The suffix of a run's output file (after the log's stem).
const OUTPUT_SUFFIX: &str = ".output.log";

/// A fresh random run id (12 hex digits).
pub fn new_run_id() -> String {
    crate::ids::random_hex(RUN_ID_LEN / 2)
}

/// `2026-11-22T00:45:12.345Z` → `20261122T004512.345Z`.
fn file_stamp(rfc3339: &str) -> String {
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// How much disk a VM's run logs may take: the cap of one run's output file, and how many
/// logs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub output_max_bytes: u64,
    pub keep: usize,
}

impl Limits {
    /// The limits `[bootstrap]`/`[vms.bootstrap]` set for a VM.
    pub fn of(b: &crate::config::Bootstrap) -> Limits {
        Limits {
            output_max_bytes: b.output_log_max_bytes,
            keep: b.keep_run_logs as usize,
        }
    }
}

/// A run log that could not be written (the disk is full, say): nothing was left half-written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the run log {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    source: io::Error,
}

/// A run's log while it is being recorded.
#[derive(Debug)]
pub struct Recorder {
    log: RunLog,
    started: Instant,
    path: PathBuf,
}

impl Recorder {
    pub fn new(
        root: &StateRoot,
        vm: &str,
        run_id: &str,
        base_hash: &str,
        artifact_hash: &str,
        trigger: BootstrapTrigger,
        operation: Option<&str>,
    ) -> Recorder {
        let started_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let (path, output) = root.run_log(vm, &file_stamp(&started_at), run_id);
        Recorder {
            path,
            log: RunLog {
                vm: vm.to_owned(),
                run_id: run_id.to_owned(),
                artifact_hash: artifact_hash.to_owned(),
                base_hash: base_hash.to_owned(),
                status: RunStatus::Failed,
                duration_ms: 0,
                steps: Vec::new(),
                trigger,
                operation: operation.map(str::to_owned),
                started_at,
                output_path: Some(output),
                output_dropped_bytes: 0,
            },
            started: Instant::now(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn output_path(&self) -> Option<&Path> {
        self.log.output_path.as_deref()
    }

    pub fn step(
        &mut self,
        step: BootstrapStepKind,
        status: BootstrapStepStatus,
        duration_ms: u64,
        detail: Option<String>,
    ) {
        self.log.steps.push(StepRecord {
            step,
            status,
            duration_ms,
            detail,
        });
    }

    /// Records how many bytes of output were dropped past the output file's cap.
    pub fn output_dropped(&mut self, bytes: u64) {
        self.log.output_dropped_bytes = bytes;
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Writes the log (once). A failure appends the terminal `error` record. When the log
    /// cannot be written, nothing of it is left: no partial JSON (it is written atomically)
    /// and no output file without its JSON.
    pub fn finish(
        mut self,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(PathBuf, RunLog), WriteError> {
        self.log.status = status;
        self.log.duration_ms = self.elapsed_ms();
        if let Some(error) = error {
            self.step(
                BootstrapStepKind::Error,
                BootstrapStepStatus::Failed,
                0,
                Some(error.to_owned()),
            );
        }
        if self.log.output_path.as_ref().is_some_and(|p| !p.exists()) {
            self.log.output_path = None;
        }
        let written = ensure_dir(self.path.parent().expect("log dir")).and_then(|()| {
            let json = serde_json::to_vec_pretty(&self.log).map_err(io::Error::other)?;
            write_atomic(&self.path, &json)
        });
        match written {
            Ok(()) => Ok((self.path, self.log)),
            Err(source) => {
                if let Some(output) = &self.log.output_path {
                    let _ = std::fs::remove_file(output);
                }
                Err(WriteError {
                    path: self.path,
                    source,
                })
            }
        }
    }
}

/// Every durable log of `vm`, oldest first.
pub fn list(root: &StateRoot, vm: &str) -> std::io::Result<Vec<(PathBuf, RunLog)>> {
    let dir = root.bootstrap_logs_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if log_vm(name) != Some(vm) {
            continue;
        }
        if let Ok(log) = std::fs::read(&path)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<RunLog>(&b).map_err(|_| ()))
        {
            out.push((path, log));
        }
    }
    out.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    Ok(out)
}

/// The VM name encoded in a log file name `<vm>-<stamp>-<run id>.json`.
fn log_vm(name: &str) -> Option<&str> {
    stem_vm(name.strip_suffix(".json")?)
}

/// The VM name encoded in a log's stem `<vm>-<stamp>-<run id>`.
fn stem_vm(stem: &str) -> Option<&str> {
    let cut = 1 + STAMP_LEN + 1 + RUN_ID_LEN;
    // `get`: a stray file's name may put the cut inside a multi-byte character.
    stem.get(..stem.len().checked_sub(cut)?)
        .filter(|vm| !vm.is_empty())
}

/// What [`prune`] found and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Logs removed (their JSON paths), oldest first.
    pub removed: Vec<PathBuf>,
    /// Output files removed that had no JSON (runs that never finished).
    pub orphans: Vec<PathBuf>,
}

/// Keeps the newest `keep` logs of `vm` and removes the others, except the latest `success`
/// and the log the VM's stamp names. Each log goes JSON first, then its output file. An output
/// file without its JSON (a run cut short) counts as a log: it goes once `keep` newer ones
/// exist. A file that cannot be removed is left for the next prune.
pub fn prune(root: &StateRoot, vm: &str, keep: usize) -> io::Result<Pruned> {
    let dir = root.bootstrap_logs_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Pruned::default()),
        Err(e) => return Err(e),
    };
    // stem → (has a JSON, has an output file); stems sort by start time.
    let mut runs: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(OUTPUT_SUFFIX) {
            if stem_vm(stem) == Some(vm) {
                runs.entry(stem.to_owned()).or_default().1 = true;
            }
        } else if let Some(stem) = name.strip_suffix(".json")
            && stem_vm(stem) == Some(vm)
        {
            runs.entry(stem.to_owned()).or_default().0 = true;
        }
    }
    let json = |stem: &str| dir.join(format!("{stem}.json"));
    let output = |stem: &str| dir.join(format!("{stem}{OUTPUT_SUFFIX}"));
    let logs: Vec<&str> = runs
        .iter()
        .filter(|(_, f)| f.0)
        .map(|(s, _)| s.as_str())
        .collect();
    // The newest `keep` runs, finished or not (a run cut short leaves its output alone).
    let mut protected: Vec<String> = runs.keys().rev().take(keep).cloned().collect();
    if let crate::stamps::StampRead::Present(stamp) = crate::stamps::read(root, vm)
        && let Some(stem) = stamp
            .log_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
    {
        protected.push(stem.to_owned());
    }
    let latest_success = logs.iter().rev().find(|stem| {
        std::fs::read(json(stem))
            .ok()
            .and_then(|b| serde_json::from_slice::<RunLog>(&b).ok())
            .is_some_and(|log| log.status == RunStatus::Success)
    });
    protected.extend(latest_success.map(|s| s.to_string()));

    let mut pruned = Pruned::default();
    let mut first_error = None;
    let mut remove = |path: PathBuf| match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            first_error.get_or_insert(e);
            false
        }
    };
    for (stem, (has_json, has_output)) in &runs {
        if protected.contains(stem) {
            continue;
        }
        if *has_json {
            if !remove(json(stem)) {
                continue;
            }
            pruned.removed.push(json(stem));
        }
        if *has_output && remove(output(stem)) && !*has_json {
            pruned.orphans.push(output(stem));
        }
    }
    if !pruned.removed.is_empty() || !pruned.orphans.is_empty() {
        std::fs::File::open(&dir)?.sync_all()?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(pruned),
    }
}

pub fn summary(path: &Path, log: &RunLog) -> RunSummary {
    RunSummary {
        run_id: log.run_id.clone(),
        path: path.to_owned(),
        status: log.status,
        duration_ms: log.duration_ms,
        started_at: log.started_at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_named_by_vm_time_and_run_and_listed_per_vm() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(tmp.path(), "p", Path::new("/p/castra.toml"));
        let mut paths = Vec::new();
        for vm in ["web", "web-0", "web"] {
            let run = new_run_id();
            let mut r = Recorder::new(
                &root,
                vm,
                &run,
                "b",
                "a",
                BootstrapTrigger::Auto,
                Some("op"),
            );
            r.step(
                BootstrapStepKind::Connect,
                BootstrapStepStatus::Success,
                12,
                None,
            );
            let (path, log) = r.finish(RunStatus::Success, None).unwrap();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(
                name.starts_with(&format!("{vm}-")) && name.ends_with(&format!("-{run}.json")),
                "{name}"
            );
            assert_eq!(log_vm(&name), Some(vm));
            assert_eq!(log.steps.len(), 1);
            paths.push(path);
        }
        let web: Vec<_> = list(&root, "web")
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(web.len(), 2, "web-0's log is not web's");
        assert!(web.contains(&paths[0]) && web.contains(&paths[2]));
        assert_eq!(list(&root, "web-0").unwrap().len(), 1);
    }

    #[test]
    fn a_failed_run_ends_with_the_error_record() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(tmp.path(), "p", Path::new("/p/castra.toml"));
        let mut r = Recorder::new(
            &root,
            "db",
            "0123456789ab",
            "b",
            "a",
            BootstrapTrigger::Always,
            None,
        );
        r.step(
            BootstrapStepKind::WaitHandshake,
            BootstrapStepStatus::Failed,
            1000,
            Some("timed out".into()),
        );
        let (path, log) = r.finish(RunStatus::Failed, Some("timed out")).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(
            json["steps"][1],
            serde_json::json!({"step": "error", "status": "failed", "duration_ms": 0, "detail": "timed out"})
        );
        assert_eq!(log.output_path, None, "no output file was written");
    }

    /// Issue 14 item 15: a stray file in the log directory whose name puts the cut inside a
    /// multi-byte character panicked `castra.logs`.
    #[test]
    fn stray_file_names_are_not_logs() {
        let stray = format!("é{}.json", "x".repeat(1 + STAMP_LEN + 1 + RUN_ID_LEN - 1));
        assert_eq!(log_vm(&stray), None);
        let exact = format!("{}.json", "x".repeat(1 + STAMP_LEN + 1 + RUN_ID_LEN));
        assert_eq!(log_vm(&exact), None);
        assert_eq!(log_vm(".json"), None);
        assert_eq!(log_vm("no-suffix"), None);
    }

    /// A recorder of a run of `vm` that has written some output.
    fn with_output(root: &StateRoot, vm: &str) -> (Recorder, PathBuf) {
        let r = Recorder::new(
            root,
            vm,
            &new_run_id(),
            "b",
            "a",
            BootstrapTrigger::Auto,
            None,
        );
        let output = r.output_path().unwrap().to_owned();
        ensure_dir(output.parent().unwrap()).unwrap();
        std::fs::write(&output, "apply out hi\n").unwrap();
        (r, output)
    }

    /// Writes a finished log of `vm` with `status` (and an output file); its JSON path.
    fn run(root: &StateRoot, vm: &str, status: RunStatus) -> PathBuf {
        let (r, _) = with_output(root, vm);
        // Names are ordered by their millisecond timestamps.
        std::thread::sleep(std::time::Duration::from_millis(2));
        r.finish(status, None).unwrap().0
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn stem(json: &Path) -> String {
        let name = json.file_name().unwrap().to_str().unwrap();
        name.strip_suffix(".json").unwrap().to_owned()
    }

    #[test]
    fn prune_keeps_the_newest_the_latest_success_and_the_stamped_log_in_pairs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(tmp.path(), "p", Path::new("/p/castra.toml"));
        let stamped = run(&root, "web", RunStatus::Success);
        let success = run(&root, "web", RunStatus::Success);
        let mut failed = Vec::new();
        for _ in 0..4 {
            failed.push(run(&root, "web", RunStatus::Failed));
        }
        let other = run(&root, "web-0", RunStatus::Failed);
        // The newest "run" never finished: its output is kept like a log.
        let (_, cut_short) = root.run_log("web", "29990101T000000.000Z", "0123456789ab");
        std::fs::write(&cut_short, "x\n").unwrap();
        // A run that never finished: its output without a JSON.
        let (_, orphan) = root.run_log("web", "20000101T000000.000Z", "0123456789ab");
        std::fs::write(&orphan, "x\n").unwrap();
        crate::stamps::write(
            &root,
            &crate::stamps::Stamp {
                vm: "web".into(),
                base_hash: "b".into(),
                artifact_hash: "a".into(),
                disk_id: "d".into(),
                run_id: "r".into(),
                log_path: stamped.clone(),
                completed_at: "t".into(),
            },
        )
        .unwrap();

        let pruned = prune(&root, "web", 3).unwrap();
        assert_eq!(pruned.removed, [failed[0].clone(), failed[1].clone()]);
        assert_eq!(pruned.orphans, [orphan]);
        let mut kept = vec![cut_short.file_name().unwrap().to_str().unwrap().to_owned()];
        for json in [&stamped, &success, &failed[2], &failed[3], &other] {
            kept.push(format!("{}.json", stem(json)));
            kept.push(format!("{}.output.log", stem(json)));
        }
        kept.sort();
        assert_eq!(names(&root.bootstrap_logs_dir()), kept, "whole pairs");
        assert_eq!(list(&root, "web").unwrap().len(), 4);
        assert_eq!(
            prune(&root, "web", 3).unwrap(),
            Pruned::default(),
            "nothing more to do"
        );
    }

    #[test]
    fn a_log_that_cannot_be_written_names_itself_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(tmp.path(), "p", Path::new("/p/castra.toml"));
        let (r, output) = with_output(&root, "web");
        let json = r.path().to_owned();
        // A directory where the JSON goes: the rename over it fails.
        std::fs::create_dir(&json).unwrap();
        std::fs::write(json.join("x"), "").unwrap();
        let e = r.finish(RunStatus::Success, None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot write the run log {}: ", json.display())),
            "{e}"
        );
        assert!(!output.exists(), "the output went with its log");
        let names = names(&root.bootstrap_logs_dir());
        assert_eq!(names, [json.file_name().unwrap().to_str().unwrap()]);
    }

    #[test]
    fn run_ids_are_random_hex() {
        let a = new_run_id();
        assert_eq!(a.len(), RUN_ID_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_run_id());
    }
}
