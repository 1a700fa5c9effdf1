//! Idempotence stamps: proof that a VM was bootstrapped for an exact
//! (base_hash, artifact_hash, disk identity).
//!
//! A stamp is `stamps/<vm>.json` in the project's state root, written atomically after a
//! `Success` and never otherwise; a run removes it ([`invalidate`]) before it touches the guest. Reading is side-effect free. A stamp only proves something
//! about the disk it names: the disk identity is the overlay's id for QEMU VMs and the pinned
//! host key for external ones, so a recreated disk or a reinstalled host never gets a false NoOp.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state_root::StateRoot;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub vm: String,
    pub base_hash: String,
    pub artifact_hash: String,
    pub disk_id: String,
    pub run_id: String,
    /// The durable log of the run that earned this stamp.
    pub log_path: PathBuf,
    /// RFC 3339 UTC time the run completed.
    pub completed_at: String,
}

impl Stamp {
    /// True when this stamp proves the given inputs were already applied.
    /// An empty base hash (a base image not known yet) matches nothing.
    pub fn matches(&self, base_hash: &str, artifact_hash: &str, disk_id: Option<&str>) -> bool {
        !base_hash.is_empty()
            && self.base_hash == base_hash
            && self.artifact_hash == artifact_hash
            && disk_id == Some(self.disk_id.as_str())
    }
}

/// What reading a stamp found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampRead {
    Absent,
    Present(Stamp),
    /// Unreadable or not a stamp; treated as absent (the next success replaces it).
    Corrupt(String),
}

pub fn read(root: &StateRoot, vm: &str) -> StampRead {
    read_path(&root.stamp(vm))
}

fn read_path(path: &Path) -> StampRead {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(stamp) => StampRead::Present(stamp),
            Err(e) => StampRead::Corrupt(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => StampRead::Absent,
        Err(e) => StampRead::Corrupt(format!("{}: {e}", path.display())),
    }
}

/// Writes `stamp` atomically as `stamps/<vm>.json`; returns its path. Call only after a
/// `Success`.
pub fn write(root: &StateRoot, stamp: &Stamp) -> io::Result<PathBuf> {
    crate::state_root::ensure_dir(&root.stamps_dir())?;
    let path = root.stamp(&stamp.vm);
    let json = serde_json::to_vec_pretty(stamp).map_err(io::Error::other)?;
    crate::fsutil::write_atomic(&path, &json)?;
    Ok(path)
}

/// Removes `vm`'s stamp, durably (the stamps directory is fsynced), before a run touches its
/// guest: a run that fails or is cut short part-way must not leave a stamp that proves the
/// state before it. No stamp is not an error.
pub fn invalidate(root: &StateRoot, vm: &str) -> io::Result<()> {
    match std::fs::remove_file(root.stamp(vm)) {
        Ok(()) => std::fs::File::open(root.stamps_dir())?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The identity of the disk a VM currently has, if castrad has seen one: the overlay id
/// (`vms/<vm>/disk-id`, QEMU) or the pinned host key (`vms/<vm>/known_hosts`, external).
pub fn disk_id(root: &StateRoot, vm: &str) -> Option<String> {
    let paths = root.vm(vm);
    if let Ok(id) = std::fs::read_to_string(&paths.disk_id) {
        let id = id.trim();
        if !id.is_empty() {
            return Some(format!("disk:{id}"));
        }
    }
    let pinned = std::fs::read(&paths.known_hosts).ok()?;
    if pinned.is_empty() {
        return None;
    }
    Some(format!(
        "hostkey:{}",
        crate::ids::hex(&sha2_digest(&pinned)[..16])
    ))
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            vm: "web".into(),
            base_hash: "b".into(),
            artifact_hash: "a".into(),
            disk_id: "disk:1".into(),
            run_id: "r1".into(),
            log_path: "/l.json".into(),
            completed_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn matches_needs_all_three_keys() {
        let s = stamp();
        assert!(s.matches("b", "a", Some("disk:1")));
        assert!(!s.matches("b2", "a", Some("disk:1")));
        assert!(!s.matches("b", "a2", Some("disk:1")));
        assert!(!s.matches("b", "a", Some("disk:2")));
        assert!(!s.matches("b", "a", None));
        let mut unknown = stamp();
        unknown.base_hash = String::new();
        assert!(!unknown.matches("", "a", Some("disk:1")), "an unknown base");
    }

    #[test]
    fn read_distinguishes_absent_present_and_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(tmp.path(), "p", Path::new("/p/castra.toml"));
        assert_eq!(read(&root, "web"), StampRead::Absent);
        crate::state_root::ensure_dir(&root.stamps_dir()).unwrap();
        std::fs::write(root.stamp("web"), serde_json::to_vec(&stamp()).unwrap()).unwrap();
        assert_eq!(read(&root, "web"), StampRead::Present(stamp()));
        std::fs::write(root.stamp("web"), b"{ half").unwrap();
        assert!(matches!(read(&root, "web"), StampRead::Corrupt(m) if m.contains("web.json")));
    }

    #[test]
    fn disk_id_prefers_the_overlay_id_then_the_pinned_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(tmp.path(), "p", Path::new("/p/castra.toml"));
        assert_eq!(disk_id(&root, "web"), None);
        std::fs::create_dir_all(root.vm_dir("web")).unwrap();
        std::fs::write(
            root.vm("web").known_hosts,
            "[127.0.0.1]:22 ssh-ed25519 AAAA",
        )
        .unwrap();
        let key_id = disk_id(&root, "web").unwrap();
        assert!(key_id.starts_with("hostkey:"), "{key_id}");
        std::fs::write(root.vm("web").disk_id, "abc\n").unwrap();
        assert_eq!(disk_id(&root, "web").as_deref(), Some("disk:abc"));
    }
}
