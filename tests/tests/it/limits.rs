//! Issue 14, hostile and broken input: what a project file or a guest can throw at castrad
//! fails cleanly (a located error, nothing half-done) and castrad keeps serving.

use crate::support::Env;

/// An external VM on a port nobody listens on; `extra` goes into its `[vms.bootstrap]`.
fn project(extra: &str) -> String {
    format!(
        "[project]\nname = \"p\"\n\n[[vms]]\nname = \"db\"\nbackend = \"external\"\n\
         [vms.ssh]\nhost = \"127.0.0.1\"\nport = 9\n[vms.bootstrap]\nscript = \"run.sh\"\n{extra}"
    )
}

/// Item 15: a timeout whose deadline cannot be computed (it panicked the run) is a config
/// error at its value, for `plan` and for `up`, and castrad goes on answering.
#[test]
fn a_huge_handshake_timeout_is_a_located_config_error() {
    let env = Env::new();
    let mut daemon = env.start_daemon();
    let huge = i64::MAX;
    env.write(&[
        (
            "p/castra.toml",
            &project(&format!("handshake_timeout_secs = {huge}\n")),
        ),
        ("p/run.sh", "true\n"),
    ]);
    let config = env.path("p/castra.toml").canonicalize().unwrap();
    let want = format!(
        "{}:12:26: vms[0].bootstrap.handshake_timeout_secs: handshake_timeout_secs must be \
         between 1 and 86400, got {huge}",
        config.display()
    );
    for command in ["plan", "up"] {
        let out = env.ctl(&env.path("p"), &[command]);
        assert_eq!(out.code, 2, "{command}: {out:?}");
        assert!(out.stderr.contains(&want), "{command}: {}", out.stderr);
    }
    let json = env.ctl(&env.path("p"), &["--json", "up"]).json();
    assert_eq!(json["error"]["kind"], "config", "{json}");

    assert!(daemon.child.try_wait().unwrap().is_none(), "castrad is up");
    let status = env.ctl(env.dir.path(), &["--json", "status"]).ok().json();
    assert!(status["projects"].is_array(), "{status}");
    assert!(
        !daemon.log().contains("panicked"),
        "castrad panicked: {}",
        daemon.log()
    );
}
