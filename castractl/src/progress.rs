//! Following an operation's events as they arrive: JSON lines (`--json`), plain lines (piped
//! output) or a live board of spinners, one per VM (a terminal).
//!
//! The formatting itself is in [`crate::render`]; this module decides what to show when, and
//! owns the terminal while the board is drawn (writing through [`crate::term`]). `fetch`:
//! image fetches (`ImageFetch`) as byte bars, on `up`'s board and `image pull`'s.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use castra_api as api;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::value::RawValue;

use crate::{Exit, render, term};

mod fetch;
pub use fetch::PullDisplay;

/// A notification as one compact JSON line: the daemon's own bytes when they are one line.
pub fn json_line(raw: &RawValue) -> String {
    let text = raw.get();
    if !text.contains('\n') {
        return text.to_owned();
    }
    serde_json::from_str::<serde_json::Value>(text)
        .map_or_else(|_| text.replace('\n', " "), |v| v.to_string())
}

/// Decodes a notification; `None` for something this castractl does not know (a newer daemon).
pub fn parse(raw: &RawValue) -> Option<api::EventEnvelope> {
    serde_json::from_str(raw.get()).ok()
}

/// What castractl can still tell of a notification it cannot decode (a newer daemon: an
/// event kind, or an enum value, it does not know): the event's kind and its VM.
pub fn loose(raw: &RawValue) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    let (kind, body) = value.get("event")?.as_object()?.iter().next()?;
    Some((kind.clone(), body.get("vm")?.as_str()?.to_owned()))
}

/// How often plain lines say how an image fetch goes (a new phase and its end are always
/// said): castrad reports up to four times a second, too many lines for a log.
pub const FETCH_LINE_EVERY: Duration = Duration::from_secs(5);

/// Turns events into plain lines, dropping progress reports that repeat what the last one
/// said (castrad re-sends them every few seconds as a heartbeat), and thinning an image
/// fetch's reports to one per [`FETCH_LINE_EVERY`].
#[derive(Debug, Default)]
pub struct PlainFeed {
    /// The VM column's width.
    width: usize,
    /// Per VM: the step and what it was last reported waiting on.
    waiting: HashMap<String, (api::BootstrapStepKind, String)>,
    /// Per (VM, source) of a fetch in progress: when its last line was printed, and its phase.
    fetches: HashMap<(String, String), (Instant, String)>,
}

impl PlainFeed {
    pub fn new(width: usize) -> PlainFeed {
        PlainFeed {
            width,
            ..PlainFeed::default()
        }
    }

    /// The line to print for `event`, or `None` when it says nothing new.
    pub fn line(&mut self, event: &api::Event) -> Option<String> {
        self.line_at(event, Instant::now())
    }

    /// [`PlainFeed::line`] for an event that arrived at `now`.
    fn line_at(&mut self, event: &api::Event, now: Instant) -> Option<String> {
        self.news_at(event, now)
            .then(|| render::event_line(event, self.width))
    }

    /// Whether `event`, arriving at `now`, says something new (and is to be printed).
    fn news_at(&mut self, event: &api::Event, now: Instant) -> bool {
        match event {
            api::Event::BootstrapProgress {
                vm,
                step,
                waiting_on,
                ..
            } => {
                let now = (*step, waiting_on.clone());
                if self.waiting.get(vm) == Some(&now) {
                    return false;
                }
                self.waiting.insert(vm.clone(), now);
            }
            api::Event::ImageFetch {
                vm, source, phase, ..
            } => {
                let key = (vm.clone(), source.clone());
                let quiet = self.fetches.get(&key).is_some_and(|(at, last)| {
                    last == phase && now.duration_since(*at) < FETCH_LINE_EVERY
                });
                if quiet && phase != "done" {
                    return false;
                }
                if phase == "done" {
                    self.fetches.remove(&key);
                } else {
                    self.fetches.insert(key, (now, phase.clone()));
                }
                self.waiting.remove(vm);
            }
            // Anything else moves the story on: the next report is news again.
            _ => {
                self.waiting.remove(event.vm());
            }
        }
        true
    }
}

/// True when a VM's part of an operation counts as done right (exit 0).
pub fn outcome_ok(status: api::OutcomeStatus) -> bool {
    matches!(
        status,
        api::OutcomeStatus::Success | api::OutcomeStatus::NoOp | api::OutcomeStatus::Skipped
    )
}

/// The `error_kind` of a VM whose base image did not match its checksum: the user's input
/// (`base_image_digest`, a checksums file), so `up` exits 2 as for a bad castra.toml.
pub const IMAGE_MISMATCH: &str = "image-mismatch";

/// `up`'s exit for its outcome: 0 when every VM ended right, 2 when one failed on a base
/// image whose content did not match its checksum, 1 otherwise.
pub fn up_exit(outcome: &api::OutcomeResult) -> Exit {
    let vms = &outcome.outcomes;
    if vms.iter().all(|o| outcome_ok(o.status)) {
        Exit::Ok
    } else if vms
        .iter()
        .any(|o| o.error_kind.as_deref() == Some(IMAGE_MISMATCH))
    {
        Exit::Usage
    } else {
        Exit::Failed
    }
}

/// How `up` shows its operation while it runs, and its outcome at the end.
pub struct UpDisplay {
    kind: Kind,
}

enum Kind {
    Json,
    Plain(PlainFeed),
    Live(Board),
}

impl UpDisplay {
    /// `--json` wins; otherwise a live board when stdout is a terminal, plain lines when not.
    pub fn new(json: bool, up: &api::UpResult) -> UpDisplay {
        let width = up.vms.iter().map(|v| v.chars().count()).max().unwrap_or(0);
        let kind = if json {
            Kind::Json
        } else {
            let header = format!("project {}  operation {}", up.project, up.operation);
            let _ = term::line(&header);
            if term::stdout_is_terminal() {
                Kind::Live(Board::new(&up.vms, term::board_target()))
            } else {
                Kind::Plain(PlainFeed::new(width))
            }
        };
        UpDisplay { kind }
    }

    /// Shows one notification; returns it decoded (when this castractl understands it).
    pub fn event(&mut self, raw: &RawValue) -> Option<api::EventEnvelope> {
        let envelope = parse(raw);
        match (&mut self.kind, &envelope) {
            (Kind::Json, _) => {
                let _ = term::json_line(&json_line(raw));
            }
            (Kind::Plain(feed), Some(env)) => {
                if let Some(line) = feed.line(&env.event) {
                    let _ = term::line(&line);
                }
            }
            (Kind::Live(board), Some(env)) => board.event(&env.event),
            // An event kind from a newer daemon: not worth interrupting the display for.
            (Kind::Plain(_) | Kind::Live(_), None) => {}
        }
        envelope
    }

    /// A note for people, on stderr (above the board when there is one).
    pub fn warn(&self, message: &str) {
        let print = || term::warn(message);
        match &self.kind {
            Kind::Live(board) => board.multi.suspend(print),
            Kind::Json | Kind::Plain(_) => print(),
        }
    }

    /// Stops drawing without an outcome (interrupted): the board stays as it was.
    pub fn abandon(self) {
        if let Kind::Live(board) = self.kind {
            board.abandon();
        }
    }

    /// Ends the display with the authoritative outcome: JSON's last line, or the summary table.
    pub fn finish(self, outcome: &api::OutcomeResult) {
        match self.kind {
            Kind::Json => {
                let last = api::cli::CliOutcome {
                    outcome: outcome.clone(),
                };
                if let Ok(line) = serde_json::to_string(&last) {
                    let _ = term::json_line(&line);
                }
            }
            Kind::Plain(_) => {
                term::text(&format!("\n{}", render::summary(outcome)));
            }
            Kind::Live(mut board) => {
                board.finish(outcome);
                term::text(&format!("\n{}", render::summary(outcome)));
            }
        }
    }
}

/// The live display: a spinner line per VM, in operation order.
struct Board {
    multi: MultiProgress,
    /// Per VM, in operation order: its bar and whether it has its final line.
    bars: Vec<(String, ProgressBar, bool)>,
    index: HashMap<String, usize>,
    width: usize,
    /// The bars showing an image fetch (a byte bar rather than a spinner).
    fetching: HashSet<usize>,
}

const SPINNER_TEMPLATE: &str = "{spinner:.cyan} {prefix}  {elapsed:>4}  {wide_msg}";
const DONE_TEMPLATE: &str = "{msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Board {
    fn new(vms: &[String], target: ProgressDrawTarget) -> Board {
        let width = vms.iter().map(|v| v.chars().count()).max().unwrap_or(0);
        let multi = MultiProgress::with_draw_target(target);
        let spinner = style(SPINNER_TEMPLATE);
        let bars = vms
            .iter()
            .map(|vm| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(spinner.clone());
                bar.set_prefix(format!("{:<width$}", render::escape_line(vm)));
                bar.set_message("waiting for events");
                bar.enable_steady_tick(Duration::from_millis(120));
                (vm.clone(), bar, false)
            })
            .collect();
        let index = vms
            .iter()
            .enumerate()
            .map(|(i, vm)| (vm.clone(), i))
            .collect();
        Board {
            multi,
            bars,
            index,
            width,
            fetching: HashSet::new(),
        }
    }

    fn event(&mut self, event: &api::Event) {
        let Some(&i) = self.index.get(event.vm()) else {
            return;
        };
        let (vm, bar, done) = &mut self.bars[i];
        if *done {
            return;
        }
        let fetching = match event {
            api::Event::ImageFetch {
                phase,
                bytes_done,
                bytes_total,
                ..
            } if phase != "done" => {
                let styled = self.fetching.contains(&i);
                fetch::on_bar(bar, styled, *bytes_done, *bytes_total)
            }
            _ => false,
        };
        if fetching {
            self.fetching.insert(i);
        } else if self.fetching.remove(&i) {
            bar.set_style(style(SPINNER_TEMPLATE));
            bar.unset_length();
        }
        match event {
            api::Event::BootstrapCompleted {
                status,
                duration_ms,
                ..
            } => {
                let status = render::lower(status);
                let line =
                    render::finish_line(true, vm, self.width, &status, Some(*duration_ms), None);
                finish(bar, line);
                *done = true;
            }
            api::Event::BootstrapFailed {
                duration_ms, error, ..
            } => {
                let line = render::finish_line(
                    false,
                    vm,
                    self.width,
                    "Failed",
                    Some(*duration_ms),
                    Some(error),
                );
                finish(bar, line);
                *done = true;
            }
            api::Event::BootstrapStep {
                status: api::BootstrapStepStatus::Failed,
                ..
            } => {
                // A failed step's detail is the reason; keep it on screen above the board.
                let _ = self.multi.println(render::event_line(event, self.width));
                bar.set_message(render::event_tail(event));
            }
            _ => bar.set_message(render::event_tail(event)),
        }
    }

    /// Gives every VM still spinning its final line from the outcome (a rejected VM, say,
    /// never has events).
    fn finish(&mut self, outcome: &api::OutcomeResult) {
        let by_vm: HashMap<&str, &api::VmOutcome> = outcome
            .outcomes
            .iter()
            .map(|o| (o.vm.as_str(), o))
            .collect();
        for (vm, bar, done) in &mut self.bars {
            if *done {
                continue;
            }
            let line = match by_vm.get(vm.as_str()) {
                Some(o) => {
                    let status = render::lower(&o.status);
                    let took = (o.status != api::OutcomeStatus::Rejected).then_some(o.duration_ms);
                    render::finish_line(
                        outcome_ok(o.status),
                        vm,
                        self.width,
                        &status,
                        took,
                        o.error.as_deref(),
                    )
                }
                None => render::finish_line(false, vm, self.width, "unknown", None, None),
            };
            finish(bar, line);
            *done = true;
        }
    }

    fn abandon(self) {
        for (_, bar, done) in &self.bars {
            if !done {
                bar.abandon();
            }
        }
    }
}

fn finish(bar: &ProgressBar, line: String) {
    bar.set_style(style(DONE_TEMPLATE));
    bar.finish_with_message(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(vm: &str, waiting_on: &str) -> api::Event {
        api::Event::BootstrapProgress {
            vm: vm.into(),
            step: api::BootstrapStepKind::WaitHandshake,
            waiting_on: waiting_on.into(),
            elapsed_ms: 0,
        }
    }

    fn output(vm: &str, line: &str) -> api::Event {
        api::Event::BootstrapOutput {
            vm: vm.into(),
            step: api::BootstrapStepKind::Apply,
            stream: api::OutputStream::Stdout,
            line: line.into(),
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON")
    }

    #[test]
    fn plain_feed_drops_repeated_progress_only() {
        let mut feed = PlainFeed::new(5);
        let refused = progress("web-0", "tcp 127.0.0.1:2222: connection refused");
        assert_eq!(
            feed.line(&refused).as_deref(),
            Some("web-0  wait-handshake  waiting: tcp 127.0.0.1:2222: connection refused")
        );
        assert_eq!(feed.line(&refused), None, "heartbeat repeats are dropped");
        // Another VM's identical report is news.
        assert!(
            feed.line(&progress("db", "tcp 127.0.0.1:2222: connection refused"))
                .is_some()
        );
        // So is a change of what it waits on...
        assert!(feed.line(&progress("web-0", "ssh banner")).is_some());
        // ...and the same report again after something else happened.
        assert!(feed.line(&output("web-0", "hello")).is_some());
        assert!(feed.line(&progress("web-0", "ssh banner")).is_some());
    }

    #[test]
    fn json_lines_keep_the_daemons_bytes() {
        let text = r#"{"seq":3,"time":"t","operation":"op","event":{"BootstrapFailed":{"vm":"a","duration_ms":1,"error":"x"}}}"#;
        assert_eq!(json_line(&raw(text)), text);
        assert_eq!(json_line(&raw("{\n  \"a\": [1,\n 2]\n}")), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn envelopes_parse_and_unknown_events_do_not() {
        let text = r#"{"seq":3,"time":"2025-01-01T00:00:00.000Z","operation":"op","event":{"BootstrapFailed":{"vm":"a","duration_ms":1,"error":"x"}}}"#;
        let env = parse(&raw(text)).expect("an envelope");
        assert_eq!(env.seq, 3);
        assert!(env.event.is_terminal());
        let newer = r#"{"seq":4,"time":"t","operation":null,"event":{"VmStarted":{"vm":"a"}}}"#;
        assert!(parse(&raw(newer)).is_none());
    }

    #[test]
    fn outcome_statuses_that_exit_zero() {
        use api::OutcomeStatus as O;
        assert!(outcome_ok(O::Success) && outcome_ok(O::NoOp) && outcome_ok(O::Skipped));
        assert!(!outcome_ok(O::Failed) && !outcome_ok(O::Rejected));
    }

    #[test]
    fn templates_are_valid() {
        assert!(ProgressStyle::with_template(SPINNER_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(DONE_TEMPLATE).is_ok());
    }

    fn fetch(vm: &str, phase: &str, done: u64, total: Option<u64>) -> api::Event {
        api::Event::ImageFetch {
            vm: vm.into(),
            source: "debian-12".into(),
            phase: phase.into(),
            bytes_done: done,
            bytes_total: total,
            rate_bps: 1024 * 1024,
        }
    }

    /// castrad reports a fetch up to four times a second: a plain feed says it once every few
    /// seconds, and every new phase and the end at once.
    #[test]
    fn plain_feed_thins_image_fetches() {
        let mut feed = PlainFeed::new(5);
        let t0 = Instant::now();
        let mut printed = Vec::new();
        for ms in (0..12_000).step_by(250) {
            let event = fetch("web-0", "download", ms, Some(20_000));
            let now = t0 + Duration::from_millis(ms);
            printed.extend(feed.line_at(&event, now).map(|_| ms));
        }
        assert_eq!(printed, [0, 5_000, 10_000]);
        let at = t0 + Duration::from_millis(12_100);
        assert!(
            feed.line_at(&fetch("db", "download", 1, None), at)
                .is_some(),
            "another VM's fetch is news"
        );
        let done = feed.line_at(&fetch("web-0", "done", 20_000, Some(20_000)), at);
        assert_eq!(
            done.as_deref(),
            Some("web-0  image  done  19.5 KiB  debian-12")
        );
        // A fetch of the same source later (another `up`) is news again.
        assert!(
            feed.line_at(&fetch("web-0", "download", 0, None), at)
                .is_some()
        );
    }

    /// A VM's line turns into a byte bar while its image is fetched, and back into a spinner
    /// when the story moves on.
    #[test]
    fn the_board_shows_a_fetch_as_a_byte_bar() {
        let vms = ["web-0".to_owned()];
        let mut board = Board::new(&vms, ProgressDrawTarget::hidden());
        board.event(&fetch("web-0", "download", 3 << 20, Some(12 << 20)));
        let bar = &board.bars[0].1;
        assert!(board.fetching.contains(&0));
        assert_eq!((bar.position(), bar.length()), (3 << 20, Some(12 << 20)));
        assert_eq!(
            bar.message(),
            "image  download  3.0 MiB of 12.0 MiB (25%), 1.0 MiB/s, 9.00s left  debian-12"
        );
        board.event(&fetch("web-0", "done", 12 << 20, Some(12 << 20)));
        assert!(board.fetching.is_empty());
        assert_eq!(board.bars[0].1.length(), None, "a spinner again");
        assert_eq!(
            board.bars[0].1.message(),
            "image  done  12.0 MiB  debian-12"
        );
        // Without a size there is nothing to draw a bar of.
        board.event(&fetch("web-0", "download", 1, None));
        assert!(board.fetching.is_empty());
        assert!(ProgressStyle::with_template(fetch::BOARD_TEMPLATE).is_ok());
    }

    #[test]
    fn up_exits_2_when_a_base_image_did_not_match_its_checksum() {
        let outcome = |status, error_kind: Option<&str>| api::VmOutcome {
            vm: "web-0".into(),
            status,
            duration_ms: 0,
            run_id: None,
            log_path: None,
            stamp: None,
            error: None,
            error_kind: error_kind.map(str::to_owned),
        };
        let result = |outcomes| api::OutcomeResult {
            operation: "op".into(),
            project: "p".into(),
            outcomes,
        };
        use api::OutcomeStatus as O;
        let ok = result(vec![outcome(O::Success, None), outcome(O::NoOp, None)]);
        assert_eq!(up_exit(&ok), Exit::Ok);
        let failed = result(vec![outcome(O::Success, None), outcome(O::Failed, None)]);
        assert_eq!(up_exit(&failed), Exit::Failed);
        let mismatch = result(vec![
            outcome(O::Failed, None),
            outcome(O::Failed, Some(IMAGE_MISMATCH)),
        ]);
        assert_eq!(up_exit(&mismatch), Exit::Usage);
        // A kind this castractl does not know is a plain failure.
        let other = result(vec![outcome(O::Failed, Some("disk-full"))]);
        assert_eq!(up_exit(&other), Exit::Failed);
    }

    #[test]
    fn board_follows_events_and_finishes_from_the_outcome() {
        let vms = ["web-0".to_owned(), "db".to_owned(), "cache".to_owned()];
        let mut board = Board::new(&vms, ProgressDrawTarget::hidden());
        board.event(&progress("web-0", "ssh banner"));
        assert_eq!(
            board.bars[0].1.message(),
            "wait-handshake  waiting: ssh banner"
        );
        board.event(&output("web-0", "step 1"));
        assert_eq!(board.bars[0].1.message(), "apply  | step 1");
        board.event(&output("web-0", "\u{1b}]0;pwned\u{7}\u{9b}2J"));
        assert_eq!(
            board.bars[0].1.message(),
            "apply  | \\x1b]0;pwned\\x07\\u{9b}2J"
        );
        board.event(&api::Event::BootstrapCompleted {
            vm: "web-0".into(),
            status: api::BootstrapStatus::Success,
            duration_ms: 1_240,
            stamp: None,
        });
        assert!(board.bars[0].2 && board.bars[0].1.is_finished());
        assert_eq!(board.bars[0].1.message(), "✓ web-0  Success  1.24s");
        // Events after the end, or about VMs not in the operation, change nothing.
        board.event(&output("web-0", "late"));
        board.event(&output("other", "x"));
        assert_eq!(board.bars[0].1.message(), "✓ web-0  Success  1.24s");

        board.event(&api::Event::BootstrapFailed {
            vm: "cache".into(),
            duration_ms: 30_000,
            error: "wait-handshake: timed out".into(),
        });
        assert_eq!(
            board.bars[2].1.message(),
            "✗ cache  Failed  30.0s  wait-handshake: timed out"
        );

        let outcome = |vm: &str, status, error: Option<&str>| api::VmOutcome {
            vm: vm.into(),
            status,
            duration_ms: 0,
            run_id: None,
            log_path: None,
            stamp: None,
            error: error.map(str::to_owned),
            error_kind: None,
        };
        board.finish(&api::OutcomeResult {
            operation: "op".into(),
            project: "p".into(),
            outcomes: vec![
                outcome("web-0", api::OutcomeStatus::Success, None),
                outcome("db", api::OutcomeStatus::Rejected, Some("busy")),
                outcome("cache", api::OutcomeStatus::Failed, Some("timed out")),
            ],
        });
        assert_eq!(board.bars[1].1.message(), "✗ db     Rejected  busy");
        // The event's final line stays: the outcome only fills in the VMs without one.
        assert_eq!(
            board.bars[2].1.message(),
            "✗ cache  Failed  30.0s  wait-handshake: timed out"
        );
        assert!(
            board
                .bars
                .iter()
                .all(|(_, bar, done)| *done && bar.is_finished())
        );
    }
}
