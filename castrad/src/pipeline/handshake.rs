//! `wait-handshake`: poll the guest's SSH port until it accepts TCP and sends an SSH banner.
//!
//! Starts an attempt every [`POLL`] whether or not earlier ones have given up: behind QEMU's
//! user networking a TCP connect succeeds at once even while the guest cannot answer, and the
//! banner wait of such an attempt must not hold back the next one (a guest whose SSH server
//! comes up is seen within one `POLL`, not one banner timeout). At most [`OUTSTANDING`]
//! attempts wait at once; a slow server still gets [`ATTEMPT`] to send its banner. Never waits
//! past the deadline (sub-second precision), and reports what it is waiting on whenever that
//! changes and every [`HEARTBEAT`], so a watcher always knows why nothing is happening yet.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

pub const POLL: Duration = Duration::from_millis(100);
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long one TCP connect or banner read may take before that attempt gives up.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// How many attempts may be waiting at once (enough to keep probing every POLL while each
/// waits its ATTEMPT behind QEMU's user networking).
const OUTSTANDING: usize = 16;

/// No SSH banner before the deadline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("timed out after {waited:.1}s waiting for SSH on {host}:{port} (last: {last})")]
pub struct NoBanner {
    pub host: String,
    pub port: u16,
    pub waited: f64,
    /// The last obstacle seen ("tcp 127.0.0.1:2222: connection refused", ...).
    pub last: String,
}

/// Waits until `host:port` answers with an SSH banner. `progress` is called with a description
/// of what is being waited on. The error says what was last in the way.
pub async fn wait(
    host: &str,
    port: u16,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<String, NoBanner> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last_reported: Option<(String, Instant)> = None;
    let mut last_obstacle = None;
    let mut attempts = JoinSet::new();
    let mut next_attempt = start;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(NoBanner {
                host: host.to_owned(),
                port,
                waited: start.elapsed().as_secs_f64(),
                last: last_obstacle.unwrap_or_else(|| "no attempt finished".to_owned()),
            });
        }
        if now >= next_attempt && attempts.len() < OUTSTANDING {
            let limit = ATTEMPT.min(deadline - now);
            attempts.spawn(attempt(host.to_owned(), port, limit));
            next_attempt = now + POLL;
        }
        // At capacity, only a finished attempt (or the deadline) makes room for the next.
        let wake = if attempts.len() < OUTSTANDING {
            next_attempt.max(now).min(deadline)
        } else {
            deadline
        };
        let wake = tokio::time::Instant::from_std(wake);
        let waiting_on = tokio::select! {
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(banner)) => return Ok(banner),
                Ok(Err(why)) => why,
                Err(e) => format!("probe task failed: {e}"),
            },
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let now = Instant::now();
        let report = match &last_reported {
            Some((last, at)) => *last != waiting_on || now.duration_since(*at) >= HEARTBEAT,
            None => true,
        };
        if report {
            progress(&waiting_on);
            last_reported = Some((waiting_on.clone(), now));
        }
        last_obstacle = Some(waiting_on);
    }
}

/// One try: connect, read the banner line. Err is a short description of the obstacle.
async fn attempt(host: String, port: u16, limit: Duration) -> Result<String, String> {
    let started = Instant::now();
    let connect = tokio::time::timeout(limit, TcpStream::connect((host.as_str(), port))).await;
    let mut stream = match connect {
        Err(_) => return Err(format!("tcp {host}:{port}: no answer")),
        Ok(Err(e)) => return Err(format!("tcp {host}:{port}: {}", short_io(&e))),
        Ok(Ok(s)) => s,
    };
    let mut buf = Vec::with_capacity(256);
    let read = tokio::time::timeout(limit.saturating_sub(started.elapsed()), async {
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let banner = String::from_utf8_lossy(&buf);
    let first = banner
        .lines()
        .find(|l| l.starts_with("SSH-"))
        .map(str::trim);
    match (read, first) {
        (_, Some(line)) => Ok(line.to_owned()),
        (Err(_), None) => Err(format!("ssh banner from {host}:{port}: none yet")),
        (Ok(Err(e)), None) => Err(format!("ssh banner from {host}:{port}: {}", short_io(&e))),
        (Ok(Ok(())), None) if buf.is_empty() => {
            Err(format!("ssh banner from {host}:{port}: connection closed"))
        }
        (Ok(Ok(())), None) => Err(format!("ssh banner from {host}:{port}: not an SSH server")),
    }
}

fn short_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn answers_once_a_banner_arrives() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"SSH-2.0-OpenSSH_test\r\n").await.unwrap();
        });
        let banner = wait("127.0.0.1", port, Duration::from_secs(5), |_| {})
            .await
            .unwrap();
        assert_eq!(banner, "SSH-2.0-OpenSSH_test");
    }

    /// QEMU's user networking accepts at once and then stays silent until the guest's SSH
    /// server is up. A server that comes up while an attempt is stuck is still seen within
    /// about one POLL, not after that attempt's banner timeout.
    #[tokio::test]
    async fn a_silent_accept_does_not_hold_back_the_next_attempt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up_at = Instant::now() + Duration::from_millis(300);
        tokio::spawn(async move {
            let mut silent = Vec::new();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                if Instant::now() < up_at {
                    silent.push(s); // accepted, never answered
                } else {
                    let _ = s.write_all(b"SSH-2.0-late\r\n").await;
                }
            }
        });
        let start = Instant::now();
        let banner = wait("127.0.0.1", port, Duration::from_secs(5), |_| {})
            .await
            .unwrap();
        assert_eq!(banner, "SSH-2.0-late");
        let took = start.elapsed();
        assert!(took < Duration::from_millis(900), "{took:?}");
    }

    #[tokio::test]
    async fn times_out_on_time_and_says_what_it_waited_on() {
        // A port nobody listens on: bind, note, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut seen = Vec::new();
        let start = Instant::now();
        let err = wait("127.0.0.1", port, Duration::from_millis(700), |w| {
            seen.push(w.to_owned())
        })
        .await
        .unwrap_err()
        .to_string();
        let took = start.elapsed();
        // Not before the deadline, and not an attempt's 1.5 s after it (room for load between).
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_millis(2000),
            "{took:?}"
        );
        assert!(err.contains("connection refused"), "{err}");
        assert_eq!(
            seen,
            vec![format!("tcp 127.0.0.1:{port}: connection refused")]
        );
    }

    #[tokio::test]
    async fn a_silent_or_wrong_server_is_not_ssh() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let _ = s.write_all(b"HTTP/1.0 400 nope\r\n").await;
            }
        });
        let mut seen = Vec::new();
        let err = wait("127.0.0.1", port, Duration::from_millis(300), |w| {
            seen.push(w.to_owned())
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("not an SSH server"), "{err}");
    }
}
