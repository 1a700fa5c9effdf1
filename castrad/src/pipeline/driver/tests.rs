use super::*;
use crate::pipeline::archive::write_archive;
use crate::ssh::{COMMAND_LIMIT, command_line, compact};
use std::io::Write;
use std::process::Stdio;

/// Runs DRIVER with the local shell exactly as the guest would, fed with the same stdin.
/// `agent_on_stdin`: the agent's text comes first on stdin, as for a command too long.
fn run_driver(
    dir: &Path,
    env: &BTreeMap<String, String>,
    verify_path: &str,
    agent_on_stdin: bool,
) -> (String, String, i32) {
    // The supervisor set-up comes with the agent on stdin: both blocks, in their order.
    run_driver_with(dir, env, verify_path, agent_on_stdin, agent_on_stdin, None)
}

/// [`run_driver`] with or without the supervisor set-up (which asks for the respawn loop
/// here: `CASTRA_VIZIER_SUPERVISOR=loop`, so no test installs a unit on this machine), and
/// a guest setup; programs in `dir/bin` come first in PATH.
fn run_driver_with(
    dir: &Path,
    env: &BTreeMap<String, String>,
    verify_path: &str,
    agent_on_stdin: bool,
    supervisor: bool,
    setup: Option<&crate::pipeline::guest_setup::Setup>,
) -> (String, String, i32) {
    let (reader, writer) = std::io::pipe().unwrap();
    let agent = crate::vizier::agent_script();
    let child = std::process::Command::new("sh")
        .args(["-c", &compact(DRIVER), "castra", "n0nce"])
        .arg(dir.join("guest/remote dir"))
        .args(["run.sh", "", verify_path])
        .arg(dir.join("vizier"))
        .arg(crate::vizier::VERSION)
        .arg(if agent_on_stdin { "-" } else { &agent })
        .arg("") // no watch after `done`: the session ends
        .arg("") // no cloud-init to wait for
        .arg(if supervisor { "1" } else { "" })
        .args(crate::pipeline::guest_setup::driver_words(setup))
        .args(["sh", "./run.sh"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                dir.join("bin").display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env("CASTRA_VIZIER_SUPERVISOR", "loop")
        .stdin(reader)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (block, script, payload) = (env_block(env), dir.join("run.sh"), dir.join("payload"));
    let mut agent_block = if agent_on_stdin {
        format!("{}\n{agent}", agent.matches('\n').count())
    } else {
        String::new()
    };
    if supervisor {
        let text = crate::vizier::supervisor_script();
        agent_block.push_str(&format!("{}\n{text}", text.matches('\n').count()));
    }
    agent_block.push_str(setup.map(|s| s.input.as_str()).unwrap_or(""));
    let feeder = std::thread::spawn(move || {
        let mut writer = writer;
        writer.write_all(agent_block.as_bytes())?;
        writer.write_all(block.as_bytes())?;
        write_archive(writer, &script, "run.sh", Some(&payload))
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    // The driver started a Vizier supervisor in the background: stop it.
    let vbin = dir.join(format!("vizier/{}/vizier.sh", crate::vizier::VERSION));
    let _ = std::process::Command::new("sh")
        .arg(vbin)
        .arg("stop")
        .arg(dir.join("vizier/state"))
        .output();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap(),
    )
}

/// A guest without cloud-init: the driver does the guest setup (here: two shared folders)
/// before anything else, says so with its marker, and the script finds it done; a setup
/// that fails ends the session before the Vizier steps.
#[test]
fn driver_does_the_guest_setup_before_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = d.join("calls");
    let stub = |name: &str, body: String| crate::testutil::stub_command(&bin, name, &body);
    stub("mountpoint", "exit 1".into());
    stub("sudo", "[ \"$1\" = -n ] && shift; exec \"$@\"".into());
    stub("mount", format!("echo \"$*\" >>{c}", c = calls.display()));
    std::fs::write(
        d.join("run.sh"),
        format!("cp {} seen\ntouch done\n", calls.display()),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("payload")).unwrap();
    let (src, docs) = (d.join("g/src"), d.join("g/my docs"));
    let (src, docs) = (src.to_str().unwrap(), docs.to_str().unwrap());
    let setup = crate::pipeline::guest_setup::Setup {
        args: [
            "9p", "2", "castra0", src, "rw", "castra1", docs, "ro", "", "", "",
        ]
        .map(str::to_owned)
        .to_vec(),
        input: String::new(),
    };
    let (stdout, stderr, code) =
        run_driver_with(d, &BTreeMap::new(), "done", false, false, Some(&setup));
    assert_eq!(code, 0, "{stderr}");
    let seen = std::fs::read_to_string(d.join("guest/remote dir/seen")).unwrap();
    let opts = "trans=virtio,version=9p2000.L,msize=262144";
    assert_eq!(
        seen,
        format!("-t 9p -o {opts},rw -- castra0 {src}\n-t 9p -o {opts},ro -- castra1 {docs}\n")
    );
    let at = |m: &str| stdout.find(&format!("CASTRA-n0nce {m}")).expect(m);
    assert!(stdout.contains(&format!(
        "CASTRA-n0nce guest-setup 0 mounted {src} {docs} (9p)\n"
    )));
    assert!(at("pid") < at("guest-setup") && at("guest-setup") < at("vizier-install"));

    stub("mount", "echo \"no such device\" >&2; exit 32".into());
    std::fs::remove_file(d.join("guest/remote dir/seen")).unwrap();
    let (stdout, _, code) =
        run_driver_with(d, &BTreeMap::new(), "done", false, false, Some(&setup));
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!(
            "CASTRA-n0nce guest-setup 1 cannot mount castra0 (9p) at {src}: no such device; \
             cannot mount castra1 (9p) at {docs}: no such device\n"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("vizier-install"), "{stdout}");
    assert!(!d.join("guest/remote dir/seen").exists());
}

#[test]
fn driver_unpacks_runs_and_verifies_with_byte_exact_env() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("run.sh"),
        "printf '%s' \"$A\" > a.out\nprintf '%s|%s' \"$B\" \"$C\" > bc.out\n\
         cat payload/p.txt\nprintf 'no newline at the end'\ntouch done\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join("payload")).unwrap();
    std::fs::write(d.join("payload/p.txt"), "from the payload\n").unwrap();
    let env = BTreeMap::from([
        (
            "A".to_owned(),
            "a'b\"c $(touch /tmp/castra-env-test)\nline2 \\ % %s é".to_owned(),
        ),
        ("B".to_owned(), String::new()),
        ("C".to_owned(), "trailing newlines\n\n".to_owned()),
        // Named like a driver variable: the script sees it, the driver keeps its own.
        ("vpath".to_owned(), "not-the-verify-path".to_owned()),
    ]);
    let (stdout, stderr, code) = run_driver(d, &env, "done", false);
    assert_eq!(code, 0, "{stderr}");
    let remote = d.join("guest/remote dir");
    assert_eq!(
        std::fs::read_to_string(remote.join("a.out")).unwrap(),
        env["A"]
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("bc.out")).unwrap(),
        "|trailing newlines\n\n"
    );
    assert!(!Path::new("/tmp/castra-env-test").exists());
    let markers: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CASTRA-n0nce "))
        .collect();
    let names: Vec<&str> = markers
        .iter()
        .map(|m| m.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "pid",
            "vizier-install",
            "vizier-enable",
            "vizier-log",
            "vizier-log-end",
            "vizier-handshake",
            "connect",
            "transfer",
            "apply",
            "verify-path",
            "done"
        ],
        "{stdout}"
    );
    assert!(
        markers[1].starts_with("vizier-install 0 installed "),
        "{}",
        markers[1]
    );
    assert!(
        markers[2].starts_with("vizier-enable 0 started"),
        "{}",
        markers[2]
    );
    assert_eq!(markers[5], "vizier-handshake 0");
    let after = stdout
        .split("CASTRA-n0nce vizier-handshake 0\n")
        .nth(1)
        .unwrap();
    let mut banner = after.lines();
    let b = crate::vizier::parse_banner(banner.next().unwrap(), banner.next().unwrap()).unwrap();
    assert_eq!(b.version, crate::vizier::VERSION);
    let output: Vec<&str> = stdout
        .split("CASTRA-n0nce transfer\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.starts_with("CASTRA-"))
        .collect();
    assert_eq!(output, ["from the payload", "no newline at the end"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&remote).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "remote_dir is private");
}

/// Issue 25: a guest whose `stat` cannot answer (missing, or BSD's without `-c`, or one that
/// prints nothing) fails the ownership check, saying why, and nothing runs; the check used to
/// pass on no answer at all.
#[test]
fn a_stat_that_cannot_answer_fails_the_check_closed() {
    for stat in [
        "echo 'stat: illegal option -- c' >&2; exit 1",
        "exit 0",
        "exit 127",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("payload")).unwrap();
        std::fs::write(d.join("run.sh"), "touch ran\n").unwrap();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        crate::testutil::stub_command(&d.join("bin"), "stat", stat);
        let (stdout, _, code) = run_driver(d, &BTreeMap::new(), "", false);
        assert_eq!(code, 0, "{stat}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("CASTRA-n0nce unsafe"))
            .unwrap_or_else(|| panic!("{stat}: no unsafe marker in {stdout}"));
        let marker = Marker::parse(line.strip_prefix("CASTRA-n0nce ").unwrap()).unwrap();
        let Marker::Uncheckable { detail } = marker else {
            panic!("{stat}: {marker:?}");
        };
        assert!(detail.starts_with("stat gave 0 of "), "{detail}");
        assert!(!stdout.contains("vizier-install"), "{stdout}");
        assert!(!d.join("guest/remote dir/ran").exists());
    }
}

#[test]
fn driver_stops_at_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("payload")).unwrap();
    std::fs::write(d.join("run.sh"), "echo working; exit 3\n").unwrap();
    // The agent's text on stdin this time (as when the command would be too long).
    let (stdout, _, code) = run_driver(d, &BTreeMap::new(), "done", true);
    assert_eq!(code, 0);
    assert!(stdout.contains("vizier-install 0 installed"), "{stdout}");
    // The supervisor set-up came too, and said why it chose the respawn loop.
    assert!(
        stdout.contains(
            "vizier-enable 0 started in a respawn loop (CASTRA_VIZIER_SUPERVISOR=loop in the \
             login environment; a reboot ends it until the next run)\n"
        ),
        "{stdout}"
    );
    let recorded = std::fs::read_to_string(d.join("vizier/state/supervisor")).unwrap();
    assert!(
        recorded.starts_with("in a respawn loop (CASTRA_"),
        "{recorded}"
    );
    assert!(stdout.contains("CASTRA-n0nce apply 3"), "{stdout}");
    assert!(
        !stdout.contains("verify-path") && !stdout.contains(" done"),
        "{stdout}"
    );

    std::fs::write(d.join("run.sh"), "echo fine\n").unwrap();
    let (stdout, _, _) = run_driver(d, &BTreeMap::new(), "missing", false);
    // What came on stdin was installed byte for byte: the argument matches it.
    assert!(stdout.contains("vizier-install 0 present"), "{stdout}");
    assert!(stdout.contains("CASTRA-n0nce verify-path 1"), "{stdout}");
    assert!(!stdout.contains(" done"), "{stdout}");

    // An agent an older driver started has no supervisor on record: restarted when castrad
    // sends the set-up (so it can move under the guest's supervisor), kept when it does not
    // (castrad saw it healthy).
    let state = d.join("vizier/state");
    let record = state.join("supervisor");
    let start_by_hand = || {
        let _ = std::fs::remove_file(&record);
        let vbin = d.join(format!("vizier/{}/vizier.sh", crate::vizier::VERSION));
        let mut child = std::process::Command::new("setsid")
            .arg("sh")
            .arg(vbin)
            .arg("supervise")
            .arg(&state)
            .arg(d.join("vizier/by-hand.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..250 {
            let pid = std::fs::read_to_string(state.join("agent.pid")).unwrap_or_default();
            if !pid.trim().is_empty() {
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent started by hand did not name itself");
    };
    // (run_driver stops the agent at its end: the supervisor started here exits then.)
    let mut by_hand = start_by_hand();
    let (stdout, _, _) = run_driver(d, &BTreeMap::new(), "missing", false);
    by_hand.wait().unwrap();
    assert!(
        stdout.contains("vizier-enable 0 running (supervisor not recorded)\n"),
        "{stdout}"
    );
    let mut by_hand = start_by_hand();
    let (stdout, _, _) = run_driver(d, &BTreeMap::new(), "missing", true);
    by_hand.wait().unwrap();
    assert!(
        stdout.contains("vizier-enable 0 restarted in a respawn loop (CASTRA_"),
        "{stdout}"
    );
    assert!(record.exists(), "recorded again");
}

/// Dropbear closes the connection on a command over 9000 bytes: with short user inputs,
/// the whole guest side, agent included, stays well under COMMAND_LIMIT.
#[test]
fn the_session_command_fits_dropbear() {
    let words = [
        "sh".to_owned(),
        "-c".into(),
        compact(DRIVER),
        "castra".into(),
        "0123456789abcdef".into(),
        "/data/castra/web-0".into(),
        "run.sh".into(),
        "test -f /etc/app.conf".into(),
        "out".into(),
        String::new(),
        crate::vizier::VERSION.into(),
        crate::vizier::agent_script(),
        "2".into(),
        "1".into(),
        String::new(),
        String::new(),
        "./run.sh".into(),
    ];
    let len = command_line(&words).len();
    assert!(len < COMMAND_LIMIT - 1000, "{len} bytes");
    assert!(!compact(DRIVER).contains("\n#"));
}

#[test]
fn program_uses_the_shebang_only_when_executable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("run.sh");
    std::fs::write(&s, "#!/bin/sh\n").unwrap();
    assert_eq!(program(&s).unwrap(), ["sh", "./run.sh"]);
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(program(&s).unwrap(), ["./run.sh"]);
    std::fs::write(&s, "echo no shebang\n").unwrap();
    assert_eq!(program(&s).unwrap(), ["sh", "./run.sh"]);
}

#[test]
fn markers_parse_into_their_variants() {
    let cases = [
        (
            "cloud-init 0 done",
            Some(Marker::CloudInit {
                ok: true,
                detail: "done".into(),
            }),
        ),
        (
            "cloud-init 1 status: error",
            Some(Marker::CloudInit {
                ok: false,
                detail: "status: error".into(),
            }),
        ),
        (
            "vizier-install 0 installed /opt/v.sh",
            Some(Marker::VizierInstall {
                ok: true,
                detail: "installed /opt/v.sh".into(),
            }),
        ),
        (
            "vizier-install 1 cannot write /x",
            Some(Marker::VizierInstall {
                ok: false,
                detail: "cannot write /x".into(),
            }),
        ),
        (
            "vizier-enable 0 started (respawn loop)",
            Some(Marker::VizierEnable {
                ok: true,
                detail: "started (respawn loop)".into(),
            }),
        ),
        (
            "vizier-log /var/log/castra/vizier/service.log",
            Some(Marker::VizierLog),
        ),
        ("vizier-log-end", Some(Marker::VizierLogEnd)),
        (
            "vizier-handshake 0",
            Some(Marker::VizierHandshake {
                ok: true,
                detail: String::new(),
            }),
        ),
        (
            "vizier-handshake 1 no banner within 2 s",
            Some(Marker::VizierHandshake {
                ok: false,
                detail: "no banner within 2 s".into(),
            }),
        ),
        (
            "connect 0",
            Some(Marker::Connect {
                ok: true,
                detail: String::new(),
            }),
        ),
        (
            "connect 1 7",
            Some(Marker::Connect {
                ok: false,
                detail: "7".into(),
            }),
        ),
        ("pid 4242", Some(Marker::Pid(4242))),
        ("pid 1", None),
        ("pid -5", None),
        ("pid", None),
        (
            "unsafe /var/tmp/castra is owned by uid 1001 (mode 755), not by uid 0 or root",
            Some(Marker::Unsafe {
                detail: "/var/tmp/castra is owned by uid 1001 (mode 755), not by uid 0 or root"
                    .into(),
            }),
        ),
        ("script", Some(Marker::ScriptStarts)),
        ("script-end", Some(Marker::ScriptEnds)),
        ("transfer", Some(Marker::Transfer)),
        ("apply 0", Some(Marker::Apply { status: 0 })),
        ("apply -3", Some(Marker::Apply { status: -3 })),
        ("apply", None),
        ("apply x", None),
        (
            "verify-command 7",
            Some(Marker::VerifyCommand { status: 7 }),
        ),
        ("verify-path 0", Some(Marker::VerifyPath { found: true })),
        ("verify-path 1", Some(Marker::VerifyPath { found: false })),
        ("verify-path 2", None),
        ("done", Some(Marker::Done)),
        ("dance 0", None),
        ("", None),
    ];
    for (text, want) in cases {
        assert_eq!(Marker::parse(text), want, "{text:?}");
    }
}

#[test]
fn a_long_command_sends_the_agent_on_stdin() {
    let env = BTreeMap::new();
    let program = vec!["./run.sh".to_owned()];
    let long = "x".repeat(COMMAND_LIMIT);
    let session = |verify: &'static str| Session {
        remote_dir: "/var/tmp/castra/web",
        script: Path::new("/p/run.sh"),
        payload: None,
        program: program.clone(),
        env: &env,
        verify_command: Some(verify),
        verify_path: None,
        vizier_dir: None,
        cloud_init_wait: false,
        supervisor_setup: false,
        setup: None,
        may_touch: tokio::sync::watch::channel(true).1,
    };
    let short = invocation(
        &session("true"),
        "run.sh",
        "n0nce",
        std::time::Duration::from_secs(2),
    );
    assert!(short.agent_block.is_empty());
    assert!(short.command.contains("VIZIER_VERSION="));
    let verify: &'static str = Box::leak(long.into_boxed_str());
    let long = invocation(
        &session(verify),
        "run.sh",
        "n0nce",
        std::time::Duration::from_secs(2),
    );
    assert!(
        !long.command.contains("VIZIER_VERSION="),
        "the agent left the command line"
    );
    let (count, agent) = long.agent_block.split_once('\n').unwrap();
    assert_eq!(agent, crate::vizier::agent_script());
    assert_eq!(count.parse::<usize>().unwrap(), agent.matches('\n').count());
}

mod props {
    //! Property tests (issue 14 item 15): no line panics the marker parser, and each marker
    //! as `driver.sh` prints it parses back to itself.

    use proptest::prelude::*;

    use super::*;
    use crate::testutil::proptest_config;

    /// A detail as the driver prints it: one line, no surrounding blanks.
    fn detail() -> impl Strategy<Value = String> {
        prop_oneof!["[ -~]{0,20}", "[0-9]{1,3}( [a-z]{0,3})?", any::<String>()]
            .prop_map(|d| d.replace(['\n', '\r'], " ").trim().to_owned())
    }

    fn marker() -> impl Strategy<Value = Marker> {
        prop_oneof![
            (any::<bool>(), detail()).prop_map(|(ok, detail)| Marker::CloudInit { ok, detail }),
            (any::<bool>(), detail()).prop_map(|(ok, detail)| Marker::VizierInstall { ok, detail }),
            (any::<bool>(), detail()).prop_map(|(ok, detail)| Marker::VizierEnable { ok, detail }),
            Just(Marker::VizierLog),
            Just(Marker::VizierLogEnd),
            (any::<bool>(), detail())
                .prop_map(|(ok, detail)| Marker::VizierHandshake { ok, detail }),
            (2..=i32::MAX as u32).prop_map(Marker::Pid),
            detail().prop_map(|d| Marker::Unsafe {
                detail: format!("/{d}")
            }),
            detail().prop_map(|detail| Marker::Uncheckable { detail }),
            Just(Marker::Connect {
                ok: true,
                detail: String::new()
            }),
            (2..=i32::MAX as u32).prop_map(|pid| Marker::Connect {
                ok: false,
                detail: pid.to_string()
            }),
            (any::<bool>(), detail()).prop_map(|(ok, detail)| Marker::GuestSetup { ok, detail }),
            Just(Marker::Transfer),
            Just(Marker::ScriptStarts),
            Just(Marker::ScriptEnds),
            any::<i32>().prop_map(|status| Marker::Apply { status }),
            any::<i32>().prop_map(|status| Marker::VerifyCommand { status }),
            any::<bool>().prop_map(|found| Marker::VerifyPath { found }),
            Just(Marker::Done),
        ]
    }

    /// What follows `CASTRA-<nonce> ` when `driver.sh` reports `m` (`m name code detail`:
    /// the shell joins its words with spaces); `failed` is the non-zero code it uses.
    fn print(m: &Marker, failed: i32, path: &str) -> String {
        let code = |ok: bool| if ok { 0 } else { failed };
        match m {
            // 127 is cloud-init missing, with castrad's words: the driver fails with 1.
            Marker::CloudInit { ok, detail } => {
                let code = if *ok {
                    0
                } else if failed == 127 {
                    1
                } else {
                    failed
                };
                format!("cloud-init {code} {detail}")
            }
            Marker::VizierInstall { ok, detail } => {
                format!("vizier-install {} {detail}", code(*ok))
            }
            Marker::VizierEnable { ok, detail } => {
                format!("vizier-enable {} {detail}", code(*ok))
            }
            Marker::VizierLog => format!("vizier-log {path}"),
            Marker::VizierLogEnd => "vizier-log-end".into(),
            Marker::VizierHandshake { ok: true, detail } if detail.is_empty() => {
                "vizier-handshake 0".into()
            }
            Marker::VizierHandshake { ok, detail } => {
                format!("vizier-handshake {} {detail}", code(*ok))
            }
            Marker::Pid(pid) => format!("pid {pid}"),
            Marker::GuestSetup { ok, detail } => format!("guest-setup {} {detail}", code(*ok)),
            Marker::Unsafe { detail } => format!("unsafe {detail}"),
            Marker::Uncheckable { detail } => format!("unsafe uncheckable: {detail}"),
            Marker::Connect { ok: true, .. } => "connect 0".into(),
            Marker::Connect { ok: false, detail } => format!("connect 1 {detail}"),
            Marker::Transfer => "transfer".into(),
            Marker::ScriptStarts => "script".into(),
            Marker::ScriptEnds => "script-end".into(),
            Marker::Apply { status } => format!("apply {status}"),
            Marker::VerifyCommand { status } => format!("verify-command {status}"),
            Marker::VerifyPath { found } => format!("verify-path {}", u8::from(!found)),
            Marker::Done => "done".into(),
        }
    }

    proptest! {
        #![proptest_config(proptest_config(3000))]

        #[test]
        fn any_line_parses_or_is_dropped(
            line in prop_oneof![
                any::<String>(),
                "(apply|verify-path|verify-command|cloud-init|vizier-[a-z]{0,9}|done) ?[-+0-9]{0,12} ?.{0,8}",
            ],
        ) {
            let _ = Marker::parse(&line);
        }

        #[test]
        fn printed_markers_parse_back(
            m in marker(),
            failed in prop_oneof![Just(1), Just(127), 1..i32::MAX, i32::MIN..0],
            path in "[ -~]{0,30}",
        ) {
            let printed = print(&m, failed, &path);
            prop_assert_eq!(Marker::parse(&printed), Some(m), "{:?}", printed);
        }
    }
}
