//! Keys castrad makes with the user's `ssh-keygen`: the project's client key (once per state
//! root, mode 0600, never leaving it) and a guest's host key (once per disk). castrad hands a
//! host key to the guest in its cloud-init seed and pins it before the guest first boots, so
//! the first connection is already checked: no trust on first use. Such a pin is marked as
//! unconfirmed until a connection gets in with it: a guest that presents another key before
//! that has ignored its seed (an image without cloud-init), which is not a changed machine.

use std::path::Path;
use std::process::Stdio;

use crate::fsutil::write_atomic;

/// An ed25519 key pair in OpenSSH's formats.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The private key file's text (`-----BEGIN OPENSSH PRIVATE KEY-----`...).
    pub private: String,
    /// `ssh-ed25519 AAAA... comment`.
    pub public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot run ssh-keygen (package openssh-client)")]
    Spawn(#[source] std::io::Error),
    #[error("ssh-keygen failed: {0}")]
    Failed(String),
    #[error("{}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs `ssh-keygen` to write a new ed25519 key to `path` (and `path.pub`), without a
/// passphrase. `path` must not exist.
fn keygen(path: &Path, comment: &str) -> Result<(), KeyError> {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(KeyError::Spawn)?;
    if !out.status.success() {
        return Err(KeyError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// A new key pair, made at `scratch` (removed again, with its `.pub`).
pub fn generate(scratch: &Path, comment: &str) -> Result<KeyPair, KeyError> {
    let mut public_path = scratch.as_os_str().to_owned();
    public_path.push(".pub"); // where ssh-keygen puts it
    let public_path = std::path::PathBuf::from(public_path);
    let remove = || {
        let _ = std::fs::remove_file(scratch);
        let _ = std::fs::remove_file(&public_path);
    };
    remove();
    let made = keygen(scratch, comment).and_then(|()| {
        Ok(KeyPair {
            private: std::fs::read_to_string(scratch).map_err(io(scratch))?,
            public: std::fs::read_to_string(&public_path)
                .map_err(io(&public_path))?
                .trim()
                .to_owned(),
        })
    });
    remove();
    made
}

/// The public half of the project's client key at `path`, made first if there is none.
/// One caller at a time: VMs of a project prepare their disks concurrently, and two of them
/// making the key at once would each seed a guest with a key the other then replaces (one
/// castrad per state directory, `instance`, so a lock in the process is enough).
pub fn ensure_project_key(path: &Path) -> Result<String, KeyError> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let public_path = path.with_extension("pub");
    if let (Ok(_), Ok(public)) = (
        std::fs::metadata(path),
        std::fs::read_to_string(&public_path),
    ) {
        return Ok(public.trim().to_owned());
    }
    let dir = path.parent().expect("a key file has a directory");
    crate::state_root::ensure_dir(dir).map_err(io(dir))?;
    // Made aside and renamed into place, private key last: a key file that exists is whole.
    let scratch = path.with_extension("new");
    let pair = generate(&scratch, "castra")?;
    write_atomic(&public_path, format!("{}\n", pair.public).as_bytes())
        .map_err(io(&public_path))?;
    write_atomic(path, pair.private.as_bytes()).map_err(io(path))?;
    Ok(pair.public)
}

/// Pins `public` (`type base64 [comment]`) as the only host key of `alias` in `known_hosts`.
pub fn pin(known_hosts: &Path, alias: &str, public: &str) -> Result<(), KeyError> {
    write_pin(known_hosts, "", alias, public)
}

/// The first line of a pin castrad made for a guest's cloud-init seed, until a connection has
/// confirmed it (ssh skips `#` lines). Kept in the pin file itself, so it goes wherever the
/// pin goes (a new disk, a discard) and is written with it in one atomic write.
pub const SEED_PIN_UNCONFIRMED: &str = "# castra: the host key castrad gave the guest in its cloud-init seed; no connection has \
     confirmed it yet";

/// [`pin`] for the host key castrad hands the guest in its seed, marked as not yet confirmed
/// by a connection (see [`seed_pin_unconfirmed`]).
pub fn pin_seeded(known_hosts: &Path, alias: &str, public: &str) -> Result<(), KeyError> {
    write_pin(
        known_hosts,
        &format!("{SEED_PIN_UNCONFIRMED}\n"),
        alias,
        public,
    )
}

fn write_pin(known_hosts: &Path, head: &str, alias: &str, public: &str) -> Result<(), KeyError> {
    let mut words = public.split_whitespace();
    let (Some(kind), Some(key)) = (words.next(), words.next()) else {
        return Err(KeyError::Failed(format!("not a public key: {public:?}")));
    };
    let dir = known_hosts.parent().expect("known_hosts has a directory");
    crate::state_root::ensure_dir(dir).map_err(io(dir))?;
    let text = format!("{head}{alias} {kind} {key}\n");
    write_atomic(known_hosts, text.as_bytes()).map_err(io(known_hosts))
}

/// Whether `known_hosts` holds a seed's pin that no connection has confirmed: the guest on
/// this disk has never been reached with it.
pub fn seed_pin_unconfirmed(known_hosts: &Path) -> bool {
    std::fs::read_to_string(known_hosts).is_ok_and(|t| t.starts_with(SEED_PIN_UNCONFIRMED))
}

/// A connection got in with the pinned key: a seed's pin is confirmed from now on (a later
/// mismatch is a changed key, not a guest that ignored its seed). Cheap when there is nothing
/// to do (one small read).
pub fn confirm_pin(known_hosts: &Path) -> Result<(), KeyError> {
    let Ok(text) = std::fs::read_to_string(known_hosts) else {
        return Ok(());
    };
    let Some(rest) = text.strip_prefix(SEED_PIN_UNCONFIRMED) else {
        return Ok(());
    };
    write_atomic(known_hosts, rest.trim_start_matches('\n').as_bytes()).map_err(io(known_hosts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two VMs preparing their disks at once get the same key (and no error).
    #[test]
    fn concurrent_callers_get_one_project_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ssh/id_ed25519");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ensure_project_key(&key).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let on_disk = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        assert_eq!(on_disk.trim(), keys[0]);
    }

    #[test]
    fn the_project_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ssh/id_ed25519");
        let public = ensure_project_key(&key).unwrap();
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ensure_project_key(&key).unwrap(), public, "kept");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no scratch files left: {names:?}");
    }

    /// A seed's pin is marked until a connection confirms it; ssh reads it all the same.
    #[test]
    fn a_seed_pin_stays_unconfirmed_until_a_connection_gets_in() {
        let dir = tempfile::tempdir().unwrap();
        let known = dir.path().join("vm/known_hosts");
        assert!(!seed_pin_unconfirmed(&known));
        confirm_pin(&known).unwrap();
        assert!(!known.exists(), "nothing pinned, nothing written");
        pin_seeded(&known, "castra-web", "ssh-ed25519 AAAAkey castra-web").unwrap();
        assert!(seed_pin_unconfirmed(&known));
        let found = std::process::Command::new("ssh-keygen")
            .args(["-F", "castra-web", "-f"])
            .arg(&known)
            .output()
            .unwrap();
        assert!(found.status.success(), "ssh skips the mark");
        confirm_pin(&known).unwrap();
        assert!(!seed_pin_unconfirmed(&known));
        assert_eq!(
            std::fs::read_to_string(&known).unwrap(),
            "castra-web ssh-ed25519 AAAAkey\n"
        );
        // A plain pin (trust on first use, or confirmed) is never taken for a seed's.
        pin(&known, "castra-web", "ssh-ed25519 AAAAother").unwrap();
        assert!(!seed_pin_unconfirmed(&known));
    }

    #[test]
    fn a_pinned_host_key_is_what_ssh_checks_against() {
        let dir = tempfile::tempdir().unwrap();
        let pair = generate(&dir.path().join(".k.tmp"), "castra-web").unwrap();
        assert!(pair.private.contains("OPENSSH PRIVATE KEY"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let known = dir.path().join("vm/known_hosts");
        pin(&known, "castra-web", &pair.public).unwrap();
        // ssh-keygen -F finds the key under the alias the connection uses (HostKeyAlias).
        let found = std::process::Command::new("ssh-keygen")
            .args(["-F", "castra-web", "-f"])
            .arg(&known)
            .output()
            .unwrap();
        assert!(found.status.success());
        let line = String::from_utf8(found.stdout).unwrap();
        let key = pair.public.split_whitespace().nth(1).unwrap();
        assert!(line.contains(key), "{line}");
    }
}
