//! What a QEMU VM's disk is backed by (docs/design/images.md).
//!
//! A new disk is made on the image store's copy of its base image (fetched or imported first,
//! [`for_new_disk`]), or, with `base_image_import = false`, on the user's file itself. Either
//! way the disk gets a record (`vms/<vm>/base.json`, `images::disk::DiskBase`) and, on a store
//! image, a ref in the store, both written before the overlay is renamed into place. Before
//! every start, [`check_existing`] makes sure the backing file still holds what the record
//! says (`images::disk::verify`: a changed identity is hashed again, changed content refuses
//! the start). A disk made before records existed is checked once against its last stamp and
//! then gets its record.
//!
//! **Invariant:** no path from here lets QEMU open an overlay whose backing file's content
//! differs from the content the overlay was made on (as far as castrad has seen it: a disk
//! without record or stamp is trusted as it is found, and says so in castrad's log).

use std::path::{Path, PathBuf};

use crate::backend::{BackendError, DiskInputs};
use crate::config::Vm;
use crate::image::ImageInfo;
use crate::images::disk::{self, DiskBase};
use crate::images::{FileIdentity, Lease, Source};
use crate::state_root::{StateRoot, VmPaths};

/// The base a new disk is made on.
#[derive(Debug)]
pub struct NewBase {
    /// What the overlay will name as its backing file.
    pub path: PathBuf,
    pub format: String,
    pub virtual_size: u64,
    /// The disk's record, written with the overlay.
    pub record: DiskBase,
    /// Holds the store lock until the disk's ref is written (store images only).
    pub lease: Option<Lease>,
}

/// The base a new disk of `vm` is made on: its image fetched or imported into the store now
/// if it is not there yet (progress told to `inputs`), or the user's file itself with
/// `base_image_import = false` (hashed once, through the hash cache).
pub async fn for_new_disk(
    root: &StateRoot,
    vm: &Vm,
    inputs: &mut DiskInputs<'_>,
) -> Result<NewBase, BackendError> {
    let source = vm
        .base_image
        .as_ref()
        .and_then(|b| b.local())
        .ok_or(BackendError::NoBaseImage)?;
    if let Source::File {
        path,
        import: false,
        digest,
    } = source
    {
        let (root, vm_name, path, digest) =
            (root.clone(), vm.name.clone(), path.clone(), digest.clone());
        return blocking(move || by_path(&root, &vm_name, &path, digest.as_ref())).await;
    }
    let (stored, lease) = inputs
        .images
        .ensure(
            source,
            vm.image_mirror.as_deref(),
            false,
            &mut *inputs.progress,
        )
        .await?;
    let record = DiskBase {
        sha256: stored.record.sha256.clone(),
        backing: stored.path.clone(),
        format: stored.record.format.clone(),
        stored: true,
        identity: stored.record.identity,
        source: source_label(source, &stored.record),
    };
    Ok(NewBase {
        path: stored.path,
        format: stored.record.format,
        virtual_size: stored.record.virtual_size,
        record,
        lease: Some(lease),
    })
}

/// What the record says the image came from: the newest origin's source (the resolved URL of
/// a catalog image), else the config's label.
fn source_label(source: &Source, record: &crate::images::Record) -> String {
    record
        .origins
        .last()
        .map(|o| o.source.clone())
        .unwrap_or_else(|| source.label())
}

/// `base_image_import = false`: the user's file, checked (a self-contained raw or qcow2) and
/// hashed, its identity taken around the hash so a file written meanwhile is refused.
fn by_path(
    root: &StateRoot,
    vm: &str,
    path: &Path,
    digest: Option<&crate::images::Digest>,
) -> Result<NewBase, BackendError> {
    let unreadable = |e: std::io::Error| {
        BackendError::BaseChanged(disk::BaseChanged::Unreadable {
            vm: vm.to_owned(),
            file: path.to_owned(),
            reason: e.to_string(),
            fetch_again: None,
        })
    };
    // The identity first: what qemu-img checks and what is hashed must be this file.
    let before = FileIdentity::of(path).map_err(unreadable)?;
    let info = checked(vm, path)?;
    let (sha256, _) =
        crate::hashing::cached_file_hash(root, path).map_err(|e| image_failed(vm, path, &e))?;
    let after = FileIdentity::of(path).map_err(unreadable)?;
    if before != after {
        return Err(image_failed(
            vm,
            path,
            &"it changed while it was being read; try again once it is no longer being written",
        ));
    }
    if let Some(want) = digest {
        check_digest(vm, path, want, &sha256)?;
    }
    Ok(NewBase {
        path: path.to_owned(),
        format: info.format.clone(),
        virtual_size: info.virtual_size,
        record: DiskBase {
            sha256,
            backing: path.to_owned(),
            format: info.format,
            stored: false,
            identity: after,
            source: path.display().to_string(),
        },
        lease: None,
    })
}

/// A file given with `base_image_digest` must have that content.
fn check_digest(
    vm: &str,
    path: &Path,
    want: &crate::images::Digest,
    sha256: &str,
) -> Result<(), BackendError> {
    let actual = match want.algo {
        crate::images::Algo::Sha256 => sha256.to_owned(),
        crate::images::Algo::Sha512 => sha512(path).map_err(|e| image_failed(vm, path, &e))?,
    };
    if actual == want.hex {
        return Ok(());
    }
    Err(BackendError::Image(crate::images::ImageError::Mismatch {
        source_label: path.display().to_string(),
        expected: want.to_string(),
        actual: format!("{}:{actual}", want.algo.as_str()),
    }))
}

/// The sha512 (hex) of a file, streamed.
fn sha512(path: &Path) -> std::io::Result<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(crate::ids::hex(&hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `crate::image::base` of `path`, for vm `vm`.
fn checked(vm: &str, path: &Path) -> Result<ImageInfo, BackendError> {
    crate::image::base(path).map_err(|source| BackendError::BaseImage {
        vm: vm.to_owned(),
        source,
    })
}

fn image_failed(vm: &str, path: &Path, e: &dyn std::fmt::Display) -> BackendError {
    BackendError::BaseChanged(disk::BaseChanged::Unreadable {
        vm: vm.to_owned(),
        file: path.to_owned(),
        reason: e.to_string(),
        fetch_again: None,
    })
}

/// Before a start on an existing disk: the backing file still holds what the disk was made
/// on (blocking: may hash a file whose identity changed). Writes the record of a disk that
/// had none (made before the image store) once it is checked.
pub fn check_existing(root: &StateRoot, vm: &Vm, paths: &VmPaths) -> Result<(), BackendError> {
    let record = match disk::load(&paths.base_record) {
        Ok(Some(record)) => record,
        Ok(None) => match legacy_record(root, vm, paths)? {
            Some(record) => record,
            None => return Ok(()),
        },
        // Written atomically, so never half: whatever it is, it is not to be trusted.
        Err(reason) => {
            return Err(BackendError::BaseChanged(disk::BaseChanged::Record {
                vm: vm.name.clone(),
                record: paths.base_record.clone(),
                reason,
            }));
        }
    };
    let hash = |p: &Path| {
        crate::hashing::file_sha256(p)
            .map(|(sha256, _)| sha256)
            .map_err(std::io::Error::other)
    };
    if let Some(updated) = disk::verify(&vm.name, &record, hash)? {
        tracing::info!(
            vm = vm.name,
            file = %record.backing.display(),
            "the disk's base image was touched but holds the same content; record updated"
        );
        write_record(paths, &updated)?;
    }
    checked(&vm.name, &record.backing)?;
    Ok(())
}

/// The record of a disk made before records existed: its backing file (as the overlay names
/// it) hashed and, when the VM's last stamp says what its base was then, compared with that.
/// None: the overlay names no backing file (nothing to check).
fn legacy_record(
    root: &StateRoot,
    vm: &Vm,
    paths: &VmPaths,
) -> Result<Option<DiskBase>, BackendError> {
    let overlay = crate::image::info(&paths.overlay).map_err(|source| BackendError::BaseImage {
        vm: vm.name.clone(),
        source,
    })?;
    let Some(backing) = overlay.backing.map(PathBuf::from) else {
        return Ok(None);
    };
    let info = checked(&vm.name, &backing)?;
    let identity = FileIdentity::of(&backing).map_err(|e| image_failed(&vm.name, &backing, &e))?;
    let (sha256, _) = crate::hashing::cached_file_hash(root, &backing)
        .map_err(|e| image_failed(&vm.name, &backing, &e))?;
    if let crate::stamps::StampRead::Present(stamp) = crate::stamps::read(root, &vm.name) {
        let plain = vm.kernel.is_none() && vm.initrd.is_none() && vm.cmdline.is_none();
        if plain && stamp.base_hash != sha256 {
            return Err(BackendError::BaseChanged(disk::BaseChanged::Content {
                vm: vm.name.clone(),
                file: backing,
                what: vec![format!(
                    "its content is not what run {} bootstrapped the disk on",
                    stamp.run_id
                )],
                was: stamp.base_hash,
                now: sha256,
            }));
        }
        if !plain {
            tracing::warn!(
                vm = vm.name,
                file = %backing.display(),
                "a disk made before the image store, on a VM with a kernel, initrd or cmdline: \
                 its base image is taken as it is now (its stamp cannot tell it apart)"
            );
        }
    } else {
        tracing::warn!(
            vm = vm.name,
            file = %backing.display(),
            "a disk made before the image store, never bootstrapped: its base image is taken \
             as it is now"
        );
    }
    let record = DiskBase {
        sha256,
        format: info.format,
        stored: false,
        identity,
        source: backing.display().to_string(),
        backing,
    };
    write_record(paths, &record)?;
    Ok(Some(record))
}

/// What must exist whenever the new overlay does: its record, and its ref in the image store
/// (a store image cannot be removed while a disk names it). Called just before the overlay is
/// renamed into place, while the store lease is held.
pub fn register(
    paths: &VmPaths,
    base: &NewBase,
    images: &crate::images::Store,
    config: &Path,
    vm: &Vm,
) -> Result<(), super::process::ProcessError> {
    let io = |what: String| move |source| super::process::ProcessError::Io { what, source };
    disk::write(&paths.base_record, &base.record)
        .map_err(io(format!("writing {}", paths.base_record.display())))?;
    if base.record.stored {
        let r = crate::images::Ref {
            disk: paths.overlay.clone(),
            record: paths.base_record.clone(),
            vm: vm.name.clone(),
            config: config.to_owned(),
        };
        images
            .add_ref(&base.record.sha256, &r)
            .map_err(|e| super::process::ProcessError::Failed(crate::error::one_line(&e)))?;
    }
    Ok(())
}

pub fn write_record(paths: &VmPaths, record: &DiskBase) -> Result<(), BackendError> {
    disk::write(&paths.base_record, record).map_err(|source| {
        BackendError::Qemu(super::process::ProcessError::Io {
            what: format!("writing {}", paths.base_record.display()),
            source,
        })
    })
}

/// Runs blocking work (qemu-img, hashing) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        BackendError::Qemu(super::process::ProcessError::Failed(format!(
            "a blocking task panicked: {e}"
        )))
    })?
}

/// [`check_existing`] on the blocking pool.
pub async fn check_existing_async(
    root: &StateRoot,
    vm: &Vm,
    paths: &VmPaths,
) -> Result<(), BackendError> {
    let (root, vm, paths) = (root.clone(), vm.clone(), paths.clone());
    blocking(move || check_existing(&root, &vm, &paths)).await
}

/// Once QEMU has opened the disk (its CPUs still stopped): the backing file still has the
/// identity the disk's record holds, checked (and its content hashed if need be) before the
/// launch. A change in between (a write, a swap) means QEMU may have opened other content:
/// the guest is not started. A stat, nothing read.
pub fn check_opened(vm: &str, paths: &VmPaths) -> Result<(), super::process::ProcessError> {
    let Some(record) = disk::read(&paths.base_record) else {
        return Ok(());
    };
    let unchanged = |now: &FileIdentity| *now == record.identity;
    match FileIdentity::of(&record.backing) {
        Ok(now) if unchanged(&now) => Ok(()),
        Ok(now) => Err(disk::BaseChanged::Content {
            vm: vm.to_owned(),
            file: record.backing.clone(),
            what: now.changes_since(&record.identity),
            was: record.sha256.clone(),
            now: "(changed as QEMU opened it; not read)".to_owned(),
        }
        .into()),
        Err(e) => Err(disk::BaseChanged::Unreadable {
            vm: vm.to_owned(),
            file: record.backing.clone(),
            reason: e.to_string(),
            fetch_again: record.stored.then(|| record.source.clone()),
        }
        .into()),
    }
}

/// What [`adopt`] did to one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub sha256: String,
    pub before: PathBuf,
    pub after: PathBuf,
    /// It already was on the store's copy.
    pub already: bool,
}

/// Moves a stopped VM's disk made before the image store (backed by the user's file) onto
/// the store's copy of the same content: the file imported (its digest must be the disk
/// record's), the store's ref written, the overlay rebased with `qemu-img rebase -u` (only its
/// header changes: the content under it is the same), then the record. Refused when the file
/// no longer holds what the disk was made on.
pub async fn adopt(
    root: &StateRoot,
    vm: &Vm,
    images: &std::sync::Arc<crate::images::Store>,
    config: &Path,
    progress: &mut (dyn FnMut(&crate::images::Progress) + Send),
) -> Result<Adopted, BackendError> {
    let paths = root.vm(&vm.name);
    super::process::ensure_not_running(&paths)?;
    if !paths.overlay.exists() {
        return Err(BackendError::Qemu(super::process::ProcessError::Failed(
            format!("vm {} has no disk to adopt", vm.name),
        )));
    }
    // The record (made now for a disk that has none), and its file as the record says.
    check_existing_async(root, vm, &paths).await?;
    let record = disk::read(&paths.base_record).ok_or_else(|| {
        BackendError::Qemu(super::process::ProcessError::Failed(format!(
            "vm {}: its disk names no base image",
            vm.name
        )))
    })?;
    if record.stored {
        return Ok(Adopted {
            sha256: record.sha256,
            before: record.backing.clone(),
            after: record.backing,
            already: true,
        });
    }
    let source = Source::File {
        path: record.backing.clone(),
        import: true,
        digest: crate::images::Digest::sha256(&record.sha256),
    };
    let (stored, lease) = images.ensure(&source, None, false, progress).await?;
    let new = DiskBase {
        sha256: stored.record.sha256.clone(),
        backing: stored.path.clone(),
        format: stored.record.format.clone(),
        stored: true,
        identity: stored.record.identity,
        source: record.source.clone(),
    };
    let r = crate::images::Ref {
        disk: paths.overlay.clone(),
        record: paths.base_record.clone(),
        vm: vm.name.clone(),
        config: config.to_owned(),
    };
    images.add_ref(&new.sha256, &r)?;
    // Until the record is rewritten it names the old file, which holds the same content:
    // a start in between checks that file while QEMU reads the store's copy of it.
    super::overlay::rebase_unsafe(&paths.overlay, &stored.path, &new.format).await?;
    write_record(&paths, &new)?;
    drop(lease);
    Ok(Adopted {
        sha256: new.sha256,
        before: record.backing,
        after: stored.path,
        already: false,
    })
}

#[cfg(test)]
mod tests;
