//! The VM actor with a fake backend and a scripted remote, in paused time: busy replies that
//! never wait, every terminal outcome, a machine that dies under a run, the stop sequence and
//! its events, castrad shutting down mid-run, and the supervisor restarting a panicked actor
//! (its run recorded as failed, its machine adopted again, its handle still valid).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use castra_api::{OutcomeStatus, StopOutcome, VmOutcome};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use super::state::{MachineInfo, State, VmSnapshot};
use super::*;
use crate::backend::{Backend, BackendError, Machine, PreflightError, StopPlan, StopStep, Stopped};
use crate::config::{BackendKind, BootstrapMode, Vm};
use crate::events::EventBus;
use crate::overrides::ModeSource;
use crate::pipeline::{self, Job};
use crate::ssh::Endpoint;
use crate::state_root::StateRoot;
use crate::testutil::{Fake, Probe, Script, out, successful_session};

/// A machine whose end the test decides.
#[derive(Debug)]
struct FakeMachine {
    gone: watch::Receiver<bool>,
    /// Polling `exited` panics after this long (an actor loop that panics).
    panic_after: Option<Duration>,
    stop_takes: Duration,
    unresponsive: Option<String>,
    /// Still running after the stop's last signal.
    survives: bool,
}

impl Machine for FakeMachine {
    fn info(&self) -> MachineInfo {
        MachineInfo {
            pid: 4242,
            accel: "tcg".into(),
            accel_reason: "a fake".into(),
            ssh_port: 2222,
            launched_unix_ms: 1,
            unresponsive: self.unresponsive.clone(),
            settings: None,
            mount_transport: None,
        }
    }

    fn alive(&mut self) -> bool {
        !*self.gone.borrow()
    }

    fn exited(&mut self) -> BoxFuture<'_, ()> {
        let panic_after = self.panic_after;
        Box::pin(async move {
            if let Some(after) = panic_after {
                tokio::time::sleep(after).await;
                panic!("a bug in the actor loop");
            }
            let _ = self.gone.wait_for(|gone| *gone).await;
        })
    }

    fn stop<'a>(
        self: Box<Self>,
        plan: StopPlan,
        report: &'a mut (dyn FnMut(StopStep) + Send),
    ) -> BoxFuture<'a, Stopped> {
        Box::pin(async move {
            report(StopStep::CooperativeAttempted {
                timeout: plan.graceful,
            });
            tokio::time::sleep(self.stop_takes).await;
            if self.survives {
                return Stopped::Survived;
            }
            report(StopStep::CooperativeSucceeded {
                elapsed: self.stop_takes,
            });
            Stopped::Graceful
        })
    }
}

/// A backend whose machines are [`FakeMachine`]s.
#[derive(Debug, Default)]
struct FakeBackend {
    launches: AtomicUsize,
    adoptions: AtomicUsize,
    boot_takes: Duration,
    fail_launch: bool,
    /// The machines it launches panic the actor loop after this long.
    panic_after: Option<Duration>,
    /// Ends every machine it made when set to true.
    gone: Mutex<Option<watch::Sender<bool>>>,
    disk: AtomicBool,
    /// A machine already runs when the actor starts, not answering for this reason.
    found_unresponsive: Option<String>,
    /// Its machines survive being stopped.
    survive_stops: bool,
}

impl FakeBackend {
    fn machine(&self, panic_after: Option<Duration>) -> Box<dyn Machine> {
        let (tx, rx) = watch::channel(false);
        *self.gone.lock().unwrap() = Some(tx);
        Box::new(FakeMachine {
            gone: rx,
            panic_after,
            stop_takes: Duration::from_secs(20),
            unresponsive: self.found_unresponsive.clone(),
            survives: self.survive_stops,
        })
    }

    /// The guest powers off.
    fn power_off(&self) {
        if let Some(tx) = self.gone.lock().unwrap().as_ref() {
            let _ = tx.send(true);
        }
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn owns_lifecycle(&self) -> bool {
        true
    }

    fn ssh_endpoint(&self, _: &Vm, machine: Option<&MachineInfo>) -> Option<Endpoint> {
        Some(Endpoint {
            host: "127.0.0.1".into(),
            port: machine?.ssh_port,
        })
    }

    fn preflight(&self, _: &StateRoot, _: &[&Vm]) -> Result<(), PreflightError> {
        Ok(())
    }

    fn prepare_disk<'a>(
        &'a self,
        root: &'a StateRoot,
        vm: &'a Vm,
        _: crate::backend::DiskInputs<'a>,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, BackendError>> {
        Box::pin(async move {
            let new = !self.disk.swap(true, Ordering::SeqCst);
            Ok(new.then(|| root.vm(&vm.name).overlay))
        })
    }

    fn launch<'a>(
        &'a self,
        _: &'a StateRoot,
        _: &'a Vm,
        _: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>, BackendError>> {
        Box::pin(async move {
            self.launches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.boot_takes).await;
            if self.fail_launch {
                return Err(BackendError::NoBaseImage);
            }
            Ok(self.machine(self.panic_after))
        })
    }

    fn running_records(&self, _: &StateRoot) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    fn adopt<'a>(
        &'a self,
        _: &'a StateRoot,
        _: &'a str,
    ) -> BoxFuture<'a, Option<Box<dyn Machine>>> {
        Box::pin(async move {
            let running = self
                .gone
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|gone| !*gone.borrow());
            if !running && self.found_unresponsive.is_none() {
                return None;
            }
            self.adoptions.fetch_add(1, Ordering::SeqCst);
            Some(self.machine(None))
        })
    }

    fn forget(&self, _: &StateRoot, _: &str) {}

    fn discard(&self, root: &StateRoot, vm: &str) -> Result<Option<(PathBuf, u64)>, BackendError> {
        let had = self.disk.swap(false, Ordering::SeqCst);
        Ok(had.then(|| (root.vm(vm).overlay, 4096)))
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    handle: VmHandle,
    backend: Arc<FakeBackend>,
    bus: EventBus,
    vm: Arc<Vm>,
    tracker: tokio_util::task::TaskTracker,
    remote: Arc<Fake>,
    /// The daemon's slots (32), which the actor's runs share.
    slots: pipeline::Slots,
}

impl Bench {
    fn new(backend: FakeBackend, sessions: Vec<Script>) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("base.img"), b"base").unwrap();
        std::fs::write(d.join("run.sh"), "echo hello\n").unwrap();
        std::fs::create_dir_all(d.join("payload")).unwrap();
        let root = StateRoot::for_project(&d.join("state"), "p", &d.join("castra.toml"));
        let paths = root.vm("web");
        crate::state_root::ensure_dir(&paths.dir).unwrap();
        std::fs::write(&paths.disk_id, "d1\n").unwrap();
        crate::testutil::fake_disk(&root, "web", &d.join("base.img"));
        let backend = Arc::new(backend);
        let bus = EventBus::default();
        let remote = Fake::new(sessions, vec![Probe::After(Duration::from_secs(3)); 4]);
        let slots = pipeline::Slots::default();
        let ctx = ActorCtx {
            pipeline: pipeline::Ctx {
                bus: bus.clone(),
                root,
                control_dir: d.join("ssh"),
                snapshot: Arc::new(watch::channel(VmSnapshot::default()).0),
                // A booted guest answers a probe after 3 s.
                remote: remote.clone(),
                slots: slots.clone(),
                images: crate::testutil::store(d),
            },
            backend: backend.clone(),
        };
        let tracker = tokio_util::task::TaskTracker::new();
        let handle = spawn("web", ctx, None, &tracker);
        Bench {
            vm: Arc::new(crate::testutil::sample_vm(d)),
            _dir: dir,
            handle,
            backend,
            bus,
            tracker,
            remote,
            slots,
        }
    }

    fn job(&self, operation: &str, mode: BootstrapMode) -> Job {
        Job {
            vm: self.vm.clone(),
            mode: (mode, ModeSource::File),
            extra_warnings: Vec::new(),
            operation: operation.into(),
            config: PathBuf::from("/p/castra.toml"),
            endpoint: None,
            booting: false,
            cancel: crate::pipeline::Cancel::none(),
        }
    }

    /// Sends `up`; returns the outcome's receiver (the up itself must be accepted).
    async fn up(&self, operation: &str) -> watch::Receiver<Option<VmOutcome>> {
        self.up_with(operation, BootstrapMode::Auto).await.unwrap()
    }

    async fn up_with(
        &self,
        operation: &str,
        mode: BootstrapMode,
    ) -> Result<watch::Receiver<Option<VmOutcome>>, Busy> {
        let (tx, rx) = watch::channel(None);
        self.handle.up(self.job(operation, mode), tx).await?;
        Ok(rx)
    }

    fn down_request(&self, discard: bool) -> DownRequest {
        DownRequest {
            operation: "op-down".into(),
            discard,
            graceful: Duration::from_secs(30),
            term: Duration::from_secs(10),
        }
    }

    fn kinds(&self, operation: &str) -> Vec<String> {
        self.bus
            .history()
            .into_iter()
            .filter(|e| e.operation.as_deref() == Some(operation))
            .map(|e| {
                let v = serde_json::to_value(&e.event).unwrap();
                v.as_object().unwrap().keys().next().unwrap().clone()
            })
            .collect()
    }
}

/// The bootstrap events of `kinds` (progress and output left out), checked against the
/// per-VM rule of PROTOCOL.md: exactly one terminal event, and it is the last; `Started` and
/// steps only after `Planned`.
fn bootstrap_story(kinds: &[String]) -> Vec<String> {
    let story: Vec<String> = kinds
        .iter()
        .filter(|k| k.starts_with("Bootstrap"))
        .filter(|k| *k != "BootstrapProgress" && *k != "BootstrapOutput")
        .cloned()
        .collect();
    let terminal = |k: &String| k == "BootstrapCompleted" || k == "BootstrapFailed";
    assert_eq!(story.iter().filter(|k| terminal(k)).count(), 1, "{story:?}");
    assert!(story.last().is_some_and(terminal), "{story:?}");
    if story.len() > 1 {
        assert_eq!(story[0], "BootstrapPlanned", "{story:?}");
    }
    story
}

async fn outcome_of(mut rx: watch::Receiver<Option<VmOutcome>>) -> VmOutcome {
    rx.wait_for(Option::is_some).await.unwrap().clone().unwrap()
}

/// A session that takes `secs` of guest time to apply.
fn slow_session(secs: u64) -> Script {
    let mut script = successful_session(vec![out("working")]);
    let apply = script
        .notes
        .iter()
        .position(
            |(_, n)| matches!(n, pipeline::remote::Note::Line { line, .. } if line == "working"),
        )
        .unwrap();
    script.notes[apply].0 = Duration::from_secs(secs);
    script
}

#[tokio::test(start_paused = true)]
async fn a_busy_vm_answers_at_once_and_status_never_waits_on_it() {
    let backend = FakeBackend {
        boot_takes: Duration::from_secs(5),
        ..FakeBackend::default()
    };
    let bench = Bench::new(backend, vec![slow_session(60)]);
    let first = bench.up("op-1").await;
    let t = Instant::now();
    let second = bench
        .up_with("op-2", BootstrapMode::Auto)
        .await
        .unwrap_err();
    assert_eq!(second.operation, "op-1");
    assert_eq!(t.elapsed(), Duration::ZERO, "busy replies do not wait");
    // Mid-run, the snapshot says what is going on.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let snap = bench.handle.snapshot();
    assert_eq!(snap.operation.as_deref(), Some("op-1"));
    assert_eq!(snap.state, State::Bootstrapping);
    assert_eq!(snap.machine.map(|m| m.pid), Some(4242));
    let outcome = outcome_of(first).await;
    assert_eq!(outcome.status, OutcomeStatus::Success, "{outcome:?}");
    assert!(t.elapsed() >= Duration::from_secs(65));
    assert_eq!(bench.handle.snapshot().operation, None);
    assert_eq!(bench.backend.launches.load(Ordering::SeqCst), 1);
    assert_eq!(
        bench.kinds("op-1")[..3],
        ["OverlayPrepared", "VmLaunched", "BootstrapPlanned"]
    );
}

/// `down` mid-run cancels the run (its guest side stopped, one failure, no stamp), then stops
/// the VM; `cancel` of an idle VM finds nothing to stop.
#[tokio::test(start_paused = true)]
async fn down_mid_run_cancels_the_run_then_stops_the_vm() {
    let bench = Bench::new(FakeBackend::default(), vec![slow_session(60)]);
    assert_eq!(bench.handle.cancel("cancelled".into()).await, None);
    let first = bench.up("op-1").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        bench.handle.snapshot().current_step,
        Some(castra_api::BootstrapStepKind::Apply)
    );
    let t = Instant::now();
    let report = bench
        .handle
        .down("web", bench.down_request(false))
        .await
        .expect("down waits for the run to end, then stops");
    assert!(
        t.elapsed() < Duration::from_secs(50),
        "the run was not waited out"
    );
    assert_eq!(report.outcome, castra_api::StopOutcome::Graceful);
    let outcome = outcome_of(first).await;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with(
            "apply: cancelled: castractl down stops the VM; its processes in the \
             guest were stopped (group 77)"
        ),
        "{error}"
    );
    assert!(
        bench.remote.calls().contains(&"stop 2222 77".to_owned()),
        "{:?}",
        bench.remote.calls()
    );
    assert_eq!(bench.handle.snapshot().state, State::Stopped);
}

/// A VM to start waits for a free slot before its launch, saying so; `down` ends the wait
/// (one failure, nothing launched); once a slot is free, the next `up` launches at once.
#[tokio::test(start_paused = true)]
async fn a_vm_waits_for_a_slot_before_its_launch_and_down_ends_the_wait() {
    let bench = Bench::new(FakeBackend::default(), vec![successful_session(vec![])]);
    let mut held: Vec<pipeline::Slot> = std::iter::from_fn(|| bench.slots.try_take()).collect();
    assert_eq!(held.len(), 32, "other VMs start or bootstrap");
    let first = bench.up("op-1").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let snap = bench.handle.snapshot();
    let waiting = "a free slot: 32 VMs are starting or bootstrapping (castrad --max-parallel 32)";
    assert_eq!(snap.waiting_on.as_deref(), Some(waiting));
    assert_eq!(snap.state, State::Stopped);
    assert_eq!(bench.backend.launches.load(Ordering::SeqCst), 0);
    let report = bench
        .handle
        .down("web", bench.down_request(false))
        .await
        .expect("down ends the wait, then stops");
    assert_eq!(report.outcome, castra_api::StopOutcome::NotRunning);
    let outcome = outcome_of(first).await;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("cancelled: castractl down stops the VM")
    );
    assert!(outcome.log_path.is_some(), "one failure log");
    assert_eq!(bench.backend.launches.load(Ordering::SeqCst), 0);
    assert_eq!(bench.handle.snapshot().waiting_on, None);
    assert_eq!(bench.slots.in_use(), 32, "the wait took none");

    held.pop();
    let second = outcome_of(bench.up("op-2").await).await;
    assert_eq!(second.status, OutcomeStatus::Success, "{second:?}");
    assert_eq!(bench.backend.launches.load(Ordering::SeqCst), 1);
    assert_eq!(
        bench.slots.in_use(),
        31,
        "the run's slot was freed at its end"
    );
}

#[tokio::test(start_paused = true)]
async fn success_then_noop_then_skip_each_reach_the_operation() {
    let bench = Bench::new(FakeBackend::default(), vec![successful_session(vec![])]);
    let first = outcome_of(bench.up("op-1").await).await;
    assert_eq!(first.status, OutcomeStatus::Success);
    let second = outcome_of(bench.up("op-2").await).await;
    assert_eq!(second.status, OutcomeStatus::NoOp, "{second:?}");
    assert_eq!(second.run_id, first.run_id, "the stamp's run");
    let third = bench.up_with("op-3", BootstrapMode::Skip).await.unwrap();
    assert_eq!(outcome_of(third).await.status, OutcomeStatus::Skipped);
    assert_eq!(
        bench.backend.launches.load(Ordering::SeqCst),
        1,
        "booted once"
    );
    assert_eq!(
        bench.handle.snapshot().last.unwrap().status,
        OutcomeStatus::Skipped
    );
}

#[tokio::test(start_paused = true)]
async fn a_machine_that_cannot_start_fails_the_run_with_the_reason() {
    let backend = FakeBackend {
        fail_launch: true,
        ..FakeBackend::default()
    };
    let bench = Bench::new(backend, vec![]);
    let outcome = outcome_of(bench.up("op-1").await).await;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("starting the VM failed: a QEMU VM needs base_image")
    );
    assert!(outcome.log_path.is_some(), "a failure log");
    assert_eq!(bench.handle.snapshot().state, State::Failed);
    // No plan was made: the terminal event alone.
    assert_eq!(bootstrap_story(&bench.kinds("op-1")), ["BootstrapFailed"]);
}

#[tokio::test(start_paused = true)]
async fn a_machine_that_exits_under_a_run_is_reported_and_the_vm_stopped() {
    let bench = Bench::new(FakeBackend::default(), vec![slow_session(30)]);
    let run = bench.up("op-1").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    bench.backend.power_off();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let snap = bench.handle.snapshot();
    assert_eq!(snap.machine, None);
    assert_eq!(snap.state, State::Stopped);
    assert!(bench.kinds("op-1").contains(&"VmExited".to_owned()));
    // The run itself ends as its session says (here the script still finishes).
    let _ = outcome_of(run).await;
}

#[tokio::test(start_paused = true)]
async fn down_stops_the_machine_reports_each_step_and_discards_the_disk() {
    let bench = Bench::new(FakeBackend::default(), vec![successful_session(vec![])]);
    outcome_of(bench.up("op-1").await).await;
    let handle = bench.handle.clone();
    let request = bench.down_request(true);
    let stopping = tokio::spawn(async move { handle.down("web", request).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        bench.handle.snapshot().state,
        State::Stopping,
        "status during a stop"
    );
    let report = stopping.await.unwrap().unwrap();
    assert_eq!(report.outcome, StopOutcome::Graceful);
    assert!(report.discarded && report.error.is_none());
    assert_eq!(
        bench.kinds("op-down"),
        [
            "ShutdownRequested",
            "CooperativeAttempted",
            "CooperativeSucceeded",
            "ShutdownComplete",
            "EphemeralLayerDiscarded"
        ]
    );
    let snap = bench.handle.snapshot();
    assert_eq!((snap.state, snap.machine), (State::Stopped, None));
    // Stopping a stopped VM changes nothing.
    let again = bench
        .handle
        .down("web", bench.down_request(false))
        .await
        .unwrap();
    assert_eq!(again.outcome, StopOutcome::NotRunning);
}

#[tokio::test(start_paused = true)]
async fn castrad_stopping_mid_run_records_the_run_as_failed() {
    let bench = Bench::new(FakeBackend::default(), vec![slow_session(60)]);
    let run = bench.up("op-1").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let Bench {
        handle, tracker, ..
    } = bench;
    drop(handle); // the daemon drops its handles: the mailbox closes
    tracker.close();
    tracker.wait().await;
    let outcome = outcome_of(run).await;
    assert_eq!(outcome.status, OutcomeStatus::Failed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("castrad stopped during the run; the guest was left as it was")
    );
    assert!(outcome.log_path.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_actor_is_restarted_with_its_run_failed_and_its_machine_adopted() {
    let backend = FakeBackend {
        panic_after: Some(Duration::from_secs(2)),
        ..FakeBackend::default()
    };
    let bench = Bench::new(backend, vec![slow_session(30), successful_session(vec![])]);
    let first = outcome_of(bench.up("op-1").await).await;
    assert_eq!(first.status, OutcomeStatus::Failed);
    assert_eq!(first.error.as_deref(), Some("the VM actor crashed"));
    assert!(first.log_path.is_some(), "the lost run has its log");
    // The run had got to its steps: they stay, then exactly one terminal event.
    let story = bootstrap_story(&bench.kinds("op-1"));
    assert_eq!(
        story[..2],
        ["BootstrapPlanned", "BootstrapStarted"],
        "{story:?}"
    );
    assert_eq!(story.last().unwrap(), "BootstrapFailed");
    // The supervisor found the machine again and restarted the loop; the handle still works.
    let second = outcome_of(bench.up("op-2").await).await;
    assert_eq!(bench.backend.adoptions.load(Ordering::SeqCst), 1);
    assert_eq!(
        bench.backend.launches.load(Ordering::SeqCst),
        1,
        "not booted again"
    );
    assert_eq!(second.status, OutcomeStatus::Success, "{second:?}");
    let snap = bench.handle.snapshot();
    assert_eq!(snap.state, State::Running);
    assert_eq!(snap.machine.map(|m| m.pid), Some(4242));
}

#[tokio::test(start_paused = true)]
async fn a_machine_found_not_answering_is_kept_never_started_again_and_can_be_stopped() {
    let backend = FakeBackend {
        found_unresponsive: Some("QMP does not answer".into()),
        ..FakeBackend::default()
    };
    let bench = Bench::new(backend, vec![]);
    let refused = outcome_of(bench.up("op-1").await).await;
    assert_eq!(refused.status, OutcomeStatus::Rejected);
    let error = refused.error.unwrap();
    assert!(
        error.contains("QMP does not answer") && error.contains("`castractl down web`"),
        "{error}"
    );
    assert_eq!(bench.backend.launches.load(Ordering::SeqCst), 0);
    // Rejected, yet the VM's story in the operation still ends: one terminal event, its reason.
    assert_eq!(bootstrap_story(&bench.kinds("op-1")), ["BootstrapFailed"]);
    let failed = bench
        .bus
        .history()
        .into_iter()
        .find_map(|e| match &e.event {
            castra_api::Event::BootstrapFailed { error, .. } => Some(error.clone()),
            _ => None,
        });
    assert_eq!(failed.as_deref(), Some(error.as_str()));
    let snap = bench.handle.snapshot();
    assert_eq!(snap.state, State::Unresponsive);
    assert_eq!(
        snap.machine.and_then(|m| m.unresponsive).as_deref(),
        Some("QMP does not answer")
    );
    let found: Vec<_> = bench
        .bus
        .history()
        .into_iter()
        .filter(|e| matches!(e.event, castra_api::Event::VmUnresponsive { .. }))
        .collect();
    assert_eq!(found.len(), 1);

    let report = bench
        .handle
        .down("web", bench.down_request(false))
        .await
        .unwrap();
    assert_eq!(report.outcome, StopOutcome::Graceful);
    let snap = bench.handle.snapshot();
    assert_eq!((snap.state, snap.machine), (State::Stopped, None));
}

#[tokio::test(start_paused = true)]
async fn a_machine_that_survives_its_stop_keeps_its_disk_and_is_never_started_twice() {
    let backend = FakeBackend {
        survive_stops: true,
        ..FakeBackend::default()
    };
    let bench = Bench::new(backend, vec![successful_session(vec![])]);
    outcome_of(bench.up("op-1").await).await;
    let report = bench
        .handle
        .down("web", bench.down_request(true))
        .await
        .unwrap();
    assert_eq!(report.outcome, StopOutcome::StillRunning);
    assert!(!report.discarded, "a disk deleted under a running machine");
    assert!(bench.backend.disk.load(Ordering::SeqCst));
    assert!(
        report
            .error
            .unwrap()
            .contains("still running after SIGKILL")
    );
    let snap = bench.handle.snapshot();
    assert_eq!(snap.state, State::Unresponsive);
    assert_eq!(snap.machine.map(|m| m.pid), Some(4242));
    let again = outcome_of(bench.up("op-2").await).await;
    assert_eq!(again.status, OutcomeStatus::Rejected);
    assert_eq!(bench.backend.launches.load(Ordering::SeqCst), 1);
}
