//! Fixtures for the store's tests (a library for them, not a test module).
//!
//! [`Server`]: a tiny HTTP/1.1 server on 127.0.0.1: serves byte strings by path with an ETag,
//! honours `Range: bytes=N-` (and `If-Range`) with `206`, can be told to ignore ranges, to send
//! a body slowly, or to drop the connection after some bytes of the next image it serves, and
//! logs every request (headers, status, bytes sent). One connection per request
//! (`Connection: close`). Also: image bytes `qemu-img` takes for raw, digests, a listing of
//! the files under a directory.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    /// Lowercased names.
    pub headers: HashMap<String, String>,
    pub status: u16,
    /// Body bytes the server sent (or was sending when the client went away).
    pub sent: usize,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, (Vec<u8>, String)>,
    requests: Vec<Request>,
    drop_after: Option<usize>,
    ignore_range: bool,
    delay: Option<Duration>,
}

#[derive(Debug)]
pub struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Pieces the body is written in (and slowed down by).
const PIECE: usize = 64 << 10;

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || handle(conn, &state));
                }
            }
        });
        Server {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Serves `body` at `path` with this ETag.
    pub fn serve(&self, path: &str, body: &[u8], etag: &str) {
        self.lock()
            .files
            .insert(path.to_owned(), (body.to_vec(), format!("\"{etag}\"")));
    }

    /// The next image body (one larger than 4 KiB) ends after `n` bytes, the connection closed.
    pub fn drop_after(&self, n: usize) {
        self.lock().drop_after = Some(n);
    }

    /// Answers every request whole (`200`), ranges ignored.
    pub fn ignore_range(&self, yes: bool) {
        self.lock().ignore_range = yes;
    }

    /// Sleeps this long before each 64 KiB of a body.
    pub fn delay(&self, d: Option<Duration>) {
        self.lock().delay = d;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// The requests for `path`.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(mut conn: TcpStream, state: &Mutex<State>) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let (file, ignore_range, delay) = {
        let s = lock();
        (s.files.get(&path).cloned(), s.ignore_range, s.delay)
    };
    let Some((body, etag)) = file else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        lock().requests.push(Request {
            path,
            headers,
            status: 404,
            sent: 0,
        });
        return;
    };
    let len = body.len();
    let range_start = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| !ignore_range)
        .filter(|_| headers.get("if-range").is_none_or(|v| *v == etag));
    let (status, head, from) = match range_start {
        Some(n) if n >= len => (
            416,
            format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n"
            ),
            len,
        ),
        Some(n) => (
            206,
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{len}\r\nContent-Length: {}\r\n",
                len - 1,
                len - n
            ),
            n,
        ),
        None => (
            200,
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n"),
            0,
        ),
    };
    let head = format!("{head}ETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n");
    let limit = if len - from > 4096 {
        lock().drop_after.take()
    } else {
        None
    };
    let index = {
        let mut s = lock();
        s.requests.push(Request {
            path,
            headers,
            status,
            sent: 0,
        });
        s.requests.len() - 1
    };
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let end = limit.map_or(len, |n| (from + n).min(len));
    let mut at = from;
    while at < end {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let next = (at + PIECE).min(end);
        lock().requests[index].sent += next - at;
        if conn.write_all(&body[at..next]).is_err() {
            return;
        }
        at = next;
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

/// `len` bytes that `qemu-img` sees as a raw image (no format's magic), different per `seed`.
pub fn raw_image(len: usize, seed: u8) -> Vec<u8> {
    let mut out = b"castra test image\n".to_vec();
    out.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    out.truncate(len);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    crate::ids::hex(&sha2::Sha256::digest(bytes))
}

pub fn sha512_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    crate::ids::hex(&sha2::Sha512::digest(bytes))
}

/// Every file under `dir` (relative paths), directories left out.
pub fn files(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Records the progress a caller sees, with when it saw it.
#[derive(Debug, Default)]
pub struct Seen(pub Vec<(std::time::Instant, super::Progress)>);

impl Seen {
    pub fn callback(&mut self) -> impl FnMut(&super::Progress) + Send + '_ {
        |p| self.0.push((std::time::Instant::now(), p.clone()))
    }

    pub fn phases(&self) -> Vec<super::Phase> {
        let mut out: Vec<super::Phase> = Vec::new();
        for (_, p) in &self.0 {
            if out.last() != Some(&p.phase) {
                out.push(p.phase);
            }
        }
        out
    }
}
