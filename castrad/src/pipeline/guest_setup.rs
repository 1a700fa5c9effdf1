//! The guest side of a QEMU VM without cloud-init, once per boot: its shared folders mounted
//! and its place on the project network (the address on the project NIC, the names in
//! /etc/hosts), what the NoCloud seed does for a cloud-init guest (`backend/qemu/seed.rs`).
//!
//! castrad does it over SSH before `connect`, so the bootstrap script can rely on it: inside
//! the run's own session (the driver evaluates [`SETUP`] after its `pid` marker: the
//! `guest-setup` step), or, when the bootstrap is a NoOp or a Skip, in a session of its own
//! ([`run`]). Once per boot: a record next to `launch.json` (`VmPaths::guest_setup`) names the
//! QEMU it was done for (pid and process start time), so an unchanged rerun of a running VM
//! stays a NoOp without SSH, and the first run after every fresh boot does it again.
//!
//! User data (paths, tags, names) travels as quoted arguments (`ssh::command_line`) and the
//! /etc/hosts lines on stdin; what the guest prints back is one marker line, read bounded.

use castra_api::{BootstrapStepKind as Step, BootstrapStepStatus as StepStatus, Event};
use tokio::time::Instant;

use super::{Ctx, Job};
use crate::backend::qemu::{mounts, process};
use crate::config::{BackendKind, Vm};
use crate::ssh;
use crate::state_root::StateRoot;

/// The setup, as shell (`guest_setup.sh`); it is sent [`ssh::compact`]ed.
pub const SETUP: &str = include_str!("guest_setup.sh");

/// What [`SETUP`] finds defined inside the driver, for a session of its own: the marker
/// function (with a fixed tag: nothing else runs in that session), `root` and `block`.
const PRELUDE: &str = "m() { printf \"\\nCASTRA-setup %s\\n\" \"$*\"; }\n\
uid=; root() { [ -n \"$uid\" ] || uid=$(id -u); [ \"$uid\" = 0 ]; }\n\
block() { IFS= read -r n; out=; while [ \"$n\" -gt 0 ]; do IFS= read -r l; out=\"$out$l\n\
\"; n=$((n-1)); done; }\n";

/// The most of a setup session's output castrad reads.
pub const OUTPUT_CAP: u64 = 16 << 10;

/// The guest's hosts file.
const HOSTS: &str = "/etc/hosts";

/// How long the guest setup may take once the guest has let castrad in.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The error of a failed setup: what the guest said failed, and what such a guest needs.
pub fn failure(detail: &str) -> String {
    format!(
        "{detail} (a guest without cloud-init needs, for shared folders, the virtiofs (or 9p) \
         kernel module and mount; for the project network, `ip` (busybox or iproute2) and a \
         writable /etc/hosts; as root, or a user with passwordless sudo)"
    )
}

/// What the guest is to be told: [`SETUP`]'s arguments and its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub args: Vec<String>,
    /// The /etc/hosts block ("" without a network): a line count, then the lines.
    pub input: String,
}

/// A setup this boot still needs: what to send, and the boot to record it for once done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub setup: Setup,
    boot: String,
}

/// Whether `vm` has a guest side castrad sets up over SSH: a QEMU VM without cloud-init with
/// shared folders or on a project network.
pub fn needed(vm: &Vm) -> bool {
    vm.backend == BackendKind::Qemu
        && !vm.cloud_init.enabled
        && (!vm.mounts.is_empty() || vm.network.is_some())
}

/// Pure: [`SETUP`]'s input for `vm`, its mounts over `transport` (`virtiofs` or `9p`).
pub fn setup(vm: &Vm, transport: &str) -> Setup {
    let mut args = vec![transport.to_owned(), vm.mounts.len().to_string()];
    args.extend(mounts::guest_args(&vm.mounts));
    let input = match &vm.network {
        Some(net) => {
            args.push(net.mac.clone());
            args.push(format!("{}/{}", net.address, net.prefix));
            args.push(HOSTS.to_owned());
            let lines = crate::config::network::hosts_lines(net);
            format!("{}\n{lines}", lines.matches('\n').count())
        }
        None => {
            args.extend([String::new(), String::new(), String::new()]);
            String::new()
        }
    };
    Setup { args, input }
}

/// The setup `vm`'s running QEMU still needs this boot; None when it needs none or it is done.
/// Reads two small files: no SSH.
pub fn pending(root: &StateRoot, vm: &Vm) -> Option<Pending> {
    if !needed(vm) {
        return None;
    }
    let paths = root.vm(&vm.name);
    let launch = process::read_record(&paths)?;
    let boot = format!("{} {}\n", launch.pid, launch.start_time);
    if std::fs::read_to_string(&paths.guest_setup).is_ok_and(|done| done == boot) {
        return None;
    }
    let transport = launch.mount_transport.as_deref().unwrap_or("virtiofs");
    Some(Pending {
        setup: setup(vm, transport),
        boot,
    })
}

/// Records that `pending` was done for this boot. A record that cannot be written only means
/// the (idempotent) setup is done again next time.
pub fn done(root: &StateRoot, vm: &str, pending: &Pending) {
    let path = root.vm(vm).guest_setup;
    if let Err(e) = crate::fsutil::write_atomic(&path, pending.boot.as_bytes()) {
        tracing::warn!(vm, path = %path.display(), error = %e, "cannot record the guest setup");
    }
}

/// Words that follow the driver's own arguments for `setup`: the setup text, then its arguments
/// (one empty word when there is none).
pub fn driver_words(setup: Option<&Setup>) -> Vec<String> {
    match setup {
        None => vec![String::new()],
        Some(s) => std::iter::once(ssh::compact(SETUP))
            .chain(s.args.iter().cloned())
            .collect(),
    }
}

/// The command of a setup session of its own.
pub fn command(setup: &Setup) -> String {
    let mut words = vec![
        "sh".to_owned(),
        "-c".into(),
        format!("{PRELUDE}{}", ssh::compact(SETUP)),
        "castra".into(),
    ];
    words.extend(setup.args.iter().cloned());
    ssh::command_line(&words)
}

/// What a setup session printed, as its marker: Ok(what was done) or Err(what failed).
pub fn outcome(stdout: &str) -> Result<String, String> {
    // The marker as driver.rs's `Marker::GuestSetup` reads it (`guest-setup <0|1> <detail>`).
    let found = stdout.lines().find_map(|l| {
        let rest = l.strip_prefix("CASTRA-setup guest-setup ")?;
        let (code, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        Some((code.parse::<i32>().ok()?, detail.trim().to_owned()))
    });
    match found {
        Some((0, detail)) => Ok(detail),
        Some((_, detail)) => Err(detail),
        None => Err(format!(
            "the guest said nothing castrad understands{}",
            match stdout.trim() {
                "" => String::new(),
                s => format!(": {}", s.chars().take(200).collect::<String>()),
            }
        )),
    }
}

/// The setup of a VM whose bootstrap does nothing (a NoOp or a Skip), in a session of its own,
/// reported as the `guest-setup` step. Err: the failure, for the run's one failure record.
pub async fn run(ctx: &Ctx, job: &Job, pending: &Pending) -> Result<(), String> {
    let vm = &job.vm;
    let t = Instant::now();
    let endpoint = job
        .endpoint
        .clone()
        .ok_or_else(|| "the guest's SSH port is not known".to_owned())?;
    ctx.snapshot
        .send_modify(|s| s.current_step = Some(Step::GuestSetup));
    let target = ctx.session(
        vm,
        &endpoint,
        "setup",
        std::time::Duration::from_secs(vm.bootstrap.handshake_timeout_secs.clamp(1, 30)),
    );
    let exec = ctx
        .remote
        .exec(target, command(&pending.setup), pending.setup.input.clone());
    let result = tokio::select! {
        out = tokio::time::timeout(TIMEOUT, exec) => match out {
            Ok(Ok(out)) => outcome(&out).map_err(|e| failure(&e)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {}s", TIMEOUT.as_secs())),
        },
        reason = job.cancel.cancelled() => Err(reason),
    };
    ctx.snapshot.send_modify(|s| s.current_step = None);
    let (status, detail) = match &result {
        Ok(detail) => (StepStatus::Success, detail.clone()),
        Err(e) => (StepStatus::Failed, e.clone()),
    };
    ctx.bus.publish(
        Some(&job.operation),
        Event::BootstrapStep {
            vm: vm.name.clone(),
            step: Step::GuestSetup,
            status,
            duration_ms: t.elapsed().as_millis() as u64,
            detail: Some(detail),
        },
    );
    match result {
        Ok(detail) => {
            tracing::info!(vm = vm.name, detail, "guest set up");
            done(&ctx.root, &vm.name, pending);
            Ok(())
        }
        Err(e) => Err(format!("guest-setup: {e}")),
    }
}

#[cfg(test)]
mod tests;
