//! Flags, subcommands and the top-level flow: parse, connect, call, render, exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use castra_api as api;
use clap::{Parser, Subcommand};

use crate::Exit;
use crate::client::{Daemon, Failure, find_config};
use crate::render;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation ran and failed
  2  usage error, invalid castra.toml, or a preflight rejection (conflicting or unknown overrides)
  3  castrad is not reachable (start it with `systemctl --user start castrad`)";

/// Drive castrad, the Castra VM daemon.
#[derive(Debug, Parser)]
#[command(name = "castractl", version, after_help = EXIT_CODES)]
struct Cli {
    /// Project file [default: the nearest castra.toml from the current directory upwards].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// castrad's socket [default: $XDG_RUNTIME_DIR/castra/castrad.sock].
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
    /// Show castractl's and castrad's versions.
    Version,
    /// Show what `up` would do for each VM, and why, without doing it.
    Plan {
        /// Override bootstrap modes: MODE (all VMs), VM=MODE or VM:MODE, comma-separated,
        /// repeatable. Modes: auto, skip (alias disabled), always. Per-VM beats global.
        #[arg(long, value_name = "OVERRIDES")]
        bootstrap: Vec<String>,
    },
    /// Show the daemon and the projects and VMs it knows (this project's, given one).
    Status,
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
                return report(&f, true).into();
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(&Failure::new(Exit::Failed, "internal", e.to_string()), json).into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => Exit::Ok.into(),
        Err(f) => report(&f, json).into(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket.clone().unwrap_or_else(api::default_socket_path);
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::new(Exit::Failed, "internal", format!("current directory: {e}")))?;
    match cli.command {
        Command::Version => {
            let client_version = env!("CARGO_PKG_VERSION");
            let daemon = Daemon::connect(&socket).await?;
            let v: api::VersionResult = daemon
                .call(api::method::VERSION, &serde_json::json!({}))
                .await?;
            if cli.json {
                print_json(&serde_json::json!({ "castractl": client_version, "castrad": v }));
            } else {
                println!(
                    "castractl {client_version}\ncastrad {} (protocol {})",
                    v.version, v.protocol
                );
            }
        }
        Command::Plan { bootstrap } => {
            let config = find_config(cli.config.as_deref(), &cwd)?;
            let daemon = Daemon::connect(&socket).await?;
            let params = api::PlanParams { config, bootstrap };
            let plan: api::PlanResult = daemon.call(api::method::PLAN, &params).await?;
            if cli.json {
                print_json(&plan);
            } else {
                print!("{}", render::plan(&plan));
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
                print_json(&status);
            } else {
                print!("{}", render::status(&status));
            }
        }
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// Prints a failure (JSON on stdout with `--json`, text on stderr otherwise); returns its exit.
fn report(f: &Failure, json: bool) -> Exit {
    if json {
        print_json(&serde_json::json!({
            "error": {
                "kind": f.kind,
                "exit_code": f.exit as u8,
                "message": f.message,
                "details": f.details,
                "rpc": f.rpc,
            }
        }));
    } else {
        eprintln!("castractl: error: {}", f.message);
        for d in &f.details {
            eprintln!("  {d}");
        }
    }
    f.exit
}
