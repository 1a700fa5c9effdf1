//! What a VM's disk is backed by, and the check that no disk is ever booted on changed base
//! contents.
//!
//! Every overlay castrad makes gets a record beside it (`vms/<vm>/base.json`, written before
//! the overlay is renamed into place): the backing file's path, its sha256, its format, and
//! its [`FileIdentity`] when recorded. Before every start, [`verify`] compares the backing
//! file's identity now with the record; when it differs (a new inode, size, mtime or ctime:
//! any write, truncation, replacement or chmod changes one of them), the file is hashed again
//! and the start is refused unless the content is still what the record says. A store image
//! (read-only, named by its digest) normally never changes; a file the user keeps
//! (`base_image_import = false`) or an overlay made before the store may.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What tells a file's content may have changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    /// The kernel sets it on every write and metadata change; user space cannot set it back.
    pub ctime_ns: i128,
}

impl FileIdentity {
    pub fn of(path: &Path) -> io::Result<FileIdentity> {
        Ok(FileIdentity::from_meta(&fs::metadata(path)?))
    }

    pub fn from_meta(m: &fs::Metadata) -> FileIdentity {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    /// What differs from `before`, as a person reads it ("size 512 MiB → 1.0 GiB, modified
    /// 2026-12-07T10:00:00Z → 2026-12-07T11:02:03Z"). Empty when nothing does.
    pub fn changes_since(&self, before: &FileIdentity) -> Vec<String> {
        let mut out = Vec::new();
        if (self.dev, self.ino) != (before.dev, before.ino) {
            out.push("replaced by another file (new inode)".to_owned());
        }
        if self.size != before.size {
            out.push(format!("size {} → {} bytes", before.size, self.size));
        }
        if self.mtime_ns != before.mtime_ns {
            out.push(format!(
                "modified {} → {}",
                rfc3339(before.mtime_ns),
                rfc3339(self.mtime_ns)
            ));
        } else if self.ctime_ns != before.ctime_ns {
            out.push(format!(
                "metadata or contents changed at {} (mtime kept)",
                rfc3339(self.ctime_ns)
            ));
        }
        out
    }
}

fn rfc3339(ns: i128) -> String {
    let secs = u64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// `base.json`: what one VM disk is backed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskBase {
    /// The backing file's content (hex): the base hash stamps use for this disk.
    pub sha256: String,
    /// The path the overlay names as its backing file.
    pub backing: PathBuf,
    /// Its format, as given to `qemu-img create -F`.
    pub format: String,
    /// True when `backing` is a store image.
    pub stored: bool,
    /// The backing file's identity when last known to hold `sha256`.
    pub identity: FileIdentity,
    /// Where the image came from (a URL or the user's path), for messages.
    pub source: String,
}

/// Reads a disk's record; None when there is none or it cannot be read (for what only
/// reports: plan, doctor, the store's refs; a start uses [`load`]).
pub fn read(path: &Path) -> Option<DiskBase> {
    load(path).ok().flatten()
}

/// Reads a disk's record: None when there is none (a disk made before records), an error
/// (what is wrong) when it cannot be read or parsed.
pub fn load(path: &Path) -> Result<Option<DiskBase>, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("not a disk record: {e}"))
}

/// Writes a disk's record (atomically).
pub fn write(path: &Path, record: &DiskBase) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    crate::fsutil::write_atomic(path, &json)
}

/// Why a disk must not boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseChanged {
    #[error(
        "the base image {} of this disk changed since the disk was made ({}): its sha256 was \
         {was}, it is now {now}; castrad will not boot a disk on changed base contents (its \
         blocks would be read on top of other data). Put the original file back, or discard the \
         disk (`castractl down {vm} --discard`) to start over on the new image",
        file.display(), what.join(", ")
    )]
    Content {
        vm: String,
        file: PathBuf,
        what: Vec<String>,
        was: String,
        now: String,
    },
    #[error(
        "the base image {} of this disk cannot be read ({reason}); castrad will not boot the \
         disk without it: put the file back{}, or discard the disk (`castractl down {vm} \
         --discard`)",
        file.display(),
        fetch_again
            .as_ref()
            .map(|s| format!(
                " (`castractl image pull {s}` fetches the image into the store again: the same \
                 content gets the same name)"
            ))
            .unwrap_or_default()
    )]
    Unreadable {
        vm: String,
        file: PathBuf,
        reason: String,
        /// For a store image: the source that fetches it again.
        fetch_again: Option<String>,
    },
    #[error(
        "the record of what this disk is backed by, {}, cannot be used ({reason}); castrad will \
         not boot the disk without knowing its base: discard the disk (`castractl down {vm} \
         --discard`)",
        record.display()
    )]
    Record {
        vm: String,
        record: PathBuf,
        reason: String,
    },
}

/// Checks that the disk's backing file still holds what `record` says, before QEMU opens the
/// disk. Ok(None): unchanged (identity equal: nothing read). Ok(Some(updated)): the identity
/// changed but the content is the same (the caller writes the updated record). `hash` reads a
/// whole file's sha256 (hex) and is only called when the identity changed.
pub fn verify(
    vm: &str,
    record: &DiskBase,
    hash: impl FnOnce(&Path) -> io::Result<String>,
) -> Result<Option<DiskBase>, BaseChanged> {
    let unreadable = |e: io::Error| BaseChanged::Unreadable {
        vm: vm.to_owned(),
        file: record.backing.clone(),
        reason: e.to_string(),
        fetch_again: record.stored.then(|| record.source.clone()),
    };
    let now = FileIdentity::of(&record.backing).map_err(unreadable)?;
    if now == record.identity {
        return Ok(None);
    }
    let sha256 = hash(&record.backing).map_err(unreadable)?;
    // The identity again: a file written while it was hashed is not trusted either way.
    let after = FileIdentity::of(&record.backing).map_err(unreadable)?;
    if sha256 == record.sha256 && after == now {
        return Ok(Some(DiskBase {
            identity: now,
            ..record.clone()
        }));
    }
    Err(BaseChanged::Content {
        vm: vm.to_owned(),
        file: record.backing.clone(),
        what: now.changes_since(&record.identity),
        was: record.sha256.clone(),
        now: if after == now {
            sha256
        } else {
            "(changing while read)".to_owned()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(file: &Path, sha256: &str) -> DiskBase {
        DiskBase {
            sha256: sha256.to_owned(),
            backing: file.to_owned(),
            format: "raw".into(),
            stored: false,
            identity: FileIdentity::of(file).unwrap(),
            source: file.display().to_string(),
        }
    }

    #[test]
    fn an_unchanged_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base.img");
        fs::write(&f, b"one").unwrap();
        let r = record(&f, "h1");
        let got = verify("web", &r, |_| panic!("must not hash an unchanged file"));
        assert_eq!(got, Ok(None));
    }

    #[test]
    fn a_touched_file_with_the_same_content_gets_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base.img");
        fs::write(&f, b"one").unwrap();
        let r = record(&f, "h1");
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, b"one").unwrap();
        let updated = verify("web", &r, |_| Ok("h1".into())).unwrap().unwrap();
        assert_ne!(updated.identity, r.identity);
        assert_eq!(updated.sha256, "h1");
    }

    #[test]
    fn changed_content_is_refused_naming_the_file_and_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base.img");
        fs::write(&f, b"one").unwrap();
        let r = record(&f, "h1");
        fs::remove_file(&f).unwrap();
        fs::write(&f, b"other bytes").unwrap();
        let e = verify("web", &r, |_| Ok("h2".into())).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&f.display().to_string()), "{text}");
        assert!(text.contains("size 3 → 11 bytes"), "{text}");
        assert!(text.contains("was h1, it is now h2"), "{text}");
        assert!(text.contains("castractl down web --discard"), "{text}");
    }

    #[test]
    fn a_missing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base.img");
        fs::write(&f, b"one").unwrap();
        let r = record(&f, "h1");
        fs::remove_file(&f).unwrap();
        let e = verify("web", &r, |_| unreachable!()).unwrap_err();
        assert!(matches!(e, BaseChanged::Unreadable { .. }), "{e}");
    }
}
