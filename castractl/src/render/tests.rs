//! Each rendering against the exact text a user sees.

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
        base_image: None,
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
        disk_mib: None,
        network_address: None,
        drift: Vec::new(),
        mounts: Vec::new(),
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
        error_kind: None,
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
            "web-0  verify  ! \\x1b[31mwarn\\r",
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
fn sizes_are_binary_units_truncated() {
    let cases = [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1023.9 KiB"),
        (356 * 1024 * 1024 + 512 * 1024, "356.5 MiB"),
        (3 << 30, "3.0 GiB"),
        (u64::MAX, "15.9 EiB"),
    ];
    for (n, want) in cases {
        assert_eq!(bytes(n), want, "{n} bytes");
    }
}

#[test]
fn an_image_fetch_says_how_far_how_fast_and_how_long() {
    let fetch = |phase: &str, done, total, rate| api::Event::ImageFetch {
        vm: "web-0".into(),
        source: "https://h/debian.qcow2".into(),
        phase: phase.into(),
        bytes_done: done,
        bytes_total: total,
        rate_bps: rate,
    };
    let mib = 1024 * 1024;
    let cases = [
        (
            fetch("checksums", 0, None, 0),
            "checksums  https://h/debian.qcow2",
        ),
        (
            fetch("download", 120 * mib, Some(340 * mib), 11 * mib),
            "download  120.0 MiB of 340.0 MiB (35%), 11.0 MiB/s, 20.0s left  \
             https://h/debian.qcow2",
        ),
        (
            fetch("download", 120 * mib, None, 11 * mib),
            "download  120.0 MiB, 11.0 MiB/s  https://h/debian.qcow2",
        ),
        (
            fetch("resume", 0, Some(340 * mib), 0),
            "resume  0 B of 340.0 MiB (0%)  https://h/debian.qcow2",
        ),
        (
            fetch("done", 340 * mib, Some(340 * mib), 11 * mib),
            "done  340.0 MiB  https://h/debian.qcow2",
        ),
    ];
    for (event, want) in cases {
        assert_eq!(event_line(&event, 0), format!("web-0  image  {want}"));
    }
    // castra.imagePull's events are about no VM.
    let pull = api::Event::ImageFetch {
        vm: String::new(),
        source: "https://h/debian.qcow2".into(),
        phase: "import".into(),
        bytes_done: 0,
        bytes_total: None,
        rate_bps: 0,
    };
    assert_eq!(
        event_line(&pull, 5),
        "-      image  import  0 B  https://h/debian.qcow2"
    );
}

#[test]
fn a_plan_shows_each_base_image_and_marks_the_unverified() {
    let image = |source: &str, status, verified, message: &str| api::BaseImagePlan {
        source: source.into(),
        digest: None,
        status,
        verified,
        message: message.into(),
    };
    let p = api::PlanResult {
        project: "demo".into(),
        config: "/p/castra.toml".into(),
        state_root: "/s".into(),
        host_paths: vec![],
        vms: vec![
            api::BootstrapPlanned {
                base_image: Some(image(
                    "debian-12",
                    api::BaseImageStatus::Stored,
                    true,
                    "in the image store (sha256:0123456789ab)",
                )),
                ..planned()
            },
            api::BootstrapPlanned {
                vm: "db".into(),
                base_image: Some(image(
                    "https://h/x.img",
                    api::BaseImageStatus::Fetch,
                    false,
                    "`up` downloads it from https://h/x.img (no checksum: kept as it comes)",
                )),
                ..planned()
            },
            api::BootstrapPlanned {
                vm: "ext".into(),
                ..planned()
            },
        ],
    };
    let out = plan(&p);
    let images = &out[out.find("base images:").expect("a base images section")..];
    assert_eq!(
        images,
        "base images:\n\
         \x20 web-0  stored             in the image store (sha256:0123456789ab)\n\
         \x20 db     fetch, UNVERIFIED  `up` downloads it from https://h/x.img (no checksum: kept \
         as it comes)\n"
    );
    // No VM with a base image, no section.
    let none = api::PlanResult {
        vms: vec![planned()],
        ..p
    };
    assert!(!plan(&none).contains("base images"));
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
        output_dropped_bytes: 2048,
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
output  /s/logs/r2.out (cut at its cap: 2048 bytes dropped)
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

fn status_fixture() -> api::StatusResult {
    api::StatusResult {
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
                state_reason: None,
                stamp_path: None,
                operation: Some("op-1".into()),
                current_step: Some(api::BootstrapStepKind::WaitHandshake),
                waiting_on: Some("ssh banner from 127.0.0.1:4022: none yet".into()),
                last_bootstrap: None,
                pid: Some(4242),
                uptime_ms: Some(5_000),
                accel: Some("tcg".into()),
                ssh_endpoint: Some("127.0.0.1:4022".into()),
                disk_mib: Some(20 * 1024),
                network_address: None,
                mounts: vec![api::VmMount {
                    host: "/p/src".into(),
                    guest: "/src".into(),
                    readonly: true,
                    transport: Some(api::MountTransport::Virtiofs),
                }],
                vizier: None,
            }],
        }],
    }
}

#[test]
fn status_rows_show_what_a_vm_is_doing() {
    let s = status_fixture();
    let out = status(&s);
    let row = out.lines().find(|l| l.starts_with("box")).unwrap();
    for part in [
        "qemu",
        "bootstrapping",
        "4242",
        "tcg",
        "127.0.0.1:4022",
        "20 GiB",
        "5s",
        "wait-handshake: ssh banner",
    ] {
        assert!(row.contains(part), "{part} missing from {row:?}");
    }
    assert!(
        out.contains("\nmounts:\n  box: /p/src -> /src (ro, virtiofs)\n"),
        "{out}"
    );

    let mut s = s;
    let vm = &mut s.projects[0].vms[0];
    vm.state = api::VmState::Unresponsive;
    vm.state_reason = Some("QMP: no answer within 2s".into());
    (vm.operation, vm.current_step, vm.waiting_on) = (None, None, None);
    let out = status(&s);
    let row = out.lines().find(|l| l.starts_with("box")).unwrap();
    assert!(
        row.contains("unresponsive") && row.contains("QMP: no answer within 2s"),
        "{row:?}"
    );
}

/// The project network's addresses get a column only when some VM has one.
#[test]
fn status_shows_project_addresses_only_on_a_network() {
    let s = status_fixture();
    assert!(!status(&s).contains("ADDRESS"));
    let mut s = s;
    s.projects[0].vms[0].network_address = Some("10.120.7.10".into());
    let out = status(&s);
    let header = out.lines().find(|l| l.starts_with("VM")).unwrap();
    assert!(
        header.contains("SSH") && header.contains("ADDRESS"),
        "{header}"
    );
    assert!(header.find("SSH") < header.find("ADDRESS"), "{header}");
    let row = out.lines().find(|l| l.starts_with("box")).unwrap();
    assert!(row.contains("10.120.7.10"), "{row}");
}

#[test]
fn escape_makes_control_characters_visible() {
    let cases = [
        ("plain text, é, 日本, ✓", "plain text, é, 日本, ✓"),
        ("tab\tstays", "tab\tstays"),
        ("\u{1b}]0;pwned\u{7}\u{1b}[2J", "\\x1b]0;pwned\\x07\\x1b[2J"),
        ("cr\rback", "cr\\rback"),
        ("nul\0 del\u{7f}", "nul\\x00 del\\x7f"),
        (
            "csi\u{9b}31m osc\u{9d}0;x\u{9c}",
            "csi\\u{9b}31m osc\\u{9d}0;x\\u{9c}",
        ),
        ("\u{80}\u{9f}\u{a0}", "\\u{80}\\u{9f}\u{a0}"),
        (
            "abc\u{202e}fed\u{202c} \u{2066}x\u{2069}",
            "abc\\u{202e}fed\\u{202c} \\u{2066}x\\u{2069}",
        ),
        ("a\\x1b b", "a\\x1b b"),
    ];
    for (raw, want) in cases {
        assert_eq!(escape(raw), want, "{raw:?}");
        assert_eq!(escape_line(raw), want, "{raw:?}");
    }
    assert_eq!(escape("two\nlines\n"), "two\nlines\n");
    assert_eq!(escape_line("two\nlines\n"), "two\\nlines\\n");
}

#[test]
fn escape_borrows_clean_text_and_is_idempotent() {
    assert!(matches!(escape("fine\n"), Cow::Borrowed(_)));
    assert!(matches!(escape_line("fine\tline"), Cow::Borrowed(_)));
    let nasty = "\u{1b}[2J\u{9b}1m\u{202e}\r\n\u{7}";
    let once = escape_line(nasty).into_owned();
    assert_eq!(escape_line(&once), once);
    assert_eq!(escape(&once), once);
}

/// What the guest can put in a string: an escape sequence, a bell, a C1 CSI, a bidi override,
/// a carriage return and a newline.
const HOSTILE: &str = "x\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{202e}\r\ny";

/// No control character (but newline and tab in a multi-line text) and no bidi override; and
/// the hostile text is there, escaped.
fn assert_tame(out: &str, one_line: bool) {
    for c in out.chars() {
        let ok = !c.is_control() || c == '\t' || (!one_line && c == '\n');
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        assert!(ok && !bidi, "{c:?} in {out:?}");
    }
    assert!(
        out.contains("x\\x1b]0;pwned\\x07\\x1b[2J\\u{9b}31m\\u{202e}\\r"),
        "{out:?}"
    );
}

#[test]
fn hostile_text_is_escaped_in_every_rendering() {
    use api::BootstrapStepKind as K;
    let h = || HOSTILE.to_owned();
    let vm = || "web-0".to_owned();
    let events = [
        api::Event::BootstrapPlanned(api::BootstrapPlanned {
            reason: h(),
            ..planned()
        }),
        step(K::Apply, api::BootstrapStepStatus::Failed, 1, Some(HOSTILE)),
        api::Event::BootstrapProgress {
            vm: vm(),
            step: K::WaitHandshake,
            waiting_on: h(),
            elapsed_ms: 0,
        },
        api::Event::BootstrapOutput {
            vm: vm(),
            step: K::Apply,
            stream: api::OutputStream::Stderr,
            line: h(),
        },
        api::Event::BootstrapFailed {
            vm: vm(),
            duration_ms: 1,
            error: h(),
        },
        api::Event::VmLaunched {
            vm: vm(),
            pid: 1,
            accel: "tcg".into(),
            accel_reason: h(),
            ssh_port: 22,
        },
        api::Event::VmExited {
            vm: vm(),
            reason: h(),
        },
        api::Event::CooperativeAttempted {
            vm: vm(),
            method: h(),
            timeout_ms: 1,
        },
        api::Event::CooperativeTimedOut {
            vm: vm(),
            waited_ms: 1,
            reason: h(),
        },
        api::Event::ShutdownEscalated {
            vm: vm(),
            signal: h(),
            timeout_ms: 1,
        },
        api::Event::OverlayPrepared {
            vm: vm(),
            overlay_path: HOSTILE.into(),
        },
        api::Event::EphemeralLayerDiscarded {
            vm: vm(),
            overlay_path: HOSTILE.into(),
            reclaimed_bytes: 1,
        },
        api::Event::VizierConnected {
            vm: vm(),
            version: h(),
        },
        api::Event::VizierLost {
            vm: vm(),
            reason: h(),
        },
        api::Event::BootstrapStarted {
            vm: h(),
            base_hash: String::new(),
            artifact_hash: "a".into(),
            trigger: api::BootstrapTrigger::Auto,
        },
    ];
    for event in &events {
        assert_tame(&event_line(event, 0), true);
    }
    assert_tame(
        &finish_line(false, HOSTILE, 5, "Failed", Some(1), Some(HOSTILE)),
        true,
    );

    // Tables and their notes: a value stays on its own line, in its own cell.
    let o = api::OutcomeResult {
        operation: "op-1".into(),
        project: "demo".into(),
        outcomes: vec![outcome(
            "web-0",
            api::OutcomeStatus::Failed,
            1,
            Some(HOSTILE),
            Some(HOSTILE),
        )],
    };
    let out = summary(&o);
    assert_tame(&out, false);
    assert_eq!(out.lines().count(), 4, "{out}");

    let plan_result = api::PlanResult {
        project: "demo".into(),
        config: "/p/castra.toml".into(),
        state_root: "/s".into(),
        host_paths: vec![],
        vms: vec![api::BootstrapPlanned {
            reason: h(),
            warnings: vec![h()],
            drift: vec![api::Drift {
                vm: "web-0".into(),
                setting: "cpus".into(),
                running: "2".into(),
                configured: "4".into(),
                message: h(),
                restart_applies: true,
            }],
            ..planned()
        }],
    };
    let out = plan(&plan_result);
    assert_tame(&out, false);
    assert_eq!(out.lines().count(), 11, "{out}");

    let down_result = api::DownResult {
        operation: "op-1".into(),
        project: "demo".into(),
        vms: vec![api::VmDown {
            vm: vm(),
            outcome: api::StopOutcome::Graceful,
            total_ms: 1,
            discarded: false,
            error: Some(h()),
        }],
    };
    let out = down(&down_result);
    assert_tame(&out, false);
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn plan_lists_host_paths_with_why_they_are_allowed() {
    let shared = api::HostPathPlanned {
        key: "vms[0].mounts[0].host".into(),
        path: "/data/shared".into(),
        access: api::HostPathAccess::ShareReadWrite,
        grant: "allowed_path".into(),
        allowed_by: Some("/data".into()),
    };
    let mut run = shared.clone();
    (run.key, run.path, run.access) = ("k".into(), "/p/run.sh".into(), api::HostPathAccess::Read);
    (run.grant, run.allowed_by) = ("project".into(), None);
    let p = api::PlanResult {
        project: "demo".into(),
        config: "/p/castra.toml".into(),
        state_root: "/s".into(),
        vms: vec![],
        host_paths: vec![run, shared],
    };
    let text = plan(&p);
    for line in [
        "host paths (what the project reads or shares here):",
        "read              /p/run.sh     inside the project   k",
        "share-read-write  /data/shared  allowed_paths /data  vms[0].mounts[0].host",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
}
