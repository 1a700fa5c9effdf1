//! The image store end to end (issue 23), on the tiny guest of scripts/build-guest: base images
//! fetched by URL from a local HTTP server started by the test (`it-http`: a mirror the test
//! counts, cuts mid-file and kills), verified against a SHA256SUMS file, resumed, shared by two
//! projects, kept while a disk uses them; files imported (a path, a `file://` URL) so that the
//! user's file may change under a disk; `base_image_import = false` refused on a changed file
//! before QEMU starts; a disk made before the store moved onto it (`image adopt`).
//!
//! The cloud-style guest by URL (SHA256SUMS, and the catalog through a mirror with
//! SHA512SUMS) is in cloud.rs, on boots those tests make anyway.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bootstrap::Up;
use crate::qemu::{guest, one_at_a_time};
use crate::support::{Daemon, Env, Mirror, sha256_of};

const MARK: &str = "#!/bin/sh\nset -eu\necho \"$CASTRA_RUN_ID\" >> runs\necho ok > castra-mark\n";

/// One tiny-guest VM: its `[[vms]]` table with `base` (the base_image lines) in it.
fn vm_toml(name: &str, base: &str) -> String {
    let g = guest().display().to_string();
    format!(
        "\n[[vms]]\nname = \"{name}\"\n{base}\nkernel = \"{g}/vmlinuz\"\n\
         initrd = \"{g}/initrd.img\"\ncmdline = \"console=ttyS0 quiet\"\ncpus = 1\n\
         memory = \"512 MiB\"\n[vms.cloud_init]\nenabled = false\n\
         [vms.ssh]\nuser = \"root\"\nidentity = \"{g}/id_ed25519\"\n\
         [vms.bootstrap]\nscript = \"mark.sh\"\nremote_dir = \"/data/castra/{{vm}}\"\n\
         verify_path = \"castra-mark\"\nhandshake_timeout_secs = 180\n"
    )
}

/// Writes project `rel` (a directory under the env) with `vms` (from [`vm_toml`]).
fn project(env: &Env, rel: &str, name: &str, vms: &[String]) -> PathBuf {
    let config = format!("[project]\nname = \"{name}\"\n{}", vms.concat());
    env.write(&[
        (&format!("{rel}/castra.toml"), &config),
        (&format!("{rel}/mark.sh"), MARK),
    ]);
    env.path(rel)
}

fn up(env: &Env, dir: &Path, args: &[&str]) -> Up {
    let mut full = vec!["up", "--json"];
    full.extend_from_slice(args);
    let out = env.ctl(dir, &full);
    Up::parse(out.code, &out.stdout, &out.stderr)
}

/// `castractl image ls --json`'s images.
fn images(env: &Env, dir: &Path) -> Vec<Value> {
    let ls = env.ctl(dir, &["image", "ls", "--json"]).ok().json();
    ls["images"].as_array().cloned().unwrap_or_default()
}

/// The VM names using an image, sorted.
fn users(image: &Value) -> Vec<String> {
    let mut v: Vec<String> = image["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["vm"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// The backing file an overlay names (`qemu-img info`).
fn backing(overlay: &Path) -> PathBuf {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(overlay)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(info["backing-filename"].as_str().unwrap())
}

/// Every file under `dir` (relative paths) with its size: what "the store is unchanged" means.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// Kills every QEMU a test's VMs left running (through their pidfiles).
struct Guests<'a>(&'a Env);

impl Drop for Guests<'_> {
    fn drop(&mut self) {
        for p in std::fs::read_dir(self.0.state().join("projects"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for vm in std::fs::read_dir(p.path().join("vms"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let pid = std::fs::read_to_string(vm.path().join("qemu.pid"));
                if let Some(pid) = pid.ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// Issue 23: an image by URL is downloaded once, verified against the SHA256SUMS file beside
/// it, resumed after the server died mid-file, and shared by two projects `up`'d at once; a
/// wrong checksum exits 2 and keeps nothing; `image ls/rm/prune` see who uses what.
/// Two tiny boots (the two projects' VMs, at once).
#[test]
fn an_image_by_url_is_verified_resumed_shared_and_kept_while_used() {
    let _lock = one_at_a_time();
    let env = Env::new();
    let _guests = Guests(&env);
    let served = env.path("mirror");
    std::fs::create_dir_all(served.join("tiny")).unwrap();
    let image = served.join("tiny/base.img");
    std::fs::copy(guest().join("base.img"), &image).unwrap();
    let sha = sha256_of(&image);
    // Another image whose SHA256SUMS line is not its content's: what a corrupted download
    // looks like. (Its line names content the store does not have, or the store would use
    // that without a download.)
    let other = served.join("tiny/other.img");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&other, &bytes).unwrap();
    bytes[4097] ^= 0xff;
    let wrong = {
        let third = env.path("third.img");
        std::fs::write(&third, &bytes).unwrap();
        sha256_of(&third)
    };
    std::fs::write(
        served.join("tiny/SHA256SUMS"),
        format!("{sha}  base.img\n{wrong}  other.img\n"),
    )
    .unwrap();
    let size = std::fs::metadata(&image).unwrap().len();
    let log = env.path("mirror.log");

    // The server dies a third of the way in: the pull fails, nothing is in the store.
    let cut = size / 3;
    let mirror = Mirror::start(&served, &log, None, Some(cut));
    let port = mirror.port;
    let base = |m: &Mirror, file: &str| {
        format!(
            "base_image = \"{}\"\nbase_image_checksums = \"{}\"",
            m.url(&format!("tiny/{file}")),
            m.url("tiny/SHA256SUMS")
        )
    };
    let p1 = project(
        &env,
        "p1",
        "one",
        &[vm_toml("a", &base(&mirror, "base.img"))],
    );
    let _daemon: Daemon = env.start_daemon();
    let pulled = env.ctl(&p1, &["image", "pull"]);
    assert_eq!(pulled.code, 1, "{pulled:?}");
    mirror.wait_exit();
    assert!(images(&env, &p1).is_empty(), "nothing half-made is kept");

    // Back again: both projects name it, and are `up`'d at once.
    let mirror = Mirror::start(&served, &log, Some(port), None);
    let p1 = project(
        &env,
        "p1",
        "one",
        &[vm_toml("a", &base(&mirror, "base.img"))],
    );
    let p2 = project(
        &env,
        "p2",
        "two",
        &[vm_toml("b", &base(&mirror, "base.img"))],
    );
    let first = env.spawn_ctl(&p1, &["up", "--json"]);
    let second = env.spawn_ctl(&p2, &["up", "--json"]);
    let done = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        Up::parse(
            out.status.code().unwrap_or(-1),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (one, two) = (done(first), done(second));
    assert_eq!(one.statuses(), ["Success"], "{}", one.stderr);
    assert_eq!(two.statuses(), ["Success"], "{}", two.stderr);
    let gets: Vec<_> = mirror
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/base.img"))
        .collect();
    assert_eq!(gets.len(), 2, "one cut short, one resumed: {gets:?}");
    assert_eq!((gets[0].status, gets[0].sent), (200, cut), "{gets:?}");
    assert_eq!(
        (gets[1].range.as_str(), gets[1].status, gets[1].sent),
        (format!("bytes={cut}-").as_str(), 206, size - cut),
        "resumed where it stopped, once for both projects: {gets:?}"
    );
    // Progress was reported, and the disk of each is on the store's copy.
    let fetched = one.event("a", "ImageFetch");
    assert!(fetched.iter().any(|e| e["phase"] == "done"), "{fetched:?}");
    let listed = images(&env, &p1);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["digest"], format!("sha256:{sha}"));
    assert_eq!(users(&listed[0]), ["a", "b"]);
    let stored = PathBuf::from(listed[0]["path"].as_str().unwrap());
    assert_eq!(sha256_of(&stored), sha);
    let overlay = |rel: &str, vm: &str| {
        let config = env.path(rel).join("castra.toml").canonicalize().unwrap();
        let root = std::fs::read_dir(env.state().join("projects"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                std::fs::read_to_string(p.join(format!("vms/{vm}/launch.json")))
                    .is_ok_and(|l| l.contains(&config.display().to_string()))
            })
            .unwrap();
        root.join(format!("vms/{vm}/overlay.qcow2"))
    };
    assert_eq!(backing(&overlay("p1", "a")), stored);
    assert_eq!(backing(&overlay("p2", "b")), stored);

    // A wrong checksum: exit 2 with both digests, the VM never started, the store unchanged.
    let before = tree(&env.images());
    let p1 = project(
        &env,
        "p1",
        "one",
        &[
            vm_toml("a", &base(&mirror, "base.img")),
            vm_toml("c", &base(&mirror, "other.img")),
        ],
    );
    let bad = up(&env, &p1, &["c"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert_eq!(bad.statuses(), ["Failed"]);
    let error = bad.outcome_of("c")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&format!("expected sha256:{wrong}")),
        "{error}"
    );
    assert!(
        error.contains(&format!("sha256:{}", sha256_of(&other))),
        "{error}"
    );
    assert!(bad.event("c", "VmLaunched").is_empty());
    assert_eq!(tree(&env.images()), before, "nothing kept");

    // In use: rm refuses naming both VMs; prune frees nothing.
    let short = &sha[..12];
    let rm = env.ctl(&p1, &["image", "rm", short]);
    assert_eq!(rm.code, 2, "{rm:?}");
    assert!(
        rm.stderr.contains("a (") && rm.stderr.contains("b ("),
        "{rm:?}"
    );
    let pruned = env.ctl(&p1, &["image", "prune", "--json"]).ok().json();
    assert_eq!(pruned["freed_bytes"], 0);
    assert_eq!(images(&env, &p1).len(), 1);

    // One disk gone: still in use by the other; both gone: prune removes it.
    env.ctl(&p1, &["down", "a", "--discard"]).ok();
    let rm = env.ctl(&p1, &["image", "rm", short]);
    assert_eq!(rm.code, 2, "{rm:?}");
    assert!(
        !rm.stderr.contains("a (") && rm.stderr.contains("b ("),
        "{rm:?}"
    );
    env.ctl(&p2, &["down", "--discard"]).ok();
    let pruned = env.ctl(&p1, &["image", "prune", "--json"]).ok().json();
    assert!(
        pruned["freed_bytes"].as_u64().unwrap() >= size.min(1 << 20),
        "{pruned}"
    );
    assert!(images(&env, &p1).is_empty());
    assert!(!stored.exists());
}

/// Issue 23: a path and a `file://` URL are imported (one store image for both: the same
/// content), so overwriting the user's files after `up` changes nothing for their disks: down
/// and up boot the same disks and NoOp. With `base_image_import = false` the same overwrite is
/// refused before QEMU starts, naming the file. A disk made before the store (backed by the
/// user's file, no record) boots while the file is unchanged, plan says how to move it, and
/// `image adopt` rebases it onto the store's copy. Seven tiny boots.
#[test]
fn files_are_imported_and_a_changed_base_never_boots() {
    let _lock = one_at_a_time();
    let env = Env::new();
    let _guests = Guests(&env);
    let files = env.path("files");
    std::fs::create_dir_all(&files).unwrap();
    // The user's own image directory, outside the project: their config allows it.
    env.allow(&files);
    let original = guest().join("base.img");
    for f in ["imp.img", "byp.img", "url.img"] {
        std::fs::copy(&original, files.join(f)).unwrap();
    }
    let sha = sha256_of(&original);
    let vms = |import_byp: bool| {
        vec![
            vm_toml(
                "imp",
                &format!("base_image = \"{}\"", files.join("imp.img").display()),
            ),
            vm_toml(
                "byp",
                &format!(
                    "base_image = \"{}\"{}",
                    files.join("byp.img").display(),
                    if import_byp {
                        ""
                    } else {
                        "\nbase_image_import = false"
                    }
                ),
            ),
            vm_toml(
                "url",
                &format!(
                    "base_image = \"file://{}\"\nbase_image_digest = \"sha256:{sha}\"",
                    files.join("url.img").display()
                ),
            ),
        ]
    };
    let p = project(&env, "p", "files", &vms(false));
    let _daemon = env.start_daemon();
    let plan = env.ctl(&p, &["plan", "--json"]).ok().json();
    let status_of = |plan: &Value, vm: &str| {
        plan["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vm"] == vm)
            .unwrap()["base_image"]
            .clone()
    };
    assert_eq!(status_of(&plan, "imp")["status"], "import");
    assert_eq!(status_of(&plan, "byp")["status"], "by-path");
    assert_eq!(status_of(&plan, "url")["status"], "fetch");

    let first = up(&env, &p, &[]);
    assert_eq!(first.statuses(), ["Success"; 3], "{}", first.stderr);
    let listed = images(&env, &p);
    assert_eq!(listed.len(), 1, "imp and url share one image: {listed:?}");
    assert_eq!(users(&listed[0]), ["imp", "url"]);
    let stored = PathBuf::from(listed[0]["path"].as_str().unwrap());
    let root = env.project_state();
    let overlay = |vm: &str| root.join(format!("vms/{vm}/overlay.qcow2"));
    let disk_id =
        |vm: &str| std::fs::read_to_string(root.join(format!("vms/{vm}/disk-id"))).unwrap();
    assert_eq!(backing(&overlay("imp")), stored);
    assert_eq!(backing(&overlay("url")), stored);
    assert_eq!(backing(&overlay("byp")), files.join("byp.img"));
    let ids: Vec<String> = ["imp", "byp", "url"].iter().map(|v| disk_id(v)).collect();

    // The user downloads "latest" again over their files: other bytes.
    let mut other = std::fs::read(&original).unwrap();
    other[512] ^= 0xff;
    for f in ["imp.img", "byp.img", "url.img"] {
        std::fs::write(files.join(f), &other).unwrap();
    }
    let plan = env.ctl(&p, &["plan", "--json"]).ok().json();
    let warnings = plan["vms"].to_string();
    assert!(
        warnings.contains("refuses to boot the disk unless its content is unchanged"),
        "byp's changed file is announced: {warnings}"
    );
    env.ctl(&p, &["down"]).ok();
    let again = up(&env, &p, &[]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert_eq!(
        again.outcome_of("imp")["status"],
        "NoOp",
        "{}",
        again.stderr
    );
    assert_eq!(
        again.outcome_of("url")["status"],
        "NoOp",
        "{}",
        again.stderr
    );
    assert_eq!(again.outcome_of("byp")["status"], "Failed");
    let error = again.outcome_of("byp")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(&files.join("byp.img").display().to_string())
            && error.contains("changed since the disk was made"),
        "{error}"
    );
    assert!(
        again.event("byp", "VmLaunched").is_empty(),
        "QEMU never started"
    );
    assert!(!root.join("vms/byp/launch.json").exists());
    assert_eq!(disk_id("imp"), ids[0], "the same disk");
    assert_eq!(disk_id("url"), ids[2], "the same disk");
    assert_eq!(disk_id("byp"), ids[1], "kept, not replaced");

    // The file back as it was: it boots (its content checked again) and NoOps.
    std::fs::copy(&original, files.join("byp.img")).unwrap();
    let back = up(&env, &p, &["byp"]);
    assert_eq!(back.statuses(), ["NoOp"], "{}", back.stderr);

    // A disk made before the store: backed by the user's file, no record. It boots while
    // the file is unchanged, and plan says how to move it onto the store.
    env.ctl(&p, &["down", "byp"]).ok();
    std::fs::remove_file(root.join("vms/byp/base.json")).unwrap();
    let p = project(&env, "p", "files", &vms(true));
    let plan = env.ctl(&p, &["plan", "--json"]).ok().json();
    let byp = status_of(&plan, "byp");
    assert_eq!(byp["status"], "predates-store", "{byp}");
    assert!(
        plan.to_string().contains("castractl image adopt byp"),
        "{plan}"
    );
    let legacy = up(&env, &p, &["byp"]);
    assert_eq!(legacy.statuses(), ["NoOp"], "{}", legacy.stderr);
    env.ctl(&p, &["down", "byp"]).ok();
    let adopted = env
        .ctl(&p, &["image", "adopt", "byp", "--json"])
        .ok()
        .json();
    let moved = &adopted["vms"][0];
    assert_eq!(moved["before"], files.join("byp.img").display().to_string());
    assert_eq!(moved["after"], stored.display().to_string(), "{adopted}");
    assert_eq!(backing(&overlay("byp")), stored);
    assert_eq!(users(&images(&env, &p)[0]), ["byp", "imp", "url"]);
    let after = up(&env, &p, &["byp"]);
    assert_eq!(after.statuses(), ["NoOp"], "{}", after.stderr);
    assert_eq!(disk_id("byp"), ids[1], "the same disk throughout");
    // Now the user's file may change too.
    std::fs::write(files.join("byp.img"), &other).unwrap();
    env.ctl(&p, &["down", "byp"]).ok();
    assert_eq!(up(&env, &p, &["byp"]).statuses(), ["NoOp"]);
}
