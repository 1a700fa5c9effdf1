//! What a stamp proves, against guests that misbehave: a script's failure on stderr is never
//! lost to the race between the two streams, a run that got into the guest and failed leaves
//! no stamp behind, and what is hashed is what is sent when the script or payload is a
//! symlink. Real castrad, castractl and a loopback sshd as the guest (see `fleet`).

use crate::fleet::Fleet;

/// A script that reports its failure on stderr only, and exits 0. The streams travel apart:
/// before castrad waited for the end of the script's stderr, some of these runs succeeded and
/// wrote a stamp. Ten VMs at once, five times over: 50 runs, every one must fail.
#[test]
fn a_failure_reported_on_stderr_is_never_lost_to_the_exit_status() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nreplicas = 10\nbackend = \"external\"\nSSH\n\
         [vms.bootstrap]\nscript = \"scripts/box.sh\"\n",
    );
    fleet.env.write(&[(
        "p/scripts/box.sh",
        "echo working\necho 'CASTRA_ERROR: simulated failure' >&2\nexit 0\n",
    )]);
    let mut runs = 0;
    for _ in 0..5 {
        let up = fleet.up(&["--bootstrap", "always"]);
        assert_eq!(up.code, 1, "{}", up.stderr);
        for (i, status) in up.statuses().iter().enumerate() {
            let vm = format!("box-{i}");
            assert_eq!(status, "Failed", "{vm}: {:?}", up.sequence(&vm));
            let error = up.event(&vm, "BootstrapFailed")[0]["error"]
                .as_str()
                .unwrap();
            assert_eq!(
                error, "apply: the script reported CASTRA_ERROR: simulated failure",
                "{vm}"
            );
            assert!(
                fleet.stamp(&vm).is_none(),
                "{vm}: a failed run wrote a stamp"
            );
            runs += 1;
        }
    }
    assert_eq!(runs, 50);
}

/// A forced run that gets into the guest and fails there (after it may have changed it)
/// removes the stamp: the next `auto` run runs again instead of answering a false NoOp.
#[test]
fn a_forced_run_that_fails_leaves_no_stamp_for_auto_to_trust() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n\
         [vms.bootstrap]\nscript = \"scripts/box.sh\"\n",
    );
    let flag = fleet.env.path("fail-now");
    let script = format!(
        "echo run >> ../box.runs\nif [ -e '{}' ]; then echo half-done > state; exit 1; fi\n\
         echo complete > state\n",
        flag.display()
    );
    fleet.env.write(&[("p/scripts/box.sh", &script)]);
    assert_eq!(fleet.up(&[]).statuses(), ["Success"]);
    assert!(fleet.stamp("box").is_some());
    assert_eq!(fleet.up(&[]).statuses(), ["NoOp"], "unchanged: a NoOp");

    std::fs::write(&flag, "").unwrap();
    let forced = fleet.up(&["--bootstrap", "always"]);
    assert_eq!(forced.statuses(), ["Failed"]);
    assert!(
        fleet.stamp("box").is_none(),
        "the old stamp survived a failed run"
    );
    let state = fleet.env.path("guest/box/state");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "half-done\n");

    std::fs::remove_file(&flag).unwrap();
    let again = fleet.up(&[]);
    assert_eq!(
        again.statuses(),
        ["Success"],
        "auto must run again, not NoOp"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "complete\n");
    assert_eq!(fleet.guest_runs("box"), 3);
    assert!(fleet.stamp("box").is_some());
}

/// A symlinked script and payload root: the guest gets what they point to (not a link into
/// the host's file system), and a change behind the link changes the artifact hash. Links
/// inside the payload travel as links.
#[test]
fn a_symlinked_script_and_payload_are_sent_and_hashed_as_what_they_point_to() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n\
         [vms.bootstrap]\nscript = \"scripts/link.sh\"\npayload = \"payload-link\"\n",
    );
    // The links stay inside the project: one leading out of it is refused (tests/it/trust.rs).
    fleet.env.write(&[
        ("p/real/run.sh", "cat \"$CASTRA_PAYLOAD_DIR/conf\" > seen\n"),
        ("p/real/payload/conf", "version 1\n"),
    ]);
    let (project, real) = (fleet.project(), fleet.project().join("real"));
    std::os::unix::fs::symlink(real.join("run.sh"), project.join("scripts/link.sh")).unwrap();
    std::os::unix::fs::symlink(real.join("payload"), project.join("payload-link")).unwrap();
    std::os::unix::fs::symlink("conf", real.join("payload/alias")).unwrap();

    let first = fleet.up(&[]);
    assert_eq!(first.statuses(), ["Success"], "{}", first.stderr);
    let guest = fleet.env.path("guest/box");
    let sent_script = std::fs::symlink_metadata(guest.join("link.sh")).unwrap();
    assert!(
        sent_script.is_file(),
        "the script arrived as {sent_script:?}"
    );
    let sent_payload = std::fs::symlink_metadata(guest.join("payload")).unwrap();
    assert!(
        sent_payload.is_dir(),
        "the payload arrived as {sent_payload:?}"
    );
    let alias = guest.join("payload/alias");
    assert_eq!(std::fs::read_link(&alias).unwrap().to_str(), Some("conf"));
    assert_eq!(
        std::fs::read_to_string(guest.join("seen")).unwrap(),
        "version 1\n"
    );
    assert_eq!(fleet.up(&[]).statuses(), ["NoOp"]);

    // A change behind the payload link is a change of the artifact.
    std::fs::write(real.join("payload/conf"), "version 2\n").unwrap();
    let changed = fleet.up(&[]);
    assert_eq!(changed.statuses(), ["Success"], "a stale NoOp");
    assert_eq!(
        std::fs::read_to_string(guest.join("seen")).unwrap(),
        "version 2\n"
    );
}
