//! A QEMU VM's disk file: made (a qcow2 overlay on its base, with a new disk id, replacing
//! what was proven about the previous disk), grown, pointed at another copy of its base
//! (`rebase -u`), discarded; and `qemu-img` as these need it. The VM is stopped for all of
//! them: each refuses a disk a recorded QEMU of ours still runs on
//! (`process::ensure_not_running`).
//!
//! The base's format is passed to `qemu-img create -F`, which records it in the overlay, so
//! QEMU never probes it. **Invariant:** a new overlay always gets a new disk id, and the stamp,
//! pinned host key, seed and base record of the previous disk are removed with it, so nothing
//! proven about an old disk is believed about a new one.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::process::{ProcessError, ensure_not_running};
use crate::fsutil::write_atomic;
use crate::image::ImageInfo;
use crate::state_root::{VmPaths, ensure_dir};

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcessError {
    let what = what.into();
    move |source| ProcessError::Io { what, source }
}

/// Grows the VM's existing overlay to `size_mib` (None: leaves it). The VM is stopped: this
/// runs before a launch. Asking for less than the overlay has is an error, nothing changes.
pub async fn grow_overlay(paths: &VmPaths, size_mib: Option<u64>) -> Result<(), ProcessError> {
    ensure_not_running(paths)?;
    let Some(want) = size_mib.map(|m| m.saturating_mul(1 << 20)) else {
        return Ok(());
    };
    let have = image_info(&paths.overlay).await?.virtual_size;
    if want < have {
        return Err(ProcessError::Failed(format!(
            "disk = {} MiB is smaller than the VM's disk ({} MiB): a disk cannot shrink; \
             set disk to at least that, or discard the disk (`castractl down --discard`)",
            want >> 20,
            have >> 20
        )));
    }
    if want > have {
        let overlay = paths.overlay.as_os_str();
        qemu_img(
            &[
                "resize".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                overlay,
                want.to_string().as_ref(),
            ],
            &paths.overlay,
        )
        .await?;
    }
    Ok(())
}

/// What a new overlay is made on: the backing file and its format and virtual size.
#[derive(Debug, Clone, Copy)]
pub struct Backing<'a> {
    pub path: &'a Path,
    pub format: &'a str,
    pub virtual_size: u64,
}

/// Makes the VM's disk: a new overlay on `base` of at least `size_mib` (None: the base's
/// size). A new disk gets a new disk id, and what was proven about or handed to the previous
/// one (stamp, pinned host key, seed, UEFI variables, its base record) is removed;
/// `before_rename` writes what must exist whenever the overlay does (its base record, its
/// ref in the image store) just before the overlay is renamed into place. Returns its path.
pub async fn create_overlay(
    paths: &VmPaths,
    base: Backing<'_>,
    size_mib: Option<u64>,
    before_rename: impl FnOnce() -> Result<(), ProcessError>,
) -> Result<PathBuf, ProcessError> {
    ensure_not_running(paths)?;
    let want = size_mib.map(|m| m.saturating_mul(1 << 20));
    ensure_dir(&paths.dir).map_err(io(format!("creating {}", paths.dir.display())))?;
    if let Some(want) = want
        && want < base.virtual_size
    {
        return Err(ProcessError::Failed(format!(
            "disk = {} MiB is smaller than the base image {} ({} MiB); set disk to at least that",
            want >> 20,
            base.path.display(),
            base.virtual_size >> 20
        )));
    }
    let tmp = &paths.overlay_tmp;
    let _ = std::fs::remove_file(tmp);
    let size = want.map(|w| w.to_string());
    let words = ["create", "-q", "-f", "qcow2", "-F", base.format, "-b"];
    let mut args: Vec<&std::ffi::OsStr> = words.iter().map(|a| a.as_ref()).collect();
    args.extend([base.path.as_os_str(), tmp.as_os_str()]);
    args.extend(size.as_deref().map(std::ffi::OsStr::new));
    let created = qemu_img(&args, base.path).await;
    if let Err(e) = created {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    // A new disk: nothing proven about or given to the previous one holds.
    remove_all(disk_files(paths), "cannot remove")?;
    let disk_id = crate::ids::random_hex(8);
    write_atomic(&paths.disk_id, format!("{disk_id}\n").as_bytes())
        .map_err(io(format!("writing {}", paths.disk_id.display())))?;
    if let Err(e) = before_rename() {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    std::fs::rename(tmp, &paths.overlay)
        .map_err(io(format!("creating {}", paths.overlay.display())))?;
    Ok(paths.overlay.clone())
}

/// Points `overlay` at `backing` (of `format`) without touching its data: `qemu-img rebase
/// -u`. Only for a backing file with the same content as the one it replaces.
pub async fn rebase_unsafe(
    overlay: &Path,
    backing: &Path,
    format: &str,
) -> Result<(), ProcessError> {
    let words = ["rebase", "-u", "-f", "qcow2", "-F", format, "-b"];
    let mut args: Vec<&std::ffi::OsStr> = words.iter().map(|a| a.as_ref()).collect();
    args.extend([backing.as_os_str(), overlay.as_os_str()]);
    qemu_img(&args, overlay).await
}

/// Runs `qemu-img ARGS...` on `image` (named in the error).
async fn qemu_img(args: &[&std::ffi::OsStr], image: &Path) -> Result<(), ProcessError> {
    let out = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io("running qemu-img (package qemu-utils)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ProcessError::Failed(format!(
        "qemu-img {} on {} failed: {}",
        args.first()
            .map(|a| a.to_string_lossy())
            .unwrap_or_default(),
        image.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// The format and virtual size of an image as qemu-img reads them (blocking qemu-img, on
/// the blocking pool).
pub async fn image_info(image: &Path) -> Result<ImageInfo, ProcessError> {
    let image = image.to_owned();
    Ok(
        tokio::task::spawn_blocking(move || crate::image::info(&image))
            .await
            .map_err(|e| ProcessError::Failed(format!("qemu-img info panicked: {e}")))??,
    )
}

/// Deletes the VM's disk and everything bound to it; returns the bytes reclaimed. Refused
/// while a recorded QEMU of ours still runs on it.
pub fn discard(paths: &VmPaths) -> Result<u64, ProcessError> {
    use std::os::unix::fs::MetadataExt;
    ensure_not_running(paths)?;
    let reclaimed = std::fs::metadata(&paths.overlay)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    remove_all([&paths.overlay, &paths.disk_id], "cannot discard")?;
    remove_all(disk_files(paths), "cannot discard")?;
    Ok(reclaimed)
}

/// What castrad keeps about one disk besides the overlay and its id (proofs about it, what
/// was given to it): a new disk and a discard remove them all.
fn disk_files(paths: &VmPaths) -> [&std::path::PathBuf; 7] {
    [
        &paths.stamp,
        &paths.known_hosts,
        &paths.seed,
        &paths.seed_inputs,
        &paths.seed_settings,
        &paths.efi_vars,
        &paths.base_record,
    ]
}

/// Removes each of `files` that exists; the first failure is `what` and the path.
fn remove_all<'a>(
    files: impl IntoIterator<Item = &'a std::path::PathBuf>,
    what: &str,
) -> Result<(), ProcessError> {
    for f in files {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("{what} {}", f.display()))(e));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the backend does before a launch: grow the disk it has, or make one on `base`.
    async fn prepare_overlay(
        paths: &VmPaths,
        base: &Path,
        size_mib: Option<u64>,
    ) -> Result<Option<PathBuf>, ProcessError> {
        if paths.overlay.exists() {
            return grow_overlay(paths, size_mib).await.map(|()| None);
        }
        let info = image_info(base).await?;
        let backing = Backing {
            path: base,
            format: &info.format,
            virtual_size: info.virtual_size,
        };
        create_overlay(paths, backing, size_mib, || Ok(()))
            .await
            .map(Some)
    }

    #[tokio::test]
    async fn a_new_overlay_gets_a_new_disk_id_and_drops_the_old_disks_proofs() {
        let dir = tempfile::tempdir().unwrap();
        let root =
            crate::state_root::StateRoot::for_project(dir.path(), "p", Path::new("/p/castra.toml"));
        let paths = root.vm("vm");
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let first = prepare_overlay(&paths, &base, None).await.unwrap();
        assert_eq!(first.as_deref(), Some(paths.overlay.as_path()));
        let id1 = std::fs::read_to_string(&paths.disk_id).unwrap();
        assert_eq!(
            prepare_overlay(&paths, &base, None).await.unwrap(),
            None,
            "kept"
        );

        // Proofs about this disk and what was given to it, then the disk goes away.
        crate::state_root::ensure_dir(&root.stamps_dir()).unwrap();
        for f in [
            &paths.stamp,
            &paths.known_hosts,
            &paths.seed,
            &paths.efi_vars,
            &paths.base_record,
        ] {
            std::fs::write(f, "x").unwrap();
        }
        assert!(discard(&paths).unwrap() > 0);
        for f in [
            &paths.stamp,
            &paths.known_hosts,
            &paths.seed,
            &paths.efi_vars,
            &paths.base_record,
            &paths.overlay,
        ] {
            assert!(!f.exists(), "{} is left", f.display());
        }

        prepare_overlay(&paths, &base, None).await.unwrap();
        let id2 = std::fs::read_to_string(&paths.disk_id).unwrap();
        assert_ne!(id1, id2);
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&paths.overlay)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename-format"], "raw");
    }

    #[tokio::test]
    async fn a_disk_is_made_at_its_size_grown_when_asked_and_never_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let root =
            crate::state_root::StateRoot::for_project(dir.path(), "p", Path::new("/p/castra.toml"));
        let paths = root.vm("vm");
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 4 << 20]).unwrap();

        let small = prepare_overlay(&paths, &base, Some(2)).await.unwrap_err();
        assert!(
            small.to_string().contains("smaller than the base image"),
            "{small}"
        );
        assert!(!paths.overlay.exists(), "nothing made");
        prepare_overlay(&paths, &base, Some(16)).await.unwrap();
        assert_eq!(mib(&paths.overlay).await, 16);
        let id = std::fs::read_to_string(&paths.disk_id).unwrap();
        assert_eq!(
            prepare_overlay(&paths, &base, Some(32)).await.unwrap(),
            None
        );
        assert_eq!(mib(&paths.overlay).await, 32, "grown");
        assert_eq!(
            std::fs::read_to_string(&paths.disk_id).unwrap(),
            id,
            "the same disk"
        );
        let shrink = prepare_overlay(&paths, &base, Some(8)).await.unwrap_err();
        assert!(shrink.to_string().contains("cannot shrink"), "{shrink}");
        assert_eq!(mib(&paths.overlay).await, 32, "unchanged");
        assert_eq!(prepare_overlay(&paths, &base, None).await.unwrap(), None);
    }

    async fn mib(path: &Path) -> u64 {
        image_info(path).await.unwrap().virtual_size >> 20
    }
}
