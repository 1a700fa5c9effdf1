//! What a project file may reach on the host, and whose file it is.
//!
//! A castra.toml may come with a repository someone else wrote, so the host paths it names
//! (a script, a payload, cloud-init files, kernel and initrd, a base image file, a mount's host
//! directory) must resolve, symlinks followed, inside the project's own directory. Only the
//! user widens that, in a file of their own that no project can write (the user config,
//! [`UserConfig`]): `allowed_paths` (directories any project may name) and `trusted_projects`
//! (project directories that may name any path). Some paths are refused whatever either says:
//! `/`, `$HOME` itself, `~/.ssh` and `~/.gnupg` (except `*.pub` files named as public keys), and
//! anything around castrad's own state, socket and image store. A read-write share may not
//! hold the files castrad reads next (castra.toml, bootstrap.toml, the script, the payload),
//! so a guest cannot rewrite them. And castra.toml and bootstrap.toml must be the user's own
//! (or root's), like git's `safe.directory`.
//!
//! [`confine`] runs in `load_confined` after every referenced path was stat'ed; it returns
//! every host path the project reads or shares, with why it is allowed, for `plan`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::diagnostics::{Source, deserialize};
use super::values::{FileCheck, Reach};
use super::{ConfigError, Project};

/// The user's own settings file, `~/.config/castra/config.toml` by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserConfig {
    /// Where it was read from (None: there was no file).
    pub path: Option<PathBuf>,
    /// Directories (and what is under them) any project may name.
    pub allowed_paths: Vec<PathBuf>,
    /// Project directories whose castra.toml may name any path not refused always.
    pub trusted_projects: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserConfig {
    allowed_paths: Option<Vec<Spanned<String>>>,
    trusted_projects: Option<Vec<Spanned<String>>>,
}

/// The longest user config read.
const MAX_USER_CONFIG_BYTES: u64 = 1 << 20;

impl UserConfig {
    /// Reads the user config at `path`; a missing file is an empty config. The file must be
    /// the user's (or root's) and writable by no one else: it decides what projects may reach.
    pub fn load(path: &Path, home: Option<&Path>) -> Result<UserConfig, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UserConfig::default()),
            Err(e) => return Err(read_error(e)),
        };
        owned_by_user(path, &meta)?;
        if meta.mode() & 0o022 != 0 {
            return Err(ConfigError::Untrusted {
                path: path.to_path_buf(),
                message: format!(
                    "is writable by others (mode {:o}); it decides which host paths projects \
                     may reach, so only you may write it: chmod go-w {}",
                    meta.mode() & 0o7777,
                    path.display()
                ),
            });
        }
        if meta.len() > MAX_USER_CONFIG_BYTES {
            return Err(ConfigError::Untrusted {
                path: path.to_path_buf(),
                message: format!("is {} bytes; at most 1 MiB is read", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let src = Source { path, text: &text };
        let raw: RawUserConfig = deserialize(&src)?;
        let paths = |list: Option<&Vec<Spanned<String>>>, key: &str| {
            list.into_iter()
                .flatten()
                .enumerate()
                .map(|(i, value)| user_path(&src, value, &format!("{key}[{i}]"), home))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(UserConfig {
            path: Some(path.to_path_buf()),
            allowed_paths: paths(raw.allowed_paths.as_ref(), "allowed_paths")?,
            trusted_projects: paths(raw.trusted_projects.as_ref(), "trusted_projects")?,
        })
    }
}

/// An absolute path or `~/…` in the user config, canonical when it exists.
fn user_path(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
    home: Option<&Path>,
) -> Result<PathBuf, ConfigError> {
    let text = value.get_ref();
    let path = match (text.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        (Some(_), None) => return Err(src.at(value, key, "`~/` needs HOME to be set")),
        (None, _) if Path::new(text).is_absolute() => PathBuf::from(text),
        (None, _) => {
            return Err(src.at(
                value,
                key,
                format!("{text:?} must be an absolute path or start with `~/`"),
            ));
        }
    };
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// Where projects end: the user's home and config, castrad's own directories.
#[derive(Debug, Clone, Default)]
pub struct Boundary {
    /// `$HOME` (canonical), if known.
    pub home: Option<PathBuf>,
    /// castrad's state directory and image store: never named by a project, nor anything in
    /// them or above them.
    pub guarded: Vec<PathBuf>,
    /// castrad's socket directory: nothing above it may be named (what is beside it may: a
    /// `--socket` in /tmp does not make /tmp's projects castrad's).
    pub guarded_above: Vec<PathBuf>,
    pub user: UserConfig,
}

impl Boundary {
    /// `home` and the guarded directories made canonical where they exist.
    pub fn new(
        home: Option<&Path>,
        guarded: &[&Path],
        guarded_above: &[&Path],
        user: UserConfig,
    ) -> Boundary {
        let canonical = |p: &&Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        Boundary {
            home: home.map(|h| canonical(&h)),
            guarded: guarded.iter().map(canonical).collect(),
            guarded_above: guarded_above.iter().map(canonical).collect(),
            user,
        }
    }
}

/// What castrad does with a host path, as `plan` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read, and sent to or booted by the guest.
    Read,
    /// Shared with the guest, which cannot write it.
    ShareReadOnly,
    /// Shared with the guest, which can write it.
    ShareReadWrite,
}

/// Why a host path outside nothing is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// It is inside the project's directory.
    Project,
    /// Under one of the user config's `allowed_paths` (that one).
    AllowedPath(PathBuf),
    /// The project is one of the user config's `trusted_projects`.
    TrustedProject,
    /// A `*.pub` file in `~/.ssh` named as public keys.
    PublicKey,
}

/// A host path the project reads or shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath {
    /// The key of its first mention (`vms[0].bootstrap.payload`).
    pub key: String,
    /// Where it leads, symlinks followed.
    pub path: PathBuf,
    pub access: Access,
    pub grant: Grant,
}

/// The file at `path` (with `meta`) must belong to the user castrad runs as, or to root.
pub(super) fn owned_by_user(path: &Path, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    let me = nix::unistd::geteuid().as_raw();
    let owner = meta.uid();
    if owner == me || owner == 0 {
        return Ok(());
    }
    let name = |uid: u32| {
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(
                || format!("uid {uid}"),
                |u| format!("{} (uid {uid})", u.name),
            )
    };
    Err(ConfigError::Untrusted {
        path: path.to_path_buf(),
        message: format!(
            "belongs to {}, not to you ({}): castrad runs only project files of your own (or \
             root's); copy the project if you mean to use it",
            name(owner),
            name(me)
        ),
    })
}

/// Checks every path `decls` named against `boundary`; returns them as `plan` lists them.
pub(super) fn confine<'a>(
    src: &Source<'_>,
    files: impl Iterator<Item = &'a FileCheck>,
    project: &Project,
    boundary: &Boundary,
) -> Result<Vec<HostPath>, ConfigError> {
    let project_dir = src.dir();
    let mut out: Vec<HostPath> = Vec::new();
    let mut shares_rw = Vec::new();
    for check in files {
        let Ok(canonical) = std::fs::canonicalize(&check.path) else {
            // Only a base image is not stat'ed by `load`; the store names a missing one.
            continue;
        };
        let access = match check.reach {
            Reach::Share if shared_rw(project, &check.path) => Access::ShareReadWrite,
            Reach::Share => Access::ShareReadOnly,
            _ => Access::Read,
        };
        let grant = grant(&canonical, check.reach, project_dir, boundary)
            .map_err(|why| src.error(Some(check.span.clone()), &check.key, why(&check.path)))?;
        if check.reach == Reach::PublicKeys {
            public_keys_only(&canonical)
                .map_err(|why| src.error(Some(check.span.clone()), &check.key, why))?;
        }
        if access == Access::ShareReadWrite {
            shares_rw.push((check, canonical.clone()));
        }
        if !out
            .iter()
            .any(|h| h.path == canonical && h.access == access)
        {
            out.push(HostPath {
                key: check.key.clone(),
                path: canonical,
                access,
                grant,
            });
        }
    }
    let read_next: Vec<PathBuf> = std::iter::once(src.path.to_path_buf())
        .chain(
            project
                .vms
                .iter()
                .flat_map(|vm| {
                    let b = &vm.bootstrap;
                    [b.metadata_path.clone(), b.script.clone(), b.payload.clone()]
                })
                .flatten(),
        )
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    for (check, share) in shares_rw {
        if let Some(inside) = read_next.iter().find(|p| p.starts_with(&share)) {
            let message = format!(
                "{} is shared read-write and holds {}, which castrad reads at the next `up`: a \
                 guest could rewrite it. Leave it read-only (`readonly = true`, the default), \
                 or share a directory that holds none of the project's own files",
                check.path.display(),
                inside.display()
            );
            return Err(src.error(Some(check.span.clone()), &check.key, message));
        }
    }
    Ok(out)
}

fn shared_rw(project: &Project, host: &Path) -> bool {
    project
        .vms
        .iter()
        .flat_map(|vm| &vm.mounts)
        .any(|m| m.host == host && !m.readonly)
}

type Why = Box<dyn Fn(&Path) -> String>;

/// Why `canonical` (named for `reach` by the project in `project_dir`) may be used, or why not.
fn grant(
    canonical: &Path,
    reach: Reach,
    project_dir: &Path,
    boundary: &Boundary,
) -> Result<Grant, Why> {
    let shown = canonical.to_path_buf();
    let refused = move |what: &'static str| -> Why {
        let shown = shown.clone();
        Box::new(move |named: &Path| {
            format!(
                "{}{} is {what}, which no project may reach (not even with your own \
                 config.toml)",
                named.display(),
                leads_to(named, &shown)
            )
        })
    };
    if canonical == Path::new("/") {
        return Err(refused("the root directory"));
    }
    let public_key = reach == Reach::PublicKeys
        && canonical.extension().is_some_and(|e| e == "pub")
        && canonical.is_file();
    if let Some(home) = &boundary.home {
        if home.starts_with(canonical) {
            return Err(refused("your home directory (or holds it)"));
        }
        for secret in [".ssh", ".gnupg"] {
            let dir = home.join(secret);
            if public_key && secret == ".ssh" && canonical.starts_with(&dir) {
                return Ok(Grant::PublicKey);
            }
            if canonical.starts_with(&dir) {
                return Err(refused(if secret == ".ssh" {
                    "in ~/.ssh"
                } else {
                    "in ~/.gnupg"
                }));
            }
        }
    }
    let guarded = boundary.guarded.iter();
    if guarded.clone().any(|g| canonical.starts_with(g))
        || guarded
            .chain(&boundary.guarded_above)
            .any(|g| g.starts_with(canonical))
    {
        return Err(refused(
            "castrad's own state, socket or image directory (or holds one)",
        ));
    }
    // A project in $HOME itself (or above it) would make all of home "the project".
    let project_holds_home = boundary
        .home
        .as_ref()
        .is_some_and(|home| home.starts_with(project_dir));
    if !project_holds_home && project_dir != Path::new("/") && canonical.starts_with(project_dir) {
        return Ok(Grant::Project);
    }
    let user = &boundary.user;
    let config = project_dir.join(super::CONFIG_FILE_NAME);
    if user
        .trusted_projects
        .iter()
        .any(|p| p == project_dir || *p == config)
    {
        return Ok(Grant::TrustedProject);
    }
    if let Some(allowed) = user.allowed_paths.iter().find(|a| canonical.starts_with(a)) {
        return Ok(Grant::AllowedPath(allowed.clone()));
    }
    let shown = canonical.to_path_buf();
    let project_dir = project_dir.to_path_buf();
    let user_config = user.path.as_ref().map_or_else(
        || "~/.config/castra/config.toml".to_owned(),
        |p| p.display().to_string(),
    );
    Err(Box::new(move |named: &Path| {
        let dir = if shown.is_dir() {
            shown.clone()
        } else {
            shown.parent().unwrap_or(&shown).to_path_buf()
        };
        format!(
            "{}{} is outside the project directory {}: a project file may name only paths \
             inside its own directory. If you mean it, allow it in your own {user_config} \
             (`allowed_paths = [\"{}\"]`), which no project can write",
            named.display(),
            leads_to(named, &shown),
            project_dir.display(),
            dir.display()
        )
    }))
}

fn leads_to(named: &Path, canonical: &Path) -> String {
    if named == canonical {
        String::new()
    } else {
        format!(" (which leads to {})", canonical.display())
    }
}

/// The longest public key file read.
const MAX_PUBLIC_KEYS_BYTES: u64 = 1 << 20;

/// Every line of the file at `path` is a public key, blank or a comment: a private key (or
/// any other file) never reaches the guest's seed.
fn public_keys_only(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PUBLIC_KEYS_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: not text: {e}", path.display()))?;
    if text.len() as u64 > MAX_PUBLIC_KEYS_BYTES {
        return Err(format!(
            "{}: more than 1 MiB of public keys",
            path.display()
        ));
    }
    match text
        .lines()
        .enumerate()
        .find(|(_, line)| !is_public_key_line(line))
    {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{} line {} is not a public key (lines must read `TYPE BASE64 [comment]`, as in a \
             .pub file); name the .pub file, never a private key",
            path.display(),
            i + 1
        )),
    }
}

/// A blank line, a comment, or `[options] TYPE BASE64 [comment]` with a known key type.
pub(super) fn is_public_key_line(line: &str) -> bool {
    const TYPES: [&str; 8] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return true;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|pair| {
        TYPES.contains(&pair[0])
            && pair[1].len() >= 16
            && pair[1]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    })
}

#[cfg(test)]
mod tests;
