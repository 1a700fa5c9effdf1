//! Disk limits end to end (issue 14, item 9): a run's output log stops at its cap, old run
//! logs are pruned, and a full disk neither stops planning nor leaves a torn record. Real
//! castrad, castractl and a loopback sshd as the guest (see `fleet`); the full disk is a small
//! tmpfs mounted over the daemon's state (the tests run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::fleet::Fleet;

/// A script printing 2 000 lines of 100 bytes (about 217 KiB in the output log, whose lines
/// carry the step and stream), then a last line that must not reach the log.
const FLOOD: &str = "yes 0123456789012345678901234567890123456789012345678901234567890123456789\
                     012345678901234567890123456789 | head -n 2000\necho the-end\n";

#[test]
fn a_flooding_script_leaves_an_output_log_cut_at_its_cap() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n\
         [vms.bootstrap]\nscript = \"scripts/flood.sh\"\noutput_log_max = \"64 KiB\"\n",
    );
    fleet.env.write(&[("p/scripts/flood.sh", FLOOD)]);
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);

    let log = &fleet.logs("box")[0];
    let output = PathBuf::from(log["output_path"].as_str().unwrap());
    let text = std::fs::read_to_string(&output).unwrap();
    let cap = 64 << 10;
    assert!(
        text.len() <= cap + 300,
        "{} bytes for a cap of {cap}",
        text.len()
    );
    let cut = "apply castrad output cut at 65536 bytes (output_log_max); further output is \
               dropped\n";
    let at = text.find(cut).expect("the cut line");
    assert!(at <= cap && at > cap - 200, "cut at byte {at}");
    let written = 2000 * ("apply out ".len() + 101) + "apply out the-end\n".len();
    let dropped = log["output_dropped_bytes"].as_u64().unwrap() as usize;
    assert_eq!(at + dropped, written, "every byte written or counted");
    assert!(
        text[at + cut.len()..].starts_with(&format!("castrad dropped {dropped} bytes (")),
        "{}",
        &text[at..]
    );
    assert!(!text.contains("the-end"), "written after the cut");

    // What was published stops at the same place: the cut note is the last output event.
    let lines: Vec<&str> = up
        .event("box", "BootstrapOutput")
        .iter()
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    assert_eq!(
        lines.last().unwrap(),
        &format!("castrad: {}", &cut[14..cut.len() - 1])
    );
    assert!(lines.len() < 1000, "{} output events", lines.len());

    let shown = fleet
        .env
        .ctl(&fleet.project(), &["logs", "box"])
        .ok()
        .stdout;
    assert!(
        shown.contains(&format!("(cut at its cap: {dropped} bytes dropped)")),
        "{shown}"
    );
}

/// `keep_run_logs = 3`: after a success and five failed runs, the three newest logs are left
/// and the success; a later success lets the old one go. Every log keeps its output file.
#[test]
fn old_run_logs_are_pruned_to_keep_run_logs_sparing_the_latest_success() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n\
         [vms.bootstrap]\nscript = \"scripts/box.sh\"\nkeep_run_logs = 3\n",
    );
    let flag = fleet.env.path("fail-now");
    let script = format!(
        "echo run $CASTRA_RUN_ID\nif [ -e '{}' ]; then exit 1; fi\n",
        flag.display()
    );
    fleet.env.write(&[("p/scripts/box.sh", &script)]);
    let run_id =
        |up: &crate::fleet::Up| up.outcome_of("box")["run_id"].as_str().unwrap().to_owned();

    let first = fleet.up(&[]);
    assert_eq!(first.statuses(), ["Success"]);
    let success = run_id(&first);
    std::fs::write(&flag, "").unwrap();
    let mut failed = Vec::new();
    for _ in 0..5 {
        let up = fleet.up(&["--bootstrap", "always"]);
        assert_eq!(up.statuses(), ["Failed"]);
        failed.push(run_id(&up));
    }
    let mut expected = vec![success.clone()];
    expected.extend(failed[2..].iter().cloned());
    assert_eq!(kept_runs(&fleet), expected);
    assert_eq!(listed_runs(&fleet), expected, "castractl logs");
    let old = fleet
        .env
        .ctl(&fleet.project(), &["logs", "box", "--run", &failed[0]]);
    assert_ne!(old.code, 0, "a pruned run is gone: {old:?}");
    let kept = fleet
        .env
        .ctl(&fleet.project(), &["logs", "box", "--run", &success])
        .ok();
    assert!(kept.stdout.contains("success"), "{}", kept.stdout);

    std::fs::remove_file(&flag).unwrap();
    let again = fleet.up(&[]);
    assert_eq!(again.statuses(), ["Success"]);
    let newest = run_id(&again);
    assert_eq!(
        kept_runs(&fleet),
        [failed[3].clone(), failed[4].clone(), newest.clone()],
        "the older success is no longer the latest"
    );
    assert_eq!(fleet.stamp("box").unwrap()["run_id"], newest.as_str());
}

/// The runs whose logs are on disk, oldest first; each has both its JSON and its output.
fn kept_runs(fleet: &Fleet) -> Vec<String> {
    let dir = fleet.state_root().join("logs/bootstrap");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let json: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .collect();
    let output: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".output.log"))
        .collect();
    assert_eq!(json, output, "logs and outputs in pairs: {names:?}");
    json.iter()
        .map(|stem| stem.rsplit('-').next().unwrap().to_owned())
        .collect()
}

fn listed_runs(fleet: &Fleet) -> Vec<String> {
    let out = fleet
        .env
        .ctl(&fleet.project(), &["logs", "box", "--json"])
        .ok();
    out.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A tmpfs mounted at `path` for as long as this lives.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (this test needs root)"
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Fills the file system to the last byte; returns the filler file.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            if let Err(e) = file.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: castrad may still have a file open there.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The state of a fleet on a 2 MiB tmpfs, filled up after a first run: `plan` still answers
/// (the hash cache is best effort), a run fails saying which log it could not write, and no
/// record is torn; once there is room again, the next run succeeds.
#[test]
fn a_full_disk_fails_the_run_clearly_and_tears_nothing() {
    let fleet = Fleet::new(
        "[[vms]]\nname = \"box\"\nbackend = \"external\"\nSSH\n\
         [vms.bootstrap]\nscript = \"scripts/box.sh\"\n",
    );
    let disk = Tmpfs::mount(&fleet.env.state().join("projects"), "2m");
    fleet.env.write(&[
        // 64 KiB of output: more than a full disk's last free page could take.
        (
            "p/scripts/box.sh",
            "head -c 65536 /dev/zero | tr '\\0' y | fold -w 63\n",
        ),
        // A second project with a QEMU VM, only ever planned: its base image, kept out of the
        // image store, is hashed by plan (through the hash cache).
        (
            "q/castra.toml",
            "[project]\nname = \"img\"\n\n[[vms]]\nname = \"img\"\nbase_image = \"base.img\"\n\
             base_image_import = false\n[vms.bootstrap]\nscript = \"run.sh\"\n",
        ),
        ("q/run.sh", "true\n"),
    ]);
    std::fs::write(fleet.env.path("q/base.img"), vec![7u8; 256 << 10]).unwrap();
    let first = fleet.up(&[]);
    assert_eq!(first.statuses(), ["Success"], "{}", first.stderr);
    let root = fleet_root(&fleet);
    let logs_dir = root.join("logs/bootstrap");
    let log_before = std::fs::read_dir(&logs_dir).unwrap().count();

    let filler = disk.fill();
    let plan = fleet.env.ctl(&fleet.env.path("q"), &["plan", "--json"]);
    assert_eq!(plan.code, 0, "plan on a full disk: {plan:?}");
    let planned = &plan.json()["vms"][0];
    assert_eq!(planned["action"], "run", "{planned}");
    let daemon_log = std::fs::read_to_string(fleet.env.path("castrad.log")).unwrap();
    assert!(
        daemon_log.contains("cannot write the hash cache entry"),
        "the cache failure is in castrad's log"
    );

    let up = fleet.up(&["--bootstrap", "always"]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    assert_eq!(up.statuses(), ["Failed"]);
    let error = up.outcome_of("box")["error"].as_str().unwrap();
    let (output, log) = error
        .split_once("; and ")
        .unwrap_or_else(|| panic!("the output, then the log: {error}"));
    let named = |what: &str, text: &str, suffix: &str| {
        let start = format!("cannot write the {what} {}/box-", logs_dir.display());
        assert!(
            text.starts_with(&start)
                && text.contains(&format!("{suffix}: No space left on device")),
            "{text}"
        );
    };
    named("run's output log", output, ".output.log");
    named("run log", log, ".json");
    assert_eq!(up.outcome_of("box")["log_path"], Value::Null);
    assert!(fleet.stamp("box").is_none(), "a failed run left a stamp");
    let config = fleet.project().join("castra.toml").canonicalize().unwrap();
    let status = fleet
        .env
        .http_rpc("castra.status", serde_json::json!({"config": config}));
    let vm = crate::support::vm_of(&status["result"], "box");
    assert_eq!(vm["state"], "failed", "{vm}");
    assert_eq!(
        std::fs::read_dir(&logs_dir).unwrap().count(),
        log_before,
        "only the first run's log and output"
    );
    assert_no_torn_records(&fleet.env.state());
    fleet.env.ctl(&fleet.project(), &["logs", "box"]).ok();

    std::fs::remove_file(filler).unwrap();
    let again = fleet.up(&[]);
    assert_eq!(again.statuses(), ["Success"], "{}", again.stderr);
    assert_eq!(std::fs::read_dir(&logs_dir).unwrap().count(), 4);
    assert_no_torn_records(&fleet.env.state());
    drop(disk);
}

/// The state root of the fleet's project (the state may hold other projects).
fn fleet_root(fleet: &Fleet) -> PathBuf {
    std::fs::read_dir(fleet.env.state().join("projects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("fleet-")
        })
        .expect("the fleet's state root")
}

/// Every JSON file under `dir` parses, and no temporary file of an atomic write is left.
fn assert_no_torn_records(dir: &Path) {
    for (path, (_, _, _, bytes)) in crate::support::snapshot(dir) {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            !name.contains(".tmp-"),
            "a temporary file is left: {}",
            path.display()
        );
        if name.ends_with(".json") {
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|e| panic!("{} is torn: {e}", path.display()));
        }
    }
}
