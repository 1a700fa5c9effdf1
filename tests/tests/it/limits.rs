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

/// The line the short-line flood repeats on stdout (and, a quarter as much, on stderr).
const OUT_LINE: &str = "flood line from the guest, 0123456789";
const ERR_LINE: &str = "flood line on stderr, 0123456789";
/// castrad's memory ceiling under a flood (issue 14 item 8).
const PEAK_LIMIT_KIB: u64 = 64 << 10;

/// A script that writes `bytes` of output: one line without a newline, or short lines (and a
/// quarter as much on stderr at the same time: both streams must be drained).
fn flood_script(bytes: u64, short_lines: bool) -> String {
    if short_lines {
        format!(
            "#!/bin/sh\n(yes '{ERR_LINE}' | head -n {}) >&2 &\nyes '{OUT_LINE}' | head -c {bytes}\nwait\n",
            err_lines(bytes)
        )
    } else {
        format!("#!/bin/sh\nhead -c {bytes} /dev/zero | tr '\\0' x\n")
    }
}

/// What a flooding `up` showed.
pub struct Flood {
    pub outcome: serde_json::Value,
    /// BootstrapOutput events castractl printed (a slow follower may lose some).
    pub output_events: u64,
    /// One of them that was a split piece, if any.
    pub split_seen: bool,
    pub took: std::time::Duration,
    /// castrad's peak resident memory (VmHWM), in KiB, and the CPU time it used (s).
    pub peak_kib: u64,
    pub cpu_secs: f64,
    /// The run's output log, read back: lines per stream ("out", "err") and the longest.
    pub logged: std::collections::BTreeMap<String, u64>,
    pub longest: usize,
}

/// castrad's peak resident set (VmHWM of /proc/<pid>/status), in KiB.
pub fn peak_rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_secs(pid: nix::unistd::Pid) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Runs `castractl up --json` on an external VM whose script floods its output, reading what
/// castractl prints as it comes (keeping nothing but counts and the outcome), then reads the
/// run's output log back. The state dir is the fixture's temp dir, deleted afterwards.
pub fn flood(bytes: u64, short_lines: bool) -> Flood {
    use std::io::BufRead;
    // No cap on the output log (disk.rs tests that): every line must be there.
    let mut fleet = crate::fleet::Fleet::new(
        "[[vms]]\nname = \"flood\"\nbackend = \"external\"\nSSH\n[vms.bootstrap]\n\
         script = \"scripts/flood.sh\"\noutput_log_max = \"1 TiB\"\n",
    );
    fleet
        .env
        .write(&[("p/scripts/flood.sh", &flood_script(bytes, short_lines))]);
    let daemon = fleet.take_daemon();
    let started = std::time::Instant::now();
    let mut up = fleet.env.spawn_ctl(&fleet.project(), &["up", "--json"]);
    let (mut output_events, mut split_seen, mut outcome) = (0, false, serde_json::Value::Null);
    for line in std::io::BufReader::new(up.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        crate::contract::castractl_line(&serde_json::from_str(&line).unwrap());
        if line.starts_with("{\"outcome\"") {
            outcome = serde_json::from_str::<serde_json::Value>(&line).unwrap()["outcome"].take();
        } else if line.contains("\"BootstrapOutput\"") {
            output_events += 1;
            split_seen |= line.contains(castrad::ssh::SPLIT_SUFFIX);
        }
    }
    up.wait().unwrap();
    let took = started.elapsed();
    let (peak_kib, cpu_secs) = (peak_rss_kib(daemon.pid()), cpu_secs(daemon.pid()));
    drop(daemon);
    let (mut logged, mut longest) = (std::collections::BTreeMap::new(), 0);
    if let Some(path) = fleet
        .logs("flood")
        .last()
        .and_then(|l| l["output_path"].as_str().map(str::to_owned))
    {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap() > 0 {
            let stream = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
            *logged
                .entry(String::from_utf8_lossy(stream).into_owned())
                .or_insert(0) += 1;
            longest = longest.max(line.len());
            line.clear();
        }
    }
    Flood {
        outcome,
        output_events,
        split_seen,
        took,
        peak_kib,
        cpu_secs,
        logged,
        longest,
    }
}

impl Flood {
    fn report(&self, what: &str) -> String {
        format!(
            "{what}: {} in {:.1} s; castrad peak RSS {:.1} MiB, CPU {:.1} s; output log lines \
             {:?} (longest {} bytes); castractl printed {} output events",
            self.outcome["outcomes"][0]["status"],
            self.took.as_secs_f64(),
            self.peak_kib as f64 / 1024.0,
            self.cpu_secs,
            self.logged,
            self.longest,
            self.output_events
        )
    }

    /// The run succeeded, castrad stayed under the ceiling, and the log has every line.
    fn check(&self, what: &str, out_lines: u64, err_lines: u64) {
        let report = self.report(what);
        eprintln!("{report}");
        assert_eq!(
            self.outcome["outcomes"][0]["status"], "Success",
            "{report}: {}",
            self.outcome
        );
        assert!(self.peak_kib < PEAK_LIMIT_KIB, "{report}");
        assert_eq!(
            self.logged.get("out").copied().unwrap_or(0),
            out_lines,
            "{report}"
        );
        assert_eq!(
            self.logged.get("err").copied().unwrap_or(0),
            err_lines,
            "{report}"
        );
        let cap = castrad::ssh::LINE_CAP;
        let markers = castrad::ssh::SPLIT_SUFFIX.len() + castrad::ssh::CONTINUED_PREFIX.len();
        assert!(
            self.longest <= cap + markers + "apply out \n".len(),
            "{report}"
        );
    }
}

/// How many lines `yes TEXT | head -c BYTES` prints (the last one may be cut short).
fn lines_of(text: &str, bytes: u64) -> u64 {
    bytes.div_ceil(text.len() as u64 + 1)
}

/// How many whole lines the flood prints on stderr: about a quarter of `bytes`. (Whole: a
/// last stderr line without a newline waits for the session's end, after the run.)
fn err_lines(bytes: u64) -> u64 {
    bytes / 4 / (ERR_LINE.len() as u64 + 1)
}

/// Item 8: 256 MiB without a newline. castrad held it whole (about 270 MB resident for 64
/// MiB); now it arrives as 4096 pieces of 64 KiB, each saying it was split, and castrad stays
/// small.
#[test]
fn a_line_without_end_is_split_and_castrad_stays_small() {
    let bytes = 256 << 20;
    let flood = flood(bytes, false);
    let pieces = bytes / castrad::ssh::LINE_CAP as u64;
    flood.check("256 MiB without a newline", pieces, 0);
    assert!(
        flood.split_seen,
        "castractl showed a piece saying it was split"
    );
}

/// Item 8: a flood of short lines on both streams. castrad queued what it had not recorded
/// yet without bound (about 120 MB resident for this one); now the guest waits for castrad,
/// and every line is in the log.
#[test]
fn a_flood_of_short_lines_keeps_castrad_small_and_loses_nothing() {
    let bytes = 32 << 20;
    let flood = flood(bytes, true);
    let (out, err) = (lines_of(OUT_LINE, bytes), err_lines(bytes));
    flood.check("32 MiB of short lines (and 8 MiB on stderr)", out, err);
}

/// The stress variants (`scripts/stress`, not in the test suite: minutes of work).
#[test]
#[ignore = "minutes long: run by scripts/stress"]
fn stress_a_gibibyte_of_short_lines() {
    let bytes = 1 << 30;
    let flood = flood(bytes, true);
    let (out, err) = (lines_of(OUT_LINE, bytes), err_lines(bytes));
    flood.check(
        "stress: 1 GiB of short lines (and 256 MiB on stderr)",
        out,
        err,
    );
}

#[test]
#[ignore = "run by scripts/stress"]
fn stress_a_gibibyte_without_a_newline() {
    let bytes = 1 << 30;
    let flood = flood(bytes, false);
    let pieces = bytes / castrad::ssh::LINE_CAP as u64;
    flood.check("stress: 1 GiB without a newline", pieces, 0);
}
