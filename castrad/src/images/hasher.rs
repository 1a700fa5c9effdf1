//! Hashing an image while it is written, so that a transfer costs one pass over the data.
//!
//! - [`Hasher`]: sha256 always (the store's name for an image), sha512 too when the check
//!   is a sha512 digest.
//! - [`hash_file`]: a byte range of a file, read by one thread while this one hashes (the
//!   part of an interrupted download; a file being imported).
//! - [`Sink`]: a download's body, written to its partial file by one thread and hashed by
//!   another while the async side receives the next bytes. The writer thread owns the
//!   partial's lock guard and drops it only after its last write and fsync, so no other
//!   transfer opens the part while a write is still on its way (e.g. after the transfer was
//!   cancelled).

use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use sha2::{Digest as _, Sha256, Sha512};
use tokio::sync::{mpsc, oneshot};

use super::source::Algo;
use crate::ids::hex;

/// How much is read at a time from a file being hashed.
const READ_CHUNK: usize = 4 << 20;
/// Chunks of a download queued for the writer and for the hasher, each.
const QUEUE: usize = 8;
/// A download's writer asks for writeback after this many bytes.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// The digests of a whole image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hashes {
    pub sha256: String,
    pub sha512: Option<String>,
}

impl Hashes {
    /// The hex digest of `algo`, if it was computed.
    pub fn get(&self, algo: Algo) -> Option<&str> {
        match algo {
            Algo::Sha256 => Some(&self.sha256),
            Algo::Sha512 => self.sha512.as_deref(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Hasher {
    sha256: Sha256,
    sha512: Option<Sha512>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("sha512", &self.sha512.is_some())
            .finish()
    }
}

impl Hasher {
    pub fn new(sha512: bool) -> Hasher {
        Hasher {
            sha256: Sha256::new(),
            sha512: sha512.then(Sha512::new),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }

    pub fn finish(self) -> Hashes {
        Hashes {
            sha256: hex(&self.sha256.finalize()),
            sha512: self.sha512.map(|h| hex(&h.finalize())),
        }
    }
}

/// Hashes `len` bytes of `file` from `start` into `hasher`: a reader thread fills buffers
/// while this thread hashes the previous one. `progress` gets the bytes hashed so far;
/// `cancelled` is asked between buffers (an `Interrupted` error when it says yes). Returns
/// how many bytes were hashed: fewer than `len` when the file ends first.
pub(super) fn hash_file(
    file: &File,
    start: u64,
    len: u64,
    hasher: &mut Hasher,
    progress: &mut dyn FnMut(u64),
    cancelled: &(dyn Fn() -> bool + Sync),
) -> io::Result<u64> {
    let _ = rustix::fs::fadvise(
        file,
        start,
        NonZeroU64::new(len),
        rustix::fs::Advice::Sequential,
    );
    let (full_tx, full_rx) = std_mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(2);
    let (empty_tx, empty_rx) = std_mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = empty_tx.send(vec![0u8; READ_CHUNK]);
    }
    // `move`: the channels end with this closure, so the reader stops (after an error or a
    // cancellation here) before the scope joins it.
    std::thread::scope(move |scope| {
        scope.spawn(move || {
            let mut at = start;
            let end = start.saturating_add(len);
            while let Ok(mut buf) = empty_rx.recv() {
                let want = usize::try_from(end - at).map_or(buf.len(), |n| n.min(buf.len()));
                let got = read_at(file, &mut buf[..want], at).map(|n| (buf, n));
                let last = matches!(got, Ok((_, 0)) | Err(_));
                if let Ok((_, n)) = &got {
                    at += *n as u64;
                }
                if full_tx.send(got).is_err() || last {
                    return;
                }
            }
        });
        let mut done = 0u64;
        loop {
            if cancelled() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            match full_rx.recv() {
                Ok(Ok((_, 0))) | Err(_) => return Ok(done),
                Ok(Ok((buf, n))) => {
                    hasher.update(&buf[..n]);
                    done += n as u64;
                    progress(done);
                    let _ = empty_tx.send(buf);
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    })
}

/// One positioned read, retried when interrupted; 0 at the end (of the file or of `buf`).
pub(super) fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, at) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `at` to disk now, without
/// waiting: `POSIX_FADV_DONTNEED` starts writeback of the range's dirty pages (and drops only
/// pages already clean). A copy or download then overlaps the disk's writes, and the fsync
/// before the rename waits for the last piece instead of the whole image.
pub(super) fn start_writeback(file: &File, at: u64, len: u64) {
    let _ = rustix::fs::fadvise(file, at, NonZeroU64::new(len), rustix::fs::Advice::DontNeed);
}

/// A download's body on its way to the partial file and the hasher (see the module's doc).
#[derive(Debug)]
pub(super) struct Sink {
    write_tx: mpsc::Sender<Arc<Vec<u8>>>,
    hash_tx: mpsc::Sender<Arc<Vec<u8>>>,
    writer: oneshot::Receiver<io::Result<u64>>,
    hasher: oneshot::Receiver<Hasher>,
}

impl Sink {
    /// Starts the writer (appending to `file` where it is positioned) and the hasher
    /// (continuing `hasher`). `guard` lives until the writer is done with the file.
    pub fn start<G: Send + 'static>(mut file: File, mut hasher: Hasher, guard: G) -> Sink {
        let (write_tx, mut write_rx) = mpsc::channel::<Arc<Vec<u8>>>(QUEUE);
        let (hash_tx, mut hash_rx) = mpsc::channel::<Arc<Vec<u8>>>(QUEUE);
        let (writer_done, writer) = oneshot::channel();
        let (hasher_done, hasher_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut written = 0u64;
            let result = (|| {
                // Where this sink's bytes begin (it appends), and how far writeback was asked.
                let base = file.metadata()?.len();
                let mut kicked = 0u64;
                while let Some(chunk) = write_rx.blocking_recv() {
                    file.write_all(&chunk)?;
                    written += chunk.len() as u64;
                    if written - kicked >= WRITEBACK_EVERY {
                        start_writeback(&file, base + kicked, written - kicked);
                        kicked = written;
                    }
                }
                file.sync_all()?;
                Ok(written)
            })();
            // Done with the file before anyone hears of it.
            drop((file, guard));
            let _ = writer_done.send(result);
        });
        std::thread::spawn(move || {
            while let Some(chunk) = hash_rx.blocking_recv() {
                hasher.update(&chunk);
            }
            let _ = hasher_done.send(hasher);
        });
        Sink {
            write_tx,
            hash_tx,
            writer,
            hasher: hasher_rx,
        }
    }

    /// Queues `chunk` for both threads. An error: the writer stopped (its error comes from
    /// [`Sink::finish`]).
    pub async fn push(&mut self, chunk: Vec<u8>) -> Result<(), ()> {
        let chunk = Arc::new(chunk);
        self.hash_tx
            .send(Arc::clone(&chunk))
            .await
            .map_err(|_| ())?;
        self.write_tx.send(chunk).await.map_err(|_| ())
    }

    /// Waits for everything queued to be written (and fsynced) and hashed: the bytes written
    /// by this sink and the hasher.
    pub async fn finish(self) -> io::Result<(u64, Hasher)> {
        let Sink {
            write_tx,
            hash_tx,
            writer,
            hasher,
        } = self;
        drop((write_tx, hash_tx));
        let stopped = || io::Error::other("the writer thread stopped");
        let written = writer.await.map_err(|_| stopped())??;
        let hasher = hasher.await.map_err(|_| stopped())?;
        Ok((written, hasher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_of_a_file_hashes_like_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(READ_CHUNK * 2 + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut h = Hasher::new(true);
        let mut seen = 0;
        let n = hash_file(&file, 5, 1 << 40, &mut h, &mut |d| seen = d, &|| false).unwrap();
        assert_eq!((n, seen), (data.len() as u64 - 5, data.len() as u64 - 5));
        let mut want = Hasher::new(true);
        want.update(&data[5..]);
        assert_eq!(h.finish(), want.finish());
    }

    #[tokio::test]
    async fn a_sink_writes_and_hashes_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let file = File::create(&path).unwrap();
        let mut sink = Sink::start(file, Hasher::new(false), ());
        for i in 0..10u8 {
            sink.push(vec![i; 1000]).await.unwrap();
        }
        let (n, h) = sink.finish().await.unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(n, 10_000);
        let mut want = Hasher::new(false);
        want.update(&data);
        assert_eq!(h.finish(), want.finish());
    }
}
