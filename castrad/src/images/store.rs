//! The store's directory (layout in docs/design/images.md): image records, the source memo,
//! the store lock, [`Store::lookup`] and [`Store::ensure`], and committing a finished transfer.
//! Refs and `ls`/`rm`/`prune` are in `admin`, downloads in `fetch`, imports in `import`.
//!
//! **Invariants:**
//! - An image reaches `sha256-<hex>` only by [`Store::commit`]: a partial file written whole,
//!   fsynced, hashed to `<hex>`, checked against what the source said and by `qemu-img`
//!   (a self-contained raw or qcow2), made read-only, renamed, and the directory fsynced. Its
//!   record is written after it (an image without a record is not "in the store" for
//!   [`Store::get`] and is fetched again; `prune` removes it).
//! - Every JSON file here is written with [`write_atomic`].
//! - Whoever makes or uses an image holds the store lock shared (a [`Lease`], a transfer in
//!   progress); `rm` and `prune` remove only under it exclusively.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::flight::Flights;
use super::hasher::Hashes;
use super::source::{Algo, Check, Digest};
use super::{
    FileIdentity, ImageError, Lookup, Origin, Progress, Record, Source, Stored, catalog, image_path,
};
use crate::fsutil::write_atomic;
use crate::ids::hex;

/// The user's image store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    mirror: Option<String>,
    /// Transfers in progress in this castrad (one per source).
    flights: Flights,
    /// The HTTP client, made at the first download (its TLS setup reads the system's roots).
    pub(super) client: OnceLock<reqwest::Client>,
}

/// Held while a disk is being made on a store image: `rm` and `prune` (which take the store
/// lock exclusively) wait for no one and answer `Busy` meanwhile, so an image cannot vanish
/// between [`Store::ensure`] and [`Store::add_ref`]. Dropping it releases the lock.
#[derive(Debug)]
pub struct Lease {
    _file: Option<std::fs::File>,
}

/// What a source resolved to: a URL with its check, or a file to import.
#[derive(Debug, Clone)]
pub(super) enum Job {
    Url {
        url: String,
        check: Check,
    },
    File {
        path: PathBuf,
        digest: Option<Digest>,
    },
}

impl Job {
    /// The source memo's key: the URL with what it is checked against, or the file's path.
    pub(super) fn key(&self) -> String {
        match self {
            Job::Url { url, check } => match check {
                Check::Digest(d) => format!("url {url} digest {d}"),
                Check::Sums(sums) => format!("url {url} sums {sums}"),
                Check::Unverified => format!("url {url} unverified"),
            },
            Job::File { path, .. } => format!("file {}", path.display()),
        }
    }

    /// What one transfer in this castrad serves: the memo's key, and a file's digest too
    /// (callers who expect different contents do not share a result).
    fn flight_key(&self) -> String {
        match self {
            Job::File {
                digest: Some(d), ..
            } => format!("{} digest {d}", self.key()),
            _ => self.key(),
        }
    }

    fn label(&self) -> String {
        match self {
            Job::Url { url, .. } => url.clone(),
            Job::File { path, .. } => path.display().to_string(),
        }
    }

    /// The digest the source itself gives, if any.
    fn digest(&self) -> Option<&Digest> {
        match self {
            Job::Url {
                check: Check::Digest(d),
                ..
            }
            | Job::File {
                digest: Some(d), ..
            } => Some(d),
            _ => None,
        }
    }
}

/// What a source resolved to last time (`sources/<16 hex>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Memo {
    pub key: String,
    pub sha256: String,
    /// A file source's identity when it was read.
    #[serde(default)]
    pub identity: Option<FileIdentity>,
    pub at: String,
}

/// A partial transfer's files (`partial/<16 hex>.*`).
#[derive(Debug, Clone)]
pub(super) struct Partial {
    pub part: PathBuf,
    pub state: PathBuf,
    pub lock: PathBuf,
}

/// A complete, fsynced file in `partial/` and what is known of it, for [`Store::commit`].
#[derive(Debug)]
pub(super) struct Candidate<'a> {
    pub part: &'a Path,
    pub hashes: Hashes,
    pub size: u64,
    /// What the source said the content is.
    pub expected: Option<&'a Digest>,
    pub label: &'a str,
    pub origin: Origin,
    pub memo_key: &'a str,
    /// A file source's identity while it was read.
    pub identity: Option<FileIdentity>,
}

/// 16 hex digits of the sha256 of `text`: a file name for a key.
pub(super) fn key16(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes())[..8])
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store {
    /// A store at `dir` (created on first write, mode 0700); `mirror` is the catalog's
    /// default mirror (`--image-mirror`). No IO.
    pub fn new(dir: PathBuf, mirror: Option<String>) -> Store {
        Store {
            dir,
            mirror,
            flights: Flights::default(),
            client: OnceLock::new(),
        }
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
    ///
    /// A file found by identity under another path (a hard link, a moved file) counts. A
    /// digest the source gives must agree with what is found. An unknown catalog name is
    /// `Missing` (`ensure` says what is wrong with it).
    pub fn lookup(&self, source: &Source, mirror: Option<&str>) -> Lookup {
        let job = match self.resolve(source, mirror) {
            Ok(job) => job,
            // An unimported file's content is in the store only if someone imported it.
            Err(ImageError::NotImported { .. }) => match source {
                Source::File { path, digest, .. } => Job::File {
                    path: path.clone(),
                    digest: digest.clone(),
                },
                _ => return Lookup::Missing { sha256: None },
            },
            Err(_) => return Lookup::Missing { sha256: None },
        };
        let given = job.digest();
        let found = match &job {
            Job::File { path, .. } => self.lookup_file(path),
            Job::Url { .. } => self.read_memo(&job.key()).and_then(|m| self.get(&m.sha256)),
        };
        let found = found
            .filter(|s| satisfies(s, given))
            .or_else(|| given.and_then(|d| self.find_by_digest(d)));
        match found {
            Some(stored) => Lookup::Stored(stored),
            None => Lookup::Missing {
                sha256: given
                    .filter(|d| d.algo == Algo::Sha256)
                    .map(|d| d.hex.clone()),
            },
        }
    }

    /// A file's image by its identity: the memo of its path, else any memo of a file with
    /// the same identity.
    fn lookup_file(&self, path: &Path) -> Option<Stored> {
        let now = FileIdentity::of(path).ok()?;
        let key = Job::File {
            path: path.to_owned(),
            digest: None,
        }
        .key();
        if let Some(m) = self.read_memo(&key).filter(|m| m.identity == Some(now))
            && let Some(s) = self.get(&m.sha256)
        {
            return Some(s);
        }
        self.memos()
            .into_iter()
            .filter(|m| m.identity == Some(now))
            .find_map(|m| self.get(&m.sha256))
    }

    /// The image of `source` in the store: found, or fetched or imported now, joining a
    /// transfer of the same source already in progress in this castrad (and waiting for one
    /// in another castrad). `refresh`: read a checksums file again although the memo knows
    /// what it gave last time (`castractl image pull`). `progress` sees the transfer at most
    /// four times a second, and last with `Phase::Done`. Dropping the future stops waiting;
    /// the transfer stops when no one waits for it any more (its part is kept for resume).
    /// Returns the image with a [`Lease`] to hold until the disk made on it has its ref.
    ///
    /// An import stopped that way keeps nothing (there is nothing to resume). An image found
    /// without a transfer is returned without calling `progress`. A file with
    /// `import: false` is an error (`NotImported`): its disk is backed by the file itself.
    /// A caller joining a transfer in progress gets that transfer's result, whatever its own
    /// `refresh`.
    pub async fn ensure(
        self: &Arc<Self>,
        source: &Source,
        mirror: Option<&str>,
        refresh: bool,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(Stored, Lease), ImageError> {
        let job = self.resolve(source, mirror)?;
        let lease = self.lease().await?;
        let sums = matches!(
            job,
            Job::Url {
                check: Check::Sums(_),
                ..
            }
        );
        if !(refresh && sums) {
            let this = Arc::clone(self);
            let (source, mirror) = (source.clone(), mirror.map(str::to_owned));
            let found =
                tokio::task::spawn_blocking(move || this.lookup(&source, mirror.as_deref()))
                    .await
                    .unwrap_or(Lookup::Missing { sha256: None });
            if let Lookup::Stored(stored) = found {
                return Ok((stored, lease));
            }
        }
        let this = Arc::clone(self);
        let flight = self.flights.join_or_start(
            &job.flight_key(),
            job.label(),
            move |reporter| async move {
                let lease = Arc::new(this.lease().await?);
                match job {
                    Job::Url { url, check } => this.fetch(&url, &check, &reporter, &lease).await,
                    Job::File { path, digest } => {
                        this.import(&path, digest.as_ref(), &reporter, &lease).await
                    }
                }
            },
        );
        let stored = flight.wait(progress).await?;
        Ok((stored, lease))
    }

    /// The image with this sha256, if the store has it (its record read, its file there).
    pub fn get(&self, sha256: &str) -> Option<Stored> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        let path = image_path(&self.dir, sha256);
        let record: Record =
            serde_json::from_slice(&fs::read(self.record_path(sha256)).ok()?).ok()?;
        let meta = fs::metadata(&path).ok()?;
        (meta.is_file() && meta.len() == record.size && record.sha256 == sha256)
            .then_some(Stored { path, record })
    }

    /// The image with this digest (a sha512 is looked up in the records).
    pub(super) fn find_by_digest(&self, digest: &Digest) -> Option<Stored> {
        match digest.algo {
            Algo::Sha256 => self.get(&digest.hex),
            Algo::Sha512 => self
                .image_digests()
                .iter()
                .filter_map(|h| self.get(h))
                .find(|s| s.record.sha512.as_deref() == Some(digest.hex.as_str())),
        }
    }

    /// What a source names: a URL and its check, or a file to import.
    pub(super) fn resolve(&self, source: &Source, mirror: Option<&str>) -> Result<Job, ImageError> {
        match source {
            Source::File {
                path,
                import: false,
                ..
            } => Err(ImageError::NotImported { path: path.clone() }),
            Source::File { path, digest, .. } => Ok(Job::File {
                path: path.clone(),
                digest: digest.clone(),
            }),
            Source::Url { url, check } => Ok(Job::Url {
                url: url.clone(),
                check: check.clone(),
            }),
            Source::Catalog { name } => {
                let entry = catalog::get(name).ok_or_else(|| ImageError::UnknownCatalogName {
                    name: name.clone(),
                    known: catalog::names().join(", "),
                })?;
                let (url, sums) = catalog::resolve(name, entry, mirror.or(self.mirror()));
                Ok(Job::Url {
                    url,
                    check: Check::Sums(sums),
                })
            }
        }
    }

    // --- Layout ---

    pub(super) fn record_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("sha256-{sha256}.json"))
    }

    pub(super) fn sources_dir(&self) -> PathBuf {
        self.dir.join("sources")
    }

    pub(super) fn partial_dir(&self) -> PathBuf {
        self.dir.join("partial")
    }

    pub(super) fn refs_dir(&self, sha256: &str) -> PathBuf {
        self.dir.join("refs").join(format!("sha256-{sha256}"))
    }

    pub(super) fn lock_path(&self) -> PathBuf {
        self.dir.join(".lock")
    }

    /// The partial files of the transfer of `what` (a URL, or an imported file's path).
    pub(super) fn partial(&self, what: &str) -> Partial {
        let base = self.partial_dir().join(key16(what));
        let with = |ext: &str| base.with_extension(ext);
        Partial {
            part: with("part"),
            state: with("json"),
            lock: with("lock"),
        }
    }

    /// Creates the store's directories (0700) if they are not there.
    pub(super) fn make_dirs(&self) -> Result<(), ImageError> {
        for dir in [
            self.dir.clone(),
            self.sources_dir(),
            self.partial_dir(),
            self.dir.join("refs"),
        ] {
            crate::state_root::ensure_dir(&dir)
                .map_err(ImageError::io(format!("cannot create {}", dir.display())))?;
        }
        Ok(())
    }

    /// The store lock, shared (see [`Lease`]).
    pub(super) async fn lease(&self) -> Result<Lease, ImageError> {
        self.make_dirs()?;
        let path = self.lock_path();
        let file = super::lock::shared(&path)
            .await
            .map_err(ImageError::io(format!("cannot lock {}", path.display())))?;
        Ok(Lease { _file: Some(file) })
    }

    /// The sha256 of every image file in the store (with or without a record).
    pub(super) fn image_digests(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hex = name.strip_prefix("sha256-")?;
                is_sha256_hex(hex).then(|| hex.to_owned())
            })
            .collect();
        out.sort();
        out
    }

    // --- The source memo ---

    fn memo_path(&self, key: &str) -> PathBuf {
        self.sources_dir().join(format!("{}.json", key16(key)))
    }

    pub(super) fn read_memo(&self, key: &str) -> Option<Memo> {
        let memo: Memo = serde_json::from_slice(&fs::read(self.memo_path(key)).ok()?).ok()?;
        (memo.key == key).then_some(memo)
    }

    /// Every memo (with the path it is at).
    pub(super) fn memo_files(&self) -> Vec<(PathBuf, Memo)> {
        let Ok(entries) = fs::read_dir(self.sources_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let memo = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((e.path(), memo))
            })
            .collect()
    }

    fn memos(&self) -> Vec<Memo> {
        self.memo_files().into_iter().map(|(_, m)| m).collect()
    }

    /// Notes that `key` resolved to `stored` (and `origin` in its record, newest last).
    pub(super) fn remember(
        &self,
        stored: &Stored,
        origin: Origin,
        key: &str,
        identity: Option<FileIdentity>,
    ) -> Result<Stored, ImageError> {
        let mut record = stored.record.clone();
        record.origins.retain(|o| o.source != origin.source);
        record.origins.push(origin);
        let sha256 = record.sha256.clone();
        self.write_json(&self.record_path(&sha256), &record)?;
        let memo = Memo {
            key: key.to_owned(),
            sha256,
            identity,
            at: now_rfc3339(),
        };
        self.write_json(&self.memo_path(key), &memo)?;
        Ok(Stored {
            path: stored.path.clone(),
            record,
        })
    }

    pub(super) fn write_json(&self, path: &Path, value: &impl Serialize) -> Result<(), ImageError> {
        let what = || format!("cannot write {}", path.display());
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| ImageError::io(what())(std::io::Error::other(e)))?;
        write_atomic(path, &json).map_err(ImageError::io(what()))
    }

    /// Takes a complete partial file into the store (see the module's invariants). Whatever
    /// fails, the partial file is gone afterwards and no final name was touched. Blocking.
    pub(super) fn commit(&self, c: Candidate<'_>) -> Result<Stored, ImageError> {
        let result = self.commit_inner(&c);
        if result.is_err() {
            let _ = fs::remove_file(c.part);
        }
        result
    }

    fn commit_inner(&self, c: &Candidate<'_>) -> Result<Stored, ImageError> {
        if let Some(expected) = c.expected {
            let actual = c.hashes.get(expected.algo).unwrap_or_default();
            if actual != expected.hex {
                return Err(ImageError::Mismatch {
                    source_label: c.label.to_owned(),
                    expected: expected.to_string(),
                    actual: format!("{}:{actual}", expected.algo.as_str()),
                });
            }
        }
        let not_a_base = |source| ImageError::NotABase {
            source_label: c.label.to_owned(),
            source,
        };
        let info = crate::image::info(c.part).map_err(not_a_base)?;
        // Named by its source: the part is gone when the user reads the advice.
        crate::image::check_base(Path::new(c.label), &info).map_err(not_a_base)?;

        let sha256 = &c.hashes.sha256;
        let path = image_path(&self.dir, sha256);
        let io = |what: &str| ImageError::io(format!("{what} {}", path.display()));
        // Durable before it has a final name (a resumed part may have been written by an
        // earlier castrad; an fsync of a file already synced costs nothing).
        fs::File::open(c.part)
            .and_then(|f| f.sync_all())
            .map_err(ImageError::io(format!("cannot sync {}", c.part.display())))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(c.part, fs::Permissions::from_mode(0o444))
            .map_err(io("cannot make read-only the new image"))?;
        if path.is_file() {
            // The same content is already here (from another source): keep that one.
            let _ = fs::remove_file(c.part);
        } else {
            fs::rename(c.part, &path).map_err(io("cannot move into place"))?;
            fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("cannot sync the directory of"))?;
        }
        let identity = FileIdentity::of(&path).map_err(io("cannot stat"))?;
        let previous: Option<Record> = fs::read(self.record_path(sha256))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|r: &Record| r.sha256 == *sha256);
        let record = match previous {
            Some(mut r) => {
                r.sha512 = r.sha512.or_else(|| c.hashes.sha512.clone());
                r.identity = identity;
                r
            }
            None => Record {
                sha256: sha256.clone(),
                sha512: c.hashes.sha512.clone(),
                size: c.size,
                format: info.format,
                virtual_size: info.virtual_size,
                origins: Vec::new(),
                identity,
            },
        };
        let stored = Stored { path, record };
        self.remember(&stored, c.origin.clone(), c.memo_key, c.identity)
    }
}

/// Whether the image agrees with the digest a source gives (none: anything does).
fn satisfies(stored: &Stored, digest: Option<&Digest>) -> bool {
    match digest {
        None => true,
        Some(d) => match d.algo {
            Algo::Sha256 => stored.record.sha256 == d.hex,
            Algo::Sha512 => stored.record.sha512.as_deref() == Some(d.hex.as_str()),
        },
    }
}

#[cfg(test)]
mod tests;
