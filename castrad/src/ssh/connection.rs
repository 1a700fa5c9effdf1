//! One `ssh` process per guest session: [`Connection`] owns the process (a connection that
//! authenticates and runs one remote command), [`Tail`] a connection whose session's stdout
//! is read line by line (the Vizier health check's watch), [`lines`] the line reader both use.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{SshError, Target};

/// One `ssh` process: a connection to the guest running one remote command. Dropping it
/// kills the process (ending the session) and removes its control socket.
#[derive(Debug)]
pub struct Connection {
    target: Target,
    child: Child,
}

impl Connection {
    /// Starts `ssh` running `remote_command`, with the given stdio; returns at once. See
    /// [`Connection::authenticated`] for when the guest has accepted us, and [`classify`] for
    /// what ssh printed if it exits before that.
    pub fn spawn(
        target: Target,
        remote_command: &str,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Connection, SshError> {
        let pinned = std::fs::metadata(&target.known_hosts).is_ok_and(|m| m.len() > 0);
        for dir in [target.control_path.parent(), target.known_hosts.parent()]
            .into_iter()
            .flatten()
        {
            crate::state_root::ensure_dir(dir).map_err(SshError::Spawn)?;
        }
        let _ = std::fs::remove_file(&target.control_path);
        let child = Command::new("ssh")
            .args(target.args(pinned, remote_command))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(SshError::Spawn)?;
        Ok(Connection { target, child })
    }

    /// Whether ssh has authenticated: its control socket exists.
    pub fn authenticated(&self) -> bool {
        self.target.control_path.exists()
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Ends the session and the connection.
    pub async fn close(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_file(&self.target.control_path);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.target.control_path);
    }
}

/// A connection whose session's stdout carries the agent's `watch` reports, line by line.
/// Dropping it ends the session and the connection.
#[derive(Debug)]
pub struct Tail {
    /// None for lines that come from elsewhere (a test's script).
    conn: Option<Connection>,
    lines: UnboundedReceiver<String>,
}

impl Tail {
    /// A session already running whose stdout lines arrive on `lines`.
    pub fn new(conn: Connection, lines: UnboundedReceiver<String>) -> Tail {
        Tail {
            conn: Some(conn),
            lines,
        }
    }

    /// Lines from `lines`, with no connection behind them.
    pub fn from_lines(lines: UnboundedReceiver<String>) -> Tail {
        Tail { conn: None, lines }
    }

    /// Connects to `target` and runs `remote_command` with its stdout read line by line.
    pub fn spawn(target: Target, remote_command: &str) -> Result<Tail, SshError> {
        let mut conn = Connection::spawn(
            target,
            remote_command,
            Stdio::null(),
            Stdio::piped(),
            Stdio::null(),
        )?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        if let Some(out) = conn.child().stdout.take() {
            tokio::spawn(self::lines(out, tx));
        }
        Ok(Tail::new(conn, lines))
    }

    /// The next line; None once the session has ended.
    pub async fn next_line(&mut self) -> Option<String> {
        self.lines.recv().await
    }

    /// Ends the session and the connection.
    pub async fn close(self) {
        if let Some(conn) = self.conn {
            conn.close().await;
        }
    }
}

/// Sends each line of `reader` (without its line ending; invalid UTF-8 replaced) to `tx`,
/// until the reader ends or nobody receives.
pub async fn lines<R: AsyncRead + Unpin + Send + 'static>(reader: R, tx: UnboundedSender<String>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).to_owned();
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

pub fn exit(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    }
}
