//! The non-Rust clients in clients/ (issue 15 §4), run against a real castrad and a fleet of
//! `external` VMs behind a real sshd: plan, up with its live feed, outcome, status and logs,
//! each answer checked by the client against the schema castrad serves; and the Neovim plugin
//! of editors/nvim, headless.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::fleet::Fleet;

const TWO_WEBS: &str = r#"
[[vms]]
name = "web"
replicas = 2
backend = "external"
SSH
[vms.bootstrap]
script = "scripts/web.sh"
payload = "payload"
verify_path = "done"
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Run {
    code: i32,
    lines: Vec<Value>,
    stderr: String,
}

impl Run {
    /// The count the client prints of the messages it validated against the served schema.
    fn validated(&self) -> usize {
        let line = self
            .stderr
            .lines()
            .find(|l| l.ends_with("messages validated against the served schema"))
            .unwrap_or_else(|| panic!("no validation count in: {}", self.stderr));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn only(&self) -> &Value {
        assert_eq!(self.code, 0, "{}", self.stderr);
        assert_eq!(self.lines.len(), 1, "{:?}", self.lines);
        &self.lines[0]
    }
}

/// Runs `program CLIENT ARGS` against the fleet's daemon (in the project's directory).
fn client(fleet: &Fleet, program: &str, client: &str, args: &[&str]) -> Run {
    let out = Command::new(program)
        .arg(repo().join(client))
        .args(args)
        .current_dir(fleet.project())
        .env("CASTRA_SOCKET", fleet.env.socket())
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/setup installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    Run {
        code: out.status.code().unwrap_or(-1),
        lines,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// plan, up (live events), outcome, status, logs and an error, through `program CLIENT`.
fn drives_a_real_castrad(program: &str, client_path: &str) {
    let fleet = Fleet::new(TWO_WEBS);
    let run = |args: &[&str]| client(&fleet, program, client_path, args);

    let plan = run(&["plan", "castra.toml"]);
    let planned: Vec<(&str, &str)> = plan.only()["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["vm"].as_str().unwrap(), v["action"].as_str().unwrap()))
        .collect();
    assert_eq!(planned, [("web-0", "run"), ("web-1", "run")]);
    assert_eq!(plan.validated(), 1, "the plan result");

    let up = run(&["up", "castra.toml"]);
    assert_eq!(up.code, 0, "{}", up.stderr);
    let (outcome, events) = up.lines.split_last().unwrap();
    let outcome = &outcome["outcome"];
    let statuses: Vec<&str> = outcome["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Success", "Success"], "{outcome}");
    for vm in ["web-0", "web-1"] {
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| &e["event"]["event"])
            .filter_map(|e| e.as_object()?.iter().next())
            .filter(|(_, body)| body["vm"] == vm)
            .map(|(kind, _)| kind.as_str())
            .collect();
        assert_eq!(kinds.first(), Some(&"BootstrapPlanned"), "{vm}: {kinds:?}");
        assert!(kinds.contains(&"BootstrapStep"), "{vm}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"BootstrapCompleted"), "{vm}: {kinds:?}");
        assert_eq!(fleet.guest_runs(vm), 1, "{vm} ran once");
    }
    // castra.up, every event shown, castra.outcome.
    assert!(up.validated() >= events.len() + 2, "{}", up.stderr);
    let operation = outcome["operation"].as_str().unwrap();
    assert!(events.iter().all(|e| e["event"]["operation"] == operation));

    let again = run(&["outcome", operation]);
    assert_eq!(again.only(), outcome);

    let status = run(&["status", "castra.toml"]);
    let vms: Vec<&str> = status.only()["projects"][0]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vms, ["web-0", "web-1"]);

    let logs = run(&["logs", "castra.toml", "web-1"]);
    let logs = logs.only();
    assert_eq!(logs["log"]["status"], "success", "{logs}");
    assert_eq!(logs["log"]["operation"], operation);
    assert_eq!(logs["runs"].as_array().unwrap().len(), 1);

    let unknown = run(&["logs", "castra.toml", "nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("-32002"), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("nope"), "{}", unknown.stderr);
}

/// Debian's python3, the one python3-websockets and python3-jsonschema (scripts/setup) are for.
#[test]
fn python_client_drives_a_real_castrad() {
    drives_a_real_castrad("/usr/bin/python3", "clients/python/castra_client.py");
}

/// node with the npm packages of clients/node (`npm ci` there; scripts/test runs it).
#[test]
fn node_client_drives_a_real_castrad() {
    assert!(
        repo().join("clients/node/node_modules/ws").is_dir(),
        "clients/node has no node_modules: run `npm ci` there (scripts/test does)"
    );
    drives_a_real_castrad("node", "clients/node/castra-client.js");
}

/// The Node client lists the methods from the served OpenRPC document, as an editor would
/// build its commands.
#[test]
fn node_client_lists_the_served_methods() {
    let fleet = Fleet::new(TWO_WEBS);
    let methods = client(
        &fleet,
        "node",
        "clients/node/castra-client.js",
        &["methods"],
    );
    let names: Vec<&str> = methods
        .only()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for name in [
        "castra.plan",
        "castra.up",
        "castra.outcome",
        "castra.status",
        "castra.logs",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
}

/// The Neovim plugin (editors/nvim), headless: :CastraStatus, :CastraUp with its live feed from
/// `castractl events --json`, :CastraLogs.
#[test]
fn neovim_plugin_drives_a_real_castrad() {
    let fleet = Fleet::new(TWO_WEBS);
    let plugin = repo().join("editors/nvim");
    // Any error in the script quits nvim with status 1 (headless nvim would wait forever), and
    // `timeout` bounds the rest.
    let script = format!(
        "lua local ok, e = pcall(dofile, {:?}) if not ok then \
         io.stdout:write('ERROR ' .. tostring(e) .. '\\n') vim.cmd('cquit 1') end",
        plugin.join("test/run.lua").display().to_string()
    );
    let out = Command::new("timeout")
        .args([
            "60",
            "nvim",
            "--headless",
            "--clean",
            "-u",
            "NONE",
            "-i",
            "NONE",
            "--cmd",
        ])
        .arg(format!("set rtp^={}", plugin.display()))
        .arg("-c")
        .arg(script)
        .current_dir(fleet.project())
        .env("CASTRA_SOCKET", fleet.env.socket())
        .env("CASTRA_CASTRACTL", crate::support::CASTRACTL)
        .output()
        .expect("nvim (scripts/setup installs neovim)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    let section = |title: &str, nth: usize| -> Vec<&str> {
        let start = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == format!("== {title}"))
            .nth(nth)
            .unwrap_or_else(|| panic!("no {title} in {stdout}"))
            .0;
        lines[start + 1..]
            .iter()
            .take_while(|l| !l.starts_with("== ") && !l.starts_with("statusline"))
            .copied()
            .collect()
    };
    let status = section("CastraStatus", 0);
    assert_eq!(status[0], "project fleet", "{stdout}");
    assert!(
        status[1].starts_with("web-0") && status[2].starts_with("web-1"),
        "{stdout}"
    );

    let up = section("CastraUp", 0);
    for vm in ["web-0", "web-1"] {
        let step = |s: &str| {
            up.iter()
                .any(|l| l.split_whitespace().eq([vm, s, "success"]))
        };
        assert!(step("apply") && step("verify"), "{vm} steps in {stdout}");
        assert!(
            up.iter().any(|l| l.split_whitespace().eq([vm, "Success"])),
            "{stdout}"
        );
        assert_eq!(fleet.guest_runs(vm), 1, "{vm} ran once");
    }
    assert_eq!(up.last(), Some(&"outcome: 2 Success"), "{stdout}");
    assert!(lines.contains(&"statusline castra: 2 Success"), "{stdout}");

    let logs = section("CastraLogs web-0", 0);
    assert!(
        logs[0].starts_with("web-0 run ") && logs[0].contains(": success"),
        "{stdout}"
    );
    assert!(
        logs.iter().any(|l| l.trim() == "verify           success"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("vim.NIL"),
        "nulls shown as nothing: {stdout}"
    );
}

/// The Neovim plugin's :CastraUp buffer fed `castractl events --json` lines without castrad
/// (editors/nvim/test/fetch.lua): a base image's `ImageFetch` events update one line in place.
#[test]
fn neovim_plugin_shows_image_fetches_in_place() {
    let plugin = repo().join("editors/nvim");
    let script = "lua local ok, e = pcall(dofile, 'test/fetch.lua') if not ok then \
                  io.stdout:write('ERROR ' .. tostring(e) .. '\\n') vim.cmd('cquit 1') end";
    let out = Command::new("timeout")
        .args([
            "30",
            "nvim",
            "--headless",
            "--clean",
            "-u",
            "NONE",
            "-i",
            "NONE",
            "--cmd",
        ])
        .arg(format!("set rtp^={}", plugin.display()))
        .arg("-c")
        .arg(script)
        .current_dir(&plugin)
        .output()
        .expect("nvim (scripts/setup installs neovim)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "web-0            image  done  12.0 MiB  https://h/debian.qcow2"),
        "{stdout}"
    );
}
