//! The store's directory (layout in docs/design/images.md): image records, the source memo,
//! refs from VM disks, the store lock, and `ls`/`rm`/`prune`.
//!
//! SKELETON: the signatures are the contract the rest of castrad uses; the bodies are being
//! written (issue 23).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ImageError, Listed, Lookup, Progress, Ref, Removed, Source, Stored};

/// The user's image store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    mirror: Option<String>,
}

/// Held while a disk is being made on a store image: `rm` and `prune` (which take the store
/// lock exclusively) wait for no one and answer `Busy` meanwhile, so an image cannot vanish
/// between [`Store::ensure`] and [`Store::add_ref`]. Dropping it releases the lock.
#[derive(Debug)]
pub struct Lease {
    _file: Option<std::fs::File>,
}

impl Store {
    /// A store at `dir` (created on first write, mode 0700); `mirror` is the catalog's
    /// default mirror (`--image-mirror`). No IO.
    pub fn new(dir: PathBuf, mirror: Option<String>) -> Store {
        Store { dir, mirror }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The catalog's mirror castrad was started with.
    pub fn mirror(&self) -> Option<&str> {
        self.mirror.as_deref()
    }

    /// What `source` is in the store now, without the network and without reading an image:
    /// a file's digest comes from the source memo when its identity (dev, inode, size, mtime,
    /// ctime) is unchanged; a URL's from the memo of its last fetch, or from its
    /// `sha256:` digest. `mirror` overrides the store's for a catalog name. Blocking (stats
    /// and small reads).
    pub fn lookup(&self, source: &Source, mirror: Option<&str>) -> Lookup {
        let _ = (source, mirror);
        Lookup::Missing { sha256: None }
    }

    /// The image of `source` in the store: found, or fetched or imported now, joining a
    /// transfer of the same source already in progress in this castrad (and waiting for one
    /// in another castrad). `refresh`: read a checksums file again although the memo knows
    /// what it gave last time (`castractl image pull`). `progress` sees the transfer at most
    /// four times a second, and last with `Phase::Done`. Dropping the future stops waiting;
    /// the transfer stops when no one waits for it any more (its part is kept for resume).
    /// Returns the image with a [`Lease`] to hold until the disk made on it has its ref.
    pub async fn ensure(
        self: &Arc<Self>,
        source: &Source,
        mirror: Option<&str>,
        refresh: bool,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(Stored, Lease), ImageError> {
        let _ = (source, mirror, refresh, progress);
        Err(ImageError::Busy {
            dir: self.dir.clone(),
        })
    }

    /// The image with this sha256, if the store has it (its record read, its file there).
    pub fn get(&self, sha256: &str) -> Option<Stored> {
        let _ = sha256;
        None
    }

    /// Records that `r.disk` is backed by the image `sha256` (atomic write).
    pub fn add_ref(&self, sha256: &str, r: &Ref) -> Result<(), ImageError> {
        let _ = (sha256, r);
        Ok(())
    }

    /// Forgets the ref of `disk` to `sha256` (a discarded or rebased disk); quiet if absent.
    pub fn drop_ref(&self, sha256: &str, disk: &Path) {
        let _ = (sha256, disk);
    }

    /// Every image with its live users, newest first.
    pub fn list(&self) -> Vec<Listed> {
        Vec::new()
    }

    /// Removes the image whose sha256 starts with `digest` (at least 8 hex digits; a
    /// `sha256:` prefix is allowed); refused while a disk uses it (naming the VMs).
    pub fn remove(&self, digest: &str) -> Result<Removed, ImageError> {
        Err(ImageError::NotFound {
            digest: digest.to_owned(),
            dir: self.dir.clone(),
        })
    }

    /// Removes every image no disk uses (and stale refs and abandoned partial downloads).
    pub fn prune(&self) -> Result<Removed, ImageError> {
        Ok(Removed::default())
    }
}
