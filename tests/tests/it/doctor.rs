//! `castractl doctor` and `castra.doctor` (issue 16 §5) against a real castrad: a good project
//! passes, an unusable base image and a taken port fail by name, castrad unreachable is a
//! failed check (exit 1) with the machine's checks still run (`castrad --check`, issue 24),
//! and the `--json` output is castra.doctor's result.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{CASTRACTL, CASTRAD, Ctl, Env};

/// The machine's checks, castra.doctor's and `castrad --check`'s alike, in order: the host's,
/// then the user service's (the same four with or without systemd as PID 1).
const MACHINE_CHECKS: [&str; 12] = [
    "qemu",
    "qemu-img",
    "kvm",
    "virtiofsd",
    "state-dir",
    "disk-space",
    "fd-limit",
    "ssh",
    "units",
    "socket",
    "linger",
    "service-path",
];

/// Every `ok` check is one that found nothing wrong: its verdict quotes no failure.
fn no_ok_quotes_a_failure(doc: &Value) {
    for c in doc["checks"].as_array().unwrap() {
        if c["status"] == "ok" {
            let verdict = c["verdict"].as_str().unwrap();
            assert!(
                !verdict.contains("failed") && !verdict.contains("not permitted"),
                "an ok check quoting a failure: {c}"
            );
            assert!(c["fix"].is_null(), "{c}");
        }
    }
}

/// `castractl doctor ARGS` with no castrad on the env's socket: the castrad it runs for the
/// machine's checks is this build's (`CASTRA_CASTRAD`), with the env's state directory;
/// `envs` adds to (or, with None, removes from) castractl's environment.
fn doctor_alone(env: &Env, args: &[&str], envs: &[(&str, Option<&str>)]) -> Ctl {
    let mut command = Command::new(CASTRACTL);
    command
        .arg("doctor")
        .args(args)
        .current_dir(env.dir.path())
        .env("CASTRA_SOCKET", env.socket())
        .env("CASTRA_CASTRAD", CASTRAD)
        .env("CASTRA_STATE_DIR", env.state());
    for (key, value) in envs {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let args = std::iter::once("doctor")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    Ctl {
        args,
        ..Ctl::from(command.output().expect("run castractl"))
    }
}

/// A QEMU project whose files are all there: a raw base image, a key, a free forwarded port.
fn project(env: &Env, image: &str, port: u16) -> std::path::PathBuf {
    env.write(&[
        (
            "lab/castra.toml",
            &format!(
                "version = \"1\"\n[project]\nname = \"lab\"\n[[vms]]\nname = \"web\"\n\
                 base_image = \"{image}\"\n[vms.ssh]\nuser = \"root\"\nidentity = \"id_test\"\n\
                 [[vms.port_forwards]]\nhost = {port}\nguest = 80\n"
            ),
        ),
        ("lab/base.img", "a raw disk image\n"),
        ("lab/id_test", "not really a key\n"),
    ]);
    env.path("lab")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The checks of `--json` output by (check, vm) → status.
fn statuses(doc: &Value) -> Vec<(String, Option<String>, String)> {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["vm"].as_str().map(str::to_owned),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn doctor_passes_a_good_project_and_names_an_unusable_image_and_a_taken_port() {
    let env = Env::new();
    let _daemon = env.start_daemon();
    let port = free_port();
    let dir = project(&env, "base.img", port);

    let good = env.ctl(&dir, &["doctor"]);
    assert_eq!(good.code, 0, "{good:?}");
    for line in [
        "ok    castrad: castrad ",
        "ok    config: ",
        "ok    base-image [web]: ",
        &format!("ok    ports [web]: {port}/tcp: free"),
        "ok    keys [web]: readable: ",
        "ok    state-dir: ",
        "ok    ssh: OpenSSH",
    ] {
        assert!(good.stdout.contains(line), "{line:?} missing: {good:?}");
    }
    assert!(!good.stdout.contains("FAIL"), "{good:?}");
    let json = env.ctl(&dir, &["doctor", "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let doc = json.json();
    let seen = statuses(&doc);
    let mut expected = vec!["castrad", "config", "base-image", "ports", "keys"];
    expected.extend(MACHINE_CHECKS);
    for check in expected {
        assert!(
            seen.iter().any(|(c, _, _)| c == check),
            "no {check} check: {doc}"
        );
    }
    assert!(seen.iter().all(|(_, _, s)| s != "fail"), "{doc}");
    no_ok_quotes_a_failure(&doc);

    // The image now has a backing file (castrad refuses those as bases), and another program
    // holds the forwarded port.
    let overlay = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.img"])
        .arg("layered.qcow2")
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(overlay.success());
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    project(&env, "layered.qcow2", port);
    let bad = env.ctl(&dir, &["doctor"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    let image_line = bad
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL  base-image [web]: "))
        .unwrap_or_else(|| panic!("no failed base-image check: {bad:?}"));
    assert!(
        image_line.contains("layered.qcow2") && image_line.contains("backing"),
        "{image_line}"
    );
    assert!(
        bad.stdout.contains(&format!(
            "FAIL  ports [web]: in use by another program: {port}/tcp (port_forwards)"
        )),
        "{bad:?}"
    );
    assert!(bad.stdout.contains("2 failed"), "{bad:?}");
    let json = env.ctl(&dir, &["doctor", "--json"]);
    assert_eq!(json.code, 1, "{json:?}");
    let failed: Vec<_> = statuses(&json.json())
        .into_iter()
        .filter(|(_, _, s)| s == "fail")
        .map(|(c, vm, _)| (c, vm))
        .collect();
    let web = Some("web".to_owned());
    assert_eq!(
        failed,
        [
            ("base-image".to_owned(), web.clone()),
            ("ports".to_owned(), web)
        ]
    );

    // An editor gets the same checks over the API, castrad's side only.
    let config = dir.join("castra.toml").canonicalize().unwrap();
    let rpc = env.http_rpc("castra.doctor", serde_json::json!({"config": config}));
    let checks = &rpc["result"]["checks"];
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "ports" && c["status"] == "fail"),
        "{rpc}"
    );
}

#[test]
fn doctor_reports_an_unreachable_castrad_as_a_failed_check_and_still_checks_the_machine() {
    let env = Env::new();
    // No daemon: its socket does not exist.
    let out = doctor_alone(&env, &[], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .starts_with("FAIL  castrad: cannot reach castrad at "),
        "{out:?}"
    );
    let castrad_line = out.stdout.lines().next().unwrap();
    assert!(
        castrad_line.ends_with(&format!(
            "the machine's checks below are `{CASTRAD} --check`'s"
        )),
        "{castrad_line}"
    );
    // The advice is the one every message gives (castra_api::START_CASTRAD).
    assert!(
        out.stdout
            .contains(&format!("      fix: {}\n", castra_api::START_CASTRAD)),
        "{out:?}"
    );
    // The machine was checked by castrad --check, with castractl's environment: the env's
    // state directory (not there yet: castrad would create it).
    assert!(
        out.stdout.contains(&format!(
            "ok    state-dir: {} does not exist yet; castrad creates it",
            env.state().display()
        )),
        "{out:?}"
    );
    assert!(out.stdout.contains("ok    ssh: OpenSSH"), "{out:?}");
    assert!(
        out.stdout
            .contains("ok    config: no castra.toml here or above: only the machine was checked"),
        "{out:?}"
    );
    let json = doctor_alone(&env, &["--json"], &[]);
    assert_eq!(json.code, 1, "{json:?}");
    let doc = json.json();
    assert_eq!(doc["checks"][0]["check"], "castrad", "{doc}");
    assert_eq!(doc["checks"][0]["status"], "fail", "{doc}");
    assert_eq!(doc["checks"][0]["fix"], castra_api::START_CASTRAD, "{doc}");
    let seen = statuses(&doc);
    let names: Vec<&str> = seen.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(names[1..=MACHINE_CHECKS.len()], MACHINE_CHECKS, "{doc}");
    if !Path::new("/run/systemd/system").is_dir() {
        // This machine's PID 1 is not systemd: the socket check says so, with the advice.
        let socket = &doc["checks"][10];
        assert_eq!(socket["status"], "warn", "{doc}");
        assert_eq!(socket["fix"], castra_api::START_CASTRAD, "{doc}");
    }
    // castrad is the only failure on this machine (the test bench has QEMU and ssh).
    let failed: Vec<_> = seen.iter().filter(|(_, _, s)| s == "fail").collect();
    assert_eq!(failed.len(), 1, "{doc}");
    no_ok_quotes_a_failure(&doc);
    assert!(!env.state().exists(), "doctor wrote nothing");

    // A project here is named, not checked: its checks need castrad.
    env.write(&[("castra.toml", "version = \"1\"\n[project]\nname = \"p\"\n")]);
    let project = doctor_alone(&env, &[], &[]);
    assert!(
        project.stdout.contains(&format!(
            "WARN  config: {} was not checked: a project's checks need castrad",
            env.path("castra.toml").canonicalize().unwrap().display()
        )),
        "{project:?}"
    );
}

/// Without castrad to ask and without QEMU or ssh in PATH, on a Fedora machine (as its
/// os-release says): the fixes name Fedora's packages and dnf. Without a castrad at all, the
/// machine check says so and how to get one.
#[test]
fn doctor_names_the_distributions_packages_and_a_missing_castrad() {
    let env = Env::new();
    let empty = env.path("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    env.write(&[(
        "os-release",
        "NAME=\"Fedora Linux\"\nVERSION_ID=44\nID=fedora\n\
         PRETTY_NAME=\"Fedora Linux 44 (Workstation Edition)\"\n",
    )]);
    let os_release = env.path("os-release");
    let out = doctor_alone(
        &env,
        &["--json"],
        &[
            ("PATH", Some(empty.to_str().unwrap())),
            ("CASTRA_OS_RELEASE", Some(os_release.to_str().unwrap())),
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    let check = |name: &str| {
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {doc}"))
            .clone()
    };
    for (name, package) in [
        ("qemu", "qemu-system-x86"),
        ("qemu-img", "qemu-img"),
        ("ssh", "openssh-clients"),
    ] {
        let c = check(name);
        assert_eq!(c["status"], "fail", "{c}");
        let fix = c["fix"].as_str().unwrap();
        assert!(
            fix.contains(&format!(
                "on Fedora Linux 44 (Workstation Edition): sudo dnf install {package}"
            )) || fix.contains(&format!(
                "on Fedora Linux 44 (Workstation Edition): dnf install {package}"
            )),
            "{name}: {fix}"
        );
        assert!(!fix.contains("apt-get"), "{fix}");
    }

    let gone = doctor_alone(
        &env,
        &["--json"],
        &[("CASTRA_CASTRAD", Some("/nonexistent/castrad"))],
    );
    assert_eq!(gone.code, 1, "{gone:?}");
    let doc = gone.json();
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(checks[1]["check"], "machine", "{doc}");
    assert_eq!(checks[1]["status"], "fail", "{doc}");
    assert_eq!(
        checks[1]["verdict"],
        "the machine was not checked: CASTRA_CASTRAD=/nonexistent/castrad does not exist"
    );
}
