//! The connection to castrad: a WebSocket JSON-RPC client over the Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use castra_api::{ErrorData, code};
use jsonrpsee::client_transport::ws::{Url, WsTransportClientBuilder};
use jsonrpsee::core::client::{
    Client, ClientBuilder, ClientT, Error as RpcError, Subscription, SubscriptionClientT,
    SubscriptionCloseReason,
};
use jsonrpsee::core::params::ObjectParams;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::Exit;

/// A failure, already classified for the exit code and ready to print.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    /// `usage`, `unreachable`, `config`, `preflight`, `operation`, ...
    pub kind: String,
    pub message: String,
    /// Further causes and hints, printed under the message.
    pub details: Vec<String>,
    /// The JSON-RPC error object, when the daemon sent one.
    pub rpc: Option<Box<castra_api::cli::RpcError>>,
}

impl Failure {
    pub fn new(exit: Exit, kind: &str, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            kind: kind.to_owned(),
            message: message.into(),
            details: vec![],
            rpc: None,
        }
    }

    pub fn detail(mut self, d: impl Into<String>) -> Failure {
        self.details.push(d.into());
        self
    }
}

pub struct Daemon {
    client: Client,
}

impl Daemon {
    pub async fn connect(socket: &Path) -> Result<Daemon, Failure> {
        let unreachable = |why: String| {
            Failure::new(
                Exit::Unreachable,
                "unreachable",
                format!("cannot reach castrad at {}: {why}", socket.display()),
            )
            .detail(castra_api::START_CASTRAD)
        };
        // The socket and its directory first, then who listens there (`trust`).
        let real = crate::trust::check_socket(socket)?;
        let stream = tokio::net::UnixStream::connect(&real).await.map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "no socket there (castrad is not running)".to_owned()
                }
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (stale socket; castrad is not running)".to_owned()
                }
                _ => e.to_string(),
            };
            unreachable(why)
        })?;
        crate::trust::check_peer(socket, &stream)?;
        let url = Url::parse("ws://castrad/").expect("static URL");
        let (sender, receiver) = WsTransportClientBuilder::default()
            .build_with_stream(url, stream)
            .await
            .map_err(|e| unreachable(format!("WebSocket handshake failed: {e}")))?;
        let client = ClientBuilder::default()
            .request_timeout(Duration::from_secs(3600))
            // Notifications wait here until rendered; a full buffer drops the subscription
            // (`SubscriptionCloseReason::Lagged`), so leave room for chatty guest scripts.
            .max_buffer_capacity_per_subscription(SUBSCRIPTION_BUFFER)
            .build_with_tokio(sender, receiver);
        Ok(Daemon { client })
    }

    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, Failure> {
        self.client
            .request(method, object_params(params)?)
            .await
            .map_err(from_rpc)
    }

    /// Subscribes with `method` (params by name, like [`Daemon::call`]); dropping the
    /// subscription asks the daemon to end it with `unsubscribe`.
    ///
    /// `N` is what each notification's `result` is decoded into: `Box<RawValue>` keeps the
    /// daemon's bytes (for `--json`), `EventEnvelope` decodes them.
    pub async fn subscribe<P: Serialize, N: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        unsubscribe: &str,
    ) -> Result<Subscription<N>, Failure> {
        self.client
            .subscribe(method, object_params(params)?, unsubscribe)
            .await
            .map_err(from_rpc)
    }
}

/// Notifications buffered per subscription before jsonrpsee drops it as lagging.
const SUBSCRIPTION_BUFFER: usize = 16 * 1024;

/// castrad takes params by name: a struct becomes a JSON-RPC params object.
fn object_params<P: Serialize>(params: &P) -> Result<ObjectParams, Failure> {
    let internal = |e: String| Failure::new(Exit::Failed, "internal", e);
    let mut object = ObjectParams::new();
    let value = serde_json::to_value(params).map_err(|e| internal(e.to_string()))?;
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            object.insert(&k, v).map_err(|e| internal(e.to_string()))?;
        }
    }
    Ok(object)
}

/// The next notification of a subscription castractl follows until the user stops it: None
/// once Ctrl-C is pressed. A notification that cannot be read is skipped; a subscription that
/// closes is a `connection` failure, saying castractl fell behind `feed` when castrad dropped
/// notifications for it.
pub async fn next_followed<F: std::future::Future>(
    sub: &mut Subscription<Box<RawValue>>,
    mut ctrl_c: std::pin::Pin<&mut F>,
    feed: &str,
) -> Result<Option<Box<RawValue>>, Failure> {
    loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => return Ok(None),
            item = sub.next() => match item {
                Some(Ok(raw)) => return Ok(Some(raw)),
                Some(Err(_)) => continue,
                None => {
                    let message = match sub.close_reason() {
                        Some(SubscriptionCloseReason::Lagged) => {
                            format!("fell behind {feed} and castrad's notifications were dropped")
                        }
                        _ => "castrad closed the connection".to_owned(),
                    };
                    return Err(Failure::new(Exit::Failed, "connection", message));
                }
            },
        }
    }
}

fn from_rpc(err: RpcError) -> Failure {
    match err {
        RpcError::Call(obj) => {
            let data: Option<ErrorData> =
                obj.data().and_then(|d| serde_json::from_str(d.get()).ok());
            let exit = match obj.code() {
                code::CONFIG | code::PREFLIGHT | code::INVALID_PARAMS => Exit::Usage,
                _ => Exit::Failed,
            };
            let kind = data
                .as_ref()
                .map_or("operation", |d| d.kind.as_str())
                .to_owned();
            let mut f = Failure::new(exit, &kind, obj.message());
            if let Some(data) = &data {
                // The message is the joined chain; show the sources beyond the first one.
                f.message = data
                    .causes
                    .first()
                    .cloned()
                    .unwrap_or_else(|| obj.message().to_owned());
                f.details = data
                    .causes
                    .iter()
                    .skip(1)
                    .map(|c| format!("caused by: {c}"))
                    .collect();
            }
            f.rpc = Some(Box::new(castra_api::cli::RpcError {
                code: i64::from(obj.code()),
                message: obj.message().to_owned(),
                data,
            }));
            f
        }
        RpcError::RestartNeeded(e) => Failure::new(
            Exit::Failed,
            "connection",
            format!("lost the connection to castrad: {e}"),
        ),
        other => Failure::new(Exit::Failed, "connection", other.to_string()),
    }
}

/// The castra.toml to use: `--config` (must exist), else the nearest one walking up from `cwd`.
///
/// The walk stops below a directory that is not the user's (or root's) or that others may
/// write (`/tmp`): a castra.toml there could be anyone's (git's `safe.directory` rule).
/// castrad refuses a project file owned by another user whichever way it was named.
pub fn find_config(explicit: Option<&Path>, cwd: &Path) -> Result<PathBuf, Failure> {
    if let Some(path) = explicit {
        return std::fs::canonicalize(path).map_err(|e| {
            Failure::new(
                Exit::Usage,
                "config",
                format!("--config {}: {e}", path.display()),
            )
        });
    }
    let mut stopped = None;
    for dir in cwd.ancestors() {
        if let Some(why) = untrusted_dir(dir) {
            stopped = Some((dir, why));
            break;
        }
        let candidate = dir.join(castra_api::CONFIG_FILE_NAME);
        if candidate.is_file() {
            return std::fs::canonicalize(&candidate).map_err(|e| {
                Failure::new(
                    Exit::Usage,
                    "config",
                    format!("{}: {e}", candidate.display()),
                )
            });
        }
    }
    let mut failure = Failure::new(
        Exit::Usage,
        "config",
        format!(
            "no {} in {} or any parent directory",
            castra_api::CONFIG_FILE_NAME,
            cwd.display()
        ),
    );
    if let Some((dir, why)) = stopped {
        failure = failure.detail(format!(
            "stopped looking at {} ({why}): a {} there or above could be anyone's",
            dir.display(),
            castra_api::CONFIG_FILE_NAME
        ));
    }
    Err(failure
        .detail("pass --config PATH, or run castractl inside a project")
        .detail("castractl init writes a castra.toml for a cloud image in the current directory"))
}

/// Why the walk up must not look in `dir`: owned by someone other than the user and root,
/// or writable by others. None when it may (or cannot be stat'ed: then nothing is found there).
fn untrusted_dir(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!("owned by uid {}, not by you", meta.uid()));
    }
    if meta.mode() & 0o002 != 0 {
        return Some("writable by others".to_owned());
    }
    None
}
