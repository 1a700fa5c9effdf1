//! `[vms.libvirt] upload = true` (or a URL or catalog `base_image`): the base image comes from
//! the image store on this machine (`crate::images`: fetched or imported there first), and is
//! copied into the VM's pool once per hypervisor, pool and content, as the volume
//! `castra-base-<first 16 hex digits of its sha256>.<format>`. Every VM (of any project) whose
//! image has that content finds the volume by its name and backs its overlay with it.
//!
//! The sha256 is the store's (the image's name there): nothing is hashed here, and a VM whose
//! overlay exists never gets here at all.
//!
//! A volume under its final name is always complete: the image is uploaded (`vol-create-as`
//! + `vol-upload --sparse`, over the hypervisor's one SSH connection) under a temporary name
//!   `<name>.part-<random>`, its size checked, and only then renamed in the pool's directory
//!   (`mv`, atomic within a file system) and the pool refreshed so libvirt sees the new name.
//!   An upload cut short leaves at most a `.part-…` volume, which nothing trusts (failed
//!   uploads delete theirs; a castrad killed mid-upload leaves it for the user, docs/REMOTE.md).
//!   Renaming needs a pool whose volumes are files (`dir`, `fs`, `netfs`), which preflight
//!   checks. Within one castrad, one upload of a volume at a time (a lock per hypervisor, pool
//!   and name); two castrads uploading the same image each rename their own complete copy.
//!
//! A volume under the name may be anyone's who can write the pool (a backdoored image, a
//! qcow2 backed by another tenant's disk): before a disk is made on it, and after castrad's
//! own upload is renamed into place (a file swapped in meanwhile), `verify` checks it:
//! libvirt's format and no backing file, a regular file of the image's size, and its sha256
//! read on the hypervisor is the store's. A hash, not a tag: libvirt volumes carry no
//! metadata, and a tag beside the volume is forgeable by the same writer.
//!
//! The shared volume is not one of a VM's volumes: `discard` never deletes it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::virsh::Hypervisor;
use super::{failed, space};
use crate::backend::BackendError;
use crate::images::Stored;

/// Pool types whose volumes are files in one directory (what renaming needs).
pub const FILE_POOLS: [&str; 3] = ["dir", "fs", "netfs"];

/// The shared base volume a VM's overlay is backed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// Its path on the hypervisor.
    pub path: PathBuf,
    pub format: String,
    pub virtual_size: u64,
}

/// `castra-base-<16 hex>.<format>`: the volume of an image with this sha256 and format.
pub fn volume_name(sha256: &str, format: &str) -> String {
    format!("castra-base-{}.{format}", &sha256[..16.min(sha256.len())])
}

/// The pool's type from `virsh pool-dumpxml` (`<pool type='dir'>`).
pub fn pool_type(xml: &str) -> Option<&str> {
    let rest = &xml[xml.find("<pool")?..];
    let rest = &rest[rest.find("type=")? + 5..];
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(quote)?])
}

/// Why the pool cannot take the upload, if it is a pool castrad cannot rename volumes in.
pub fn check_pool(hv: &Hypervisor, pool: &str) -> Result<(), String> {
    let xml = hv.virsh(&["pool-dumpxml", pool]).map_err(|e| e.message)?;
    match pool_type(&xml) {
        Some(t) if FILE_POOLS.contains(&t) => Ok(()),
        other => Err(format!(
            "upload = true needs a pool whose volumes are files (type dir, fs or netfs), and \
             pool {pool:?} is of type {:?}: set [vms.libvirt] pool to a dir pool \
             (docs/REMOTE.md), or place base_image on the hypervisor and drop upload",
            other.unwrap_or("unknown")
        )),
    }
}

/// One upload of a given volume at a time in this castrad.
fn lock_for(key: String) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    locks.entry(key).or_default().clone()
}

/// The path of volume `name` in `pool`, if libvirt knows it.
fn lookup(hv: &Hypervisor, pool: &str, name: &str) -> Option<PathBuf> {
    let out = hv.virsh(&["vol-path", "--pool", pool, name]).ok()?;
    let path = out.trim();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// `pool-refresh`, retried while libvirt refuses it for an upload in progress (a seed's).
fn refresh(hv: &Hypervisor, pool: &str) -> Result<(), BackendError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match hv.virsh(&["pool-refresh", pool]) {
            Ok(_) => return Ok(()),
            Err(e) if e.message.contains("asynchronous jobs") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The base volume of the store image `stored` in `pool` on `hv`: found, or uploaded now
/// (blocking).
pub fn ensure(hv: &Hypervisor, pool: &str, stored: &Stored) -> Result<Base, BackendError> {
    let image = stored.path.as_path();
    let (sha256, format) = (&stored.record.sha256, &stored.record.format);
    let name = volume_name(sha256, format);
    let base = |path| Base {
        path,
        format: format.clone(),
        virtual_size: stored.record.virtual_size,
    };
    let lock = lock_for(format!("{}\n{pool}\n{name}", hv.uri));
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    // A volume under the name is anyone's who can write the pool: checked before use.
    let reused = || -> Result<Option<Base>, BackendError> {
        let Some(path) = lookup(hv, pool, &name) else {
            return Ok(None);
        };
        verify(hv, pool, &name, &path, stored)?;
        tracing::info!(hypervisor = %hv.name(), pool, volume = %name, "base volume reused");
        Ok(Some(base(path)))
    };
    if let Some(found) = reused()? {
        return Ok(found);
    }
    // Made by another castrad, or by hand, since libvirt last looked.
    refresh(hv, pool)?;
    if let Some(found) = reused()? {
        return Ok(found);
    }
    check_pool(hv, pool).map_err(|m| failed(format!("on {}: {m}", hv.name())))?;
    let meta = std::fs::metadata(image)
        .map_err(|e| failed(format!("base image {}: {e}", image.display())))?;
    let (len, allocated) = (meta.len(), meta.blocks() * 512);
    let what = format!("the base image {}", image.display());
    let full = |free: Option<u64>| {
        failed(space::full_message(
            hv,
            pool,
            &what,
            Some(allocated.min(len)),
            free,
        ))
    };
    let free = hv
        .virsh(&["pool-info", "--bytes", pool])
        .ok()
        .and_then(|i| space::available(&i));
    if free.is_some_and(|f| f < allocated.min(len)) {
        return Err(full(free));
    }

    let started = Instant::now();
    let part = format!("{name}.part-{}", crate::ids::random_hex(4));
    // Allocation 0: a sparse file (not one allocated to its full length up front), which
    // the sparse upload keeps sparse where the image is.
    hv.virsh(&[
        "vol-create-as",
        pool,
        &part,
        &len.to_string(),
        "--allocation",
        "0",
        "--format",
        "raw",
    ])
    .map_err(|e| {
        if space::is_full(&e.message) {
            full(None)
        } else {
            e.into()
        }
    })?;
    // What now has the final name is checked as a reused volume is: a writer of the pool
    // may have swapped the file between the upload's checks and the rename.
    let uploaded = upload(hv, pool, &part, stored, len, allocated)
        .and_then(|path| verify(hv, pool, &name, &path, stored).map(|()| path));
    let path = match uploaded {
        Ok(path) => path,
        Err(e) => {
            let _ = hv.virsh(&["vol-delete", "--pool", pool, &part]);
            if space::is_full(&e.to_string()) {
                return Err(full(None));
            }
            return Err(e);
        }
    };
    tracing::info!(
        hypervisor = %hv.name(),
        pool,
        volume = %name,
        bytes = len,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "base image uploaded"
    );
    Ok(base(path))
}

/// Checks the volume `name` (at `path`) in `pool` before any VM is backed by it: libvirt
/// sees the image's format and no backing file, and on the hypervisor it is a regular file
/// of the image's size whose sha256 is the store's digest. Err: what is wrong and what to do.
fn verify(
    hv: &Hypervisor,
    pool: &str,
    name: &str,
    path: &std::path::Path,
    stored: &Stored,
) -> Result<(), BackendError> {
    let refuse = |why: String| {
        failed(format!(
            "the base volume {name} in pool {pool:?} on {} is not the image castrad uploaded              ({why}); castrad uses no VM disk on it. Anyone who can write the pool may have              put it there: remove it (`virsh -c {} vol-delete --pool {pool} {name}`) and run              again, and castrad uploads the image anew",
            hv.name(),
            hv.uri
        ))
    };
    let xml = hv.virsh(&["vol-dumpxml", "--pool", pool, name])?;
    if let Some(why) = volume_problem(&xml, &stored.record.format) {
        return Err(refuse(why));
    }
    let text = path.to_string_lossy();
    let kind = hv.sh(&["stat", "-c", "%F:%s", "--", &text])?;
    let len = std::fs::metadata(&stored.path)
        .map_err(|e| failed(format!("base image {}: {e}", stored.path.display())))?
        .len();
    match kind.trim().rsplit_once(':') {
        Some(("regular file", size)) if size.parse::<u64>().ok() == Some(len) => {}
        Some(("regular file", size)) => {
            return Err(refuse(format!("{size} bytes, the image has {len}")));
        }
        _ => return Err(refuse(format!("{text} is not a regular file"))),
    }
    // The whole volume read on the hypervisor, at 1 MiB/s at worst, and two minutes more.
    let limit = Duration::from_secs(120 + len / (1 << 20));
    let sum = hv.sh_within(&["sha256sum", "--", &text], limit)?;
    let sha = sum.split_whitespace().next().unwrap_or_default();
    if !sha.eq_ignore_ascii_case(&stored.record.sha256) {
        return Err(refuse(format!(
            "its sha256 is {sha}, the image's {}",
            stored.record.sha256
        )));
    }
    Ok(())
}

/// What is wrong with a base volume, from its `vol-dumpxml`: a backing file, or a format
/// (as libvirt reads the file) other than `format`.
pub fn volume_problem(xml: &str, format: &str) -> Option<String> {
    if let Some(at) = xml.find("<backingStore") {
        let rest = &xml[at..];
        let empty = rest.starts_with("<backingStore/>") || rest.starts_with("<backingStore />");
        if !empty {
            let backing = rest
                .find("<path>")
                .and_then(|p| rest[p + 6..].split_once("</path>"))
                .map_or("a file", |(path, _)| path);
            return Some(format!("it has a backing file, {backing}"));
        }
    }
    let target = xml.split_once("<target>").map_or("", |(_, t)| t);
    let target = target.split_once("</target>").map_or(target, |(t, _)| t);
    let found = target
        .split_once("<format type=")
        .and_then(|(_, r)| {
            let quote = r.chars().next()?;
            r[1..].split_once(quote).map(|(f, _)| f)
        })
        .unwrap_or("unknown");
    (found != format).then(|| format!("libvirt reads it as {found}, not {format}"))
}

/// Uploads the store image `stored` into the volume `part`, checks it, and renames it to its
/// final name: the final path.
fn upload(
    hv: &Hypervisor,
    pool: &str,
    part: &str,
    stored: &Stored,
    len: u64,
    allocated: u64,
) -> Result<PathBuf, BackendError> {
    let image = stored.path.as_path();
    let local = image.to_string_lossy();
    // As long as the image needs at 1 MiB/s, and two minutes more.
    let limit = Duration::from_secs(120 + allocated.min(len) / (1 << 20));
    hv.virsh_within(
        &["vol-upload", "--pool", pool, part, &local, "--sparse"],
        limit,
    )?;
    // What was sent is the image the store verified: the store file's identity is the one it
    // had when stored (a read-only file nobody should touch; checked all the same).
    if crate::images::FileIdentity::of(image).ok() != Some(stored.record.identity) {
        return Err(failed(format!(
            "the image store's {} changed while it was uploaded (or since it was stored): \
             remove it (`castractl image rm {}`) and run again",
            image.display(),
            &stored.record.sha256[..16.min(stored.record.sha256.len())]
        )));
    }
    let tmp = lookup(hv, pool, part)
        .ok_or_else(|| failed(format!("volume {part} vanished from pool {pool:?}")))?;
    let tmp_text = tmp.to_string_lossy().into_owned();
    let size = hv.sh(&["stat", "-c", "%s", &tmp_text])?;
    if size.trim().parse::<u64>().ok() != Some(len) {
        return Err(failed(format!(
            "volume {part} on {} holds {} bytes after the upload, not {len}",
            hv.name(),
            size.trim()
        )));
    }
    let name = part.rsplit_once(".part-").map_or(part, |(n, _)| n);
    let path = tmp.with_file_name(name);
    let path_text = path.to_string_lossy().into_owned();
    hv.sh(&["mv", "-f", "--", &tmp_text, &path_text])
        .map_err(|e| {
            failed(format!(
                "cannot rename the uploaded {tmp_text} to {path_text} on {} ({}): the user \
                 castrad logs in as needs write access to the pool's directory",
                hv.name(),
                e.message
            ))
        })?;
    refresh(hv, pool)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pool_types_are_read_from_virsh() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            volume_name(sha, "qcow2"),
            "castra-base-0123456789abcdef.qcow2"
        );
        assert_eq!(volume_name(sha, "raw"), "castra-base-0123456789abcdef.raw");
        assert_eq!(
            pool_type("<pool type='dir'>\n  <name>castra</name>"),
            Some("dir")
        );
        assert_eq!(pool_type("<pool type=\"logical\">"), Some("logical"));
        assert_eq!(pool_type("<volume/>"), None);
    }

    #[test]
    fn a_base_volume_with_a_backing_file_or_another_format_is_refused() {
        let plain = "<volume type='file'>\n  <name>b.raw</name>\n  <target>\n    \
                     <path>/p/b.raw</path>\n    <format type='raw'/>\n  </target>\n</volume>";
        assert_eq!(volume_problem(plain, "raw"), None);
        assert_eq!(
            volume_problem(plain, "qcow2").as_deref(),
            Some("libvirt reads it as raw, not qcow2")
        );
        let backed = plain.replace(
            "</target>",
            "</target>\n  <backingStore>\n    <path>/other/disk.qcow2</path>\n    \
             <format type='qcow2'/>\n  </backingStore>",
        );
        assert_eq!(
            volume_problem(&backed, "raw").as_deref(),
            Some("it has a backing file, /other/disk.qcow2")
        );
        let empty = plain.replace("</target>", "</target><backingStore/>");
        assert_eq!(volume_problem(&empty, "raw"), None);
        assert!(
            volume_problem("<volume/>", "raw").is_some(),
            "no format: refused"
        );
    }
}
