//! How a run reaches its guest: the [`Remote`] seam (probe for an SSH banner, run the session
//! driver and report what it prints as [`Note`]s), and [`OpenSsh`], the one that is real.
//! Unit tests of the step machine plug a scripted remote in instead.
//!
//! [`OpenSsh`] runs the guest side in ONE `ssh` process and ONE shell session: the connection
//! that authenticates (the end of `wait-handshake`) runs the driver itself, so a run costs what
//! a hand-written `tar | ssh host sh run.sh` costs: one key exchange, one session (on a guest
//! whose shell start-up files are slow, each extra session costs that again).
//!
//! The session's stdin carries, in order: [the agent's text,] the env block and the tar
//! archive. The guest shell's `read` consumes the env lines byte by byte, so `tar` sees
//! exactly the archive. Env values therefore never touch a command line (no `ps` shows them).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use castra_api::OutputStream;
use futures::future::BoxFuture;
use tokio::io::AsyncRead;
use tokio::sync::mpsc::{Receiver, Sender};
use tokio::sync::watch;

use super::archive::write_archive;
use super::driver::{self, Marker, Session};
use super::handshake::{self, NoBanner};
use crate::ssh::{Connection, LINES_BUFFER, Tail, Target, lines};

/// How the pipeline reaches a guest. Object-safe, so a run holds `Arc<dyn Remote>`.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// Waits until `host:port` answers with an SSH banner (the banner line), calling
    /// `progress` with what it is waiting on; Err says what was last in the way.
    fn probe<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
        progress: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<String, NoBanner>>;

    /// Connects to `target` and runs the driver for `session`, sending [`Note`]s:
    /// [`Note::Authenticated`] first (once the guest has accepted us), then what the driver
    /// prints, waiting while `notes` is full. Err: the session could not be started at all.
    fn session<'a>(
        &'a self,
        target: Target,
        session: &'a Session<'a>,
        notes: Sender<Note>,
    ) -> BoxFuture<'a, Result<Ended, SessionError>>;

    /// Logs in to `target` and runs nothing but `true`: the guest accepts us. Err says why
    /// not (as ssh said it).
    fn login(&self, target: Target) -> BoxFuture<'_, Result<(), crate::ssh::SshError>>;

    /// Runs `command` on `target` with `input` on its stdin: its stdout, at most
    /// `guest_setup::OUTPUT_CAP` bytes of it (the guest setup of a NoOp). Err: ssh could not
    /// run it (as ssh said).
    fn exec(
        &self,
        target: Target,
        command: String,
        input: String,
    ) -> BoxFuture<'_, Result<String, crate::ssh::SshError>>;

    /// Stops the guest side of a run: the process group that `pid` (the driver) leads, TERM
    /// then KILL after 5 s, over a connection of its own (see `driver::stop_command`). Err
    /// says why it could not.
    fn stop(&self, target: Target, pid: u32) -> BoxFuture<'_, Result<(), crate::ssh::SshError>>;

    /// Starts `remote_command` on `target`, its stdout read line by line (the Vizier watch).
    fn tail(&self, target: Target, remote_command: &str) -> Result<Tail, crate::ssh::SshError>;
}

/// Why a guest session could not run at all (nothing reached the guest).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    ScriptName(#[from] driver::BadScriptName),
    #[error("cannot create a pipe for the session's input")]
    Pipe(#[source] std::io::Error),
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    #[error("ssh: cannot wait for it to end")]
    Wait(#[source] std::io::Error),
}

/// The user's OpenSSH client.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenSsh;

impl Remote for OpenSsh {
    fn probe<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
        progress: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<String, NoBanner>> {
        Box::pin(handshake::wait(host, port, timeout, progress))
    }

    fn session<'a>(
        &'a self,
        target: Target,
        session: &'a Session<'a>,
        notes: Sender<Note>,
    ) -> BoxFuture<'a, Result<Ended, SessionError>> {
        Box::pin(self::session(target, session, notes))
    }

    fn tail(&self, target: Target, remote_command: &str) -> Result<Tail, crate::ssh::SshError> {
        Tail::spawn(target, remote_command)
    }

    fn login(&self, target: Target) -> BoxFuture<'_, Result<(), crate::ssh::SshError>> {
        Box::pin(run(target, "true".to_owned()))
    }

    fn stop(&self, target: Target, pid: u32) -> BoxFuture<'_, Result<(), crate::ssh::SshError>> {
        Box::pin(run(target, driver::stop_command(pid)))
    }

    fn exec(
        &self,
        target: Target,
        command: String,
        input: String,
    ) -> BoxFuture<'_, Result<String, crate::ssh::SshError>> {
        Box::pin(exec(target, command, input))
    }
}

/// [`Remote::exec`] with OpenSSH: stdin written whole, stdout and stderr read bounded.
async fn exec(
    target: Target,
    command: String,
    input: String,
) -> Result<String, crate::ssh::SshError> {
    use tokio::io::AsyncWriteExt;
    let mut conn = Connection::spawn(
        target,
        &command,
        Stdio::piped(),
        Stdio::piped(),
        Stdio::piped(),
    )?;
    let stdin = conn.child().stdin.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A guest that stops reading early is answered by what it printed.
            let _ = stdin.write_all(input.as_bytes()).await;
        }
    };
    let cap = super::guest_setup::OUTPUT_CAP;
    let (out, err) = (conn.child().stdout.take(), conn.child().stderr.take());
    let ((), stdout, stderr) = tokio::join!(feed, capped(out, cap), capped(err, cap));
    let status = conn
        .child()
        .wait()
        .await
        .map_err(crate::ssh::SshError::Spawn)?;
    if status.code() == Some(255) {
        return Err(crate::ssh::classify(conn.target(), &stderr));
    }
    Ok(stdout)
}

/// Runs `command` on `target` with nothing on stdin or stdout; Err says why it failed, as ssh
/// said it.
async fn run(target: Target, command: String) -> Result<(), crate::ssh::SshError> {
    let mut conn = Connection::spawn(
        target,
        &command,
        Stdio::null(),
        Stdio::null(),
        Stdio::piped(),
    )?;
    // ssh's own words, a line or two; bounded all the same.
    let stderr = capped(conn.child().stderr.take(), 16 << 10).await;
    let status = conn
        .child()
        .wait()
        .await
        .map_err(crate::ssh::SshError::Spawn)?;
    if status.success() {
        return Ok(());
    }
    Err(crate::ssh::classify(conn.target(), &stderr))
}

/// At most `cap` bytes of `reader` (lossy UTF-8); the rest is left unread, and the pipe closed.
async fn capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: u64) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    if let Some(r) = reader {
        let _ = r.take(cap).read_to_end(&mut text).await;
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// How many notes the channel from a session to its step machine holds: a session whose
/// guest prints faster than the run records waits (and so does the guest), memory does not
/// grow. Each note is at most one line piece (`ssh::LINE_CAP`).
pub const NOTES_BUFFER: usize = 64;

/// What the guest session reports, in order (stderr lines may interleave loosely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// ssh has authenticated: the guest accepts us (always the first note, once).
    Authenticated,
    /// A step boundary, or the agent's log or banner starting (see [`Marker`]).
    Marker(Marker),
    Line {
        stream: OutputStream,
        line: String,
    },
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
const AUTH_POLL: Duration = Duration::from_millis(5);
/// How long key exchange and authentication may take once the server has answered.
const AUTH_GRACE: Duration = Duration::from_secs(5);
/// How many of ssh's stderr lines are held until authentication (the last ones are kept: they
/// say why it failed); a guest's pre-login banner can be longer.
const HELD_LINES: usize = 64;

/// Notes [`Note::Authenticated`] once, before anything the session prints: whoever sees it
/// first (the control socket's poll or the first line on stdout) sends it, and the other
/// waits until it is sent (so no line can overtake it).
#[derive(Clone)]
struct Authenticate {
    sent: std::sync::Arc<tokio::sync::Mutex<()>>,
    seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    notes: Sender<Note>,
}

impl Authenticate {
    async fn now(&self) {
        if self.seen() {
            return;
        }
        let _sending = self.sent.lock().await;
        if !self.seen() {
            let _ = self.notes.send(Note::Authenticated).await;
            self.seen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn seen(&self) -> bool {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Connects to `target` and runs the whole guest side in that connection's session, sending
/// notes to `notes`: [`Note::Authenticated`] first, then what the driver reports.
async fn session(
    target: Target,
    s: &Session<'_>,
    notes: Sender<Note>,
) -> Result<Ended, SessionError> {
    let nonce = crate::ids::random_hex(8);
    let script_name = driver::script_name(s.script)?;
    let driver::Invocation {
        command,
        agent_block,
    } = driver::invocation(s, &script_name, &nonce, crate::vizier::WATCH_INTERVAL);
    let (reader, writer) = std::io::pipe().map_err(SessionError::Pipe)?;
    let mut conn = Connection::spawn(
        target,
        &command,
        reader.into(),
        Stdio::piped(),
        Stdio::piped(),
    )?;
    let env_block = driver::env_block(s.env);
    let (script, payload) = (s.script.to_owned(), s.payload.map(Path::to_owned));
    // The env block and the archive wait until the run may change the guest, or the session
    // has ended without it.
    let (mut may_touch, (session_over, mut over)) = (s.may_touch.clone(), watch::channel(false));
    let runtime = tokio::runtime::Handle::current();
    let feeder = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        writer.write_all(agent_block.as_bytes())?;
        let go = runtime.block_on(async {
            tokio::select! {
                go = may_touch.wait_for(|go| *go) => go.is_ok(),
                _ = over.wait_for(|over| *over) => false,
            }
        });
        if !go {
            return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
        }
        writer.write_all(env_block.as_bytes())?;
        write_archive(writer, &script, &script_name, payload.as_deref())
    });

    let authenticate = Authenticate {
        sent: Default::default(),
        seen: Default::default(),
        notes: notes.clone(),
    };
    let marker = format!("CASTRA-{nonce} ");
    // Set once stderr has been read up to the script's end (or has ended): `apply` waits.
    let (stderr_drained, drained) = watch::channel(false);
    let mut stdout = conn.child().stdout.take().map(|o| {
        let (marker, notes) = (marker.clone(), notes.clone());
        tokio::spawn(read_stdout(o, marker, notes, authenticate.clone(), drained))
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel(LINES_BUFFER);
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
    let mut stderr_notes = StderrNotes::new(&marker);
    let mut on_stderr = |line: Option<String>| stderr_notes.line(line);
    let mut poll = tokio::time::interval(AUTH_POLL);
    // ssh's ConnectTimeout covers the TCP connect and the banner, not what follows.
    let give_up = tokio::time::Instant::now() + conn.target().connect_timeout + AUTH_GRACE;
    let mut gave_up = false;
    // Until stdout has seen `done` (the session goes on as the watch) or both streams ended.
    let mut tail_lines = None;
    while stdout.is_some() || stderr_open {
        let waiting = !authenticate.seen() && !gave_up;
        tokio::select! {
            _ = poll.tick(), if waiting => {
                if conn.authenticated() {
                    authenticate.now().await;
                } else if tokio::time::Instant::now() > give_up {
                    let _ = conn.child().start_kill();
                    held.push(format!(
                        "no connection after {} s (authentication did not finish)",
                        (conn.target().connect_timeout + AUTH_GRACE).as_secs()
                    ));
                    gave_up = true;
                }
            }
            line = rx.recv(), if stderr_open => match line {
                // A marker proves the driver runs, so ssh has authenticated.
                Some(line) if !authenticate.seen() && !line.contains(marker.as_str()) => {
                    if held.len() == HELD_LINES {
                        held.remove(0);
                    }
                    held.push(line);
                }
                Some(line) => {
                    authenticate.now().await;
                    for line in held.drain(..).chain([line]) {
                        forward(&notes, &stderr_drained, on_stderr(Some(line))).await;
                    }
                }
                None => {
                    stderr_open = false;
                    forward(&notes, &stderr_drained, on_stderr(None)).await;
                    // No more of the script's stderr can come: apply need not wait.
                    stderr_drained.send_replace(true);
                }
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
    let authenticated = authenticate.seen();
    let (tail, status) = match tail_lines {
        Some(lines) => {
            for line in held.drain(..) {
                forward(&notes, &stderr_drained, on_stderr(Some(line))).await;
            }
            while let Ok(line) = rx.try_recv() {
                forward(&notes, &stderr_drained, on_stderr(Some(line))).await;
            }
            forward(&notes, &stderr_drained, on_stderr(None)).await;
            // Keep draining stderr so that a chatty session never blocks on a full pipe.
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            (Some(Tail::new(conn, lines)), None)
        }
        None => {
            let status = conn.child().wait().await.map_err(SessionError::Wait)?;
            (None, Some(status))
        }
    };
    let unauthenticated = if authenticated {
        for line in held.drain(..) {
            forward(&notes, &stderr_drained, on_stderr(Some(line))).await;
        }
        forward(&notes, &stderr_drained, on_stderr(None)).await;
        None
    } else {
        Some(held.join("\n"))
    };
    // The guest may stop reading early (a failed unpack); a broken pipe is then expected.
    // Interrupted: the run was never let change the guest (the session ended before).
    session_over.send_replace(true);
    let send_error = match feeder.await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => None,
        Ok(Err(e)) => Some(format!("cannot send the payload: {e}")),
        Err(e) => Some(format!("the archive writer panicked: {e}")),
    };
    let last_stderr = stderr_notes.last;
    Ok(Ended {
        status,
        unauthenticated,
        last_stderr,
        send_error,
        tail,
    })
}

/// Sends stderr's notes in order; once the script's end has been sent, stdout's `apply` may go.
async fn forward(notes: &Sender<Note>, stderr_drained: &watch::Sender<bool>, batch: Vec<Note>) {
    for note in batch {
        let ends = note == Note::Marker(Marker::ScriptEnds);
        let _ = notes.send(note).await;
        if ends {
            stderr_drained.send_replace(true);
        }
    }
}

/// stderr's lines as notes. The driver starts each of its markers on a line of its own, after
/// a newline (so that a last line without one cannot glue to it, where the line cap could cut
/// the marker in two): the empty line that makes when the script's last line did end is
/// held one step and dropped before a marker.
struct StderrNotes<'a> {
    marker: &'a str,
    held_empty: bool,
    /// The last non-blank line of output, for the reason of a failure.
    last: String,
}

impl<'a> StderrNotes<'a> {
    fn new(marker: &'a str) -> StderrNotes<'a> {
        StderrNotes {
            marker,
            held_empty: false,
            last: String::new(),
        }
    }

    /// The notes `line` makes (None: stderr has ended, an empty line held is output).
    fn line(&mut self, line: Option<String>) -> Vec<Note> {
        let empty = || Note::Line {
            stream: OutputStream::Stderr,
            line: String::new(),
        };
        let mut out = Vec::with_capacity(2);
        let Some(line) = line else {
            if std::mem::take(&mut self.held_empty) {
                out.push(empty());
            }
            return out;
        };
        let (line, found) = split_marker(line, self.marker);
        let marker_alone = found.is_some() && line.is_none();
        if std::mem::take(&mut self.held_empty) && !marker_alone {
            out.push(empty());
        }
        match line {
            Some(line) if line.is_empty() && found.is_none() => self.held_empty = true,
            Some(line) => {
                if !line.trim().is_empty() {
                    self.last = line.trim().to_owned();
                }
                out.push(Note::Line {
                    stream: OutputStream::Stderr,
                    line,
                });
            }
            None => {}
        }
        out.extend(found.map(Note::Marker));
        out
    }
}

/// Splits a stderr line that holds one of the driver's markers (`prefix` = `CASTRA-<nonce> `)
/// into the output before it (the script's last line, when that had no newline) and the
/// marker. A line without a marker castrad knows is output, as it is.
fn split_marker(line: String, prefix: &str) -> (Option<String>, Option<Marker>) {
    let Some(at) = line.find(prefix) else {
        return (Some(line), None);
    };
    let Some(found) = Marker::parse(&line[at + prefix.len()..]) else {
        return (Some(line), None);
    };
    let before = (at > 0).then(|| line[..at].to_owned());
    (before, Some(found))
}

/// Turns the session's stdout into notes. Returns the rest of the stream once the `done`
/// marker has passed (the session goes on as the agent's watch), None when it ended first.
async fn read_stdout<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    marker: String,
    notes: Sender<Note>,
    authenticated: Authenticate,
    mut stderr_drained: watch::Receiver<bool>,
) -> Option<Receiver<String>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(LINES_BUFFER);
    tokio::spawn(lines(reader, tx));
    // A marker is preceded by a newline we printed; hold one empty line back to drop it.
    let mut held_empty = false;
    let stream = OutputStream::Stdout;
    while let Some(line) = rx.recv().await {
        authenticated.now().await;
        if let Some(rest) = line.strip_prefix(marker.as_str()) {
            held_empty = false;
            // A marker castrad does not know is dropped, not shown as output.
            let Some(marker) = Marker::parse(rest) else {
                continue;
            };
            let done = marker == Marker::Done;
            if let Marker::Apply { .. } = marker {
                // Everything the script wrote to stderr is noted first. Err: the session
                // is over; all there was of stderr has been noted.
                let _ = stderr_drained.wait_for(|drained| *drained).await;
            }
            let _ = notes.send(Note::Marker(marker)).await;
            if done {
                return Some(rx);
            }
            continue;
        }
        // A script line that ends without a newline is glued to our marker's newline: the
        // marker then starts the next line, handled above. Empty lines are held one step.
        if held_empty {
            let line = String::new();
            let _ = notes.send(Note::Line { stream, line }).await;
        }
        held_empty = line.is_empty();
        if !held_empty {
            let _ = notes.send(Note::Line { stream, line }).await;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What stderr's `lines` make of them, as text (`>marker` for a marker).
    fn notes(lines: &[&str]) -> Vec<String> {
        let mut s = StderrNotes::new("CASTRA-n0 ");
        let mut out = Vec::new();
        for line in lines.iter().map(|l| Some((*l).to_owned())).chain([None]) {
            for note in s.line(line) {
                out.push(match note {
                    Note::Line { line, .. } => line,
                    Note::Marker(m) => format!(">{m:?}"),
                    other => format!("{other:?}"),
                });
            }
        }
        out
    }

    /// Issue 25: the driver puts a newline before its stderr markers; the empty line that
    /// makes is castrad's to drop, an empty line of the script's is kept.
    #[test]
    fn the_newline_before_a_stderr_marker_is_dropped_and_no_other() {
        let end = ">ScriptEnds";
        assert_eq!(
            notes(&["", "CASTRA-n0 script", "oops", "CASTRA-n0 script-end"]),
            [">ScriptStarts", "oops", end]
        );
        assert_eq!(notes(&["oops", "", "CASTRA-n0 script-end"]), ["oops", end]);
        assert_eq!(
            notes(&["oops", "", "", "CASTRA-n0 script-end"]),
            ["oops", "", end]
        );
        assert_eq!(notes(&["a", "", "b", ""]), ["a", "", "b", ""]);
        // An older driver's marker glued to the last line still counts.
        assert_eq!(
            notes(&["no newlineCASTRA-n0 script-end"]),
            ["no newline", end]
        );
    }
}
