//! Vizier, the in-guest agent: a small POSIX-sh program (`agent.sh`) that castrad installs,
//! keeps running (exactly one instance, under the guest's supervisor) and asks for a banner.
//!
//! This module owns what castrad knows about the agent: its version (part of every artifact
//! hash, so a new agent re-runs bootstrap), the script text, where it lives in a guest, and
//! how to read its banner. The guest-side steps themselves run in the pipeline's session
//! driver (`pipeline/driver.sh`); the health check, one long-lived `watch` session per VM, in
//! `health.rs`.

pub mod health;

use serde::Deserialize;

/// Version of the agent castrad installs. Changing it changes every `artifact_hash`.
pub const VERSION: &str = "0.2.0";
/// The banner protocol: the first line of `vizier.sh banner` is `VIZIER/<PROTOCOL>`.
pub const PROTOCOL: u32 = 1;
/// How often the agent's `watch` reports (the health check's period).
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How stale a heartbeat may be before the agent counts as hung.
pub const HEARTBEAT_STALE_SECS: i64 = 10;

/// The agent script as it is installed: its version filled in, comments and indentation
/// dropped (it travels on the session's command line, see `pipeline::remote`).
pub fn agent_script() -> String {
    crate::ssh::compact(&include_str!("agent.sh").replace("@VERSION@", VERSION))
}

/// The guest side of choosing and setting up the agent's supervisor (`supervisor.sh`,
/// evaluated by the session driver when it starts the agent), compacted.
pub fn supervisor_script() -> String {
    crate::ssh::compact(include_str!("supervisor.sh"))
}

/// The agent as castrad last saw it on a VM (by a run's handshake or the health check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VizierSeen {
    pub version: String,
    pub pid: u32,
    /// False once a health check failed (until one succeeds again).
    pub healthy: bool,
}

/// What `vizier.sh banner` reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Banner {
    pub version: String,
    pub pid: u32,
    pub started_at: i64,
    pub heartbeat: i64,
    /// The guest's clock when it answered.
    pub now: i64,
}

/// Why a banner is not one castrad accepts.
#[derive(Debug, thiserror::Error)]
pub enum BannerError {
    #[error("expected the banner VIZIER/{PROTOCOL}, got {0:?}")]
    Protocol(String),
    #[error("unreadable banner {json:?}: {source}")]
    Unreadable {
        json: String,
        source: serde_json::Error,
    },
    #[error("the agent's last heartbeat is {0} s old: it is hung")]
    Hung(i64),
    #[error("the agent answering is version {0}, not {VERSION}")]
    Version(String),
}

/// Parses the two banner lines; checks the protocol and that the heartbeat is fresh.
pub fn parse_banner(first: &str, json: &str) -> Result<Banner, BannerError> {
    if first.trim() != format!("VIZIER/{PROTOCOL}") {
        return Err(BannerError::Protocol(first.trim().to_owned()));
    }
    let banner: Banner =
        serde_json::from_str(json.trim()).map_err(|source| BannerError::Unreadable {
            json: json.to_owned(),
            source,
        })?;
    let age = banner.now.saturating_sub(banner.heartbeat);
    if age > HEARTBEAT_STALE_SECS {
        return Err(BannerError::Hung(age));
    }
    Ok(banner)
}

/// [`parse_banner`], and the agent must be this castrad's version.
pub fn parse_own_banner(first: &str, json: &str) -> Result<Banner, BannerError> {
    let banner = parse_banner(first, json)?;
    if banner.version != VERSION {
        return Err(BannerError::Version(banner.version));
    }
    Ok(banner)
}

/// Where the agent lives in a guest bootstrapped as root, unless `vizier_dir` says otherwise.
/// Other users get `<remote_dir>/.vizier` (decided in the guest: `pipeline/driver.sh` and the
/// health check's watch spell these paths too; a test keeps them equal).
pub const ROOT_DIR: &str = "/opt/castra/vizier";
/// The agent's log in a guest bootstrapped as root, unless `vizier_dir` says otherwise.
pub const ROOT_LOG: &str = "/var/log/castra/vizier/service.log";

/// Where the agent is installed in a guest, for messages.
pub fn guest_dir_hint(vizier_dir: Option<&str>) -> String {
    vizier_dir.unwrap_or(ROOT_DIR).to_owned()
}

/// Where the agent's log is in a guest, for messages.
pub fn guest_log_hint(vizier_dir: Option<&str>) -> String {
    match vizier_dir {
        Some(dir) => format!("{dir}/service.log"),
        None => format!("{ROOT_LOG} (root) or <remote_dir>/.vizier/service.log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_is_checked_for_protocol_and_freshness() {
        let ok = parse_banner(
            "VIZIER/1\n",
            r#"{"version":"0.2.0","pid":42,"started_at":100,"heartbeat":120,"now":121}"#,
        )
        .unwrap();
        assert_eq!((ok.version.as_str(), ok.pid), ("0.2.0", 42));
        let err = parse_banner("VIZIER/2", "{}").unwrap_err().to_string();
        assert!(err.contains("expected the banner VIZIER/1"), "{err}");
        let hung = parse_banner(
            "VIZIER/1",
            r#"{"version":"0.2.0","pid":42,"started_at":100,"heartbeat":100,"now":200}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(hung.contains("100 s old"), "{hung}");
        let old = parse_own_banner(
            "VIZIER/1",
            r#"{"version":"0.0.9","pid":42,"started_at":100,"heartbeat":120,"now":121}"#,
        )
        .unwrap_err();
        assert_eq!(
            old.to_string(),
            format!("the agent answering is version 0.0.9, not {VERSION}")
        );
    }

    #[test]
    fn the_guest_side_spells_the_default_paths_as_castrad_does() {
        let driver = crate::pipeline::driver::DRIVER;
        assert!(driver.contains(&format!("vdir={ROOT_DIR}; vlog={ROOT_LOG}\n")));
        assert!(health::WATCH.contains(&format!("then vdir={ROOT_DIR}; else")));
        assert_eq!(guest_dir_hint(None), ROOT_DIR);
        assert_eq!(guest_dir_hint(Some("/v")), "/v");
    }

    #[test]
    fn the_script_carries_its_version_and_passes_sh_n() {
        let script = agent_script();
        assert!(script.contains(&format!("VIZIER_VERSION={VERSION}\n")));
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The supervisor set-up (evaluated by the driver) asked for the respawn loop: it changes
    /// nothing and says why; the unit it would write quotes hostile paths for systemd (one
    /// word each, `%` and `$` doubled), and OpenRC's for the shell, so they read back as they
    /// were.
    #[test]
    fn the_supervisor_set_up_quotes_paths_for_systemd_and_the_shell() {
        let script = supervisor_script();
        let run = |tail: &str, args: &[&str]| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "set -e; root() {{ return 0; }}; vbin=$1; vstate=$2; vlog=$3; shift 3\n\
                     eval \"$VS\"\n{tail}"
                ))
                .arg("sh")
                .args(args)
                .env("VS", &script)
                .env("CASTRA_VIZIER_SUPERVISOR", "loop")
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let hostile = r#"/v/a b/"q"\x/%h/$HOME/'s'"#;
        let paths = [hostile, "/v/state", "/v/service.log"];
        assert_eq!(
            run(r#"printf '%s|%s\n' "$sup" "$why""#, &paths),
            "|CASTRA_VIZIER_SUPERVISOR=loop in the login environment\n"
        );
        let unit = run("vz_user=1000; vz_unit multi-user.target", &paths);
        assert_eq!(
            unit,
            "[Unit]\nDescription=Castra Vizier\n[Service]\nUser=1000\n\
             ExecStart=/bin/sh \"/v/a b/\\\"q\\\"\\\\x/%%h/$$HOME/'s'\" supervise \"/v/state\" \
             \"/v/service.log\"\nRestart=always\nRestartSec=1\n[Install]\nWantedBy=multi-user.target\n"
        );
        // What OpenRC's start-stop-daemon evals, once read back from the init script.
        let words = run(
            r#"eval "a=$(vz_sh "$(vz_sh "$vbin") supervise")"; eval "set -- $a"; printf '%s\n' "$@""#,
            &paths,
        );
        assert_eq!(words, format!("{hostile}\nsupervise\n"));
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// The agent, run locally: one supervisor however often it is enabled, a banner, a
    /// respawn after the agent is killed, and a clean stop.
    #[test]
    fn supervise_keeps_exactly_one_agent_and_respawns_it() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("vizier.sh");
        std::fs::write(&script, agent_script()).unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("service.log");
        let sh = |args: &[&str]| {
            std::process::Command::new("sh")
                .arg(&script)
                .args(args)
                .output()
                .unwrap()
        };
        let (state_s, log_s) = (state.to_str().unwrap(), log.to_str().unwrap());
        // Whatever happens, leave no agent behind.
        struct Stop<'a>(&'a std::path::Path, &'a str);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("sh")
                    .arg(self.0)
                    .args(["stop", self.1])
                    .output();
            }
        }
        let _stop = Stop(&script, state_s);
        for _ in 0..3 {
            let mut child = std::process::Command::new("sh")
                .arg(&script)
                .args(["supervise", state_s, log_s])
                .stdin(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            // A second and third supervisor find the lock held and exit at once.
            let _ = child.try_wait();
        }
        let banner = |sh: &dyn Fn(&[&str]) -> std::process::Output| {
            let out = sh(&["banner", state_s]);
            let text = String::from_utf8(out.stdout).unwrap();
            let mut lines = text.lines();
            parse_banner(lines.next().unwrap_or(""), lines.next().unwrap_or(""))
        };
        let first = banner(&sh).unwrap();
        assert_eq!(first.version, VERSION);

        // `watch` reports the same agent, again and again, and ends once nobody reads.
        let mut watch = std::process::Command::new("sh")
            .arg(&script)
            .args(["watch", state_s, "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
        for _ in 0..2 {
            let head = lines.next().unwrap().unwrap();
            let json = lines.next().unwrap().unwrap();
            assert_eq!(parse_banner(&head, &json).unwrap().pid, first.pid);
        }
        drop(lines);
        let t = std::time::Instant::now();
        while watch.try_wait().unwrap().is_none() {
            assert!(t.elapsed().as_secs() < 5, "watch outlived its reader");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let supervisors = std::fs::read_to_string(&log)
            .unwrap()
            .matches("supervisor started")
            .count();
        assert_eq!(supervisors, 1, "exactly one supervisor");

        // Kill the agent: the supervisor starts another within a couple of seconds.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut second = None;
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Ok(b) = banner(&sh)
                && b.pid != first.pid
            {
                second = Some(b);
                break;
            }
        }
        assert!(second.is_some(), "the agent was not restarted");
        assert!(sh(&["stop", state_s]).status.success());
        assert!(banner(&sh).is_err(), "stopped");
    }

    mod props {
        //! Property tests (issue 14 item 15): no banner panics the parser (the watch reads
        //! one every 2 s from the guest), and a banner as the agent prints it reads back.

        use proptest::prelude::*;

        use super::*;
        use crate::testutil::proptest_config;

        fn wild_i64() -> impl Strategy<Value = i64> {
            prop_oneof![
                any::<i64>(),
                Just(i64::MIN),
                Just(i64::MAX),
                0..2_000_000_000i64
            ]
        }

        proptest! {
            #![proptest_config(proptest_config(3000))]

            #[test]
            fn any_lines_give_a_banner_or_a_reason(
                first in prop_oneof![Just("VIZIER/1".to_owned()), "VIZIER/[0-9]{0,3}", "gone .{0,10}", any::<String>()],
                json in prop_oneof![
                    any::<String>(),
                    "\\{(\"[a-z_]{1,10}\":(-?[0-9]{1,25}|\"[^\"]{0,5}\"|null|\\[\\]),?){0,6}\\}",
                ],
            ) {
                if let Err(e) = parse_own_banner(&first, &json) {
                    prop_assert!(!e.to_string().is_empty());
                }
                let _ = health::parse_report(&first, Some(&json));
                let _ = health::parse_report(&json, None);
            }

            /// Whatever its numbers, a banner reads back as it was written; it is hung exactly
            /// when its heartbeat is more than HEARTBEAT_STALE_SECS older than its clock.
            #[test]
            fn banners_read_back(
                version in prop_oneof![Just(VERSION.to_owned()), any::<String>()],
                pid in any::<u32>(),
                started_at in wild_i64(),
                heartbeat in wild_i64(),
                now in prop_oneof![wild_i64(), (0..=HEARTBEAT_STALE_SECS + 1).prop_map(|d| d)],
                relative in any::<bool>(),
            ) {
                // Half the time `now` is an offset from the heartbeat (a fresh or just stale one).
                let now = if relative { heartbeat.saturating_add(now) } else { now };
                let json = serde_json::json!({
                    "version": version, "pid": pid, "started_at": started_at,
                    "heartbeat": heartbeat, "now": now,
                })
                .to_string();
                let want = Banner { version, pid, started_at, heartbeat, now };
                match parse_banner("VIZIER/1", &json) {
                    Ok(banner) => {
                        prop_assert!(now.saturating_sub(heartbeat) <= HEARTBEAT_STALE_SECS);
                        prop_assert_eq!(banner, want);
                    }
                    Err(BannerError::Hung(age)) => {
                        prop_assert!(age > HEARTBEAT_STALE_SECS);
                        prop_assert_eq!(age, now.saturating_sub(heartbeat));
                    }
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }
        }
    }
}
