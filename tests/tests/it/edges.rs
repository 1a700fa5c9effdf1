//! The protocol's promises on its edge paths (issue 15, sections 3 and 5): every VM of an `up`
//! gets exactly one terminal event, also when planning fails or castrad stops mid-run (a busy
//! VM: bootstrap.rs, a QEMU that cannot launch: qemu.rs); castractl exits 2 for an unknown VM
//! name whatever the command, and `castractl version` works without castrad.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::fleet::{Fleet, Up};
use crate::support::{Env, wait_until};

/// The bootstrap events of `vm` in `up` (steps with their names), checked against the rule of
/// PROTOCOL.md: exactly one terminal event and it is the last; anything before it starts with
/// `BootstrapPlanned`.
pub fn story(up: &Up, vm: &str) -> Vec<String> {
    let story = up.sequence(vm);
    let terminal = |k: &String| k.starts_with("BootstrapCompleted") || k == "BootstrapFailed";
    let bootstrap: Vec<&String> = story
        .iter()
        .filter(|k| k.starts_with("Bootstrap"))
        .collect();
    assert_eq!(
        bootstrap.iter().filter(|k| terminal(k)).count(),
        1,
        "{vm}: {story:?}"
    );
    assert!(
        bootstrap.last().is_some_and(|k| terminal(k)),
        "{vm}: {story:?}"
    );
    if bootstrap.len() > 1 {
        assert_eq!(bootstrap[0], "BootstrapPlanned", "{vm}: {story:?}");
    }
    story
}

const BOX: &str = "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\n\
                   script = \"scripts/box.sh\"\npayload = \"payload\"\n";

#[test]
fn a_plan_that_cannot_be_made_ends_with_one_failed_and_no_planned() {
    let fleet = Fleet::new(BOX);
    fleet.env.write(&[
        ("p/scripts/box.sh", "echo never\n"),
        ("p/payload/readme", "x"),
    ]);
    // A FIFO in the payload cannot be hashed or sent: the plan fails, after `up` accepted it.
    let fifo = fleet.project().join("payload/pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let up = fleet.up(&[]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    assert_eq!(up.statuses(), ["Failed"]);
    assert_eq!(story(&up, "box"), ["BootstrapFailed"]);
    let error = up.event("box", "BootstrapFailed")[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("FIFO"), "{error}");
    assert_eq!(up.outcome_of("box")["error"], error.as_str());
    assert_eq!(fleet.logs("box").len(), 1, "the failure has its log");
    assert_eq!(fleet.guest_runs("box"), 0);
}

#[test]
fn castrad_stopping_mid_run_still_ends_the_vms_events_and_answers_the_outcome() {
    let mut fleet = Fleet::new(
        "[[vms]]\nname = \"slow\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/slow.sh\"\n",
    );
    fleet
        .env
        .write(&[("p/scripts/slow.sh", "echo started; sleep 30\n")]);
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    let follower = fleet.env.spawn_ctl(&fleet.project(), &["up", "--json"]);
    wait_until(Duration::from_secs(20), "the script to start", || {
        let s = fleet
            .env
            .http_rpc("castra.status", json!({"config": config}));
        (s["result"]["projects"][0]["vms"][0]["current_step"] == "apply").then_some(())
    });
    assert!(fleet.take_daemon().terminate().success(), "a graceful stop");
    let out = follower.wait_with_output().unwrap();
    let up = Up::parse(
        out.status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    );
    let story = story(&up, "slow");
    assert_eq!(
        story[..2],
        ["BootstrapPlanned", "BootstrapStarted"],
        "{story:?}"
    );
    assert_eq!(story.last().unwrap(), "BootstrapFailed");
    let failed = up.event("slow", "BootstrapFailed")[0];
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("castrad stopped during the run"),
        "{failed}"
    );
    assert_eq!(up.statuses(), ["Failed"]);
    assert_eq!(up.code, 1);
}

#[test]
fn an_unknown_vm_name_exits_2_with_every_command() {
    let fleet = Fleet::new(BOX);
    fleet
        .env
        .write(&[("p/scripts/box.sh", "true\n"), ("p/payload/readme", "x")]);
    let commands: [&[&str]; 6] = [
        &["logs", "nope"],
        &["ssh", "nope", "--", "true"],
        &["ssh-config", "nope"],
        &["cancel", "nope"],
        &["down", "nope"],
        &["up", "--bootstrap", "nope=always"],
    ];
    for args in commands {
        let out = fleet.env.ctl(&fleet.project(), args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains("nope"), "{args:?}: {out:?}");
        let mut json = args.to_vec();
        json.push("--json");
        if args[0] == "ssh" {
            // `--json` after `--` would be part of the remote command.
            json = vec!["--json", "ssh", "nope", "--", "true"];
        }
        let out = fleet.env.ctl(&fleet.project(), &json);
        assert_eq!(out.code, 2, "{json:?}: {out:?}");
        let error = &out.json()["error"];
        assert_eq!(error["kind"], "preflight", "{json:?}: {error}");
        assert_eq!(error["rpc"]["code"], -32002, "{json:?}: {error}");
    }
}

#[test]
fn version_works_without_castrad_and_exits_3_only_when_asked_for_castrads() {
    let env = Env::new();
    let ours = env!("CARGO_PKG_VERSION");
    let out = env.ctl(env.dir.path(), &["version"]).ok();
    assert!(out.stdout.contains(&format!("castractl {ours}")), "{out:?}");
    assert!(out.stdout.contains("castrad not reachable"), "{out:?}");
    let json = env.ctl(env.dir.path(), &["version", "--json"]).ok().json();
    assert_eq!(json["castractl"], ours);
    assert!(json["castrad"].is_null(), "{json}");
    assert!(
        json["unreachable"]
            .as_str()
            .unwrap()
            .contains("castrad is not running"),
        "{json}"
    );
    let required = env.ctl(env.dir.path(), &["version", "--daemon"]);
    assert_eq!(required.code, 3, "{required:?}");
    assert!(
        required.stderr.contains("cannot reach castrad"),
        "{required:?}"
    );

    let _daemon = env.start_daemon();
    let both = env
        .ctl(env.dir.path(), &["version", "--daemon", "--json"])
        .ok()
        .json();
    assert_eq!(both["castrad"]["protocol"], 1);
    let text = env.ctl(env.dir.path(), &["version"]).ok();
    assert!(text.stdout.contains("castrad ") && !text.stdout.contains("not reachable"));
}

/// Issue 15 §5: castractl's own `--json` objects (a failure, the version pair, up's last line)
/// are described by the OpenRPC document, and the harness holds them to it: what castractl
/// prints passes, and the same object with a field the document does not describe, or a kind
/// it does not list, fails.
#[test]
fn castractls_own_json_objects_are_held_to_their_schemas() {
    let env = Env::new();
    let version = env.ctl(env.dir.path(), &["version", "--json"]).ok().json();
    let failure = env.ctl(env.dir.path(), &["status", "--json"]);
    assert_eq!(failure.code, 3, "{failure:?}");
    let failure = failure.json();
    assert_eq!(failure["error"]["kind"], "unreachable", "{failure}");
    let rejected = |schema: &str, value: serde_json::Value| {
        let value2 = value.clone();
        let schema = schema.to_owned();
        let result = std::panic::catch_unwind(move || crate::contract::component(&schema, &value2));
        assert!(result.is_err(), "the schema accepted {value}");
    };
    let mut extra = version.clone();
    extra["extra"] = serde_json::json!(1);
    rejected("CastractlVersion", extra);
    let mut kind = failure.clone();
    kind["error"]["kind"] = serde_json::json!("mystery");
    rejected("CastractlFailure", kind);
    rejected(
        "CastractlOutcome",
        serde_json::json!({"outcome": {"operation": "op-1", "project": "p", "outcomes": [{}]}}),
    );
}
