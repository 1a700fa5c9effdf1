//! Durable run logs: one JSON file per executed bootstrap run, written once, atomically, when
//! the run ends. `logs/bootstrap/<vm>-<UTC timestamp>-<run id>.json`; the script's output goes
//! beside it in `<same stem>.output.log` while the run is going.
//!
//! Names never collide: the timestamp has milliseconds and the run id is random per run.
//! Skipped and NoOp outcomes write nothing here.

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

/// A fresh random run id (12 hex digits).
pub fn new_run_id() -> String {
    crate::ids::random_hex(RUN_ID_LEN / 2)
}

/// `2026-11-22T00:45:12.345Z` → `20261122T004512.345Z`.
fn file_stamp(rfc3339: &str) -> String {
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
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

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Writes the log (once). A failure appends the terminal `error` record.
    pub fn finish(
        mut self,
        status: RunStatus,
        error: Option<&str>,
    ) -> std::io::Result<(PathBuf, RunLog)> {
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
        ensure_dir(self.path.parent().expect("log dir"))?;
        let json = serde_json::to_vec_pretty(&self.log).map_err(std::io::Error::other)?;
        write_atomic(&self.path, &json)?;
        Ok((self.path, self.log))
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
    let stem = name.strip_suffix(".json")?;
    let cut = 1 + STAMP_LEN + 1 + RUN_ID_LEN;
    // `get`: a stray file's name may put the cut inside a multi-byte character.
    stem.get(..stem.len().checked_sub(cut)?)
        .filter(|vm| !vm.is_empty())
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

    #[test]
    fn run_ids_are_random_hex() {
        let a = new_run_id();
        assert_eq!(a.len(), RUN_ID_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_run_id());
    }
}
