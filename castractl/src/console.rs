//! `castractl console VM [--follow]`: a QEMU VM's serial console, through castrad
//! (`castra.console`, `castra.subscribeConsole`).
//!
//! The guest's output is untrusted: on a terminal its control characters are shown escaped
//! (`\x1b`), unless `--raw`; `--json` prints castrad's objects as they came (text as JSON
//! strings). The serial line's `\r\n` line ends are shown as plain newlines.

use castra_api as api;
use serde_json::value::RawValue;

use crate::Exit;
use crate::client::{Daemon, Failure, next_followed};
use crate::term;

/// What `castractl console` was asked.
pub struct Request {
    pub config: std::path::PathBuf,
    pub vm: String,
    pub follow: bool,
    /// How much of the log's end to show first.
    pub tail: Option<u64>,
    pub raw: bool,
    pub json: bool,
}

pub async fn run(daemon: &Daemon, r: Request) -> Result<Exit, Failure> {
    if r.follow {
        return follow(daemon, r).await;
    }
    let params = api::ConsoleParams {
        config: r.config,
        vm: r.vm,
        max_bytes: r.tail,
    };
    let result: api::ConsoleResult = daemon.call(api::method::CONSOLE, &params).await?;
    if r.json {
        term::json_pretty(&result);
        return Ok(Exit::Ok);
    }
    if result.truncated {
        term::note(&format!(
            "the log has {} bytes; showing its last {} (--tail BYTES shows more, up to {})",
            result.size,
            result.bytes,
            api::CONSOLE_MAX_BYTES
        ));
    }
    let mut lines = LineEnds::default();
    let mut text = lines.push(&result.text);
    text.push_str(lines.finish());
    let _ = term::console(&text, r.raw);
    if result.size == 0 {
        term::note(&format!("{}: no console output yet", result.vm));
    }
    Ok(Exit::Ok)
}

async fn follow(daemon: &Daemon, r: Request) -> Result<Exit, Failure> {
    let params = api::SubscribeConsoleParams {
        config: r.config,
        vm: r.vm.clone(),
        tail_bytes: Some(r.tail.unwrap_or(api::CONSOLE_DEFAULT_BYTES)),
    };
    let mut sub = daemon
        .subscribe::<_, Box<RawValue>>(
            api::method::SUBSCRIBE_CONSOLE,
            &params,
            api::method::UNSUBSCRIBE_CONSOLE,
        )
        .await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut lines = LineEnds::default();
    let mut first = true;
    loop {
        let Some(raw) = next_followed(&mut sub, ctrl_c.as_mut(), "the console").await? else {
            return Ok(Exit::Ok);
        };
        let chunk: Option<api::ConsoleChunk> = serde_json::from_str(raw.get()).ok();
        let written = if r.json {
            term::json_line(raw.get())
        } else if let Some(chunk) = &chunk {
            if chunk.skipped_bytes > 0 {
                let what = if first {
                    "earlier bytes of the log not shown (--tail BYTES shows more)"
                } else {
                    "bytes of console output left out (the guest wrote faster than castrad \
                     passes on)"
                };
                term::note(&format!("{} {what}", chunk.skipped_bytes));
            }
            let mut text = lines.push(&chunk.text);
            if chunk.end.is_some() {
                text.push_str(lines.finish());
            }
            term::console(&text, r.raw)
        } else {
            Ok(())
        };
        first = false;
        if written.is_err() {
            // Whoever read stdout is gone (`| head`).
            return Ok(Exit::Ok);
        }
        match chunk.and_then(|c| c.end) {
            None => {}
            Some(end) => {
                if !r.json {
                    term::note(&match end {
                        api::ConsoleEnd::Stopped => format!("{} stopped: its console closed", r.vm),
                        api::ConsoleEnd::NotRunning => format!(
                            "{} is not running: that was its log from its last boot",
                            r.vm
                        ),
                    });
                }
                return Ok(Exit::Ok);
            }
        }
    }
}

/// A serial line's `\r\n` made `\n`, across the pieces a stream arrives in; any other `\r`
/// stays (escaped on a terminal).
#[derive(Debug, Default)]
struct LineEnds {
    /// The last piece ended with `\r`.
    held: bool,
}

impl LineEnds {
    fn push(&mut self, piece: &str) -> String {
        let mut text = String::with_capacity(piece.len() + 1);
        if std::mem::take(&mut self.held) && !piece.starts_with('\n') {
            text.push('\r');
        }
        let (body, held) = match piece.strip_suffix('\r') {
            Some(body) => (body, true),
            None => (piece, false),
        };
        text.push_str(&body.replace("\r\n", "\n"));
        self.held = held;
        text
    }

    fn finish(&mut self) -> &'static str {
        if std::mem::take(&mut self.held) {
            "\r"
        } else {
            ""
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_line_ends_become_newlines_across_pieces() {
        let mut l = LineEnds::default();
        assert_eq!(l.push("a\r\nb\r"), "a\nb");
        assert_eq!(l.push("\nc\r"), "\nc");
        assert_eq!(l.push("d"), "\rd");
        assert_eq!(l.push("e\r"), "e");
        assert_eq!(l.finish(), "\r");
        assert_eq!(l.finish(), "");
    }
}
