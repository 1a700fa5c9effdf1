//! The only code that builds paths under castrad's state directory.
//!
//! Layout (base = `$XDG_STATE_HOME/castra`, or `CASTRA_STATE_DIR` / `castrad --state-dir`):
//!
//! ```text
//! <base>/castrad.lock                                         held by the one castrad (instance)
//! <base>/libvirt-pool/                                        castrad's own libvirt pool `castra`
//!                                                             (qemu:///session, made if missing)
//! <base>/projects/<project>-<8 hex of sha256(config path)>/   one StateRoot per project
//!     logs/bootstrap/<vm>-<UTC timestamp>-<run id>.json       durable run logs
//!     logs/bootstrap/<same stem>.output.log                   the run's guest output
//!     stamps/<vm>.json                                        idempotence stamps
//!     vizier/<vm>/service.log                                 mirrored guest agent log
//!     vms/<vm>/                                               per-VM files (VmPaths)
//!     hash-cache/<sha256 of image path>.json                  base image hash cache
//!     ssh/id_ed25519{,.pub}                                   the project's client key
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

/// The image store's default place: `$XDG_CACHE_HOME/castra/images` (`~/.cache/castra/images`):
/// a cache of what can be fetched again, shared by every project and state directory.
pub fn default_image_store() -> Option<PathBuf> {
    Some(
        directories::BaseDirs::new()?
            .cache_dir()
            .join("castra")
            .join("images"),
    )
}

/// The environment variable naming the user config (`castrad --user-config`).
pub const USER_CONFIG_ENV: &str = "CASTRA_USER_CONFIG";

/// The user's own settings file: `$XDG_CONFIG_HOME/castra/config.toml`
/// (`~/.config/castra/config.toml`), what `config::UserConfig` reads.
pub fn default_user_config() -> Option<PathBuf> {
    Some(
        directories::BaseDirs::new()?
            .config_dir()
            .join("castra")
            .join("config.toml"),
    )
}

/// The lock file that makes castrad one per state directory (see `instance`).
pub fn daemon_lock(base: &Path) -> PathBuf {
    base.join("castrad.lock")
}

/// The directory of castrad's own libvirt storage pool (`castra`), which castrad defines on
/// this machine's session daemon when it is missing (`backend::libvirt::pool`).
pub fn libvirt_pool_dir(base: &Path) -> PathBuf {
    base.join("libvirt-pool")
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
        let tag = crate::ids::hex(&digest[..4]);
        StateRoot {
            root: base.join("projects").join(format!("{name}-{tag}")),
        }
    }

    /// The project's name (the state root's directory is `<name>-<tag>`).
    pub fn project_name(&self) -> String {
        let dir = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match dir.rsplit_once('-') {
            Some((name, _)) => name.to_owned(),
            None => dir,
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

    fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.vms_dir().join(vm)
    }

    /// The names of the VMs that have a directory here (any backend), sorted.
    pub fn vm_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.vms_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// The files of one VM.
    pub fn vm(&self, vm: &str) -> VmPaths {
        let dir = self.vm_dir(vm);
        VmPaths {
            overlay: dir.join("overlay.qcow2"),
            overlay_tmp: dir.join(".overlay.qcow2.tmp"),
            seed: dir.join("seed.img"),
            seed_inputs: dir.join("seed-inputs"),
            seed_settings: dir.join("seed-settings.json"),
            host_key_tmp: dir.join(".host-key.tmp"),
            efi_vars: dir.join("efi-vars.fd"),
            disk_id: dir.join("disk-id"),
            base_record: dir.join("base.json"),
            known_hosts: dir.join("known_hosts"),
            qmp: dir.join("qmp.sock"),
            serial_socket: dir.join("serial.sock"),
            serial_log: dir.join("serial.log"),
            qemu_log: dir.join("qemu.log"),
            pidfile: dir.join("qemu.pid"),
            launch: dir.join("launch.json"),
            guest_setup: dir.join("guest-setup"),
            virtiofsd: dir.join("virtiofsd.json"),
            virtiofsd_log: dir.join("virtiofsd.log"),
            libvirt: dir.join("libvirt.json"),
            stamp: self.stamp(vm),
            dir,
        }
    }

    /// The durable log of a run (`<vm>-<started>-<run id>.json`, `started` as
    /// `YYYYMMDDTHHMMSS.mmmZ`) and the file its guest output goes to while it runs.
    pub fn run_log(&self, vm: &str, started: &str, run_id: &str) -> (PathBuf, PathBuf) {
        let dir = self.bootstrap_logs_dir();
        let stem = format!("{vm}-{started}-{run_id}");
        (
            dir.join(format!("{stem}.json")),
            dir.join(format!("{stem}.output.log")),
        )
    }

    /// The project's SSH client key (private; `.pub` beside it), made once by castrad and put
    /// into every cloud-init guest's authorized_keys.
    pub fn project_key(&self) -> PathBuf {
        self.root.join("ssh").join("id_ed25519")
    }

    pub fn hash_cache_dir(&self) -> PathBuf {
        self.root.join("hash-cache")
    }

    /// Cache entry for the content hash of the file at `path` (absolute).
    pub fn hash_cache_entry(&self, path: &Path) -> PathBuf {
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        self.hash_cache_dir()
            .join(format!("{}.json", crate::ids::hex(&digest[..16])))
    }
}

/// Where a VM's files live (all under `vms/<vm>/`, except its stamp). An external VM only
/// has `known_hosts`; the rest belong to a QEMU VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
    /// The VM's disk: a qcow2 overlay on the base image.
    pub overlay: PathBuf,
    /// Where a new overlay is made before it is renamed into place.
    pub overlay_tmp: PathBuf,
    /// The NoCloud seed (a FAT volume labelled cidata) of this disk.
    pub seed: PathBuf,
    /// The hash of what the user gave that seed (`hashing::seed_inputs`), to tell when it
    /// changes: cloud-init reads a seed on a disk's first boot only.
    pub seed_inputs: PathBuf,
    /// What that seed gave the guest (`drift::Seeded`), the base of its seed-bound drift.
    pub seed_settings: PathBuf,
    /// Where ssh-keygen writes a new host key before castrad reads and removes it.
    pub host_key_tmp: PathBuf,
    /// The VM's UEFI variables (a copy of OVMF's template), discarded with the disk.
    pub efi_vars: PathBuf,
    /// A random id given to each new overlay: the disk identity stamps are bound to.
    pub disk_id: PathBuf,
    /// What the disk is backed by (`images::disk::DiskBase`): checked before every start.
    pub base_record: PathBuf,
    /// The pinned SSH host key of the guest on this disk.
    pub known_hosts: PathBuf,
    pub qmp: PathBuf,
    /// Where QEMU offers the serial console to castrad.
    pub serial_socket: PathBuf,
    /// The serial console as castrad writes it (capped).
    pub serial_log: PathBuf,
    /// QEMU's own stderr.
    pub qemu_log: PathBuf,
    pub pidfile: PathBuf,
    /// What castrad launched (pid, start time, ports): what re-adoption checks.
    pub launch: PathBuf,
    /// The QEMU (pid, start time) whose guest side castrad set up over SSH (a guest without
    /// cloud-init: mounts, project network), once per boot.
    pub guest_setup: PathBuf,
    /// The virtiofsd daemons castrad runs for the VM's mounts (pid, start time, socket).
    pub virtiofsd: PathBuf,
    /// Their stderr (warnings only).
    pub virtiofsd_log: PathBuf,
    /// Where a libvirt VM's domain lives (URI, pool, volume names, castra.toml).
    pub libvirt: PathBuf,
    pub stamp: PathBuf,
}

impl VmPaths {
    /// The vhost-user socket of the VM's mount number `index`'s virtiofsd.
    pub fn virtiofs_socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("fs{index}.sock"))
    }
}

/// Where ssh's control sockets go: beside castrad's socket, in its private runtime directory
/// (Unix socket paths are limited to 108 bytes, so they must stay short).
pub fn control_dir(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new("/tmp")).join("ssh")
}

/// The state roots of every project under `base` that castrad has kept state for.
pub fn all_projects(base: &Path) -> Vec<StateRoot> {
    let mut roots: Vec<StateRoot> = std::fs::read_dir(base.join("projects"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| StateRoot { root: e.path() })
        .collect();
    roots.sort_by(|a, b| a.root.cmp(&b.root));
    roots
}

/// Creates `dir` and its parents with mode 0700 (state may hold host keys and logs).
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
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
        assert_eq!(root.vm("db").launch, root.path().join("vms/db/launch.json"));
        let (log, output) = root.run_log("db", "20261122T004512.345Z", "0123456789ab");
        assert_eq!(
            log,
            root.path()
                .join("logs/bootstrap/db-20261122T004512.345Z-0123456789ab.json")
        );
        assert_eq!(output.extension().unwrap(), "log");
        let entry = root.hash_cache_entry(Path::new("/img/base.qcow2"));
        assert_eq!(entry.parent().unwrap(), root.path().join("hash-cache"));
        assert_eq!(
            libvirt_pool_dir(Path::new("/s")),
            Path::new("/s/libvirt-pool")
        );
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
    fn projects_and_vms_are_listed_from_disk() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(all_projects(tmp.path()).is_empty());
        let root = StateRoot::for_project(tmp.path(), "demo", Path::new("/x/castra.toml"));
        ensure_dir(&root.vm_dir("b")).unwrap();
        ensure_dir(&root.vm_dir("a")).unwrap();
        assert_eq!(all_projects(tmp.path()), vec![root.clone()]);
        assert_eq!(root.vm_names(), ["a", "b"]);
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
