//! The Vizier health check: once a run has seen the agent, castrad keeps asking it for its
//! banner over a pinned SSH connection of its own, every [`INTERVAL`], and reports changes:
//! `VizierConnected` when it answers (again), `VizierLost` when it stops answering or was
//! replaced by a new process (its supervisor restarted it).
//!
//! The check owns its ControlMaster; it reconnects after a failure. The VM's actor owns the
//! task and aborts it when the VM stops.

use std::time::Duration;

use castra_api::Event;
use tokio::sync::watch;

use super::{Banner, VERSION, parse_banner};
use crate::events::EventBus;
use crate::ssh::{Master, Target, command_line};
use crate::vm::{VizierSeen, VmSnapshot};

/// How often the agent is asked.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Asks for the banner of the agent installed for this castrad's version. The agent's
/// directory is decided as the session driver decides it.
const BANNER: &str = r#"vdir=$1; dir=$2; ver=$3
if [ -z "$vdir" ]; then if [ "$(id -u)" = 0 ]; then vdir=/opt/castra/vizier; else vdir=$dir/.vizier; fi; fi
exec sh "$vdir/$ver/vizier.sh" banner "$vdir/state""#;

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

/// Runs until aborted. `vizier_dir` and `remote_dir` locate the agent as the run did.
pub async fn watch(
    target: Target,
    vizier_dir: Option<String>,
    remote_dir: String,
    bus: EventBus,
    snapshot: std::sync::Arc<watch::Sender<VmSnapshot>>,
) {
    let vm = target.vm.clone();
    let mut master: Option<Master> = None;
    loop {
        if master.is_none() {
            master = Master::connect(target.clone()).await.ok();
        }
        let seen = match &master {
            None => Seen::Gone("the guest's SSH server does not accept us".into()),
            Some(m) => {
                let words = [
                    "sh",
                    "-c",
                    BANNER,
                    "castra",
                    vizier_dir.as_deref().unwrap_or(""),
                    &remote_dir,
                    VERSION,
                ];
                check(m, &command_line(&words)).await
            }
        };
        if let Seen::Gone(_) = &seen
            && let Some(m) = master.take()
        {
            // Reconnect next time: the connection may be what failed.
            m.close().await;
        }
        let before = snapshot.borrow().vizier.clone();
        for event in changes(&vm, before.as_ref(), &seen) {
            bus.publish(None, event);
        }
        snapshot.send_modify(|s| match &seen {
            Seen::Alive(b) => {
                s.vizier = Some(VizierSeen {
                    version: b.version.clone(),
                    pid: b.pid,
                    healthy: true,
                });
            }
            Seen::Gone(_) => {
                if let Some(v) = &mut s.vizier {
                    v.healthy = false;
                }
            }
        });
        tokio::time::sleep(INTERVAL).await;
    }
}

async fn check(master: &Master, remote: &str) -> Seen {
    let out = tokio::time::timeout(Duration::from_secs(5), master.command(remote).output()).await;
    match out {
        Err(_) => Seen::Gone("the agent did not answer within 5 s".into()),
        Ok(Err(e)) => Seen::Gone(format!("cannot run ssh: {e}")),
        Ok(Ok(out)) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no answer");
            Seen::Gone(format!("the agent does not answer: {}", why.trim()))
        }
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            match parse_banner(lines.next().unwrap_or(""), lines.next().unwrap_or("")) {
                Ok(banner) => Seen::Alive(banner),
                Err(e) => Seen::Gone(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banner(pid: u32) -> Seen {
        Seen::Alive(Banner {
            version: "0.1.0".into(),
            pid,
            started_at: 1,
            heartbeat: 2,
            now: 3,
        })
    }

    fn seen(pid: u32, healthy: bool) -> VizierSeen {
        VizierSeen {
            version: "0.1.0".into(),
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
}
