//! Where the daemon listens, and what castractl looks for: the paths both binaries agree on.

use std::path::PathBuf;

/// Environment variable naming the socket, honoured by castrad and castractl alike.
pub const SOCKET_ENV: &str = "CASTRA_SOCKET";

/// The default socket path: `$XDG_RUNTIME_DIR/castra/castrad.sock`.
///
/// Without `XDG_RUNTIME_DIR` (a root shell outside a login session, CI), falls back to
/// `/run/user/<uid>/castra/castrad.sock` when that runtime directory exists, else to
/// `$XDG_STATE_HOME/castra/run/castrad.sock` (`~/.local/state/castra/run`). Both binaries use
/// this one function, so they always agree.
pub fn default_socket_path() -> PathBuf {
    runtime_dir().join("castrad.sock")
}

/// The per-user runtime directory castrad keeps its socket (and its ssh control sockets) in.
///
/// Never a shared directory such as `/tmp`: another user could take the name there first and
/// listen in castrad's place. The fallback is under the user's state directory: in their home,
/// which nobody else may write, local to this machine, and not a cache a cleaner may empty
/// while castrad runs.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        return dir.join("castra");
    }
    let uid = nix::unistd::geteuid().as_raw();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user.join("castra");
    }
    match directories::BaseDirs::new() {
        Some(base) => base
            .state_dir()
            .map(std::path::Path::to_owned)
            .unwrap_or_else(|| base.home_dir().join(".local/state"))
            .join("castra/run"),
        // No home directory: the runtime directory systemd would have made, which castrad
        // then fails to create, saying where.
        None => run_user.join("castra"),
    }
}

/// The project file name castractl looks for, walking up from the current directory.
pub const CONFIG_FILE_NAME: &str = "castra.toml";

/// How to start castrad: the one text every message giving this advice uses (castractl's
/// "cannot reach castrad" error and its `--help`, `castractl doctor`, castrad's own checks of
/// the user service), so a user meets one way to do it, worded one way.
pub const START_CASTRAD: &str = "start castrad: `systemctl --user enable --now castrad.socket` \
     (without a systemd user manager, run `castrad` in a terminal); if it listens on another \
     socket, pass --socket PATH or set CASTRA_SOCKET";

/// How to restart castrad (to run a newly installed version, or after a change it reads only
/// at start), worded one way everywhere.
pub const RESTART_CASTRAD: &str = "restart castrad: `systemctl --user restart castrad` (where \
     it runs in a terminal, stop it with Ctrl-C and start it again)";
