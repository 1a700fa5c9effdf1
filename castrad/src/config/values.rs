//! One value at a time, shared by castra.toml and bootstrap.toml: names, bounded integers,
//! memory sizes, paths, remote directories, env tables, ssh words and options. Each returns
//! the value or a [`ConfigError`] pointing at it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::diagnostics::{Source, join_key, key_segment};
use super::raw::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// Value validators (shared by castra.toml and bootstrap.toml)
// ---------------------------------------------------------------------------------------------

pub(super) fn validate_name(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
) -> Result<String, ConfigError> {
    let name = value.get_ref();
    if is_valid_name(name) {
        Ok(name.clone())
    } else {
        Err(src.at(
            value,
            key,
            format!("invalid {what} name {name:?}: {NAME_RULES}"),
        ))
    }
}

/// `[a-z0-9-]{1,63}`, not starting with `-`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn check_expanded_name_length(
    src: &Source<'_>,
    name: &Spanned<String>,
    key: &str,
    replicas: u32,
) -> Result<(), ConfigError> {
    if replicas <= 1 {
        return Ok(());
    }
    let longest = format!("{}-{}", name.get_ref(), replicas - 1);
    if longest.len() <= MAX_NAME_LEN {
        return Ok(());
    }
    let message = format!(
        "VM name {:?} with replicas = {replicas} expands to {longest:?} ({} characters); \
         expanded names must be at most {MAX_NAME_LEN} characters",
        name.get_ref(),
        longest.len()
    );
    Err(src.at(name, key, message))
}

/// An integer in `min..=max`.
pub(super) fn bounded(
    src: &Source<'_>,
    value: &Spanned<i64>,
    key: &str,
    min: i64,
    max: i64,
    what: &str,
) -> Result<i64, ConfigError> {
    let v = *value.get_ref();
    if (min..=max).contains(&v) {
        return Ok(v);
    }
    let message = if max == i64::MAX {
        format!("{what} must be at least {min}, got {v}")
    } else {
        format!("{what} must be between {min} and {max}, got {v}")
    };
    Err(src.at(value, key, message))
}

/// `apply_timeout_secs` or `verify_timeout_secs` (`name`): 1 second to a week.
pub(super) fn step_timeout(
    src: &Source<'_>,
    value: &Spanned<i64>,
    key: &str,
    name: &str,
) -> Result<u64, ConfigError> {
    let max = super::MAX_STEP_TIMEOUT_SECS as i64;
    Ok(bounded(src, value, key, 1, max, name)? as u64)
}

/// `output_log_max` or `serial_log_max` (`name`): a size like `"64 MiB"` or `"256 KiB"` (or
/// an integer number of MiB), 1 KiB to 1 TiB; in bytes.
pub(super) fn log_size(
    src: &Source<'_>,
    value: &Spanned<RawMemory>,
    key: &str,
    name: &str,
) -> Result<u64, ConfigError> {
    let expected = "expected a size like \"64 MiB\" or \"256 KiB\", or an integer number of MiB";
    let bytes = match value.get_ref() {
        RawMemory::Int(n) => u64::try_from(*n).ok().and_then(|n| n.checked_mul(1 << 20)),
        RawMemory::Text(text) => parse_size_bytes(text),
    };
    let shown = match value.get_ref() {
        RawMemory::Int(n) => n.to_string(),
        RawMemory::Text(text) => format!("{text:?}"),
    };
    match bytes {
        Some(b) if (super::MIN_LOG_BYTES..=super::MAX_LOG_BYTES).contains(&b) => Ok(b),
        Some(_) => Err(src.at(
            value,
            key,
            format!("{name} must be between 1 KiB and 1 TiB, got {shown}; {expected}"),
        )),
        None => Err(src.at(value, key, format!("invalid {name} {shown}; {expected}"))),
    }
}

/// `"256 KiB"`, `"64MiB"`, `"1 G"`... in bytes; None when it is not such a size or too large.
fn parse_size_bytes(text: &str) -> Option<u64> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "k" | "kib" => 10,
        "" | "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `keep_run_logs`: at least 1 (the run just written is always kept).
pub(super) fn keep_run_logs(
    src: &Source<'_>,
    value: &Spanned<i64>,
    key: &str,
) -> Result<u32, ConfigError> {
    let max = i64::from(super::MAX_KEEP_RUN_LOGS);
    Ok(bounded(src, value, key, 1, max, "keep_run_logs")? as u32)
}

/// `handshake_timeout_secs`: 1 to [`MAX_HANDSHAKE_TIMEOUT_SECS`].
pub(super) fn handshake_timeout(
    src: &Source<'_>,
    value: &Spanned<i64>,
    key: &str,
) -> Result<u64, ConfigError> {
    let max = MAX_HANDSHAKE_TIMEOUT_SECS as i64;
    Ok(bounded(src, value, key, 1, max, "handshake_timeout_secs")? as u64)
}

pub(super) fn port(src: &Source<'_>, value: &Spanned<i64>, key: &str) -> Result<u16, ConfigError> {
    Ok(bounded(src, value, key, 1, i64::from(u16::MAX), "port")? as u16)
}

pub(super) fn memory_mib(
    src: &Source<'_>,
    value: &Spanned<RawMemory>,
    key: &str,
) -> Result<u64, ConfigError> {
    let parsed = match value.get_ref() {
        RawMemory::Int(n) if *n >= 1 => Ok(*n as u64),
        RawMemory::Int(n) => Err(format!(
            "memory must be at least 1 MiB, got {n}; {MEMORY_EXPECTED}"
        )),
        RawMemory::Text(text) => parse_memory_mib(text),
    };
    parsed.map_err(|message| src.at(value, key, message))
}

/// `disk`: a size like `"20 GiB"` (or an integer number of MiB), at least 1 MiB.
pub(super) fn disk_mib(
    src: &Source<'_>,
    value: &Spanned<RawMemory>,
    key: &str,
) -> Result<u64, ConfigError> {
    let expected = "expected a size like \"20 GiB\", \"512 MiB\" or an integer number of MiB";
    let parsed = match value.get_ref() {
        RawMemory::Int(n) if *n >= 1 => Ok(*n as u64),
        RawMemory::Int(n) => Err(format!("disk must be at least 1 MiB, got {n}; {expected}")),
        RawMemory::Text(text) => {
            parse_memory_mib(text).map_err(|_| format!("invalid disk size {text:?}; {expected}"))
        }
    };
    parsed.map_err(|message| src.at(value, key, message))
}

/// Parses `"2 GiB"`, `"512 MiB"`, `"2GiB"`, `"2G"`, `"1024"` (MiB) into MiB.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid memory size {text:?}; {MEMORY_EXPECTED}");
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "m" | "mib" => 1,
        "g" | "gib" => 1024,
        "t" | "tib" => 1024 * 1024,
        _ => return Err(invalid()),
    };
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let mib = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("memory size {text:?} is too large"))?;
    if mib == 0 {
        return Err(format!(
            "memory must be at least 1 MiB, got {text:?}; {MEMORY_EXPECTED}"
        ));
    }
    Ok(mib)
}

pub(super) fn no_nul(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    if value.get_ref().contains('\0') {
        return Err(src.at(value, key, "must not contain a NUL character"));
    }
    Ok(value.get_ref().clone())
}

/// Resolves a path value against `base`, dropping `.` components.
pub(super) fn resolve_path(
    src: &Source<'_>,
    base: &Path,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    let raw = value.get_ref();
    if raw.is_empty() {
        return Err(src.at(value, key, "expected a path, found an empty string"));
    }
    if raw.contains('\0') {
        return Err(src.at(value, key, "paths must not contain a NUL character"));
    }
    Ok(base.join(raw).components().collect())
}

/// A path `load` must stat: `key` and `span` locate it in castra.toml.
pub(super) struct FileCheck {
    pub(super) key: String,
    pub(super) span: Range<usize>,
    pub(super) path: PathBuf,
    pub(super) directory_ok: bool,
    /// A directory and nothing else (a mount's host side).
    pub(super) directory_required: bool,
    /// What castrad does with it: how far outside the project it may be (`super::reach`).
    pub(super) reach: Reach,
}

/// What castrad does with a host path a project names, which decides where it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// Read and sent to (or booted by) the guest: script, payload, user_data, kernel, initrd.
    Read,
    /// A base image file: read by the image store (not stat'ed by `load`: the store says
    /// what is wrong with a missing one).
    BaseImage,
    /// Public keys (`cloud_init.authorized_keys`): only public key lines are ever read.
    PublicKeys,
    /// Shared with the guest (`[[vms.mounts]] host`); whether read-only is the mount's.
    Share,
}

/// Resolves an optional file path and records that `load` must stat it.
pub(super) fn file_path(
    src: &Source<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    directory_ok: bool,
    files: &mut Vec<FileCheck>,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let path = resolve_path(src, src.dir(), value, key)?;
    files.push(FileCheck {
        key: key.to_owned(),
        span: value.span(),
        path: path.clone(),
        directory_ok,
        directory_required: false,
        reach: Reach::Read,
    });
    Ok(Some(path))
}

pub(super) fn verify_path(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let raw = value.get_ref();
    let path = Path::new(raw);
    let problem = if raw.contains('\0') || raw.contains('\n') {
        Some("must not contain NUL or newline characters")
    } else if path.has_root() {
        Some("must be relative to remote_dir, not absolute")
    } else if path.components().any(|c| c == Component::ParentDir) {
        Some("must not contain `..` components")
    } else if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        Some("must name a path relative to remote_dir, not be empty")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(src.at(value, key, format!("verify_path {raw:?} {problem}"))),
        None => Ok(raw.clone()),
    }
}

/// Checks a remote_dir (template, or substituted when `vm` is given).
pub(super) fn check_remote_dir(
    src: &Source<'_>,
    dir: &str,
    span: Range<usize>,
    key: &str,
    vm: Option<&str>,
) -> Result<(), ConfigError> {
    let problem = if dir.contains('\0') || dir.contains('\n') {
        Some("must not contain NUL or newline characters")
    } else if !dir.starts_with('/') {
        Some("must be an absolute path (starting with '/')")
    } else {
        None
    };
    let Some(problem) = problem else {
        return Ok(());
    };
    let subject = match vm {
        Some(vm) => format!("remote_dir {dir:?} (for VM {vm:?})"),
        None => format!("remote_dir {dir:?}"),
    };
    Err(src.error(Some(span), key, format!("{subject} {problem}")))
}

pub(super) fn validate_env(
    src: &Source<'_>,
    raw: Option<&RawEnv>,
    key: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut entries: Vec<_> = raw.into_iter().flatten().collect();
    entries.sort_by_key(|(name, _)| name.span().start);
    let mut env = BTreeMap::new();
    for (name, value) in entries {
        let entry_key = join_key(key, &key_segment(name.get_ref()));
        check_env_name(src, name, &entry_key)?;
        let text = match value.get_ref() {
            EnvValue::Text(text) => text,
            EnvValue::Other(kind) => {
                let message = format!("expected a string, found {kind} (quote the value)");
                return Err(src.at(value, &entry_key, message));
            }
        };
        if text.contains('\0') {
            return Err(src.at(value, &entry_key, "environment values must not contain NUL"));
        }
        env.insert(name.get_ref().clone(), text.clone());
    }
    Ok(env)
}

pub(super) fn check_env_name(
    src: &Source<'_>,
    name: &Spanned<String>,
    key: &str,
) -> Result<(), ConfigError> {
    let n = name.get_ref();
    let mut chars = n.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        let message = format!(
            "invalid environment variable name {n:?}; expected letters, digits and '_', not \
             starting with a digit ([A-Za-z_][A-Za-z0-9_]*)"
        );
        return Err(src.at(name, key, message));
    }
    if n.starts_with("CASTRA_") {
        let message = format!(
            "environment variable {n:?} uses the reserved prefix CASTRA_ (castrad sets those \
             itself); choose another name"
        );
        return Err(src.at(name, key, message));
    }
    Ok(())
}

/// Validates `[ssh]` keys (no defaults applied). Paths resolve against `src`'s directory.
pub(super) fn validate_ssh(src: &Source<'_>, raw: &RawSsh, key: &str) -> Result<Ssh, ConfigError> {
    let k = |name: &str| join_key(key, name);
    let mut ssh = Ssh::default();
    if let Some(host) = &raw.host {
        ssh.host = Some(ssh_word(src, host, &k("host"), "host")?);
    }
    if let Some(p) = &raw.port {
        ssh.port = Some(port(src, p, &k("port"))?);
    }
    if let Some(user) = &raw.user {
        ssh.user = Some(ssh_word(src, user, &k("user"), "user")?);
    }
    if let Some(identity) = &raw.identity {
        ssh.identity = Some(identity_path(src, identity, &k("identity"))?);
    }
    for (i, option) in raw.options.iter().flatten().enumerate() {
        ssh.options
            .push(ssh_option(src, option, &format!("{}[{i}]", k("options")))?);
    }
    Ok(ssh)
}

/// A host or user name that is safe to pass to ssh as an argument.
pub(super) fn ssh_word(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
) -> Result<String, ConfigError> {
    let v = value.get_ref();
    if !castra_api::ssh::is_word(v) {
        let message = format!(
            "invalid ssh {what} {v:?}; expected a non-empty value without whitespace or control \
             characters, not starting with '-'"
        );
        return Err(src.at(value, key, message));
    }
    Ok(v.clone())
}

/// `identity`: a path (`~/` expanded) without control characters, because it is also written
/// into OpenSSH configuration (`castractl ssh-config`), where a newline would start a line
/// of the project's choosing.
pub(super) fn identity_path(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    let path = expand_identity(src, value, key)?;
    if path.to_string_lossy().chars().any(char::is_control) {
        let message = format!(
            "identity path {:?} must not contain control characters (it is written into ssh \
             configuration)",
            path.display()
        );
        return Err(src.at(value, key, message));
    }
    Ok(path)
}

fn expand_identity(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    let Some(rest) = value.get_ref().strip_prefix("~/") else {
        return resolve_path(src, src.dir(), value, key);
    };
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            src.at(
                value,
                key,
                "cannot expand `~/`: the HOME environment variable is not set",
            )
        })?;
    let expanded = Spanned::new(value.span(), rest.to_owned());
    if rest.is_empty() {
        return Ok(PathBuf::from(home));
    }
    resolve_path(src, Path::new(&home), &expanded, key)
}

/// One `-o` option: `Key=Value`, the key on the allow-list of [`super::ssh_options`] (any
/// case, as ssh reads it), the value non-empty and free of control characters (a newline
/// would start another option line).
pub(super) fn ssh_option(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let v = value.get_ref();
    if !castra_api::ssh::is_option(v) {
        let message = format!(
            "invalid ssh option {v:?}; expected \"Key=Value\" with an alphanumeric key and a \
             non-empty value without control characters, e.g. \"ServerAliveInterval=15\""
        );
        return Err(src.at(value, key, message));
    }
    let name = v.split_once('=').map_or(v.as_str(), |(name, _)| name);
    if super::ssh_options::allowed(name).is_none() {
        let message = format!(
            "ssh option `{name}` is not allowed in a project file: {}. Allowed (names ignore \
             case): {}; anything else belongs in your own ~/.ssh/config",
            super::ssh_options::why_not(name),
            super::ssh_options::ALLOWED.join(", ")
        );
        return Err(src.at(value, key, message));
    }
    Ok(v.clone())
}
