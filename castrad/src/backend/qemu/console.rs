//! A QEMU VM's two logs, each capped at `serial_log_max`: `serial.log`, the guest's
//! serial console, and `qemu.log`, QEMU's own stderr.
//!
//! The serial console is a Unix socket QEMU listens on (`serial.sock`); castrad reads it and
//! writes `serial.log` itself, up to the cap: then one line says the log was cut, the rest is
//! counted, and a last line says how much was dropped when QEMU closes the console. QEMU
//! waits for castrad's connection before it starts the guest (nothing of the boot is lost);
//! while no castrad is connected (between a castrad's death and the next one's re-adoption)
//! QEMU drops what the guest writes, so the guest can never fill the disk unwatched. castrad
//! reads on past the cap (it only stops writing), so the guest's console never waits on it.
//!
//! QEMU writes `qemu.log` itself (its stderr, opened for appending): once a second, and when
//! the console closes, castrad cuts it back to the cap with a line saying so. It holds QEMU's
//! messages, not the guest's output, so it grows slowly, if at all; while castrad is not
//! running it is not checked.
//!
//! Both logs start empty at each launch and are appended to after a re-adoption.
//!
//! What castrad reads from the console also goes, as [`Chunk`]s, to the followers of
//! `castra.subscribeConsole` ([`follow`]), past the cap too: a bounded broadcast channel per
//! console (a follower that falls behind loses the oldest chunks and can tell how many bytes
//! from [`Chunk::pos`]). The channel closes when the console does (QEMU exited) or when castrad
//! stops keeping the logs, which ends the followers. Followers find a console by its
//! serial.log path in a registry of weak references: the task keeping the logs owns the
//! channel, so a console that closed is never found.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::broadcast;

/// How many chunks (each at most 16 KiB, one read) a console's followers may be behind
/// before they lose the oldest: at most 1 MiB held per followed console.
const FOLLOW_BUFFER: usize = 64;

/// A piece of console output as castrad read it, for followers.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// How many bytes castrad read from this console before this chunk (since it connected).
    pub pos: u64,
    /// Where in serial.log its first byte was written, and how many of its bytes were (the
    /// rest was past the cap); None: none of it was written.
    pub logged: Option<(u64, usize)>,
    pub bytes: Arc<[u8]>,
}

type Followers = broadcast::Sender<Chunk>;

/// The consoles castrad reads now, by serial.log path.
static CONSOLES: Mutex<BTreeMap<PathBuf, Weak<Followers>>> = Mutex::new(BTreeMap::new());

fn consoles() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Weak<Followers>>> {
    // Held only to insert, look up or remove one entry.
    CONSOLES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Follows the console whose log is `serial_log`: what castrad reads from it from now on.
/// None when castrad does not read that console now (its VM is not running).
pub fn follow(serial_log: &Path) -> Option<broadcast::Receiver<Chunk>> {
    let mut map = consoles();
    let followers = map.get(serial_log).and_then(Weak::upgrade);
    if followers.is_none() {
        map.remove(serial_log);
    }
    followers.map(|f| f.subscribe())
}

/// How often `qemu.log` is checked against its cap.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The task that keeps a running QEMU's logs within their cap; stopped when dropped.
#[derive(Debug)]
pub struct Logs {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Logs {
    /// Starts keeping the logs. `serial` is castrad's connection to the console (None: it
    /// could not be made, so only `qemu.log` is kept within its cap); `fresh` empties
    /// `serial.log` first (a new launch), otherwise it is appended to (a re-adoption).
    pub fn spawn(
        serial: Option<UnixStream>,
        serial_log: PathBuf,
        qemu_log: PathBuf,
        cap: u64,
        fresh: bool,
    ) -> Logs {
        let followers = Arc::new(broadcast::channel(FOLLOW_BUFFER).0);
        if serial.is_some() {
            consoles().insert(serial_log.clone(), Arc::downgrade(&followers));
        }
        let task = tokio::spawn(async move {
            let mut console = Capped::open(&serial_log, cap, fresh);
            let mut trim = Trim::new(qemu_log, cap);
            keep(serial, &mut console, &mut trim, &followers).await;
            drop(followers);
            console.finish();
            trim.check();
        });
        Logs { task: Some(task) }
    }

    /// Waits (at most `limit`) for the console to close after QEMU exited, so that the last
    /// line of `serial.log` is written.
    pub async fn closed(mut self, limit: Duration) {
        if let Some(task) = self.task.as_mut() {
            let _ = tokio::time::timeout(limit, task).await;
        }
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Copies the console into `console` until it closes, checking `qemu.log` on the way.
async fn keep(
    serial: Option<UnixStream>,
    console: &mut Capped,
    trim: &mut Trim,
    followers: &Followers,
) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Some(mut serial) = serial else {
        loop {
            tick.tick().await;
            trim.check();
        }
    };
    let mut buf = vec![0u8; 16 << 10];
    let mut pos = 0u64;
    loop {
        tokio::select! {
            read = serial.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let logged = console.write(&buf[..n]);
                    if followers.receiver_count() > 0 {
                        let bytes = Arc::from(&buf[..n]);
                        let _ = followers.send(Chunk { pos, logged, bytes });
                    }
                    pos += n as u64;
                }
            },
            _ = tick.tick() => trim.check(),
        }
    }
}

/// A log castrad writes from a byte stream, up to a cap.
struct Capped {
    path: PathBuf,
    file: Option<File>,
    cap: u64,
    len: u64,
    cut: bool,
    dropped: u64,
    /// The last byte written ended a line.
    at_line_start: bool,
}

impl Capped {
    fn open(path: &Path, cap: u64, fresh: bool) -> Capped {
        let opened = OpenOptions::new().create(true).append(true).open(path);
        let file = opened
            .and_then(|f| {
                if fresh {
                    f.set_len(0)?;
                }
                Ok(f)
            })
            .inspect_err(|e| tracing::warn!(log = %path.display(), error = %e, "cannot open"))
            .ok();
        let len = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Capped {
            path: path.to_owned(),
            file,
            cap,
            len,
            // A log already at its cap was cut by the castrad that wrote it.
            cut: len >= cap,
            dropped: 0,
            at_line_start: true,
        }
    }

    /// Writes what fits under the cap; where it went in the file and how much of it, if any.
    fn write(&mut self, bytes: &[u8]) -> Option<(u64, usize)> {
        if self.cut || self.file.is_none() {
            self.dropped += bytes.len() as u64;
            return None;
        }
        let room = usize::try_from(self.cap - self.len).unwrap_or(usize::MAX);
        let kept = &bytes[..bytes.len().min(room)];
        let at = self.len;
        self.append(kept);
        self.len += kept.len() as u64;
        let logged = Some((at, kept.len()));
        if kept.len() == bytes.len() {
            return logged;
        }
        self.cut = true;
        self.dropped += (bytes.len() - kept.len()) as u64;
        let note = format!(
            "[castrad: {} cut at {} bytes (serial_log_max); what follows is dropped]\n",
            self.name(),
            self.cap,
        );
        self.note(&note);
        logged
    }

    /// Says how much was dropped (when something was); the console has closed.
    fn finish(&mut self) {
        if self.dropped > 0 {
            let note = format!("[castrad: {} bytes dropped past the cap]\n", self.dropped);
            self.note(&note);
        }
    }

    /// A line of castrad's own, on a line of its own.
    fn note(&mut self, note: &str) {
        if !self.at_line_start {
            self.append(b"\n");
        }
        self.append(note.as_bytes());
    }

    fn append(&mut self, bytes: &[u8]) {
        let Some(file) = &mut self.file else { return };
        if bytes.is_empty() {
            return;
        }
        if let Err(e) = file.write_all(bytes) {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot write; the rest is dropped");
            self.file = None;
            return;
        }
        self.at_line_start = bytes.ends_with(b"\n");
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// A log another process appends to (QEMU's stderr), cut back to its cap when it grows past.
struct Trim {
    path: PathBuf,
    cap: u64,
    /// Its length right after castrad's cut line, once cut.
    keep: Option<u64>,
}

impl Trim {
    fn new(path: PathBuf, cap: u64) -> Trim {
        Trim {
            path,
            cap,
            keep: None,
        }
    }

    fn check(&mut self) {
        if let Err(e) = self.cut_back() {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot keep the log within its cap");
        }
    }

    fn cut_back(&mut self) -> io::Result<()> {
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.keep {
            Some(keep) if len > keep => OpenOptions::new()
                .write(true)
                .open(&self.path)?
                .set_len(keep),
            None if len > self.cap => {
                let mut file = OpenOptions::new().append(true).open(&self.path)?;
                file.set_len(self.cap)?;
                let name = self.path.file_name().unwrap_or_default().to_string_lossy();
                write!(
                    file,
                    "\n[castrad: {name} cut at {} bytes (serial_log_max); what follows is \
                     dropped]\n",
                    self.cap,
                )?;
                self.keep = Some(file.metadata()?.len());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_log_is_cut_at_its_cap_and_says_what_was_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, "left from the last boot\n").unwrap();
        let mut log = Capped::open(&path, 10, true);
        log.write(b"abc\n");
        log.write(b"defghij-and-more");
        log.write(b"lost");
        log.finish();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "abc\ndefghi\n[castrad: serial.log cut at 10 bytes (serial_log_max); what follows \
             is dropped]\n[castrad: 14 bytes dropped past the cap]\n"
        );

        // Re-adopted: appended to, and a log already cut stays cut.
        let mut again = Capped::open(&path, 10, false);
        again.write(b"more");
        assert!(again.cut);
        let mut roomy = Capped::open(&path, 1 << 20, false);
        roomy.write(b"appended\n");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("past the cap]\nappended\n")
        );
    }

    #[test]
    fn a_log_written_by_another_process_is_cut_back_to_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut trim = Trim::new(path.clone(), 8);
        writer.write_all(b"12345").unwrap();
        trim.check();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "12345");
        writer.write_all(b"6789abc").unwrap();
        trim.check();
        let cut = "12345678\n[castrad: qemu.log cut at 8 bytes (serial_log_max); what follows \
                   is dropped]\n";
        assert_eq!(std::fs::read_to_string(&path).unwrap(), cut);
        // The other process keeps appending (at the end, wherever it is): cut back again.
        writer.write_all(b"more\n").unwrap();
        trim.check();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), cut);
        writer.write_all(b"x").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{cut}x"));
    }
}
