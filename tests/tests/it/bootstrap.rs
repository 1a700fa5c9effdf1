//! The bootstrap pipeline end to end: real castrad, real socket, castractl, and a real OpenSSH
//! sshd on 127.0.0.1 as the guest of several `external` VMs (one remote_dir each).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::DB_SCRIPT;
pub use crate::fleet::{Fleet, Up};
use crate::support::snapshot;

const FOUR_VMS: &str = r#"
[[vms]]
name = "web"
replicas = 3
backend = "external"
SSH
[vms.bootstrap]
script = "scripts/web.sh"
payload = "payload"
verify_path = "done"

[[vms]]
name = "db"
backend = "external"
SSH
[vms.bootstrap]
script = "scripts/db.sh"
verify_command = "test -s marker"
"#;

const ALL: [&str; 4] = ["web-0", "web-1", "web-2", "db"];

fn full_run(verify: &str) -> Vec<String> {
    let mut s = vec!["BootstrapPlanned".to_owned(), "BootstrapStarted".to_owned()];
    s.push("BootstrapStep:wait-handshake:success".to_owned());
    for step in ["vizier-install", "vizier-enable", "vizier-handshake"] {
        s.push(format!("BootstrapStep:{step}:success"));
    }
    for step in ["connect", "transfer", "apply"] {
        s.push(format!("BootstrapStep:{step}:success"));
    }
    s.push(format!("BootstrapStep:verify:{verify}"));
    s.push("BootstrapCompleted:Success".to_owned());
    s
}

#[test]
fn first_up_bootstraps_every_vm_once_and_a_rerun_is_a_noop_that_touches_nothing() {
    let fleet = Fleet::new(FOUR_VMS);
    let first = fleet.up(&[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.statuses(), ["Success"; 4]);
    let order: Vec<&str> = first.outcome["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["vm"].as_str().unwrap())
        .collect();
    assert_eq!(order, ALL, "outcomes in file order");
    for vm in ALL {
        assert_eq!(first.sequence(vm), full_run("success"), "{vm}");
        assert_eq!(fleet.guest_runs(vm), 1, "{vm}");
        let stamp = fleet
            .stamp(vm)
            .unwrap_or_else(|| panic!("no stamp for {vm}"));
        let logs = fleet.logs(vm);
        assert_eq!(logs.len(), 1, "{vm}: one log");
        assert_eq!(stamp["run_id"], logs[0]["run_id"]);
        assert!(stamp["disk_id"].as_str().unwrap().starts_with("hostkey:"));
        let completed = first.event(vm, "BootstrapCompleted")[0];
        assert!(
            completed["stamp"]
                .as_str()
                .unwrap()
                .ends_with(&format!("stamps/{vm}.json"))
        );
        let started = first.event(vm, "BootstrapStarted")[0];
        assert_eq!(started["trigger"], "auto");
        assert_eq!(started["artifact_hash"], stamp["artifact_hash"]);
        assert_eq!(started["base_hash"], stamp["base_hash"]);
        // Durable log: the contract's envelope with a duration per step.
        let log = &logs[0];
        assert_eq!(log["status"], "success");
        assert_eq!(log["steps"].as_array().unwrap().len(), 8);
        assert!(
            log["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["duration_ms"].is_u64())
        );
    }
    assert_eq!(
        std::fs::read_to_string(fleet.env.path("guest/web-1/index.html")).unwrap(),
        "<h1>castra</h1>\n",
        "the payload arrived"
    );

    let before = snapshot(&fleet.env.state());
    let started = Instant::now();
    let second = fleet.up(&[]);
    let took = started.elapsed();
    assert_eq!(second.code, 0);
    assert_eq!(second.statuses(), ["NoOp"; 4]);
    for vm in ALL {
        assert_eq!(
            second.sequence(vm),
            ["BootstrapPlanned", "BootstrapCompleted:NoOp"],
            "{vm}"
        );
        assert_eq!(
            fleet.guest_runs(vm),
            1,
            "{vm}: the script did not run again"
        );
        let o = second.outcome_of(vm);
        assert_eq!(
            o["log_path"],
            first.outcome_of(vm)["log_path"],
            "NoOp points at the proving log"
        );
    }
    assert_eq!(
        snapshot(&fleet.env.state()),
        before,
        "a NoOp rerun changed the state root"
    );
    assert!(took < Duration::from_secs(5), "NoOp took {took:?}");
}

#[test]
fn always_forces_runs_and_per_vm_overrides_beat_a_global_skip() {
    let fleet = Fleet::new(FOUR_VMS);
    assert_eq!(fleet.up(&[]).statuses(), ["Success"; 4]);
    let stamps_before: Vec<Value> = ALL.iter().map(|vm| fleet.stamp(vm).unwrap()).collect();

    let forced = fleet.up(&["--bootstrap", "always"]);
    assert_eq!(forced.statuses(), ["Success"; 4]);
    for (vm, old) in ALL.iter().zip(&stamps_before) {
        assert_eq!(forced.event(vm, "BootstrapStarted")[0]["trigger"], "always");
        let new = fleet.stamp(vm).unwrap();
        assert_ne!(new["run_id"], old["run_id"], "{vm}: stamp replaced");
        assert_eq!(fleet.logs(vm).len(), 2, "{vm}: a log added");
        assert_eq!(fleet.guest_runs(vm), 2);
    }

    let mixed = fleet.up(&["--bootstrap", "skip", "--bootstrap", "web-1=always"]);
    assert_eq!(
        mixed.statuses(),
        ["Skipped", "Success", "Skipped", "Skipped"]
    );
    assert_eq!(
        mixed.sequence("web-0"),
        ["BootstrapPlanned", "BootstrapCompleted:Skipped"]
    );
    assert_eq!(fleet.guest_runs("web-1"), 3);
    assert_eq!(fleet.guest_runs("web-0"), 2);
    assert_eq!(fleet.logs("web-0").len(), 2, "skip writes no log");

    // Preflight rejections: exit 2, nothing written, nothing run.
    let before = snapshot(&fleet.env.state());
    let conflict = fleet.up(&["--bootstrap", "web-0=always,web-0=skip"]);
    assert_eq!(conflict.code, 2);
    assert_eq!(
        conflict.events[0]["error"]["kind"], "preflight",
        "{:?}",
        conflict.events
    );
    let unknown = fleet.up(&["--bootstrap", "nope=always"]);
    assert_eq!(unknown.code, 2);
    assert_eq!(snapshot(&fleet.env.state()), before);
    assert_eq!(fleet.guest_runs("web-0"), 2);
}

#[test]
fn changing_one_script_reruns_only_its_vm() {
    let fleet = Fleet::new(FOUR_VMS);
    assert_eq!(fleet.up(&[]).statuses(), ["Success"; 4]);
    fleet.env.write(&[(
        "p/scripts/db.sh",
        &format!("{DB_SCRIPT}echo v2 >> marker\n"),
    )]);
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["NoOp", "NoOp", "NoOp", "Success"]);
    assert!(
        up.event("db", "BootstrapPlanned")[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("bootstrap artifact changed since run")
    );
    assert_eq!(fleet.guest_runs("db"), 2);
    assert_eq!(fleet.guest_runs("web-0"), 1);
}

#[test]
fn a_dead_guest_fails_at_wait_handshake_on_time_while_the_others_succeed() {
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let vms = format!(
        "{FOUR_VMS}\n[[vms]]\nname = \"dead\"\nbackend = \"external\"\n[vms.ssh]\nhost = \"127.0.0.1\"\nport = {dead_port}\n\
         [vms.bootstrap]\nscript = \"scripts/db.sh\"\nhandshake_timeout_secs = 1\n"
    );
    let fleet = Fleet::new(&vms);
    let up = fleet.up(&[]);
    assert_eq!(up.code, 1, "a failure exits 1");
    assert_eq!(
        up.statuses(),
        ["Success", "Success", "Success", "Success", "Failed"]
    );
    assert_eq!(
        up.sequence("dead"),
        [
            "BootstrapPlanned",
            "BootstrapStarted",
            "BootstrapStep:wait-handshake:failed",
            "BootstrapFailed"
        ]
    );
    let step = up.event("dead", "BootstrapStep")[0];
    let waited = step["duration_ms"].as_u64().unwrap();
    // The whole timeout, and not another one (the first ssh attempt's 3 s, the 120 s
    // default); the deadline's precision itself is pinned in paused time by castrad's unit
    // tests, where a loaded machine cannot stretch it.
    assert!(
        (1000..2900).contains(&waited),
        "waited {waited} ms for a 1 s timeout"
    );
    assert!(
        step["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{step}"
    );
    // A watcher sees what is being waited on: ssh at once (the VM is not booting), then,
    // as ssh cannot reach the server, probes for its banner.
    let waited_on: Vec<String> = up
        .event("dead", "BootstrapProgress")
        .iter()
        .map(|p| p["waiting_on"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        waited_on[0].starts_with("authentication as ")
            && waited_on[0].ends_with(&format!("127.0.0.1:{dead_port}")),
        "{waited_on:?}"
    );
    assert!(waited_on[1].contains("Connection refused"), "{waited_on:?}");
    assert_eq!(
        waited_on[2],
        format!("tcp 127.0.0.1:{dead_port}: connection refused"),
        "{waited_on:?}"
    );
    let failed = up.event("dead", "BootstrapFailed")[0];
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .starts_with("wait-handshake: timed out after 1."),
        "{failed}"
    );

    let logs = fleet.logs("dead");
    assert_eq!(logs.len(), 1, "exactly one failure log");
    let steps = logs[0]["steps"].as_array().unwrap();
    assert_eq!(steps.last().unwrap()["step"], "error");
    assert_eq!(steps.last().unwrap()["status"], "failed");
    assert!(fleet.stamp("dead").is_none());
    // The dead VM's wait did not hold up the others: they finished well before its timeout.
    for vm in ALL {
        let d = up.outcome_of(vm)["duration_ms"].as_u64().unwrap();
        assert!(d < 5_000, "{vm} took {d} ms");
    }
}

#[test]
fn status_answers_at_once_while_a_script_sleeps() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"slow\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/slow.sh\"\n",
    );
    // The script waits for a gate the test opens: every status call below is answered while
    // the run cannot possibly have moved on (no latency bound; `scripts/bench` measures that).
    fleet.env.write(&[(
        "p/scripts/slow.sh",
        "echo sleeping; while [ ! -e ../gate ]; do sleep 0.05; done; echo awake\n",
    )]);
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    let up = fleet.env.http_rpc("castra.up", json!({"config": config}));
    let operation = up["result"]["operation"].as_str().unwrap().to_owned();

    // Wait until the script is running, then hammer status.
    crate::support::wait_until(Duration::from_secs(20), "the script to start", || {
        let s = fleet
            .env
            .http_rpc("castra.status", json!({"config": config}));
        (s["result"]["projects"][0]["vms"][0]["current_step"] == "apply").then_some(())
    });
    let socket = fleet.env.socket();
    for _ in 0..100 {
        let (response, _) =
            crate::support::raw_rpc(&socket, "castra.status", json!({"config": config}));
        let vm = &response["result"]["projects"][0]["vms"][0];
        assert_eq!(vm["state"], "bootstrapping");
        assert_eq!(vm["current_step"], "apply");
        assert_eq!(vm["operation"], operation.as_str());
    }
    std::fs::write(fleet.env.path("guest/gate"), "").unwrap();
    let outcome = fleet
        .env
        .http_rpc("castra.outcome", json!({"operation": operation}));
    assert_eq!(outcome["result"]["outcomes"][0]["status"], "Success");
    let after = fleet
        .env
        .http_rpc("castra.status", json!({"config": config}));
    let vm = &after["result"]["projects"][0]["vms"][0];
    assert_eq!(vm["state"], "external");
    assert_eq!(vm["last_bootstrap"]["status"], "Success");
}

#[test]
fn a_second_up_on_a_busy_vm_is_rejected_for_that_vm() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"slow\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/slow.sh\"\n\
         [[vms]]\nname = \"db\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/db.sh\"\n",
    );
    // The slow script waits for a gate opened after the second `up`: it is surely busy then.
    fleet.env.write(&[(
        "p/scripts/slow.sh",
        "while [ ! -e ../gate ]; do sleep 0.05; done\n",
    )]);
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    // castra.up answers once each actor has accepted its VM: `slow` is busy from here on.
    let first = fleet.env.http_rpc("castra.up", json!({"config": config}));
    let first_op = first["result"]["operation"].as_str().unwrap().to_owned();
    let second = fleet.up(&["--bootstrap", "always"]);
    std::fs::write(fleet.env.path("guest/gate"), "").unwrap();
    assert_eq!(second.code, 1);
    let slow = second.outcome_of("slow");
    assert_eq!(slow["status"], "Rejected");
    // Rejected, its story in this operation still ends: one terminal event with the reason.
    assert_eq!(crate::edges::story(&second, "slow"), ["BootstrapFailed"]);
    let failed = second.event("slow", "BootstrapFailed")[0];
    assert_eq!(failed["error"], slow["error"]);
    assert_eq!(failed["duration_ms"], 0);
    assert!(
        slow["error"]
            .as_str()
            .unwrap()
            .contains(&format!("operation {first_op} is working on it")),
        "{slow}"
    );
    let db = second.outcome_of("db")["status"].as_str().unwrap();
    assert!(db == "Success" || db == "Rejected", "{db}");
    let outcome = fleet
        .env
        .http_rpc("castra.outcome", json!({"operation": first_op}));
    assert_eq!(outcome["result"]["outcomes"][0]["status"], "Success");
    assert_eq!(fleet.logs("slow").len(), 1, "never two pipelines on a VM");
}

/// Runs `up --json` for one VM whose script is `script` and returns it.
fn single(script: &str, bootstrap_extra: &str) -> (Fleet, Up) {
    let fleet = Fleet::new(&format!(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/box.sh\"\n{bootstrap_extra}"
    ));
    fleet.env.write(&[("p/scripts/box.sh", script)]);
    let up = fleet.up(&[]);
    (fleet, up)
}

fn failure_ends_with(fleet: &Fleet, up: &Up, failed_step: &str, error_part: &str) {
    assert_eq!(up.code, 1, "{}", up.stderr);
    assert_eq!(up.statuses(), ["Failed"]);
    let seq = up.sequence("box");
    assert_eq!(
        seq[seq.len() - 2],
        format!("BootstrapStep:{failed_step}:failed"),
        "{seq:?}"
    );
    assert_eq!(seq[seq.len() - 1], "BootstrapFailed");
    let error = up.event("box", "BootstrapFailed")[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains(error_part), "{error}");
    let logs = fleet.logs("box");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["status"], "failed");
    let last = logs[0]["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["step"], "error");
    assert_eq!(last["detail"], error.as_str());
    assert!(fleet.stamp("box").is_none(), "a failure wrote a stamp");
}

#[test]
fn a_failing_script_fails_apply_with_its_status_and_last_error_line() {
    let (fleet, up) = single("echo starting; echo 'disk full' >&2; exit 3\n", "");
    failure_ends_with(&fleet, &up, "apply", "exited with status 3: disk full");
}

#[test]
fn castra_error_fails_the_run_with_its_reason() {
    let (fleet, up) = single("echo 'CASTRA_ERROR: database unreachable'\nexit 0\n", "");
    failure_ends_with(&fleet, &up, "apply", "database unreachable");
}

#[test]
fn a_failing_verify_fails_the_run() {
    let (fleet, up) = single("echo hi\n", "verify_path = \"never-created\"\n");
    failure_ends_with(
        &fleet,
        &up,
        "verify",
        "verify_path never-created does not exist",
    );
    let (fleet, up) = single("echo hi\n", "verify_command = \"exit 4\"\n");
    failure_ends_with(&fleet, &up, "verify", "verify_command exited with status 4");
}

#[test]
fn castra_noop_completes_as_noop_with_a_log_and_no_stamp() {
    let (fleet, up) = single("echo checking\necho CASTRA_NOOP\n", "");
    assert_eq!(up.code, 0);
    assert_eq!(up.statuses(), ["NoOp"]);
    assert_eq!(
        up.sequence("box").last().unwrap(),
        "BootstrapCompleted:NoOp"
    );
    let logs = fleet.logs("box");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["status"], "noop");
    assert!(fleet.stamp("box").is_none());
}

#[test]
fn a_changed_host_key_fails_the_handshake_and_keeps_the_stamp() {
    let (mut fleet, up) = single("echo ok\n", "");
    assert_eq!(up.statuses(), ["Success"]);
    let stamp = fleet.stamp("box").unwrap();
    fleet.sshd.restart_with_new_host_key();
    let again = fleet.up(&["--bootstrap", "always"]);
    assert_eq!(again.code, 1);
    let seq = again.sequence("box");
    assert!(
        seq.contains(&"BootstrapStep:wait-handshake:failed".to_owned()),
        "{seq:?}"
    );
    let error = again.event("box", "BootstrapFailed")[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("host key of box changed since it was pinned"),
        "{error}"
    );
    assert_eq!(fleet.stamp("box").unwrap(), stamp, "the stamp is untouched");
    let logs = fleet.logs("box");
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[1]["status"], "failed");
}

#[test]
fn env_values_arrive_byte_exact_and_are_never_reported() {
    let canary = std::env::temp_dir().join(format!("castra-canary-{}", std::process::id()));
    let value = format!("a'b\"c $(touch {})\nline2", canary.display());
    let toml_value = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let fleet = Fleet::new(&format!(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/box.sh\"\n\
         [vms.bootstrap.env]\nNASTY = \"{toml_value}\"\nAPI_TOKEN = \"tok-1234567890\"\n"
    ));
    fleet.env.write(&[(
        "p/scripts/box.sh",
        "printf '%s' \"$NASTY\" > nasty.out\necho \"token is $API_TOKEN\"\necho \"nasty is $NASTY\"\n",
    )]);
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    assert_eq!(
        std::fs::read_to_string(fleet.env.path("guest/box/nasty.out")).unwrap(),
        value
    );
    assert!(!canary.exists(), "the value was interpreted by a shell");

    let planned = up.event("box", "BootstrapPlanned")[0];
    assert_eq!(planned["env_keys"], json!(["API_TOKEN", "NASTY"]));
    let everything = format!(
        "{}{}",
        serde_json::to_string(&up.events).unwrap(),
        crate::support::read_tree_text(&fleet.env.state())
    );
    for secret in ["tok-1234567890", "line2", "$(touch"] {
        assert!(
            !everything.contains(secret),
            "{secret:?} leaked into events or the state root"
        );
    }
    assert!(
        everything.contains("[API_TOKEN redacted]"),
        "output lines are redacted, not dropped"
    );
}

#[test]
fn a_late_subscriber_replays_the_whole_operation_and_logs_are_listed() {
    let fleet = Fleet::new(FOUR_VMS);
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    let up = fleet.env.http_rpc("castra.up", json!({"config": config}));
    let operation = up["result"]["operation"].as_str().unwrap().to_owned();
    fleet
        .env
        .http_rpc("castra.outcome", json!({"operation": operation}));

    // Subscribing after everything happened still yields every event of the operation.
    let mut child = fleet.env.spawn_ctl(
        &fleet.project(),
        &[
            "events",
            "--json",
            "--since",
            "0",
            "--operation",
            &operation,
        ],
    );
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut events = Vec::new();
    let mut terminal = 0;
    while terminal < 4 {
        let line = lines.next().expect("event feed ended early").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        crate::contract::event(&v);
        let kind = crate::support::event_kind(&v);
        if kind == "BootstrapCompleted" || kind == "BootstrapFailed" {
            terminal += 1;
        }
        events.push(v);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increases: {seqs:?}"
    );
    assert!(events.iter().all(|e| e["operation"] == operation.as_str()));
    assert!(
        events
            .iter()
            .all(|e| e["time"].as_str().unwrap().ends_with('Z'))
    );
    let replayed = Up {
        code: 0,
        events,
        outcome: Value::Null,
        stderr: String::new(),
    };
    for vm in ALL {
        assert_eq!(replayed.sequence(vm), full_run("success"), "{vm}");
    }

    let logs = fleet
        .env
        .ctl(&fleet.project(), &["logs", "web-1", "--json"])
        .ok()
        .json();
    assert_eq!(logs["runs"].as_array().unwrap().len(), 1);
    assert_eq!(logs["log"]["status"], "success");
    let human = fleet.env.ctl(&fleet.project(), &["logs", "web-1"]).ok();
    assert!(
        human.stdout.contains("wait-handshake") && human.stdout.contains("verify"),
        "{}",
        human.stdout
    );
    let missing = fleet.env.ctl(&fleet.project(), &["logs", "nope"]);
    assert_eq!(
        missing.code, 2,
        "an unknown VM is a usage error, as for down"
    );
    assert!(
        missing
            .stderr
            .contains("known VMs: web-0, web-1, web-2, db"),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_quiet_subscription_survives_past_jsonrpsees_idle_limit() {
    let fleet = Fleet::new(FOUR_VMS);
    let mut child = fleet
        .env
        .spawn_ctl(&fleet.project(), &["events", "--json", "--vm", "db"]);
    // Nothing at all is published for 35 s: longer than the 30 s after which an idle
    // connection would be dropped without keepalive pings.
    std::thread::sleep(Duration::from_secs(35));
    assert!(
        child.try_wait().unwrap().is_none(),
        "castractl events exited during the quiet spell"
    );
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"; 4]);
    let stdout = child.stdout.take().unwrap();
    let first = std::io::BufRead::lines(std::io::BufReader::new(stdout)).next();
    child.kill().unwrap();
    child.wait().unwrap();
    let first: Value =
        serde_json::from_str(&first.expect("an event after the quiet spell").unwrap()).unwrap();
    crate::contract::event(&first);
    assert_eq!(first["event"]["BootstrapPlanned"]["vm"], "db", "{first}");
}

#[test]
fn a_run_cut_short_by_castrad_stopping_is_logged_as_failed() {
    let mut fleet = Fleet::new(
        "[[vms]]\nname = \"slow\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\nscript = \"scripts/slow.sh\"\n",
    );
    fleet
        .env
        .write(&[("p/scripts/slow.sh", "echo started; sleep 30\n")]);
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    fleet.env.http_rpc("castra.up", json!({"config": config}));
    crate::support::wait_until(Duration::from_secs(20), "the script to start", || {
        let s = fleet
            .env
            .http_rpc("castra.status", json!({"config": config}));
        (s["result"]["projects"][0]["vms"][0]["current_step"] == "apply").then_some(())
    });
    let daemon = fleet.take_daemon();
    assert!(daemon.terminate().success(), "a graceful stop");
    let logs = fleet.logs("slow");
    assert_eq!(logs.len(), 1, "the cut-short run has its log");
    assert_eq!(logs[0]["status"], "failed");
    let last = logs[0]["steps"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("castrad stopped during the run"),
        "{last}"
    );
    assert!(fleet.stamp("slow").is_none());
}
