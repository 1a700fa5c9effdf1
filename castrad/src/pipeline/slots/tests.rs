//! Slots in paused time: a free slot is taken at once and silently; a VM that waits says so
//! (snapshot and events, again every heartbeat) and gets the slot when one is freed; a cancel
//! ends the wait; a slot is freed whichever way its holder ends (done, panic, abort).

use std::sync::Arc;
use std::time::Duration;

use castra_api::{BootstrapStepKind as Step, Event};

use super::*;
use crate::config::BootstrapMode;
use crate::events::EventBus;
use crate::overrides::ModeSource;
use crate::pipeline::Cancel;
use crate::state_root::StateRoot;
use crate::vm::state::VmSnapshot;

fn ctx(dir: &std::path::Path, limit: u32) -> Ctx {
    Ctx {
        bus: EventBus::default(),
        root: StateRoot::for_project(&dir.join("state"), "p", &dir.join("castra.toml")),
        control_dir: dir.join("ssh"),
        snapshot: Arc::new(tokio::sync::watch::channel(VmSnapshot::default()).0),
        remote: crate::testutil::Fake::new(Vec::new(), Vec::new()),
        slots: Slots::new(limit),
        images: crate::testutil::store(dir),
    }
}

fn job(dir: &std::path::Path, cancel: Cancel) -> Job {
    Job {
        vm: Arc::new(crate::testutil::sample_vm(dir)),
        mode: (BootstrapMode::Auto, ModeSource::File),
        extra_warnings: Vec::new(),
        operation: "op-test".into(),
        config: dir.join("castra.toml"),
        endpoint: None,
        booting: false,
        cancel,
    }
}

/// The `waiting_on` of every progress event so far.
fn reports(ctx: &Ctx) -> Vec<String> {
    ctx.bus
        .history()
        .into_iter()
        .filter_map(|e| match &e.event {
            Event::BootstrapProgress {
                step: Step::WaitHandshake,
                waiting_on,
                ..
            } => Some(waiting_on.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_free_slot_is_taken_at_once_and_silently() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path(), 2);
    let job = job(dir.path(), Cancel::none());
    let a = take(&ctx, &job).await.unwrap();
    let b = take(&ctx, &job).await.unwrap();
    assert_eq!(ctx.slots.in_use(), 2);
    assert!(reports(&ctx).is_empty());
    assert_eq!(ctx.snapshot.borrow().waiting_on, None);
    drop((a, b));
    assert_eq!(ctx.slots.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_vm_waits_for_a_slot_saying_so_until_one_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path(), 1);
    let held = take(&ctx, &job(dir.path(), Cancel::none())).await.unwrap();
    let waiter = {
        let (ctx, job) = (ctx.clone(), job(dir.path(), Cancel::none()));
        tokio::spawn(async move { take(&ctx, &job).await.map(|_slot| ()) })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected =
        "a free slot: 1 VM is starting or bootstrapping (castrad --max-parallel 1)".to_owned();
    let snap = ctx.snapshot.borrow().clone();
    assert_eq!(snap.current_step, Some(Step::WaitHandshake));
    assert_eq!(snap.waiting_on.as_ref(), Some(&expected));
    assert_eq!(reports(&ctx), vec![expected.clone()]);
    // Still waiting a heartbeat later: said again.
    tokio::time::sleep(HEARTBEAT).await;
    assert_eq!(reports(&ctx), vec![expected.clone(), expected]);
    assert!(!waiter.is_finished());
    drop(held);
    waiter.await.unwrap().unwrap();
    assert_eq!(ctx.snapshot.borrow().waiting_on, None);
    assert_eq!(ctx.snapshot.borrow().current_step, None);
    assert_eq!(
        ctx.slots.in_use(),
        0,
        "the waiter's slot was dropped with it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_ends_the_wait_and_takes_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path(), 1);
    let held = take(&ctx, &job(dir.path(), Cancel::none())).await.unwrap();
    let (cancel, token) = Cancel::new();
    let waiter = {
        let (ctx, job) = (ctx.clone(), job(dir.path(), token));
        tokio::spawn(async move { take(&ctx, &job).await.map(|_slot| ()) })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.send_replace(Some("cancelled".into()));
    assert_eq!(waiter.await.unwrap(), Err("cancelled".to_owned()));
    assert_eq!(ctx.snapshot.borrow().waiting_on, None);
    assert_eq!(ctx.slots.in_use(), 1, "only the holder's");
    drop(held);
    assert_eq!(ctx.slots.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slot_is_freed_when_its_holder_panics_or_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path(), 1);
    let panics = {
        let (ctx, job) = (ctx.clone(), job(dir.path(), Cancel::none()));
        tokio::spawn(async move {
            let _slot = take(&ctx, &job).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("a bug while holding a slot");
        })
    };
    assert!(panics.await.unwrap_err().is_panic());
    assert_eq!(ctx.slots.in_use(), 0);

    let hangs = {
        let (ctx, job) = (ctx.clone(), job(dir.path(), Cancel::none()));
        tokio::spawn(async move {
            let _slot = take(&ctx, &job).await.unwrap();
            std::future::pending::<()>().await;
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ctx.slots.in_use(), 1);
    hangs.abort();
    assert!(hangs.await.unwrap_err().is_cancelled());
    assert_eq!(ctx.slots.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_get_slots_first_come_first_served() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path(), 1);
    let held = take(&ctx, &job(dir.path(), Cancel::none())).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..5 {
        let (ctx, job, tx) = (ctx.clone(), job(dir.path(), Cancel::none()), tx.clone());
        tokio::spawn(async move {
            let _slot = take(&ctx, &job).await.unwrap();
            tx.send(i).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop((held, tx));
    let mut order = Vec::new();
    while let Some(i) = rx.recv().await {
        order.push(i);
    }
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}
