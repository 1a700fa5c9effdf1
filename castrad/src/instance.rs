//! One castrad per state directory.
//!
//! Two daemons on one state directory would both re-adopt the same QEMU processes, both
//! write the same stamps and run logs, and could each start a VM the other already runs. So
//! castrad takes an exclusive advisory lock (`flock`) on `<state dir>/castrad.lock` before it
//! touches anything else there (re-adoption, projects) and before it binds or adopts its
//! socket, and holds it for its whole life: the kernel drops it when the process ends, however
//! it ends (SIGKILL included), so a stale lock cannot exist.
//!
//! The file holds the owner's pid, for the error a second daemon prints. It is rewritten in
//! place (never renamed: a lock belongs to the inode) by one small write of `<pid>\n` then a
//! truncation, so a reader sees a whole pid line, the old owner's or the new one's, and a
//! second daemon only believes it once that pid is a live process. The file is never removed:
//! removing a lock file races with a daemon that has just opened it. It is opened
//! close-on-exec, so QEMU and ssh children never inherit (and so never prolong) the lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock this castrad holds on its state directory; released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub struct InstanceLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another castrad ({}) is using the state directory {}: it holds the lock {}; stop it \
         first (`systemctl --user stop castrad`{}) or give this one another --state-dir",
        pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "pid unknown".into()),
        dir.display(),
        lock.display(),
        pid.map(|p| format!(" or `kill {p}`")).unwrap_or_default()
    )]
    Held {
        dir: PathBuf,
        lock: PathBuf,
        pid: Option<u32>,
    },
    #[error("cannot lock the state directory: {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// How long a second daemon waits for the lock's owner to have written its pid.
const PID_WAIT: Duration = Duration::from_millis(500);

/// Takes the lock of the state directory `base` (created 0700 if missing), or says which
/// castrad holds it. On failure nothing in `base` was changed.
pub fn acquire(base: &Path) -> Result<InstanceLock, LockError> {
    let path = crate::state_root::daemon_lock(base);
    let err = |what, source| LockError::Io {
        what,
        path: path.clone(),
        source,
    };
    crate::state_root::ensure_dir(base).map_err(|e| err("creating", e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| err("opening", e))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, Errno::EWOULDBLOCK)) => {
            return Err(LockError::Held {
                dir: base.to_owned(),
                pid: owner(file),
                lock: path,
            });
        }
        Err((_, errno)) => return Err(err("locking", errno.into())),
    };
    let line = format!("{}\n", std::process::id());
    let written = (|| {
        lock.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        lock.write_all_at(line.as_bytes(), 0)?;
        lock.set_len(line.len() as u64)
    })();
    written.map_err(|e| err("writing", e))?;
    Ok(InstanceLock { _lock: lock, path })
}

/// The pid the lock file names, once it is a live process (the owner may not have written
/// its own yet, and the file may still name a daemon that has gone).
fn owner(mut file: File) -> Option<u32> {
    let deadline = Instant::now() + PID_WAIT;
    let mut last = None;
    loop {
        let mut text = String::new();
        let read = file
            .rewind()
            .and_then(|()| (&mut file).take(64).read_to_string(&mut text));
        if read.is_ok() {
            last = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok());
        }
        if last.is_some_and(alive) || Instant::now() > deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_owner_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("state");
        let first = acquire(&base).unwrap();
        let text = std::fs::read_to_string(&first.path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let second = acquire(&base).unwrap_err();
        let msg = second.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&*first.path.to_string_lossy()), "{msg}");
        assert_eq!(std::fs::read_to_string(&first.path).unwrap(), text);

        drop(first);
        let again = acquire(&base).unwrap();
        assert_eq!(
            std::fs::read_to_string(&again.path).unwrap(),
            text,
            "rewritten whole"
        );
    }

    #[test]
    fn a_stale_longer_pid_is_overwritten_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::state_root::daemon_lock(dir.path());
        std::fs::write(&path, "4294967295\ngarbage\n").unwrap();
        let lock = acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&lock.path).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, crate::state_root::daemon_lock(dir.path())).unwrap();
        let e = acquire(dir.path()).unwrap_err();
        assert!(matches!(e, LockError::Io { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
