//! `[[vms.mounts]]`: host directories shared with a QEMU VM. Pure: the host path is resolved
//! against castra.toml's directory and handed to `load` to stat (it must be a directory); the
//! guest path is checked and normalized here.

use std::path::{Component, Path};

use toml::Spanned;

use super::diagnostics::{Source, join_key};
use super::raw::RawMount;
use super::values::{FileCheck, Reach, resolve_path};
use super::{ConfigError, Mount};

/// The most mounts a VM may have (each is a PCI device and, for virtiofs, a daemon).
pub const MAX_MOUNTS: usize = 16;
/// The longest guest path.
const MAX_GUEST_PATH: usize = 1024;

pub(super) fn validate_mounts(
    src: &Source<'_>,
    raw: Option<&Spanned<Vec<RawMount>>>,
    vm_key: &str,
    files: &mut Vec<FileCheck>,
) -> Result<Vec<Mount>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let key = join_key(vm_key, "mounts");
    if raw.get_ref().len() > MAX_MOUNTS {
        let message = format!(
            "{} mounts; a VM may have at most {MAX_MOUNTS}",
            raw.get_ref().len()
        );
        return Err(src.at(raw, &key, message));
    }
    let mut mounts: Vec<Mount> = Vec::new();
    for (i, m) in raw.get_ref().iter().enumerate() {
        let key = format!("{key}[{i}]");
        let host_key = join_key(&key, "host");
        let host = resolve_path(src, src.dir(), &m.host, &host_key)?;
        if m.host.get_ref().chars().any(char::is_control) {
            return Err(src.at(&m.host, &host_key, "must not contain control characters"));
        }
        if let Some(problem) = option_unsafe(&host) {
            let message = format!(
                "host path {} contains {problem}; rename the directory or mount a parent",
                host.display()
            );
            return Err(src.at(&m.host, &host_key, message));
        }
        files.push(FileCheck {
            key: host_key,
            span: m.host.span(),
            path: host.clone(),
            directory_ok: true,
            directory_required: true,
            reach: Reach::Share,
        });
        let guest_key = join_key(&key, "guest");
        let guest = guest_path(m.guest.get_ref())
            .map_err(|problem| src.at(&m.guest, &guest_key, problem))?;
        if let Some(j) = mounts.iter().position(|other| other.guest == guest) {
            let message = format!("guest path {guest:?} is already mounted by mounts[{j}]");
            return Err(src.at(&m.guest, &guest_key, message));
        }
        mounts.push(Mount {
            host,
            guest,
            // Read-only unless the project says otherwise: a share the guest may write is one a
            // compromised guest may plant files in.
            readonly: m.readonly.unwrap_or(true),
        });
    }
    Ok(mounts)
}

/// Why `host` cannot be handed to virtiofsd as `-o source=PATH`, if it cannot: its option
/// parser (QEMU 7.2's, from libfuse) splits at a comma and decodes backslash escapes: a
/// directory literally named `\056\056` is served as `..`, another directory than the one
/// castrad checked and bound read-only. Refused rather than escaped: the escapes differ between
/// virtiofsd versions, and a directory name with either is rare. The whole path counts, the
/// project's directory included. `backend::qemu::mounts` asks again before it starts one.
pub fn option_unsafe(host: &Path) -> Option<&'static str> {
    let text = host.to_string_lossy();
    if text.contains(',') {
        Some("a comma, which virtiofsd's options cannot carry")
    } else if text.contains('\\') {
        Some(
            "a backslash, which virtiofsd's options read as an escape (`\\056` is `.`): it \
             would share another directory",
        )
    } else {
        None
    }
}

/// A guest mount point: absolute, no `..`, not `/`, printable; returned normalized
/// (`/src/./x/` → `/src/x`).
pub fn guest_path(raw: &str) -> Result<String, String> {
    let problem = if raw.chars().any(char::is_control) {
        Some("must not contain control characters (NUL, newline, ...)")
    } else if !raw.starts_with('/') {
        Some("must be an absolute path in the guest (starting with '/')")
    } else if raw.len() > MAX_GUEST_PATH {
        Some("is too long (at most 1024 bytes)")
    } else if Path::new(raw)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        Some("must not contain `..` components")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(format!("guest path {raw:?} {problem}"));
    }
    let parts: Vec<&str> = Path::new(raw)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        return Err(format!(
            "guest path {raw:?} must name a directory below `/`, not the root itself"
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}
