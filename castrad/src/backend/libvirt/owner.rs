//! Whose a domain is. A hypervisor (and its pool) may be shared: by two checkouts of one
//! project, two state directories, two users. castrad names its domains and volumes
//! `castra-<project>-<vm>-<id>`, `id` the short hash of the project's state root (which names
//! castrad's state directory and the castra.toml's path: `xml::owner_id`), and tags each
//! domain with its owner in the metadata (`xml::Owner`: the id, the state root, and for
//! messages the user and host). castrad adopts, stops, defines again or discards only a
//! domain whose tag says it is this state root's; one under its name with another tag (or
//! none) is an error that names its owner, and is left as it is.
//!
//! Domains of a castrad before owner tags (`castra-<project>-<vm>`, no id) are never looked
//! at: a VM gets a new domain and disk under the new name, and the old ones stay until the
//! user removes them (docs/REMOTE.md says how).

use super::virsh::Hypervisor;
use super::xml::{self, Facts, Owner};
use super::{domain_name, failed};
use crate::backend::BackendError;
use crate::state_root::StateRoot;

/// This castrad as the owner of `root`'s domains.
pub fn ours(root: &StateRoot) -> Owner {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    Owner {
        id: xml::owner_id(root.path()),
        state_root: root.path().to_owned(),
        user,
        host,
    }
}

/// The facts of the domain `name` if it exists and is `root`'s (None: there is no such
/// domain); Err naming the owner when it is another's, or libvirt's error.
pub fn owned(
    hv: &Hypervisor,
    root: &StateRoot,
    vm: &str,
    name: &str,
) -> Result<Option<Facts>, BackendError> {
    let text = match hv.virsh(&["metadata", name, xml::NAMESPACE]) {
        Ok(text) => text,
        Err(e) if e.message.contains("failed to get domain") => return Ok(None),
        Err(e) if e.message.contains("metadata not found") => {
            return Err(foreign(hv, vm, name, None));
        }
        Err(e) => return Err(e.into()),
    };
    let facts = xml::parse_metadata(&text);
    let ours = ours(root);
    match facts {
        Some(f) if f.owner.as_ref().is_some_and(|o| o.same(&ours)) => Ok(Some(f)),
        other => Err(foreign(hv, vm, name, other.as_ref())),
    }
}

/// The error for a domain under `root`'s name that is not `root`'s.
fn foreign(hv: &Hypervisor, vm: &str, name: &str, facts: Option<&Facts>) -> BackendError {
    let whose = match facts {
        Some(Facts {
            owner: Some(o),
            config,
            ..
        }) => format!(
            "it belongs to {} of user {} on host {} (castrad state {}, owner id {})",
            config.display(),
            o.user,
            o.host,
            o.state_root.display(),
            o.id
        ),
        Some(f) => format!(
            "it was made for {} by a castrad that did not tag its owner",
            f.config.display()
        ),
        None => "it has no castrad metadata (made by hand or by another program)".to_owned(),
    };
    failed(format!(
        "vm {vm}: the domain {name} on {} is not this castrad's: {whose}. castrad neither \
         adopts, stops, defines again nor deletes it; remove or rename it there if it is stale",
        hv.name()
    ))
}

/// Whether `record` names `root`'s domain for `vm` (a cache written under another name, by a
/// castrad before owner tags, is not followed).
pub fn current(root: &StateRoot, vm: &str, domain: &str) -> bool {
    domain == domain_name(root, vm)
}
