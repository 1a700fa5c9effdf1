//! castrad's command line: flags, logging, signals, exit codes. `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::daemon::Settings;
use crate::rpc::server::{self, Listener};

const EXIT_CODES: &str = "\
Exit codes:
  0  clean shutdown (SIGTERM or SIGINT)
  1  failed to start or failed while running (the message says why)
  2  usage error
  3  another castrad holds the state directory's lock (the message names its pid); the
     systemd unit does not restart castrad on this one (RestartPreventExitStatus=3)";

/// The exit code when another castrad holds the state directory.
const EXIT_LOCKED: u8 = 3;

/// The Castra daemon: owns VMs and runs their bootstrap pipeline, driven over JSON-RPC 2.0 on a
/// Unix socket (HTTP POST and WebSocket).
#[derive(Debug, Parser)]
#[command(name = "castrad", version, after_help = EXIT_CODES)]
struct Args {
    /// Socket to listen on [default: $XDG_RUNTIME_DIR/castra/castrad.sock]. Ignored under
    /// systemd socket activation.
    #[arg(long, env = castra_api::SOCKET_ENV, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Base directory for per-project state [default: $XDG_STATE_HOME/castra].
    #[arg(long, env = crate::state_root::STATE_DIR_ENV, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Accelerator for every QEMU VM, beating castra.toml: auto (KVM when it can run a stock
    /// guest, else TCG), kvm or tcg.
    #[arg(long, env = "CASTRA_ACCEL", value_name = "ACCEL", value_parser = parse_accel)]
    accel: Option<crate::config::AccelSetting>,

    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info` or `castrad=debug`.
    #[arg(
        long,
        env = "CASTRA_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(&args.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::from(e).context("starting the tokio runtime")),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("castrad: {e:#}");
    match e.downcast_ref::<crate::instance::LockError>() {
        Some(crate::instance::LockError::Held { .. }) => ExitCode::from(EXIT_LOCKED),
        _ => ExitCode::from(1),
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or the journal gets plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: Args) -> anyhow::Result<()> {
    let state_base = match args.state_dir {
        Some(dir) => dir,
        None => crate::state_root::default_base().ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory for state; pass --state-dir")
        })?,
    };
    let socket = args.socket.unwrap_or_else(castra_api::default_socket_path);
    // First of all, before the socket (bound or passed by systemd) and before anything in
    // the state directory: a second castrad on it must leave both as they are. Held until
    // this function returns, after the daemon has shut down.
    let lock = crate::instance::acquire(&state_base).inspect_err(|e| {
        // Under socket activation, `systemctl --user status castrad` shows why.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&e.to_string())]);
    })?;
    tracing::debug!(lock = %lock.path.display(), "holding the state directory's lock");
    let listener = match Listener::from_systemd()? {
        Some(listener) => {
            tracing::info!("using the socket passed by systemd");
            listener
        }
        None => Listener::bind(&socket)?,
    };
    tracing::info!(socket = %socket.display(), state = %state_base.display(), "castrad ready");
    let settings = Settings {
        socket,
        state_base,
        shutdown_grace: Duration::from_secs(10),
        accel_override: args.accel,
    };
    let result = server::run(settings, listener, shutdown_signal()).await;
    drop(lock);
    result
}

fn parse_accel(s: &str) -> Result<crate::config::AccelSetting, String> {
    crate::config::AccelSetting::parse(s).ok_or_else(|| format!("{s:?}: expected auto, kvm or tcg"))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop castrad with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
