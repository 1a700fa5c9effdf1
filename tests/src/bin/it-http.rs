//! A small HTTP/1.1 file server for the end-to-end tests of the image store: a local stand-in
//! for a distribution's image mirror that a test can count, cut short and kill.
//!
//! `it-http DIR LOG [--port N] [--drop-after BYTES]` serves the files under DIR on 127.0.0.1
//! (port N, else a free one; printed as the first line on stdout), one thread per connection. It answers `GET`
//! and `HEAD` with `Content-Length`, an `ETag` (size and mtime) and `Accept-Ranges`; a `Range:
//! bytes=N-` gets a 206 with the rest, unless an `If-Range` names another ETag (then the whole
//! file, 200). Every request is appended to LOG as one line: `METHOD PATH RANGE-OR-DASH
//! STATUS BYTES-SENT`. With `--drop-after BYTES`, the first file body longer than that is cut
//! after BYTES bytes and the process exits at once, as a server killed mid-transfer.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

struct Server {
    root: PathBuf,
    log: Mutex<std::fs::File>,
    drop_after: Option<u64>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, log) = match (args.first(), args.get(1)) {
        (Some(root), Some(log)) => (PathBuf::from(root), PathBuf::from(log)),
        _ => {
            eprintln!("usage: it-http DIR LOG [--port N] [--drop-after BYTES]");
            std::process::exit(2);
        }
    };
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
    };
    let drop_after = option("--drop-after");
    let port = option("--port").unwrap_or(0);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open the request log");
    let listener = TcpListener::bind(("127.0.0.1", port as u16)).expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local address").port();
    println!("{port}");
    std::io::stdout().flush().expect("print the port");
    let server = Arc::new(Server {
        root,
        log: Mutex::new(log),
        drop_after,
    });
    for stream in listener.incoming().flatten() {
        let server = server.clone();
        std::thread::spawn(move || {
            let _ = server.connection(stream);
        });
    }
}

impl Server {
    fn connection(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            );
            let (mut range, mut if_range) = (None, None);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                    break;
                }
                let Some((name, value)) = header.split_once(':') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(value.trim().to_owned()),
                    "if-range" => if_range = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
            self.respond(&mut out, &method, &target, range, if_range)?;
        }
    }

    fn respond(
        &self,
        out: &mut TcpStream,
        method: &str,
        target: &str,
        range: Option<String>,
        if_range: Option<String>,
    ) -> std::io::Result<()> {
        let shown_range = range.clone().unwrap_or_else(|| "-".into());
        let Some(path) = self.file(target) else {
            self.record(method, target, &shown_range, 404, 0);
            return write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
            );
        };
        let mut file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        let len = meta.len();
        let etag = format!(
            "\"{:x}-{:x}\"",
            len,
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000
        );
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|_| if_range.as_deref().is_none_or(|t| t == etag));
        let (status, from) = match start {
            Some(n) if n >= len => {
                self.record(method, target, &shown_range, 416, 0);
                return write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                     Content-Length: 0\r\n\r\n"
                );
            }
            Some(n) => (206, n),
            None => (200, 0),
        };
        let body = len - from;
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Length: {body}\r\nETag: {etag}\r\n\
             Accept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n",
            if status == 206 {
                "Partial Content"
            } else {
                "OK"
            }
        );
        if status == 206 {
            head.push_str(&format!(
                "Content-Range: bytes {from}-{}/{len}\r\n",
                len - 1
            ));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method == "HEAD" {
            self.record(method, target, &shown_range, status, 0);
            return Ok(());
        }
        file.seek(SeekFrom::Start(from))?;
        let cut = self.drop_after.filter(|n| *n < body);
        let mut left = cut.unwrap_or(body);
        let mut sent = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            sent += n as u64;
            left -= n as u64;
        }
        out.flush()?;
        self.record(method, target, &shown_range, status, sent);
        if cut.is_some() {
            // Killed mid-file: the client sees the connection end short of Content-Length.
            std::process::exit(0);
        }
        Ok(())
    }

    /// The file a request target names under the root (no `..`, no query).
    fn file(&self, target: &str) -> Option<PathBuf> {
        let path = target.split('?').next()?.trim_start_matches('/');
        let rel = Path::new(path);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        let full = self.root.join(rel);
        full.is_file().then_some(full)
    }

    fn record(&self, method: &str, target: &str, range: &str, status: u16, sent: u64) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(log, "{method} {target} {range} {status} {sent}");
        let _ = log.flush();
    }
}
