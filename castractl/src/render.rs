//! Human-readable output: aligned tables, short hashes, durations, and the one-line form of
//! events shared by `up` (piped and live) and `events`.

use std::fmt::Write;
use std::time::Duration;

use castra_api as api;

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn short(hash: &Option<String>) -> String {
    hash.as_deref().map_or_else(|| "-".to_owned(), short_str)
}

fn short_str(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn path_or_dash(path: Option<&std::path::Path>) -> String {
    path.map_or_else(|| "-".to_owned(), |p| p.display().to_string())
}

/// A duration for people: `85ms`, `1.24s`, `12.3s`, `2m03s`, `1h05m` (truncated, never rounded
/// up into the next unit).
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..10_000 => format!("{}.{:02}s", ms / 1_000, ms % 1_000 / 10),
        10_000..60_000 => format!("{}.{}s", ms / 1_000, ms % 1_000 / 100),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1_000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// Guest output is untrusted: control characters (escape sequences, carriage returns) would
/// redraw the terminal, so they become spaces.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An event without its VM: `apply  | line`, `wait-handshake  waiting: ...`, `FAILED  error`.
/// This is also the live display's status text.
pub fn event_tail(event: &api::Event) -> String {
    use api::Event;
    match event {
        Event::BootstrapPlanned(p) => format!("planned  {} ({})", lower(&p.action), p.reason),
        Event::BootstrapStarted {
            trigger,
            artifact_hash,
            ..
        } => format!(
            "started  trigger={} artifact={}",
            lower(trigger),
            short_str(artifact_hash)
        ),
        Event::BootstrapStep {
            step,
            status,
            duration_ms,
            detail,
            ..
        } => {
            let mut line = format!(
                "{}  {}  {}",
                step.as_str(),
                lower(status),
                duration(*duration_ms)
            );
            if let Some(detail) = detail {
                let _ = write!(line, "  {}", clean(detail));
            }
            line
        }
        Event::BootstrapProgress {
            step, waiting_on, ..
        } => format!("{}  waiting: {}", step.as_str(), clean(waiting_on)),
        Event::BootstrapOutput {
            step, stream, line, ..
        } => {
            let mark = match stream {
                api::OutputStream::Stdout => '|',
                api::OutputStream::Stderr => '!',
            };
            format!("{}  {mark} {}", step.as_str(), clean(line))
        }
        Event::BootstrapCompleted {
            status,
            duration_ms,
            ..
        } => format!("completed  {}  {}", lower(status), duration(*duration_ms)),
        Event::BootstrapFailed { error, .. } => format!("FAILED  {}", clean(error)),
        Event::OverlayPrepared { overlay_path, .. } => {
            format!("disk  new overlay {}", overlay_path.display())
        }
        Event::VmLaunched {
            pid,
            accel,
            accel_reason,
            ssh_port,
            ..
        } => {
            format!("launched  pid {pid}, {accel} ({accel_reason}), ssh on 127.0.0.1:{ssh_port}")
        }
        Event::VmAdopted { pid, ssh_port, .. } => {
            format!("adopted  pid {pid} still running, ssh on 127.0.0.1:{ssh_port}")
        }
        Event::VmExited { reason, .. } => format!("exited  {}", clean(reason)),
        Event::ShutdownRequested { .. } => "shutdown  requested".to_owned(),
        Event::CooperativeAttempted {
            method, timeout_ms, ..
        } => {
            format!(
                "shutdown  {method}, waiting up to {}",
                duration(*timeout_ms)
            )
        }
        Event::CooperativeSucceeded { elapsed_ms, .. } => {
            format!(
                "shutdown  guest powered off after {}",
                duration(*elapsed_ms)
            )
        }
        Event::CooperativeTimedOut {
            waited_ms, reason, ..
        } => {
            format!(
                "shutdown  no power-off after {}: {}",
                duration(*waited_ms),
                clean(reason)
            )
        }
        Event::ShutdownEscalated {
            signal, timeout_ms, ..
        } => {
            format!(
                "shutdown  sending {signal}, waiting up to {}",
                duration(*timeout_ms)
            )
        }
        Event::ShutdownComplete {
            outcome, total_ms, ..
        } => {
            format!("stopped  {outcome}  {}", duration(*total_ms))
        }
        Event::VizierConnected { version, .. } => format!("vizier  connected, version {version}"),
        Event::VizierLost { reason, .. } => format!("vizier  LOST: {}", clean(reason)),
        Event::EphemeralLayerDiscarded {
            overlay_path,
            reclaimed_bytes,
            ..
        } => {
            format!(
                "disk  discarded {} ({reclaimed_bytes} bytes)",
                overlay_path.display()
            )
        }
    }
}

/// One event as a line: the VM (padded to `width`) then [`event_tail`].
pub fn event_line(event: &api::Event, width: usize) -> String {
    format!("{:<width$}  {}", event.vm(), event_tail(event))
}

/// The live display's last line for a VM: `✓ web-0  Success  1.24s`, `✗ db  Failed  30.0s  why`.
pub fn finish_line(
    ok: bool,
    vm: &str,
    width: usize,
    status: &str,
    duration_ms: Option<u64>,
    error: Option<&str>,
) -> String {
    let mark = if ok { '✓' } else { '✗' };
    let mut line = format!("{mark} {vm:<width$}  {status}");
    if let Some(ms) = duration_ms {
        let _ = write!(line, "  {}", duration(ms));
    }
    if let Some(error) = error {
        let _ = write!(line, "  {}", clean(error));
    }
    line
}

/// The end of `up`: one row per VM in operation order, then the errors.
pub fn summary(o: &api::OutcomeResult) -> String {
    let mut rows = vec![vec![
        "VM".into(),
        "STATUS".into(),
        "DURATION".into(),
        "LOG".into(),
    ]];
    for vm in &o.outcomes {
        let took = match vm.status {
            // Never attempted: a duration would suggest it was.
            api::OutcomeStatus::Rejected => "-".to_owned(),
            _ => duration(vm.duration_ms),
        };
        rows.push(vec![
            vm.vm.clone(),
            lower(&vm.status),
            took,
            path_or_dash(vm.log_path.as_deref()),
        ]);
    }
    let mut out = table(&rows);
    let errors: Vec<_> = o
        .outcomes
        .iter()
        .filter_map(|vm| vm.error.as_ref().map(|e| (&vm.vm, e)))
        .collect();
    if !errors.is_empty() {
        out.push('\n');
        for (vm, error) in errors {
            let _ = writeln!(out, "{vm}: {error}");
        }
    }
    out
}

/// `castractl logs`: the VM's runs, then the selected run's steps and files.
pub fn logs(l: &api::LogsResult) -> String {
    if l.runs.is_empty() && l.log.is_none() {
        return format!("no bootstrap runs recorded for {}\n", l.vm);
    }
    let mut rows = vec![vec![
        "RUN".into(),
        "STATUS".into(),
        "DURATION".into(),
        "STARTED".into(),
    ]];
    for run in &l.runs {
        rows.push(vec![
            run.run_id.clone(),
            lower(&run.status),
            duration(run.duration_ms),
            run.started_at.clone(),
        ]);
    }
    let mut out = format!("vm {}\n\n", l.vm);
    out.push_str(&table(&rows));
    let Some(log) = &l.log else {
        return out;
    };
    let _ = writeln!(
        out,
        "\nrun {}  {}  {}  trigger {}  started {}",
        log.run_id,
        lower(&log.status),
        duration(log.duration_ms),
        lower(&log.trigger),
        log.started_at
    );
    let _ = writeln!(
        out,
        "artifact {}  base {}  operation {}",
        short_str(&log.artifact_hash),
        short_str(&log.base_hash),
        log.operation.as_deref().unwrap_or("-")
    );
    let mut rows = vec![vec![
        "STEP".into(),
        "STATUS".into(),
        "DURATION".into(),
        "DETAIL".into(),
    ]];
    for step in &log.steps {
        rows.push(vec![
            step.step.as_str().to_owned(),
            lower(&step.status),
            duration(step.duration_ms),
            step.detail.as_deref().map_or_else(|| "-".to_owned(), clean),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    let _ = writeln!(
        out,
        "\nlog     {}\noutput  {}",
        path_or_dash(l.log_path.as_deref()),
        path_or_dash(log.output_path.as_deref())
    );
    out
}

/// A unit enum's wire name (`run`, `Success`, `wait-handshake`).
pub fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn plan(p: &api::PlanResult) -> String {
    let mut out = format!(
        "project {} ({})\nstate   {}\n\n",
        p.project,
        p.config.display(),
        p.state_root.display()
    );
    let mut rows = vec![vec![
        "VM".into(),
        "MODE".into(),
        "ACTION".into(),
        "ARTIFACT".into(),
        "REASON".into(),
    ]];
    for vm in &p.vms {
        rows.push(vec![
            vm.vm.clone(),
            lower(&vm.mode),
            lower(&vm.action),
            short(&vm.artifact_hash),
            vm.reason.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    let warnings: Vec<String> = p
        .vms
        .iter()
        .flat_map(|vm| vm.warnings.iter().map(move |w| format!("  {}: {w}", vm.vm)))
        .collect();
    if !warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for w in warnings {
            out.push_str(&w);
            out.push('\n');
        }
    }
    out
}

pub fn status(s: &api::StatusResult) -> String {
    let d = &s.daemon;
    let uptime = humantime::format_duration(Duration::from_secs(d.uptime_ms / 1000));
    let mut out = format!(
        "castrad {}  pid {}  up {uptime}\nsocket  {}\nstate   {}\n",
        d.version,
        d.pid,
        d.socket.display(),
        d.state_dir.display()
    );
    if s.projects.is_empty() {
        out.push_str(
            "\nno projects loaded (run `castractl plan` or `castractl status` inside one)\n",
        );
    }
    for p in &s.projects {
        let _ = writeln!(out, "\nproject {} ({})", p.name, p.config.display());
        let mut rows = vec![
            [
                "VM",
                "BACKEND",
                "STATE",
                "PID",
                "ACCEL",
                "SSH",
                "UP",
                "NOW",
                "LAST BOOTSTRAP",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let dash = || "-".to_owned();
        for vm in &p.vms {
            // What it is doing now: the step, and what that step waits on.
            let now = match (&vm.current_step, &vm.waiting_on) {
                (Some(step), Some(w)) => format!("{}: {}", step.as_str(), clean(w)),
                (Some(step), None) => step.as_str().to_owned(),
                _ => dash(),
            };
            let last = vm.last_bootstrap.as_ref().map_or_else(dash, |o| {
                let mut s = format!("{} {}", lower(&o.status), duration(o.duration_ms));
                if let Some(e) = &o.error {
                    let _ = write!(s, ": {}", clean(e));
                }
                s
            });
            rows.push(vec![
                vm.name.clone(),
                lower(&vm.backend),
                lower(&vm.state),
                vm.pid.map_or_else(dash, |p| p.to_string()),
                vm.accel.clone().unwrap_or_else(dash),
                vm.ssh_endpoint.clone().unwrap_or_else(dash),
                vm.uptime_ms.map_or_else(dash, |ms| {
                    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
                }),
                now,
                last,
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// The result of `down`: one row per VM, then the errors.
pub fn down(d: &api::DownResult) -> String {
    let mut rows = vec![vec![
        "VM".to_owned(),
        "STOPPED".to_owned(),
        "TOOK".to_owned(),
        "DISK".to_owned(),
    ]];
    for v in &d.vms {
        let disk = if v.discarded { "discarded" } else { "kept" };
        rows.push(vec![
            v.vm.clone(),
            v.outcome.as_str().to_owned(),
            duration(v.total_ms),
            disk.to_owned(),
        ]);
    }
    let mut out = table(&rows);
    for v in d.vms.iter().filter(|v| v.error.is_some()) {
        let _ = writeln!(out, "{}: {}", v.vm, v.error.as_deref().unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_the_last() {
        let rows = vec![
            vec!["VM".to_owned(), "MODE".to_owned(), "REASON".to_owned()],
            vec!["web-0".to_owned(), "always".to_owned(), "forced".to_owned()],
        ];
        assert_eq!(
            table(&rows),
            "VM     MODE    REASON\nweb-0  always  forced\n"
        );
    }

    fn step(
        step: api::BootstrapStepKind,
        status: api::BootstrapStepStatus,
        duration_ms: u64,
        detail: Option<&str>,
    ) -> api::Event {
        api::Event::BootstrapStep {
            vm: "web-0".into(),
            step,
            status,
            duration_ms,
            detail: detail.map(str::to_owned),
        }
    }

    fn planned() -> api::BootstrapPlanned {
        api::BootstrapPlanned {
            vm: "web-0".into(),
            mode: api::BootstrapMode::Auto,
            action: api::BootstrapPlanAction::Run,
            reason: "not bootstrapped yet (no stamp)".into(),
            trigger: Some(api::BootstrapTrigger::Auto),
            script_path: None,
            payload_path: None,
            payload_bytes: None,
            handshake_timeout_secs: None,
            remote_dir: None,
            ssh: None,
            env_keys: vec![],
            verify: None,
            artifact_hash: None,
            metadata_path: None,
            warnings: vec![],
            vizier_status: None,
            vizier_log_path: None,
            vizier_remediation: None,
        }
    }

    fn outcome(
        vm: &str,
        status: api::OutcomeStatus,
        duration_ms: u64,
        log: Option<&str>,
        error: Option<&str>,
    ) -> api::VmOutcome {
        api::VmOutcome {
            vm: vm.into(),
            status,
            duration_ms,
            run_id: None,
            log_path: log.map(Into::into),
            stamp: None,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn durations_are_humanised_and_never_round_up() {
        let cases = [
            (0, "0ms"),
            (85, "85ms"),
            (999, "999ms"),
            (1_000, "1.00s"),
            (1_240, "1.24s"),
            (9_999, "9.99s"),
            (12_345, "12.3s"),
            (59_999, "59.9s"),
            (60_000, "1m00s"),
            (123_000, "2m03s"),
            (3_599_999, "59m59s"),
            (3_600_000, "1h00m"),
            (3_900_000, "1h05m"),
        ];
        for (ms, want) in cases {
            assert_eq!(duration(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn every_event_kind_has_its_plain_line() {
        use api::BootstrapStepKind as K;
        use api::BootstrapStepStatus as S;
        let cases = [
            (
                api::Event::BootstrapPlanned(planned()),
                "web-0  planned  run (not bootstrapped yet (no stamp))",
            ),
            (
                api::Event::BootstrapStarted {
                    vm: "web-0".into(),
                    base_hash: "b".repeat(64),
                    artifact_hash: "9c1185a5c5e9d00d9c1185a5c5e9d00d".into(),
                    trigger: api::BootstrapTrigger::Auto,
                },
                "web-0  started  trigger=auto artifact=9c1185a5c5e9",
            ),
            (
                api::Event::BootstrapProgress {
                    vm: "web-0".into(),
                    step: K::WaitHandshake,
                    waiting_on: "tcp 127.0.0.1:2222: connection refused".into(),
                    elapsed_ms: 4_000,
                },
                "web-0  wait-handshake  waiting: tcp 127.0.0.1:2222: connection refused",
            ),
            (
                api::Event::BootstrapOutput {
                    vm: "web-0".into(),
                    step: K::Apply,
                    stream: api::OutputStream::Stdout,
                    line: "installing nginx".into(),
                },
                "web-0  apply  | installing nginx",
            ),
            (
                api::Event::BootstrapOutput {
                    vm: "web-0".into(),
                    step: K::Verify,
                    stream: api::OutputStream::Stderr,
                    line: "\u{1b}[31mwarn\r".into(),
                },
                "web-0  verify  !  [31mwarn ",
            ),
            (
                step(K::Connect, S::Success, 120, None),
                "web-0  connect  success  120ms",
            ),
            (
                step(
                    K::WaitHandshake,
                    S::Failed,
                    30_000,
                    Some("timed out after 30s"),
                ),
                "web-0  wait-handshake  failed  30.0s  timed out after 30s",
            ),
            (
                api::Event::BootstrapCompleted {
                    vm: "web-0".into(),
                    status: api::BootstrapStatus::NoOp,
                    duration_ms: 1_240,
                    stamp: None,
                },
                "web-0  completed  NoOp  1.24s",
            ),
            (
                api::Event::BootstrapFailed {
                    vm: "web-0".into(),
                    duration_ms: 5,
                    error: "apply: exit status 3".into(),
                },
                "web-0  FAILED  apply: exit status 3",
            ),
        ];
        for (event, want) in cases {
            assert_eq!(event_line(&event, 0), want);
        }
    }

    #[test]
    fn event_lines_pad_the_vm_column() {
        let event = step(
            api::BootstrapStepKind::Transfer,
            api::BootstrapStepStatus::Skipped,
            0,
            None,
        );
        assert_eq!(event_line(&event, 8), "web-0     transfer  skipped  0ms");
    }

    #[test]
    fn finish_lines_mark_success_and_failure() {
        assert_eq!(
            finish_line(true, "web-0", 5, "Success", Some(1_240), None),
            "✓ web-0  Success  1.24s"
        );
        assert_eq!(
            finish_line(
                false,
                "db",
                5,
                "Failed",
                Some(30_000),
                Some("wait-handshake: timed out")
            ),
            "✗ db     Failed  30.0s  wait-handshake: timed out"
        );
        assert_eq!(
            finish_line(false, "db", 2, "Rejected", None, Some("busy")),
            "✗ db  Rejected  busy"
        );
    }

    #[test]
    fn summary_lists_vms_in_order_then_errors() {
        use api::OutcomeStatus as O;
        let o = api::OutcomeResult {
            operation: "op-1".into(),
            project: "demo".into(),
            outcomes: vec![
                outcome("web-0", O::Success, 1_240, Some("/s/logs/web-0.json"), None),
                outcome("web-1", O::NoOp, 85, Some("/s/logs/web-1.json"), None),
                outcome(
                    "web-2",
                    O::Failed,
                    123_000,
                    None,
                    Some("apply: exit status 3"),
                ),
                outcome(
                    "db",
                    O::Rejected,
                    0,
                    None,
                    Some("operation op-0 is bootstrapping it"),
                ),
                outcome("cache", O::Skipped, 0, None, None),
            ],
        };
        assert_eq!(
            summary(&o),
            "\
VM     STATUS    DURATION  LOG
web-0  Success   1.24s     /s/logs/web-0.json
web-1  NoOp      85ms      /s/logs/web-1.json
web-2  Failed    2m03s     -
db     Rejected  -         -
cache  Skipped   0ms       -

web-2: apply: exit status 3
db: operation op-0 is bootstrapping it
"
        );
    }

    #[test]
    fn logs_show_runs_then_the_selected_run() {
        let run = api::RunLog {
            vm: "web-0".into(),
            run_id: "r2".into(),
            artifact_hash: "a".repeat(64),
            base_hash: "b".repeat(64),
            status: api::RunStatus::Failed,
            duration_ms: 31_000,
            steps: vec![
                api::StepRecord {
                    step: api::BootstrapStepKind::Connect,
                    status: api::BootstrapStepStatus::Success,
                    duration_ms: 120,
                    detail: None,
                },
                api::StepRecord {
                    step: api::BootstrapStepKind::Apply,
                    status: api::BootstrapStepStatus::Failed,
                    duration_ms: 30_880,
                    detail: Some("exit status 3".into()),
                },
            ],
            trigger: api::BootstrapTrigger::Always,
            operation: Some("op-2".into()),
            started_at: "2025-01-02T03:04:05.000Z".into(),
            output_path: Some("/s/logs/r2.out".into()),
        };
        let l = api::LogsResult {
            vm: "web-0".into(),
            runs: vec![
                api::RunSummary {
                    run_id: "r1".into(),
                    path: "/s/logs/r1.json".into(),
                    status: api::RunStatus::Success,
                    duration_ms: 1_240,
                    started_at: "2025-01-01T03:04:05.000Z".into(),
                },
                api::RunSummary {
                    run_id: "r2".into(),
                    path: "/s/logs/r2.json".into(),
                    status: api::RunStatus::Failed,
                    duration_ms: 31_000,
                    started_at: "2025-01-02T03:04:05.000Z".into(),
                },
            ],
            log: Some(run),
            log_path: Some("/s/logs/r2.json".into()),
        };
        assert_eq!(
            logs(&l),
            "\
vm web-0

RUN  STATUS   DURATION  STARTED
r1   success  1.24s     2025-01-01T03:04:05.000Z
r2   failed   31.0s     2025-01-02T03:04:05.000Z

run r2  failed  31.0s  trigger always  started 2025-01-02T03:04:05.000Z
artifact aaaaaaaaaaaa  base bbbbbbbbbbbb  operation op-2

STEP     STATUS   DURATION  DETAIL
connect  success  120ms     -
apply    failed   30.8s     exit status 3

log     /s/logs/r2.json
output  /s/logs/r2.out
"
        );
    }

    #[test]
    fn logs_without_runs_say_so() {
        let l = api::LogsResult {
            vm: "db".into(),
            runs: vec![],
            log: None,
            log_path: None,
        };
        assert_eq!(logs(&l), "no bootstrap runs recorded for db\n");
    }

    #[test]
    fn short_hash_is_twelve_chars_or_dash() {
        assert_eq!(short(&Some("0123456789abcdef".into())), "0123456789ab");
        assert_eq!(short(&None), "-");
    }

    #[test]
    fn status_rows_show_what_a_vm_is_doing() {
        let s = api::StatusResult {
            daemon: api::DaemonStatus {
                version: "0.1.0".into(),
                pid: 1,
                uptime_ms: 61_000,
                socket: "/run/c.sock".into(),
                state_dir: "/s".into(),
                base_bytes_hashed: 0,
            },
            projects: vec![api::ProjectStatus {
                name: "lab".into(),
                config: "/p/castra.toml".into(),
                state_root: "/s/p".into(),
                vms: vec![api::VmStatus {
                    name: "box".into(),
                    backend: api::Backend::Qemu,
                    state: api::VmState::Bootstrapping,
                    stamp_path: None,
                    operation: Some("op-1".into()),
                    current_step: Some(api::BootstrapStepKind::WaitHandshake),
                    waiting_on: Some("ssh banner from 127.0.0.1:4022: none yet".into()),
                    last_bootstrap: None,
                    pid: Some(4242),
                    uptime_ms: Some(5_000),
                    accel: Some("tcg".into()),
                    ssh_endpoint: Some("127.0.0.1:4022".into()),
                    vizier: None,
                }],
            }],
        };
        let out = status(&s);
        let row = out.lines().find(|l| l.starts_with("box")).unwrap();
        for part in [
            "qemu",
            "bootstrapping",
            "4242",
            "tcg",
            "127.0.0.1:4022",
            "5s",
            "wait-handshake: ssh banner",
        ] {
            assert!(row.contains(part), "{part} missing from {row:?}");
        }
    }
}
