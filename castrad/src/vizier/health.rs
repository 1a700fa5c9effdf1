//! The Vizier health check: once a run has seen the agent, castrad keeps one SSH session per
//! VM open in which `vizier.sh watch` prints the agent's banner every [`INTERVAL`], and reports
//! changes: `VizierConnected` when it answers (again), `VizierLost` when it stops answering or
//! was replaced by a new process (its supervisor restarted it).
//!
//! The first session is the run's own: after `done` the session driver turns into the watch,
//! and the run hands its connection, which runs that session, over (a [`Tail`]). A login
//! costs the guest a shell start (with the user's rc files) and a connection costs both ends a
//! key exchange; checking with a new command every 2 s had kept most of a core busy with many
//! VMs on one host. When the session ends or falls silent, the check reports the loss and reconnects with
//! a connection of its own. The VM's actor owns the task and aborts it when the VM stops; the
//! guest side ends at its next write to the closed session.

use std::time::Duration;

use castra_api::Event;
use tokio::sync::watch;

use super::VizierSeen;
use super::{Banner, VERSION, parse_banner};
use crate::events::EventBus;
use crate::pipeline::Remote;
use crate::ssh::{Tail, Target, command_line};
use crate::vm::state::VmSnapshot;

/// How often the agent reports.
const INTERVAL: Duration = super::WATCH_INTERVAL;
/// How long past [`INTERVAL`] a report may be late before the agent counts as not answering.
const GRACE: Duration = Duration::from_secs(8);

/// Runs the watch of the agent installed for this castrad's version. The agent's directory is
/// decided as the session driver decides it.
pub(super) const WATCH: &str = r#"vdir=$1; dir=$2; ver=$3; every=$4
if [ -z "$vdir" ]; then if [ "$(id -u)" = 0 ]; then vdir=/opt/castra/vizier; else vdir=$dir/.vizier; fi; fi
exec sh "$vdir/$ver/vizier.sh" watch "$vdir/state" "$every""#;

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Alive(Banner),
    Gone(String),
}

/// Pure: the events a check's result calls for, given what was seen before.
pub fn changes(vm: &str, before: Option<&VizierSeen>, now: &Seen) -> Vec<Event> {
    match (before, now) {
        (Some(b), Seen::Alive(banner)) if b.healthy && b.pid == banner.pid => Vec::new(),
        (Some(b), Seen::Alive(banner)) if b.healthy => vec![
            Event::VizierLost {
                vm: vm.to_owned(),
                reason: format!("the agent restarted (pid {} is now {})", b.pid, banner.pid),
            },
            Event::VizierConnected {
                vm: vm.to_owned(),
                version: banner.version.clone(),
            },
        ],
        (_, Seen::Alive(banner)) => {
            vec![Event::VizierConnected {
                vm: vm.to_owned(),
                version: banner.version.clone(),
            }]
        }
        (Some(b), Seen::Gone(reason)) if b.healthy => {
            vec![Event::VizierLost {
                vm: vm.to_owned(),
                reason: reason.clone(),
            }]
        }
        (_, Seen::Gone(_)) => Vec::new(),
    }
}

/// Pure: one report of `vizier.sh watch` from its first line (and, for a banner, the next).
/// `None` when the first line is neither a banner nor a `gone` line.
pub fn parse_report(first: &str, next: Option<&str>) -> Option<Seen> {
    if let Some(why) = first.strip_prefix("gone ") {
        return Some(Seen::Gone(format!(
            "the agent does not answer: {}",
            why.trim()
        )));
    }
    if !first.starts_with("VIZIER/") {
        return None;
    }
    Some(match parse_banner(first, next.unwrap_or("")) {
        Ok(banner) => Seen::Alive(banner),
        Err(e) => Seen::Gone(e.to_string()),
    })
}

/// Runs until aborted, first on the session the run handed over (else on a connection of its
/// own to `target`). `vizier_dir` and `remote_dir` locate the agent as the run did.
pub async fn watch(
    target: Target,
    mut handover: Option<Tail>,
    vizier_dir: Option<String>,
    remote_dir: String,
    bus: EventBus,
    snapshot: std::sync::Arc<watch::Sender<VmSnapshot>>,
    remote: std::sync::Arc<dyn Remote>,
) {
    let vm = target.vm.clone();
    let every = INTERVAL.as_secs().to_string();
    let remote_side = remote;
    let command = command_line(&[
        "sh",
        "-c",
        WATCH,
        "castra",
        vizier_dir.as_deref().unwrap_or(""),
        &remote_dir,
        VERSION,
        &every,
    ]);
    let report = |seen: &Seen| {
        let before = snapshot.borrow().vizier.clone();
        for event in changes(&vm, before.as_ref(), seen) {
            bus.publish(None, event);
        }
        snapshot.send_if_modified(|s| {
            let now = match seen {
                Seen::Alive(b) => Some(VizierSeen {
                    version: b.version.clone(),
                    pid: b.pid,
                    healthy: true,
                }),
                Seen::Gone(_) => s.vizier.clone().map(|v| VizierSeen {
                    healthy: false,
                    ..v
                }),
            };
            let changed = s.vizier != now;
            s.vizier = now;
            changed
        });
    };
    loop {
        let session = match handover.take() {
            Some(tail) => Ok(tail),
            None => remote_side.tail(target.clone(), &command),
        };
        match session {
            Err(e) => report(&Seen::Gone(format!("cannot run ssh: {e}"))),
            Ok(mut tail) => {
                // Each report as it comes; a session that ends or falls silent is reported
                // once and replaced (with a new connection: it may be what failed).
                let ended = loop {
                    match tokio::time::timeout(INTERVAL + GRACE, next(&mut tail)).await {
                        Ok(Ok(seen)) => report(&seen),
                        Ok(Err(why)) => break why,
                        Err(_) => {
                            break format!(
                                "the agent did not answer within {} s",
                                (INTERVAL + GRACE).as_secs()
                            );
                        }
                    }
                };
                report(&Seen::Gone(ended));
                tail.close().await;
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// The next report of the watch session; Err when the session ended. Lines that are not
/// reports (a chatty rc file in the guest) are skipped.
async fn next(tail: &mut Tail) -> Result<Seen, String> {
    let ended = || "the session watching the agent ended".to_owned();
    loop {
        let first = tail.next_line().await.ok_or_else(ended)?;
        let next = if first.starts_with("VIZIER/") {
            Some(tail.next_line().await.ok_or_else(ended)?)
        } else {
            None
        };
        if let Some(seen) = parse_report(&first, next.as_deref()) {
            return Ok(seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banner(pid: u32) -> Seen {
        Seen::Alive(Banner {
            version: "0.2.0".into(),
            pid,
            started_at: 1,
            heartbeat: 2,
            now: 3,
        })
    }

    fn seen(pid: u32, healthy: bool) -> VizierSeen {
        VizierSeen {
            version: "0.2.0".into(),
            pid,
            healthy,
        }
    }

    fn kinds(events: Vec<Event>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| {
                serde_json::to_value(e)
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    #[test]
    fn only_changes_are_reported() {
        assert_eq!(kinds(changes("v", None, &banner(1))), ["VizierConnected"]);
        assert!(
            changes("v", Some(&seen(1, true)), &banner(1)).is_empty(),
            "steady state"
        );
        assert_eq!(
            kinds(changes("v", Some(&seen(1, true)), &banner(2))),
            ["VizierLost", "VizierConnected"]
        );
        let gone = Seen::Gone("no answer".into());
        assert_eq!(
            kinds(changes("v", Some(&seen(1, true)), &gone)),
            ["VizierLost"]
        );
        assert!(
            changes("v", Some(&seen(1, false)), &gone).is_empty(),
            "lost once, reported once"
        );
        assert_eq!(
            kinds(changes("v", Some(&seen(1, false)), &banner(3))),
            ["VizierConnected"]
        );
    }

    #[test]
    fn watch_reports_are_parsed() {
        let alive = parse_report(
            "VIZIER/1",
            Some(r#"{"version":"0.2.0","pid":7,"started_at":1,"heartbeat":5,"now":6}"#),
        );
        assert!(matches!(alive, Some(Seen::Alive(b)) if b.pid == 7));
        assert_eq!(
            parse_report("gone vizier: not running", None),
            Some(Seen::Gone(
                "the agent does not answer: vizier: not running".into()
            ))
        );
        let hung = parse_report(
            "VIZIER/1",
            Some(r#"{"version":"0.2.0","pid":7,"started_at":1,"heartbeat":5,"now":60}"#),
        );
        assert!(matches!(hung, Some(Seen::Gone(why)) if why.contains("hung")));
        assert_eq!(parse_report("Welcome to the guest!", None), None);
    }
}
