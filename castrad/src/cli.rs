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
     systemd unit does not restart castrad on this one (RestartPreventExitStatus=3)
With --check: 0 no check failed, 1 a check failed (or the checks could not run: nothing on
stdout then), 2 usage error.";

/// The exit code when another castrad holds the state directory.
const EXIT_LOCKED: u8 = 3;

/// The Castra daemon: owns VMs and runs their bootstrap pipeline, driven over JSON-RPC 2.0 on a
/// Unix socket (HTTP POST and WebSocket).
#[derive(Debug, Parser)]
#[command(name = "castrad", version, after_help = EXIT_CODES)]
struct Args {
    /// Socket to listen on [default: $XDG_RUNTIME_DIR/castra/castrad.sock, without a runtime
    /// directory ~/.local/state/castra/run/castrad.sock]. A missing directory is created 0700;
    /// an existing one is left as it is and must be yours or root's, writable by nobody else.
    /// Ignored under systemd socket activation.
    #[arg(long, env = castra_api::SOCKET_ENV, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Base directory for per-project state [default: $XDG_STATE_HOME/castra].
    #[arg(long, env = crate::state_root::STATE_DIR_ENV, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Accelerator for every QEMU VM, beating castra.toml: auto (KVM when it can run a stock
    /// guest, else TCG), kvm or tcg.
    #[arg(long, env = "CASTRA_ACCEL", value_name = "ACCEL", value_parser = parse_accel)]
    accel: Option<crate::config::AccelSetting>,

    /// How many VMs may start or bootstrap at once, across all projects: a VM holds a slot
    /// from its launch (QEMU) or its plan until its run ends; the others wait, saying so.
    #[arg(
        long,
        env = "CASTRA_MAX_PARALLEL",
        default_value_t = crate::pipeline::slots::DEFAULT_LIMIT,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_parallel: u32,

    /// The image store: base images fetched by URL or imported from files, shared by every
    /// project [default: $XDG_CACHE_HOME/castra/images].
    #[arg(long, env = crate::images::STORE_ENV, value_name = "DIR")]
    image_store: Option<PathBuf>,

    /// Where catalog images (`base_image = "debian-12"`) are fetched from instead of their
    /// distribution's servers: URL/NAME/FILE for each image and its checksums file.
    #[arg(long, env = crate::images::MIRROR_ENV, value_name = "URL")]
    image_mirror: Option<String>,

    /// Your own settings: which host paths outside a project's directory projects may name
    /// (`allowed_paths`, `trusted_projects`); never a project's file
    /// [default: $XDG_CONFIG_HOME/castra/config.toml].
    #[arg(long, env = crate::state_root::USER_CONFIG_ENV, value_name = "FILE")]
    user_config: Option<PathBuf>,

    /// Check this machine instead of serving: print the machine checks of `castractl doctor`
    /// (QEMU, KVM, virtiofsd, the state directory, ssh, the systemd user service) as JSON,
    /// castra.doctor's result, with this command line's settings and environment; then exit.
    /// Starts no daemon, takes no lock, writes nothing. `castractl doctor` runs it when castrad
    /// does not answer.
    #[arg(long)]
    check: bool,

    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info` or `castrad=debug`.
    #[arg(
        long,
        env = "CASTRA_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
}

/// castrad's command line, for the man page made from it.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return check(args);
    }
    init_tracing(&args.log);
    let fd_limit = raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::from(e).context("starting the tokio runtime")),
    };
    match runtime.block_on(run(args, fd_limit)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `castrad --check`: the machine's checks (`doctor::machine`) as castra.doctor's result on
/// stdout. No tracing: stdout is JSON alone, stderr only says why the checks could not run.
fn check(args: Args) -> ExitCode {
    // The open file limit a castrad started here would run with.
    raise_fd_limit();
    let Some(state_base) = args.state_dir.or_else(crate::state_root::default_base) else {
        eprintln!("castrad: cannot find a home directory for state; pass --state-dir");
        return ExitCode::from(1);
    };
    let settings = crate::doctor::Settings {
        state_base,
        accel_override: args.accel,
        max_parallel: args.max_parallel,
    };
    let result = castra_api::DoctorResult {
        checks: crate::doctor::machine(&settings),
    };
    let failed = result
        .checks
        .iter()
        .any(|c| c.status == castra_api::CheckStatus::Fail);
    let json = serde_json::to_string_pretty(&result).expect("a DoctorResult serializes");
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{json}").is_err() {
        return ExitCode::from(1);
    }
    ExitCode::from(u8::from(failed))
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        // journald stamps every line itself: a second timestamp is noise in `journalctl`.
        builder.with_ansi(false).without_time().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM` to the
/// `device:inode` of the stream it gave the service, and stderr still being that stream (not
/// redirected since) is what counts (systemd.exec(5), "$JOURNAL_STREAM").
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// Pure: `JOURNAL_STREAM`'s `DEV:INODE` (decimal) names the file with `dev` and `ino`.
fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

async fn run(args: Args, fd_limit: Option<u64>) -> anyhow::Result<()> {
    let state_base = match args.state_dir {
        Some(dir) => dir,
        None => crate::state_root::default_base().ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory for state; pass --state-dir")
        })?,
    };
    let image_store = match args.image_store {
        // Absolute: overlays name their base by this path (a relative one would be read
        // against each overlay's own directory).
        Some(dir) => std::path::absolute(&dir)
            .map_err(|e| anyhow::anyhow!("--image-store {}: {e}", dir.display()))?,
        None => crate::images::default_dir().ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory for the image store; pass --image-store")
        })?,
    };
    let user_config = match args.user_config {
        Some(file) => std::path::absolute(&file)
            .map_err(|e| anyhow::anyhow!("--user-config {}: {e}", file.display()))?,
        None => crate::state_root::default_user_config().ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory for your config; pass --user-config")
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
        max_parallel: args.max_parallel,
        image_store,
        image_mirror: args.image_mirror.filter(|m| !m.is_empty()),
        user_config,
    };
    tracing::info!(
        max_parallel = settings.max_parallel,
        "at most {} VMs start or bootstrap at once (--max-parallel)",
        settings.max_parallel
    );
    if let Some(limit) = fd_limit {
        warn_if_few_fds(limit, settings.max_parallel);
    }
    let result = server::run(settings, listener, shutdown_signal()).await;
    drop(lock);
    result
}

/// Raises the soft limit on open files to the hard one: every VM's ssh session and Vizier
/// watch costs castrad a few descriptors, and a soft limit of 1024 (the usual default) would
/// run out a few hundred VMs in. Children (ssh, QEMU) inherit it; both use poll(), not
/// select(), so descriptors past 1024 do not trouble them. A failure is logged, not fatal.
/// Returns the soft limit castrad runs with, when it could be read.
fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open file limit (RLIMIT_NOFILE)");
            return None;
        }
    };
    // An unlimited hard limit still stops at the kernel's per-process ceiling.
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft >= target {
        tracing::debug!(limit = soft, "open file limit already at its maximum");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            tracing::info!(
                before = soft,
                after = target,
                "raised the open file limit (RLIMIT_NOFILE) to its hard limit"
            );
            Some(target)
        }
        Err(e) => {
            tracing::warn!(
                limit = soft,
                hard,
                error = %e,
                "cannot raise the open file limit (RLIMIT_NOFILE); castrad keeps {soft}"
            );
            Some(soft)
        }
    }
}

/// Says, once at start, when the open file limit leaves little room: every slot may need
/// [`MOST_FDS_PER_SLOT`] at once, on top of what each VM keeps after its run.
fn warn_if_few_fds(limit: u64, max_parallel: u32) {
    use crate::pipeline::slots::{FDS_PER_VM, MOST_FDS_PER_SLOT};
    let slots = u64::from(max_parallel) * MOST_FDS_PER_SLOT;
    let vms = limit.saturating_sub(slots + 64) / FDS_PER_VM;
    if vms < 256 {
        tracing::warn!(
            limit,
            max_parallel,
            "the open file limit ({limit}) is low for a fleet: {max_parallel} busy slots may \
             take up to {MOST_FDS_PER_SLOT} files each, leaving room for about {vms} VMs at \
             {FDS_PER_VM} each; raise the hard limit (LimitNOFILE= in castrad's unit, or \
             ulimit -Hn) or lower --max-parallel"
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(journal_stream_matches("65:1234", 65, 1234));
        assert!(!journal_stream_matches("65:1234", 65, 1235));
        assert!(!journal_stream_matches("66:1234", 65, 1234));
        for bad in ["", "65", "65:", ":1234", "x:y", "65:1234:1"] {
            assert!(!journal_stream_matches(bad, 65, 1234), "{bad:?}");
        }
    }
}
