//! The method table: decodes params, calls into the daemon, encodes results as wire types.

use std::sync::Arc;

use castra_api as api;
use jsonrpsee::RpcModule;
use jsonrpsee::types::{ErrorObjectOwned, Params};

use crate::config::{self, Backend, BootstrapMode};
use crate::daemon::{Daemon, DaemonError};
use crate::planner::{Action, Trigger, VmPlan};

pub fn module(daemon: Arc<Daemon>) -> RpcModule<Daemon> {
    let mut m = RpcModule::from_arc(daemon);
    m.register_method(api::method::VERSION, |_, _, _| {
        Ok::<_, ErrorObjectOwned>(api::VersionResult {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: api::PROTOCOL_VERSION,
        })
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
    m
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
    let vms = project
        .vms
        .iter()
        .zip(plans)
        .map(|(vm, plan)| planned(vm, plan))
        .collect();
    Ok(api::PlanResult {
        project: project.name.clone(),
        config: project.config_path.clone(),
        state_root: entry.root.path().to_owned(),
        vms,
    })
}

async fn status(
    params: Params<'static>,
    daemon: &Daemon,
) -> Result<api::StatusResult, DaemonError> {
    let p: api::StatusParams = parse_or_default(params)?;
    let entries = match &p.config {
        Some(path) => vec![daemon.load_project(path).await?],
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
                .map(|vm| {
                    let stamp = entry.root.stamp(&vm.name);
                    api::VmStatus {
                        name: vm.name.clone(),
                        backend: backend(vm.backend),
                        state: match vm.backend {
                            Backend::Qemu => api::VmState::Stopped,
                            Backend::External => api::VmState::External,
                        },
                        stamp_path: stamp.exists().then_some(stamp),
                    }
                })
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

fn backend(b: Backend) -> api::Backend {
    match b {
        Backend::Qemu => api::Backend::Qemu,
        Backend::External => api::Backend::External,
    }
}

fn mode(m: BootstrapMode) -> api::BootstrapMode {
    match m {
        BootstrapMode::Auto => api::BootstrapMode::Auto,
        BootstrapMode::Skip => api::BootstrapMode::Skip,
        BootstrapMode::Always => api::BootstrapMode::Always,
    }
}

/// The wire form of a plan (`BootstrapPlanned`).
pub fn planned(vm: &config::Vm, plan: VmPlan) -> api::BootstrapPlanned {
    let b = &vm.bootstrap;
    let runs = plan.action != Action::Skip;
    let ssh = vm
        .ssh
        .host
        .clone()
        .or_else(|| (vm.backend == Backend::Qemu).then(|| "127.0.0.1".to_owned()));
    api::BootstrapPlanned {
        vm: plan.vm,
        mode: mode(plan.mode),
        action: match plan.action {
            Action::Run => api::BootstrapPlanAction::Run,
            Action::Noop => api::BootstrapPlanAction::Noop,
            Action::Skip => api::BootstrapPlanAction::Skip,
        },
        reason: plan.reason,
        trigger: plan.trigger.map(|t| match t {
            Trigger::Auto => api::BootstrapTrigger::Auto,
            Trigger::Always => api::BootstrapTrigger::Always,
        }),
        script_path: b.script.clone(),
        payload_path: b.payload.clone(),
        payload_bytes: plan.payload_bytes,
        handshake_timeout_secs: runs.then_some(b.handshake_timeout_secs),
        remote_dir: b.script.as_ref().map(|_| b.remote_dir.clone()),
        ssh: ssh.map(|host| api::BootstrapPlanSsh {
            user: vm.ssh.user.clone(),
            host,
            port: vm
                .ssh
                .port
                .or((vm.backend == Backend::External).then_some(22)),
            identity: vm.ssh.identity.clone(),
            options: vm.ssh.options.clone(),
        }),
        env_keys: b.env.keys().cloned().collect(),
        verify: (b.verify_command.is_some() || b.verify_path.is_some()).then(|| {
            api::BootstrapPlanVerify {
                command: b.verify_command.clone(),
                path: b.verify_path.clone(),
            }
        }),
        artifact_hash: plan.artifact_hash,
        metadata_path: b.metadata_path.clone(),
        warnings: plan.warnings,
        vizier_status: None,
        vizier_log_path: Some(plan.vizier_log_path),
        vizier_remediation: None,
    }
}
