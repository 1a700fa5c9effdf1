//! One `ssh` process per guest session: [`Connection`] owns the process (a connection that
//! authenticates and runs one remote command), [`Tail`] a connection whose session's stdout
//! is read line by line (the Vizier health check's watch), [`lines`] the line reader both use.
//!
//! What a guest prints is untrusted and unbounded (no newline for gigabytes, or a flood of
//! lines), so the reader holds at most [`LINE_CAP`] bytes of a line: a longer one is split
//! into pieces that say so ([`SPLIT_SUFFIX`], [`CONTINUED_PREFIX`]), and lines travel on a
//! channel of [`LINES_BUFFER`] lines. A consumer that is slower than the guest makes the reader
//! wait, which fills the ssh pipe and makes the guest's writes wait: memory stays bounded, and
//! nothing is dropped.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{Receiver, Sender};

/// The longest piece of a line the reader holds, in bytes of guest output (64 KiB): a longer
/// line is split (on a UTF-8 character boundary) into pieces of at most this.
pub const LINE_CAP: usize = 64 << 10;
/// Ends a piece of a line that was split at [`LINE_CAP`]; the next piece goes on with it.
pub const SPLIT_SUFFIX: &str = " [castra: line split at 64 KiB]";
/// Starts each piece of a split line after the first.
pub const CONTINUED_PREFIX: &str = "[castra: continued] ";
/// How many lines (or pieces) a channel of guest output holds before its reader waits.
pub const LINES_BUFFER: usize = 32;

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
            .args(super::known_options(
                target.args(pinned, remote_command),
                super::ssh_knows,
            ))
            .env_clear()
            .envs(super::ssh_env(std::env::vars_os()))
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
    lines: Receiver<String>,
}

impl Tail {
    /// A session already running whose stdout lines arrive on `lines`.
    pub fn new(conn: Connection, lines: Receiver<String>) -> Tail {
        Tail {
            conn: Some(conn),
            lines,
        }
    }

    /// Lines from `lines`, with no connection behind them.
    pub fn from_lines(lines: Receiver<String>) -> Tail {
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
        let (tx, lines) = tokio::sync::mpsc::channel(LINES_BUFFER);
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

/// Sends each line of `reader` (without its line ending; invalid UTF-8 replaced) to `tx`, a
/// line longer than [`LINE_CAP`] as several pieces (see [`Splitter`]), until the reader ends or
/// nobody receives. Waits while `tx` is full.
pub async fn lines<R: AsyncRead + Unpin + Send + 'static>(reader: R, tx: Sender<String>) {
    let mut reader = BufReader::with_capacity(LINE_CAP, reader);
    let mut split = Splitter::new(LINE_CAP);
    loop {
        let (used, piece) = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if let Some(last) = split.finish() {
                    let _ = tx.send(last).await;
                }
                return;
            }
            Ok(bytes) => split.push(bytes),
        };
        reader.consume(used);
        if let Some(piece) = piece
            && tx.send(piece).await.is_err()
        {
            return;
        }
    }
}

/// Cuts a byte stream into lines of at most `cap` bytes each (pure: [`lines`] feeds it). A line
/// ends at `\n` (trailing `\r`s dropped); a longer one becomes pieces: all but the last end
/// with [`SPLIT_SUFFIX`], all but the first start with [`CONTINUED_PREFIX`]. A piece never ends
/// inside a UTF-8 character; invalid UTF-8 becomes U+FFFD.
#[derive(Debug)]
pub struct Splitter {
    cap: usize,
    /// The line (or piece) read so far, at most `cap` bytes.
    buf: Vec<u8>,
    /// `buf` continues a line that was split.
    continued: bool,
}

impl Splitter {
    pub fn new(cap: usize) -> Splitter {
        Splitter {
            cap: cap.max(4),
            buf: Vec::new(),
            continued: false,
        }
    }

    /// Takes bytes from the start of `input`: how many it took, and the line or piece they
    /// completed, if any (call again with the rest).
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<String>) {
        let Some(&first) = input.first() else {
            return (0, None);
        };
        if self.buf.len() >= self.cap {
            // Full: the line ends here, or goes on in another piece.
            return match first {
                b'\n' => (1, Some(self.line_end())),
                _ => (0, Some(self.cut())),
            };
        }
        let room = self.cap - self.buf.len();
        let window = &input[..input.len().min(room)];
        match window.iter().position(|&b| b == b'\n') {
            Some(end) => {
                self.buf.extend_from_slice(&window[..end]);
                (end + 1, Some(self.line_end()))
            }
            None => {
                self.buf.extend_from_slice(window);
                (window.len(), None)
            }
        }
    }

    /// At the end of the stream: the last line, if it had no newline.
    pub fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty() || self.continued).then(|| self.line_end())
    }

    /// The last (or only) piece of a line.
    fn line_end(&mut self) -> String {
        let end = self
            .buf
            .iter()
            .rposition(|&b| b != b'\r')
            .map_or(0, |i| i + 1);
        let text = self.text(&self.buf[..end], "");
        self.buf.clear();
        self.continued = false;
        text
    }

    /// A piece of a line that goes on; a character the cap cut in two goes on with it.
    fn cut(&mut self) -> String {
        let rest = self
            .buf
            .split_off(self.buf.len() - incomplete_char(&self.buf));
        let text = self.text(&self.buf, SPLIT_SUFFIX);
        self.buf = rest;
        self.continued = true;
        text
    }

    fn text(&self, bytes: &[u8], suffix: &str) -> String {
        let prefix = if self.continued { CONTINUED_PREFIX } else { "" };
        format!("{prefix}{}{suffix}", String::from_utf8_lossy(bytes))
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that is not complete (0 to 3).
fn incomplete_char(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 != 0b1000_0000 {
            // The character's first byte says how long it is.
            let len = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if len > back { back } else { 0 };
        }
    }
    0
}

pub fn exit(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line and piece `input` makes, fed in chunks of `chunk` bytes.
    fn split(cap: usize, input: &[u8], chunk: usize) -> Vec<String> {
        let mut s = Splitter::new(cap);
        let mut out = Vec::new();
        for mut part in input.chunks(chunk.max(1)) {
            while !part.is_empty() {
                let (used, piece) = s.push(part);
                part = &part[used..];
                out.extend(piece);
            }
        }
        out.extend(s.finish());
        out
    }

    fn cut(text: &str) -> String {
        format!("{text}{SPLIT_SUFFIX}")
    }

    fn cont(text: &str) -> String {
        format!("{CONTINUED_PREFIX}{text}")
    }

    #[test]
    fn lines_end_at_newlines_and_long_ones_are_split_saying_so() {
        assert_eq!(
            split(8, b"abc\r\ndef\n\nlast", 3),
            ["abc", "def", "", "last"]
        );
        assert_eq!(
            split(8, b"0123456789abcdefXY\nz", 5),
            [
                cut("01234567"),
                cont(&cut("89abcdef")),
                cont("XY"),
                "z".into()
            ]
        );
        // Exactly the cap, then its newline: one line, not split.
        assert_eq!(
            split(8, b"01234567\n01234567", 64),
            ["01234567", "01234567"]
        );
        assert!(split(8, b"", 1).is_empty());
    }

    #[test]
    fn a_split_never_cuts_a_character() {
        // "é" is two bytes; the cap falls between them.
        assert_eq!(split(4, "abcé\n".as_bytes(), 1), [cut("abc"), cont("é")]);
        // "😀" is four; a cap of 4 after one byte carries three over.
        assert_eq!(
            split(4, "a😀b".as_bytes(), 2),
            [cut("a"), cont(&cut("😀")), cont("b")]
        );
        // Invalid bytes are replaced, never carried forever.
        assert_eq!(
            split(4, b"\xff\xff\xff\xff\xff\n", 8),
            [cut("\u{fffd}\u{fffd}\u{fffd}\u{fffd}"), cont("\u{fffd}")]
        );
    }

    /// Issue 14 item 8: 1 MiB without a newline arrives as 16 pieces, none over the cap, and
    /// the reader waits for its consumer (a channel of LINES_BUFFER) instead of buffering.
    #[tokio::test]
    async fn the_reader_splits_and_waits_for_its_consumer() {
        let (mut guest, ours) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..16 {
                guest.write_all(&chunk).await.unwrap();
            }
            guest.write_all(b"\nend\n").await.unwrap();
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(LINES_BUFFER);
        tokio::spawn(lines(ours, tx));
        let mut pieces = Vec::new();
        while let Some(piece) = rx.recv().await {
            assert!(piece.len() <= LINE_CAP + SPLIT_SUFFIX.len() + CONTINUED_PREFIX.len());
            pieces.push(piece);
        }
        writer.await.unwrap();
        assert_eq!(pieces.len(), 17);
        assert!(pieces[0].ends_with(SPLIT_SUFFIX) && !pieces[0].starts_with(CONTINUED_PREFIX));
        assert_eq!(pieces[15], cont(&"x".repeat(LINE_CAP)));
        assert_eq!(pieces[16], "end");
    }

    mod props {
        //! Property tests (issue 14 items 8 and 15): whatever the guest prints and however it
        //! arrives, no piece exceeds the cap, and the pieces put back together are the lines.

        use proptest::prelude::*;

        use super::*;
        use crate::testutil::proptest_config;

        /// The lines the pieces came from (markers removed, pieces joined).
        fn join(pieces: &[String]) -> Vec<String> {
            let mut lines: Vec<String> = Vec::new();
            let mut open = false;
            for piece in pieces {
                let body = piece.strip_prefix(CONTINUED_PREFIX).filter(|_| open);
                let (body, goes_on) = match body.unwrap_or(piece).strip_suffix(SPLIT_SUFFIX) {
                    Some(b) => (b, true),
                    None => (body.unwrap_or(piece), false),
                };
                if open {
                    if let Some(last) = lines.last_mut() {
                        last.push_str(body);
                    }
                } else {
                    lines.push(body.to_owned());
                }
                open = goes_on;
            }
            lines
        }

        fn expected(input: &[u8]) -> Vec<String> {
            let mut lines: Vec<String> = input
                .split(|&b| b == b'\n')
                .map(|l| {
                    let end = l.iter().rposition(|&b| b != b'\r').map_or(0, |i| i + 1);
                    String::from_utf8_lossy(&l[..end]).into_owned()
                })
                .collect();
            if input.last().is_none_or(|&b| b == b'\n') {
                lines.pop(); // nothing after the last newline
            }
            lines
        }

        proptest! {
            #![proptest_config(proptest_config(2000))]

            #[test]
            fn pieces_are_bounded_and_join_back_into_the_lines(
                input in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..200),
                    "([a-zé😀\r]{0,30}\n?){0,8}".prop_map(String::into_bytes),
                    proptest::collection::vec(prop_oneof![Just(b'\n'), Just(0xC3), Just(0xA9), Just(b'x')], 0..120),
                ],
                cap in 4usize..24,
                chunk in 1usize..40,
            ) {
                let pieces = split(cap, &input, chunk);
                for piece in &pieces {
                    prop_assert!(!piece.contains('\n'));
                    let body = piece.trim_start_matches(CONTINUED_PREFIX).trim_end_matches(SPLIT_SUFFIX);
                    // Each guest byte is at most one U+FFFD (3 bytes) of text.
                    prop_assert!(body.len() <= 3 * cap, "{} > 3 * {cap}", body.len());
                }
                if !input.windows(8).any(|w| w == b"[castra:") {
                    // A `\r` just before a cut stays in its piece: compare without them.
                    let joined: Vec<String> =
                        join(&pieces).iter().map(|l| l.trim_end_matches('\r').to_owned()).collect();
                    prop_assert_eq!(joined, expected(&input));
                }
            }
        }
    }
}
