//! Flags, subcommands and the top-level flow: parse, connect, call, render, exit.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use castra_api as api;
use clap::{CommandFactory, Parser, Subcommand};
use jsonrpsee::core::client::{Subscription, SubscriptionCloseReason};
use serde_json::value::RawValue;

use crate::Exit;
use crate::client::{Daemon, Failure, find_config, next_followed};
use crate::progress::{self, PlainFeed, UpDisplay};
use crate::{help, render, term};

/// Drive castrad, the Castra VM daemon.
#[derive(Debug, Parser)]
#[command(name = "castractl", version, after_help = help::after_help())]
struct Cli {
    /// Project file [default: the nearest castra.toml from the current directory upwards].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// castrad's socket [default: $XDG_RUNTIME_DIR/castra/castrad.sock, without a runtime
    /// directory ~/.local/state/castra/run/castrad.sock]. castractl talks only to a castrad
    /// running as you, on a socket in a directory only you (or root) can write.
    #[arg(long, global = true, env = api::SOCKET_ENV, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Print JSON instead of text (errors too).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented castra.toml and a bootstrap script stub in the current directory:
    /// one VM from a cloud image, ready for `castractl up`. Never overwrites a file.
    #[command(after_help = help::INIT_HELP)]
    Init {
        /// The cloud image: a catalog name (`castractl image catalog`) or an https:// URL.
        #[arg(long, value_name = "IMAGE", default_value = crate::init::DEFAULT_IMAGE)]
        image: String,
        /// The project's name [default: the current directory's name, made a valid name].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Show castractl's version and castrad's (when castrad is reachable; exits 0 either way).
    Version {
        /// castrad's version is required: exit 3 when castrad is not reachable.
        #[arg(long)]
        daemon: bool,
    },
    /// Show what `up` would do for each VM, and why, without doing it.
    Plan {
        /// Override bootstrap modes: MODE (all VMs), VM=MODE or VM:MODE, comma-separated,
        /// repeatable. Modes: auto, skip (alias disabled), always. Per-VM beats global.
        #[arg(long, value_name = "OVERRIDES")]
        bootstrap: Vec<String>,
    },
    /// Start the project's VMs (all, or those named) and bootstrap them; follow the pipeline
    /// until every VM is done. A VM already running is left as it is: a launch setting
    /// castra.toml changed since (cpus, memory, forwards, disk) is reported, and applied by
    /// `castractl restart`.
    #[command(after_help = help::UP_HELP)]
    Up {
        /// VMs to start and bootstrap, by expanded name [default: all of the project].
        vms: Vec<String>,
        /// Override bootstrap modes: MODE (all VMs), VM=MODE or VM:MODE, comma-separated,
        /// repeatable. Modes: auto, skip (alias disabled), always. Per-VM beats global.
        #[arg(long, value_name = "OVERRIDES")]
        bootstrap: Vec<String>,
    },
    /// Stop the project's VMs (all, or those named) as `down` does (never discarding a disk),
    /// then start and bootstrap them as `up` does, in one operation: a running VM gets what
    /// castra.toml now says (cpus, memory, forwards; a larger disk is grown, a smaller one
    /// refused before anything stops). The bootstrap is `up`'s: NoOp when its stamp matches.
    #[command(after_help = help::UP_HELP)]
    Restart {
        /// VMs to restart, by expanded name [default: all of the project].
        vms: Vec<String>,
        /// Override bootstrap modes for the bootstrap after the start, as for `up`.
        #[arg(long, value_name = "OVERRIDES")]
        bootstrap: Vec<String>,
        /// Seconds each guest gets to power off after the power button before SIGTERM.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
    /// Stop the project's VMs (all, or those named): ACPI power button, then SIGTERM, then
    /// SIGKILL. Disks are kept unless --discard (or the VM is ephemeral).
    Down {
        /// VMs to stop, by expanded name [default: all of the project].
        vms: Vec<String>,
        /// Also delete the VMs' disks, and with them their stamps: the next `up` starts fresh.
        #[arg(long)]
        discard: bool,
        /// Seconds the guest gets to power off after the power button before SIGTERM.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
    /// Stop the bootstrap runs in flight on the project's VMs (all, or those named): the
    /// script's processes in the guest are stopped and each run ends failed, "cancelled".
    Cancel {
        /// VMs whose run to stop, by expanded name [default: all of the project].
        vms: Vec<String>,
    },
    /// Show a VM's bootstrap runs and the steps of one (the latest by default).
    Logs {
        /// The VM, as `castractl plan` names it (replicas: `web-0`).
        vm: String,
        /// A run id, or a unique prefix of one [default: the latest run].
        #[arg(long, value_name = "ID")]
        run: Option<String>,
    },
    /// Follow castrad's events, like `docker events`, until Ctrl-C.
    #[command(after_help = help::EVENTS_HELP)]
    Events {
        /// Only events of this operation (as `up` prints it).
        #[arg(long, value_name = "ID")]
        operation: Option<String>,
        /// Only events about this VM.
        #[arg(long, value_name = "VM")]
        vm: Option<String>,
        /// First replay the buffered events after this sequence number (0: all of them).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// Show the daemon and the projects and VMs it knows (this project's, given one).
    Status,
    /// Open a shell in a VM, or run one command there (its exit status is castractl's), with
    /// the VM's user, castrad's key for it and its pinned host key.
    #[command(after_help = "Example: castractl ssh web-0 -- sudo systemctl status nginx")]
    Ssh {
        /// The VM, as `castractl plan` names it (replicas: `web-0`).
        vm: String,
        /// The command to run instead of a shell (after `--`).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show a QEMU VM's serial console: the end of its log, or follow it live (--follow).
    #[command(after_help = help::CONSOLE_HELP)]
    Console {
        /// The VM, as `castractl plan` names it (replicas: `web-0`).
        vm: String,
        /// Go on printing what the guest writes, until the VM stops (exit 0) or Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// How many bytes of the log's end to show first [default: 65536; at most 1 MiB].
        #[arg(long, value_name = "BYTES")]
        tail: Option<u64>,
        /// Pass the guest's output to the terminal as it is, escape sequences and all (only
        /// for a guest you trust); by default control characters are shown escaped (`\x1b`).
        #[arg(long)]
        raw: bool,
    },
    /// Copy a file (a directory with -r) to a VM or from it, over the VM's pinned SSH
    /// connection (sftp, with castrad's key and the VM's pinned host key).
    #[command(after_help = help::CP_HELP)]
    Cp {
        /// Copy directories and what they hold, like `scp -r`.
        #[arg(short, long)]
        recursive: bool,
        /// A local path, or VM:PATH.
        src: String,
        /// A local path, or VM:PATH (VM: alone: the login's home directory).
        dst: String,
    },
    /// Print an OpenSSH config block per VM (the running ones, or those named), for `ssh -F`,
    /// `scp -F` and editors' remote windows.
    #[command(name = "ssh-config")]
    SshConfig {
        /// VMs to describe [default: every VM that can be reached now].
        vms: Vec<String>,
    },
    /// Check that this machine, and the project here (if any), can run Castra's VMs: castrad,
    /// QEMU, KVM, virtiofsd, the state directory, ssh; base images, ports, keys. One line a
    /// check, with what to do; exits 1 when any check fails (warnings do not).
    Doctor,
    /// Manage castrad's image store: the base images VMs' disks are made on.
    #[command(after_help = crate::images::IMAGE_HELP)]
    Image {
        #[command(subcommand)]
        command: crate::images::ImageCommand,
    },
    /// Print the shell completion script for SHELL (scripts/install puts it in place).
    #[command(after_help = "Example: source <(castractl completion bash)")]
    Completion {
        #[arg(value_enum)]
        shell: crate::completion::Shell,
    },
}

/// castractl's command line, for the completion scripts and man pages made from it.
pub fn command() -> clap::Command {
    Cli::command()
}

pub fn main() -> ExitCode {
    let json_requested = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if json_requested
                && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
            {
                let f = Failure::new(Exit::Usage, "usage", e.kind().to_string())
                    .detail(e.render().to_string().trim().to_owned());
                return report(&f, true, false).into();
            }
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    let json = cli.json;
    // Streaming commands print JSON lines: their errors must be one line too.
    let streaming = matches!(
        cli.command,
        Command::Up { .. }
            | Command::Restart { .. }
            | Command::Events { .. }
            | Command::Console { follow: true, .. }
    ) || matches!(&cli.command, Command::Image { command } if command.streams());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let f = Failure::new(Exit::Failed, "internal", e.to_string());
            return report(&f, json, streaming).into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(f) => report(&f, json, streaming).into(),
    }
}

async fn run(cli: Cli) -> Result<Exit, Failure> {
    let socket = cli.socket.clone().unwrap_or_else(api::default_socket_path);
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::new(Exit::Failed, "internal", format!("current directory: {e}")))?;
    match cli.command {
        Command::Init { image, name } => {
            // --config names the file to write (it need not exist); else castra.toml here.
            let config = cwd.join(
                cli.config
                    .as_deref()
                    .unwrap_or(api::CONFIG_FILE_NAME.as_ref()),
            );
            return crate::init::run(&config, &image, name.as_deref(), cli.json);
        }
        Command::Completion { shell } => {
            term::script(&crate::completion::script(shell, &mut Cli::command()));
        }
        Command::Doctor => {
            // Like status: the project here if there is one, the machine alone otherwise.
            let config = match &cli.config {
                Some(_) => Some(find_config(cli.config.as_deref(), &cwd)?),
                None => find_config(None, &cwd).ok(),
            };
            return Ok(crate::doctor::run(&socket, config, cli.json).await);
        }
        Command::Version { daemon: required } => {
            let client_version = env!("CARGO_PKG_VERSION");
            // castractl's own version needs no daemon; castrad's only with --daemon.
            let daemon = match Daemon::connect(&socket).await {
                Ok(daemon) => daemon,
                Err(f) if !required && f.exit == Exit::Unreachable => {
                    if cli.json {
                        term::json_pretty(&api::cli::CliVersion {
                            castractl: client_version.to_owned(),
                            castrad: None,
                            unreachable: Some(f.message),
                        });
                    } else {
                        term::text(&format!(
                            "castractl {client_version}\ncastrad not reachable: {}\n",
                            f.message
                        ));
                    }
                    return Ok(Exit::Ok);
                }
                Err(f) => return Err(f),
            };
            let v: api::VersionResult = daemon
                .call(api::method::VERSION, &serde_json::json!({}))
                .await?;
            if cli.json {
                term::json_pretty(&api::cli::CliVersion {
                    castractl: client_version.to_owned(),
                    castrad: Some(v.clone()),
                    unreachable: None,
                });
            } else {
                term::text(&format!(
                    "castractl {client_version}\ncastrad {} (protocol {})\n",
                    v.version, v.protocol
                ));
            }
        }
        Command::Plan { bootstrap } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::PlanParams { config, bootstrap };
            let plan: api::PlanResult = daemon.call(api::method::PLAN, &params).await?;
            if cli.json {
                term::json_pretty(&plan);
            } else {
                term::text(&render::plan(&plan));
            }
        }
        Command::Up { vms, bootstrap } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::UpParams {
                config,
                bootstrap,
                vms,
            };
            let up: api::UpResult = daemon.call(api::method::UP, &params).await?;
            let notes: Vec<String> = up.drift.iter().map(|d| d.message.clone()).collect();
            return follow(&daemon, up, &notes, cli.json).await;
        }
        Command::Restart {
            vms,
            bootstrap,
            timeout,
        } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::RestartParams {
                config,
                vms,
                bootstrap,
                graceful_timeout_secs: Some(timeout),
            };
            return crate::restart::restart(&daemon, params, cli.json).await;
        }
        Command::Down {
            vms,
            discard,
            timeout,
        } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::DownParams {
                config,
                vms,
                discard,
                graceful_timeout_secs: Some(timeout),
            };
            let down: api::DownResult = daemon.call(api::method::DOWN, &params).await?;
            if cli.json {
                term::json_pretty(&down);
            } else {
                term::text(&render::down(&down));
            }
            if down.vms.iter().any(|v| v.error.is_some()) {
                return Err(Failure::new(
                    Exit::Failed,
                    "operation",
                    "some VMs could not be stopped",
                ));
            }
        }
        Command::Cancel { vms } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::CancelParams { config, vms };
            let cancel: api::CancelResult = daemon.call(api::method::CANCEL, &params).await?;
            if cli.json {
                term::json_pretty(&cancel);
            } else {
                term::text(&render::cancel(&cancel));
            }
        }
        Command::Logs { vm, run } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::LogsParams { config, vm, run };
            let logs: api::LogsResult = daemon.call(api::method::LOGS, &params).await?;
            if cli.json {
                term::json_pretty(&logs);
            } else {
                term::text(&render::logs(&logs));
            }
        }
        Command::Events {
            operation,
            vm,
            since,
        } => {
            let daemon = Daemon::connect(&socket).await?;
            let params = api::SubscribeParams {
                operation,
                vm,
                since,
            };
            return events(&daemon, &params, cli.json).await;
        }
        Command::Ssh { vm, command } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::SshConfigParams {
                config,
                vms: vec![vm],
            };
            let result: api::SshConfigResult =
                daemon.call(api::method::SSH_CONFIG, &params).await?;
            let host =
                result.hosts.into_iter().next().ok_or_else(|| {
                    Failure::new(Exit::Failed, "internal", "castrad described no VM")
                })?;
            return Err(exec_ssh(&crate::trust::Host::check(host)?, &command));
        }
        Command::Console {
            vm,
            follow,
            tail,
            raw,
        } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let request = crate::console::Request {
                config,
                vm,
                follow,
                tail,
                raw,
                json: cli.json,
            };
            return crate::console::run(&daemon, request).await;
        }
        Command::Image { command } => {
            let request = crate::images::Request {
                socket: &socket,
                config: cli.config.as_deref(),
                cwd: &cwd,
                json: cli.json,
            };
            return crate::images::run(command, request).await;
        }
        Command::Cp {
            recursive,
            src,
            dst,
        } => {
            let plan = crate::copy::Plan::new(&src, &dst)?;
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            return crate::copy::run(&daemon, config, plan, recursive, cli.json).await;
        }
        Command::SshConfig { vms } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::SshConfigParams { config, vms };
            let result: api::SshConfigResult =
                daemon.call(api::method::SSH_CONFIG, &params).await?;
            if cli.json {
                term::json_pretty(&result);
            } else {
                let blocks: Vec<&str> = result.hosts.iter().map(|h| h.config.as_str()).collect();
                term::text(&blocks.join("\n"));
            }
        }
        Command::Status => {
            // Status works outside a project: then it lists everything the daemon knows.
            let config = match &cli.config {
                Some(_) => Some(find_config(cli.config.as_deref(), &cwd)?),
                None => find_config(None, &cwd).ok(),
            };
            let daemon = Daemon::connect(&socket).await?;
            let status: api::StatusResult = daemon
                .call(api::method::STATUS, &api::StatusParams { config })
                .await?;
            if cli.json {
                term::json_pretty(&status);
            } else {
                term::text(&render::status(&status));
            }
        }
    }
    Ok(Exit::Ok)
}

/// Replaces castractl with `ssh` to `host` (a shell, or `command`) with castrad's settings
/// (`copy::ssh_args`); returns only if it could not be started.
fn exec_ssh(host: &crate::trust::Host, command: &[String]) -> Failure {
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new("ssh")
        .args(crate::copy::ssh_args(host, command))
        .exec();
    Failure::new(Exit::Failed, "internal", format!("cannot run ssh: {e}"))
}

/// How long to keep reading events already on their way once the outcome is known.
const DRAIN: Duration = Duration::from_millis(250);

/// `castractl up` and `restart`, once the operation has started: shows `notes` (drift) as
/// warnings, its events until every VM is done, then the outcome. The outcome
/// (`castra.outcome`, awaited alongside the events) is authoritative: a rejected VM has no
/// events, and a lost subscription must not hang the command.
pub(crate) async fn follow(
    daemon: &Daemon,
    up: api::UpResult,
    notes: &[String],
    json: bool,
) -> Result<Exit, Failure> {
    let mut display = UpDisplay::new(json, &up);
    for note in notes {
        display.warn(note);
    }
    let interrupted = || {
        Failure::new(
            Exit::Failed,
            "interrupted",
            format!("interrupted: stopped following operation {}", up.operation),
        )
        .detail(format!(
            "castrad was not asked to stop it; follow it with `castractl events --operation {} \
             --since 0`, or stop its runs with `castractl cancel`",
            up.operation
        ))
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let outcome_params = api::OutcomeParams {
        operation: up.operation.clone(),
    };
    let outcome_call = daemon.call::<_, api::OutcomeResult>(api::method::OUTCOME, &outcome_params);
    tokio::pin!(outcome_call);

    let subscribe = api::SubscribeParams {
        operation: Some(up.operation.clone()),
        vm: None,
        since: Some(0),
    };
    let mut outcome = None;
    match subscribe_raw(daemon, &subscribe).await {
        Err(f) => display.warn(&format!("cannot follow the events: {}", f.message)),
        Ok(mut sub) => {
            let mut pending: HashSet<String> = up.vms.iter().cloned().collect();
            while !pending.is_empty() {
                tokio::select! {
                    biased;
                    _ = &mut ctrl_c => {
                        display.abandon();
                        return Err(interrupted());
                    }
                    item = sub.next() => match item {
                        Some(Ok(raw)) => seen(&mut display, &raw, &mut pending),
                        Some(Err(e)) => display.warn(&format!("unreadable event: {e}")),
                        None => {
                            if let Some(SubscriptionCloseReason::Lagged) = sub.close_reason() {
                                display.warn("fell behind the event feed; waiting for the outcome");
                            }
                            break;
                        }
                    },
                    result = &mut outcome_call => {
                        outcome = Some(result);
                        break;
                    }
                }
            }
            // The outcome can overtake the last events on their way to the screen (a rejected
            // VM's too: its story in the operation ends with its own BootstrapFailed).
            if let Some(Ok(_)) = &outcome {
                let deadline = tokio::time::Instant::now() + DRAIN;
                while !pending.is_empty() {
                    match tokio::time::timeout_at(deadline, sub.next()).await {
                        Ok(Some(Ok(raw))) => seen(&mut display, &raw, &mut pending),
                        Ok(Some(Err(_))) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
    }
    let outcome = match outcome {
        Some(result) => result,
        None => tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                display.abandon();
                return Err(interrupted());
            }
            result = &mut outcome_call => result,
        },
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(f) => {
            display.abandon();
            return Err(f);
        }
    };
    display.finish(&outcome);
    Ok(progress::up_exit(&outcome))
}

/// Shows an event of `up` and ticks its VM off once its pipeline has ended. What this
/// castractl cannot decode (a newer daemon's event kind, field or enum value) never stops it:
/// a terminal event with a value it does not know still ends its VM.
fn seen(display: &mut UpDisplay, raw: &RawValue, pending: &mut HashSet<String>) {
    match display.event(raw) {
        Some(envelope) if envelope.event.is_terminal() => {
            pending.remove(envelope.event.vm());
        }
        Some(_) => {}
        None => {
            if let Some((kind, vm)) = progress::loose(raw)
                && (kind == "BootstrapCompleted" || kind == "BootstrapFailed")
            {
                pending.remove(&vm);
            }
        }
    }
}

async fn subscribe_raw(
    daemon: &Daemon,
    params: &api::SubscribeParams,
) -> Result<Subscription<Box<RawValue>>, Failure> {
    daemon
        .subscribe(
            api::method::SUBSCRIBE_EVENTS,
            params,
            api::method::UNSUBSCRIBE_EVENTS,
        )
        .await
}

/// `castractl events`: print the feed until Ctrl-C, the reader goes away, or castrad does.
async fn events(
    daemon: &Daemon,
    params: &api::SubscribeParams,
    json: bool,
) -> Result<Exit, Failure> {
    let mut sub = subscribe_raw(daemon, params).await?;
    let mut feed = PlainFeed::new(0);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let Some(raw) = next_followed(&mut sub, ctrl_c.as_mut(), "the event feed").await? else {
            return Ok(Exit::Ok);
        };
        let written = if json {
            term::json_line(&progress::json_line(&raw))
        } else {
            match progress::parse(&raw) {
                Some(env) => match feed.line(&env.event) {
                    Some(line) => term::line(&format!("{:>6}  {line}", env.seq)),
                    None => Ok(()),
                },
                // An event kind this castractl does not know: show it as it came (escaped).
                None => term::line(&progress::json_line(&raw)),
            }
        };
        if written.is_err() {
            // Whoever read stdout is gone (`| head`): nothing left to do.
            return Ok(Exit::Ok);
        }
    }
}

/// Prints a failure (JSON on stdout with `--json`, one line of it after JSON lines, text on
/// stderr otherwise); returns its exit.
fn report(f: &Failure, json: bool, one_line: bool) -> Exit {
    if json {
        let error = api::cli::CliFailure {
            error: api::cli::CliError {
                kind: f.kind.clone(),
                exit_code: f.exit as u8,
                message: f.message.clone(),
                details: f.details.clone(),
                rpc: f.rpc.as_deref().cloned(),
            },
        };
        if one_line {
            let _ = term::json_line(&serde_json::to_string(&error).unwrap_or_default());
        } else {
            term::json_pretty(&error);
        }
    } else {
        term::error(&f.message, &f.details);
    }
    f.exit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(event: &str) -> Box<RawValue> {
        let text = format!(r#"{{"seq":1,"time":"t","operation":"op","event":{event}}}"#);
        RawValue::from_string(text).expect("valid JSON")
    }

    /// PROTOCOL.md's forward-compatibility rule: an event kind, a field and an enum value this
    /// castractl does not know are passed over, and the feed goes on.
    #[test]
    fn up_keeps_going_past_kinds_fields_and_values_it_does_not_know() {
        let up = api::UpResult {
            operation: "op".into(),
            project: "p".into(),
            vms: vec!["a".into(), "b".into()],
            drift: Vec::new(),
        };
        let mut display = UpDisplay::new(false, &up);
        let mut pending: HashSet<String> = up.vms.iter().cloned().collect();
        let feed = [
            // An unknown kind.
            r#"{"VmTeleported":{"vm":"a","to":"elsewhere"}}"#,
            // A known kind with an unknown field.
            r#"{"BootstrapStep":{"vm":"a","step":"connect","status":"success","duration_ms":1,"detail":null,"retries":2}}"#,
            // An unknown step name (enum value).
            r#"{"BootstrapStep":{"vm":"a","step":"snapshot","status":"success","duration_ms":1,"detail":null}}"#,
            // A terminal event with an unknown status (enum value) still ends its VM.
            r#"{"BootstrapCompleted":{"vm":"b","status":"Partial","duration_ms":1,"stamp":null}}"#,
        ];
        for event in feed {
            seen(&mut display, &raw(event), &mut pending);
        }
        assert_eq!(pending, HashSet::from(["a".to_owned()]));
        // A known event after all that is still understood, unknown field and all.
        let failed =
            raw(r#"{"BootstrapFailed":{"vm":"a","duration_ms":1,"error":"x","hint":"y"}}"#);
        assert!(progress::parse(&failed).is_some_and(|e| e.event.is_terminal()));
        seen(&mut display, &failed, &mut pending);
        assert!(pending.is_empty());
        // An unknown field in the envelope is ignored too.
        let envelope = r#"{"seq":2,"time":"t","operation":"op","trace":"z","event":{"BootstrapFailed":{"vm":"a","duration_ms":1,"error":"x"}}}"#;
        let envelope = RawValue::from_string(envelope.to_owned()).unwrap();
        assert!(progress::parse(&envelope).is_some());
    }
}
