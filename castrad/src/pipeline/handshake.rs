//! `wait-handshake`: poll the guest's SSH port until it accepts TCP and sends an SSH banner.
//!
//! Starts attempts on a schedule whether or not earlier ones have given up: behind QEMU's user
//! networking a TCP connect succeeds at once even while the guest cannot answer, and the banner
//! wait of such an attempt must not hold back the next one. At most [`OUTSTANDING`] attempts
//! wait at once; a slow server still gets [`ATTEMPT`] to send its banner.
//!
//! The schedule is paced by what the far end says, because every attempt costs the guest:
//! - While attempts go unanswered (the guest's network is not up yet), they start every
//!   [`POLL`] at first, then less often as the wait goes on: a quarter of the time waited so
//!   far, at most every [`QUIET_POLL`]. QEMU's user networking keeps retrying each of these
//!   connections into the guest long after we gave up on it, and those that land once the SSH
//!   server listens each cost a booting guest a forked and re-executed `sshd` (under TCG, a
//!   quarter of a second of its CPU). Probing every 100 ms for the 15 s a cloud image takes
//!   to bring up its network made its first boot 3–5 s slower (docs/PERFORMANCE.md, P8); a
//!   small guest that boots in 2–3 s is still seen within a few hundred milliseconds.
//! - While attempts end at once (refused, or closed before any banner: behind QEMU, the
//!   guest's network is up, its SSH server not yet), they start every `POLL`: they cost
//!   nothing once ended, and a server that comes up is seen within one `POLL`.
//! - Once the guest has answered that way, a connection that stays silent is most likely its
//!   SSH server starting, slowly: at most [`OUTSTANDING_ANSWERED`] attempts wait on it.
//!
//! Never waits past the deadline (sub-second precision), and reports what it is waiting on
//! whenever that changes and every [`HEARTBEAT`], so a watcher always knows why nothing is
//! happening yet.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

pub const POLL: Duration = Duration::from_millis(100);
/// The longest pause between attempts while nothing answers.
const QUIET_POLL: Duration = Duration::from_secs(1);
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long one TCP connect or banner read may take before that attempt gives up.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// How many attempts may be waiting at once (enough to keep probing every POLL while each
/// waits its ATTEMPT behind QEMU's user networking).
const OUTSTANDING: usize = 16;
/// The same once the far end has answered (see the module's documentation).
const OUTSTANDING_ANSWERED: usize = 2;
/// How much a server may send before its banner line (RFC 4253 allows other lines first).
const BANNER_READ_LIMIT: usize = 4096;
/// Stands in for a deadline too far away to compute (about 30 years).
const NO_DEADLINE: Duration = Duration::from_secs(1 << 30);

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
    // Checked: a deadline past what an Instant can hold is as good as none.
    let deadline = start
        .checked_add(timeout)
        .unwrap_or_else(|| start + NO_DEADLINE);
    let mut last_reported: Option<(String, Instant)> = None;
    let mut last_obstacle = None;
    let mut attempts = JoinSet::new();
    let mut next_attempt = start;
    let mut answered = false;
    // Whether the last attempt to finish ended at once, without waiting.
    let mut last_quick = false;
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
        let outstanding = if answered {
            OUTSTANDING_ANSWERED
        } else {
            OUTSTANDING
        };
        if now >= next_attempt && attempts.len() < outstanding {
            let limit = ATTEMPT.min(deadline - now);
            attempts.spawn(attempt(host.to_owned(), port, limit));
            next_attempt = now + pause(now - start, last_quick);
        }
        // At capacity, only a finished attempt (or the deadline) makes room for the next.
        let wake = if attempts.len() < outstanding {
            next_attempt.max(now).min(deadline)
        } else {
            deadline
        };
        let wake = tokio::time::Instant::from_std(wake);
        let waiting_on = tokio::select! {
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(banner)) => return Ok(banner),
                Ok(Err(obstacle)) => {
                    answered |= obstacle.answered;
                    last_quick = obstacle.quick;
                    if last_quick {
                        next_attempt = next_attempt.min(Instant::now() + POLL);
                    }
                    obstacle.why
                }
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

/// How long after an attempt the next one starts (see the module's documentation).
fn pause(waited: Duration, last_quick: bool) -> Duration {
    if last_quick {
        POLL
    } else {
        (waited / 4).clamp(POLL, QUIET_POLL)
    }
}

/// Why one attempt saw no banner.
struct Obstacle {
    /// A short description ("tcp 127.0.0.1:2222: connection refused", ...).
    why: String,
    /// Connected, then closed before any banner: the far end answers, its SSH server is not
    /// up (behind QEMU's user networking: the guest's network is up and refused us).
    answered: bool,
    /// Ended at once (refused, reset, closed), rather than by running out of time.
    quick: bool,
}

impl Obstacle {
    fn quick(why: String) -> Self {
        Obstacle {
            why,
            answered: false,
            quick: true,
        }
    }

    fn silent(why: String) -> Self {
        Obstacle {
            why,
            answered: false,
            quick: false,
        }
    }
}

/// One try: connect, read the banner line.
async fn attempt(host: String, port: u16, limit: Duration) -> Result<String, Obstacle> {
    let started = Instant::now();
    let connect = tokio::time::timeout(limit, TcpStream::connect((host.as_str(), port))).await;
    let mut stream = match connect {
        Err(_) => return Err(Obstacle::silent(format!("tcp {host}:{port}: no answer"))),
        Ok(Err(e)) => {
            return Err(Obstacle::quick(format!(
                "tcp {host}:{port}: {}",
                short_io(&e)
            )));
        }
        Ok(Ok(s)) => s,
    };
    let mut buf = Vec::with_capacity(256);
    let read = tokio::time::timeout(limit.saturating_sub(started.elapsed()), async {
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < BANNER_READ_LIMIT {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let banner_from = format!("ssh banner from {host}:{port}");
    match (read, banner_line(&buf)) {
        (_, Some(line)) => Ok(line),
        (Err(_), None) => Err(Obstacle::silent(format!("{banner_from}: none yet"))),
        (Ok(Err(e)), None) => Err(Obstacle {
            answered: buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset,
            ..Obstacle::quick(format!("{banner_from}: {}", short_io(&e)))
        }),
        (Ok(Ok(())), None) if buf.is_empty() => Err(Obstacle {
            answered: true,
            ..Obstacle::quick(format!("{banner_from}: connection closed"))
        }),
        (Ok(Ok(())), None) => Err(Obstacle::quick(format!("{banner_from}: not an SSH server"))),
    }
}

/// The SSH banner in what a server sent first: its first line starting with `SSH-`, trimmed
/// (invalid UTF-8 replaced). None when there is none.
pub(crate) fn banner_line(received: &[u8]) -> Option<String> {
    String::from_utf8_lossy(received)
        .lines()
        .find(|l| l.starts_with("SSH-"))
        .map(|l| l.trim().to_owned())
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

    /// Once the far end has refused us (the guest's network is up), a silent connection is its
    /// SSH server starting: no more than two attempts wait on it, each of which would cost a
    /// starting OpenSSH a forked `sshd`.
    #[tokio::test]
    async fn a_starting_server_is_not_flooded_once_the_guest_has_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = held.clone();
        tokio::spawn(async move {
            let mut silent = Vec::new();
            let (first, _) = listener.accept().await.unwrap();
            drop(first); // closed before a banner: nothing listens in the guest yet
            loop {
                let (s, _) = listener.accept().await.unwrap();
                silent.push(s); // the SSH server is starting: accepted, no banner yet
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let err = wait("127.0.0.1", port, Duration::from_millis(1200), |_| {})
            .await
            .unwrap_err();
        assert!(err.last.contains("connection closed"), "{err}");
        let held = held.load(std::sync::atomic::Ordering::SeqCst);
        // Probing at full rate would have held about ten.
        assert!((1..=3).contains(&held), "{held} connections held");
    }

    #[test]
    fn unanswered_attempts_slow_down_and_quick_ones_do_not() {
        let ms = Duration::from_millis;
        assert_eq!(pause(ms(0), false), POLL);
        assert_eq!(pause(ms(2000), false), ms(500));
        assert_eq!(pause(ms(60_000), false), QUIET_POLL);
        assert_eq!(pause(ms(60_000), true), POLL);
    }

    /// A guest whose network is not up yet: every connection is accepted (by QEMU) and stays
    /// silent. Attempts thin out as the wait goes on (each would later cost the guest an
    /// `sshd` if its SSH server comes up while QEMU still retries it).
    #[tokio::test]
    async fn a_guest_that_never_answers_is_probed_less_and_less_often() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let mut silent = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                silent.push(s);
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let err = wait("127.0.0.1", port, Duration::from_secs(2), |_| {})
            .await
            .unwrap_err();
        assert!(err.last.contains("none yet"), "{err}");
        // Every POLL for 2 s would be 20; paced, 0.1 s apart at first and 0.5 s at the end.
        let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!((6..=13).contains(&accepted), "{accepted} attempts");
    }

    /// Issue 14 item 15: a timeout too long for an Instant panicked the deadline.
    #[tokio::test]
    async fn an_endless_timeout_does_not_overflow() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"SSH-2.0-OpenSSH_test\r\n").await.unwrap();
        });
        let banner = wait("127.0.0.1", port, Duration::MAX, |_| {}).await;
        assert_eq!(banner.unwrap(), "SSH-2.0-OpenSSH_test");
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

    mod props {
        //! Property tests (issue 14 item 15): whatever a server sends first, reading its
        //! banner does not panic and finds the first `SSH-` line after any others.

        use proptest::prelude::*;

        use super::*;
        use crate::testutil::proptest_config;

        proptest! {
            #![proptest_config(proptest_config(3000))]

            #[test]
            fn any_bytes_give_an_ssh_line_or_none(
                bytes in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..BANNER_READ_LIMIT + 300),
                    "(SSH-|ssh|S|\r|\n|é|\x00){0,40}".prop_map(String::into_bytes),
                ],
            ) {
                if let Some(line) = banner_line(&bytes) {
                    prop_assert!(line.starts_with("SSH-"), "{:?}", line);
                    prop_assert!(!line.contains('\n'));
                    prop_assert_eq!(line.trim(), line.as_str());
                }
            }

            /// Lines before the banner (RFC 4253 allows them) are skipped, whatever their bytes.
            #[test]
            fn the_banner_is_found_after_other_lines(
                before in proptest::collection::vec(
                    proptest::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..40)
                        .prop_filter("not a banner", |l| !String::from_utf8_lossy(l).starts_with("SSH-")),
                    0..4,
                ),
                version in "SSH-2\\.0-[!-~]{1,40}",
                crlf in any::<bool>(),
                after in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                let mut bytes = Vec::new();
                for line in &before {
                    bytes.extend_from_slice(line);
                    bytes.push(b'\n');
                }
                bytes.extend_from_slice(version.as_bytes());
                bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                bytes.extend_from_slice(&after);
                prop_assert_eq!(banner_line(&bytes), Some(version));
            }
        }
    }
}
