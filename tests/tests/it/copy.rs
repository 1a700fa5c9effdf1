//! `castractl cp` (issue 16 §4) against a real OpenSSH sshd on loopback as the guest (an
//! external VM): files and directories both ways over the VM's pinned connection, names no
//! shell or sftp may reinterpret, and the errors a user meets.

use std::path::Path;

use crate::fleet::{Fleet, ONE_VM};

/// Names that mean something to a shell, to sftp's command reader or to its wildcards.
const HOSTILE: [&str; 6] = [
    "with space",
    "it's \"quoted\"",
    "$(touch PWNED)",
    "-rf",
    "star*?[x]#hash",
    "back\\slash",
];

#[test]
fn cp_copies_files_and_directories_both_ways_with_hostile_names() {
    let fleet = Fleet::new(ONE_VM);
    // The first run pins the guest's host key; cp uses the pin (no trust on first use).
    assert_eq!(fleet.up(&[]).statuses(), ["Success"]);
    let project = fleet.project();
    let cp = |args: &[&str]| {
        let mut full = vec!["cp"];
        full.extend_from_slice(args);
        fleet.env.ctl(&project, &full)
    };
    let guest = fleet.env.path("guest");
    let host = fleet.env.path("host");
    std::fs::create_dir_all(host.join("tree/sub")).unwrap();

    for (i, name) in HOSTILE.iter().enumerate() {
        let content = format!("file {i}: {name}\n");
        std::fs::write(host.join(name), &content).unwrap();
        std::fs::write(host.join("tree/sub").join(name), &content).unwrap();
        // Up, by relative local path (run in `host`: a leading `-` needs `--` for clap).
        let remote = format!("db:{}/up-{i}-{name}", guest.display());
        let out = fleet.env.ctl(
            &host,
            &[
                "--config",
                project.join("castra.toml").to_str().unwrap(),
                "cp",
                "--",
                name,
                &remote,
            ],
        );
        assert_eq!(out.code, 0, "{name}: {out:?}");
        assert_eq!(
            std::fs::read_to_string(guest.join(format!("up-{i}-{name}"))).unwrap(),
            content
        );
        // And down again, to a path in the same hostile shape.
        let back = host.join(format!("down-{i}-{name}"));
        cp(&[&remote, back.to_str().unwrap()]).ok();
        assert_eq!(std::fs::read_to_string(&back).unwrap(), content);
    }
    // A directory needs -r; with it, the tree goes across whole, both ways.
    let tree = host.join("tree");
    let to = format!("db:{}/tree-copy", guest.display());
    let refused = cp(&[tree.to_str().unwrap(), &to]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("pass -r"), "{}", refused.stderr);
    cp(&["-r", tree.to_str().unwrap(), &to]).ok();
    assert_same_tree(&tree, &guest.join("tree-copy"));
    let back = host.join("tree-back");
    cp(&["-r", &to, back.to_str().unwrap()]).ok();
    assert_same_tree(&tree, &back);
    let no_r = cp(&[&to, host.join("no-r").to_str().unwrap()]);
    assert_eq!(no_r.code, 1, "{no_r:?}");
    assert!(no_r.stderr.contains("pass -r"), "{}", no_r.stderr);

    // Nothing was run by a shell: no PWNED anywhere.
    for dir in [&host, &guest, &project] {
        assert!(!dir.join("PWNED").exists(), "{}", dir.display());
    }

    // --json: castractl's summary of the copy.
    let file = host.join("with space");
    let json = cp(&[
        "--json",
        file.to_str().unwrap(),
        &format!("db:{}/j", guest.display()),
    ])
    .ok()
    .json();
    assert_eq!(json["direction"], "to-vm");
    assert_eq!(json["vm"], "db");

    // Errors: a missing local source, a missing guest source, an unknown VM, two locals.
    let missing = cp(&["/nonexistent/x", "db:x"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("cannot copy /nonexistent/x: No such file"),
        "{}",
        missing.stderr
    );
    let gone = format!("db:{}/nonexistent", guest.display());
    let remote_missing = cp(&[&gone, host.join("n").to_str().unwrap()]);
    assert_eq!(remote_missing.code, 1, "{remote_missing:?}");
    assert!(
        remote_missing
            .stderr
            .contains(&format!("cannot copy {gone} to"))
            && remote_missing.stderr.contains("nonexistent\" not found"),
        "{}",
        remote_missing.stderr
    );
    let unknown = cp(&[file.to_str().unwrap(), "nosuchvm:/tmp/x"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(
        unknown.stderr.contains("unknown VM \"nosuchvm\""),
        "{}",
        unknown.stderr
    );
    let json_unknown = cp(&["--json", file.to_str().unwrap(), "nosuchvm:/tmp/x"]);
    assert_eq!(json_unknown.json()["error"]["exit_code"], 2);
    assert_eq!(cp(&["a", "b"]).code, 2);

    // An external VM has no console castrad could show.
    let console = fleet.env.ctl(&project, &["console", "db"]);
    assert_eq!(console.code, 2, "{console:?}");
    assert!(console.stderr.contains("no console"), "{}", console.stderr);
}

/// Both trees hold the same files with the same contents.
fn assert_same_tree(a: &Path, b: &Path) {
    let files = |root: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).unwrap().to_owned();
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    };
    let (fa, fb) = (files(a), files(b));
    assert_eq!(fa.len(), HOSTILE.len(), "{}", a.display());
    assert_eq!(fa, fb, "{} vs {}", a.display(), b.display());
}
