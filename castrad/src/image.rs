//! Disk images as `qemu-img` sees them, and what castrad accepts as a base image.
//!
//! QEMU reads a base image through every overlay made on it, and with it whatever the image
//! refers to: a qcow2 base whose backing file is `~/.ssh/id_ed25519`, or whose data lives in an
//! external data file, hands that file to the guest as disk contents, and the base hash (which
//! covers the base file only) would not notice it change. So castrad accepts only a
//! self-contained base: format `raw` or `qcow2`, no backing file, no external data file. The
//! format is detected once per file (`qemu-img info --output=json`, which reads the header
//! without opening any backing file) and then always passed explicitly (`qemu-img create -F`,
//! recorded in the overlay), so QEMU never probes it again.
//!
//! What `qemu-img info` said is remembered in memory per file identity (path, device, inode,
//! size, mtime), the same identity the base hash cache trusts; a call costs ~5 ms, so nothing
//! is written to disk for it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `raw`, `qcow2`, ...: passed explicitly wherever the image is opened.
    pub format: String,
    pub virtual_size: u64,
    /// The backing file the image names, if any (`full-backing-filename`).
    pub backing: Option<String>,
    /// A qcow2 external data file, if any.
    pub data_file: Option<String>,
}

/// The formats a base image may have.
pub const BASE_FORMATS: [&str; 2] = ["raw", "qcow2"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("cannot run qemu-img (Debian: apt-get install qemu-utils): {0}")]
    NoQemuImg(String),
    #[error("qemu-img cannot read {}: {reason}", image.display())]
    Unreadable { image: PathBuf, reason: String },
    #[error(
        "base image {} has a backing file, {backing}: castrad refuses a base image with a \
         backing chain (the guest could read every file in it, and only the base itself is \
         hashed); flatten it into one self-contained image, e.g. `qemu-img convert -O qcow2 \
         {} {}`, and set base_image to that",
        image.display(), image.display(), flat(image).display()
    )]
    Backed { image: PathBuf, backing: String },
    #[error(
        "base image {} keeps its data in another file, {data_file} (a qcow2 external data \
         file): castrad refuses it (the guest would read that file); make a self-contained \
         copy, e.g. `qemu-img convert -O qcow2 {} {}`, and set base_image to that",
        image.display(), image.display(), flat(image).display()
    )]
    DataFile { image: PathBuf, data_file: String },
    #[error(
        "base image {} is in format {format}; castrad accepts raw and qcow2 base images: \
         convert it, e.g. `qemu-img convert -O qcow2 {} {}`, and set base_image to that",
        image.display(), image.display(), flat(image).display()
    )]
    Format { image: PathBuf, format: String },
}

/// Where the flattening hint puts the self-contained copy: `<dir>/<stem>-flat.qcow2`.
fn flat(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "base".into());
    image.with_file_name(format!("{stem}-flat.qcow2"))
}

/// Reads `qemu-img info --output=json` of `image` (blocking: runs qemu-img).
pub fn info(image: &Path) -> Result<ImageInfo, ImageError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::NoQemuImg(e.to_string()))?;
    if !out.status.success() {
        return Err(ImageError::Unreadable {
            image: image.to_owned(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    parse_info(image, &out.stdout)
}

/// Parses what `qemu-img info --output=json` printed about `image`. Pure.
pub fn parse_info(image: &Path, json: &[u8]) -> Result<ImageInfo, ImageError> {
    let unreadable = |reason: String| ImageError::Unreadable {
        image: image.to_owned(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| unreadable(format!("qemu-img info printed no JSON: {e}")))?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let (Some(format), Some(virtual_size)) = (text(&v["format"]), v["virtual-size"].as_u64())
    else {
        return Err(unreadable("qemu-img info gave no format or size".into()));
    };
    Ok(ImageInfo {
        format,
        virtual_size,
        backing: text(&v["full-backing-filename"]).or_else(|| text(&v["backing-filename"])),
        data_file: text(&v["format-specific"]["data"]["data-file"]),
    })
}

/// Whether `info` describes an acceptable base image (see the module's doc). Pure.
pub fn check_base(image: &Path, info: &ImageInfo) -> Result<(), ImageError> {
    let image = image.to_owned();
    if let Some(backing) = &info.backing {
        return Err(ImageError::Backed {
            image,
            backing: backing.clone(),
        });
    }
    if let Some(data_file) = &info.data_file {
        return Err(ImageError::DataFile {
            image,
            data_file: data_file.clone(),
        });
    }
    if !BASE_FORMATS.contains(&info.format.as_str()) {
        return Err(ImageError::Format {
            image,
            format: info.format.clone(),
        });
    }
    Ok(())
}

/// The base image at `image`, checked: [`info`] (remembered per file identity) then
/// [`check_base`]. Blocking.
pub fn base(image: &Path) -> Result<ImageInfo, ImageError> {
    type Seen = HashMap<PathBuf, ([i128; 4], ImageInfo)>;
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let seen = SEEN.get_or_init(Mutex::default);
    let identity = std::fs::metadata(image)
        .map(|m| {
            let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            [m.dev().into(), m.ino().into(), m.size().into(), mtime]
        })
        .map_err(|e| ImageError::Unreadable {
            image: image.to_owned(),
            reason: e.to_string(),
        })?;
    let remembered = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(image)
        .filter(|(id, _)| *id == identity)
        .map(|(_, info)| info.clone());
    let info = match remembered {
        Some(info) => info,
        None => {
            let info = info(image)?;
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= 1024 {
                seen.clear();
            }
            seen.insert(image.to_owned(), (identity, info.clone()));
            info
        }
    };
    check_base(image, &info)?;
    Ok(info)
}

#[cfg(test)]
mod tests;
