//! The only code that builds paths under castrad's state directory.
//!
//! Layout (base = `$XDG_STATE_HOME/castra`, or `CASTRA_STATE_DIR` / `castrad --state-dir`):
//!
//! ```text
//! <base>/projects/<project>-<8 hex of sha256(config path)>/   one StateRoot per project
//!     logs/bootstrap/<vm>-<UTC timestamp>-<run id>.json       durable run logs
//!     stamps/<vm>.json                                        idempotence stamps
//!     vizier/<vm>/service.log                                 mirrored guest agent log
//!     vms/<vm>/                                               per-VM runtime files
//!     hash-cache/<sha256 of image path>.json                  base image hash cache
//! ```
//!
//! Invariant: VM names reaching this module were validated by `config` (file-name safe), so
//! joining them can never escape the root. Nothing here creates directories implicitly except
//! [`ensure_dir`]: computing a path has no side effect, which keeps `plan` and NoOp runs from
//! writing anything.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Environment variable overriding the state base directory.
pub const STATE_DIR_ENV: &str = "CASTRA_STATE_DIR";

/// The default state base: `$XDG_STATE_HOME/castra` (`~/.local/state/castra`).
pub fn default_base() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    directories::BaseDirs::new()?
        .state_dir()
        .map(|d| d.join("castra"))
}

/// The per-project state root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRoot {
    root: PathBuf,
}

impl StateRoot {
    /// The state root of the project `name` whose castra.toml is at `config_path` (absolute).
    /// Two checkouts of the same project get distinct roots.
    pub fn for_project(base: &Path, name: &str, config_path: &Path) -> StateRoot {
        let digest = Sha256::digest(config_path.as_os_str().as_encoded_bytes());
        let tag = hex(&digest[..4]);
        StateRoot {
            root: base.join("projects").join(format!("{name}-{tag}")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn bootstrap_logs_dir(&self) -> PathBuf {
        self.root.join("logs").join("bootstrap")
    }

    pub fn stamps_dir(&self) -> PathBuf {
        self.root.join("stamps")
    }

    pub fn stamp(&self, vm: &str) -> PathBuf {
        self.stamps_dir().join(format!("{vm}.json"))
    }

    pub fn vizier_dir(&self, vm: &str) -> PathBuf {
        self.root.join("vizier").join(vm)
    }

    pub fn vizier_log(&self, vm: &str) -> PathBuf {
        self.vizier_dir(vm).join("service.log")
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("vms").join(vm)
    }

    /// The files of a QEMU VM.
    pub fn qemu(&self, vm: &str) -> QemuPaths {
        let dir = self.vm_dir(vm);
        QemuPaths {
            overlay: dir.join("overlay.qcow2"),
            disk_id: dir.join("disk-id"),
            known_hosts: dir.join("known_hosts"),
            qmp: dir.join("qmp.sock"),
            serial_log: dir.join("serial.log"),
            qemu_log: dir.join("qemu.log"),
            pidfile: dir.join("qemu.pid"),
            launch: dir.join("launch.json"),
            stamp: self.stamp(vm),
            dir,
        }
    }

    pub fn hash_cache_dir(&self) -> PathBuf {
        self.root.join("hash-cache")
    }

    /// Cache entry for the content hash of the file at `path` (absolute).
    pub fn hash_cache_entry(&self, path: &Path) -> PathBuf {
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        self.hash_cache_dir()
            .join(format!("{}.json", hex(&digest[..16])))
    }
}

/// Where a QEMU VM's files live (all under `vms/<vm>/`, except its stamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuPaths {
    pub dir: PathBuf,
    /// The VM's disk: a qcow2 overlay on the base image.
    pub overlay: PathBuf,
    /// A random id given to each new overlay: the disk identity stamps are bound to.
    pub disk_id: PathBuf,
    /// The pinned SSH host key of the guest on this disk.
    pub known_hosts: PathBuf,
    pub qmp: PathBuf,
    pub serial_log: PathBuf,
    /// QEMU's own stderr.
    pub qemu_log: PathBuf,
    pub pidfile: PathBuf,
    /// What castrad launched (pid, start time, ports): what re-adoption checks.
    pub launch: PathBuf,
    pub stamp: PathBuf,
}

/// Creates `dir` and its parents with mode 0700 (state may hold host keys and logs).
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        let root = StateRoot::for_project(
            Path::new("/s"),
            "demo",
            Path::new("/home/u/demo/castra.toml"),
        );
        let p = root.path().to_str().unwrap();
        let tag = p.strip_prefix("/s/projects/demo-").unwrap();
        assert_eq!(tag.len(), 8);
        assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(root.stamp("web-0"), root.path().join("stamps/web-0.json"));
        assert_eq!(
            root.bootstrap_logs_dir(),
            root.path().join("logs/bootstrap")
        );
        assert_eq!(
            root.vizier_log("db"),
            root.path().join("vizier/db/service.log")
        );
        assert_eq!(root.vm_dir("db"), root.path().join("vms/db"));
        let entry = root.hash_cache_entry(Path::new("/img/base.qcow2"));
        assert_eq!(entry.parent().unwrap(), root.path().join("hash-cache"));
    }

    #[test]
    fn distinct_config_paths_get_distinct_roots() {
        let a = StateRoot::for_project(Path::new("/s"), "demo", Path::new("/a/castra.toml"));
        let b = StateRoot::for_project(Path::new("/s"), "demo", Path::new("/b/castra.toml"));
        assert_ne!(a, b);
        let a2 = StateRoot::for_project(Path::new("/s"), "demo", Path::new("/a/castra.toml"));
        assert_eq!(a, a2);
    }

    #[test]
    fn computing_paths_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::for_project(tmp.path(), "demo", Path::new("/x/castra.toml"));
        let _ = (root.stamp("a"), root.bootstrap_logs_dir(), root.vm_dir("a"));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        ensure_dir(&root.stamps_dir()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.stamps_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
