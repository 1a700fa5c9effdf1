//! The guest side of a run in ONE `ssh` process and ONE shell session: the connection that
//! authenticates (the end of `wait-handshake`) runs the session driver itself, so a run costs
//! what a hand-written `tar | ssh host sh run.sh` costs: one key exchange, one session (on a
//! guest whose shell start-up files are slow, each extra session costs that again).
//!
//! Remote layout: `<remote_dir>/<script file name>` and `<remote_dir>/payload/…` (a payload
//! file lands as `payload/<its name>`). `remote_dir` is created private (umask 077).
//!
//! The session's stdin carries, in order: the env block (a line count, then the lines of
//! quoted shell assignments) and the tar archive. The guest shell's `read` consumes the env
//! lines byte by byte, so `tar` sees exactly the archive. Env values therefore never touch
//! a command line (no `ps` shows them), and every other word of the remote command goes
//! through `ssh::quote`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use castra_api::OutputStream;
use tokio::io::AsyncRead;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::ssh::{COMMAND_LIMIT, Connection, Tail, Target, command_line, compact, lines};

/// The guest side of a run, one shell session. In order: install the Vizier agent (its text is
/// an argument) if this version is not there yet, make sure exactly one instance runs under the
/// guest's supervisor, read its banner, mirror its log; then open the bootstrap session in
/// remote_dir (read the env block), unpack the archive, run the script, verify.
///
/// Progress is reported as marker lines `CASTRA-<nonce> <step> [code] [detail]` on stdout
/// (preceded by a newline, in case the script's last line had none). Arguments: nonce,
/// remote_dir, script file name, verify command ("" = none), verify path ("" = none), Vizier
/// directory ("" = /opt/castra/vizier for root, <remote_dir>/.vizier otherwise), the agent's
/// version and text (ours, no secret: an argument, because the shell's `read` takes a pipe one
/// byte per system call; "-" when it comes first on stdin instead, see [`COMMAND_LIMIT`]),
/// the health check's interval in seconds ("" = end the session at `done`), then the program
/// to run.
///
/// After `done` the session becomes the agent's `watch` (the Vizier health check's reports),
/// so a run and the watching that follows it cost the guest one session start, not two.
///
/// Every process the driver starts costs the guest a fork and an exec (about a millisecond of
/// CPU each; more under emulation), so files are read with `read`, not `cat`, the uid is asked
/// for only when needed, and a rerun skips what is already in place.
const DRIVER: &str = r#"set -e
nonce=$1; dir=$2; script=$3; vcmd=$4; vpath=$5; vdir=$6; vver=$7; agent=$8; every=$9; shift 9
m() { printf '\nCASTRA-%s %s\n' "$nonce" "$*"; }
block() { IFS= read -r n; out=; while [ "$n" -gt 0 ]; do IFS= read -r l; out="$out$l
"; n=$((n-1)); done; }
if [ "$agent" = - ]; then block; agent=$out; fi
uid=
root() { [ -n "$uid" ] || uid=$(id -u); [ "$uid" = 0 ]; }
if [ -n "$vdir" ]; then vlog=$vdir/service.log
elif root; then vdir=/opt/castra/vizier; vlog=/var/log/castra/vizier/service.log
else vdir=$dir/.vizier; vlog=$vdir/service.log; fi
vbin=$vdir/$vver/vizier.sh; vstate=$vdir/state
if [ -f "$vbin" ] && printf '%s' "$agent" | cmp -s - "$vbin"; then m vizier-install 0 present "$vbin"
elif { mkdir -p "$vdir/$vver" "${vlog%/*}" "$vstate" && printf '%s' "$agent" >"$vbin.tmp" && mv -f "$vbin.tmp" "$vbin"; } 2>/dev/null
then m vizier-install 0 installed "$vbin"
else m vizier-install 1 "cannot write $vbin"; exit 0; fi
held=; hver=
{ read -r held <"$vstate/lock/pid"; } 2>/dev/null || true
{ read -r hver <"$vstate/lock/version"; } 2>/dev/null || true
if [ -n "$held" ] && kill -0 "$held" 2>/dev/null && [ "$hver" = "$vver" ]; then how=running
else
  how=started
  if [ -n "$held" ] && kill -0 "$held" 2>/dev/null; then sh "$vbin" stop "$vstate" || true; how="restarted (was $hver)"; fi
  printf "" 2>/dev/null >"$vstate/agent.pid" || true # not the new agent's: wait for it below
  if root && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    printf '[Unit]\nDescription=Castra Vizier agent\n[Service]\nExecStart=/bin/sh %s supervise %s %s\nRestart=always\nRestartSec=1\n[Install]\nWantedBy=multi-user.target\n' "$vbin" "$vstate" "$vlog" >/etc/systemd/system/castra-vizier.service
    systemctl daemon-reload && systemctl enable castra-vizier >/dev/null 2>&1 && systemctl restart castra-vizier; how="$how under systemd"
  elif root && command -v openrc-run >/dev/null && [ -d /etc/init.d ]; then
    printf '#!/sbin/openrc-run\ncommand=/bin/sh\ncommand_args="%s supervise %s %s"\ncommand_background=yes\npidfile=/run/castra-vizier.pid\n' "$vbin" "$vstate" "$vlog" >/etc/init.d/castra-vizier
    chmod 755 /etc/init.d/castra-vizier; rc-update add castra-vizier default >/dev/null 2>&1 || true
    rc-service castra-vizier restart >/dev/null 2>&1; how="$how under OpenRC"
  else
    if command -v setsid >/dev/null; then setsid sh "$vbin" supervise "$vstate" "$vlog" </dev/null >/dev/null 2>&1 &
    else nohup sh "$vbin" supervise "$vstate" "$vlog" </dev/null >/dev/null 2>&1 & fi
    how="$how (respawn loop)"
  fi
fi
m vizier-enable 0 "$how"
i=0; banner=; limit=20
if [ "$how" != running ]; then
  limit=50 # a just-started agent gets 5 s, first to name itself (cheap to check), then to answer
  while [ ! -s "$vstate/agent.pid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; i=$((i/2))
fi
while [ $i -lt $limit ]; do banner=$(sh "$vbin" banner "$vstate" 2>/dev/null) && break; banner=; i=$((i+1)); sleep 0.1; done
m vizier-log "$vlog"; tail -c 16384 "$vlog" 2>/dev/null || true; m vizier-log-end
if [ -z "$banner" ]; then m vizier-handshake 1 "no banner from $vbin within $((limit / 10)) s"; exit 0; fi
m vizier-handshake 0; printf '%s\n' "$banner"
[ -d "$dir" ] || (umask 077 && mkdir -p -- "$dir")
cd -- "$dir"
block; envs=$out
m connect
if [ -e payload ] || [ -e "$script" ]; then rm -rf -- payload "$script"; fi
tar -x -f -
m transfer
set +e
(eval "$envs"; exec "$@") </dev/null
rc=$?
m apply $rc
[ $rc -eq 0 ] || exit 0
if [ -n "$vcmd" ]; then (eval "$envs"; exec sh -c "$vcmd") </dev/null; rc=$?; m verify-command $rc; [ $rc -eq 0 ] || exit 0; fi
if [ -n "$vpath" ]; then if [ -e "$vpath" ]; then m verify-path 0; else m verify-path 1; exit 0; fi; fi
m done
[ -z "$every" ] || exec sh "$vbin" watch "$vstate" "$every" </dev/null
"#;

/// The marker line by which a script declares that nothing needed changing.
pub const NOOP_MARKER: &str = "CASTRA_NOOP";
/// The prefix by which a script fails the run with a reason.
pub const ERROR_MARKER: &str = "CASTRA_ERROR:";

/// What the guest session reports, in order (stderr lines may interleave loosely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// ssh has authenticated: the guest accepts us (always the first note, once).
    Authenticated,
    /// A step boundary: `vizier-install <rc> <detail>`, `vizier-enable <rc> <detail>`,
    /// `vizier-handshake <rc> [why]`, `connect`, `transfer`, `apply <rc>`,
    /// `verify-command <rc>`, `verify-path <0|1>`, `done`; and `vizier-log <path>` /
    /// `vizier-log-end` around the agent's log.
    Marker {
        name: String,
        code: Option<i32>,
        rest: String,
    },
    Line {
        stream: OutputStream,
        line: String,
    },
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
}

/// How the session ended (or, after `done`, went on as the agent's watch).
#[derive(Debug)]
pub struct Ended {
    /// None when the session reached `done` and goes on in `tail`.
    pub status: Option<std::process::ExitStatus>,
    /// What ssh printed when it ended before authenticating (see `ssh::classify`).
    pub unauthenticated: Option<String>,
    /// The last non-empty stderr line, for error messages.
    pub last_stderr: String,
    /// Why sending the env block or archive failed, when it did for a reason of ours (an
    /// unreadable payload file) rather than the guest hanging up.
    pub send_error: Option<String>,
    /// The session after `done`: the agent's watch, for the health check to read.
    pub tail: Option<Tail>,
}

/// How often the session looks for ssh's control socket until it has authenticated.
const AUTH_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// How long key exchange and authentication may take once the server has answered.
const AUTH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to `target` and runs the whole guest side in that connection's session, sending
/// notes to `notes`: [`Note::Authenticated`] first, then what the driver reports.
pub async fn session(
    target: Target,
    s: &Session<'_>,
    notes: UnboundedSender<Note>,
) -> Result<Ended, String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let nonce = crate::ids::random_hex(8);
    let script_name = file_name(s.script)?;
    let agent = crate::vizier::agent_script();
    let mut words = vec![
        "sh".to_owned(),
        "-c".into(),
        compact(DRIVER),
        "castra".into(),
        nonce.clone(),
        s.remote_dir.into(),
        script_name.clone(),
        s.verify_command.unwrap_or_default().into(),
        s.verify_path.unwrap_or_default().into(),
        s.vizier_dir.unwrap_or_default().into(),
        crate::vizier::VERSION.into(),
    ];
    let agent_word = words.len();
    words.push(agent.clone());
    words.push(crate::vizier::health::INTERVAL.as_secs().to_string());
    words.extend(s.program.iter().cloned());
    let mut command = command_line(&words);
    let mut agent_block = String::new();
    if command.len() > COMMAND_LIMIT {
        words[agent_word] = "-".into();
        command = command_line(&words);
        agent_block = format!("{}\n{agent}", agent.matches('\n').count());
    }
    let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let mut conn = Connection::spawn(
        target,
        &command,
        reader.into(),
        Stdio::piped(),
        Stdio::piped(),
    )
    .map_err(|e| format!("{e}"))?;
    let env_block = env_block(s.env);
    let (script, payload) = (s.script.to_owned(), s.payload.map(Path::to_owned));
    let feeder = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        writer.write_all(agent_block.as_bytes())?;
        writer.write_all(env_block.as_bytes())?;
        write_archive(writer, &script, &script_name, payload.as_deref())
    });

    // Authenticated is noted once, before anything the session prints: by whichever sees it
    // first, the socket poll below or the first line on stdout.
    let authenticated = Arc::new(AtomicBool::new(false));
    let authenticate = {
        let (flag, notes) = (authenticated.clone(), notes.clone());
        move || {
            if !flag.swap(true, Ordering::SeqCst) {
                let _ = notes.send(Note::Authenticated);
            }
        }
    };
    let marker = format!("CASTRA-{nonce} ");
    let mut stdout = conn
        .child()
        .stdout
        .take()
        .map(|o| tokio::spawn(read_stdout(o, marker, notes.clone(), authenticate.clone())));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stderr_open = match conn.child().stderr.take() {
        Some(e) => {
            tokio::spawn(lines(e, tx));
            true
        }
        None => false,
    };
    // Until authentication, stderr is ssh's own (why it cannot get in): held, and sent on as
    // output only if the session starts after all.
    let mut held: Vec<String> = Vec::new();
    let mut last_stderr = String::new();
    let mut on_stderr = |line: String| {
        if !line.trim().is_empty() {
            last_stderr = line.trim().to_owned();
        }
        let _ = notes.send(Note::Line {
            stream: OutputStream::Stderr,
            line,
        });
    };
    let mut poll = tokio::time::interval(AUTH_POLL);
    // ssh's ConnectTimeout covers the TCP connect and the banner, not what follows.
    let give_up = std::time::Instant::now() + conn.target().connect_timeout + AUTH_GRACE;
    let mut gave_up = false;
    // Until stdout has seen `done` (the session goes on as the watch) or both streams ended.
    let mut tail_lines = None;
    while stdout.is_some() || stderr_open {
        let waiting = !authenticated.load(Ordering::SeqCst) && !gave_up;
        tokio::select! {
            _ = poll.tick(), if waiting => {
                if conn.authenticated() {
                    authenticate();
                } else if std::time::Instant::now() > give_up {
                    let _ = conn.child().start_kill();
                    held.push(format!(
                        "no connection after {} s (authentication did not finish)",
                        (conn.target().connect_timeout + AUTH_GRACE).as_secs()
                    ));
                    gave_up = true;
                }
            }
            line = rx.recv(), if stderr_open => match line {
                Some(line) if !authenticated.load(Ordering::SeqCst) => held.push(line),
                Some(line) => {
                    held.drain(..).for_each(&mut on_stderr);
                    on_stderr(line);
                }
                None => stderr_open = false,
            },
            out = async { stdout.as_mut().expect("guarded").await }, if stdout.is_some() => {
                stdout = None;
                tail_lines = out.ok().flatten();
                if tail_lines.is_some() {
                    break;
                }
            }
        }
    }
    let authenticated = authenticated.load(Ordering::SeqCst);
    let (tail, status) = match tail_lines {
        Some(lines) => {
            held.drain(..).for_each(&mut on_stderr);
            while let Ok(line) = rx.try_recv() {
                on_stderr(line);
            }
            // Keep draining stderr so that a chatty session never blocks on a full pipe.
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            (Some(Tail::new(conn, lines)), None)
        }
        None => {
            let status = conn.child().wait().await.map_err(|e| format!("ssh: {e}"))?;
            (None, Some(status))
        }
    };
    let unauthenticated = if authenticated {
        held.drain(..).for_each(&mut on_stderr);
        None
    } else {
        Some(held.join("\n"))
    };
    // The guest may stop reading early (a failed unpack); a broken pipe is then expected.
    let send_error = match feeder.await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
        Ok(Err(e)) => Some(format!("cannot send the payload: {e}")),
        Err(e) => Some(format!("the archive writer panicked: {e}")),
    };
    Ok(Ended {
        status,
        unauthenticated,
        last_stderr,
        send_error,
        tail,
    })
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

/// Turns the session's stdout into notes. Returns the rest of the stream once the `done`
/// marker has passed (the session goes on as the agent's watch), None when it ended first.
async fn read_stdout<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    marker: String,
    notes: UnboundedSender<Note>,
    authenticated: impl Fn(),
) -> Option<UnboundedReceiver<String>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(lines(reader, tx));
    // A marker is preceded by a newline we printed; hold one empty line back to drop it.
    let mut held_empty = false;
    let stream = OutputStream::Stdout;
    while let Some(line) = rx.recv().await {
        authenticated();
        if let Some(rest) = line.strip_prefix(marker.as_str()) {
            held_empty = false;
            let (name, after) = rest.split_once(' ').unwrap_or((rest, ""));
            let (code, detail) = match after.split_once(' ') {
                Some((c, d)) if c.parse::<i32>().is_ok() => (c.parse().ok(), d),
                None if after.parse::<i32>().is_ok() => (after.parse().ok(), ""),
                _ => (None, after),
            };
            let done = name == "done";
            let (name, rest) = (name.to_owned(), detail.trim().to_owned());
            let _ = notes.send(Note::Marker { name, code, rest });
            if done {
                return Some(rx);
            }
            continue;
        }
        // A script line that ends without a newline is glued to our marker's newline: the
        // marker then starts the next line, handled above. Empty lines are held one step.
        if held_empty {
            let _ = notes.send(Note::Line {
                stream,
                line: String::new(),
            });
        }
        held_empty = line.is_empty();
        if !held_empty {
            let _ = notes.send(Note::Line { stream, line });
        }
    }
    None
}

fn write_archive(
    writer: std::io::PipeWriter,
    script: &Path,
    script_name: &str,
    payload: Option<&Path>,
) -> std::io::Result<u64> {
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 16, writer));
    let mut bytes = append(&mut tar, script, Path::new(script_name))?;
    if let Some(payload) = payload {
        let meta = std::fs::symlink_metadata(payload)?;
        if meta.is_dir() {
            bytes += append_tree(&mut tar, payload, Path::new("payload"))?;
        } else {
            let name = payload.file_name().unwrap_or_default();
            bytes += append(&mut tar, payload, &Path::new("payload").join(name))?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(bytes)
}

fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
) -> std::io::Result<u64> {
    let mut bytes = append(tar, dir, name)?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let child = name.join(path.file_name().unwrap_or_default());
        if std::fs::symlink_metadata(&path)?.is_dir() {
            bytes += append_tree(tar, &path, &child)?;
        } else {
            bytes += append(tar, &path, &child)?;
        }
    }
    Ok(bytes)
}

/// One entry with its permission bits, owned by root (ignored when a non-root user unpacks).
fn append<W: Write>(tar: &mut tar::Builder<W>, path: &Path, name: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.permissions().mode() & 0o7777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(meta.mtime().max(0) as u64);
    let ft = meta.file_type();
    if ft.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        tar.append_data(&mut header, name, std::io::empty())?;
        Ok(0)
    } else if ft.is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, name, std::fs::read_link(path)?)?;
        Ok(0)
    } else {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(meta.len());
        tar.append_data(&mut header, name, std::fs::File::open(path)?)?;
        Ok(meta.len())
    }
}
/// How to start the script: directly when it is executable with a `#!` line, else with `sh`.
pub fn program(script: &Path) -> Result<Vec<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let name = format!("./{}", file_name(script)?);
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

fn file_name(path: &Path) -> Result<String, String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no usable file name", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs DRIVER with the local shell exactly as the guest would, fed with the same stdin.
    /// `agent_on_stdin`: the agent's text comes first on stdin, as for a command too long.
    fn run_driver(
        dir: &Path,
        env: &BTreeMap<String, String>,
        verify_path: &str,
        agent_on_stdin: bool,
    ) -> (String, String, i32) {
        let (reader, writer) = std::io::pipe().unwrap();
        let agent = crate::vizier::agent_script();
        let child = std::process::Command::new("sh")
            .args(["-c", &compact(DRIVER), "castra", "n0nce"])
            .arg(dir.join("guest/remote dir"))
            .args(["run.sh", "", verify_path])
            .arg(dir.join("vizier"))
            .arg(crate::vizier::VERSION)
            .arg(if agent_on_stdin { "-" } else { &agent })
            .arg("") // no watch after `done`: the session ends
            .args(["sh", "./run.sh"])
            .stdin(reader)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (block, script, payload) = (env_block(env), dir.join("run.sh"), dir.join("payload"));
        let agent_block = if agent_on_stdin {
            format!("{}\n{agent}", agent.matches('\n').count())
        } else {
            String::new()
        };
        let feeder = std::thread::spawn(move || {
            let mut writer = writer;
            writer.write_all(agent_block.as_bytes())?;
            writer.write_all(block.as_bytes())?;
            write_archive(writer, &script, "run.sh", Some(&payload))
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        // The driver started a Vizier supervisor in the background: stop it.
        let vbin = dir.join(format!("vizier/{}/vizier.sh", crate::vizier::VERSION));
        let _ = std::process::Command::new("sh")
            .arg(vbin)
            .arg("stop")
            .arg(dir.join("vizier/state"))
            .output();
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
            out.status.code().unwrap(),
        )
    }

    #[test]
    fn driver_unpacks_runs_and_verifies_with_byte_exact_env() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("run.sh"),
            "printf '%s' \"$A\" > a.out\nprintf '%s|%s' \"$B\" \"$C\" > bc.out\n\
             cat payload/p.txt\nprintf 'no newline at the end'\ntouch done\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.join("payload")).unwrap();
        std::fs::write(d.join("payload/p.txt"), "from the payload\n").unwrap();
        let env = BTreeMap::from([
            (
                "A".to_owned(),
                "a'b\"c $(touch /tmp/castra-env-test)\nline2 \\ % %s é".to_owned(),
            ),
            ("B".to_owned(), String::new()),
            ("C".to_owned(), "trailing newlines\n\n".to_owned()),
            // Named like a driver variable: the script sees it, the driver keeps its own.
            ("vpath".to_owned(), "not-the-verify-path".to_owned()),
        ]);
        let (stdout, stderr, code) = run_driver(d, &env, "done", false);
        assert_eq!(code, 0, "{stderr}");
        let remote = d.join("guest/remote dir");
        assert_eq!(
            std::fs::read_to_string(remote.join("a.out")).unwrap(),
            env["A"]
        );
        assert_eq!(
            std::fs::read_to_string(remote.join("bc.out")).unwrap(),
            "|trailing newlines\n\n"
        );
        assert!(!Path::new("/tmp/castra-env-test").exists());
        let markers: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("CASTRA-n0nce "))
            .collect();
        let names: Vec<&str> = markers
            .iter()
            .map(|m| m.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "vizier-install",
                "vizier-enable",
                "vizier-log",
                "vizier-log-end",
                "vizier-handshake",
                "connect",
                "transfer",
                "apply",
                "verify-path",
                "done"
            ],
            "{stdout}"
        );
        assert!(
            markers[0].starts_with("vizier-install 0 installed "),
            "{}",
            markers[0]
        );
        assert!(
            markers[1].starts_with("vizier-enable 0 started"),
            "{}",
            markers[1]
        );
        assert_eq!(markers[4], "vizier-handshake 0");
        let after = stdout
            .split("CASTRA-n0nce vizier-handshake 0\n")
            .nth(1)
            .unwrap();
        let mut banner = after.lines();
        let b =
            crate::vizier::parse_banner(banner.next().unwrap(), banner.next().unwrap()).unwrap();
        assert_eq!(b.version, crate::vizier::VERSION);
        let output: Vec<&str> = stdout
            .split("CASTRA-n0nce transfer\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.starts_with("CASTRA-"))
            .collect();
        assert_eq!(output, ["from the payload", "no newline at the end"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&remote).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "remote_dir is private");
    }

    #[test]
    fn driver_stops_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("payload")).unwrap();
        std::fs::write(d.join("run.sh"), "echo working; exit 3\n").unwrap();
        // The agent's text on stdin this time (as when the command would be too long).
        let (stdout, _, code) = run_driver(d, &BTreeMap::new(), "done", true);
        assert_eq!(code, 0);
        assert!(stdout.contains("vizier-install 0 installed"), "{stdout}");
        assert!(stdout.contains("CASTRA-n0nce apply 3"), "{stdout}");
        assert!(
            !stdout.contains("verify-path") && !stdout.contains(" done"),
            "{stdout}"
        );

        std::fs::write(d.join("run.sh"), "echo fine\n").unwrap();
        let (stdout, _, _) = run_driver(d, &BTreeMap::new(), "missing", false);
        // What came on stdin was installed byte for byte: the argument matches it.
        assert!(stdout.contains("vizier-install 0 present"), "{stdout}");
        assert!(stdout.contains("CASTRA-n0nce verify-path 1"), "{stdout}");
        assert!(!stdout.contains(" done"), "{stdout}");
    }

    /// Dropbear closes the connection on a command over 9000 bytes: with short user inputs,
    /// the whole guest side, agent included, stays well under COMMAND_LIMIT.
    #[test]
    fn the_session_command_fits_dropbear() {
        let words = [
            "sh".to_owned(),
            "-c".into(),
            compact(DRIVER),
            "castra".into(),
            "0123456789abcdef".into(),
            "/data/castra/web-0".into(),
            "run.sh".into(),
            "test -f /etc/app.conf".into(),
            "out".into(),
            String::new(),
            crate::vizier::VERSION.into(),
            crate::vizier::agent_script(),
            "2".into(),
            "./run.sh".into(),
        ];
        let len = command_line(&words).len();
        assert!(len < COMMAND_LIMIT - 1000, "{len} bytes");
        assert!(!compact(DRIVER).contains("\n#"));
    }

    #[test]
    fn program_uses_the_shebang_only_when_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("run.sh");
        std::fs::write(&s, "#!/bin/sh\n").unwrap();
        assert_eq!(program(&s).unwrap(), ["sh", "./run.sh"]);
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(program(&s).unwrap(), ["./run.sh"]);
        std::fs::write(&s, "echo no shebang\n").unwrap();
        assert_eq!(program(&s).unwrap(), ["sh", "./run.sh"]);
    }

    #[test]
    fn archive_carries_modes_symlinks_and_contents() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::create_dir_all(d.join("p/sub")).unwrap();
        std::fs::write(d.join("p/sub/x"), "xx").unwrap();
        std::fs::set_permissions(d.join("p/sub/x"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::os::unix::fs::symlink("sub/x", d.join("p/link")).unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let (script, payload) = (d.join("run.sh"), d.join("p"));
        let t =
            std::thread::spawn(move || write_archive(writer, &script, "run.sh", Some(&payload)));
        let mut archive = tar::Archive::new(reader);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            seen.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
            ));
        }
        assert_eq!(t.join().unwrap().unwrap(), 10 + 2);
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "run.sh",
                "payload",
                "payload/link",
                "payload/sub",
                "payload/sub/x"
            ]
        );
        assert_eq!(seen[4].1, 0o750);
        assert!(seen.iter().all(|s| s.2 == 0));
    }
}
