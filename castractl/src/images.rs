//! `castractl image`: castrad's image store (`castra.image*`): `ls`, `pull` (following its
//! `ImageFetch` events while it waits), `rm`, `prune`, `adopt`, `catalog`, and their text
//! output. `cli` hands the subcommand here; nothing here uses `cli`.
//!
//! A pull's events carry its operation, which castractl learns only from the result: so it
//! subscribes before calling and shows the fetches it asked for (a pull by image: the events
//! about no VM; a project's: those about its VMs), then drains what is still on its way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use castra_api as api;
use clap::Subcommand;
use jsonrpsee::core::client::{Subscription, SubscriptionCloseReason};
use serde_json::value::RawValue;

use crate::Exit;
use crate::client::{Daemon, Failure, find_config};
use crate::progress::{self, PullDisplay};
use crate::{render, term};

/// `castractl image --help`'s end.
pub const IMAGE_HELP: &str = "\
The store is castrad's (castrad --image-store, default ~/.cache/castra/images), shared by
every project: `up` fetches or imports a VM's base_image into it before making its disk.

Exit codes: 0 done; 1 the work failed (a download, the store's files); 2 usage, an invalid
castra.toml, an image whose content does not match its checksum (nothing was kept), an image
a VM's disk is made on (`rm` names the VMs), the store busy with a download, an unknown VM;
3 castrad not reachable.";

const PULL_HELP: &str = "\
IMAGE is a URL (https:// may go unverified; http:// and file:// need --digest or --checksums),
a catalog name (`castractl image catalog`), or a file here (imported as it is). A checksums file
is read again, so a catalog image whose \"latest\" changed is fetched anew.

Output:
  on a terminal  a bar per image: bytes, size, speed and time left
  piped          a line per image every few seconds, and its end
  --json         each ImageFetch event envelope as a JSON line, then {\"pull\": ...}
                 (castra.imagePull's result) as the last line

Exit codes: 0 every image is in the store; 1 a download or import failed; 2 usage, an image
whose content does not match its checksum (nothing was kept), a VM without a store image;
3 castrad not reachable. Ctrl-C stops waiting (exit 1): run the pull again to finish it.";

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the store's images: digest, size, format, where each came from, and the VMs whose
    /// disks are made on it.
    #[command(visible_alias = "list")]
    Ls,
    /// Fetch (or import) IMAGE into the store now, or without IMAGE every base image of the
    /// project's VMs; checksums files are read again.
    #[command(after_help = PULL_HELP)]
    Pull {
        /// A URL, a catalog name or a file [default: the base images of the project's VMs].
        image: Option<String>,
        /// The digest IMAGE must have: sha256:<hex> or sha512:<hex>.
        #[arg(
            long,
            value_name = "DIGEST",
            requires = "image",
            conflicts_with = "checksums"
        )]
        digest: Option<String>,
        /// The URL of a checksums file listing IMAGE (SHA256SUMS, SHA512SUMS, Fedora CHECKSUM).
        #[arg(long, value_name = "URL", requires = "image")]
        checksums: Option<String>,
        /// Only this VM's base image (repeatable; without IMAGE).
        #[arg(long = "vm", value_name = "VM", conflicts_with = "image")]
        vms: Vec<String>,
    },
    /// Remove an image from the store; refused (exit 2) while a VM's disk is made on it.
    #[command(visible_alias = "remove")]
    Rm {
        /// sha256:<hex>, or at least 8 of its first hex digits (as `image ls` shows them).
        digest: String,
    },
    /// Remove every image no VM's disk is made on (and abandoned partial downloads); says how
    /// much it freed.
    Prune,
    /// Move the disks of the project's VMs made before the image store (backed by the file
    /// base_image names) onto the store's copy of that file; the VMs must be stopped.
    Adopt {
        /// VMs to adopt, by expanded name [default: every VM whose disk predates the store].
        vms: Vec<String>,
    },
    /// List the images `base_image` may name, and where they are fetched from (through the
    /// project's mirror, in one).
    Catalog,
}

impl ImageCommand {
    /// Whether the command prints JSON lines (so its errors are one line too).
    pub fn streams(&self) -> bool {
        matches!(self, ImageCommand::Pull { .. })
    }
}

/// What `castractl image` needs from the global flags.
pub struct Request<'a> {
    pub socket: &'a Path,
    /// `--config`.
    pub config: Option<&'a Path>,
    pub cwd: &'a Path,
    pub json: bool,
}

pub async fn run(command: ImageCommand, r: Request<'_>) -> Result<Exit, Failure> {
    match command {
        ImageCommand::Ls => {
            let daemon = Daemon::connect(r.socket).await?;
            let params = api::ImageListParams {};
            let list: api::ImageListResult = daemon.call(api::method::IMAGE_LIST, &params).await?;
            show(r.json, &list, list_text);
        }
        ImageCommand::Pull {
            image,
            digest,
            checksums,
            vms,
        } => {
            let daemon = Daemon::connect(r.socket).await?;
            let params = match image {
                Some(image) => {
                    // A bare name that is also a file here is the catalog's when the catalog
                    // has it, as in castra.toml (`./NAME` for the file). Any other IMAGE means
                    // the same either way: the catalog is asked only then.
                    let ambiguous = !image.contains('/') && r.cwd.join(&image).exists();
                    let named = ambiguous && {
                        let catalog: api::ImageCatalogResult = daemon
                            .call(
                                api::method::IMAGE_CATALOG,
                                &api::ImageCatalogParams::default(),
                            )
                            .await?;
                        catalog.images.iter().any(|i| i.name == image)
                    };
                    api::ImagePullParams {
                        image: Some(if named {
                            image
                        } else {
                            image_arg(&image, r.cwd)
                        }),
                        digest,
                        checksums,
                        ..Default::default()
                    }
                }
                None => api::ImagePullParams {
                    config: Some(find_config(r.config, r.cwd)?),
                    vms,
                    ..Default::default()
                },
            };
            return pull(&daemon, params, r.json).await;
        }
        ImageCommand::Rm { digest } => {
            let daemon = Daemon::connect(r.socket).await?;
            let params = api::ImageRemoveParams { digest };
            let removed: api::ImageRemoveResult =
                daemon.call(api::method::IMAGE_REMOVE, &params).await?;
            show(r.json, &removed, removed_text);
        }
        ImageCommand::Prune => {
            let daemon = Daemon::connect(r.socket).await?;
            let params = api::ImagePruneParams {};
            let removed: api::ImageRemoveResult =
                daemon.call(api::method::IMAGE_PRUNE, &params).await?;
            show(r.json, &removed, removed_text);
        }
        ImageCommand::Adopt { vms } => {
            let config = find_config(r.config, r.cwd)?;
            let daemon = Daemon::connect(r.socket).await?;
            let params = api::ImageAdoptParams { config, vms };
            let adopted: api::ImageAdoptResult =
                daemon.call(api::method::IMAGE_ADOPT, &params).await?;
            show(r.json, &adopted, adopt_text);
        }
        ImageCommand::Catalog => {
            // Like status: the project here (for its mirror) if there is one.
            let config = match r.config {
                Some(_) => Some(find_config(r.config, r.cwd)?),
                None => find_config(None, r.cwd).ok(),
            };
            let daemon = Daemon::connect(r.socket).await?;
            let params = api::ImageCatalogParams { config };
            let catalog: api::ImageCatalogResult =
                daemon.call(api::method::IMAGE_CATALOG, &params).await?;
            show(r.json, &catalog, catalog_text);
        }
    }
    Ok(Exit::Ok)
}

fn show<T: serde::Serialize>(json: bool, value: &T, text: fn(&T) -> String) {
    if json {
        term::json_pretty(value);
    } else {
        term::text(&text(value));
    }
}

/// IMAGE (not a catalog name) as castrad takes it: a URL as it is; a file (a path with a
/// slash, or a name a file here has) made absolute; anything else as it is (castrad says it
/// knows no such image).
fn image_arg(image: &str, cwd: &Path) -> String {
    let path = Path::new(image);
    if image.contains("://") || !(image.contains('/') || cwd.join(path).exists()) {
        return image.to_owned();
    }
    let absolute: PathBuf = cwd.join(path);
    std::fs::canonicalize(&absolute)
        .unwrap_or(absolute)
        .display()
        .to_string()
}

/// How long to keep reading the pull's events still on their way once its result is known.
const DRAIN: Duration = Duration::from_millis(250);

/// `castractl image pull`: the call, with the fetches it asked for shown while it runs.
async fn pull(daemon: &Daemon, params: api::ImagePullParams, json: bool) -> Result<Exit, Failure> {
    let mut display = PullDisplay::new(json);
    let by_image = params.image.is_some();
    // Subscribed before the call: the events' operation is only known from its result. As
    // narrow as castrad can filter: the events about no VM, or about the one VM asked for.
    let vm = match (by_image, params.vms.as_slice()) {
        (true, _) => Some(String::new()),
        (false, [one]) => Some(one.clone()),
        (false, _) => None,
    };
    let subscribe = api::SubscribeParams {
        operation: None,
        vm,
        since: None,
    };
    let mut sub = match daemon
        .subscribe(
            api::method::SUBSCRIBE_EVENTS,
            &subscribe,
            api::method::UNSUBSCRIBE_EVENTS,
        )
        .await
    {
        Ok(sub) => Some(sub),
        Err(f) => {
            display.warn(&format!("cannot follow the pull: {}", f.message));
            None
        }
    };
    let wanted = |vm: &str| {
        if by_image {
            vm.is_empty()
        } else {
            !vm.is_empty() && (params.vms.is_empty() || params.vms.iter().any(|v| v == vm))
        }
    };
    let call = daemon.call::<_, api::ImagePullResult>(api::method::IMAGE_PULL, &params);
    tokio::pin!(call);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                display.finish();
                return Err(Failure::new(
                    Exit::Failed,
                    "interrupted",
                    "interrupted: stopped waiting for the pull",
                )
                .detail("run `castractl image pull` again to finish it"));
            }
            result = &mut call => break result,
            raw = next(&mut sub) => match raw {
                Some(raw) => {
                    fetched(&mut display, &raw, |e| e.operation.is_some() && wanted(e.event.vm()));
                }
                None => {
                    if let Some(SubscriptionCloseReason::Lagged) = sub.as_ref().and_then(|s| s.close_reason()) {
                        display.warn("fell behind the event feed; waiting for the pull");
                    }
                    sub = None;
                }
            },
        }
    };
    let result = match result {
        Ok(result) => result,
        Err(f) => {
            display.finish();
            return Err(f);
        }
    };
    // The result can overtake the pull's last events: show them (its `done`s) first.
    let deadline = tokio::time::Instant::now() + DRAIN;
    let mut done = 0;
    while done < result.images.len() && sub.is_some() {
        let Ok(Some(raw)) = tokio::time::timeout_at(deadline, next(&mut sub)).await else {
            break;
        };
        let ours = |e: &api::EventEnvelope| e.operation.as_deref() == Some(&*result.operation);
        if let Some(env) = fetched(&mut display, &raw, ours)
            && matches!(&env.event, api::Event::ImageFetch { phase, .. } if phase == "done")
        {
            done += 1;
        }
    }
    let json = display.is_json();
    display.finish();
    if json {
        let last = api::cli::CliPull { pull: result };
        let _ = term::json_line(&serde_json::to_string(&last).unwrap_or_default());
    } else {
        term::text(&pulled_text(&result));
    }
    Ok(Exit::Ok)
}

/// The next notification of `sub` (None: it closed); never, once it is gone.
async fn next(sub: &mut Option<Subscription<Box<RawValue>>>) -> Option<Box<RawValue>> {
    let Some(sub) = sub.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match sub.next().await? {
            Ok(raw) => return Some(raw),
            Err(_) => continue,
        }
    }
}

/// Shows `raw` if it is an `ImageFetch` that `ours` accepts; returns it decoded if so.
fn fetched(
    display: &mut PullDisplay,
    raw: &RawValue,
    ours: impl Fn(&api::EventEnvelope) -> bool,
) -> Option<api::EventEnvelope> {
    let env = progress::parse(raw)?;
    if !matches!(env.event, api::Event::ImageFetch { .. }) || !ours(&env) {
        return None;
    }
    display.event(raw, &env);
    Some(env)
}

/// `sha256:0123…` as `image ls` shows it: its first 12 hex digits.
fn short_digest(digest: &str) -> String {
    render::short_str(digest.strip_prefix("sha256:").unwrap_or(digest))
}

/// Where an image came from last, marked when it was kept unchecked.
fn origin(image: &api::StoredImage) -> String {
    match image.origins.last() {
        None => "-".to_owned(),
        Some(o) if o.checked_by.is_none() && o.source.starts_with("https://") => {
            format!("{} (unverified)", o.source)
        }
        Some(o) => o.source.clone(),
    }
}

/// The VMs whose disks are made on an image: `web-0, db`, or `-`.
fn users(image: &api::StoredImage) -> String {
    let mut names: Vec<&str> = image.users.iter().map(|u| u.vm.as_str()).collect();
    names.dedup();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(", ")
    }
}

/// A table of images: digest (short), size, format, source, used by.
fn images_table(images: &[api::StoredImage]) -> String {
    let mut rows = vec![
        ["IMAGE", "SIZE", "FORMAT", "USED BY", "SOURCE"]
            .map(String::from)
            .to_vec(),
    ];
    for image in images {
        rows.push(vec![
            short_digest(&image.digest),
            render::bytes(image.size),
            image.format.clone(),
            users(image),
            origin(image),
        ]);
    }
    render::table(&rows)
}

/// `castractl image ls`.
fn list_text(l: &api::ImageListResult) -> String {
    let mut out = format!("store {}\n\n", l.store.display());
    if l.images.is_empty() {
        out.push_str("no images (`castractl image pull IMAGE` or `castractl up` fetches them)\n");
        return out;
    }
    out.push_str(&images_table(&l.images));
    let total: u64 = l.images.iter().map(|i| i.size).sum();
    out.push_str(&format!(
        "\n{} image(s), {}\n",
        l.images.len(),
        render::bytes(total)
    ));
    out
}

/// `castractl image pull`'s end.
fn pulled_text(p: &api::ImagePullResult) -> String {
    if p.images.is_empty() {
        return "no VM of this project has an image the store keeps: nothing to pull\n".into();
    }
    format!("in the store:\n\n{}", images_table(&p.images))
}

/// `castractl image rm` and `prune`: what went and how much that freed.
fn removed_text(r: &api::ImageRemoveResult) -> String {
    if r.removed.is_empty() {
        return format!(
            "nothing removed: no image is unused ({} freed)\n",
            render::bytes(r.freed_bytes)
        );
    }
    let mut rows = Vec::new();
    for image in &r.removed {
        rows.push(vec![
            format!("removed {}", image.digest),
            render::bytes(image.size),
            origin(image),
        ]);
    }
    format!(
        "{}freed {}\n",
        render::table(&rows),
        render::bytes(r.freed_bytes)
    )
}

/// `castractl image adopt`: each VM's disk, before and after.
fn adopt_text(a: &api::ImageAdoptResult) -> String {
    if a.vms.is_empty() {
        return "no VM's disk predates the image store: nothing to adopt\n".into();
    }
    let mut out = String::new();
    for vm in &a.vms {
        let line = if vm.already {
            format!(
                "{}: already on the store's copy ({})",
                vm.vm,
                short_digest(&vm.digest)
            )
        } else {
            format!(
                "{}: now on the store's copy {} (was {})",
                vm.vm,
                vm.after.display(),
                vm.before.display()
            )
        };
        out.push_str(&render::escape_line(&line));
        out.push('\n');
    }
    out
}

/// `castractl image catalog`.
fn catalog_text(c: &api::ImageCatalogResult) -> String {
    let mut out = match &c.mirror {
        Some(mirror) => format!("through the mirror {mirror}\n\n"),
        None => "from the distributions' own servers\n\n".to_owned(),
    };
    let mut rows = vec![
        ["NAME", "USER", "DESCRIPTION", "URL"]
            .map(String::from)
            .to_vec(),
    ];
    for image in &c.images {
        rows.push(vec![
            image.name.clone(),
            image.user.clone(),
            image.description.clone(),
            image.url.clone(),
        ]);
    }
    out.push_str(&render::table(&rows));
    out
}

#[cfg(test)]
mod tests;
