//! `backend = "libvirt"` and `[vms.libvirt]`: the connection URI (parsed here, pure), the
//! storage pool, the file pinning the hypervisor's SSH host key, `upload`. Paths of a libvirt
//! VM's images (`base_image`, `kernel`, `initrd`) are paths on the hypervisor: they must be
//! absolute and are never looked at on this machine; except `base_image` with `upload = true`,
//! a file on this machine (resolved and stat'ed like a qemu VM's) that castrad copies into the
//! pool.

use std::path::PathBuf;

use toml::Spanned;

use super::ConfigError;
use super::diagnostics::{Source, join_key};
use super::raw::RawLibvirt;

/// The URI a libvirt VM gets when `[vms.libvirt] uri` is not set.
pub const DEFAULT_URI: &str = "qemu:///session";
/// The storage pool a libvirt VM's volumes go in when `[vms.libvirt] pool` is not set.
pub const DEFAULT_POOL: &str = "castra";

/// Where and how a libvirt VM runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Libvirt {
    /// The connection URI as written (default [`DEFAULT_URI`]).
    pub uri: String,
    /// The hypervisor's SSH address, for a `qemu+ssh://` URI; None for this machine.
    pub remote: Option<Hypervisor>,
    /// The storage pool the VM's volumes (overlay, seed) are created in; it must exist.
    pub pool: String,
    /// The known_hosts file pinning the hypervisor's host key (None: ssh's own, the user's
    /// ~/.ssh/known_hosts). Checked strictly either way.
    pub known_hosts: Option<PathBuf>,
    /// `upload = true`: `base_image` is a file on this machine, copied once into `pool`
    /// (`backend::libvirt::upload`).
    pub upload: bool,
}

impl Libvirt {
    /// Whether castrad makes this VM's pool when it is missing: its own pool
    /// ([`DEFAULT_POOL`]) on this machine's session daemon (`qemu:///session`, the default
    /// URI: the user's own daemon, whose pools hold only the user's files). On
    /// `qemu:///system` and on other hosts a pool is the administrator's to create.
    pub fn makes_own_pool(&self) -> bool {
        let path = self
            .uri
            .split_once("://")
            .map(|(_, rest)| rest.split('?').next().unwrap_or(rest));
        self.remote.is_none() && self.pool == DEFAULT_POOL && path == Some("/session")
    }
}

/// The SSH side of a `qemu+ssh://[user@]host[:port]/path?query` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hypervisor {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// `keyfile=` of the URI: the identity castrad (and libvirt) log in with.
    pub keyfile: Option<PathBuf>,
}

impl Hypervisor {
    /// `[user@]host[:port]`, for messages.
    pub fn display(&self) -> String {
        let mut s = String::new();
        if let Some(user) = &self.user {
            s.push_str(user);
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        s
    }
}

/// Parses a libvirt URI castrad can drive: `qemu:///…` or `qemu+unix:///…` (this machine),
/// `qemu+ssh://[user@]host[:port]/…` (over SSH). castrad sets `command=` itself (its SSH
/// wrapper pins the host key), so `command` and `no_verify` may not be given.
pub fn parse_uri(uri: &str) -> Result<Option<Hypervisor>, String> {
    if uri.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must not contain spaces or control characters".into());
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "{uri:?} is not a URI; expected e.g. \"{DEFAULT_URI}\""
        ));
    };
    let (authority, path_query) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => return Err(format!("{uri:?} has no path; expected /session or /system")),
    };
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    if path != "/session" && path != "/system" {
        return Err(format!("{uri:?}: path {path:?} is not /session or /system"));
    }
    let mut keyfile = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "command" | "no_verify" => {
                return Err(format!(
                    "{uri:?}: castrad sets `{k}` itself (its ssh pins the hypervisor's host \
                     key); remove it, and pin the key with [vms.libvirt] known_hosts"
                ));
            }
            "keyfile" => keyfile = Some(PathBuf::from(v)),
            _ => {}
        }
    }
    match scheme {
        "qemu" | "qemu+unix" => {
            if !authority.is_empty() {
                return Err(format!(
                    "{uri:?}: a host needs a transport; use qemu+ssh://{authority}{path}"
                ));
            }
            Ok(None)
        }
        "qemu+ssh" => {
            let (user, hostport) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_owned()), h),
                None => (None, authority),
            };
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    let port = p
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("{uri:?}: port {p:?} is not 1-65535"))?;
                    (h, Some(port))
                }
                _ => (hostport, None),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.starts_with('-') {
                return Err(format!("{uri:?}: qemu+ssh needs a host name"));
            }
            if user
                .as_deref()
                .is_some_and(|u| u.is_empty() || u.starts_with('-'))
            {
                return Err(format!("{uri:?}: invalid user name"));
            }
            Ok(Some(Hypervisor {
                user,
                host: host.to_owned(),
                port,
                keyfile,
            }))
        }
        other => Err(format!(
            "{uri:?}: castrad drives libvirt's QEMU driver locally (qemu://, qemu+unix://) or \
             over SSH (qemu+ssh://), not {other:?}"
        )),
    }
}

/// `[vms.libvirt]` of a libvirt VM (`raw` None: every default).
pub(super) fn validate(
    src: &Source<'_>,
    raw: Option<&Spanned<RawLibvirt>>,
    vm_key: &str,
) -> Result<Libvirt, ConfigError> {
    let key = join_key(vm_key, "libvirt");
    let raw = raw.map(Spanned::get_ref);
    let uri = raw.and_then(|r| r.uri.as_ref());
    let remote = match uri {
        Some(u) => parse_uri(u.get_ref()).map_err(|m| {
            src.at(
                u,
                &join_key(&key, "uri"),
                format!("invalid libvirt URI {m}"),
            )
        })?,
        None => None,
    };
    let upload = raw
        .and_then(|r| r.upload.as_ref())
        .is_some_and(|u| *u.get_ref());
    let pool = match raw.and_then(|r| r.pool.as_ref()) {
        Some(p) => {
            let name = p.get_ref();
            let ok = !name.is_empty()
                && name.len() <= 64
                && !name.starts_with('-')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(src.at(
                    p,
                    &join_key(&key, "pool"),
                    format!(
                        "invalid pool name {name:?}: expected 1-64 of A-Z a-z 0-9 - _ ., not \
                         starting with -"
                    ),
                ));
            }
            name.clone()
        }
        None => DEFAULT_POOL.to_owned(),
    };
    let known_hosts = match raw.and_then(|r| r.known_hosts.as_ref()) {
        Some(k) => Some(super::values::identity_path(
            src,
            k,
            &join_key(&key, "known_hosts"),
        )?),
        None => None,
    };
    Ok(Libvirt {
        uri: uri.map_or_else(|| DEFAULT_URI.to_owned(), |u| u.get_ref().clone()),
        remote,
        pool,
        known_hosts,
        upload,
    })
}

/// A path on the hypervisor (`base_image`, `kernel`, `initrd` of a libvirt VM): absolute,
/// no control characters; never looked at here.
pub(super) fn hypervisor_path(
    src: &Source<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let raw = value.get_ref();
    if !raw.starts_with('/') || raw.chars().any(char::is_control) {
        return Err(src.at(
            value,
            key,
            format!(
                "{raw:?} must be an absolute path on the hypervisor (a libvirt VM's images are \
                 read there, not on this machine), without control characters"
            ),
        ));
    }
    Ok(Some(PathBuf::from(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(parse_uri("qemu:///session"), Ok(None));
        assert_eq!(parse_uri("qemu:///system?socket=/x/s"), Ok(None));
        let h = parse_uri("qemu+ssh://me@bigbox:2222/session?keyfile=/k&proxy=netcat")
            .unwrap()
            .unwrap();
        assert_eq!(h.user.as_deref(), Some("me"));
        assert_eq!(h.host, "bigbox");
        assert_eq!(h.port, Some(2222));
        assert_eq!(h.keyfile.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(h.display(), "me@bigbox:2222");
        let h = parse_uri("qemu+ssh://bigbox/system").unwrap().unwrap();
        assert_eq!((h.user, h.port), (None, None));
        for bad in [
            "qemu+tcp://h/system",
            "qemu:///other",
            "qemu://host/system",
            "qemu+ssh:///system",
            "qemu+ssh://h:0/system",
            "qemu+ssh://-oProxyCommand=x/system",
            "qemu+ssh://h/system?no_verify=1",
            "qemu+ssh://h/system?command=/bin/sh",
            "session",
            "qemu:///session\n",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }
}
