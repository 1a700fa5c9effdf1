//! The store's locks, all `flock(2)` on small files that are never written.
//!
//! - `<store>/.lock`: shared by every [`super::Lease`] and every transfer in progress (in any
//!   castrad using the store); exclusive, without waiting, for `rm` and `prune`, which answer
//!   `Busy` rather than remove an image someone is about to use.
//! - `partial/<key>.lock`: exclusive while one castrad downloads or imports the source `key`;
//!   another castrad waits for it and then finds the image done.
//!
//! A lock file may be removed by whoever holds it (a finished transfer, `prune`); someone who
//! opened it before and locks it afterwards holds a lock on a file no longer in the directory,
//! so [`lock_partial`] checks that the locked file is still the one at the path, and starts
//! over when not. Waiting is by polling a non-blocking attempt from async code, so a waiter
//! never ties up a thread and stops as soon as its future is dropped.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

/// How long a waiter sleeps between attempts, at first and at most.
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(200);

/// Opens (creating, mode 0600) the lock file at `path`.
pub(super) fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Tries to lock `file` without waiting: Ok(false) when someone else holds a conflicting lock.
pub(super) fn try_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    match flock(file, op) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A shared lock on `path` (the store lock), waiting while someone holds it exclusively (an
/// `rm` or `prune`, which take a moment).
pub(super) async fn shared(path: &Path) -> io::Result<File> {
    let file = open(path)?;
    let mut pause = POLL_FIRST;
    while !try_lock(&file, false)? {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
    Ok(file)
}

/// An exclusive lock on `path` (a partial download's), waiting for whoever holds it (another
/// transfer of the same source, possibly in another castrad).
pub(super) async fn lock_partial(path: &Path) -> io::Result<File> {
    let mut pause = POLL_FIRST;
    loop {
        let file = open(path)?;
        loop {
            if try_lock(&file, true)? {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
        if same_file(&file, path) {
            return Ok(file);
        }
        // The holder removed the file when it was done: lock the one at the path now.
    }
}

/// Whether `file` is still the file at `path`.
pub(super) fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_excludes_shared_on_other_descriptions_of_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = shared(&path).await.unwrap();
        let other = open(&path).unwrap();
        assert!(!try_lock(&other, true).unwrap());
        assert!(try_lock(&open(&path).unwrap(), false).unwrap());
        drop(held);
        assert!(try_lock(&other, true).unwrap());
    }

    #[tokio::test]
    async fn a_partial_lock_removed_by_its_holder_is_taken_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let first = lock_partial(&path).await.unwrap();
        let waiter = tokio::spawn({
            let path = path.clone();
            async move { lock_partial(&path).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        fs::remove_file(&path).unwrap();
        drop(first);
        let got = waiter.await.unwrap();
        assert!(same_file(&got, &path));
    }
}

/// Held by a transfer until its image is committed (also by its writer thread, until the
/// last write): the partial's lock and a share of the store lock.
#[derive(Debug)]
pub(super) struct Held {
    pub _lock: std::fs::File,
    pub _lease: std::sync::Arc<super::Lease>,
}
