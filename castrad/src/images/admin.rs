//! Refs from VM disks to store images, and what `castractl image ls | rm | prune` do.
//!
//! A ref (`refs/sha256-<hex>/<16 hex of the disk's path>.json`, a [`Ref`]) is live while its
//! disk exists and the disk's record (`base.json`) names this image; anything else is stale
//! and dropped by `ls`, `rm` and `prune`. An image with a live ref is never removed. Removal
//! happens only under the store lock held exclusively, taken without waiting (`Busy` when a
//! lease or a transfer holds it shared): no image vanishes between `ensure` and `add_ref`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::store::key16;
use super::{
    FileIdentity, ImageError, Listed, Record, Ref, Removed, Store, Stored, disk, image_path, lock,
};

/// Attempts at the exclusive store lock, 10 ms apart.
const EXCLUSIVE_TRIES: u32 = 20;

impl Store {
    /// Records that `r.disk` is backed by the image `sha256` (atomic write).
    pub fn add_ref(&self, sha256: &str, r: &Ref) -> Result<(), ImageError> {
        let sha256 = full_digest(sha256)?;
        self.make_dirs()?;
        let dir = self.refs_dir(&sha256);
        crate::state_root::ensure_dir(&dir)
            .map_err(ImageError::io(format!("cannot create {}", dir.display())))?;
        self.write_json(&self.ref_path(&sha256, &r.disk), r)
    }

    /// Forgets the ref of `disk` to `sha256` (a discarded or rebased disk); quiet if absent.
    pub fn drop_ref(&self, sha256: &str, disk: &Path) {
        let Ok(sha256) = full_digest(sha256) else {
            return;
        };
        let _ = fs::remove_file(self.ref_path(&sha256, disk));
        // Only when empty.
        let _ = fs::remove_dir(self.refs_dir(&sha256));
    }

    /// Every image with its live users, newest first (by when a source last reached it).
    /// Stale refs are dropped when no one holds the store lock (none is being made now).
    pub fn list(&self) -> Vec<Listed> {
        let exclusive = self.exclusive(1).ok().flatten();
        let mut out: Vec<Listed> = self
            .image_digests()
            .into_iter()
            .filter_map(|hex| {
                let stored = self.get(&hex)?;
                let users = self.users(&hex, exclusive.is_some());
                Some(Listed { stored, users })
            })
            .collect();
        out.sort_by_key(|l| std::cmp::Reverse(last_reached(&l.stored.record)));
        out
    }

    /// Removes the image whose sha256 starts with `digest` (at least 8 hex digits; a
    /// `sha256:` prefix is allowed); refused while a disk uses it (naming the VMs).
    pub fn remove(&self, digest: &str) -> Result<Removed, ImageError> {
        let prefix = digest_prefix(digest)?;
        let not_found = || ImageError::NotFound {
            digest: digest.to_owned(),
            dir: self.dir().to_owned(),
        };
        let Some(_lock) = self.exclusive(EXCLUSIVE_TRIES)? else {
            return Err(not_found());
        };
        let matches: Vec<String> = self
            .image_digests()
            .into_iter()
            .filter(|h| h.starts_with(&prefix))
            .collect();
        let hex = match matches.as_slice() {
            [] => return Err(not_found()),
            [one] => one.clone(),
            _ => {
                return Err(ImageError::Ambiguous {
                    digest: digest.to_owned(),
                    count: matches.len(),
                });
            }
        };
        let users = self.users(&hex, true);
        if !users.is_empty() {
            return Err(ImageError::InUse {
                digest: format!("sha256:{}", &hex[..12]),
                users: users
                    .iter()
                    .map(|u| format!("{} ({})", u.vm, u.config.display()))
                    .collect(),
            });
        }
        let (stored, bytes) = self.delete_image(&hex)?;
        Ok(Removed {
            images: vec![stored],
            bytes,
        })
    }

    /// Removes every image no disk uses (and stale refs and abandoned partial downloads).
    pub fn prune(&self) -> Result<Removed, ImageError> {
        let Some(_lock) = self.exclusive(EXCLUSIVE_TRIES)? else {
            return Ok(Removed::default());
        };
        let mut removed = Removed::default();
        for hex in self.image_digests() {
            if self.users(&hex, true).is_empty() {
                let (stored, bytes) = self.delete_image(&hex)?;
                removed.images.push(stored);
                removed.bytes += bytes;
            }
        }
        removed.bytes += self.prune_partials();
        self.prune_orphans();
        Ok(removed)
    }

    fn ref_path(&self, sha256: &str, disk: &Path) -> PathBuf {
        self.refs_dir(sha256)
            .join(format!("{}.json", key16(&disk.to_string_lossy())))
    }

    /// The live refs to `sha256`; the stale ones are removed when `drop_stale`.
    fn users(&self, sha256: &str, drop_stale: bool) -> Vec<Ref> {
        let Ok(entries) = fs::read_dir(self.refs_dir(sha256)) else {
            return Vec::new();
        };
        let mut live = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let parsed: Option<Ref> = fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match parsed {
                Some(r) if is_live(&r, sha256) => live.push(r),
                _ if drop_stale => {
                    let _ = fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        if drop_stale && live.is_empty() {
            let _ = fs::remove_dir(self.refs_dir(sha256));
        }
        live.sort_by(|a, b| (&a.vm, &a.disk).cmp(&(&b.vm, &b.disk)));
        live
    }

    /// The store lock, exclusive, without waiting for anyone's work: None when there is no
    /// store yet. A few quick retries cover a child process that castrad (or another) is
    /// starting: between its fork and its exec it holds a copy of every descriptor, a lease's
    /// too, for a moment.
    fn exclusive(&self, tries: u32) -> Result<Option<File>, ImageError> {
        if !self.dir().is_dir() {
            return Ok(None);
        }
        let path = self.lock_path();
        let file =
            lock::open(&path).map_err(ImageError::io(format!("cannot open {}", path.display())))?;
        for attempt in 0..tries {
            match lock::try_lock(&file, true) {
                Ok(true) => return Ok(Some(file)),
                Ok(false) if attempt + 1 < tries => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(false) => break,
                Err(e) => return Err(ImageError::io(format!("cannot lock {}", path.display()))(e)),
            }
        }
        Err(ImageError::Busy {
            dir: self.dir().to_owned(),
        })
    }

    /// Removes an image, its record, refs and memos (under the exclusive lock): what it was,
    /// and its size.
    fn delete_image(&self, sha256: &str) -> Result<(Stored, u64), ImageError> {
        let path = image_path(self.dir(), sha256);
        let meta = fs::metadata(&path)
            .map_err(ImageError::io(format!("cannot stat {}", path.display())))?;
        let stored = self.get(sha256).unwrap_or_else(|| Stored {
            // An image whose record was never written (castrad stopped in between).
            path: path.clone(),
            record: Record {
                sha256: sha256.to_owned(),
                sha512: None,
                size: meta.len(),
                format: "unknown".into(),
                virtual_size: 0,
                origins: Vec::new(),
                identity: FileIdentity::from_meta(&meta),
            },
        });
        fs::remove_file(&path)
            .map_err(ImageError::io(format!("cannot remove {}", path.display())))?;
        let _ = fs::remove_file(self.record_path(sha256));
        let _ = fs::remove_dir_all(self.refs_dir(sha256));
        for (memo_path, memo) in self.memo_files() {
            if memo.sha256 == sha256 {
                let _ = fs::remove_file(memo_path);
            }
        }
        Ok((stored, meta.len()))
    }

    /// Removes every partial transfer no one is running: the bytes freed.
    fn prune_partials(&self) -> u64 {
        let Ok(entries) = fs::read_dir(self.partial_dir()) else {
            return 0;
        };
        let mut stems: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .map(|p| p.with_extension(""))
            .collect();
        stems.sort();
        stems.dedup();
        let mut bytes = 0;
        for stem in stems {
            let lock_path = stem.with_extension("lock");
            let held = match lock::open(&lock_path) {
                Ok(file) => match lock::try_lock(&file, true) {
                    Ok(true) => Some(file),
                    _ => continue, // Someone is at it (it cannot be, under the store lock).
                },
                Err(_) => continue,
            };
            for ext in ["part", "json"] {
                let p = stem.with_extension(ext);
                if let Ok(m) = fs::metadata(&p) {
                    bytes += m.len();
                    let _ = fs::remove_file(&p);
                }
            }
            let _ = fs::remove_file(&lock_path);
            drop(held);
        }
        bytes
    }

    /// Records, memos and ref directories of images that are not here.
    fn prune_orphans(&self) {
        let present = |hex: &str| image_path(self.dir(), hex).is_file();
        if let Ok(entries) = fs::read_dir(self.dir()) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(hex) = name
                    .strip_prefix("sha256-")
                    .and_then(|n| n.strip_suffix(".json"))
                    && !present(hex)
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for (path, memo) in self.memo_files() {
            if !present(&memo.sha256) {
                let _ = fs::remove_file(path);
            }
        }
        if let Ok(entries) = fs::read_dir(self.dir().join("refs")) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.strip_prefix("sha256-").is_none_or(|hex| !present(hex)) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// A ref is live unless it is known to be stale: its disk is gone (its directory is there and
/// the disk is not), or the disk's record names another image. A disk that cannot be looked
/// at now (a file system not mounted, a record unreadable) keeps its image: `rm` and `prune`
/// never delete a base an overlay may still name.
fn is_live(r: &Ref, sha256: &str) -> bool {
    let gone = |p: &std::path::Path| {
        matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
            && p.parent().is_some_and(|dir| dir.is_dir())
    };
    if gone(&r.disk) {
        return false;
    }
    match disk::read(&r.record) {
        Some(b) => b.sha256 == sha256,
        None => true,
    }
}

/// When a source last reached the image (the newest origin's time).
fn last_reached(record: &Record) -> SystemTime {
    record
        .origins
        .iter()
        .filter_map(|o| humantime::parse_rfc3339_weak(&o.at).ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The hex digits of a digest prefix as `rm` takes it: `sha256:` optional, at least 8.
fn digest_prefix(text: &str) -> Result<String, ImageError> {
    let hex = text
        .strip_prefix("sha256:")
        .unwrap_or(text)
        .to_ascii_lowercase();
    if hex.len() < 8 || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::BadDigest {
            digest: text.to_owned(),
        });
    }
    Ok(hex)
}

/// A whole sha256 (hex, `sha256:` optional), lowercased.
fn full_digest(text: &str) -> Result<String, ImageError> {
    let hex = digest_prefix(text)?;
    if hex.len() != 64 {
        return Err(ImageError::BadDigest {
            digest: text.to_owned(),
        });
    }
    Ok(hex)
}
