//! The image store: base images castrad fetched or imported, content-addressed and read-only,
//! shared by every project of the user (docs/design/images.md).
//!
//! - `source`: where an image comes from (a file, a URL, a catalog name) and how it is
//!   checked (a digest, a checksums file). Pure.
//! - `sums`: the line of a SHA256SUMS / SHA512SUMS / Fedora CHECKSUM file for one image. Pure.
//! - `catalog`: the named images (`catalog.toml`) and the mirror layout. Pure.
//! - `store`: the directory: records, the source memo, `lookup`, `ensure` (and committing a
//!   finished transfer into the store).
//! - `admin`: refs from VM disks, `ls`/`rm`/`prune` (more methods of `Store`).
//! - `flight`: one transfer per source in this castrad, shared by every caller waiting for it.
//! - `lock`: the store's lock and the partial downloads' locks (flock).
//! - `hasher`: sha256 (and sha512) computed on a thread of its own while data is written.
//! - `fetch`: downloads (reqwest), resumed with `Range`, hashed while they arrive.
//! - `import`: a file of the user's copied in (FICLONE, else `copy_file_range`) while hashed.
//! - `disk`: what a VM's disk is backed by (`base.json`) and the check before every start.
//!
//! **Invariant:** a file under its final name in the store is complete and its content hashes
//! to its name; nothing in the store is ever written in place.

mod admin;
pub mod catalog;
pub mod disk;
mod fetch;
mod flight;
mod hasher;
mod import;
mod lock;
pub mod source;
mod store;
pub mod sums;
#[cfg(test)]
mod testkit;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use disk::FileIdentity;
pub use source::{Algo, Check, Digest, Source};
pub use store::{Lease, Store};

/// The environment variable naming the store's directory (`castrad --image-store`).
pub const STORE_ENV: &str = "CASTRA_IMAGE_STORE";
/// The environment variable naming the catalog's mirror (`castrad --image-mirror`).
pub const MIRROR_ENV: &str = "CASTRA_IMAGE_MIRROR";

/// The default store: `$XDG_CACHE_HOME/castra/images` (`~/.cache/castra/images`).
pub fn default_dir() -> Option<PathBuf> {
    crate::state_root::default_image_store()
}

/// What the store keeps beside an image (`sha256-<hex>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The image's sha256 (hex): its name in the store, and the base hash stamps use.
    pub sha256: String,
    /// Its sha512 (hex), when it was checked against one.
    #[serde(default)]
    pub sha512: Option<String>,
    pub size: u64,
    /// `raw` or `qcow2` (`crate::image::base` accepted it before it was stored).
    pub format: String,
    pub virtual_size: u64,
    /// Where it came from, newest last (one image may be reached from several sources).
    pub origins: Vec<Origin>,
    /// The store file's identity when it was stored (a later change to it is noticed).
    pub identity: FileIdentity,
}

/// One source an image in the store came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The URL, or the path of an imported file.
    pub source: String,
    /// What it was checked against: `sha256:<hex>` / `sha512:<hex>` (given), the checksums
    /// file's URL, or None (an https image without a checksum: unverified; or a file's own
    /// content, read whole).
    pub checked_by: Option<String>,
    /// RFC 3339 UTC.
    pub at: String,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `<store>/sha256-<hex>`.
    pub path: PathBuf,
    pub record: Record,
}

/// What a source is in the store right now, learnt without the network and without reading
/// an image ([`Store::lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// In the store.
    Stored(Stored),
    /// Not in the store yet: `up` (or `castractl image pull`) fetches or imports it. `sha256`
    /// when the source already says what it will be.
    Missing { sha256: Option<String> },
}

/// How far a fetch or import is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The URL, or the path being imported.
    pub source: String,
    pub phase: Phase,
    pub done: u64,
    /// None: the server did not say.
    pub total: Option<u64>,
    /// Bytes per second over the transfer so far.
    pub rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the checksums file.
    Checksums,
    /// Hashing the part of an interrupted download already here, before resuming it.
    Resume,
    Download,
    Import,
    /// Done: the image is in the store.
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checksums => "checksums",
            Phase::Resume => "resume",
            Phase::Download => "download",
            Phase::Import => "import",
            Phase::Done => "done",
        }
    }
}

/// An image in the store as `castractl image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub stored: Stored,
    /// The disks backed by it (live refs), each with what its ref says of it.
    pub users: Vec<Ref>,
}

/// A VM disk backed by a store image (`refs/sha256-<hex>/<16 hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    /// The disk (overlay) path.
    pub disk: PathBuf,
    /// Its record (`base.json`): the ref is live while that names this image.
    pub record: PathBuf,
    pub vm: String,
    /// The castra.toml of the VM's project.
    pub config: PathBuf,
}

/// What `rm` or `prune` removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Removed {
    pub images: Vec<Stored>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "{source_label}: checksum mismatch: expected {expected}, got {actual}; nothing was kept"
    )]
    Mismatch {
        source_label: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: the server answered {status}")]
    Http { url: String, status: u16 },
    #[error("{url}: {message}")]
    Transfer { url: String, message: String },
    #[error("{url}: {source}")]
    Sums {
        url: String,
        source: sums::SumsError,
    },
    #[error("unknown image {name:?} (the catalog has {known})")]
    UnknownCatalogName { name: String, known: String },
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{source_label} cannot be a base image; nothing was kept")]
    NotABase {
        source_label: String,
        source: crate::image::ImageError,
    },
    #[error("no image {digest} in the store ({dir})", dir = dir.display())]
    NotFound { digest: String, dir: PathBuf },
    #[error("{digest} matches {count} images in the store; give more of its digits")]
    Ambiguous { digest: String, count: usize },
    #[error("image {digest} is used by {}: discard their disks first (`castractl down VM --discard`)", users.join(", "))]
    InUse { digest: String, users: Vec<String> },
    #[error(
        "the image store {} is busy (a download or import is in progress, or a disk is being \
         made); try again when it is done",
        dir.display()
    )]
    Busy { dir: PathBuf },
    #[error(
        "{}: base_image_import = false keeps this file out of the image store (the disk is \
         backed by the file itself); there is nothing to fetch or import",
        path.display()
    )]
    NotImported { path: PathBuf },
    #[error(
        "{} changed while it was being imported ({}); nothing was kept: try again once it is \
         no longer being written",
        path.display(), what.join(", ")
    )]
    Changed { path: PathBuf, what: Vec<String> },
    #[error(
        "{digest:?} is not an image digest: give at least 8 of its hex digits (`sha256:` may come first)"
    )]
    BadDigest { digest: String },
}

impl ImageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let what = what.into();
        move |source| ImageError::Io { what, source }
    }

    /// A copy for another caller of a shared transfer (every waiter gets the error by value;
    /// an `io::Error` is copied as its kind and message).
    pub(crate) fn duplicate(&self) -> ImageError {
        use ImageError as E;
        match self {
            E::Mismatch {
                source_label,
                expected,
                actual,
            } => E::Mismatch {
                source_label: source_label.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            E::Http { url, status } => E::Http {
                url: url.clone(),
                status: *status,
            },
            E::Transfer { url, message } => E::Transfer {
                url: url.clone(),
                message: message.clone(),
            },
            E::Sums { url, source } => E::Sums {
                url: url.clone(),
                source: source.clone(),
            },
            E::UnknownCatalogName { name, known } => E::UnknownCatalogName {
                name: name.clone(),
                known: known.clone(),
            },
            E::Io { what, source } => E::Io {
                what: what.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            E::NotABase {
                source_label,
                source,
            } => E::NotABase {
                source_label: source_label.clone(),
                source: source.clone(),
            },
            E::NotFound { digest, dir } => E::NotFound {
                digest: digest.clone(),
                dir: dir.clone(),
            },
            E::Ambiguous { digest, count } => E::Ambiguous {
                digest: digest.clone(),
                count: *count,
            },
            E::InUse { digest, users } => E::InUse {
                digest: digest.clone(),
                users: users.clone(),
            },
            E::Busy { dir } => E::Busy { dir: dir.clone() },
            E::NotImported { path } => E::NotImported { path: path.clone() },
            E::Changed { path, what } => E::Changed {
                path: path.clone(),
                what: what.clone(),
            },
            E::BadDigest { digest } => E::BadDigest {
                digest: digest.clone(),
            },
        }
    }
}

/// `<dir>/sha256-<hex>`: where the image with this sha256 lives in a store at `dir`.
pub fn image_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("sha256-{sha256}"))
}
