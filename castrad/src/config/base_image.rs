//! `base_image` and its companion keys (`base_image_digest`, `base_image_checksums`,
//! `base_image_import`): a path, a URL or a catalog name, checked here, fetched or imported by
//! the image store (`crate::images`) when a VM first needs it. Pure.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::ConfigError;
use super::diagnostics::{Source, join_key};
use super::raw::RawVm;
use super::values::{FileCheck, resolve_path};
use crate::images::{self, Check, Digest, catalog};

/// Where a VM's base image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseImage {
    /// On this machine, or fetched to it: through the image store.
    Local(images::Source),
    /// A path on a libvirt VM's hypervisor (`upload = false`): never read here.
    Hypervisor(PathBuf),
}

impl BaseImage {
    /// A file here, imported into the store on first use (what a plain path gives).
    pub fn path(path: impl Into<PathBuf>) -> BaseImage {
        BaseImage::Local(images::Source::File {
            path: path.into(),
            import: true,
            digest: None,
        })
    }

    /// The image the store provides, if it is one.
    pub fn local(&self) -> Option<&images::Source> {
        match self {
            BaseImage::Local(source) => Some(source),
            BaseImage::Hypervisor(_) => None,
        }
    }

    /// The file on this machine, when `base_image` is a path.
    pub fn file(&self) -> Option<&Path> {
        match self {
            BaseImage::Local(images::Source::File { path, .. }) => Some(path),
            _ => None,
        }
    }

    /// The path on the hypervisor, for a libvirt VM that does not upload.
    pub fn hypervisor(&self) -> Option<&Path> {
        match self {
            BaseImage::Hypervisor(path) => Some(path),
            BaseImage::Local(_) => None,
        }
    }

    /// What a person reads: the path, URL or catalog name.
    pub fn label(&self) -> String {
        match self {
            BaseImage::Local(source) => source.label(),
            BaseImage::Hypervisor(path) => path.display().to_string(),
        }
    }
}

/// How the VM's backend reads `base_image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reader {
    /// castrad's own QEMU: the store, or a file here.
    Qemu,
    /// A libvirt VM that uploads (`upload = true`, or a URL: fetched here, then uploaded).
    LibvirtUpload,
    /// A libvirt VM that reads a path on its hypervisor.
    LibvirtPath,
}

/// Whether a `base_image` value names an image castrad fetches (a URL or a catalog name),
/// rather than a path.
pub(super) fn fetched(text: &str) -> bool {
    images::source::url_scheme(text).is_some()
        || (!text.contains('/') && catalog::get(text).is_some())
}

/// Validates `base_image` and its companion keys of one `[[vms]]` entry. A path is resolved
/// against castra.toml's directory and recorded in `files` for `load` to stat.
pub(super) fn validate(
    src: &Source<'_>,
    raw: &RawVm,
    key: &str,
    reader: Reader,
    files: &mut Vec<FileCheck>,
) -> Result<Option<BaseImage>, ConfigError> {
    let k = |name: &str| join_key(key, name);
    let digest = raw
        .base_image_digest
        .as_ref()
        .map(|d| Digest::parse(d.get_ref()).map_err(|e| src.at(d, &k("base_image_digest"), e)))
        .transpose()?;
    let Some(value) = &raw.base_image else {
        let companion = [
            (
                "base_image_digest",
                raw.base_image_digest.as_ref().map(Spanned::span),
            ),
            (
                "base_image_checksums",
                raw.base_image_checksums.as_ref().map(Spanned::span),
            ),
            (
                "base_image_import",
                raw.base_image_import.as_ref().map(Spanned::span),
            ),
        ];
        if let Some((name, Some(span))) = companion.into_iter().find(|(_, s)| s.is_some()) {
            let message = format!("`{name}` needs `base_image`");
            return Err(src.error(Some(span), &k(name), message));
        }
        return Ok(None);
    };
    let text = value.get_ref();
    if let (Some(d), Some(c)) = (&raw.base_image_digest, &raw.base_image_checksums) {
        let _ = d;
        return Err(src.at(
            c,
            &k("base_image_checksums"),
            "give `base_image_digest` or `base_image_checksums`, not both",
        ));
    }
    let refuse_import = |why: &str| match &raw.base_image_import {
        Some(i) => Err(src.at(i, &k("base_image_import"), why.to_owned())),
        None => Ok(()),
    };
    if images::source::url_scheme(text).is_some() {
        let url =
            images::source::check_url(text).map_err(|e| src.at(value, &k("base_image"), e))?;
        if reader == Reader::LibvirtPath {
            return Err(src.at(
                value,
                &k("base_image"),
                "a URL base_image is fetched by castrad and uploaded to the pool, and this VM \
                 sets `upload = false`: remove it (fetching on the hypervisor itself is not \
                 supported: download the image there and give its path)",
            ));
        }
        refuse_import(
            "`base_image_import` applies to a base_image given as a path; a URL's image is \
             always kept in the image store",
        )?;
        let check = match (digest, &raw.base_image_checksums) {
            (Some(d), _) => Check::Digest(d),
            (None, Some(c)) => {
                images::source::check_url(c.get_ref())
                    .map_err(|e| src.at(c, &k("base_image_checksums"), e))?;
                Check::Sums(c.get_ref().clone())
            }
            (None, None) if url.scheme() == "https" => Check::Unverified,
            (None, None) => {
                let message = format!(
                    "a {}:// base_image needs `base_image_digest = \"sha256:<hex>\"` or \
                     `base_image_checksums = \"<URL of a SHA256SUMS file>\"`: castrad checks \
                     an image's content before it keeps it, and nothing else protects a {} \
                     transfer{}",
                    url.scheme(),
                    url.scheme(),
                    if url.scheme() == "file" {
                        " (or give the file as a plain path, which castrad imports as it is)"
                    } else {
                        ""
                    }
                );
                return Err(src.at(value, &k("base_image"), message));
            }
        };
        return Ok(Some(BaseImage::Local(images::Source::Url {
            url: text.clone(),
            check,
        })));
    }
    if !text.contains('/') && catalog::get(text).is_some() {
        if reader == Reader::LibvirtPath {
            return Err(src.at(
                value,
                &k("base_image"),
                format!(
                    "{text:?} is a catalog image, fetched by castrad and uploaded to the pool, \
                     and this VM sets `upload = false`: remove it, or give a path on the \
                     hypervisor"
                ),
            ));
        }
        let not_for_catalog = "a catalog image is checked against the checksums file its \
                               distribution publishes; this key applies to a URL or a path";
        for (name, v) in [
            (
                "base_image_digest",
                raw.base_image_digest.as_ref().map(Spanned::span),
            ),
            (
                "base_image_checksums",
                raw.base_image_checksums.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = v {
                return Err(src.error(Some(span), &k(name), not_for_catalog));
            }
        }
        refuse_import("`base_image_import` applies to a base_image given as a path")?;
        return Ok(Some(BaseImage::Local(images::Source::Catalog {
            name: text.clone(),
        })));
    }
    if let Some(c) = &raw.base_image_checksums {
        return Err(src.at(
            c,
            &k("base_image_checksums"),
            "`base_image_checksums` applies to a URL (a checksums file lists images by their \
             download name); for a file here, give `base_image_digest` if you want its content \
             checked",
        ));
    }
    if reader == Reader::LibvirtPath {
        if let Some(d) = &raw.base_image_digest {
            return Err(src.at(
                d,
                &k("base_image_digest"),
                "a libvirt VM's base_image path is on the hypervisor and never read here, so \
                 castrad cannot check its digest: set `upload = true` to upload it from here",
            ));
        }
        refuse_import(
            "a libvirt VM's base_image path is on the hypervisor; `base_image_import` \
             applies to qemu VMs",
        )?;
        let path = super::libvirt::hypervisor_path(src, Some(value), &k("base_image"))?;
        return Ok(path.map(BaseImage::Hypervisor));
    }
    let import = match &raw.base_image_import {
        Some(i) if !*i.get_ref() && reader == Reader::LibvirtUpload => {
            return Err(src.at(
                i,
                &k("base_image_import"),
                "a libvirt VM's uploaded image is read once, from the image store; \
                 `base_image_import = false` applies to qemu VMs",
            ));
        }
        Some(i) => *i.get_ref(),
        None => true,
    };
    let path = resolve_path(src, src.dir(), value, &k("base_image"))?;
    files.push(FileCheck {
        key: k("base_image"),
        span: value.span(),
        path: path.clone(),
        directory_ok: false,
        directory_required: false,
        hint: (!text.contains('/')).then(|| catalog_hint(text)),
    });
    Ok(Some(BaseImage::Local(images::Source::File {
        path,
        import,
        digest,
    })))
}

/// What a missing file named like a catalog entry gets told.
fn catalog_hint(text: &str) -> String {
    let names = catalog::names();
    let near = names
        .iter()
        .filter(|n| strsim::levenshtein(text, n) <= 2)
        .map(|n| format!("; did you mean {n:?}?"))
        .next()
        .unwrap_or_default();
    format!(
        " (and it is not a catalog image either: {}{near})",
        names.join(", ")
    )
}
