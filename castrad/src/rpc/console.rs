//! `castra.console` and `castra.subscribeConsole`: a QEMU VM's serial console over the API.
//!
//! `castra.console` reads the end of `serial.log` (at most [`api::CONSOLE_MAX_BYTES`]). A
//! subscription first sends the end of the log, then what castrad reads from the console next
//! (`backend::qemu::console::follow`), which goes on past the log's cap: it follows the
//! console, not the file. Nothing is lost or repeated between the two: the subscription starts
//! following before it reads the file, and skips the bytes of a chunk the file already had
//! ([`Chunk::logged`] against the size it read).
//!
//! Bounds: a notification carries at most [`NOTE_BYTES`] of output (plus one read); a
//! subscription delivers at most [`RATE`] bytes a second after a burst of [`BURST`], and says
//! how many bytes it left out (`skipped_bytes`); a follower too slow for the console's buffer
//! loses the oldest chunks, counted the same way. The guest's bytes become text lossily
//! ([`Utf8`]); control characters are the client's to escape.
//!
//! The subscription ends with a notification whose `end` says why: the VM stopped (its console
//! closed: QEMU exited, or castrad stopped keeping its logs), or it was not running at all.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use castra_api as api;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::{PendingSubscriptionSink, RpcModule, SubscriptionSink};
use tokio::sync::broadcast::error::RecvError;

use crate::backend::qemu::console::{Chunk, follow};
use crate::config::BackendKind;
use crate::daemon::{Daemon, DaemonError};

/// At most this much output is gathered into one notification (one more read may follow).
pub const NOTE_BYTES: usize = 16 << 10;
/// How many bytes a second a subscription delivers once its burst is spent (32 KiB/s, about
/// three times a 115200-baud line, 400 lines of 80 characters): more is left out and counted.
pub const RATE: u64 = 32 << 10;
/// How many bytes a subscription may deliver at once before [`RATE`] applies (64 KiB: a whole
/// kernel boot log, about).
pub const BURST: u64 = 64 << 10;

pub fn register(m: &mut RpcModule<Daemon>) {
    m.register_async_method(api::method::CONSOLE, |params, daemon, _| async move {
        console(params, &daemon)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_subscription(
        api::method::SUBSCRIBE_CONSOLE,
        api::method::CONSOLE_OUTPUT,
        api::method::UNSUBSCRIBE_CONSOLE,
        |params, pending, daemon, _| async move { subscribe(params, pending, &daemon).await },
    )
    .expect("unique method name");
}

/// The VM's serial log, checked: a VM of the project, one with a console.
async fn serial_log(
    daemon: &Daemon,
    config: &Path,
    vm: &str,
) -> Result<std::path::PathBuf, DaemonError> {
    let entry = daemon.project(config).await?;
    // An unknown name is the same preflight error as for down, cancel and sshConfig.
    let selected = crate::daemon::selected(&entry.project, &[vm.to_owned()])?;
    let Some(found) = selected.first() else {
        return Err(DaemonError::UnknownVm {
            vm: vm.to_owned(),
            known: vec![],
        });
    };
    if found.backend != BackendKind::Qemu {
        return Err(DaemonError::NoConsole {
            vm: vm.to_owned(),
            backend: found.backend,
        });
    }
    Ok(entry.root.vm(vm).serial_log)
}

async fn console(
    params: Params<'static>,
    daemon: &Daemon,
) -> Result<api::ConsoleResult, DaemonError> {
    let p: api::ConsoleParams = params
        .parse()
        .map_err(|e| DaemonError::InvalidParams(e.message().to_owned()))?;
    let path = serial_log(daemon, &p.config, &p.vm).await?;
    let max = p
        .max_bytes
        .unwrap_or(api::CONSOLE_DEFAULT_BYTES)
        .min(api::CONSOLE_MAX_BYTES);
    let running = follow(&path).is_some();
    let tail = tail_of(&path, &p.vm, max).await?;
    let mut text = Utf8::default();
    let mut out = text.push(&tail.bytes);
    out.push_str(&text.finish());
    Ok(api::ConsoleResult {
        vm: p.vm,
        log_path: path,
        text: out,
        bytes: tail.bytes.len() as u64,
        size: tail.size,
        truncated: tail.skipped > 0,
        running,
    })
}

/// The last `max` bytes of `vm`'s serial log at `path`, a read error named as the VM's.
async fn tail_of(path: &Path, vm: &str, max: u64) -> Result<Tail, DaemonError> {
    read_tail(path, max)
        .await
        .map_err(|source| DaemonError::Console {
            vm: vm.to_owned(),
            path: path.to_owned(),
            source,
        })
}

async fn subscribe(params: Params<'static>, pending: PendingSubscriptionSink, daemon: &Daemon) {
    let checked = async {
        let p: api::SubscribeConsoleParams = params
            .parse()
            .map_err(|e| DaemonError::InvalidParams(e.message().to_owned()))?;
        let path = serial_log(daemon, &p.config, &p.vm).await?;
        // Following before the file is read: nothing falls between the tail and what follows.
        let live = follow(&path);
        let max = p.tail_bytes.unwrap_or(0).min(api::CONSOLE_MAX_BYTES);
        let tail = tail_of(&path, &p.vm, max).await?;
        Ok::<_, DaemonError>((p.vm, live, tail))
    };
    let (vm, live, tail) = match checked.await {
        Ok(found) => found,
        Err(e) => {
            pending.reject(ErrorObjectOwned::from(e)).await;
            return;
        }
    };
    let Ok(sink) = pending.accept().await else {
        return;
    };
    let mut out = Out {
        sink,
        vm,
        text: Utf8::default(),
        skipped: tail.skipped,
    };
    for piece in tail.bytes.chunks(NOTE_BYTES) {
        let text = out.text.push(piece);
        if !out.send(text, None).await {
            return;
        }
    }
    let Some(mut live) = live else {
        let rest = out.text.finish();
        out.send(rest, Some(api::ConsoleEnd::NotRunning)).await;
        return;
    };
    let mut pace = Pace::new(tail.size, Instant::now());
    loop {
        let first = tokio::select! {
            next = live.recv() => next,
            _ = out.sink.closed() => return,
        };
        let mut chunks = Vec::new();
        let mut ended = false;
        match first {
            Ok(chunk) => chunks.push(chunk),
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => ended = true,
        }
        // What else has arrived already goes in the same notification.
        let mut gathered: usize = chunks.iter().map(|c| c.bytes.len()).sum();
        while !ended && gathered < NOTE_BYTES {
            match live.try_recv() {
                Ok(chunk) => {
                    gathered += chunk.bytes.len();
                    chunks.push(chunk);
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::TryRecvError::Closed) => ended = true,
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
            }
        }
        let mut text = String::new();
        let now = Instant::now();
        for chunk in &chunks {
            let (bytes, skipped) = pace.admit(chunk, now);
            if skipped > 0 {
                text.push_str(&out.text.finish());
                out.skipped += skipped;
            }
            text.push_str(&out.text.push(bytes));
        }
        if ended {
            text.push_str(&out.text.finish());
            out.send(text, Some(api::ConsoleEnd::Stopped)).await;
            return;
        }
        if !text.is_empty() && !out.send(text, None).await {
            return;
        }
    }
}

/// The sending end of a console subscription.
struct Out {
    sink: SubscriptionSink,
    vm: String,
    text: Utf8,
    /// Bytes left out since the last notification.
    skipped: u64,
}

impl Out {
    /// Sends a notification; false once the client is gone.
    async fn send(&mut self, text: String, end: Option<api::ConsoleEnd>) -> bool {
        let chunk = api::ConsoleChunk {
            vm: self.vm.clone(),
            text,
            skipped_bytes: std::mem::take(&mut self.skipped),
            end,
        };
        let Ok(raw) = serde_json::value::to_raw_value(&chunk) else {
            return false;
        };
        self.sink.send(raw).await.is_ok()
    }
}

/// The end of a log.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tail {
    bytes: Vec<u8>,
    /// The log's size when read.
    size: u64,
    /// Bytes before `bytes` left out.
    skipped: u64,
}

/// The last (at most) `max` bytes of the file at `path`, starting at a character (a missing
/// file is an empty log: the VM has not been started yet).
async fn read_tail(path: &Path, max: u64) -> std::io::Result<Tail> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || read_tail_now(&path, max))
        .await
        .map_err(std::io::Error::other)?
}

fn read_tail_now(path: &Path, max: u64) -> std::io::Result<Tail> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::default()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut start = size.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((size - start) as usize);
    file.take(size - start).read_to_end(&mut bytes)?;
    // Begun inside a character: its continuation bytes would only be U+FFFD.
    if start > 0 {
        let cut = bytes
            .iter()
            .take(3)
            .take_while(|b| (0x80..0xc0).contains(*b))
            .count();
        bytes.drain(..cut);
        start += cut as u64;
    }
    Ok(Tail {
        size: start + bytes.len() as u64,
        skipped: start,
        bytes,
    })
}

/// Which bytes of the console a subscription delivers: not those the tail it sent already
/// had, not more than the rate bound allows; it counts what it leaves out (chunks the
/// follower lost included).
#[derive(Debug)]
struct Pace {
    /// The log's size when the tail was read.
    file_size: u64,
    /// The console position the next chunk should start at (None: none seen yet).
    next: Option<u64>,
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(file_size: u64, now: Instant) -> Pace {
        Pace {
            file_size,
            next: None,
            tokens: BURST as f64,
            at: now,
        }
    }

    /// The part of `chunk` to deliver, and how many bytes before it are left out.
    fn admit<'a>(&mut self, chunk: &'a Chunk, now: Instant) -> (&'a [u8], u64) {
        let mut skipped = match self.next {
            Some(next) => chunk.pos.saturating_sub(next),
            None => 0,
        };
        self.next = Some(chunk.pos + chunk.bytes.len() as u64);
        let already = match chunk.logged {
            Some((at, n)) => usize::try_from(self.file_size.saturating_sub(at))
                .unwrap_or(usize::MAX)
                .min(n),
            None => 0,
        };
        let fresh = &chunk.bytes[already..];
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * RATE as f64).min(BURST as f64);
        let allowed = (self.tokens as usize).min(fresh.len());
        self.tokens -= allowed as f64;
        skipped += (fresh.len() - allowed) as u64;
        (&fresh[..allowed], skipped)
    }
}

/// Untrusted bytes to text: UTF-8 as it is, a character split between two pieces joined,
/// anything else U+FFFD.
#[derive(Debug, Default)]
struct Utf8 {
    /// The start of a character the last piece ended inside (at most 3 bytes).
    carry: Vec<u8>,
}

impl Utf8 {
    fn push(&mut self, piece: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(piece);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            self.carry = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What is left of a character that will not be completed.
    fn finish(&mut self) -> String {
        if std::mem::take(&mut self.carry).is_empty() {
            String::new()
        } else {
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests;
