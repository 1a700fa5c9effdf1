//! Downloads into the store: `https://` and `http://` with reqwest, `file://` by a local
//! copy, then [`Store::commit`].
//!
//! A download streams into `partial/<key>.part` (a [`Sink`]: one thread writes, one hashes),
//! beside `partial/<key>.json` (the URL, the server's validators and the size it announced)
//! and under `partial/<key>.lock` (held from before the first byte until the image is
//! committed, so a second castrad waits and then finds the image). When a download stops
//! early (the connection dropped, no one waits any more), the part and its state stay; the
//! next attempt hashes the part, asks for the rest with `Range` + `If-Range`, and appends it
//! on `206`, or starts over on `200` (the file changed on the server). A checksums file is
//! read whole but never more than [`sums::MAX_BYTES`]; an error's body is never read.
//!
//! TLS is rustls with the ring provider, installed as the process default on first use;
//! certificates are checked against the system's roots (rustls-platform-verifier: on Linux
//! the CA bundle of the `ca-certificates` package, or `SSL_CERT_FILE`). Proxies come from the
//! environment (`https_proxy`, `no_proxy`, ...) as reqwest reads them.

use std::error::Error as _;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use serde::{Deserialize, Serialize};

use super::flight::Reporter;
use super::hasher::{Hasher, Hashes, Sink, hash_file};
use super::lock::Held;
use super::source::{Algo, Check, Digest};
use super::store::{Candidate, Job, Partial, now_rfc3339};
use super::{ImageError, Lease, Origin, Phase, Store, Stored, lock, source, sums};

/// A stalled server fails the download after this long without a byte.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The body is handed to the writer and the hasher in pieces of this size, or of what came in
/// this long (so a transfer stopped on a slow link keeps nearly all it got).
const CHUNK: usize = 1 << 20;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// `partial/<key>.json`: what a resumed download must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartialState {
    url: String,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
    /// The whole image's size, as the server said.
    #[serde(default)]
    total: Option<u64>,
}

impl PartialState {
    /// What `If-Range` names: a strong ETag, else the Last-Modified date. None: not resumable.
    fn validator(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

impl Store {
    /// The image at `url`, checked by `check`, fetched unless its content is known to be here.
    /// A checksums file is always read (the memo was consulted before, unless refreshing).
    pub(super) async fn fetch(
        self: &Arc<Self>,
        url: &str,
        check: &Check,
        reporter: &Arc<Reporter>,
        lease: &Arc<Lease>,
    ) -> Result<Stored, ImageError> {
        let key = Job::Url {
            url: url.to_owned(),
            check: check.clone(),
        }
        .key();
        let origin = Origin {
            source: url.to_owned(),
            checked_by: match check {
                Check::Digest(d) => Some(d.to_string()),
                Check::Sums(sums) => Some(sums.clone()),
                Check::Unverified => None,
            },
            at: now_rfc3339(),
        };
        let expected = match check {
            Check::Digest(d) => Some(d.clone()),
            Check::Sums(sums_url) => Some(self.sums_digest(url, sums_url, reporter).await?),
            Check::Unverified => None,
        };
        let here = |store: &Store| match &expected {
            Some(d) => store.find_by_digest(d),
            None => store.read_memo(&key).and_then(|m| store.get(&m.sha256)),
        };
        if let Some(stored) = here(self) {
            return self.remember(&stored, origin, &key, None);
        }
        let partial = self.partial(url);
        let lock = lock::lock_partial(&partial.lock)
            .await
            .map_err(ImageError::io(format!(
                "cannot lock {}",
                partial.lock.display()
            )))?;
        let held = Arc::new(Held {
            _lock: lock,
            _lease: Arc::clone(lease),
        });
        // Another castrad may have fetched it while this one waited.
        if let Some(stored) = here(self) {
            return self.remember(&stored, origin, &key, None);
        }
        let sha512 = expected.as_ref().is_some_and(|d| d.algo == Algo::Sha512);
        let (hashes, size) = self
            .download(url, &partial, sha512, reporter, &held)
            .await?;
        let this = Arc::clone(self);
        let label = url.to_owned();
        tokio::task::spawn_blocking(move || {
            let result = this.commit(Candidate {
                part: &partial.part,
                hashes,
                size,
                expected: expected.as_ref(),
                label: &label,
                origin,
                memo_key: &key,
                identity: None,
            });
            // Committed or refused, nothing of this download is kept.
            let _ = fs::remove_file(&partial.state);
            let _ = fs::remove_file(&partial.lock);
            drop(held);
            result
        })
        .await
        .map_err(|e| ImageError::Transfer {
            url: url.to_owned(),
            message: format!("storing the download failed: {e}"),
        })?
    }

    /// The digest the checksums file at `sums_url` gives for the image at `url`.
    async fn sums_digest(
        &self,
        url: &str,
        sums_url: &str,
        reporter: &Reporter,
    ) -> Result<Digest, ImageError> {
        let name = url::Url::parse(url)
            .ok()
            .as_ref()
            .and_then(source::file_name)
            .ok_or_else(|| ImageError::Transfer {
                url: url.to_owned(),
                message: "the URL names no file to look up in the checksums file".into(),
            })?;
        let text = self.fetch_text(sums_url, reporter).await?;
        sums::lookup(&text, &name).map_err(|source| ImageError::Sums {
            url: sums_url.to_owned(),
            source,
        })
    }

    /// A small file (a checksums file): at most [`sums::MAX_BYTES`] of it.
    async fn fetch_text(&self, url: &str, reporter: &Reporter) -> Result<String, ImageError> {
        let too_big = || ImageError::Transfer {
            url: url.to_owned(),
            message: format!(
                "larger than {} bytes: not a checksums file",
                sums::MAX_BYTES
            ),
        };
        reporter.progress(Phase::Checksums, 0, None);
        let parsed = url::Url::parse(url).map_err(|e| ImageError::Transfer {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        if parsed.scheme() == "file" {
            let path = local_path(&parsed, url)?;
            let bytes = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut out = Vec::new();
                if !std::fs::metadata(&path)?.is_file() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a regular file",
                    ));
                }
                File::open(&path)?
                    .take(sums::MAX_BYTES + 1)
                    .read_to_end(&mut out)?;
                Ok::<_, std::io::Error>(out)
            })
            .await
            .map_err(|e| transfer(url, e.to_string()))?
            .map_err(ImageError::io(format!("cannot read {url}")))?;
            if bytes.len() as u64 > sums::MAX_BYTES {
                return Err(too_big());
            }
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        let mut resp = self
            .client()?
            .get(url)
            .send()
            .await
            .map_err(|e| transfer(url, chain(&e)))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ImageError::Http {
                url: url.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        if resp.content_length().is_some_and(|n| n > sums::MAX_BYTES) {
            return Err(too_big());
        }
        let mut out = Vec::new();
        while let Some(bytes) = resp.chunk().await.map_err(|e| transfer(url, chain(&e)))? {
            out.extend_from_slice(&bytes);
            if out.len() as u64 > sums::MAX_BYTES {
                return Err(too_big());
            }
            reporter.progress(Phase::Checksums, out.len() as u64, resp.content_length());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The HTTP client (made once; the ring provider installed first).
    fn client(&self) -> Result<&reqwest::Client, ImageError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        // Err: a provider is installed already (ours, by an earlier store, or the process's).
        // rustls 0.23.48 marks ring's provider deprecated (it has no post-quantum key
        // exchange); it stays the design's choice: no aws-lc (a large C library built from
        // source), no OpenSSL.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Redirects are followed (mirror networks use them), but never from https to a
        // scheme that is not: what was asked over TLS is not fetched in the clear.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
                && attempt.url().scheme() != "https";
            if downgrade {
                let to = attempt.url().to_string();
                attempt.error(format!(
                    "refusing a redirect from https to {to} (a download asked over TLS is not \
                     fetched in the clear)"
                ))
            } else if attempt.previous().len() >= 10 {
                attempt.error("too many redirects (10)")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("castrad/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| transfer("(HTTP client)", chain(&e)))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Fetches `url` into `partial.part`, resuming what is there: the digests and the size
    /// of the whole file. On an error the part and its state are kept (when resumable).
    async fn download(
        &self,
        url: &str,
        partial: &Partial,
        sha512: bool,
        reporter: &Arc<Reporter>,
        held: &Arc<Held>,
    ) -> Result<(Hashes, u64), ImageError> {
        let parsed = url::Url::parse(url).map_err(|e| transfer(url, e.to_string()))?;
        if parsed.scheme() == "file" {
            return self
                .copy_local(&parsed, url, partial, sha512, reporter)
                .await;
        }
        let client = self.client()?;
        let state = fs::read(&partial.state)
            .ok()
            .and_then(|b| serde_json::from_slice::<PartialState>(&b).ok())
            .filter(|s| s.url == url && s.validator().is_some());
        let mut have = match &state {
            Some(_) => fs::metadata(&partial.part).map_or(0, |m| m.len()),
            None => 0,
        };
        for _ in 0..3 {
            if have == 0 {
                let _ = fs::remove_file(&partial.part);
            }
            let mut hasher = Hasher::new(sha512);
            if have > 0 {
                hasher = hash_part(partial.part.clone(), have, sha512, reporter).await?;
            }
            let mut request = client.get(url);
            if let (true, Some(validator)) = (have > 0, state.as_ref().and_then(|s| s.validator()))
            {
                request = request
                    .header(RANGE, format!("bytes={have}-"))
                    .header(IF_RANGE, validator);
            }
            let resp = request.send().await.map_err(|e| transfer(url, chain(&e)))?;
            let status = resp.status().as_u16();
            let (start, total) = match status {
                206 if have > 0 => match content_range(&resp) {
                    Some((first, total)) if first == have => {
                        (have, total.or(resp.content_length().map(|n| have + n)))
                    }
                    _ => {
                        have = 0;
                        continue;
                    }
                },
                200 => (0, resp.content_length()),
                416 if have > 0 && state.as_ref().and_then(|s| s.total) == Some(have) => {
                    // All of it is here already.
                    return Ok((hasher.finish(), have));
                }
                416 if have > 0 => {
                    have = 0;
                    continue;
                }
                _ => {
                    return Err(ImageError::Http {
                        url: url.to_owned(),
                        status,
                    });
                }
            };
            let header = |name| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let old = state.clone().filter(|_| start > 0);
            let new_state = PartialState {
                url: url.to_owned(),
                etag: header(ETAG).or_else(|| old.as_ref().and_then(|s| s.etag.clone())),
                last_modified: header(LAST_MODIFIED)
                    .or_else(|| old.as_ref().and_then(|s| s.last_modified.clone())),
                total,
            };
            self.write_json(&partial.state, &new_state)?;
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .append(start > 0)
                .truncate(start == 0)
                .mode(0o600)
                .open(&partial.part)
                .map_err(ImageError::io(format!(
                    "cannot write {}",
                    partial.part.display()
                )))?;
            if start == 0 {
                hasher = Hasher::new(sha512);
            }
            let sink = Sink::start(file, hasher, Arc::clone(held));
            return stream(resp, sink, url, partial, start, total, reporter).await;
        }
        Err(transfer(
            url,
            "the server's answers to a resumed download do not fit together".into(),
        ))
    }

    /// A `file://` URL: the file copied in (as an import is), then checked as a download.
    async fn copy_local(
        &self,
        parsed: &url::Url,
        url: &str,
        partial: &Partial,
        sha512: bool,
        reporter: &Arc<Reporter>,
    ) -> Result<(Hashes, u64), ImageError> {
        let path = local_path(parsed, url)?;
        let part = partial.part.clone();
        let reporter = Arc::clone(reporter);
        let copied = tokio::task::spawn_blocking(move || {
            let size = fs::metadata(&path).ok().map(|m| m.len());
            super::import::copy_in(
                &path,
                &part,
                sha512,
                &mut |done| reporter.progress(Phase::Download, done, size),
                &|| reporter.cancelled(),
            )
        })
        .await
        .map_err(|e| transfer(url, e.to_string()))??;
        Ok((copied.hashes, copied.size))
    }
}

/// Streams the body into the sink: the digests and size of the whole file (what was there
/// from `start` on included).
async fn stream(
    mut resp: reqwest::Response,
    mut sink: Sink,
    url: &str,
    partial: &Partial,
    start: u64,
    total: Option<u64>,
    reporter: &Reporter,
) -> Result<(Hashes, u64), ImageError> {
    let mut done = start;
    let mut buf = Vec::with_capacity(CHUNK);
    let mut pushed = std::time::Instant::now();
    reporter.progress(Phase::Download, done, total);
    // Err((message, resumable)).
    let outcome: Result<(), (String, bool)> = loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                done += bytes.len() as u64;
                if let Some(t) = total
                    && done > t
                {
                    let message = format!("the server sent more than the {t} bytes it announced");
                    break Err((message, false));
                }
                buf.extend_from_slice(&bytes);
                if buf.len() >= CHUNK || pushed.elapsed() >= FLUSH_EVERY {
                    pushed = std::time::Instant::now();
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                    if sink.push(full).await.is_err() {
                        break Ok(()); // The writer's error comes from `finish`.
                    }
                }
                reporter.progress(Phase::Download, done, total);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err((chain(&e), true)),
        }
    };
    if !buf.is_empty() {
        let _ = sink.push(buf).await;
    }
    let (written, hasher) = sink.finish().await.map_err(ImageError::io(format!(
        "cannot write {}",
        partial.part.display()
    )))?;
    let size = start + written;
    match outcome {
        Ok(()) => {}
        Err((message, false)) => {
            // The server's file is not what it said: nothing of it is worth resuming.
            let _ = fs::remove_file(&partial.part);
            let _ = fs::remove_file(&partial.state);
            return Err(transfer(url, message));
        }
        Err((message, true)) => {
            return Err(transfer(
                url,
                format!(
                    "{message} (after {size} bytes; they are kept, and the next attempt \
                     resumes)"
                ),
            ));
        }
    }
    if let Some(total) = total
        && size != total
    {
        return Err(transfer(
            url,
            format!(
                "the connection ended after {size} of {total} bytes (they are kept, and the \
                 next attempt resumes)"
            ),
        ));
    }
    Ok((hasher.finish(), size))
}

/// Hashes the first `len` bytes of an interrupted download (phase `Resume`).
async fn hash_part(
    part: PathBuf,
    len: u64,
    sha512: bool,
    reporter: &Arc<Reporter>,
) -> Result<Hasher, ImageError> {
    let reporter = Arc::clone(reporter);
    let what = format!("cannot read {}", part.display());
    tokio::task::spawn_blocking(move || {
        let file = File::open(&part)?;
        let mut hasher = Hasher::new(sha512);
        let n = hash_file(
            &file,
            0,
            len,
            &mut hasher,
            &mut |done| reporter.progress(Phase::Resume, done, Some(len)),
            &|| reporter.cancelled(),
        )?;
        if n != len {
            return Err(std::io::Error::other("the partial download shrank"));
        }
        Ok(hasher)
    })
    .await
    .map_err(|e| ImageError::io(what.clone())(std::io::Error::other(e)))?
    .map_err(ImageError::io(what))
}

/// The first byte and the total of a `206`'s `Content-Range: bytes first-last/total`.
fn content_range(resp: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let value = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, _) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, total.trim().parse().ok()))
}

fn local_path(parsed: &url::Url, url: &str) -> Result<PathBuf, ImageError> {
    parsed
        .to_file_path()
        .map_err(|()| transfer(url, "not a local file path".into()))
}

fn transfer(url: &str, message: String) -> ImageError {
    ImageError::Transfer {
        url: url.to_owned(),
        message,
    }
}

/// An error with its causes ("error sending request: connection refused").
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests;
