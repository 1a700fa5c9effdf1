//! The method table: decodes params, calls into the daemon, encodes results as wire types.
//! `rpc.discover` answers with the protocol's OpenRPC document (`castra_api::openrpc`).

use std::sync::{Arc, LazyLock};

use castra_api as api;
use jsonrpsee::RpcModule;
use jsonrpsee::types::{ErrorObjectOwned, Params};

use crate::backend::qemu::mounts as qemu_mounts;
use crate::config::BackendKind;
use crate::daemon::ProjectEntry;
use crate::daemon::{Daemon, DaemonError};
use crate::events::Filter;
use crate::vm::state::{State, VmSnapshot};

pub fn module(daemon: Arc<Daemon>) -> RpcModule<Daemon> {
    let mut m = RpcModule::from_arc(daemon);
    m.register_method(api::method::VERSION, |_, _, _| {
        Ok::<_, ErrorObjectOwned>(api::VersionResult {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: api::PROTOCOL_VERSION,
        })
    })
    .expect("unique method name");
    m.register_method(api::method::DISCOVER, |_, _, _| {
        // Built once: it is a pure function of castra-api's types.
        static DOCUMENT: LazyLock<serde_json::Value> = LazyLock::new(api::openrpc::document);
        Ok::<_, ErrorObjectOwned>(&*DOCUMENT)
    })
    .expect("unique method name");
    m.register_async_method(api::method::PLAN, |params, daemon, _| async move {
        plan(params, &daemon).await.map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::STATUS, |params, daemon, _| async move {
        status(params, &daemon)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::UP, |params, daemon, _| async move {
        let p: api::UpParams = parse(params)?;
        daemon
            .up(&p.config, &p.bootstrap, &p.vms)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::RESTART, |params, daemon, _| async move {
        let p: api::RestartParams = parse(params)?;
        let graceful = graceful_timeout(p.graceful_timeout_secs);
        daemon
            .restart(&p.config, &p.vms, &p.bootstrap, graceful)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::DOWN, |params, daemon, _| async move {
        let p: api::DownParams = parse(params)?;
        let graceful = graceful_timeout(p.graceful_timeout_secs);
        daemon
            .down(&p.config, &p.vms, p.discard, graceful)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::CANCEL, |params, daemon, _| async move {
        let p: api::CancelParams = parse(params)?;
        daemon
            .cancel(&p.config, &p.vms)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::SSH_CONFIG, |params, daemon, _| async move {
        let p: api::SshConfigParams = parse(params)?;
        daemon
            .ssh_config(&p.config, &p.vms)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::DOCTOR, |params, daemon, _| async move {
        let p: api::DoctorParams = parse_or_default(params)?;
        Ok::<_, ErrorObjectOwned>(crate::doctor::run(&daemon, p.config.as_deref()).await)
    })
    .expect("unique method name");
    m.register_async_method(api::method::OUTCOME, |params, daemon, _| async move {
        outcome(params, &daemon)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::LOGS, |params, daemon, _| async move {
        logs(params, &daemon).await.map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    register_images(&mut m);
    m.register_subscription(
        api::method::SUBSCRIBE_EVENTS,
        api::method::EVENT,
        api::method::UNSUBSCRIBE_EVENTS,
        |params, pending, daemon, _| async move {
            let p: api::SubscribeParams = match parse_or_default(params) {
                Ok(p) => p,
                Err(e) => {
                    pending.reject(ErrorObjectOwned::from(e)).await;
                    return;
                }
            };
            let filter = Filter {
                operation: p.operation,
                vm: p.vm,
            };
            // Subscribe before accepting, so nothing published meanwhile is missed.
            let mut events = daemon.bus.subscribe(filter, p.since);
            let Ok(sink) = pending.accept().await else {
                return;
            };
            loop {
                let next = tokio::select! {
                    next = events.next() => next,
                    _ = sink.closed() => return,
                };
                let envelope = match next {
                    Ok(Some(envelope)) => envelope,
                    Ok(None) => return,
                    Err(lost) => {
                        tracing::warn!(%lost, "subscriber lost events");
                        continue;
                    }
                };
                let Ok(raw) = serde_json::value::to_raw_value(&*envelope) else {
                    continue;
                };
                if sink.send(raw).await.is_err() {
                    return;
                }
            }
        },
    )
    .expect("unique method name");
    super::console::register(&mut m);
    m
}

/// `castra.image*`: the image store (`daemon/images.rs`).
fn register_images(m: &mut RpcModule<Daemon>) {
    m.register_async_method(api::method::IMAGE_LIST, |params, daemon, _| async move {
        let _: api::ImageListParams = parse_or_default(params)?;
        daemon.image_list().await.map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::IMAGE_PULL, |params, daemon, _| async move {
        let p: api::ImagePullParams = parse_or_default(params)?;
        daemon.image_pull(&p).await.map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::IMAGE_REMOVE, |params, daemon, _| async move {
        let p: api::ImageRemoveParams = parse(params)?;
        daemon
            .image_remove(&p.digest)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::IMAGE_PRUNE, |params, daemon, _| async move {
        let _: api::ImagePruneParams = parse_or_default(params)?;
        daemon.image_prune().await.map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::IMAGE_ADOPT, |params, daemon, _| async move {
        let p: api::ImageAdoptParams = parse(params)?;
        daemon
            .image_adopt(&p.config, &p.vms)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(api::method::IMAGE_CATALOG, |params, daemon, _| async move {
        let p: api::ImageCatalogParams = parse_or_default(params)?;
        daemon
            .image_catalog(p.config.as_deref())
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
}

async fn outcome(
    params: Params<'static>,
    daemon: &Daemon,
) -> Result<api::OutcomeResult, DaemonError> {
    let p: api::OutcomeParams = parse(params)?;
    let op = daemon
        .operations
        .get(&p.operation)
        .ok_or_else(|| DaemonError::NoOperation(p.operation.clone()))?;
    let outcomes = op.wait().await;
    Ok(api::OutcomeResult {
        operation: op.id.clone(),
        project: op.project.clone(),
        outcomes,
    })
}

async fn logs(params: Params<'static>, daemon: &Daemon) -> Result<api::LogsResult, DaemonError> {
    let p: api::LogsParams = parse(params)?;
    let entry = daemon.load_project(&p.config).await?;
    // An unknown name is the same preflight error here as for down, cancel and sshConfig.
    if !entry.project.vms.iter().any(|vm| vm.name == p.vm) {
        let known = entry.project.vm_names();
        return Err(DaemonError::UnknownVm {
            vm: p.vm.clone(),
            known: known.iter().map(|s| (*s).to_owned()).collect(),
        });
    }
    let (root, vm) = (entry.root.clone(), p.vm.clone());
    let runs = tokio::task::spawn_blocking(move || crate::runlog::list(&root, &vm))
        .await
        .map_err(|e| DaemonError::Panicked {
            what: "log reader",
            detail: e.to_string(),
        })?
        .map_err(|source| DaemonError::Logs {
            vm: p.vm.clone(),
            source,
        })?;
    let selected = match &p.run {
        None => runs.last(),
        Some(id) => {
            let matching: Vec<_> = runs
                .iter()
                .filter(|(_, log)| log.run_id.starts_with(id.as_str()))
                .collect();
            match matching.as_slice() {
                [one] => Some(*one),
                [] => {
                    return Err(DaemonError::NoSuchRun {
                        vm: p.vm.clone(),
                        run: id.clone(),
                    });
                }
                _ => return Err(DaemonError::AmbiguousRun(id.clone())),
            }
        }
    };
    Ok(api::LogsResult {
        vm: p.vm.clone(),
        log_path: selected.map(|(path, _)| path.clone()),
        log: selected.map(|(_, log)| log.clone()),
        runs: runs
            .iter()
            .map(|(path, log)| crate::runlog::summary(path, log))
            .collect(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(params: Params<'_>) -> Result<T, DaemonError> {
    params
        .parse()
        .map_err(|e| DaemonError::InvalidParams(e.message().to_owned()))
}

/// Like [`parse`], but absent params mean the type's default.
fn parse_or_default<T: serde::de::DeserializeOwned + Default>(
    params: Params<'_>,
) -> Result<T, DaemonError> {
    if params.as_str().is_none() {
        Ok(T::default())
    } else {
        parse(params)
    }
}

async fn plan(params: Params<'static>, daemon: &Daemon) -> Result<api::PlanResult, DaemonError> {
    let p: api::PlanParams = parse(params)?;
    let (entry, plans) = daemon.plan(&p.config, &p.bootstrap).await?;
    let project = &entry.project;
    // The transport a launch would choose now (the same for every VM of this host).
    let (transport, _) = qemu_mounts::choose(&qemu_mounts::probe());
    let vms = project
        .vms
        .iter()
        .zip(plans)
        .map(|(vm, plan)| {
            let mut planned = crate::planner::planned(vm, plan);
            for m in &mut planned.mounts {
                m.transport = Some(mount_transport(transport.as_str()));
            }
            planned
        })
        .collect();
    Ok(api::PlanResult {
        project: project.name.clone(),
        config: project.config_path.clone(),
        state_root: entry.root.path().to_owned(),
        vms,
        host_paths: project.host_paths.iter().map(host_path).collect(),
    })
}

fn host_path(h: &crate::config::HostPath) -> api::HostPathPlanned {
    use crate::config::{Access, Grant};
    let (grant, allowed_by) = match &h.grant {
        Grant::Project => ("project", None),
        Grant::AllowedPath(dir) => ("allowed_path", Some(dir.clone())),
        Grant::TrustedProject => ("trusted_project", None),
        Grant::PublicKey => ("public_key", None),
    };
    api::HostPathPlanned {
        key: h.key.clone(),
        path: h.path.clone(),
        access: match h.access {
            Access::Read => api::HostPathAccess::Read,
            Access::ShareReadOnly => api::HostPathAccess::ShareReadOnly,
            Access::ShareReadWrite => api::HostPathAccess::ShareReadWrite,
        },
        grant: grant.to_owned(),
        allowed_by,
    }
}

async fn status(
    params: Params<'static>,
    daemon: &Daemon,
) -> Result<api::StatusResult, DaemonError> {
    let p: api::StatusParams = parse_or_default(params)?;
    let entries = match &p.config {
        Some(path) => vec![daemon.project(path).await?],
        None => daemon.projects(),
    };
    let projects = entries
        .iter()
        .map(|entry| api::ProjectStatus {
            name: entry.project.name.clone(),
            config: entry.project.config_path.clone(),
            state_root: entry.root.path().to_owned(),
            vms: entry
                .project
                .vms
                .iter()
                .map(|vm| vm_status(daemon, entry, vm))
                .collect(),
        })
        .collect();
    Ok(api::StatusResult {
        daemon: api::DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: daemon.started.elapsed().as_millis() as u64,
            socket: daemon.settings.socket.clone(),
            state_dir: daemon.settings.state_base.clone(),
            base_bytes_hashed: daemon.base_bytes_hashed(),
        },
        projects,
    })
}

/// One VM's line of `castra.status`: from its actor's snapshot (never waiting on the actor),
/// or, for a VM no actor has touched yet, its backend's resting state.
fn vm_status(daemon: &Daemon, entry: &ProjectEntry, vm: &crate::config::Vm) -> api::VmStatus {
    let stamp = entry.root.stamp(&vm.name);
    let backend_of = daemon.backend(vm.backend);
    let snap = daemon
        .existing_vm_handle(&entry.root, &vm.name)
        .map(|h| h.snapshot())
        .unwrap_or_else(|| VmSnapshot {
            state: backend_of.resting_state(),
            ..Default::default()
        });
    let state = match snap.state {
        State::Running if !backend_of.owns_lifecycle() => api::VmState::External,
        State::Stopped => api::VmState::Stopped,
        State::Starting => api::VmState::Starting,
        State::Running => api::VmState::Running,
        State::Bootstrapping => api::VmState::Bootstrapping,
        State::Failed => api::VmState::Failed,
        State::Stopping => api::VmState::Stopping,
        State::Unresponsive => api::VmState::Unresponsive,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let machine = snap.machine.as_ref();
    api::VmStatus {
        name: vm.name.clone(),
        backend: backend(vm.backend),
        state,
        state_reason: machine.and_then(|m| m.unresponsive.clone()),
        stamp_path: stamp.exists().then_some(stamp),
        operation: snap.operation,
        current_step: snap.current_step,
        waiting_on: snap.waiting_on,
        pid: machine.map(|m| m.pid),
        uptime_ms: machine.map(|m| now_ms.saturating_sub(m.launched_unix_ms)),
        accel: machine.map(|m| m.accel.clone()),
        disk_mib: vm.disk_mib,
        network_address: vm.network.as_ref().map(|n| n.address.to_string()),
        ssh_endpoint: backend_of.ssh_endpoint(vm, machine).map(|e| e.to_string()),
        vizier: snap.vizier.as_ref().map(|v| api::VizierStatus {
            version: v.version.clone(),
            pid: v.pid,
            healthy: v.healthy,
        }),
        mounts: crate::planner::wire_mounts(
            vm,
            machine
                .and_then(|m| m.mount_transport.as_deref())
                .map(mount_transport),
        ),
        last_bootstrap: snap.last,
    }
}

/// `castra.down`'s and `castra.restart`'s `graceful_timeout_secs` (default 30): any u64, the
/// largest included (a wait without end), since every deadline made from it is checked
/// arithmetic (`backend::deadline`).
pub(crate) fn graceful_timeout(secs: Option<u64>) -> std::time::Duration {
    std::time::Duration::from_secs(secs.unwrap_or(30))
}

/// `virtiofs` or `9p` (as `backend::qemu::mounts::Transport` spells them) on the wire.
fn mount_transport(name: &str) -> api::MountTransport {
    match qemu_mounts::Transport::parse(name) {
        Some(qemu_mounts::Transport::Virtiofs) => api::MountTransport::Virtiofs,
        _ => api::MountTransport::NineP,
    }
}

fn backend(b: BackendKind) -> api::Backend {
    match b {
        BackendKind::Qemu => api::Backend::Qemu,
        BackendKind::External => api::Backend::External,
        BackendKind::Libvirt => api::Backend::Libvirt,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::testutil::proptest_config;

    /// A number as a client may send it: the edges first.
    fn extreme() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(i64::MAX as u64),
            Just(u64::MAX / 1000 + 1),
            any::<u64>(),
        ]
    }

    proptest! {
        #![proptest_config(proptest_config(2000))]

        /// Issue 25: every number a method's params carry, at its extremes, goes through
        /// what castrad does with it without a panic (`castractl down --timeout
        /// 18446744073709551615` once panicked castrad in a libvirt stop's `Instant +
        /// Duration`).
        #[test]
        fn props_extreme_numbers_in_params_never_panic(n in extreme(), m in extreme()) {
            let config = "/p/castra.toml";
            let down: api::DownParams =
                serde_json::from_value(json!({"config": config, "graceful_timeout_secs": n}))
                    .unwrap();
            let restart: api::RestartParams =
                serde_json::from_value(json!({"config": config, "graceful_timeout_secs": m}))
                    .unwrap();
            let now = Instant::now();
            for secs in [down.graceful_timeout_secs, restart.graceful_timeout_secs, None] {
                let graceful = graceful_timeout(secs);
                let plan = crate::backend::StopPlan { graceful, term: Duration::from_secs(10) };
                for limit in [plan.graceful, plan.term] {
                    let end = crate::backend::deadline(now, limit);
                    prop_assert!(end.is_none_or(|e| e >= now));
                    prop_assert!(crate::backend::millis(limit) >= limit.as_secs().min(u64::MAX / 1000));
                    let _ = format!("{limit:?}");
                }
            }
            // The byte counts and the replay point: clamped where they are used.
            let console: api::ConsoleParams =
                serde_json::from_value(json!({"config": config, "vm": "a", "max_bytes": n}))
                    .unwrap();
            prop_assert_eq!(console.max_bytes, Some(n));
            let tail: api::SubscribeConsoleParams =
                serde_json::from_value(json!({"config": config, "vm": "a", "tail_bytes": m}))
                    .unwrap();
            prop_assert_eq!(tail.tail_bytes, Some(m));
            let events: api::SubscribeParams =
                serde_json::from_value(json!({"since": n})).unwrap();
            let bus = crate::events::EventBus::with_limits(8, 1 << 16);
            let _ = bus.subscribe(crate::events::Filter::default(), events.since);
        }
    }

    /// The stop's wait with no end: the tokio timeouts the QEMU backend uses take it too.
    #[tokio::test(start_paused = true)]
    async fn a_wait_of_u64_max_seconds_is_a_wait_without_end() {
        let forever = graceful_timeout(Some(u64::MAX));
        assert_eq!(crate::backend::deadline(Instant::now(), forever), None);
        assert_eq!(crate::backend::millis(forever), u64::MAX);
        let waited = tokio::time::timeout(forever, async { 7 }).await;
        assert_eq!(waited, Ok(7));
    }
}
