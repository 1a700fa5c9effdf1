//! `castractl console` (issue 16 §4) on the QEMU test guest: the boot log through castrad's
//! API, a follower that sees what the guest writes after it subscribed (also past the log's
//! cap), the bounds on what a client gets, escapes kept off the terminal, and the end a
//! follower sees when the VM stops.

use std::io::BufRead;
use std::process::Child;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::qemu::{Lab, guest, one_at_a_time};

/// A `castractl console --follow --json` and its lines, each checked against the protocol.
struct Follower {
    child: Child,
    lines: Receiver<Value>,
}

impl Follower {
    fn start(lab: &Lab, args: &[&str]) -> Follower {
        let mut full = vec!["console", "box", "--follow", "--json"];
        full.extend_from_slice(args);
        let mut child = lab.env.spawn_ctl(&lab.project(), &full);
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(crate::contract::console_line(&line)).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next chunk, within `limit`.
    fn next(&self, limit: Duration) -> Option<Value> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Reads chunks until one's text (joined to what came before) contains `needle`; returns
    /// the text read and the bytes left out meanwhile.
    fn until(&self, needle: &str, limit: Duration) -> (String, u64) {
        let deadline = Instant::now() + limit;
        let (mut text, mut skipped) = (String::new(), 0);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = self.next(left).unwrap_or_else(|| {
                panic!(
                    "{needle:?} not followed in {limit:?}; the last of it: {:?}",
                    tail(&text)
                )
            });
            // Only the new text (and a needle's length before it) can hold the needle.
            let mut from = text.len().saturating_sub(needle.len());
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            text.push_str(chunk["text"].as_str().unwrap());
            skipped += chunk["skipped_bytes"].as_u64().unwrap();
            if text[from..].contains(needle) {
                break;
            }
        }
        (text, skipped)
    }
}

/// The last 2000 bytes of `text`, about.
fn tail(text: &str) -> &str {
    let mut from = text.len().saturating_sub(2000);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    &text[from..]
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_serial_console_is_shown_followed_bounded_and_escaped() {
    let _lock = one_at_a_time();
    let lab = Lab::new(&[("box", "serial_log_max = \"128 KiB\"\n")]);
    // The whole kernel log on the console (the fixture's cmdline has `quiet`).
    let config = lab.project().join("castra.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("console=ttyS0 quiet", "console=ttyS0"),
    )
    .unwrap();
    let _ = guest();
    let ctl = |args: &[&str]| lab.env.ctl(&lab.project(), args);

    // Never started: an empty log, not running; a follower gets the end at once.
    let before = ctl(&["console", "box", "--json"]).ok().json();
    assert_eq!(
        (before["size"].as_u64(), before["running"].as_bool()),
        (Some(0), Some(false))
    );
    let early = Follower::start(&lab, &[]);
    let last = early.next(Duration::from_secs(10)).expect("the end");
    assert_eq!(last["end"], "not-running", "{last}");

    let up = lab.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);

    // The boot log: the kernel's banner, the guest's init.
    let boot = ctl(&["console", "box", "--json", "--tail", "1048576"])
        .ok()
        .json();
    let text = boot["text"].as_str().unwrap();
    assert!(text.contains("Linux version"), "{boot}");
    assert_eq!(boot["running"], true);
    assert_eq!(boot["truncated"], false, "the log is under its cap");
    // Bounded: a small tail is at most what was asked, and says it left the rest out.
    let small = ctl(&["console", "box", "--json", "--tail", "300"])
        .ok()
        .json();
    assert!(small["bytes"].as_u64().unwrap() <= 300, "{small}");
    assert_eq!(small["truncated"], true);
    let scrub = crate::examples::Scrub::new().path(
        &lab.state_root(),
        "/home/me/.local/state/castra/projects/lab-0c1d2e3f",
    );
    crate::examples::assert_matches("console-result", std::slice::from_ref(&small), &scrub);

    // A follower (its first notification is the tail: subscribed) sees a line written after.
    let follower = Follower::start(&lab, &["--tail", "200"]);
    let first = follower.next(Duration::from_secs(10)).expect("the tail");
    crate::examples::assert_matches("console-chunk", std::slice::from_ref(&first), &scrub);
    assert!(first["skipped_bytes"].as_u64().unwrap() > 0, "{first}");
    assert!(
        !first["text"]
            .as_str()
            .unwrap()
            .contains("castra-console-mark")
    );
    lab.guest_sh("box", "echo castra-console-mark > /dev/console");
    follower.until("castra-console-mark", Duration::from_secs(20));

    // Untrusted bytes: an escape sequence and bytes that are not UTF-8.
    lab.guest_sh(
        "box",
        "printf 'esc\\033[31mred \\377\\376 end\\n' > /dev/ttyS0",
    );
    let (seen, _) = follower.until(" end", Duration::from_secs(20));
    assert!(
        seen.contains("esc\u{1b}[31mred \u{fffd}\u{fffd} end"),
        "{seen:?}"
    );
    let shown = ctl(&["console", "box", "--tail", "4096"]).ok();
    assert!(
        shown
            .stdout
            .contains("esc\\x1b[31mred \u{fffd}\u{fffd} end\n"),
        "{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains('\u{1b}') && !shown.stdout.contains('\r'));
    let raw = ctl(&["console", "box", "--tail", "4096", "--raw"]).ok();
    assert!(raw.stdout.contains("esc\u{1b}[31mred"), "{}", raw.stdout);

    // A flood: 384 KiB, past the log's cap and (the guest writes some 100 KB/s under TCG)
    // past the follower's rate bound.
    let flood_bytes = 384 << 10;
    let started = Instant::now();
    lab.guest_sh(
        "box",
        &format!(
            "head -c {flood_bytes} /dev/zero | tr '\\0' x | fold -w 127 > /dev/ttyS0; \
             echo castra-flood-done > /dev/ttyS0"
        ),
    );
    let elapsed = started.elapsed();
    // What the flood took beyond the bound was left out, its last line too, maybe; once the
    // bucket has filled again (64 KiB at 32 KiB/s), a line comes through whole.
    std::thread::sleep(Duration::from_millis(2500));
    lab.guest_sh("box", "echo castra-after-the-cap > /dev/ttyS0");
    let (flood, skipped) = follower.until("castra-after-the-cap", Duration::from_secs(60));
    let delivered = flood.len() as u64;
    // The rate bound (64 KiB burst, then 32 KiB/s) holds over the flood (and a second for its
    // last bytes on their way, a line after), and what it left out is counted.
    let bound = (64 << 10) + ((32 << 10) as f64 * (elapsed.as_secs_f64() + 1.0)) as u64 + 100;
    assert!(delivered <= bound, "{delivered} bytes in {elapsed:?}");
    assert!(
        delivered + skipped >= flood_bytes,
        "every byte delivered or counted: {delivered} + {skipped}"
    );
    eprintln!(
        "console flood: {flood_bytes} bytes in {elapsed:?}: {delivered} delivered, {skipped} \
         left out (bound {bound})"
    );
    // The log stopped at its cap; the follower went on past it.
    let log = std::fs::read(lab.state_root().join("vms/box/serial.log")).unwrap();
    assert!(log.len() < (128 << 10) + 200, "{} bytes", log.len());
    let after = ctl(&["console", "box", "--json"]).ok().json();
    assert!(
        !after["text"]
            .as_str()
            .unwrap()
            .contains("castra-after-the-cap")
    );

    // The VM stops: the follower's last notification says so, and castractl exits 0.
    lab.down(&["box"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = follower.next(left).expect("the end of the console");
        if !chunk["end"].is_null() {
            break chunk;
        }
    };
    assert_eq!(end["end"], "stopped", "{end}");
    let mut follower = follower;
    let status = follower.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
