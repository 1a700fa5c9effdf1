//! The `Fleet` fixture: a project of `external` VMs behind one real OpenSSH sshd on
//! 127.0.0.1 (one remote_dir each), its private castrad, and `Up`, the parsed result of a
//! `castractl up --json`.

use std::path::PathBuf;

use serde_json::Value;

use crate::sshd::Sshd;
use crate::support::{Daemon, Env};

const WEB_SCRIPT: &str = r#"#!/bin/sh
set -eu
echo "web $CASTRA_VM run $CASTRA_RUN_ID"
echo "$CASTRA_RUN_ID" >> "../$CASTRA_VM.runs"
cp "$CASTRA_PAYLOAD_DIR/index.html" ./index.html
touch done
"#;

pub const DB_SCRIPT: &str = r#"#!/bin/sh
set -eu
echo "$CASTRA_RUN_ID" >> "../$CASTRA_VM.runs"
echo "schema v1" > marker
"#;

/// One external VM, `db`, running scripts/db.sh (`vms` for [`Fleet::new`]).
pub const ONE_VM: &str = r#"
[[vms]]
name = "db"
backend = "external"
SSH
[vms.bootstrap]
script = "scripts/db.sh"
"#;

/// A project of `external` VMs behind one sshd, and its daemon.
pub struct Fleet {
    pub env: Env,
    pub sshd: Sshd,
    /// Kept alive for as long as the fleet is.
    daemon: Option<Daemon>,
}

impl Fleet {
    /// `vms` is the `[[vms]]` part of castra.toml with `SSH` standing for the ssh table.
    pub fn new(vms: &str) -> Fleet {
        Fleet::new_with(vms, |_| {})
    }

    /// [`Fleet::new`] with castrad's command adjusted by `configure`.
    pub fn new_with(vms: &str, configure: impl FnOnce(&mut std::process::Command)) -> Fleet {
        Fleet::new_from(
            vms,
            |mut command| {
                configure(&mut command);
                command
            },
            Sshd::start,
        )
    }

    /// [`Fleet::new`] with castrad's command made by `command` from the usual one, and the
    /// guests' sshd started by `sshd` (in the directory it is given).
    pub fn new_from(
        vms: &str,
        command: impl FnOnce(std::process::Command) -> std::process::Command,
        sshd: impl FnOnce(&std::path::Path) -> Sshd,
    ) -> Fleet {
        Fleet::new_in(Env::new(), vms, command, sshd)
    }

    /// [`Fleet::new_from`] in `env`.
    pub fn new_in(
        env: Env,
        vms: &str,
        command: impl FnOnce(std::process::Command) -> std::process::Command,
        sshd: impl FnOnce(&std::path::Path) -> Sshd,
    ) -> Fleet {
        let sshd = sshd(&env.path("sshd"));
        let guest = env.path("guest");
        std::fs::create_dir_all(&guest).unwrap();
        let mut vms = vms.replace("SSH", &sshd.ssh_table());
        if !vms.contains("vizier_dir") {
            // One Vizier per VM, inside this test's directory (the "guests" share a host).
            let own = format!(
                "[vms.bootstrap]\nvizier_dir = \"{}/vizier/{{vm}}\"\n",
                guest.display()
            );
            vms = vms.replace("[vms.bootstrap]\n", &own);
        }
        let config = format!(
            "[project]\nname = \"fleet\"\n\n[bootstrap]\nremote_dir = \"{}/{{vm}}\"\n\
             handshake_timeout_secs = 10\n\n{vms}",
            guest.display(),
        );
        env.write(&[
            ("p/castra.toml", &config),
            ("p/scripts/web.sh", WEB_SCRIPT),
            ("p/scripts/db.sh", DB_SCRIPT),
            ("p/payload/index.html", "<h1>castra</h1>\n"),
        ]);
        let daemon = env.spawn_daemon(command(env.castrad_command()));
        Fleet {
            env,
            sshd,
            daemon: Some(daemon),
        }
    }

    pub fn project(&self) -> PathBuf {
        self.env.path("p")
    }

    /// `castractl up --json ARGS`: the events and the outcome.
    pub fn up(&self, args: &[&str]) -> Up {
        let mut full = vec!["up", "--json"];
        full.extend_from_slice(args);
        let out = self.env.ctl(&self.project(), &full);
        Up::parse(out.code, &out.stdout, &out.stderr)
    }

    /// How many times the script of `vm` ran in the guest.
    pub fn guest_runs(&self, vm: &str) -> usize {
        std::fs::read_to_string(self.env.path(&format!("guest/{vm}.runs")))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    pub fn state_root(&self) -> PathBuf {
        self.env.project_state()
    }

    pub fn stamp(&self, vm: &str) -> Option<Value> {
        let bytes = std::fs::read(self.state_root().join(format!("stamps/{vm}.json"))).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// The durable logs of `vm`, oldest first.
    pub fn logs(&self, vm: &str) -> Vec<Value> {
        let dir = self.state_root().join("logs/bootstrap");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter(|n| {
                n.ends_with(".json") && n.strip_prefix(vm).is_some_and(|r| r.starts_with("-2"))
            })
            .map(|n| serde_json::from_slice(&std::fs::read(dir.join(n)).unwrap()).unwrap())
            .collect()
    }
}

impl Fleet {
    /// Takes the daemon out (to stop it).
    pub fn take_daemon(&mut self) -> Daemon {
        self.daemon.take().expect("the daemon runs")
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // The Vizier agents this test started on the shared host.
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(self.env.path("guest/vizier"))
            .status();
    }
}

pub struct Up {
    pub code: i32,
    pub events: Vec<Value>,
    pub outcome: Value,
    pub stderr: String,
}

impl Up {
    /// Reads `castractl up --json` output: event lines, then `{"outcome": …}`.
    pub fn parse(code: i32, stdout: &str, stderr: &str) -> Up {
        let mut events = Vec::new();
        let mut outcome = Value::Null;
        for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            crate::contract::castractl_line(&v);
            if v.get("outcome").is_some() {
                outcome = v["outcome"].clone();
            } else {
                events.push(v);
            }
        }
        Up {
            code,
            events,
            outcome,
            stderr: stderr.to_owned(),
        }
    }

    /// Each VM's outcome status, in order. Failures' errors are logged so that a failed
    /// assertion on this list says why.
    pub fn statuses(&self) -> Vec<String> {
        let outcomes = self.outcome["outcomes"]
            .as_array()
            .unwrap_or_else(|| panic!("no outcome; stderr: {}", self.stderr));
        for o in outcomes.iter().filter(|o| !o["error"].is_null()) {
            eprintln!("{}: {}", o["vm"], o["error"]);
        }
        outcomes
            .iter()
            .map(|o| o["status"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn outcome_of(&self, vm: &str) -> &Value {
        self.outcome["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["vm"] == vm)
            .unwrap()
    }

    /// The event kinds of `vm`, in order, with step names for steps: `BootstrapStep:connect:success`.
    pub fn sequence(&self, vm: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| {
                let (kind, body) = e["event"].as_object()?.iter().next()?;
                let about = body.get("vm").and_then(Value::as_str)?;
                if about != vm {
                    return None;
                }
                let s = |k: &str| body[k].as_str().unwrap_or("?").to_owned();
                Some(match kind.as_str() {
                    "BootstrapStep" => format!("{kind}:{}:{}", s("step"), s("status")),
                    "BootstrapCompleted" => format!("{kind}:{}", s("status")),
                    // How the base image's download or import goes: not the VM's lifecycle.
                    "BootstrapProgress" | "BootstrapOutput" | "ImageFetch" => String::new(),
                    _ => kind.clone(),
                })
            })
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn event<'a>(&'a self, vm: &str, kind: &str) -> Vec<&'a Value> {
        self.events
            .iter()
            .filter_map(|e| e["event"].get(kind))
            .filter(|body| body["vm"] == vm)
            .collect()
    }
}
