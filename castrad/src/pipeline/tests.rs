//! The pipeline with a scripted remote, in paused time: every terminal outcome of a run, what
//! its log, events and stamp say, the fallback from ssh to banner probes, and the handshake
//! timeout. The planner, recorder and stamps are real (files in a temp state root); only the
//! guest is scripted: the notes a session sends, and when.

use std::sync::Arc;
use std::time::Duration;

use castra_api::{BootstrapStepKind as Step, Event, OutcomeStatus, OutputStream};
use tokio::time::Instant;

use super::remote::Note;
use super::*;
use crate::config::BootstrapMode;
use crate::overrides::ModeSource;
use crate::pipeline::driver::Marker;
use crate::testutil::{
    Fake, Probe, Script, line_on, marker, out, successful_session, up_to_transfer,
};

/// A project directory, a state root with a disk identity for `web`, and a context.
struct Bench {
    _dir: tempfile::TempDir,
    ctx: Ctx,
    job: Job,
    fake: Arc<Fake>,
}

impl Bench {
    fn new(fake: Arc<Fake>, booting: bool) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("base.img"), b"base").unwrap();
        std::fs::write(d.join("run.sh"), "echo hello\n").unwrap();
        std::fs::create_dir_all(d.join("payload")).unwrap();
        std::fs::write(d.join("payload/p.txt"), "payload").unwrap();
        let root = StateRoot::for_project(&d.join("state"), "p", &d.join("castra.toml"));
        let paths = root.vm("web");
        crate::state_root::ensure_dir(&paths.dir).unwrap();
        std::fs::write(&paths.disk_id, "d1\n").unwrap();
        crate::testutil::fake_disk(&root, "web", &d.join("base.img"));
        let mut vm = crate::testutil::sample_vm(d);
        vm.bootstrap
            .env
            .insert("TOKEN".into(), "hunter2-secret".into());
        let ctx = Ctx {
            bus: EventBus::default(),
            root,
            control_dir: d.join("ssh"),
            snapshot: Arc::new(tokio::sync::watch::channel(VmSnapshot::default()).0),
            remote: fake.clone(),
            slots: Slots::default(),
            images: crate::testutil::store(d),
        };
        // A booting VM is Starting → Running before the run; others are Running already.
        ctx.snapshot
            .send_modify(|s| s.state = crate::vm::state::State::Running);
        let job = Job {
            vm: Arc::new(vm),
            mode: (BootstrapMode::Auto, ModeSource::File),
            extra_warnings: Vec::new(),
            operation: "op-test".into(),
            config: d.join("castra.toml"),
            endpoint: Some(crate::ssh::Endpoint {
                host: "127.0.0.1".into(),
                port: 2222,
            }),
            booting,
            cancel: Cancel::none(),
        };
        Bench {
            _dir: dir,
            ctx,
            job,
            fake,
        }
    }

    async fn run(&self) -> Finished {
        run(self.ctx.clone(), self.job.clone(), None).await
    }

    /// Every event published so far, in order.
    fn events(&self) -> Vec<Event> {
        self.ctx
            .bus
            .history()
            .into_iter()
            .map(|e| e.event.clone())
            .collect()
    }

    /// `kind step status` for each step event, e.g. `apply failed`.
    fn steps(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::BootstrapStep { step, status, .. } => Some(format!(
                    "{} {}",
                    step.as_str(),
                    serde_json::to_value(status).unwrap().as_str().unwrap()
                )),
                _ => None,
            })
            .collect()
    }

    fn log(&self, outcome: &castra_api::VmOutcome) -> serde_json::Value {
        let path = outcome.log_path.as_ref().expect("a run log");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The output lines published so far, in order.
    fn output_lines(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::BootstrapOutput { line, .. } => Some(line),
                _ => None,
            })
            .collect()
    }

    fn stamp_exists(&self) -> bool {
        self.ctx.root.stamp("web").exists()
    }
}

const ALL_STEPS_OK: [&str; 8] = [
    "wait-handshake success",
    "vizier-install success",
    "vizier-enable success",
    "vizier-handshake success",
    "connect success",
    "transfer success",
    "apply success",
    "verify success",
];

#[tokio::test(start_paused = true)]
async fn a_run_that_succeeds_logs_every_step_writes_a_stamp_and_hands_nothing_over() {
    let fake = Fake::new(vec![successful_session(vec![out("hello")])], vec![]);
    let bench = Bench::new(fake, false);
    let finished = bench.run().await;
    let outcome = &finished.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Success, "{outcome:?}");
    assert_eq!(bench.steps(), ALL_STEPS_OK);
    assert!(bench.stamp_exists());
    assert_eq!(
        outcome.stamp.as_deref(),
        Some(bench.ctx.root.stamp("web").as_path())
    );
    let log = bench.log(outcome);
    assert_eq!(log["status"], "success");
    assert_eq!(log["steps"].as_array().unwrap().len(), 8);
    assert_eq!(
        bench.fake.calls(),
        ["session 2222"],
        "no probe for a running VM"
    );
    // The agent's log was mirrored, and the snapshot knows the agent.
    let mirrored = std::fs::read_to_string(bench.ctx.root.vizier_log("web")).unwrap();
    assert_eq!(mirrored, "agent started\n");
    let snap = bench.ctx.snapshot.borrow().clone();
    assert_eq!(snap.vizier.map(|v| v.pid), Some(42));
    assert_eq!(snap.current_step, None);
    assert_eq!(snap.state, crate::vm::state::State::Running);
    let kinds: Vec<&str> = bench
        .events()
        .iter()
        .map(|e| match e {
            Event::BootstrapPlanned(_) => "planned",
            Event::BootstrapStarted { .. } => "started",
            Event::BootstrapCompleted { .. } => "completed",
            Event::BootstrapFailed { .. } => "failed",
            _ => "",
        })
        .filter(|k| !k.is_empty())
        .collect();
    assert_eq!(kinds, ["planned", "started", "completed"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_script_fails_apply_with_its_status_and_last_stderr_line() {
    let mut notes = up_to_transfer();
    notes.push(line_on(OutputStream::Stderr, "boom: disk full"));
    notes.push(marker(Marker::Apply { status: 3 }));
    let script = Script {
        notes,
        status: Some(0),
        last_stderr: "boom: disk full".into(),
        ..Script::default()
    };
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert_eq!(
        error,
        "apply: sh ./run.sh exited with status 3: boom: disk full"
    );
    assert_eq!(bench.steps().last().unwrap(), "apply failed");
    assert!(!bench.stamp_exists());
    let log = bench.log(&outcome);
    assert_eq!(log["status"], "failed");
    let steps = log["steps"].as_array().unwrap();
    assert_eq!(steps.last().unwrap()["step"], "error");
    assert_eq!(steps.last().unwrap()["detail"], error.as_str());
    assert_eq!(
        bench.ctx.snapshot.borrow().state,
        crate::vm::state::State::Failed
    );
}

/// The last stderr line goes into the failure's message: a piece of a split line (which
/// may hold part of a secret, masked only once the pieces are joined) never does.
#[tokio::test(start_paused = true)]
async fn a_split_stderr_line_never_reaches_the_error_message() {
    use crate::ssh::{CONTINUED_PREFIX, SPLIT_SUFFIX};
    let mut notes = up_to_transfer();
    notes.push(line_on(
        OutputStream::Stderr,
        &format!("x hunter2-se{SPLIT_SUFFIX}"),
    ));
    notes.push(line_on(
        OutputStream::Stderr,
        &format!("{CONTINUED_PREFIX}cret"),
    ));
    notes.push(marker(Marker::Apply { status: 1 }));
    let script = Script {
        notes,
        status: Some(0),
        ..Script::default()
    };
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let error = bench.run().await.outcome.error.unwrap();
    assert_eq!(
        error,
        "apply: sh ./run.sh exited with status 1: (a line longer than the 64 KiB cap; see the \
         output log)"
    );
}

#[tokio::test(start_paused = true)]
async fn castra_error_fails_apply_even_when_the_script_exits_zero() {
    let mut notes = up_to_transfer();
    notes.push(out("CASTRA_ERROR: the database is not there"));
    notes.push(marker(Marker::Apply { status: 0 }));
    notes.push(marker(Marker::Done));
    let bench = Bench::new(
        Fake::new(
            vec![Script {
                notes,
                ..Script::default()
            }],
            vec![],
        ),
        false,
    );
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("apply: the script reported CASTRA_ERROR: the database is not there")
    );
    assert!(!bench.stamp_exists());
}

/// The two streams reach castrad apart: the script's stderr may be read before stdout's
/// `transfer` marker. Its lines are the script's by the driver's stderr markers, not by step.
#[tokio::test(start_paused = true)]
async fn castra_error_on_stderr_fails_apply_even_when_it_overtakes_stdout() {
    let mut notes = up_to_transfer();
    let transfer = notes.pop().expect("the transfer marker");
    notes.push(marker(Marker::ScriptStarts));
    notes.push(line_on(
        OutputStream::Stderr,
        "CASTRA_ERROR: simulated failure",
    ));
    notes.push(marker(Marker::ScriptEnds));
    notes.push(transfer);
    notes.push(marker(Marker::Apply { status: 0 }));
    notes.push(marker(Marker::Done));
    let script = Script {
        notes,
        ..Script::default()
    };
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("apply: the script reported CASTRA_ERROR: simulated failure")
    );
    assert!(!bench.stamp_exists());
    let steps_of_the_line: Vec<Step> = bench
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BootstrapOutput { step, line, .. } if line.contains("simulated") => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(steps_of_the_line, [Step::Apply], "the line is the script's");
}

/// A forced run that fails after it got in leaves no stamp: the guest may be half-changed.
/// One that never got in leaves the stamp as it was.
#[tokio::test(start_paused = true)]
async fn a_run_removes_the_stamp_once_it_gets_in_and_only_then() {
    let failing = |notes| Script {
        notes,
        status: Some(255),
        last_stderr: "Connection closed".into(),
        ..Script::default()
    };
    let unreached = Script {
        notes: vec![],
        status: Some(255),
        unauthenticated: Some("root@127.0.0.1: Permission denied (publickey).".into()),
        ..Script::default()
    };
    let mut half = up_to_transfer();
    half.truncate(half.len() - 1);
    let fake = Fake::new(
        vec![successful_session(vec![]), unreached, failing(half)],
        vec![],
    );
    let mut bench = Bench::new(fake, false);
    assert_eq!(bench.run().await.outcome.status, OutcomeStatus::Success);
    let stamp = std::fs::read(bench.ctx.root.stamp("web")).unwrap();
    bench.job.mode = (BootstrapMode::Always, ModeSource::File);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Failed, "{outcome:?}");
    assert_eq!(
        std::fs::read(bench.ctx.root.stamp("web")).unwrap(),
        stamp,
        "never in: the stamp stands"
    );
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Failed, "{outcome:?}");
    assert!(!bench.stamp_exists(), "in, then failed: no stamp");
    bench.job.mode = (BootstrapMode::Auto, ModeSource::File);
    let (root, vm, seen) = (&bench.ctx.root, &bench.job.vm, Default::default());
    let store = &bench.ctx.images;
    let plan = crate::planner::plan_vm(root, store, vm, bench.job.mode, seen, &[]).unwrap();
    assert_eq!(plan.action, crate::planner::Action::Run, "{plan:?}");
}

#[tokio::test(start_paused = true)]
async fn castra_noop_completes_as_noop_with_a_log_and_no_stamp() {
    let script = successful_session(vec![out("CASTRA_NOOP")]);
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::NoOp);
    assert_eq!(bench.log(&outcome)["status"], "noop");
    assert!(!bench.stamp_exists());
}

#[tokio::test(start_paused = true)]
async fn a_missing_verify_path_fails_verify() {
    let mut notes = up_to_transfer();
    notes.push(marker(Marker::Apply { status: 0 }));
    notes.push(marker(Marker::VerifyCommand { status: 0 }));
    notes.push(marker(Marker::VerifyPath { found: false }));
    let script = Script {
        notes,
        status: Some(0),
        ..Script::default()
    };
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(
        outcome.error.as_deref(),
        Some("verify: verify_path done does not exist in /var/tmp/castra/web")
    );
    assert_eq!(bench.steps().last().unwrap(), "verify failed");
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_agent_directory_fails_vizier_install_and_later_markers_are_ignored() {
    let script = Script {
        notes: vec![
            (Duration::from_millis(5), Note::Authenticated),
            marker(Marker::VizierInstall {
                ok: false,
                detail: "cannot write /opt/castra/vizier/v/vizier.sh".into(),
            }),
            // A confused guest goes on: nothing after the first failure counts.
            marker(Marker::Connect {
                ok: true,
                detail: String::new(),
            }),
            marker(Marker::Apply { status: 0 }),
        ],
        status: Some(0),
        ..Script::default()
    };
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(
        bench.steps(),
        ["wait-handshake success", "vizier-install failed"]
    );
    let error = outcome.error.unwrap();
    assert!(error.starts_with("vizier-install: cannot write"), "{error}");
    assert!(error.contains("vizier_dir"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_session_that_dies_mid_run_fails_the_step_it_was_in() {
    let mut notes = up_to_transfer();
    notes.truncate(notes.len() - 1); // ends after `connect`
    let script = Script {
        notes,
        status: Some(255),
        last_stderr: "Connection to 127.0.0.1 closed by remote host.".into(),
        ..Script::default()
    };
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(
        outcome.error.as_deref(),
        Some("transfer: the SSH connection failed: Connection to 127.0.0.1 closed by remote host.")
    );
}

#[tokio::test(start_paused = true)]
async fn a_guest_that_never_answers_fails_wait_handshake_at_its_timeout() {
    let bench = Bench::new(Fake::new(vec![], vec![Probe::Never]), true);
    let t = Instant::now();
    let outcome = bench.run().await.outcome;
    let waited = t.elapsed();
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert!(
        waited >= Duration::from_secs(120) && waited < Duration::from_secs(121),
        "{waited:?}"
    );
    assert_eq!(bench.steps(), ["wait-handshake failed"]);
    assert!(
        outcome
            .error
            .unwrap()
            .starts_with("wait-handshake: timed out"),
        "the probe's reason"
    );
    assert_eq!(bench.fake.calls(), ["probe"], "no ssh before a banner");
    let progress = bench
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::BootstrapProgress { .. }))
        .count();
    assert!(progress >= 1, "the wait said what it waits on");
}

#[tokio::test(start_paused = true)]
async fn ssh_that_cannot_reach_a_running_vm_falls_back_to_probing_then_succeeds() {
    let refused = Script {
        status: Some(255),
        unauthenticated: Some(
            "ssh: connect to host 127.0.0.1 port 2222: Connection refused".into(),
        ),
        ..Script::default()
    };
    let fake = Fake::new(
        vec![refused, successful_session(vec![])],
        vec![Probe::After(Duration::from_secs(4))],
    );
    let bench = Bench::new(fake, false);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Success, "{outcome:?}");
    assert_eq!(
        bench.fake.calls(),
        ["session 2222", "probe", "session 2222"]
    );
    // One wait-handshake step, however many attempts it took.
    assert_eq!(bench.steps(), ALL_STEPS_OK);
}

#[tokio::test(start_paused = true)]
async fn a_refused_key_fails_at_once_without_probing() {
    let denied = Script {
        status: Some(255),
        unauthenticated: Some("root@127.0.0.1: Permission denied (publickey).".into()),
        ..Script::default()
    };
    let bench = Bench::new(Fake::new(vec![denied], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(bench.fake.calls(), ["session 2222"]);
    assert!(
        outcome
            .error
            .unwrap()
            .contains("Permission denied (publickey)"),
        "ssh's reason"
    );
}

#[tokio::test(start_paused = true)]
async fn env_values_are_redacted_from_events_and_the_output_file() {
    let script = successful_session(vec![out("token is hunter2-secret, ok")]);
    let bench = Bench::new(Fake::new(vec![script], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Success);
    let lines: Vec<String> = bench
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BootstrapOutput { line, .. } => Some(line),
            _ => None,
        })
        .collect();
    assert_eq!(lines, ["token is [TOKEN redacted], ok"]);
    let log = bench.log(&outcome);
    let output = std::fs::read_to_string(log["output_path"].as_str().unwrap()).unwrap();
    assert_eq!(output, "apply out token is [TOKEN redacted], ok\n");
    let everything = serde_json::to_string(&bench.events()).unwrap()
        + &std::fs::read_to_string(outcome.log_path.unwrap()).unwrap();
    assert!(!everything.contains("hunter2"));
}

#[tokio::test(start_paused = true)]
async fn a_rerun_after_success_is_a_noop_without_touching_the_guest() {
    let fake = Fake::new(vec![successful_session(vec![])], vec![]);
    let bench = Bench::new(fake, false);
    assert_eq!(bench.run().await.outcome.status, OutcomeStatus::Success);
    let again = bench.run().await.outcome;
    assert_eq!(again.status, OutcomeStatus::NoOp);
    assert_eq!(bench.fake.calls(), ["session 2222"], "one session in all");
}

/// `up_to_transfer`, with the driver's cloud-init marker right after authentication.
fn with_cloud_init(marker_: Marker) -> Vec<(Duration, Note)> {
    let mut notes = up_to_transfer();
    notes.insert(1, (Duration::from_secs(20), Note::Marker(marker_)));
    notes
}

fn cloud_init_bench(fake: Arc<Fake>) -> Bench {
    let mut bench = Bench::new(fake, false);
    Arc::make_mut(&mut bench.job.vm).cloud_init.enabled = true;
    bench
}

#[tokio::test(start_paused = true)]
async fn a_cloud_init_guest_is_bootstrapped_once_cloud_init_is_done() {
    let mut notes = with_cloud_init(Marker::CloudInit {
        ok: true,
        detail: "done".into(),
    });
    notes.extend([
        marker(Marker::Apply { status: 0 }),
        marker(Marker::VerifyCommand { status: 0 }),
        marker(Marker::VerifyPath { found: true }),
        marker(Marker::Done),
    ]);
    let script = Script {
        notes,
        ..Script::default()
    };
    let bench = cloud_init_bench(Fake::new(vec![script], vec![]));
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Success, "{outcome:?}");
    let handshake = bench
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::BootstrapStep {
                step,
                detail,
                duration_ms,
                ..
            } if step.as_str() == "wait-handshake" => Some((detail.unwrap(), duration_ms)),
            _ => None,
        })
        .unwrap();
    assert!(
        handshake.0.ends_with("; cloud-init: done"),
        "{}",
        handshake.0
    );
    assert!(
        handshake.1 >= 20_000,
        "the wait for cloud-init is part of the step"
    );
    let waited_on: Vec<String> = bench
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BootstrapProgress { waiting_on, .. } => Some(waiting_on),
            _ => None,
        })
        .collect();
    assert!(
        waited_on.contains(&"cloud-init to finish in the guest".to_owned()),
        "{waited_on:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cloud_init_error_fails_wait_handshake_with_its_words_and_logs() {
    let script = Script {
        notes: with_cloud_init(Marker::CloudInit {
            ok: false,
            detail:
                "status: error detail: DataSourceNoCloud errors: ('users-groups', KeyError('x'))"
                    .into(),
        }),
        status: Some(0),
        ..Script::default()
    };
    let bench = cloud_init_bench(Fake::new(vec![script], vec![]));
    let outcome = bench.run().await.outcome;
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("wait-handshake: cloud-init failed in the guest: status: error"),
        "{error}"
    );
    assert!(error.contains("users-groups") && error.contains("/var/log/cloud-init.log"));
    assert_eq!(
        bench.steps(),
        ["wait-handshake failed"],
        "nothing after it ran"
    );
}

#[tokio::test(start_paused = true)]
async fn cloud_init_that_never_finishes_times_out_with_the_handshake() {
    let script = Script {
        notes: vec![
            (Duration::from_secs(1), Note::Authenticated),
            (Duration::from_secs(3600), Note::Marker(Marker::Done)),
        ],
        ..Script::default()
    };
    let bench = cloud_init_bench(Fake::new(vec![script], vec![]));
    let t = Instant::now();
    let outcome = bench.run().await.outcome;
    assert!(t.elapsed() < Duration::from_secs(121), "{:?}", t.elapsed());
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("wait-handshake: timed out after 120s waiting for cloud-init"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_noop_on_a_vm_this_job_booted_waits_until_the_guest_lets_us_in() {
    let fake = Fake::new(
        vec![successful_session(vec![])],
        vec![Probe::After(Duration::from_secs(9))],
    );
    let mut bench = Bench::new(fake, false);
    assert_eq!(bench.run().await.outcome.status, OutcomeStatus::Success);
    let logs_after_the_run = std::fs::read_dir(bench.ctx.root.bootstrap_logs_dir())
        .unwrap()
        .count();
    // The VM was stopped and started again by this job: the stamp still matches.
    bench.job.booting = true;
    let t = Instant::now();
    let again = bench.run().await.outcome;
    assert_eq!(again.status, OutcomeStatus::NoOp);
    assert!(
        t.elapsed() >= Duration::from_secs(9),
        "waited for the banner"
    );
    assert_eq!(
        bench.fake.calls(),
        ["session 2222", "probe", "login 2222"],
        "a banner, then a login that runs nothing"
    );
    let logs = std::fs::read_dir(bench.ctx.root.bootstrap_logs_dir())
        .unwrap()
        .count();
    assert_eq!(logs, logs_after_the_run, "a NoOp writes no log");
}

#[tokio::test(start_paused = true)]
async fn a_booted_vm_that_refuses_us_fails_even_when_its_bootstrap_is_a_noop() {
    let fake = Fake::new(
        vec![successful_session(vec![])],
        vec![Probe::After(Duration::from_secs(1))],
    );
    let mut bench = Bench::new(fake, false);
    assert_eq!(bench.run().await.outcome.status, OutcomeStatus::Success);
    *bench.fake.denied.lock().unwrap() =
        Some("dev@127.0.0.1: Permission denied (publickey).".into());
    bench.job.booting = true;
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("wait-handshake: ") && error.contains("Permission denied"),
        "{error}"
    );
}

/// A booting guest's sshd may close a connection after its banner (cloud-init restarts it):
/// the handshake probes again and retries until the deadline, not just once.
#[tokio::test(start_paused = true)]
async fn a_booting_guest_that_drops_the_first_connection_is_tried_again() {
    let dropped = || Script {
        status: Some(255),
        unauthenticated: Some(
            "kex_exchange_identification: Connection closed by remote host".into(),
        ),
        ..Script::default()
    };
    let fake = Fake::new(
        vec![dropped(), dropped(), successful_session(vec![])],
        vec![Probe::After(Duration::from_secs(20)); 3],
    );
    let bench = Bench::new(fake, true);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Success, "{outcome:?}");
    assert_eq!(
        bench.fake.calls(),
        [
            "probe",
            "session 2222",
            "probe",
            "session 2222",
            "probe",
            "session 2222"
        ]
    );
    assert_eq!(bench.steps(), ALL_STEPS_OK, "one wait-handshake step");
}

/// Issue 14 item 8: the reader splits a long line into pieces; an env value that a split cuts
/// in two is masked all the same, wherever the cut falls, and no piece shows part of it.
#[tokio::test(start_paused = true)]
async fn env_values_are_redacted_across_a_split_line() {
    use crate::ssh::{CONTINUED_PREFIX, SPLIT_SUFFIX};
    let text = "token is hunter2-secret, ok";
    for cut in 0..=text.len() {
        let pieces = vec![
            out(&format!("{}{SPLIT_SUFFIX}", &text[..cut])),
            out(&format!("{CONTINUED_PREFIX}{}", &text[cut..])),
        ];
        let bench = Bench::new(Fake::new(vec![successful_session(pieces)], vec![]), false);
        let outcome = bench.run().await.outcome;
        assert_eq!(outcome.status, OutcomeStatus::Success);
        let lines = bench.output_lines();
        let joined: String = lines
            .iter()
            .map(|l| {
                let l = l.strip_prefix(CONTINUED_PREFIX).unwrap_or(l);
                l.strip_suffix(SPLIT_SUFFIX).unwrap_or(l)
            })
            .collect();
        assert_eq!(
            joined, "token is [TOKEN redacted], ok",
            "cut at {cut}: {lines:?}"
        );
        for part in ["hun", "2-s", "ret", "hunter2-secret"] {
            assert!(
                !lines.iter().any(|l| l.contains(part)),
                "cut at {cut}: {part} in {lines:?}"
            );
        }
        let log = bench.log(&outcome);
        let output = std::fs::read_to_string(log["output_path"].as_str().unwrap()).unwrap();
        assert!(
            !output.contains("2-s") && !output.contains("hun"),
            "{output}"
        );
    }
}

/// Issue 14 item 8: the session's notes travel on a bounded channel; a session that prints
/// far more than it holds waits for the step machine, which keeps draining: the run ends, with
/// every line recorded in order.
#[tokio::test(start_paused = true)]
async fn output_beyond_the_notes_buffer_is_all_recorded() {
    let n = super::remote::NOTES_BUFFER * 20;
    let lines: Vec<_> = (0..n).map(|i| out(&format!("line {i}"))).collect();
    let bench = Bench::new(Fake::new(vec![successful_session(lines)], vec![]), false);
    let outcome = bench.run().await.outcome;
    assert_eq!(outcome.status, OutcomeStatus::Success);
    let seen = bench.output_lines();
    let want: Vec<String> = (0..n).map(|i| format!("line {i}")).collect();
    assert_eq!(seen, want);
}
