//! The image store's methods (`castra.image*`): what the store holds, pulling into it (one
//! image by URL, catalog name or path, or a project's base images), removing from it, and the
//! catalog. `crate::images::Store` does the work; this module checks requests, turns them
//! into store calls (blocking ones on the blocking pool) and the store's types into wire
//! types, and publishes a pull's progress as `ImageFetch` events under the pull's operation.
//!
//! The rules for what `image` may name are castra.toml's for `base_image`
//! (`config::base_image`): an `http://` or `file://` URL needs a checksum, an `https://` one
//! without is kept unverified, a path is absolute here (castractl makes it so).

use std::path::Path;

use castra_api as api;

use super::{Daemon, DaemonError, selected};
use crate::images::{self, Check, Digest, ImageError, Source, catalog};

impl Daemon {
    /// `castra.imageList`: every image in the store, newest first, with its users.
    pub async fn image_list(&self) -> Result<api::ImageListResult, DaemonError> {
        let store = self.images.clone();
        let listed = blocking("the image store's listing", move || store.list()).await?;
        Ok(api::ImageListResult {
            store: self.images.dir().to_owned(),
            images: listed.iter().map(|l| wire(&l.stored, &l.users)).collect(),
        })
    }

    /// `castra.imagePull`: fetches or imports `image`, or the base images of the project at
    /// `config` (of `vms`, or of every VM whose image the store keeps), one after the other,
    /// reading checksums files again. Returns once all are in the store; the first failure
    /// ends the pull (what was already stored stays).
    pub async fn image_pull(
        &self,
        p: &api::ImagePullParams,
    ) -> Result<api::ImagePullResult, DaemonError> {
        let (targets, mirror) = match (&p.image, &p.config) {
            (Some(image), None) => {
                if !p.vms.is_empty() {
                    return Err(invalid("`vms` goes with `config`, not with `image`"));
                }
                let source = pull_source(image, p.digest.as_deref(), p.checksums.as_deref())
                    .map_err(DaemonError::InvalidParams)?;
                (vec![(String::new(), source)], None)
            }
            (None, Some(config)) => {
                if p.digest.is_some() || p.checksums.is_some() {
                    return Err(invalid(
                        "`digest` and `checksums` go with `image`; a project's images are \
                         checked as its castra.toml says",
                    ));
                }
                self.project_sources(config, &p.vms).await?
            }
            (Some(_), Some(_)) => return Err(invalid("give `image` or `config`, not both")),
            (None, None) => {
                return Err(invalid(
                    "give `image` (a URL, a catalog name or an absolute path) or `config` \
                     (a project, whose VMs' base images are pulled)",
                ));
            }
        };
        let operation = crate::ids::operation_id();
        let mut pulled = Vec::with_capacity(targets.len());
        for (vm, source) in &targets {
            let stored = self
                .fetch(&operation, vm, source, mirror.as_deref())
                .await
                .map_err(|source| match vm.as_str() {
                    "" => DaemonError::Image(source),
                    _ => DaemonError::VmImage {
                        vm: vm.clone(),
                        source,
                    },
                })?;
            pulled.push(stored);
        }
        // Who uses each image: a project's images may already have disks made on them.
        let store = self.images.clone();
        let listed = blocking("the image store's listing", move || store.list()).await?;
        let images = pulled
            .iter()
            .map(|stored| {
                let users = listed
                    .iter()
                    .find(|l| l.stored.record.sha256 == stored.record.sha256)
                    .map_or(&[][..], |l| &l.users[..]);
                wire(stored, users)
            })
            .collect();
        Ok(api::ImagePullResult { operation, images })
    }

    /// One image into the store, its progress published as `ImageFetch` about `vm` ("" for a
    /// pull by image) under `operation`. No disk is made on it here, so its lease goes at once.
    async fn fetch(
        &self,
        operation: &str,
        vm: &str,
        source: &Source,
        mirror: Option<&str>,
    ) -> Result<images::Stored, ImageError> {
        let bus = self.bus.clone();
        let mut progress = |p: &images::Progress| {
            bus.publish(Some(operation), crate::vm::image_fetch(vm, p));
        };
        let (stored, _lease) = self
            .images
            .ensure(source, mirror, true, &mut progress)
            .await?;
        Ok(stored)
    }

    /// The store images of a project's VMs (of `names`, all by default), each source once
    /// (under the first VM that names it), and the project's mirror. A VM named in `names`
    /// whose image the store does not keep is an error; unnamed ones are passed over.
    async fn project_sources(
        &self,
        config: &Path,
        names: &[String],
    ) -> Result<(Vec<(String, Source)>, Option<String>), DaemonError> {
        let entry = self.load_project(config).await?;
        let mut out: Vec<(String, Source)> = Vec::new();
        for vm in selected(&entry.project, names)? {
            let why = match vm.base_image.as_ref().and_then(|b| b.local()) {
                Some(Source::File { import: false, .. }) => {
                    "its base_image_import = false: its disk is backed by the file itself"
                }
                Some(source) => {
                    if !out.iter().any(|(_, s)| s == source) {
                        out.push((vm.name.clone(), source.clone()));
                    }
                    continue;
                }
                None if vm.base_image.is_some() => "its base image is a path on its hypervisor",
                None => "it has no base image",
            };
            if names.contains(&vm.name) {
                return Err(DaemonError::NoStoreImage {
                    vm: vm.name.clone(),
                    why,
                });
            }
        }
        Ok((out, entry.project.image_mirror.clone()))
    }

    /// `castra.imageRemove`: the image whose digest starts with `digest`.
    pub async fn image_remove(&self, digest: &str) -> Result<api::ImageRemoveResult, DaemonError> {
        let prefix = digest_prefix(digest).map_err(DaemonError::InvalidParams)?;
        let store = self.images.clone();
        let removed = blocking("removing an image", move || store.remove(&prefix)).await??;
        Ok(removed_result(&removed))
    }

    /// `castra.imagePrune`: every image no disk is made on.
    pub async fn image_prune(&self) -> Result<api::ImageRemoveResult, DaemonError> {
        let store = self.images.clone();
        let removed = blocking("pruning the image store", move || store.prune()).await??;
        Ok(removed_result(&removed))
    }

    /// `castra.imageCatalog`: the catalog resolved with the project's mirror (given `config`
    /// and one), else castrad's.
    pub async fn image_catalog(
        &self,
        config: Option<&Path>,
    ) -> Result<api::ImageCatalogResult, DaemonError> {
        let project_mirror = match config {
            Some(config) => self
                .load_project(config)
                .await?
                .project
                .image_mirror
                .clone(),
            None => None,
        };
        let mirror = project_mirror.or_else(|| self.images.mirror().map(str::to_owned));
        Ok(catalog_result(mirror))
    }

    /// `castra.imageAdopt`: moves the disks of `vms` (by default every VM whose disk predates
    /// the store) onto the store's copy of their base image.
    /// A VM named in `vms` must be a stopped QEMU VM with a disk (one already on the store is
    /// reported `already`); by default those whose disks predate the store are moved, the
    /// others passed over. The import's progress is published as `ImageFetch` events.
    pub async fn image_adopt(
        &self,
        config: &Path,
        vms: &[String],
    ) -> Result<api::ImageAdoptResult, DaemonError> {
        let entry = self.load_project(config).await?;
        let named = !vms.is_empty();
        let operation = crate::ids::operation_id();
        let mut out = Vec::new();
        for vm in selected(&entry.project, vms)? {
            let paths = entry.root.vm(&vm.name);
            let refuse = |why: String| DaemonError::CannotAdopt {
                vm: vm.name.clone(),
                why,
            };
            if vm.backend != crate::config::BackendKind::Qemu || !paths.overlay.exists() {
                if named {
                    return Err(refuse(
                        "only a QEMU VM's disk is made on a base image here, and it has none \
                         (`castractl up` makes one on the image store's copy)"
                            .into(),
                    ));
                }
                continue;
            }
            let record = crate::images::disk::read(&paths.base_record);
            let by_choice = matches!(
                vm.base_image.as_ref().and_then(|b| b.local()),
                Some(Source::File { import: false, .. })
            );
            if !named && (record.as_ref().is_some_and(|r| r.stored) || by_choice) {
                continue;
            }
            let running = self
                .existing_vm_handle(&entry.root, &vm.name)
                .is_some_and(|h| h.snapshot().machine.is_some());
            if running {
                return Err(refuse(format!(
                    "it is running (its QEMU has the disk open): `castractl down {}` first",
                    vm.name
                )));
            }
            let bus = self.bus.clone();
            let mut progress = |p: &images::Progress| {
                bus.publish(Some(&operation), crate::vm::image_fetch(&vm.name, p));
            };
            let adopted = crate::backend::qemu::base::adopt(
                &entry.root,
                vm,
                &self.images,
                &entry.project.config_path,
                &mut progress,
            )
            .await
            .map_err(|e| refuse(crate::error::one_line(&e)))?;
            out.push(api::VmImageAdopt {
                vm: vm.name.clone(),
                digest: format!("sha256:{}", adopted.sha256),
                before: adopted.before,
                after: adopted.after,
                already: adopted.already,
            });
        }
        Ok(api::ImageAdoptResult { vms: out })
    }
}

fn invalid(message: &str) -> DaemonError {
    DaemonError::InvalidParams(message.to_owned())
}

/// Runs `f` on the blocking pool (the store stats and reads files).
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::Panicked {
            what,
            detail: e.to_string(),
        })
}

/// The source `castra.imagePull`'s `image` names, checked as castra.toml's `base_image` is:
/// a URL (with `digest` or `checksums`; only `https://` may go without), an absolute path
/// (imported; `digest` checked when it is read), or a catalog name (checked against its
/// distribution's checksums file). The error is the params' problem, in words.
pub(crate) fn pull_source(
    image: &str,
    digest: Option<&str>,
    checksums: Option<&str>,
) -> Result<Source, String> {
    if digest.is_some() && checksums.is_some() {
        return Err("give `digest` or `checksums`, not both".to_owned());
    }
    let digest = digest.map(Digest::parse).transpose()?;
    if images::source::url_scheme(image).is_some() {
        let url = images::source::check_url(image)?;
        let check = match (digest, checksums) {
            (Some(d), _) => Check::Digest(d),
            (None, Some(c)) => {
                images::source::check_url(c)?;
                Check::Sums(c.to_owned())
            }
            (None, None) if url.scheme() == "https" => Check::Unverified,
            (None, None) => {
                return Err(format!(
                    "a {}:// image needs `digest` (\"sha256:<hex>\") or `checksums` (the URL of \
                     a SHA256SUMS file): castrad checks an image's content before it keeps it",
                    url.scheme()
                ));
            }
        };
        return Ok(Source::Url {
            url: image.to_owned(),
            check,
        });
    }
    if Path::new(image).is_absolute() {
        if checksums.is_some() {
            return Err(
                "`checksums` applies to a URL (a checksums file lists images by their \
                        download name); for a file, give `digest`"
                    .to_owned(),
            );
        }
        return Ok(Source::File {
            path: image.into(),
            import: true,
            digest,
        });
    }
    if !image.contains('/') && catalog::get(image).is_some() {
        if digest.is_some() || checksums.is_some() {
            return Err(format!(
                "{image:?} is a catalog image, checked against the checksums file its \
                 distribution publishes: `digest` and `checksums` apply to a URL or a path"
            ));
        }
        return Ok(Source::Catalog {
            name: image.to_owned(),
        });
    }
    Err(format!(
        "{image:?} is not a URL, an absolute path or a catalog image (the catalog has {})",
        catalog::names().join(", ")
    ))
}

/// The hex digits `castra.imageRemove`'s `digest` gives: `sha256:` optional, at least 8.
pub(crate) fn digest_prefix(digest: &str) -> Result<String, String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if (8..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!(
            "digest {digest:?}: expected \"sha256:<hex>\", or at least 8 of its first hex digits"
        ))
    }
}

/// The wire form of a store image and the disks made on it.
fn wire(stored: &images::Stored, users: &[images::Ref]) -> api::StoredImage {
    let record = &stored.record;
    api::StoredImage {
        digest: format!("sha256:{}", record.sha256),
        path: stored.path.clone(),
        size: record.size,
        format: record.format.clone(),
        virtual_size: record.virtual_size,
        origins: record
            .origins
            .iter()
            .map(|o| api::ImageOrigin {
                source: o.source.clone(),
                checked_by: o.checked_by.clone(),
                at: o.at.clone(),
            })
            .collect(),
        users: users
            .iter()
            .map(|r| api::ImageUser {
                vm: r.vm.clone(),
                config: r.config.clone(),
                disk: r.disk.clone(),
            })
            .collect(),
    }
}

fn removed_result(removed: &images::Removed) -> api::ImageRemoveResult {
    api::ImageRemoveResult {
        removed: removed.images.iter().map(|s| wire(s, &[])).collect(),
        freed_bytes: removed.bytes,
    }
}

/// Every catalog entry, its URLs resolved with `mirror`.
fn catalog_result(mirror: Option<String>) -> api::ImageCatalogResult {
    let images = catalog::entries()
        .iter()
        .map(|(name, entry)| {
            let (url, checksums) = catalog::resolve(name, entry, mirror.as_deref());
            api::CatalogImage {
                name: name.clone(),
                description: entry.description.clone(),
                url,
                checksums,
                user: entry.user.clone(),
            }
        })
        .collect();
    api::ImageCatalogResult { mirror, images }
}

#[cfg(test)]
mod tests;
