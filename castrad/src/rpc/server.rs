//! JSON-RPC 2.0 over a Unix socket, HTTP POST and WebSocket on the same socket.
//!
//! jsonrpsee has no Unix listener of its own, so we accept on a tokio `UnixListener`, check the
//! peer's uid (SO_PEERCRED: only our own user may drive the daemon) and hand each connection to
//! jsonrpsee's tower service with `serve_with_graceful_shutdown`.
//!
//! Socket ownership: when castrad binds the socket itself it owns the path — it refuses to start
//! if a live daemon answers there, replaces a stale socket, and removes it on shutdown. Under
//! systemd socket activation the path belongs to systemd and is left alone.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jsonrpsee::server::{PingConfig, ServerConfig, serve_with_graceful_shutdown, stop_channel};
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

use crate::daemon::{Daemon, Settings};

/// A listening socket, and whether castrad owns its path.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    /// Some(path) when we bound it (and so must remove it on exit).
    owned_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another castrad is already running on {}; stop it first (`systemctl --user stop castrad`) or pass a different --socket",
        path.display()
    )]
    AlreadyRunning { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error(
        "socket directory {} is owned by uid {owner} (mode {mode:04o}); castrad (uid {me}) keeps its socket only in a directory of its own or root's: pass --socket in one (castrad creates a missing directory 0700)",
        dir.display()
    )]
    ForeignDir {
        dir: PathBuf,
        owner: u32,
        mode: u32,
        me: u32,
    },
    #[error(
        "socket directory {} is writable by others (mode {mode:04o}, owner uid {owner}): another user could replace the socket there; castrad leaves an existing directory as it is, so pass --socket in a directory nobody else can write (castrad creates a missing one 0700)",
        dir.display()
    )]
    OpenDir { dir: PathBuf, owner: u32, mode: u32 },
    #[error("socket directory {} is not a directory", dir.display())]
    NotADir { dir: PathBuf },
    #[error("cannot prepare socket {}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl Listener {
    /// Binds `path`: a missing directory is created 0700 (with any missing parents); an
    /// existing one is never changed, and must be castrad's user's or root's and not writable
    /// by group or others (`/run` or `/tmp` as the directory of `--socket` keep their modes:
    /// `/tmp` is refused, `/run` used as it is). A stale socket is replaced, the socket is
    /// made 0600. A live daemon already answering there is an error.
    pub fn bind(path: &Path) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if d.as_os_str().is_empty() => Path::new("."),
            Some(d) => d,
            None => Path::new("/"),
        };
        socket_dir(dir, io_err)?;

        match std::fs::symlink_metadata(path) {
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt;
                if !m.file_type().is_socket() {
                    return Err(BindError::NotASocket {
                        path: path.to_owned(),
                    });
                }
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(BindError::AlreadyRunning {
                            path: path.to_owned(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tracing::info!(socket = %path.display(), "replacing stale socket");
                        std::fs::remove_file(path).map_err(io_err)?;
                    }
                    Err(e) => return Err(io_err(e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }

        let inner = UnixListener::bind(path).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        Ok(Listener {
            inner,
            owned_path: Some(path.to_owned()),
        })
    }

    /// The socket passed by systemd socket activation (`LISTEN_FDS`), if any.
    pub fn from_systemd() -> anyhow::Result<Option<Listener>> {
        let mut fds = sd_notify::listen_fds().context("reading LISTEN_FDS")?;
        let Some(fd) = fds.next() else {
            return Ok(None);
        };
        if fds.next().is_some() {
            anyhow::bail!("systemd passed more than one socket; castrad.socket must list one");
        }
        let std_listener = adopt_fd(fd);
        std_listener
            .set_nonblocking(true)
            .context("activated socket")?;
        let inner = UnixListener::from_std(std_listener).context("activated socket")?;
        Ok(Some(Listener {
            inner,
            owned_path: None,
        }))
    }
}

/// Prepares the socket's directory without changing one that exists: a missing directory is
/// created 0700 (and its missing parents; the umask can only take bits away), then whatever is
/// there, made now or found, must pass [`check_dir`]. Checking after creating also covers a
/// directory someone else made in between.
fn socket_dir(dir: &Path, io_err: impl Fn(io::Error) -> BindError) -> Result<(), BindError> {
    match std::fs::metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(&io_err)?;
        }
        Err(e) => return Err(io_err(e)),
    }
    let meta = std::fs::metadata(dir).map_err(&io_err)?;
    check_dir(
        dir,
        meta.is_dir(),
        meta.uid(),
        meta.mode(),
        nix::unistd::geteuid().as_raw(),
    )
}

/// Whether castrad may put its socket in `dir` (pure): a directory owned by `me` or root that
/// neither group nor others may write. A sticky bit does not make a shared directory fit:
/// another user could have made the socket's name there first.
fn check_dir(dir: &Path, is_dir: bool, owner: u32, mode: u32, me: u32) -> Result<(), BindError> {
    let dir = dir.to_owned();
    let mode = mode & 0o7777;
    if !is_dir {
        return Err(BindError::NotADir { dir });
    }
    if owner != me && owner != 0 {
        return Err(BindError::ForeignDir {
            dir,
            owner,
            mode,
            me,
        });
    }
    if mode & 0o022 != 0 {
        return Err(BindError::OpenDir { dir, owner, mode });
    }
    Ok(())
}

#[allow(unsafe_code)]
fn adopt_fd(fd: std::os::fd::RawFd) -> std::os::unix::net::UnixListener {
    use std::os::fd::FromRawFd;
    // SAFETY: sd_notify::listen_fds only yields fds in [3, 3 + LISTEN_FDS) and only when
    // LISTEN_PID is our pid: systemd opened them for this process and nothing else owns them.
    // It also marks them close-on-exec. We take ownership of the first and only one.
    unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) }
}

/// How many messages (answers, events) wait for a slow client, per connection (jsonrpsee's
/// default is 1024). An event of guest output is at most a 64 KiB line (`ssh::LINE_CAP`), so
/// this bounds what one client can make castrad hold to a few MiB; a subscription that cannot
/// send falls behind on the event ring, which is bounded too, and is told what it lost.
const MESSAGE_BUFFER: u32 = 32;

/// How often the server pings WebSocket clients. Pings keep quiet subscriptions (a long
/// handshake wait) alive and detect vanished clients.
const WS_PING: Duration = Duration::from_secs(15);

/// Runs castrad until `shutdown` resolves (mini-redis' `server::run`): builds the [`Daemon`],
/// re-adopts the VMs a previous castrad left running, serves the socket, then stops accepting,
/// removes the socket, stops the VM actors (runs in flight end failed, their events and
/// outcomes still delivered) and lets in-flight requests finish within the grace period.
pub async fn run(
    settings: Settings,
    listener: Listener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let daemon = Daemon::new(settings);
    daemon.adopt_running_vms().await;
    serve(daemon, listener, shutdown).await
}

/// After the runs were abandoned at shutdown, how long subscribers get to receive their
/// final `BootstrapFailed` events before the connections are closed.
const FLUSH_EVENTS: Duration = Duration::from_millis(200);

/// Serves until `shutdown` resolves, then removes an owned socket, stops the VM actors and
/// drains connections.
async fn serve(
    daemon: Arc<Daemon>,
    listener: Listener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let grace = daemon.settings.shutdown_grace;
    let methods = super::methods::module(daemon.clone());
    let config = ServerConfig::builder()
        .set_message_buffer_capacity(MESSAGE_BUFFER)
        .enable_ws_ping(
            PingConfig::new()
                .ping_interval(WS_PING)
                .inactive_limit(WS_PING * 4),
        )
        .build();
    let service_builder = jsonrpsee::server::Server::builder()
        .set_config(config)
        .to_service_builder();
    let (stop_handle, server_handle) = stop_channel();
    let tracker = TaskTracker::new();
    let me = nix::unistd::geteuid().as_raw();

    notify_ready();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.inner.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), "refused a connection from another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; refusing connection");
                continue;
            }
        }
        let service = service_builder
            .clone()
            .build(methods.clone(), stop_handle.clone());
        let stopped = stop_handle.clone().shutdown();
        tracker.spawn(async move {
            if let Err(e) = serve_with_graceful_shutdown(stream, service, stopped).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }

    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drop(listener.inner);
    if let Some(path) = &listener.owned_path {
        let _ = std::fs::remove_file(path);
    }
    // The runs end first, while the connections are still open: each VM's terminal event
    // reaches its subscribers and a waiting `castra.outcome` gets its answer.
    daemon.shutdown().await;
    tokio::time::sleep(FLUSH_EVENTS).await;
    let _ = server_handle.stop();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
    Ok(())
}

fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_goes_only_in_a_directory_of_ours_or_roots_that_nobody_else_writes() {
        let dir = Path::new("/d");
        assert!(check_dir(dir, true, 1000, 0o40700, 1000).is_ok());
        assert!(check_dir(dir, true, 1000, 0o40755, 1000).is_ok());
        // /run as root's castrad's directory: used as it is.
        assert!(check_dir(dir, true, 0, 0o40755, 0).is_ok());
        assert!(check_dir(dir, true, 0, 0o40755, 1000).is_ok());
        let open = check_dir(dir, true, 0, 0o41777, 0).unwrap_err().to_string();
        assert!(
            open.contains("/d is writable by others (mode 1777, owner uid 0)"),
            "{open}"
        );
        assert!(matches!(
            check_dir(dir, true, 1000, 0o40770, 1000),
            Err(BindError::OpenDir { .. })
        ));
        let foreign = check_dir(dir, true, 1001, 0o40700, 1000)
            .unwrap_err()
            .to_string();
        assert!(
            foreign.contains("/d is owned by uid 1001 (mode 0700); castrad (uid 1000)"),
            "{foreign}"
        );
        assert!(matches!(
            check_dir(dir, false, 1000, 0o100600, 1000),
            Err(BindError::NotADir { .. })
        ));
    }
}
