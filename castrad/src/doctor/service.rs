//! The checks castrad as a systemd user service needs: systemd runs at all (PID 1), the user
//! units are installed (and the service's `ExecStart=` names a castrad that exists), the
//! socket is enabled, lingering, and whether the PATH systemd gives the user's services finds
//! the programs castrad runs (a service does not see the login shell's PATH).
//!
//! The verdicts are pure functions of what was found (unit-tested in `service/tests.rs`);
//! [`checks`] does the looking: a few stats and reads, `systemctl --user is-enabled` and
//! `systemctl --user show-environment`, which change nothing.

use std::path::{Path, PathBuf};

use castra_api::{DoctorCheck, RESTART_CASTRAD, START_CASTRAD};

use crate::backend::qemu::argv::QEMU;
use crate::distro::{self, Package};

/// The user units castrad ships.
pub const SOCKET_UNIT: &str = "castrad.socket";
pub const SERVICE_UNIT: &str = "castrad.service";

/// Where systemd-logind marks a user as lingering.
const LINGER_DIR: &str = "/var/lib/systemd/linger";

/// The PATH systemd gives a user manager's services when it does not say otherwise (its
/// compiled-in default).
pub const DEFAULT_USER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";

/// The programs castrad runs by name (looked up in its PATH), with their package.
const PROGRAMS: [(&str, Package); 4] = [
    (QEMU, Package::Qemu),
    ("qemu-img", Package::QemuImg),
    ("ssh", Package::OpenSsh),
    ("ssh-keygen", Package::OpenSsh),
];

/// The service checks, always these four (a client may key on their names): `units`,
/// `socket`, `linger`, `service-path`. Where systemd is not PID 1, `socket` says so (a
/// warning: castrad is started by hand) and the others that they do not apply.
pub fn checks() -> Vec<DoctorCheck> {
    // sd_booted(3): systemd creates this directory when it is PID 1.
    if !Path::new("/run/systemd/system").is_dir() {
        let pid1 = std::fs::read_to_string("/proc/1/comm")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        return no_systemd(&pid1);
    }
    let user = user_name();
    let xdg = Xdg::of_process();
    let dirs = unit_dirs(&xdg);
    let socket = find_unit(&dirs, SOCKET_UNIT);
    let service = find_unit(&dirs, SERVICE_UNIT);
    let exec = service
        .as_deref()
        .and_then(|unit| std::fs::read_to_string(unit).ok())
        .and_then(|text| exec_start(&text, &xdg.home))
        .map(|program| {
            let exists = program.is_file();
            (program, exists)
        });
    let enabled = systemctl(&["is-enabled", SOCKET_UNIT]);
    // The service's own Environment= (a drop-in, as the fix below says) beats the manager's.
    let of_service = systemctl(&["show", SERVICE_UNIT, "--property=Environment", "--value"]);
    let environment = systemctl(&["show-environment"]);
    let from_service = match &of_service {
        Ok(run) if run.success => service_env_path(&run.stdout),
        _ => None,
    };
    let from_manager = match &environment {
        Ok(run) if run.success => path_of(&run.stdout),
        _ => None,
    };
    let (path, source) = match (from_service, from_manager) {
        (Some(path), _) => (path, PathSource::Service),
        (None, Some(path)) => (path, PathSource::Manager),
        (None, None) => (DEFAULT_USER_PATH.to_owned(), PathSource::Default),
    };
    let ours = std::env::var("PATH").unwrap_or_default();
    let lookups: Vec<Lookup> = PROGRAMS
        .iter()
        .map(|&(program, package)| Lookup {
            program,
            package,
            service: which(program, &path),
            here: which(program, &ours),
        })
        .collect();
    let mut missing: Vec<Package> = lookups
        .iter()
        .filter(|l| l.service.is_none())
        .map(|l| l.package)
        .collect();
    missing.dedup();
    vec![
        units(&dirs, socket.as_deref(), service.as_deref(), exec),
        socket_enabled(&user, &enabled),
        linger(&user, Path::new(LINGER_DIR).join(&user).exists()),
        service_path(&path, source, &lookups, &distro::install(&missing)),
    ]
}

/// Pure: the four checks where systemd is not PID 1 (a container, WSL without systemd,
/// another init): no socket starts castrad, and units, lingering and the services' PATH do
/// not apply.
pub fn no_systemd(pid1: &str) -> Vec<DoctorCheck> {
    let moot = |check: &str| {
        DoctorCheck::ok(
            check,
            None,
            format!("does not apply: systemd is not running here (PID 1 is `{pid1}`)"),
        )
    };
    vec![
        moot("units"),
        DoctorCheck::warn(
            "socket",
            None,
            format!(
                "systemd is not running here (PID 1 is `{pid1}`): no socket starts castrad on \
                 demand, and no user service runs it"
            ),
            START_CASTRAD,
        ),
        moot("linger"),
        moot("service-path"),
    ]
}

/// The XDG base directories systemd builds a user's unit path from.
#[derive(Debug, Clone, Default)]
pub struct Xdg {
    pub home: PathBuf,
    pub config_home: Option<PathBuf>,
    pub data_home: Option<PathBuf>,
    /// `XDG_DATA_DIRS`, as it is (colon-separated).
    pub data_dirs: Option<String>,
}

impl Xdg {
    fn of_process() -> Xdg {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
                .unwrap_or_default()
        });
        Xdg {
            home,
            config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            data_home: var("XDG_DATA_HOME").map(PathBuf::from),
            data_dirs: var("XDG_DATA_DIRS").map(|v| v.to_string_lossy().into_owned()),
        }
    }
}

/// Pure: the directories a user manager loads units from that a person installs into, in
/// systemd's order of precedence (systemd.unit(5), "User Unit Search Path"; the runtime,
/// transient and generator directories left out).
pub fn unit_dirs(x: &Xdg) -> Vec<PathBuf> {
    let config = x
        .config_home
        .clone()
        .unwrap_or_else(|| x.home.join(".config"));
    let data = x
        .data_home
        .clone()
        .unwrap_or_else(|| x.home.join(".local/share"));
    let data_dirs = x
        .data_dirs
        .clone()
        .unwrap_or_else(|| "/usr/local/share:/usr/share".to_owned());
    let mut dirs = vec![
        config.join("systemd/user"),
        PathBuf::from("/etc/systemd/user"),
    ];
    dirs.push(data.join("systemd/user"));
    dirs.extend(
        data_dirs
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join("systemd/user")),
    );
    dirs.push(PathBuf::from("/usr/local/lib/systemd/user"));
    dirs.push(PathBuf::from("/usr/lib/systemd/user"));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

fn find_unit(dirs: &[PathBuf], unit: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(unit)).find(|p| p.exists())
}

/// Pure: the program a unit's first `ExecStart=` runs, read as systemd reads it (a word in
/// double or single quotes, as `scripts/install` writes it, with its backslash escapes; `%h`
/// expanded to `home`, `%%` to `%`); None when it is not an absolute path (systemd would
/// search it in its own PATH).
pub fn exec_start(unit: &str, home: &Path) -> Option<PathBuf> {
    let value = unit
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("ExecStart="))?;
    // Prefixes that change how systemd runs the command, not what it runs.
    let command = value.trim_start_matches(['@', '-', ':', '+', '!', '|']);
    let mut chars = command.chars();
    let mut word = String::new();
    let quote = match command.chars().next()? {
        q @ ('"' | '\'') => {
            chars.next();
            Some(q)
        }
        _ => None,
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.push(chars.next()?),
            c if Some(c) == quote => break,
            c if quote.is_none() && c.is_whitespace() => break,
            c => word.push(c),
        }
    }
    let mut program = String::new();
    let mut rest = word.chars();
    while let Some(c) = rest.next() {
        match (c, rest.clone().next()) {
            ('%', Some('h')) => {
                rest.next();
                program.push_str(&home.to_string_lossy());
            }
            ('%', Some('%')) => {
                rest.next();
                program.push('%');
            }
            (c, _) => program.push(c),
        }
    }
    program.starts_with('/').then(|| PathBuf::from(program))
}

/// Pure: the verdict on the installed units. `exec`: the program the service starts, and
/// whether it exists.
pub fn units(
    dirs: &[PathBuf],
    socket: Option<&Path>,
    service: Option<&Path>,
    exec: Option<(PathBuf, bool)>,
) -> DoctorCheck {
    let (Some(socket), Some(service)) = (socket, service) else {
        let missing: Vec<&str> = [(SOCKET_UNIT, socket), (SERVICE_UNIT, service)]
            .iter()
            .filter(|(_, found)| found.is_none())
            .map(|(unit, _)| *unit)
            .collect();
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return DoctorCheck::warn(
            "units",
            None,
            format!(
                "castrad's user units are not installed: no {} in {}",
                missing.join(" or "),
                dirs.join(", ")
            ),
            "install them with castrad: scripts/install (or the castra package) puts them in \
             place; then systemctl --user daemon-reload",
        );
    };
    let place = |p: &Path| {
        p.parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    };
    let found = if place(socket) == place(service) {
        format!("{SOCKET_UNIT} and {SERVICE_UNIT} in {}", place(socket))
    } else {
        format!(
            "{SOCKET_UNIT} in {}, {SERVICE_UNIT} in {}",
            place(socket),
            place(service)
        )
    };
    match exec {
        Some((program, false)) => DoctorCheck::warn(
            "units",
            None,
            format!(
                "{found}, but {SERVICE_UNIT} starts {}, which does not exist",
                program.display()
            ),
            format!(
                "install castrad again (scripts/install writes the unit with the castrad it \
                 installed), then systemctl --user daemon-reload; or point ExecStart= at castrad \
                 with systemctl --user edit --full {SERVICE_UNIT}"
            ),
        ),
        Some((program, true)) => DoctorCheck::ok(
            "units",
            None,
            format!("{found} (starting {})", program.display()),
        ),
        None => DoctorCheck::ok("units", None, found),
    }
}

/// What a `systemctl` run said.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `systemctl --user ARGS`, or why it could not run.
fn systemctl(args: &[&str]) -> Result<Run, String> {
    let out = std::process::Command::new("systemctl")
        .arg("--user")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    Ok(Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Pure: the verdict on `systemctl --user is-enabled castrad.socket`.
pub fn socket_enabled(user: &str, run: &Result<Run, String>) -> DoctorCheck {
    let unreachable = |why: &str| {
        DoctorCheck::warn(
            "socket",
            None,
            format!("systemd's user manager for {user} does not answer ({why})"),
            format!(
                "a session of your own (a login, not su or sudo) has one; `sudo loginctl \
                 enable-linger {user}` starts it at boot; then {START_CASTRAD}"
            ),
        )
    };
    let run = match run {
        Ok(run) => run,
        Err(e) => return unreachable(e.as_str()),
    };
    let state = run.stdout.lines().next().unwrap_or("").trim();
    let last_error = run
        .stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no answer");
    // Not "Failed to connect to bus: No such file or directory": that is the manager.
    let unknown = state == "not-found"
        || (state.is_empty()
            && run.stderr.contains(SOCKET_UNIT)
            && ["No such file", "not found", "does not exist"]
                .iter()
                .any(|s| run.stderr.contains(s)));
    if unknown {
        return DoctorCheck::warn(
            "socket",
            None,
            format!("systemd's user manager does not know {SOCKET_UNIT}"),
            format!(
                "install the units (see the units check) and run systemctl --user \
                 daemon-reload; then {START_CASTRAD}"
            ),
        );
    }
    match state {
        "enabled" | "enabled-runtime" => DoctorCheck::ok(
            "socket",
            None,
            format!("{SOCKET_UNIT} is {state}: systemd starts castrad on the first connection"),
        ),
        "" => unreachable(last_error),
        other => DoctorCheck::warn(
            "socket",
            None,
            format!("{SOCKET_UNIT} is {other}: systemd does not start castrad on demand"),
            START_CASTRAD,
        ),
    }
}

/// Pure: the verdict on lingering (`on`: systemd-logind's mark for `user` exists).
pub fn linger(user: &str, on: bool) -> DoctorCheck {
    if on {
        DoctorCheck::ok(
            "linger",
            None,
            format!(
                "on for {user}: your user manager, castrad and its VMs keep running with no \
                 session open"
            ),
        )
    } else {
        DoctorCheck::warn(
            "linger",
            None,
            format!(
                "off for {user} (no {LINGER_DIR}/{user}): when your last session ends, systemd \
                 stops your user manager and its services, castrad and the VMs it started \
                 with them"
            ),
            format!("sudo loginctl enable-linger {user} (if VMs should outlive your sessions)"),
        )
    }
}

/// Pure: the `PATH=` of `systemctl --user show castrad.service --property=Environment
/// --value` (the service's assignments, space-separated; one with a space in it is quoted).
pub fn service_env_path(environment: &str) -> Option<String> {
    environment
        .split_whitespace()
        .find_map(|w| w.trim_matches('"').strip_prefix("PATH="))
        .map(str::to_owned)
}

/// Where the PATH castrad's service gets comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSource {
    /// castrad.service's own `Environment=` (a drop-in).
    Service,
    /// The user manager's environment.
    Manager,
    /// Neither said: systemd's default.
    Default,
}

/// Pure: the `PATH=` line of `systemctl --user show-environment`.
pub fn path_of(environment: &str) -> Option<String> {
    environment
        .lines()
        .find_map(|l| l.strip_prefix("PATH="))
        .map(str::to_owned)
}

/// One program castrad runs: where systemd's PATH for services finds it, and where this
/// process's PATH does.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub program: &'static str,
    pub package: Package,
    pub service: Option<PathBuf>,
    pub here: Option<PathBuf>,
}

/// An executable file named `program` in a directory of `path`.
fn which(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Pure: the verdict on the PATH systemd gives castrad's service (`source`: who said it).
/// `install`: the command that installs what no PATH has.
pub fn service_path(
    path: &str,
    source: PathSource,
    lookups: &[Lookup],
    install: &str,
) -> DoctorCheck {
    let source = match source {
        PathSource::Service => "castrad.service's Environment=",
        PathSource::Manager => "systemctl --user show-environment",
        PathSource::Default => "systemd's default; the user manager did not say",
    };
    let missing: Vec<&Lookup> = lookups.iter().filter(|l| l.service.is_none()).collect();
    if missing.is_empty() {
        let names: Vec<&str> = lookups.iter().map(|l| l.program).collect();
        return DoctorCheck::ok(
            "service-path",
            None,
            format!(
                "the PATH systemd gives your services finds {} (PATH={path}, {source})",
                names.join(", ")
            ),
        );
    }
    let names: Vec<&str> = missing.iter().map(|l| l.program).collect();
    let verdict = format!(
        "a castrad started by systemd would not find {} (PATH={path}, {source})",
        names.join(", ")
    );
    let mut elsewhere: Vec<String> = Vec::new();
    for l in &missing {
        if let Some(dir) = l.here.as_deref().and_then(Path::parent) {
            let dir = dir.display().to_string();
            if !elsewhere.contains(&dir) {
                elsewhere.push(dir);
            }
        }
    }
    let fix = if missing.iter().all(|l| l.here.is_some()) {
        format!(
            "your shell finds them in {}: give castrad's service that PATH with a drop-in \
             (systemctl --user edit castrad.service: [Service] Environment=\"PATH={}:{path}\"), \
             then {RESTART_CASTRAD}",
            elsewhere.join(", "),
            elsewhere.join(":")
        )
    } else {
        format!("install them: {install}")
    };
    DoctorCheck::warn("service-path", None, verdict, fix)
}

/// castrad's user's name (for lingering and messages): the user database's, else `$USER`,
/// else the uid.
fn user_name() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests;
