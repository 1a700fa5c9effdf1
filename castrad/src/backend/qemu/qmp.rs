//! A minimal QMP client: enough to ask QEMU its status and to press the ACPI power button.
//!
//! QMP is JSON lines over a Unix socket: a greeting, `qmp_capabilities` to leave negotiation
//! mode, then commands answered by `return` or `error`, with asynchronous `event` lines in
//! between (skipped here).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP: no answer within {0:?}")]
    Timeout(Duration),
    #[error("QMP: {0}")]
    Protocol(String),
}

#[derive(Debug)]
pub struct Qmp {
    path: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Qmp {
    /// Connects and negotiates capabilities; every exchange is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let display = path.display().to_string();
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout(timeout))?
            .map_err(|source| QmpError::Io {
                path: display.clone(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            path: display,
            reader: BufReader::new(read),
            writer,
            timeout,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout(self.timeout))?
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Protocol("QEMU closed the connection".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| QmpError::Protocol(format!("bad JSON {line:?}: {e}")))
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command }).to_string();
        request.push('\n');
        self.writer
            .write_all(request.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let message = self.read_message().await?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(QmpError::Protocol(format!("{command}: {error}")));
            }
            // An asynchronous event: not ours.
        }
    }

    /// `query-status`: `running`, `paused`, `shutdown`...
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let value = self.execute("query-status").await?;
        value["status"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status answered {value}")))
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown").await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// A scripted QMP peer: greets, then answers each request line with `answers` in order.
    fn fake_qemu(path: &Path, answers: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = std::io::BufReader::new(stream);
            writeln!(
                writer,
                r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#
            )
            .unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                seen.push(line.trim().to_owned());
                writeln!(writer, "{answer}").unwrap();
            }
            seen
        })
    }

    #[tokio::test]
    async fn negotiates_then_skips_events_to_find_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let peer = fake_qemu(
            &path,
            vec![
                r#"{"return": {}}"#,
                "{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {\"status\": \"running\", \"running\": true}}",
                r#"{"return": {}}"#,
            ],
        );
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.status().await.unwrap(), "running");
        qmp.system_powerdown().await.unwrap();
        let seen = peer.join().unwrap();
        assert_eq!(
            seen,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"query-status"}"#,
                r#"{"execute":"system_powerdown"}"#
            ]
        );
    }

    #[tokio::test]
    async fn errors_name_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _peer = fake_qemu(
            &path,
            vec![
                r#"{"return": {}}"#,
                r#"{"error": {"class": "GenericError", "desc": "nope"}}"#,
            ],
        );
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let err = qmp.system_powerdown().await.unwrap_err().to_string();
        assert!(err.starts_with("QMP: system_powerdown: "), "{err}");
    }
}
