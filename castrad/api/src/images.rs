//! The image store's methods (`castra.image*`) and what a plan says of a VM's base image.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a plan says of a VM's base image (`BootstrapPlanned::base_image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BaseImagePlan {
    /// As castra.toml names it: a path, a URL or a catalog name.
    pub source: String,
    /// `sha256:<hex>` of the image the VM's disk is (or would be) made on; null while castrad
    /// cannot know it without fetching or reading the image.
    pub digest: Option<String>,
    pub status: BaseImageStatus,
    /// False for an `https://` image without a checksum: castrad keeps what the server sends.
    pub verified: bool,
    /// The sentence to show ("in the image store", "`up` downloads it from …").
    pub message: String,
}

/// Where a VM's base image stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BaseImageStatus {
    /// The VM's disk (or the image a new disk would be made on) is in the image store.
    Stored,
    /// Not in the store yet: `up` (or `castractl image pull`) downloads it.
    Fetch,
    /// A file here not in the store yet: `up` imports it.
    Import,
    /// `base_image_import = false`: the disk is backed by the file itself, checked before
    /// every start.
    ByPath,
    /// A disk made before the image store, backed by the user's file: `castractl image adopt`
    /// moves it onto the store's copy.
    PredatesStore,
    /// A path on a libvirt VM's hypervisor, never read here.
    Hypervisor,
}

// ---------------------------------------------------------------------------------------------
// castra.imageList

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageListParams {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageListResult {
    /// The store's directory.
    pub store: PathBuf,
    /// Newest first.
    pub images: Vec<StoredImage>,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StoredImage {
    /// `sha256:<hex>`: its name in the store.
    pub digest: String,
    pub path: PathBuf,
    /// Bytes on disk.
    pub size: u64,
    /// `raw` or `qcow2`.
    pub format: String,
    pub virtual_size: u64,
    /// Where it came from, newest last.
    pub origins: Vec<ImageOrigin>,
    /// The VM disks backed by it.
    pub users: Vec<ImageUser>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageOrigin {
    /// A URL, or the path of an imported file.
    pub source: String,
    /// What its content was checked against: `sha256:…`/`sha512:…`, a checksums file's URL;
    /// null for an unverified download or a file read whole.
    pub checked_by: Option<String>,
    /// RFC 3339 UTC.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageUser {
    pub vm: String,
    /// The castra.toml of its project.
    pub config: PathBuf,
    pub disk: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// castra.imagePull

/// Either `image` (a URL, a catalog name, or an absolute path), or `config` (every base image
/// of that project's VMs, or of `vms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePullParams {
    #[serde(default)]
    pub image: Option<String>,
    /// `sha256:<hex>` or `sha512:<hex>` the image must have (with `image`).
    #[serde(default)]
    pub digest: Option<String>,
    /// The URL of a checksums file listing the image (with `image`).
    #[serde(default)]
    pub checksums: Option<String>,
    #[serde(default)]
    pub config: Option<PathBuf>,
    #[serde(default)]
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePullResult {
    /// The operation its `ImageFetch` events carry.
    pub operation: String,
    pub images: Vec<StoredImage>,
}

// ---------------------------------------------------------------------------------------------
// castra.imageRemove and castra.imagePrune

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageRemoveParams {
    /// `sha256:<hex>`, or at least 8 of its first hex digits.
    pub digest: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImagePruneParams {}

/// What `castra.imageRemove` or `castra.imagePrune` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageRemoveResult {
    pub removed: Vec<StoredImage>,
    pub freed_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// castra.imageAdopt

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageAdoptParams {
    pub config: PathBuf,
    /// [default: every VM whose disk predates the store]
    #[serde(default)]
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageAdoptResult {
    pub vms: Vec<VmImageAdopt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmImageAdopt {
    pub vm: String,
    /// `sha256:<hex>` of its base.
    pub digest: String,
    /// What the disk was backed by before.
    pub before: PathBuf,
    /// The store's copy it is backed by now.
    pub after: PathBuf,
    /// True when it already was on the store's copy (nothing changed).
    pub already: bool,
}

// ---------------------------------------------------------------------------------------------
// castra.imageCatalog

/// The catalog of named images (`base_image = "debian-12"`) as data: castrad resolves the
/// names with it, and `castractl init` checks a name against it without asking castrad. Here
/// because both binaries read it; the format is described in the file.
pub const CATALOG_TOML: &str = include_str!("catalog.toml");

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageCatalogParams {
    /// A project whose `[project] image_mirror` applies.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageCatalogResult {
    /// The mirror the URLs below are resolved with; null: the distributions' own servers.
    pub mirror: Option<String>,
    pub images: Vec<CatalogImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CatalogImage {
    /// What `base_image = "…"` names.
    pub name: String,
    pub description: String,
    pub url: String,
    pub checksums: String,
    /// The image's own default login user.
    pub user: String,
}
