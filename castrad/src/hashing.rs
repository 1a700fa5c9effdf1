//! Content hashes that decide whether a VM needs bootstrapping: `artifact_hash` (what we would
//! apply) and `base_hash` (what we would apply it to).
//!
//! Both are SHA-256 over an unambiguous encoding: every field is labelled and length-prefixed,
//! so no two different inputs can produce the same byte stream (moving a byte from the script
//! into the payload, or from one env value into the next key, changes the hash).
//!
//! Base images are large, so their digests are cached in the state root keyed by the file's
//! (device, inode, size, mtime in ns): an unchanged multi-GB image is read once per state root,
//! ever. Writing the cache is best effort: when it fails (a full disk), castrad says so in its
//! log and hashes the image again next time. Functions here do blocking IO; async callers run
//! them on the blocking pool.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{BackendKind, Vm};
use crate::fsutil::write_atomic;
use crate::ids::hex;
use crate::state_root::{StateRoot, ensure_dir};

const READ_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("payload {}: {} is a {kind}; only regular files, directories and symlinks can be transferred", root.display(), entry.display())]
    SpecialFile {
        root: PathBuf,
        entry: PathBuf,
        kind: &'static str,
    },
    #[error("{} changed while it was being hashed; try again once it is no longer being written", path.display())]
    Changed { path: PathBuf },
}

/// Labelled, length-prefixed SHA-256 encoder.
struct Encoder(Sha256);

impl Encoder {
    fn new(domain: &str) -> Encoder {
        let mut e = Encoder(Sha256::new());
        e.bytes(domain.as_bytes());
        e
    }

    fn len(&mut self, n: u64) {
        self.0.update(n.to_be_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len() as u64);
        self.0.update(b);
    }

    fn field(&mut self, label: &str, value: &[u8]) {
        self.bytes(label.as_bytes());
        self.bytes(value);
    }

    fn opt(&mut self, label: &str, value: Option<&[u8]>) {
        self.bytes(label.as_bytes());
        match value {
            None => self.0.update([0u8]),
            Some(v) => {
                self.0.update([1u8]);
                self.bytes(v);
            }
        }
    }

    /// Streams a file of `expected` bytes, length-prefixed. Fails if the length changed.
    fn file(&mut self, path: &Path, expected: u64) -> Result<(), HashError> {
        self.len(expected);
        let read = stream_into(&mut self.0, path)?;
        if read != expected {
            return Err(HashError::Changed {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

fn stream_into(hasher: &mut Sha256, path: &Path) -> Result<u64, HashError> {
    let read_err = |source| HashError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > 4 * READ_BUF as u64 {
        return stream_big(hasher, file, len).map_err(read_err);
    }
    // Sized to the file (a script or payload file is small; allocating and zeroing 1 MiB for
    // each cost more than hashing it), at most READ_BUF. One byte more than the file, so that
    // a file read in one call needs just one more to see its end.
    let size =
        usize::try_from(len.saturating_add(1)).map_or(READ_BUF, |n| n.clamp(8 << 10, READ_BUF));
    let mut buf = vec![0u8; size];
    let mut total = 0u64;
    loop {
        let n = read_some(&mut file, &mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// A big file (a base image): one thread reads while this one hashes, so the disk and SHA-256
/// overlap instead of taking turns (a first hash from a cold page cache reached 0.9x
/// `openssl dgst`'s throughput without this, which reads and hashes in turn too, but with a
/// smaller buffer). The kernel is also told the file is read once, front to back.
fn stream_big(hasher: &mut Sha256, mut file: File, len: u64) -> io::Result<u64> {
    let _ = nix::fcntl::posix_fadvise(
        &file,
        0,
        i64::try_from(len).unwrap_or(0),
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = empty_tx.send(vec![0u8; READ_BUF]);
    }
    // `move`: the channels end with this closure, so a reader still waiting on them stops
    // (after a read error here) before the scope joins it.
    std::thread::scope(move |scope| {
        scope.spawn(move || {
            // Ends when the file ends, a read fails, or the hashing side hangs up.
            while let Ok(mut buf) = empty_rx.recv() {
                let got = read_some(&mut file, &mut buf).map(|n| (buf, n));
                let last = matches!(got, Ok((_, 0)) | Err(_));
                if full_tx.send(got).is_err() || last {
                    return;
                }
            }
        });
        let mut total = 0u64;
        loop {
            match full_rx.recv() {
                Ok(Ok((_, 0))) | Err(_) => return Ok(total),
                Ok(Ok((buf, n))) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                    let _ = empty_tx.send(buf);
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    })
}

/// One read, retried when interrupted; 0 at the end of the file.
fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The artifact hash of a VM's bootstrap and the total size of its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub hash: String,
    pub payload_bytes: Option<u64>,
}

/// Hashes everything that is sent to, or decides what happens in, the guest: the script, the
/// payload tree, the merged env, verify command and path, remote_dir and the Vizier version.
pub fn artifact_hash(vm: &Vm, vizier_version: &str) -> Result<Artifact, HashError> {
    let b = &vm.bootstrap;
    let mut e = Encoder::new("castra-artifact-v1");

    e.bytes(b"script");
    match &b.script {
        None => e.0.update([0u8]),
        Some(script) => {
            e.0.update([1u8]);
            let meta = fs::metadata(script).map_err(|source| HashError::Read {
                path: script.clone(),
                source,
            })?;
            e.file(script, meta.len())?;
        }
    }

    e.bytes(b"payload");
    let payload_bytes = match &b.payload {
        None => {
            e.0.update([0u8]);
            None
        }
        Some(root) => {
            e.0.update([1u8]);
            Some(hash_tree(&mut e, root)?)
        }
    };

    e.bytes(b"env");
    e.len(b.env.len() as u64);
    for (k, v) in &b.env {
        e.bytes(k.as_bytes());
        e.bytes(v.as_bytes());
    }
    e.opt(
        "verify_command",
        b.verify_command.as_deref().map(str::as_bytes),
    );
    e.opt("verify_path", b.verify_path.as_deref().map(str::as_bytes));
    e.field("remote_dir", b.remote_dir.as_bytes());
    e.opt("vizier_dir", b.vizier_dir.as_deref().map(str::as_bytes));
    e.field("vizier_version", vizier_version.as_bytes());
    Ok(Artifact {
        hash: e.finish(),
        payload_bytes,
    })
}

/// Encodes the payload (a file or a directory tree) and returns its total file size.
///
/// Entries are sorted by relative path bytes; each carries its type, permission bits and
/// contents (a symlink: its target, not followed; the root itself is followed). Devices, FIFOs
/// and sockets are refused.
fn hash_tree(e: &mut Encoder, root: &Path) -> Result<u64, HashError> {
    let mut entries = BTreeMap::new();
    collect(root, root, &mut entries)?;
    e.len(entries.len() as u64);
    let mut total = 0;
    for (rel, meta) in entries {
        let path = if rel.as_os_str().is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        e.bytes(rel.as_os_str().as_encoded_bytes());
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            e.0.update([b'l']);
            e.len(u64::from(mode));
            let target = fs::read_link(&path).map_err(|source| HashError::Read { path, source })?;
            e.bytes(target.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            e.0.update([b'd']);
            e.len(u64::from(mode));
        } else {
            e.0.update([b'f']);
            e.len(u64::from(mode));
            e.file(&path, meta.len())?;
            total += meta.len();
        }
    }
    Ok(total)
}

fn collect(
    root: &Path,
    path: &Path,
    out: &mut BTreeMap<PathBuf, fs::Metadata>,
) -> Result<(), HashError> {
    let read_err = |source| HashError::Read {
        path: path.to_owned(),
        source,
    };
    // The root is followed when it is a symlink (and sent so, see pipeline/archive.rs); what
    // is inside is taken as it is.
    let meta = if path == root {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    }
    .map_err(read_err)?;
    let rel = path.strip_prefix(root).unwrap_or(path).to_owned();
    let ft = meta.file_type();
    let kind = if ft.is_file() || ft.is_symlink() || ft.is_dir() {
        None
    } else {
        use std::os::unix::fs::FileTypeExt;
        Some(if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else {
            "device"
        })
    };
    if let Some(kind) = kind {
        return Err(HashError::SpecialFile {
            root: root.to_owned(),
            entry: rel,
            kind,
        });
    }
    let is_dir = ft.is_dir();
    out.insert(rel, meta);
    if is_dir {
        for entry in fs::read_dir(path).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            collect(root, &entry.path(), out)?;
        }
    }
    Ok(())
}

/// What the user puts into a VM's cloud-init seed: `[vms.cloud_init] user_data` and the
/// `authorized_keys` files (contents), and the login user. cloud-init applies a seed on a
/// disk's first boot only, so a change matters for the next new disk, and `plan` says so.
pub fn seed_inputs(vm: &Vm) -> Result<String, HashError> {
    let c = &vm.cloud_init;
    let mut e = Encoder::new("castra-seed-inputs-v1");
    e.opt("user", vm.ssh.user.as_deref().map(str::as_bytes));
    let read = |p: &PathBuf| {
        fs::read(p).map_err(|source| HashError::Read {
            path: p.clone(),
            source,
        })
    };
    e.opt(
        "user_data",
        c.user_data.as_ref().map(read).transpose()?.as_deref(),
    );
    e.len(c.authorized_keys.len() as u64);
    for key in &c.authorized_keys {
        e.bytes(&read(key)?);
    }
    // The project network, only when there is one (so the inputs of seeds made before it
    // existed read the same).
    if let Some(net) = &vm.network {
        e.field("network-address", net.address.to_string().as_bytes());
        e.field("network-mac", net.mac.as_bytes());
        e.len(net.hosts.len() as u64);
        for (name, address) in &net.hosts {
            e.field(name, address.to_string().as_bytes());
        }
    }
    // The seed mounts each guest path (`bootcmd`); no mounts adds nothing, so seeds made
    // before mounts existed keep their inputs.
    if !vm.mounts.is_empty() {
        e.len(vm.mounts.len() as u64);
        for m in &vm.mounts {
            e.bytes(m.guest.as_bytes());
            e.bytes(&[u8::from(m.readonly)]);
        }
    }
    Ok(e.finish())
}

/// The base hash of a VM and how many image bytes were read to get it (0 on cache hits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseHash {
    pub hash: String,
    pub bytes_read: u64,
}

/// `base_hash`: for a QEMU VM with only a base image, the plain sha256 of the image (so a user
/// can check it with `sha256sum`); with a kernel, initrd or cmdline, a labelled hash over each
/// part's sha256. External VMs have no base image: their hash is a fixed marker, and the disk
/// identity (pinned host key) is what ties a stamp to a machine.
pub fn base_hash(root: &StateRoot, vm: &Vm) -> Result<BaseHash, HashError> {
    if vm.backend == BackendKind::External {
        let e = Encoder::new("castra-base-external-v1");
        return Ok(BaseHash {
            hash: e.finish(),
            bytes_read: 0,
        });
    }
    if vm.backend == BackendKind::Libvirt {
        // Paths on the hypervisor, not read from here: the base is named by them (a new
        // image at the same path is only noticed with a new disk). An uploaded base image is
        // on this machine: its content (cached as a QEMU VM's), which also names its volume.
        let uploaded = vm.libvirt.as_ref().is_some_and(|l| l.upload);
        let mut bytes_read = 0;
        let mut e = Encoder::new(if uploaded {
            "castra-base-libvirt-upload-v1"
        } else {
            "castra-base-libvirt-v1"
        });
        let text = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        let image = match vm.base_image.as_ref().and_then(|b| b.file()) {
            Some(image) if uploaded => {
                let (sha256, n) = cached_file_hash(root, image)?;
                bytes_read = n;
                Some(sha256)
            }
            _ => vm.base_image.as_ref().map(|b| b.label()),
        };
        e.opt("base_image", image.as_deref().map(str::as_bytes));
        e.opt("kernel", text(&vm.kernel).as_deref().map(str::as_bytes));
        e.opt("initrd", text(&vm.initrd).as_deref().map(str::as_bytes));
        e.opt("cmdline", vm.cmdline.as_deref().map(str::as_bytes));
        return Ok(BaseHash {
            hash: e.finish(),
            bytes_read,
        });
    }
    let mut bytes_read = 0;
    let mut part = |p: &Option<PathBuf>| -> Result<Option<String>, HashError> {
        p.as_deref()
            .map(|p| {
                let (h, n) = cached_file_hash(root, p)?;
                bytes_read += n;
                Ok(h)
            })
            .transpose()
    };
    let image = part(
        &vm.base_image
            .as_ref()
            .and_then(|b| b.file())
            .map(Path::to_owned),
    )?;
    let kernel = part(&vm.kernel)?;
    let initrd = part(&vm.initrd)?;
    let hash = match (&image, &kernel, &initrd, &vm.cmdline) {
        (Some(image), None, None, None) => image.clone(),
        _ => {
            let mut e = Encoder::new("castra-base-v1");
            e.opt("base_image", image.as_deref().map(str::as_bytes));
            e.opt("kernel", kernel.as_deref().map(str::as_bytes));
            e.opt("initrd", initrd.as_deref().map(str::as_bytes));
            e.opt("cmdline", vm.cmdline.as_deref().map(str::as_bytes));
            e.finish()
        }
    };
    Ok(BaseHash { hash, bytes_read })
}

/// A cache entry: the identity of the file when it was hashed, and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    sha256: String,
}

#[derive(PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn file_id(meta: &fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    }
}

/// sha256 of the file at `path`, from the cache when (dev, inode, size, mtime) are unchanged.
/// Returns the hex digest and the number of bytes read (0 on a cache hit).
pub fn cached_file_hash(root: &StateRoot, path: &Path) -> Result<(String, u64), HashError> {
    let read_err = |source| HashError::Read {
        path: path.to_owned(),
        source,
    };
    let before = file_id(&fs::metadata(path).map_err(read_err)?);
    let entry_path = root.hash_cache_entry(path);
    if let Some(entry) = fs::read(&entry_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<CacheEntry>(&bytes).ok())
    {
        let cached = FileId {
            dev: entry.dev,
            ino: entry.ino,
            size: entry.size,
            mtime_ns: entry.mtime_ns,
        };
        if entry.path == path && cached == before {
            return Ok((entry.sha256, 0));
        }
    }

    let mut hasher = Sha256::new();
    let read = stream_into(&mut hasher, path)?;
    let after = file_id(&fs::metadata(path).map_err(read_err)?);
    if after != before || read != before.size {
        return Err(HashError::Changed {
            path: path.to_owned(),
        });
    }
    let sha256 = hex(&hasher.finalize());
    let entry = CacheEntry {
        path: path.to_owned(),
        dev: after.dev,
        ino: after.ino,
        size: after.size,
        mtime_ns: after.mtime_ns,
        sha256: sha256.clone(),
    };
    // The cache only saves reading the image again: a full disk must not stop planning.
    let written = ensure_dir(&root.hash_cache_dir()).and_then(|()| {
        let json = serde_json::to_vec_pretty(&entry).map_err(io::Error::other)?;
        write_atomic(&entry_path, &json)
    });
    if let Err(e) = written {
        tracing::warn!(
            entry = %entry_path.display(),
            image = %path.display(),
            error = %e,
            "cannot write the hash cache entry; the image will be read again next time"
        );
    }
    Ok((sha256, read))
}

#[cfg(test)]
mod tests;
