//! The session driver: `driver.sh`, the POSIX shell program that does a run's guest side in
//! one session, and everything castrad needs to speak with it: its command line
//! ([`invocation`]), the env block it reads from stdin ([`env_block`]), and its progress
//! markers, parsed once into [`Marker`] for the step machine (`steps.rs`) to match on.
//!
//! Contract with the script: remote layout `<remote_dir>/<script file name>` and
//! `<remote_dir>/payload/…` (a payload file lands as `payload/<its name>`); `remote_dir` is
//! created private (umask 077); env values reach the script through the env block on stdin,
//! never a command line; every word of the command goes through `ssh::quote`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::ssh::{COMMAND_LIMIT, command_line, compact};

/// The driver, as written (`driver.sh`); it is sent [`compact`]ed.
pub const DRIVER: &str = include_str!("driver.sh");

/// The marker line by which a script declares that nothing needed changing.
pub const NOOP_MARKER: &str = "CASTRA_NOOP";
/// The prefix by which a script fails the run with a reason.
pub const ERROR_MARKER: &str = "CASTRA_ERROR:";

/// One progress marker of the driver (`CASTRA-<nonce> <name> [code] [detail]`), in the order
/// the driver prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// `cloud-init <0|1|127> <detail>`: cloud-init has finished (`done`), failed (its own
    /// words), or is not installed (127, no detail: the words are castrad's). First, and only when the session asked to wait for it.
    CloudInit {
        ok: bool,
        detail: String,
    },
    /// `vizier-install <0|1> <detail>`: the agent's file is in place, or cannot be written.
    VizierInstall {
        ok: bool,
        detail: String,
    },
    /// `vizier-enable 0 <how>`: one agent runs under the guest's supervisor.
    VizierEnable {
        ok: bool,
        detail: String,
    },
    /// `vizier-log <path>`: the tail of the agent's guest log follows, until [`Marker::VizierLogEnd`].
    VizierLog,
    VizierLogEnd,
    /// `vizier-handshake 0`: the agent's two banner lines follow; `1 <why>`: no banner.
    VizierHandshake {
        ok: bool,
        detail: String,
    },
    /// `guest-setup <0|1> <detail>`: a guest without cloud-init has its shared folders mounted
    /// and its project network set up (what was done), or not (what failed); see
    /// `guest_setup.rs`. Only when the session asked for it, right after `pid`.
    GuestSetup {
        ok: bool,
        detail: String,
    },
    /// `pid <n>`: the driver's process id, first thing. sshd makes it a process group
    /// leader, so castrad can stop the guest side of a run (timeout, cancel) by group.
    Pid(u32),
    /// `unsafe <why>`: remote_dir or the Vizier directory could be changed by another
    /// account of the guest (see `safe` in driver.sh); nothing was run.
    Unsafe {
        detail: String,
    },
    /// `unsafe uncheckable: <why>`: the guest could not say who owns remote_dir or the Vizier
    /// directory and its parents (its `stat` is missing or has no `-c`): the check fails
    /// closed; nothing was run.
    Uncheckable {
        detail: String,
    },
    /// `connect 0`: the bootstrap session is open in remote_dir (the env block is read, the
    /// run lock taken); `connect 1 <pid>`: another run (that pid) holds remote_dir.
    Connect {
        ok: bool,
        detail: String,
    },
    /// The archive is unpacked.
    Transfer,
    /// On stderr: the script starts; what follows on stderr is the script's, until
    /// [`Marker::ScriptEnds`].
    ScriptStarts,
    /// On stderr: the script has exited; everything it wrote to stderr is before this line,
    /// which the driver starts with a newline of its own (glued to a last line without one, the
    /// 64 KiB line cap could cut the marker in two). `apply` is decided only once this has been
    /// read: the two streams travel apart.
    ScriptEnds,
    /// `apply <status>`: the script's exit status.
    Apply {
        status: i32,
    },
    /// `verify-command <status>`.
    VerifyCommand {
        status: i32,
    },
    /// `verify-path <0|1>`.
    VerifyPath {
        found: bool,
    },
    /// Everything succeeded; the session goes on as the agent's watch.
    Done,
}

impl Marker {
    /// Parses what follows `CASTRA-<nonce> ` on a line. None for a name castrad does not know
    /// or a code that is missing where one is required.
    pub fn parse(text: &str) -> Option<Marker> {
        let (name, after) = text.split_once(' ').unwrap_or((text, ""));
        let (code, detail) = match after.split_once(' ') {
            Some((c, d)) if c.parse::<i32>().is_ok() => (c.parse().ok(), d),
            None if after.parse::<i32>().is_ok() => (after.parse().ok(), ""),
            _ => (None, after),
        };
        let detail = detail.trim().to_owned();
        let ok = code == Some(0);
        Some(match name {
            "cloud-init" if code == Some(127) => Marker::CloudInit {
                ok,
                detail: "cloud-init is not installed in the guest".into(),
            },
            "cloud-init" => Marker::CloudInit { ok, detail },
            "vizier-install" => Marker::VizierInstall { ok, detail },
            "vizier-enable" => Marker::VizierEnable { ok, detail },
            "vizier-log" => Marker::VizierLog,
            "vizier-log-end" => Marker::VizierLogEnd,
            "vizier-handshake" => Marker::VizierHandshake { ok, detail },
            // 0 and 1 are no process a run could stop by group (1 would mean all).
            "pid" => match code? {
                pid @ 2.. => Marker::Pid(pid as u32),
                _ => return None,
            },
            "guest-setup" => Marker::GuestSetup { ok, detail },
            "unsafe" => match after.strip_prefix("uncheckable:") {
                Some(why) => Marker::Uncheckable {
                    detail: why.trim().to_owned(),
                },
                None => Marker::Unsafe { detail },
            },
            "connect" => Marker::Connect { ok, detail },
            "transfer" => Marker::Transfer,
            "script" => Marker::ScriptStarts,
            "script-end" => Marker::ScriptEnds,
            "apply" => Marker::Apply { status: code? },
            "verify-command" => Marker::VerifyCommand { status: code? },
            "verify-path" => match code? {
                0 => Marker::VerifyPath { found: true },
                1 => Marker::VerifyPath { found: false },
                _ => return None,
            },
            "done" => Marker::Done,
            _ => return None,
        })
    }
}

/// What to run in one session.
#[derive(Debug, Clone)]
pub struct Session<'a> {
    pub remote_dir: &'a str,
    pub script: &'a Path,
    pub payload: Option<&'a Path>,
    pub program: Vec<String>,
    pub env: &'a BTreeMap<String, String>,
    pub verify_command: Option<&'a str>,
    pub verify_path: Option<&'a str>,
    pub vizier_dir: Option<&'a str>,
    /// Wait for cloud-init to finish before anything else.
    pub cloud_init_wait: bool,
    /// Send the agent's supervisor set-up (`vizier::supervisor_script`), which the driver
    /// needs only to start the agent: false when castrad last saw this version healthy.
    pub supervisor_setup: bool,
    /// The guest setup the driver does first (`guest_setup.rs`): only once per boot of a QEMU
    /// VM without cloud-init (a cloud-init guest's seed does it).
    pub setup: Option<super::guest_setup::Setup>,
    /// Becomes true once castrad lets the run change the guest (the VM's stamp is gone): the
    /// env block and the archive, which the driver reads before it touches remote_dir, are
    /// sent only then.
    pub may_touch: tokio::sync::watch::Receiver<bool>,
}

/// The driver's remote command line, and what goes on stdin before the env block: the
/// agent's text, when the command would be longer than [`COMMAND_LIMIT`] with it, then the
/// supervisor set-up, if sent (on stdin always: a rare, large word), then the guest setup's
/// /etc/hosts lines, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: String,
    pub agent_block: String,
}

/// The command that runs the driver for `session`, its markers tagged with `nonce`.
/// `watch_every`: the health check's interval (the session goes on as the agent's watch).
pub fn invocation(
    session: &Session<'_>,
    script_name: &str,
    nonce: &str,
    watch_every: std::time::Duration,
) -> Invocation {
    let agent = crate::vizier::agent_script();
    let mut words = vec![
        "sh".to_owned(),
        "-c".into(),
        compact(DRIVER),
        "castra".into(),
        nonce.to_owned(),
        session.remote_dir.into(),
        script_name.to_owned(),
        session.verify_command.unwrap_or_default().into(),
        session.verify_path.unwrap_or_default().into(),
        session.vizier_dir.unwrap_or_default().into(),
        crate::vizier::VERSION.into(),
    ];
    let agent_word = words.len();
    words.push(agent.clone());
    words.push(watch_every.as_secs().to_string());
    words.push(if session.cloud_init_wait { "1" } else { "" }.into());
    words.push(if session.supervisor_setup { "1" } else { "" }.into());
    words.extend(super::guest_setup::driver_words(session.setup.as_ref()));
    words.extend(session.program.iter().cloned());
    // The supervisor set-up, then the setup's /etc/hosts lines, follow the agent's text on
    // stdin (the driver reads them before the env block).
    let mut input = match session.supervisor_setup {
        true => block(&crate::vizier::supervisor_script()),
        false => String::new(),
    };
    input.push_str(session.setup.as_ref().map_or("", |s| s.input.as_str()));
    let command = command_line(&words);
    if command.len() <= COMMAND_LIMIT {
        return Invocation {
            command,
            agent_block: input,
        };
    }
    words[agent_word] = "-".into();
    Invocation {
        command: command_line(&words),
        agent_block: format!("{}{input}", block(&agent)),
    }
}

/// `text` (whole lines) as the driver's `block` reads it: its line count, then the lines.
fn block(text: &str) -> String {
    format!("{}\n{text}", text.matches('\n').count())
}

/// The command that stops the guest side of a run whose driver is `pid` (see `Marker::Pid`):
/// TERM to its process group (the script, verify_command and whatever they started), KILL
/// to what is left after 5 s. A driver that is no group leader gets the TERM alone.
pub fn stop_command(pid: u32) -> String {
    format!(
        "p={pid}; kill -TERM -- -$p 2>/dev/null || kill -TERM $p 2>/dev/null; i=0; \
         while kill -0 -- -$p 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
         kill -KILL -- -$p 2>/dev/null; true"
    )
}

/// The env block: a line count, then shell assignments (`K='value'; export K`), one per
/// variable, spread over more lines only where a value holds newlines. Single quotes keep
/// every byte as it is, so the driver's `eval` needs no command substitution (a fork per
/// variable, slow in an emulated guest), and the block is as short as the values: the shell
/// reads it one byte per system call. Keys were validated as identifiers by `config`.
pub fn env_block(env: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (k, v) in env {
        text.push_str(&format!("{k}={}; export {k}\n", crate::ssh::quote(v)));
    }
    format!("{}\n{text}", text.matches('\n').count())
}

/// A script path without a file name the guest can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} has no usable file name", .0.display())]
pub struct BadScriptName(pub PathBuf);

/// The script's file name as it lands in remote_dir.
pub fn script_name(path: &Path) -> Result<String, BadScriptName> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| BadScriptName(path.to_owned()))
}

/// How to start the script: directly when it is executable with a `#!` line, else with `sh`.
pub fn program(script: &Path) -> Result<Vec<String>, BadScriptName> {
    use std::os::unix::fs::PermissionsExt;
    let name = format!("./{}", script_name(script)?);
    let mut head = [0u8; 2];
    let shebang = std::fs::File::open(script)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .is_ok_and(|n| n == 2 && head == *b"#!");
    let executable = std::fs::metadata(script).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    Ok(if shebang && executable {
        vec![name]
    } else {
        vec!["sh".into(), name]
    })
}

#[cfg(test)]
mod tests;
