//! `castractl init`: a commented castra.toml for one VM from a cloud image, and the bootstrap
//! script it names, written in the current directory (or where `--config` says). Nothing is
//! asked of castrad: a catalog name is checked against the catalog compiled in from
//! `castra_api::CATALOG_TOML` (the one castrad resolves names with).
//!
//! Rendering is pure (`render_config`, `SCRIPT`, `project_name`, `parse_image`); [`write_new`] is
//! the only writer: each file whole or not at all, and never over a file that exists.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use castra_api as api;

use crate::Exit;
use crate::client::Failure;
use crate::term;

/// `--image` when none is given.
pub const DEFAULT_IMAGE: &str = "debian-12";

/// The script castra.toml names, beside it.
const SCRIPT_NAME: &str = "bootstrap.sh";

/// The VM's name and its login user (which castrad's cloud-init seed creates).
const VM: &str = "dev";

/// What `--image` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// A catalog name, with its description.
    Catalog { name: String, description: String },
    /// An `https://` URL.
    Url(String),
}

/// Writes the files and says so (`--json`: `CastractlInit`). `config`: where castra.toml
/// goes; the script goes beside it. Exit 2 when `image` or `name` is not usable, or when
/// either file exists (then nothing is written).
pub fn run(config: &Path, image: &str, name: Option<&str>, json: bool) -> Result<Exit, Failure> {
    let image = parse_image(image, &catalog())?;
    let dir = config.parent().unwrap_or(Path::new("."));
    let project = match name {
        Some(name) if valid_name(name) => name.to_owned(),
        Some(name) => {
            return Err(Failure::new(
                Exit::Usage,
                "usage",
                format!(
                    "--name {name:?}: a project name is 1 to 63 of a-z, 0-9 and '-', not \
                     starting with '-'"
                ),
            ));
        }
        None => project_name(dir),
    };
    let script = dir.join(SCRIPT_NAME);
    for path in [config, script.as_path()] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(exists(path));
        }
    }
    // The script first: a castra.toml naming a script that is not there would not load.
    write_new(&script, SCRIPT.as_bytes(), 0o755)?;
    if let Err(f) = write_new(config, render_config(&project, &image).as_bytes(), 0o644) {
        // Leave nothing half done: the script is ours, written a moment ago.
        let _ = std::fs::remove_file(&script);
        return Err(f);
    }
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let written = api::cli::CliInit {
        config: absolute(config),
        script: absolute(&script),
        project,
        image: match &image {
            Image::Catalog { name, .. } => name.clone(),
            Image::Url(url) => url.clone(),
        },
    };
    if json {
        term::json_pretty(&written);
    } else {
        term::text(&format!(
            "wrote {}: project {}, VM {VM} from {}\nwrote {}: the bootstrap script it runs\n\
             next: castractl up, then castractl ssh {VM}\n",
            written.config.display(),
            written.project,
            written.image,
            written.script.display()
        ));
    }
    Ok(Exit::Ok)
}

fn exists(path: &Path) -> Failure {
    Failure::new(
        Exit::Usage,
        "usage",
        format!(
            "{} exists: castractl init writes nothing over a file",
            path.display()
        ),
    )
    .detail("edit it, or move it away and run castractl init again")
}

/// The catalog's names and descriptions.
fn catalog() -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        description: String,
    }
    let entries: BTreeMap<String, Entry> = toml::from_str(api::CATALOG_TOML).unwrap_or_default();
    entries
        .into_iter()
        .map(|(name, e)| (name, e.description))
        .collect()
}

/// Pure: `--image` as a catalog name (of `catalog`) or an https:// URL, or why not.
pub fn parse_image(text: &str, catalog: &BTreeMap<String, String>) -> Result<Image, Failure> {
    let usage =
        |why: String| Failure::new(Exit::Usage, "usage", format!("--image {text:?}: {why}"));
    if let Some((scheme, rest)) = text.split_once("://") {
        if scheme != "https" {
            return Err(usage(format!(
                "init takes https:// URLs only; a {scheme}:// image needs base_image_digest or \
                 base_image_checksums, so write its castra.toml by hand (docs/CONFIGURATION.md, \
                 Base images)"
            )));
        }
        let file = rest.rsplit('/').next().unwrap_or("");
        if !rest.contains('/') || file.is_empty() || text.chars().any(char::is_control) {
            return Err(usage(
                "expected an https:// URL naming an image file (https://HOST/PATH/FILE)".into(),
            ));
        }
        return Ok(Image::Url(text.to_owned()));
    }
    match catalog.get(text) {
        Some(description) => Ok(Image::Catalog {
            name: text.to_owned(),
            description: description.clone(),
        }),
        None => {
            let names: Vec<&str> = catalog.keys().map(String::as_str).collect();
            Err(usage(format!(
                "not a catalog name ({}) or an https:// URL",
                names.join(", ")
            )))
        }
    }
}

/// Pure: castra.toml's name rules (castrad's `config::values::is_valid_name`).
fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Pure: a project name from the directory's name: lowercase, each run of other characters
/// one `-`, at most 63 characters; `castra` when nothing is left.
pub fn project_name(dir: &Path) -> String {
    let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let raw = base
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::new();
    for c in raw.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    name.truncate(63);
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        "castra".to_owned()
    } else {
        name.to_owned()
    }
}

/// Pure: `text` as a TOML basic string, quotes included.
fn quoted(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Pure: the commented castra.toml for `project` with one VM from `image`.
pub fn render_config(project: &str, image: &Image) -> String {
    let image_lines = match image {
        Image::Catalog { name, description } => format!(
            "# {name}: {description}.\n\
             # A name from castrad's catalog (`castractl image catalog` lists them): fetched on\n\
             # the first `up`, checked against the checksums its distribution publishes, and kept\n\
             # in the image store (~/.cache/castra/images) for every project. Or any image by\n\
             # URL, with the checksums file published beside it:\n\
             # base_image = \"https://example.org/images/cloud-image.qcow2\"\n\
             # base_image_checksums = \"https://example.org/images/SHA256SUMS\"\n\
             base_image = {}\n",
            quoted(name)
        ),
        Image::Url(url) => {
            let dir = &url[..url.rfind('/').map_or(url.len(), |i| i + 1)];
            format!(
                "# Fetched on the first `up` and kept in the image store (~/.cache/castra/images).\n\
                 # Without a checksum castrad keeps what the server sends, unverified (`castractl\n\
                 # plan` says so): name its content with one of these, as its publisher gives it.\n\
                 base_image = {}\n\
                 # base_image_checksums = {}\n\
                 # base_image_digest = \"sha256:<the image's 64 hex digits>\"\n",
                quoted(url),
                quoted(&format!("{dir}SHA256SUMS"))
            )
        }
    };
    format!(
        "# castra.toml, written by `castractl init`: one development VM from a distribution's\n\
         # cloud image. castrad's cloud-init seed creates the user `{VM}` in it, with passwordless\n\
         # sudo, and lets castrad in with its own key. Then:\n\
         #   castractl plan        what `up` will do, and why\n\
         #   castractl up          boot the VM and run {SCRIPT_NAME} in it\n\
         #   castractl ssh {VM}     a shell in it\n\
         #   castractl down        stop it (--discard also deletes its disk)\n\
         # Every key is described in docs/CONFIGURATION.md.\n\
         version = \"1\"\n\
         \n\
         [project]\n\
         name = {project}\n\
         \n\
         [[vms]]\n\
         name = \"{VM}\"\n\
         {image_lines}\
         cpus = 2\n\
         memory = \"2 GiB\"\n\
         disk = \"20 GiB\"                 # cloud-init grows the root file system onto it\n\
         \n\
         [vms.ssh]\n\
         user = \"{VM}\"                    # made by castrad's cloud-init seed, passwordless sudo\n\
         \n\
         # Your own key too, so plain `ssh` works besides `castractl ssh {VM}`; your own\n\
         # cloud-config (packages, files), merged after castrad's:\n\
         # [vms.cloud_init]\n\
         # authorized_keys = [\"~/.ssh/id_ed25519.pub\"]\n\
         # user_data = \"user-data.yaml\"\n\
         \n\
         # A port of the VM on this machine's 127.0.0.1:\n\
         # [[vms.port_forwards]]\n\
         # host = 8080\n\
         # guest = 80\n\
         \n\
         # A directory of this machine in the VM:\n\
         # [[vms.mounts]]\n\
         # host = \".\"\n\
         # guest = \"/src\"\n\
         # readonly = false  # read-only unless you say so\n\
         \n\
         [vms.bootstrap]\n\
         # Runs in the VM as {VM} once cloud-init is done; `up` runs it again only when it (or\n\
         # these settings, or the image) changed. verify_command proves it worked.\n\
         script = \"{SCRIPT_NAME}\"\n\
         verify_command = \"test -f ~/.castra-ready\"\n",
        project = quoted(project),
    )
}

/// The bootstrap script stub.
pub const SCRIPT: &str = r#"#!/bin/sh
# The bootstrap script castra.toml names: it runs in the VM as `dev` once cloud-init has
# finished, in /var/tmp/castra/dev, and again only when this file, castra.toml's bootstrap
# settings or the image change (`castractl up --bootstrap always` runs it anyway). Exit 0
# for success; `castractl logs dev` shows its output.
set -eu

# dev has passwordless sudo. Install what the project needs, for example:
#   sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y git make
#   sudo dnf install -y git make      (Fedora)

echo "bootstrapping $CASTRA_VM on $(. /etc/os-release && echo "$PRETTY_NAME")"
touch ~/.castra-ready    # what castra.toml's verify_command checks
"#;

/// Writes `bytes` to `path` with `mode`, whole or not at all, and only if nothing is there:
/// a temporary file beside it, written and fsynced, then hard-linked to `path` (link(2)
/// fails when `path` exists, so a file that appeared since the check is not replaced
/// either), the temporary removed and the directory fsynced.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    let failed = |what: &str, e: std::io::Error| {
        Failure::new(
            Exit::Failed,
            "internal",
            format!("{what} {}: {e}", path.display()),
        )
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp: PathBuf = dir.join(format!(".{file_name}.init-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(failed("cannot write", e));
    }
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists(path)),
        Err(e) => return Err(failed("cannot create", e)),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed("cannot sync the directory of", e))
}

#[cfg(test)]
mod tests;
