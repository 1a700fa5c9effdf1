//! Imports of a user's file into the store (`base_image = "path"`, imported by default).
//!
//! The file is copied into `partial/<key>.part` while a second thread reads it and hashes it
//! (both read the same pages, so the file is read from disk once): with `FICLONE` (a reflink:
//! no data is copied) where the file system shares extents, else `copy_file_range` in large
//! pieces (the kernel copies, without the data passing through castrad), else plain reads and
//! writes. The file's identity (device, inode, size, mtime, ctime) is taken before and after:
//! a file changed while it was read is refused and nothing is kept. Then the part is checked
//! and committed like a download ([`Store::commit`]), and the source memo records the file's
//! identity, so the next `lookup` finds the image without reading the file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

use super::flight::Reporter;
use super::hasher::{Hasher, Hashes, hash_file, read_at, start_writeback};
use super::lock::Held;
use super::source::{Algo, Digest};
use super::store::{Candidate, Job, now_rfc3339};
use super::{FileIdentity, ImageError, Lease, Lookup, Origin, Phase, Source, Store, Stored, lock};

/// The most one `copy_file_range` call copies (between two looks at cancellation).
const COPY_CHUNK: usize = 64 << 20;
/// The buffer of a plain copy (no `copy_file_range` across these file systems).
const PLAIN_CHUNK: usize = 4 << 20;

/// A file copied into a partial file.
#[derive(Debug)]
pub(super) struct Copied {
    pub hashes: Hashes,
    pub size: u64,
    /// The source's identity, the same before and after it was read.
    pub identity: FileIdentity,
}

impl Store {
    /// The image of the file at `path` (checked against `digest` when given), imported unless
    /// the memo knows the file by its identity.
    pub(super) async fn import(
        self: &Arc<Self>,
        path: &Path,
        digest: Option<&Digest>,
        reporter: &Arc<Reporter>,
        lease: &Arc<Lease>,
    ) -> Result<Stored, ImageError> {
        let label = path.display().to_string();
        let partial = self.partial(&label);
        let lock = lock::lock_partial(&partial.lock)
            .await
            .map_err(ImageError::io(format!(
                "cannot lock {}",
                partial.lock.display()
            )))?;
        let held = Held {
            _lock: lock,
            _lease: Arc::clone(lease),
        };
        let this = Arc::clone(self);
        let path = path.to_owned();
        let digest = digest.cloned();
        let reporter = Arc::clone(reporter);
        tokio::task::spawn_blocking(move || {
            let result = this.import_blocking(&path, digest.as_ref(), &partial.part, &reporter);
            let _ = fs::remove_file(&partial.lock);
            drop(held);
            result
        })
        .await
        .map_err(|e| ImageError::Transfer {
            url: label,
            message: format!("the import failed: {e}"),
        })?
    }

    fn import_blocking(
        &self,
        path: &Path,
        digest: Option<&Digest>,
        part: &Path,
        reporter: &Reporter,
    ) -> Result<Stored, ImageError> {
        let key = Job::File {
            path: path.to_owned(),
            digest: None,
        }
        .key();
        // Another castrad may have imported it while this one waited for the lock.
        if let Lookup::Stored(stored) = self.lookup(
            &Source::File {
                path: path.to_owned(),
                import: true,
                digest: digest.cloned(),
            },
            None,
        ) {
            return Ok(stored);
        }
        let sha512 = digest.is_some_and(|d| d.algo == Algo::Sha512);
        let size = fs::metadata(path).ok().map(|m| m.len());
        let copied = copy_in(
            path,
            part,
            sha512,
            &mut |done| reporter.progress(Phase::Import, done, size),
            &|| reporter.cancelled(),
        )?;
        let label = path.display().to_string();
        self.commit(Candidate {
            part,
            hashes: copied.hashes,
            size: copied.size,
            expected: digest,
            label: &label,
            origin: Origin {
                source: label.clone(),
                checked_by: digest.map(Digest::to_string),
                at: now_rfc3339(),
            },
            memo_key: &key,
            identity: Some(copied.identity),
        })
    }
}

/// Copies the file at `src` into a new file `part` (mode 0600, fsynced) while hashing it; the
/// file must not change meanwhile. `progress` gets the bytes read so far (from the hashing
/// thread); `cancelled` is asked between pieces. On an error `part` is removed. Blocking.
pub(super) fn copy_in(
    src: &Path,
    part: &Path,
    sha512: bool,
    progress: &mut dyn FnMut(u64),
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Copied, ImageError> {
    let label = src.display().to_string();
    let read_err = ImageError::io(format!("cannot read {label}"));
    // A FIFO or device would block `open` (or feed bytes forever): looked at before it is
    // opened, and opened without blocking all the same (it could be swapped in meanwhile);
    // the open file is checked again below.
    if !std::fs::metadata(src)
        .map_err(ImageError::io(format!("cannot read {label}")))?
        .is_file()
    {
        return Err(ImageError::io(format!("cannot import {label}"))(
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(src)
            .map_err(read_err)?
    };
    let meta = file
        .metadata()
        .map_err(ImageError::io(format!("cannot read {label}")))?;
    if !meta.is_file() {
        return Err(ImageError::io(format!("cannot import {label}"))(
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let before = FileIdentity::from_meta(&meta);
    let dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(ImageError::io(format!("cannot write {}", part.display())))?;
    let result =
        (|| {
            let hashes = copy_and_hash(&file, &dst, before.size, sha512, progress, cancelled)
                .map_err(|e| ImageError::Io {
                    what: format!("cannot copy {label} into {}", part.display()),
                    source: e,
                })?;
            dst.sync_all()
                .map_err(ImageError::io(format!("cannot write {}", part.display())))?;
            // The file read is the file at the path, unchanged from before the first byte.
            let after = file
                .metadata()
                .map(|m| FileIdentity::from_meta(&m))
                .map_err(ImageError::io(format!("cannot read {label}")))?;
            let at_path = FileIdentity::of(src).ok();
            if after != before || at_path != Some(before) {
                let mut what = after.changes_since(&before);
                if what.is_empty() {
                    what.push("the path now names another file".into());
                }
                return Err(ImageError::Changed {
                    path: src.to_owned(),
                    what,
                });
            }
            Ok(Copied {
                hashes,
                size: before.size,
                identity: before,
            })
        })();
    if result.is_err() {
        let _ = fs::remove_file(part);
    }
    result
}

/// Copies `size` bytes of `src` into the empty file `dst` (a reflink where possible) while
/// this thread hashes them from `src`. Both must get all `size` bytes.
fn copy_and_hash(
    src: &File,
    dst: &File,
    size: u64,
    sha512: bool,
    progress: &mut dyn FnMut(u64),
    cancelled: &(dyn Fn() -> bool + Sync),
) -> io::Result<Hashes> {
    let cloned = rustix::fs::ioctl_ficlone(dst, src).is_ok();
    if !cloned {
        // A failed clone may have left something behind on some file systems.
        dst.set_len(0)?;
    }
    let stop = AtomicBool::new(false);
    let stopped = || stop.load(Ordering::Relaxed) || cancelled();
    std::thread::scope(|scope| {
        let copier = (!cloned).then(|| scope.spawn(|| copy_range(src, dst, size, &stopped)));
        let mut hasher = Hasher::new(sha512);
        let hashed = hash_file(src, 0, size, &mut hasher, progress, &stopped);
        if hashed.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let copied = match copier {
            None => Ok(size),
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the copying thread panicked"))),
        };
        let (hashed, copied) = (hashed?, copied?);
        if hashed != size || copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended early (read {hashed}, copied {copied} of {size} bytes)"),
            ));
        }
        Ok(hasher.finish())
    })
}

/// `copy_file_range` of `src`'s data into `dst`, `size` bytes in all: only the extents that
/// hold data (`SEEK_DATA`/`SEEK_HOLE`), over a `dst` first made `size` bytes long, so a
/// sparse image stays sparse in the store (and an upload of it to libvirt sends no holes).
/// Plain reads and writes when the kernel cannot copy between these files.
fn copy_range(
    src: &File,
    dst: &File,
    size: u64,
    stopped: &(dyn Fn() -> bool + Sync),
) -> io::Result<u64> {
    use rustix::fs::SeekFrom;
    dst.set_len(size)?;
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(data) => data.min(size),
            // No data after `pos`: the rest is a hole, which `set_len` made.
            Err(Errno::NXIO) => break,
            // A file system without SEEK_DATA: all of it is data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == 0 => 0,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(size),
            Err(_) => size,
        };
        if end <= data {
            break;
        }
        match copy_extent(src, dst, data, end, stopped)? {
            Extent::Copied => pos = end,
            Extent::Unsupported => return copy_plain(src, dst, size, stopped),
        }
    }
    Ok(size)
}

/// How [`copy_extent`] went.
enum Extent {
    Copied,
    /// The kernel cannot copy between these files (nothing was copied).
    Unsupported,
}

/// `copy_file_range` of `src[from..to]` to the same place in `dst`.
fn copy_extent(
    src: &File,
    dst: &File,
    from: u64,
    to: u64,
    stopped: &(dyn Fn() -> bool + Sync),
) -> io::Result<Extent> {
    let (mut off_in, mut off_out) = (from, from);
    while off_in < to {
        if stopped() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let want = usize::try_from(to - off_in).map_or(COPY_CHUNK, |n| n.min(COPY_CHUNK));
        let start = off_out;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(_) => start_writeback(dst, start, off_out - start),
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP)
                if off_in == from && from == 0 =>
            {
                return Ok(Extent::Unsupported);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Extent::Copied)
}

fn copy_plain(
    src: &File,
    dst: &File,
    size: u64,
    stopped: &(dyn Fn() -> bool + Sync),
) -> io::Result<u64> {
    let mut buf = vec![0u8; PLAIN_CHUNK];
    let mut at = 0u64;
    while at < size {
        if stopped() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let want = usize::try_from(size - at).map_or(buf.len(), |n| n.min(buf.len()));
        let n = read_at(src, &mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], at)?;
        start_writeback(dst, at, n as u64);
        at += n as u64;
    }
    Ok(at)
}

#[cfg(test)]
mod tests;
