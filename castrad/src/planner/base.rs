//! What a plan says of a VM's base image: the image its disk is made on (or a new disk would
//! be), and where that stands (in the image store, to be fetched or imported, the user's own
//! file, a disk made before the store). Only records and stats are read, and the store's
//! memo (`Store::lookup`): no image is read here, except a `base_image_import = false` file
//! whose digest the hash cache does not have yet (the first plan reads it once).

use castra_api as api;

use crate::config::{BackendKind, BaseImage, Vm};
use crate::hashing::{self, HashError};
use crate::images::{self, Check, Lookup, Source, Store, disk};
use crate::state_root::StateRoot;

/// What [`facts`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseFacts {
    /// The sha256 (hex) of the image the VM's disk is on, or a new one would be made on; None
    /// while castrad cannot know it without fetching or reading the image.
    pub sha256: Option<String>,
    /// Image bytes read to know it (a `base_image_import = false` file's first hash).
    pub bytes_read: u64,
    pub plan: api::BaseImagePlan,
    pub warnings: Vec<String>,
}

/// The base image facts of `vm`; None for a VM without a base image (external).
pub fn facts(root: &StateRoot, store: &Store, vm: &Vm) -> Result<Option<BaseFacts>, HashError> {
    let Some(base) = &vm.base_image else {
        return Ok(None);
    };
    let source = match base {
        BaseImage::Hypervisor(path) => {
            return Ok(Some(BaseFacts {
                sha256: None,
                bytes_read: 0,
                plan: api::BaseImagePlan {
                    source: path.display().to_string(),
                    digest: None,
                    status: api::BaseImageStatus::Hypervisor,
                    verified: false,
                    message: format!(
                        "{} on the hypervisor (never read from here)",
                        path.display()
                    ),
                },
                warnings: Vec::new(),
            }));
        }
        BaseImage::Local(source) => source,
    };
    let mut warnings = Vec::new();
    let verified = !matches!(
        source,
        Source::Url {
            check: Check::Unverified,
            ..
        }
    );
    if !verified {
        warnings.push(format!(
            "base image {} has no checksum (base_image_digest or base_image_checksums): castrad \
             keeps what the server sends, unverified",
            source.label()
        ));
    }
    if let Source::Url {
        url,
        check: Check::Sums(sums),
    } = source
        && url.starts_with("http://")
        && sums.starts_with("http://")
    {
        warnings.push(format!(
            "base image {url} and its checksums file both come over plain http: the check \
             catches a corrupted download, not one changed on the way (give base_image_digest, \
             or an https:// checksums file)"
        ));
    }
    let paths = root.vm(&vm.name);
    if vm.backend == BackendKind::Libvirt {
        return Ok(Some(uploaded(root, store, vm, source, verified, warnings)?));
    }
    let disk = vm.backend == BackendKind::Qemu && paths.overlay.exists();
    let configured = || match source {
        // The user's own file (import = false) is known by its hash; any other source by the
        // store's memo only.
        Source::File { import: false, .. } => None,
        _ => match store.lookup(source, vm.image_mirror.as_deref()) {
            Lookup::Stored(s) => Some(s.record.sha256),
            Lookup::Missing { sha256 } => sha256,
        },
    };
    let plan = |sha256: Option<&str>, status, message: String| api::BaseImagePlan {
        source: source.label(),
        digest: sha256.map(|h| format!("sha256:{h}")),
        status,
        verified,
        message,
    };
    if disk {
        if let Some(record) = disk::read(&paths.base_record) {
            let status = match (record.stored, source) {
                (true, _) => api::BaseImageStatus::Stored,
                (false, Source::File { import: false, .. }) => api::BaseImageStatus::ByPath,
                (false, _) => api::BaseImageStatus::PredatesStore,
            };
            if status == api::BaseImageStatus::PredatesStore {
                warnings.push(predates_store(vm, &record.backing));
            }
            match images::FileIdentity::of(&record.backing) {
                Ok(now) if now != record.identity => warnings.push(format!(
                    "the base image {} of this disk changed since it was last checked ({}): \
                     the next start reads it again and refuses to boot the disk unless its \
                     content is unchanged",
                    record.backing.display(),
                    now.changes_since(&record.identity).join(", ")
                )),
                Ok(_) => {}
                Err(e) => warnings.push(format!(
                    "the base image {} of this disk cannot be read ({e}): castrad will not boot \
                     the disk without it",
                    record.backing.display()
                )),
            }
            if let Some(now) = configured()
                && now != record.sha256
            {
                warnings.push(format!(
                    "base_image now names other contents (sha256:{now}) than this disk was made \
                     from (sha256:{}, {}): the disk keeps its base; `castractl down {} \
                     --discard`, then `up`, makes a new disk from the new image",
                    record.sha256, record.source, vm.name
                ));
            }
            let message = match status {
                api::BaseImageStatus::Stored => format!(
                    "the disk is on the image store's copy of {} (sha256:{})",
                    record.source, record.sha256
                ),
                api::BaseImageStatus::ByPath => format!(
                    "the disk is backed by {} itself (base_image_import = false), checked before \
                     every start",
                    record.backing.display()
                ),
                _ => format!(
                    "the disk is backed by {} directly (made before the image store)",
                    record.backing.display()
                ),
            };
            return Ok(Some(BaseFacts {
                sha256: Some(record.sha256.clone()),
                bytes_read: 0,
                plan: plan(Some(&record.sha256), status, message),
                warnings,
            }));
        }
        // A disk made before the image store, not started since: its record comes with its
        // next start. Its base is the configured file, as castrad always had it.
        if let Source::File { path, .. } = source {
            let (sha256, bytes_read) = hashing::cached_file_hash(root, path)?;
            warnings.push(predates_store(vm, path));
            let message = format!(
                "the disk is backed by {} directly (made before the image store)",
                path.display()
            );
            return Ok(Some(BaseFacts {
                plan: plan(Some(&sha256), api::BaseImageStatus::PredatesStore, message),
                sha256: Some(sha256),
                bytes_read,
                warnings,
            }));
        }
    }
    if let Source::File {
        path,
        import: false,
        ..
    } = source
    {
        let (sha256, bytes_read) = hashing::cached_file_hash(root, path)?;
        let message = format!(
            "a new disk is backed by {} itself (base_image_import = false), checked before every \
             start",
            path.display()
        );
        return Ok(Some(BaseFacts {
            plan: plan(Some(&sha256), api::BaseImageStatus::ByPath, message),
            sha256: Some(sha256),
            bytes_read,
            warnings,
        }));
    }
    let (sha256, status, message) = match store.lookup(source, vm.image_mirror.as_deref()) {
        Lookup::Stored(s) => {
            let message = format!(
                "in the image store as sha256:{} ({})",
                s.record.sha256,
                s.path.display()
            );
            (Some(s.record.sha256), api::BaseImageStatus::Stored, message)
        }
        Lookup::Missing { sha256 } => match source {
            Source::File { path, .. } => (
                sha256,
                api::BaseImageStatus::Import,
                format!(
                    "`up` copies {} into the image store (hashed as it is copied); the disk is \
                     made on the copy",
                    path.display()
                ),
            ),
            _ => (
                sha256,
                api::BaseImageStatus::Fetch,
                format!("`up` downloads it {}", fetch_words(source, vm, store)),
            ),
        },
    };
    Ok(Some(BaseFacts {
        plan: plan(sha256.as_deref(), status, message),
        sha256,
        bytes_read: 0,
        warnings,
    }))
}

/// A libvirt VM's uploaded base: the record its disk was made with (the volume on the
/// hypervisor, from the store), else for a disk uploaded before the image store the file's
/// hash (through the hash cache, as then), else the store's memo of the configured source.
fn uploaded(
    root: &StateRoot,
    store: &Store,
    vm: &Vm,
    source: &Source,
    verified: bool,
    warnings: Vec<String>,
) -> Result<BaseFacts, HashError> {
    let paths = root.vm(&vm.name);
    let plan = |sha256: Option<&str>, status, message: String| api::BaseImagePlan {
        source: source.label(),
        digest: sha256.map(|h| format!("sha256:{h}")),
        status,
        verified,
        message,
    };
    if let Some(record) = disk::read(&paths.base_record) {
        let message = format!(
            "the disk is on the volume {} on the hypervisor, uploaded from the image store's copy \
             of {} (sha256:{})",
            record.backing.display(),
            record.source,
            record.sha256
        );
        return Ok(BaseFacts {
            plan: plan(Some(&record.sha256), api::BaseImageStatus::Stored, message),
            sha256: Some(record.sha256),
            bytes_read: 0,
            warnings,
        });
    }
    if paths.disk_id.exists()
        && let Source::File { path, .. } = source
    {
        let (sha256, bytes_read) = hashing::cached_file_hash(root, path)?;
        let message = format!(
            "the disk's base was uploaded from {} before the image store",
            path.display()
        );
        return Ok(BaseFacts {
            plan: plan(Some(&sha256), api::BaseImageStatus::Stored, message),
            sha256: Some(sha256),
            bytes_read,
            warnings,
        });
    }
    let (sha256, status, message) = match store.lookup(source, vm.image_mirror.as_deref()) {
        Lookup::Stored(s) => (
            Some(s.record.sha256.clone()),
            api::BaseImageStatus::Stored,
            format!(
                "in the image store as sha256:{}; a new disk uploads it to the pool",
                s.record.sha256
            ),
        ),
        Lookup::Missing { sha256 } => (
            sha256,
            match source {
                Source::File { .. } => api::BaseImageStatus::Import,
                _ => api::BaseImageStatus::Fetch,
            },
            format!(
                "`up` puts it in the image store ({}), then uploads it to the pool",
                fetch_words(source, vm, store)
            ),
        ),
    };
    Ok(BaseFacts {
        plan: plan(sha256.as_deref(), status, message),
        sha256,
        bytes_read: 0,
        warnings,
    })
}

/// "from URL, checked against …".
fn fetch_words(source: &Source, vm: &Vm, store: &Store) -> String {
    match source {
        Source::Url { url, check } => format!("from {url}, {}", checked(check)),
        Source::Catalog { name } => match images::catalog::get(name) {
            Some(entry) => {
                let mirror = vm.image_mirror.as_deref().or(store.mirror());
                let (url, sums) = images::catalog::resolve(name, entry, mirror);
                format!("from {url}, checked against {sums}")
            }
            None => format!("({name} is not in this castrad's catalog)"),
        },
        Source::File { path, .. } => format!("from {}", path.display()),
    }
}

fn checked(check: &Check) -> String {
    match check {
        Check::Digest(d) => format!("checked against {d}"),
        Check::Sums(url) => format!("checked against {url}"),
        Check::Unverified => "unverified (no checksum given)".to_owned(),
    }
}

fn predates_store(vm: &Vm, file: &std::path::Path) -> String {
    format!(
        "this disk predates the image store: it is backed by {} directly, and castrad refuses to \
         boot it once that file changes; `castractl image adopt {}` moves it onto a copy in the \
         store",
        file.display(),
        vm.name
    )
}

#[cfg(test)]
mod tests;
